// Fixed-arity wrappers around libmicrohttpd's variadic calls, and the one
// socket call Swift's Glibc cannot express (struct ucred is hidden from it).
// BatonHTTP/MHD.swift is the only Swift file that imports this module.
#ifndef BATON_CMICROHTTPD_SHIM_H
#define BATON_CMICROHTTPD_SHIM_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <microhttpd.h>

/// Starts a daemon on a listening socket the caller bound itself. `accept_policy` runs
/// on the daemon's thread for every accepted socket (MHD_NO closes it at once);
/// `notify` is told when each connection starts and after it ends (before its socket is
/// closed), on the same thread.
static inline struct MHD_Daemon *baton_mhd_start(
    unsigned int flags, int listen_fd,
    MHD_AcceptPolicyCallback accept_policy,
    MHD_AccessHandlerCallback handler, void *handler_cls,
    MHD_RequestCompletedCallback completed,
    MHD_NotifyConnectionCallback notify,
    unsigned int connection_limit, unsigned int connection_timeout_seconds,
    size_t connection_memory_limit)
{
    return MHD_start_daemon(flags, 0, accept_policy, handler_cls, handler, handler_cls,
                            MHD_OPTION_LISTEN_SOCKET, (MHD_socket)listen_fd,
                            MHD_OPTION_NOTIFY_COMPLETED, completed, handler_cls,
                            MHD_OPTION_NOTIFY_CONNECTION, notify, handler_cls,
                            MHD_OPTION_CONNECTION_LIMIT, connection_limit,
                            MHD_OPTION_CONNECTION_TIMEOUT, connection_timeout_seconds,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, connection_memory_limit,
                            MHD_OPTION_END);
}

/// What a content reader returns at the end of a streamed body, or to abort it; and
/// the size of a body whose length is not known (sent chunked). Swift does not import
/// macros with casts.
static const ssize_t baton_mhd_reader_end = MHD_CONTENT_READER_END_OF_STREAM;
static const ssize_t baton_mhd_reader_abort = MHD_CONTENT_READER_END_WITH_ERROR;
static const uint64_t baton_mhd_size_unknown = MHD_SIZE_UNKNOWN;

/// The socket of a connection, or -1.
static inline int baton_mhd_connection_fd(struct MHD_Connection *connection)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    return info == NULL ? -1 : (int)info->connect_fd;
}

/// The credentials of a Unix-socket peer (SO_PEERCRED). Returns 0 or -1 with errno set.
static inline int baton_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid)
{
    // struct ucred needs _GNU_SOURCE, which would make this module's view of the libc
    // headers differ from Dispatch's; the kernel's layout is fixed, so spell it out.
    struct { pid_t pid; uid_t uid; gid_t gid; } cred;
    socklen_t length = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) != 0) return -1;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

#endif
