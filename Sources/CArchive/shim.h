// libarchive (Debian's libarchive-dev), for unpacking releases.
// BatonReleases is the only module that imports it.
#ifndef BATON_CARCHIVE_SHIM_H
#define BATON_CARCHIVE_SHIM_H

#include <archive.h>
#include <archive_entry.h>
#include <sys/syscall.h>
#include <unistd.h>

// Two calls the unpacker makes that Glibc declares only under _GNU_SOURCE, which
// Swift's Glibc module is not built with.

// sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE): start writing a file's dirty pages
// back, without waiting.
static inline int baton_start_writeback(int fd) {
    return (int)syscall(SYS_sync_file_range, fd, (long)0, (long)0, 2 /* SYNC_FILE_RANGE_WRITE */);
}

// syncfs(fd): write back the whole filesystem fd is on, and wait.
static inline int baton_syncfs(int fd) {
    return (int)syscall(SYS_syncfs, fd);
}

#endif
