// Process creation for batond's supervisor: fork + exec with what posix_spawn cannot
// do (switching user and group), and the exec error reported back through a pipe.
#ifndef BATON_SPAWN_H
#define BATON_SPAWN_H

#include <sys/types.h>

/// Starts `path` with `argv` and `envp` (NULL-terminated) in a new process group,
/// stdin from /dev/null, stdout and stderr to `output_fd` (batond passes the
/// instance's log file, opened O_APPEND), every signal disposition
/// and the signal mask reset to defaults, in `directory` (or the current one when
/// NULL). When `set_ids` is non-zero the child drops to `gid` (with its supplementary
/// groups from `user_name`, when given) and `uid` before exec.
/// Returns the child's pid, or -1 with `*child_errno` set to what failed (fork, or in
/// the child: chdir, setgid, initgroups, setuid, exec) and `*stage` naming the step.
/// With `die_with_parent`, the child is killed (SIGKILL) when batond dies: for work
/// that must not outlive it (a migration the next batond counts as failed).
pid_t baton_spawn(const char *path, char *const argv[], char *const envp[], int output_fd,
                  const char *directory, int set_ids, uid_t uid, gid_t gid, const char *user_name,
                  int die_with_parent, int *child_errno, const char **stage);

/// Keeps batond's umask for every child (call once at start, before any thread runs).
void baton_spawn_keep_umask(void);

/// The same, in two steps: the child is forked and set up (process group, output,
/// directory, user), then held before exec until `baton_spawn_release` lets it run,
/// so that batond can make its record of the process durable first. If batond gives it
/// up (`baton_spawn_abandon`) or dies meanwhile, the child ends (exit 127) without
/// running any agent code. `*gate_fd` and `*report_fd` are for those two calls.
/// `listen_fds` (`listen_count` of them) become the child's descriptors 3, 4, ... in
/// that order, the systemd way; `listen_pid_entry`, when not NULL, is the element of
/// `envp` that reads `LISTEN_PID=` followed by room for 10 digits: the child writes its
/// own pid there before exec.
pid_t baton_spawn_held(const char *path, char *const argv[], char *const envp[], int output_fd,
                       const char *directory, int set_ids, uid_t uid, gid_t gid, const char *user_name,
                       const int *listen_fds, int listen_count, char *listen_pid_entry,
                       int *gate_fd, int *report_fd, int *child_errno, const char **stage);

/// Lets a held child exec and waits until it did: 0, or -1 with `*child_errno` and
/// `*stage` (the child was reaped). Closes both descriptors.
int baton_spawn_release(pid_t pid, int gate_fd, int report_fd, int *child_errno, const char **stage);

/// Gives up a held child: it ends without exec; reaped here. Closes both descriptors.
void baton_spawn_abandon(pid_t pid, int gate_fd, int report_fd);

/// The start time of a process in clock ticks since boot (field 22 of /proc/PID/stat),
/// or 0 when it cannot be read: with the pid, it names one process, not a reused pid.
unsigned long long baton_process_start_time(pid_t pid);

/// The parent pid of a process (from /proc/PID/stat), or -1.
pid_t baton_parent_pid(pid_t pid);

/// Removes the first `length` bytes of the file `fd` in place, atomically with respect
/// to appending writers (fallocate FALLOC_FL_COLLAPSE_RANGE): what followed them moves
/// to offset 0. `length` must be a multiple of the file system's block size and end
/// before the end of the file. 0, or -1 with errno (EOPNOTSUPP where the file system
/// cannot: tmpfs, btrfs, ext4 without extents).
int baton_collapse_front(int fd, long long length);

/// pipe2(fds, O_CLOEXEC): a GNU call Swift's Glibc module does not show.
int baton_pipe_cloexec(int fds[2]);

/// A pidfd for any process (not only a child): readable once it exits. -1 on error.
int baton_pidfd_open(pid_t pid);

/// pidfd_getfd(2): a copy (close-on-exec) of descriptor `fd` of the process behind
/// `pidfd`, sharing its open file description. Needs ptrace access to the process (root,
/// or the same uid without Yama's restrictions). -1 with errno on failure.
int baton_pidfd_getfd(int pidfd, int fd);

/// pidfd_send_signal(2): signals exactly the process the pidfd was opened for, never a
/// process that reused its pid. Returns 0, or -1 with errno (ESRCH once it exited).
int baton_pidfd_send_signal(int pidfd, int signal);

/// Waits until the child `pid` exits without reaping it (waitid with WNOWAIT): while it
/// stays a zombie its pid, and the process group it leads, cannot be reused. Sets
/// `*code` (exit code, or -1) and `*signal` (the killing signal, or 0). 0, or -1 with errno.
int baton_wait_exit(pid_t pid, int *code, int *signal);

/// Reaps the exited child `pid` (after baton_wait_exit), freeing its pid.
void baton_reap(pid_t pid);

/// The session id of a process (getsid), or -1.
pid_t baton_session_of(pid_t pid);

/// The real and effective uid of a process (from /proc/PID/status). 0, or -1.
int baton_process_uids(pid_t pid, uid_t *real, uid_t *effective);

#endif
