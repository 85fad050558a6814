/*
 * pollers: many real instances, each holding its signal long-polls parked, for
 * bench/starve.py (`make bench`).
 *
 *   pollers farm  AGENT_SOCKET AGENT REGISTRATION_TOKEN COUNT POLLS WAIT LOG
 *   pollers probe AGENT_SOCKET AGENT REGISTRATION_TOKEN INTERVAL_MS LOG
 *
 * farm: forks COUNT processes. Each registers itself (its own pid) as an instance of
 * AGENT over the agent socket, as a process another supervisor started would
 * (docs/agent-protocol.md, "Agents batond did not start"), then keeps POLLS
 * `GET /v1/instances/ID/signal?seen=wait&wait=WAIT` parked on connections of its own,
 * asking again whenever one is answered. batond counts each process as its own peer
 * (the instance), so the per-peer cap never pools them. Every answer that is not
 * `200` with signal `wait` (nothing should change for them), and every connection
 * closed without an answer, is appended to LOG as `<what> <instance> <detail>`.
 * Prints `registered N failed M` once every process tried, then runs until killed
 * (its children die with it: PR_SET_PDEATHSIG).
 *
 * probe: registers one instance and asks its signal without waiting every
 * INTERVAL_MS, appending `<CLOCK_MONOTONIC ns at the start> <latency us> <status>`
 * to LOG per request: the latency of the agents' instance routes.
 *
 * cc -O2 -Wall -Wextra -o bench/out/pollers bench/pollers.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *socket_path, *agent, *registration_token, *log_path;

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void note(const char *what, const char *instance, const char *detail)
{
    char line[512];
    int n = snprintf(line, sizeof line, "%s %s %s\n", what, instance, detail);
    int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        if (write(fd, line, (size_t)n) < 0) { /* nothing to do */ }
        close(fd);
    }
}

/* A connection to the agent socket, or -1. A full backlog (EAGAIN) is tried again. */
static int dial(void)
{
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    strncpy(address.sun_path, socket_path, sizeof address.sun_path - 1);
    for (int attempt = 0; attempt < 200; attempt++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        if (connect(fd, (struct sockaddr *)&address, sizeof address) == 0) return fd;
        int error = errno;
        close(fd);
        if (error != EAGAIN && error != ECONNREFUSED) return -1;
        usleep(10000);
    }
    return -1;
}

