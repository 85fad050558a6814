// faultfs: disk faults for a real batond, loaded with LD_PRELOAD by the disk-fault tests
// (Tests/BatonTestSupport/DiskFaults.swift compiles it with the toolchain's C compiler).
//
// It stands between the process and libc's file calls and makes the ones on chosen
// paths fail with a chosen errno, the way a failing disk does: nothing is written,
// synced or renamed, and the call returns -1 with errno set. Every other call goes
// through untouched.
//
// $BATON_FAULTS names a control file the test rewrites whenever it wants other faults;
// each line is `CALL ERRNO PATH-PREFIX`:
//   write   write(2), pwrite(2), writev(2) on a file whose path starts with the prefix
//   sync    fsync(2), fdatasync(2), syncfs(2) on such a file
//   rename  rename(2), renameat(2), renameat2(2) from or to such a path
//   symlink symlink(2), symlinkat(2) creating such a path
// ERRNO -1 stalls the call instead, as a hung disk does: it waits while the rule is in
// force, then goes through. A PATH-PREFIX ending in `$` names that one path (a directory,
// not the files under it). An empty or absent file injects nothing. Each injected
// failure or stall appends a line to $BATON_FAULTS.hits (`CALL ERRNO PATH`), so a test
// can wait until a fault was met.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum call { CALL_WRITE, CALL_SYNC, CALL_RENAME, CALL_SYMLINK };
static const char *const call_names[] = { "write", "sync", "rename", "symlink" };

enum { STALL = -1 };

struct rule { enum call call; int error; int exact; char prefix[1024]; };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char control[1024];
static char hits[1040];
static struct rule rules[32];
static int rule_count;
static struct stat loaded;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_syncfs)(int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned int);
static int (*real_symlink)(const char *, const char *);
static int (*real_symlinkat)(const char *, int, const char *);

__attribute__((constructor)) static void setup(void) {
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_writev = dlsym(RTLD_NEXT, "writev");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_syncfs = dlsym(RTLD_NEXT, "syncfs");
    real_rename = dlsym(RTLD_NEXT, "rename");
    real_renameat = dlsym(RTLD_NEXT, "renameat");
    real_renameat2 = dlsym(RTLD_NEXT, "renameat2");
    real_symlink = dlsym(RTLD_NEXT, "symlink");
    real_symlinkat = dlsym(RTLD_NEXT, "symlinkat");
    const char *path = getenv("BATON_FAULTS");
    if (path && strlen(path) < sizeof control) {
        strcpy(control, path);
        snprintf(hits, sizeof hits, "%s.hits", path);
    }
}

// Reads the control file again when it changed (another inode, size or mtime). Under `lock`.
static void reload(void) {
    struct stat now;
    if (control[0] == 0 || stat(control, &now) != 0) { rule_count = 0; memset(&loaded, 0, sizeof loaded); return; }
    if (now.st_ino == loaded.st_ino && now.st_size == loaded.st_size
        && now.st_mtim.tv_sec == loaded.st_mtim.tv_sec && now.st_mtim.tv_nsec == loaded.st_mtim.tv_nsec) return;
    loaded = now;
    rule_count = 0;
    FILE *file = fopen(control, "r");
    if (!file) return;
    char name[16], prefix[1024];
    int error;
    while (rule_count < 32 && fscanf(file, "%15s %d %1023s", name, &error, prefix) == 3) {
        for (int call = 0; call < 4; call++) {
            if (strcmp(name, call_names[call]) != 0) continue;
            rules[rule_count].call = call;
            rules[rule_count].error = error;
            size_t length = strlen(prefix);
            rules[rule_count].exact = length > 1 && prefix[length - 1] == '$';
            if (rules[rule_count].exact) prefix[length - 1] = 0;
            strcpy(rules[rule_count].prefix, prefix);
            rule_count++;
        }
    }
    fclose(file);
}

// The errno of the first rule in force for `call` on `path`, or 0. Under `lock`.
static int rule_for(enum call call, const char *path) {
    reload();
    for (int index = 0; index < rule_count; index++) {
        const struct rule *rule = &rules[index];
        if (rule->call != call) continue;
        if (rule->exact ? strcmp(path, rule->prefix) == 0 : strncmp(path, rule->prefix, strlen(rule->prefix)) == 0)
            return rule->error;
    }
    return 0;
}

