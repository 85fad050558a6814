/*
 * mhd_fixed: the C baseline for `make bench`.
 *
 * The smallest libmicrohttpd server set up the way batond's BatonHTTP is:
 * same daemon flags and limits, own listen socket on 127.0.0.1 port 0, and a
 * fixed JSON body copied into every response (MHD_RESPMEM_MUST_COPY, as the
 * Swift server does). The gap between this and batond is the cost of the
 * Swift layer and of batond's routing, auth and JSON.
 *
 * Prints the bound port as "PORT\n" on stdout once it serves, then runs until
 * SIGTERM or SIGINT.
 *
 * cc -O2 -Wall -Wextra bench/mhd_fixed.c $(pkg-config --cflags --libs libmicrohttpd)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

static const char body[] = "{\"status\":\"ok\"}";

static enum MHD_Result
answer(void *cls, struct MHD_Connection *connection, const char *url,
       const char *method, const char *version, const char *upload_data,
       size_t *upload_data_size, void **con_cls)
{
    (void)cls;
    (void)url;
    (void)version;
    (void)upload_data;

    /* First call: headers only; answer on the next one, as batond does. */
    if (*con_cls == NULL) {
        static int started;
        *con_cls = &started;
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        *upload_data_size = 0; /* discard any body */
        return MHD_YES;
    }

    unsigned int status = MHD_HTTP_OK;
    const char *text = body;
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0) {
        status = MHD_HTTP_METHOD_NOT_ALLOWED;
        text = "{\"error\":\"method_not_allowed\"}";
    }
    struct MHD_Response *response = MHD_create_response_from_buffer(
        strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    if (response == NULL)
        return MHD_NO;
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "application/json");
    enum MHD_Result ret = MHD_queue_response(connection, status, response);
    MHD_destroy_response(response);
    return ret;
}

static int
listen_loopback(unsigned short *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("socket");
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0
        || listen(fd, SOMAXCONN) != 0
        || getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
        perror("bind/listen");
        close(fd);
        return -1;
    }
    *port = ntohs(addr.sin_port);
    return fd;
}

int
main(void)
{
    /* Block the stop signals before MHD starts its thread, so that only
     * sigwait below ever sees them. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    if (pthread_sigmask(SIG_BLOCK, &stop, NULL) != 0) {
        fprintf(stderr, "pthread_sigmask failed\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    unsigned short port;
    int fd = listen_loopback(&port);
    if (fd < 0)
        return 1;

    struct MHD_Daemon *daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL
            | MHD_ALLOW_SUSPEND_RESUME,
        0, NULL, NULL, &answer, NULL,
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)1000,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)30,
        MHD_OPTION_END);
    if (daemon == NULL) {
        fprintf(stderr, "MHD_start_daemon failed\n");
        close(fd); /* 0.9.75 may leak it on failure */
        return 1;
    }

    printf("%u\n", (unsigned int)port);
    fflush(stdout);

    int sig;
    while (sigwait(&stop, &sig) != 0) {
    }

    MHD_stop_daemon(daemon);
    return 0;
}
