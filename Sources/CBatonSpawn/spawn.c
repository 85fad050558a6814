#define _GNU_SOURCE
#include "baton_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/wait.h>

static const char *const stages[] = {"fork", "chdir", "setgid", "initgroups", "setuid", "exec", "setup"};

/// batond's umask, read once before any thread could change it: every child gets it
/// explicitly. (libarchive sets the umask to 0 for an instant while it extracts, to
/// read it; a child forked in that instant would otherwise inherit 0.)
static mode_t spawn_umask = 022;
static int spawn_umask_kept = 0;

void baton_spawn_keep_umask(void) {
    spawn_umask = umask(022);
    umask(spawn_umask);
    spawn_umask_kept = 1;
}

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

/// In the child: closes every descriptor from `lowest` up. close_range(2) (Linux 5.9) in
/// one call; otherwise a loop up to the soft limit. Async-signal-safe.
static void close_from(int lowest) {
    if (syscall(SYS_close_range, (unsigned int)lowest, ~0U, 0) == 0) return;
    struct rlimit limit;
    int highest = getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < 65536 ? (int)limit.rlim_cur : 65536;
    for (int fd = lowest; fd < highest; fd++) close(fd);
}

/// In the child: writes `pid` in decimal over the digits after "LISTEN_PID=" in `entry`
/// (the parent made room for any pid). Async-signal-safe: no stdio.
static void write_listen_pid(char *entry, pid_t pid) {
    char digits[16];
    int count = 0;
    unsigned int value = (unsigned int)pid;
    do {
        digits[count++] = (char)('0' + value % 10);
        value /= 10;
    } while (value > 0 && count < (int)sizeof(digits));
    char *cursor = entry + strlen("LISTEN_PID=");
    while (count > 0) *cursor++ = digits[--count];
    *cursor = 0;
}

static pid_t spawn_held(const char *path, char *const argv[], char *const envp[], int output_fd,
                        const char *directory, int set_ids, uid_t uid, gid_t gid, const char *user_name,
                        const int *listen_fds, int listen_count, char *listen_pid_entry,
                        int die_with_parent, int *gate_fd, int *report_fd, int *child_errno, const char **stage) {
    pid_t parent = getpid();
    int report[2], gate[2];
    if (pipe2(report, O_CLOEXEC) != 0) {
        *child_errno = errno;
        *stage = stages[6];
        return -1;
    }
    if (pipe2(gate, O_CLOEXEC) != 0) {
        *child_errno = errno;
        *stage = stages[6];
        close(report[0]);
        close(report[1]);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        *child_errno = errno;
        *stage = stages[0];
        close(report[0]);
        close(report[1]);
        close(gate[0]);
        close(gate[1]);
        return -1;
    }
    if (pid == 0) {
        // The child: only async-signal-safe calls until exec.
        int failure[2] = {0, 6};
        sigset_t none;
        sigemptyset(&none);
        for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (spawn_umask_kept) umask(spawn_umask);
        setpgid(0, 0);
        close(gate[1]);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) { dup2(null, 0); if (null != 0) close(null); }
        dup2(output_fd, 1);
        dup2(output_fd, 2);
        // Nothing of batond's (nor what its parent left open) reaches the agent: only 0,
        // 1 and 2, and the agent's listening sockets at 3, 4, ... (systemd's layout).
        // Until exec the failure report and the gate sit just above them, close-on-exec.
        // Everything is first copied above every number it goes to, so that no dup2
        // overwrites a descriptor still to be moved.
        int first_free = 5 + listen_count;
        int moved_report = fcntl(report[1], F_DUPFD_CLOEXEC, first_free);
        int moved_gate = fcntl(gate[0], F_DUPFD_CLOEXEC, first_free);
        if (moved_report < 0 || moved_gate < 0) _exit(127);
        int moved_listen[listen_count > 0 ? listen_count : 1];
        for (int index = 0; index < listen_count; index++) {
            moved_listen[index] = fcntl(listen_fds[index], F_DUPFD_CLOEXEC, first_free);
            if (moved_listen[index] < 0) _exit(127);
        }
        for (int index = 0; index < listen_count; index++) {
            // dup2 clears close-on-exec on the copy: the socket crosses the exec.
            if (dup2(moved_listen[index], 3 + index) != 3 + index) _exit(127);
        }
        int report_at = 3 + listen_count, gate_at = 4 + listen_count;
        if (dup3(moved_report, report_at, O_CLOEXEC) != report_at || dup3(moved_gate, gate_at, O_CLOEXEC) != gate_at) _exit(127);
        close_from(first_free);
        report[1] = report_at;
        // LISTEN_PID names this very process (exec keeps the pid): a shell wrapper could not.
        if (listen_pid_entry != NULL) write_listen_pid(listen_pid_entry, getpid());
        if (directory != NULL && chdir(directory) != 0) { failure[0] = errno; failure[1] = 1; goto fail; }
        if (set_ids) {
            if (setgid(gid) != 0) { failure[0] = errno; failure[1] = 2; goto fail; }
            if (user_name != NULL ? initgroups(user_name, gid) != 0 : setgroups(0, NULL) != 0) {
                failure[0] = errno; failure[1] = 3; goto fail;
            }
            if (setuid(uid) != 0) { failure[0] = errno; failure[1] = 4; goto fail; }
        }
        // After the credentials change, which clears it: killed when batond dies.
        if (die_with_parent && (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)) _exit(127);
        // Held here until batond's record of this process is durable: one byte lets it
        // run; end of file (batond gave it up, or died) ends it before any agent code.
        char go;
        ssize_t got;
        do {
            got = read(gate_at, &go, 1);
        } while (got < 0 && errno == EINTR);
        if (got != 1) _exit(127);
        close(gate_at);
        execve(path, argv, envp);
        failure[0] = errno;
        failure[1] = 5;
    fail:
        (void)!write(report[1], failure, sizeof(failure));
        _exit(127);
    }
    close(report[1]);
    close(gate[0]);
    *gate_fd = gate[1];
    *report_fd = report[0];
    return pid;
}