// The errno to fail `call` on `path` with, or 0; records the hit. A stall returns 0
// once its rule is no longer in force.
static int fault(enum call call, const char *path) {
    if (!path || control[0] == 0) return 0;
    pthread_mutex_lock(&lock);
    int error = rule_for(call, path);
    if (error) {
        int fd = open(hits, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd >= 0) {
            char line[1200];
            int length = snprintf(line, sizeof line, "%s %d %s\n", call_names[call], error, path);
            if (length > 0) real_write(fd, line, (size_t)(length < (int)sizeof line ? length : (int)sizeof line - 1));
            close(fd);
        }
    }
    pthread_mutex_unlock(&lock);
    if (error != STALL) return error;
    const struct timespec pause = { 0, 5 * 1000 * 1000 };
    for (int stalled = STALL; stalled == STALL;) {
        nanosleep(&pause, NULL);
        pthread_mutex_lock(&lock);
        stalled = rule_for(call, path);
        pthread_mutex_unlock(&lock);
    }
    return 0;
}

// The fault for `call` on the file `fd` is open on (its path from /proc/self/fd).
static int fd_fault(enum call call, int fd) {
    if (control[0] == 0) return 0;
    char link[64], path[1024];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t length = readlink(link, path, sizeof path - 1);
    if (length <= 0 || path[0] != '/') return 0;
    path[length] = 0;
    return fault(call, path);
}

// A path as given, or under the directory `dirfd` when relative.
static const char *at_path(int dirfd, const char *path, char *buffer, size_t size) {
    if (!path || path[0] == '/' || dirfd == AT_FDCWD) return path;
    char link[64], directory[1024];
    snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
    ssize_t length = readlink(link, directory, sizeof directory - 1);
    if (length <= 0) return path;
    directory[length] = 0;
    snprintf(buffer, size, "%s/%s", directory, path);
    return buffer;
}

#define FAIL_WITH(error) do { errno = (error); return -1; } while (0)

ssize_t write(int fd, const void *bytes, size_t count) {
    int error = fd_fault(CALL_WRITE, fd);
    if (error) FAIL_WITH(error);
    return real_write(fd, bytes, count);
}

ssize_t pwrite(int fd, const void *bytes, size_t count, off_t offset) {
    int error = fd_fault(CALL_WRITE, fd);
    if (error) FAIL_WITH(error);
    return real_pwrite(fd, bytes, count, offset);
}

ssize_t writev(int fd, const struct iovec *vector, int count) {
    int error = fd_fault(CALL_WRITE, fd);
    if (error) FAIL_WITH(error);
    return real_writev(fd, vector, count);
}

int fsync(int fd) {
    int error = fd_fault(CALL_SYNC, fd);
    if (error) FAIL_WITH(error);
    return real_fsync(fd);
}

int fdatasync(int fd) {
    int error = fd_fault(CALL_SYNC, fd);
    if (error) FAIL_WITH(error);
    return real_fdatasync(fd);
}

int syncfs(int fd) {
    int error = fd_fault(CALL_SYNC, fd);
    if (error) FAIL_WITH(error);
    return real_syncfs(fd);
}

int rename(const char *from, const char *to) {
    int error = fault(CALL_RENAME, from);
    if (!error) error = fault(CALL_RENAME, to);
    if (error) FAIL_WITH(error);
    return real_rename(from, to);
}

int renameat(int fromfd, const char *from, int tofd, const char *to) {
    char a[2048], b[2048];
    int error = fault(CALL_RENAME, at_path(fromfd, from, a, sizeof a));
    if (!error) error = fault(CALL_RENAME, at_path(tofd, to, b, sizeof b));
    if (error) FAIL_WITH(error);
    return real_renameat(fromfd, from, tofd, to);
}

int renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned int flags) {
    char a[2048], b[2048];
    int error = fault(CALL_RENAME, at_path(fromfd, from, a, sizeof a));
    if (!error) error = fault(CALL_RENAME, at_path(tofd, to, b, sizeof b));
    if (error) FAIL_WITH(error);
    return real_renameat2(fromfd, from, tofd, to, flags);
}

int symlink(const char *target, const char *path) {
    int error = fault(CALL_SYMLINK, path);
    if (error) FAIL_WITH(error);
    return real_symlink(target, path);
}

int symlinkat(const char *target, int dirfd, const char *path) {
    char buffer[2048];
    int error = fault(CALL_SYMLINK, at_path(dirfd, path, buffer, sizeof buffer));
    if (error) FAIL_WITH(error);
    return real_symlinkat(target, dirfd, path);
}
