// baton-testreaper COMMAND [ARGUMENT...]: runs COMMAND as its child, the way a service
// manager runs batond, for tests that kill batond and start the next one. It is a child
// subreaper (prctl PR_SET_CHILD_SUBREAPER), so the instances a killed batond leaves are
// reparented to it, not to pid 1 (which, in a container, may never reap them), and are
// reaped as they exit. Setting that on the test process itself would also capture every
// other test's orphans, running in parallel (a "stranger" a test makes by orphaning it
// would become the test's descendant).
//
// SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are passed on to COMMAND. It exits
// once COMMAND and every process reparented to it have exited: with COMMAND's exit status,
// or killed by the same signal.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t command = 0;
static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
enum { FORWARDED = sizeof forwarded / sizeof forwarded[0] };

static void forward(int number) {
    if (command > 0) kill(command, number);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: baton-testreaper COMMAND [ARGUMENT...]\n");
        return 2;
    }
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
        perror("baton-testreaper: prctl(PR_SET_CHILD_SUBREAPER)");
        return 1;
    }
    // Blocked until the child's pid is known, so none is lost or sent to pid 0.
    sigset_t all, previous;
    sigemptyset(&all);
    for (int i = 0; i < FORWARDED; i++) sigaddset(&all, forwarded[i]);
    sigprocmask(SIG_BLOCK, &all, &previous);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = forward;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    for (int i = 0; i < FORWARDED; i++) sigaction(forwarded[i], &action, NULL);

    pid_t child = fork();
    if (child < 0) {
        perror("baton-testreaper: fork");
        return 1;
    }
    if (child == 0) {
        // exec resets the handlers; the mask it keeps, so COMMAND gets the one this
        // process was given, as if it had been started directly.
        sigprocmask(SIG_SETMASK, &previous, NULL);
        execvp(argv[1], argv + 1);
        fprintf(stderr, "baton-testreaper: %s: %s\n", argv[1], strerror(errno));
        _exit(127);
    }
    command = child;
    // Unblocked even if they came blocked (a test runner's thread may block them all):
    // they are this process's to pass on.
    sigprocmask(SIG_UNBLOCK, &all, NULL);

    int status = 0;
    for (;;) {
        int reaped;
        pid_t pid = wait(&reaped);
        if (pid < 0) {
            if (errno == EINTR) continue;
            break;  // ECHILD: nothing is left.
        }
        if (pid == child) {
            status = reaped;
            command = 0;
        }
    }
    if (WIFSIGNALED(status)) {
        signal(WTERMSIG(status), SIG_DFL);
        raise(WTERMSIG(status));
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