int baton_spawn_release(pid_t pid, int gate_fd, int report_fd, int *child_errno, const char **stage) {
    ssize_t wrote;
    do {
        wrote = write(gate_fd, "g", 1);
    } while (wrote < 0 && errno == EINTR);
    close(gate_fd);
    int failure[2];
    ssize_t got;
    do {
        got = read(report_fd, failure, sizeof(failure));
    } while (got < 0 && errno == EINTR);
    close(report_fd);
    if (got == (ssize_t)sizeof(failure)) {
        // exec did not happen: reap the child, which exits 127 at once.
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        *child_errno = failure[0];
        *stage = stages[failure[1]];
        return -1;
    }
    if (wrote != 1) {
        // The child was gone before it could be let go (killed meanwhile).
        *child_errno = ESRCH;
        *stage = stages[5];
        return -1;
    }
    return 0;
}

pid_t baton_spawn_held(const char *path, char *const argv[], char *const envp[], int output_fd,
                       const char *directory, int set_ids, uid_t uid, gid_t gid, const char *user_name,
                       const int *listen_fds, int listen_count, char *listen_pid_entry,
                       int *gate_fd, int *report_fd, int *child_errno, const char **stage) {
    return spawn_held(path, argv, envp, output_fd, directory, set_ids, uid, gid, user_name,
                      listen_fds, listen_count, listen_pid_entry, 0, gate_fd, report_fd, child_errno, stage);
}

void baton_spawn_abandon(pid_t pid, int gate_fd, int report_fd) {
    close(gate_fd);
    close(report_fd);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
}

pid_t baton_spawn(const char *path, char *const argv[], char *const envp[], int output_fd,
                  const char *directory, int set_ids, uid_t uid, gid_t gid, const char *user_name,
                  int die_with_parent, int *child_errno, const char **stage) {
    int gate, report;
    pid_t pid = spawn_held(path, argv, envp, output_fd, directory, set_ids, uid, gid, user_name, NULL, 0, NULL,
                           die_with_parent, &gate, &report, child_errno, stage);
    if (pid < 0) return -1;
    return baton_spawn_release(pid, gate, report, child_errno, stage) == 0 ? pid : -1;
}

/// Reads the start of /proc/PID/NAME into `buffer`, NUL-terminated. 0, or -1.
static int read_proc_file(pid_t pid, const char *name, char *buffer, size_t size) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t count = read(fd, buffer, size - 1);
    close(fd);
    if (count <= 0) return -1;
    buffer[count] = 0;
    return 0;
}

static int read_stat_fields(pid_t pid, pid_t *ppid, unsigned long long *start) {
    char buffer[1024];
    if (read_proc_file(pid, "stat", buffer, sizeof(buffer)) != 0) return -1;
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    char *rest = strrchr(buffer, ')');
    if (rest == NULL) return -1;
    rest += 2;
    // Field 3 is the state; field 4 the parent pid; field 22 the start time.
    char state;
    int parent;
    unsigned long long value = 0;
    if (sscanf(rest, "%c %d", &state, &parent) != 2) return -1;
    char *cursor = rest;
    for (int field = 3; field < 22 && cursor != NULL; field++) {
        cursor = strchr(cursor, ' ');
        if (cursor != NULL) cursor++;
    }
    if (cursor == NULL || sscanf(cursor, "%llu", &value) != 1) return -1;
    if (ppid) *ppid = parent;
    if (start) *start = value;
    return 0;
}

unsigned long long baton_process_start_time(pid_t pid) {
    unsigned long long start = 0;
    return read_stat_fields(pid, NULL, &start) == 0 ? start : 0;
}

pid_t baton_parent_pid(pid_t pid) {
    pid_t parent = -1;
    return read_stat_fields(pid, &parent, NULL) == 0 ? parent : -1;
}

int baton_collapse_front(int fd, long long length) {
    return fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 0, (off_t)length);
}

int baton_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

int baton_pidfd_open(pid_t pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

int baton_pidfd_getfd(int pidfd, int fd) {
    return (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
}

int baton_pidfd_send_signal(int pidfd, int signal) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, signal, NULL, 0);
}

int baton_wait_exit(pid_t pid, int *code, int *signal) {
    siginfo_t info;
    for (;;) {
        memset(&info, 0, sizeof(info));
        if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT) == 0) break;
        if (errno != EINTR) return -1;
    }
    if (info.si_code == CLD_EXITED) {
        *code = info.si_status;
        *signal = 0;
    } else {
        *code = -1;
        *signal = info.si_status;
    }
    return 0;
}

void baton_reap(pid_t pid) {
    int status;
    while (waitpid(pid, &status, WNOHANG) < 0 && errno == EINTR) {}
}

pid_t baton_session_of(pid_t pid) {
    return getsid(pid);
}

int baton_process_uids(pid_t pid, uid_t *real, uid_t *effective) {
    char buffer[4096];
    if (read_proc_file(pid, "status", buffer, sizeof(buffer)) != 0) return -1;
    char *line = strstr(buffer, "\nUid:");
    unsigned int r, e;
    if (line == NULL || sscanf(line + 5, "%u %u", &r, &e) != 2) return -1;
    *real = (uid_t)r;
    *effective = (uid_t)e;
    return 0;
}