static int send_all(int fd, const char *data, size_t length)
{
    while (length > 0) {
        ssize_t n = send(fd, data, length, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        data += n;
        length -= (size_t)n;
    }
    return 0;
}

/* Reads the whole answer (the requests say Connection: close). Returns its status, 0
 * for a connection closed without one. */
static int read_answer(int fd, char *buffer, size_t size)
{
    size_t used = 0;
    for (;;) {
        ssize_t n = recv(fd, buffer + used, size - 1 - used, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        used += (size_t)n;
        if (used == size - 1) break;
    }
    buffer[used] = 0;
    int status = 0;
    if (sscanf(buffer, "HTTP/1.%*d %d", &status) != 1) status = 0;
    return status;
}

/* Copies the JSON string value of "key" in text into out. */
static int json_string(const char *text, const char *key, char *out, size_t size)
{
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
    const char *start = strstr(text, pattern);
    if (!start) return -1;
    start += strlen(pattern);
    const char *end = strchr(start, '"');
    if (!end || (size_t)(end - start) >= size) return -1;
    memcpy(out, start, (size_t)(end - start));
    out[end - start] = 0;
    return 0;
}

/* Registers this process. Connections closed without an answer (the per-peer cap of
 * the registering uid while others register) are tried again. */
static int enrol(char *instance, size_t instance_size, char *token, size_t token_size)
{
    char request[1024], body[64], answer[4096];
    int length = snprintf(body, sizeof body, "{\"pid\":%d,\"version\":\"1\"}", getpid());
    snprintf(request, sizeof request,
             "POST /v1/agents/%s/instances HTTP/1.1\r\nHost: batond\r\nConnection: close\r\n"
             "Authorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
             agent, registration_token, length, body);
    for (int attempt = 0; attempt < 100; attempt++) {
        int fd = dial();
        if (fd < 0) return -1;
        int status = send_all(fd, request, strlen(request)) == 0 ? read_answer(fd, answer, sizeof answer) : 0;
        close(fd);
        if (status == 201) {
            char *json = strstr(answer, "\r\n\r\n");
            if (!json || json_string(json, "instance", instance, instance_size) != 0
                || json_string(json, "token", token, token_size) != 0) return -1;
            return 0;
        }
        if (status != 0) {
            char *json = strstr(answer, "\r\n\r\n");
            fprintf(stderr, "pollers: registration answered %d %s\n", status, json ? json + 4 : "");
            return -1;
        }
        usleep(20000 + (unsigned)(rand() % 50000));
    }
    return -1;
}

static int ask(const char *request)
{
    int fd = dial();
    if (fd >= 0 && send_all(fd, request, strlen(request)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void hold(const char *instance, const char *token, int polls, int wait)
{
    char request[1024], answer[4096], detail[256];
    snprintf(request, sizeof request,
             "GET /v1/instances/%s/signal?seen=wait&wait=%d HTTP/1.1\r\nHost: batond\r\nConnection: close\r\n"
             "Authorization: Bearer %s\r\n\r\n", instance, wait, token);
    struct pollfd fds[16];
    if (polls > 16) polls = 16;
    for (int i = 0; i < polls; i++) fds[i] = (struct pollfd){.fd = ask(request), .events = POLLIN};
    for (;;) {
        for (int i = 0; i < polls; i++) {
            if (fds[i].fd < 0) {
                note("unconnected", instance, "could not connect");
                sleep(1);
                fds[i].fd = ask(request);
            }
        }
        if (poll(fds, (nfds_t)polls, -1) < 0 && errno != EINTR) _exit(1);
        for (int i = 0; i < polls; i++) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            int status = read_answer(fds[i].fd, answer, sizeof answer);
            close(fds[i].fd);
            char signal_now[32] = "";
            char *json = strstr(answer, "\r\n\r\n");
            if (json) json_string(json, "signal", signal_now, sizeof signal_now);
            if (status == 0) {
                note("dropped", instance, "closed without an answer");
            } else if (status != 200 || strcmp(signal_now, "wait") != 0) {
                snprintf(detail, sizeof detail, "%d %s", status, json ? json + 4 : "");
                note("answer", instance, detail);
            }
            fds[i].fd = ask(request);
            fds[i].revents = 0;
        }
    }
}

static int farm(int count, int polls, int wait)
{
    int reports[2];
    if (pipe2(reports, O_CLOEXEC) != 0) return 1;
    int registered = 0, failed = 0, running = 0;
    /* At most 4 register at once: they share their uid's per-peer cap (8) until each is
     * an instance. */
    for (int started = 0; started < count || running > 0;) {
        if (started < count && running < 4) {
            pid_t child = fork();
            if (child < 0) { failed++; started++; continue; }
            if (child == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                srand((unsigned)getpid());
                char instance[128], token[256];
                int ok = enrol(instance, sizeof instance, token, sizeof token) == 0;
                if (write(reports[1], ok ? "r" : "f", 1) < 0) _exit(1);
                close(reports[0]);
                close(reports[1]);
                if (!ok) _exit(1);
                hold(instance, token, polls, wait);
                _exit(0);
            }
            started++;
            running++;
            continue;
        }
        char byte;
        if (read(reports[0], &byte, 1) != 1) break;
        running--;
        if (byte == 'r') registered++; else failed++;
    }
    printf("registered %d failed %d\n", registered, failed);
    fflush(stdout);
    for (;;) pause();
}

static int probe(int interval_ms)
{
    char instance[128], token[256], request[1024], answer[4096], line[128];
    if (enrol(instance, sizeof instance, token, sizeof token) != 0) {
        fprintf(stderr, "pollers probe: could not register\n");
        return 1;
    }
    snprintf(request, sizeof request,
             "GET /v1/instances/%s/signal HTTP/1.1\r\nHost: batond\r\nConnection: close\r\n"
             "Authorization: Bearer %s\r\n\r\n", instance, token);
    printf("probing as %s\n", instance);
    fflush(stdout);
    int out = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (out < 0) return 1;
    for (;;) {
        long long began = now_ns();
        int fd = ask(request);
        int status = fd >= 0 ? read_answer(fd, answer, sizeof answer) : 0;
        if (fd >= 0) close(fd);
        int n = snprintf(line, sizeof line, "%lld %lld %d\n", began, (now_ns() - began) / 1000, status);
        if (write(out, line, (size_t)n) < 0) return 1;
        usleep((useconds_t)interval_ms * 1000);
    }
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc == 9 && strcmp(argv[1], "farm") == 0) {
        socket_path = argv[2], agent = argv[3], registration_token = argv[4], log_path = argv[8];
        return farm(atoi(argv[5]), atoi(argv[6]), atoi(argv[7]));
    }
    if (argc == 7 && strcmp(argv[1], "probe") == 0) {
        socket_path = argv[2], agent = argv[3], registration_token = argv[4], log_path = argv[6];
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        return probe(atoi(argv[5]));
    }
    fprintf(stderr, "usage: pollers farm SOCKET AGENT TOKEN COUNT POLLS WAIT LOG\n"
                    "       pollers probe SOCKET AGENT TOKEN INTERVAL_MS LOG\n");
    return 64;
}
