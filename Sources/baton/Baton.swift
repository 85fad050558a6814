import ArgumentParser
import BatonCore
import Glibc

/// `baton`: the operator's command line for batond (docs/cli.md).
@main
struct Baton: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "baton",
        abstract: "Operate batond: see agents, hand them over to new versions, follow what happens.",
        discussion: """
            Connects to batond's Unix socket (by default /run/baton/batond.sock, else \
            /var/lib/baton/batond.sock), where your user id is the credential, or to its \
            loopback TCP listener with --url and the operator token (--token-file).

            Environment: BATON_SOCKET (a socket path), BATON_URL (http://HOST:PORT), \
            BATON_TOKEN_FILE (the operator token's file), NO_COLOR (no colour even on a \
            terminal). Flags win over the environment.

            Exit codes:
              0   done (a handoff committed)
              1   another error: an unexpected answer, a file that cannot be read
              2   the handoff (or fetch, rollout, daemon upgrade) failed
              3   the handoff reverted: the previous release runs again
              4   batond refused the request (4xx: not found, conflict, invalid)
              5   not authorised: wrong or missing token, or no permission on the socket
              6   batond unreachable: not running, or the connection failed
              7   the handoff was cancelled: batond stopped before it ended
              64  usage: a bad command line

            Shell completion: baton --generate-completion-script bash|zsh|fish.
            """,
        version: BatonVersion.current,
        subcommands: [
            Status.self, AgentCommand.self, Upgrade.self, Rollback.self, History.self, Events.self, Logs.self,
            DaemonCommand.self, Push.self, Fetch.self, ReleasesCommand.self, VersionCommand.self, FleetCommand.self, UI.self,
        ]
    )

    /// A parent that blocked signals (a test runner, some supervisors) passes its mask on:
    /// Ctrl-C and SIGTERM must end `baton logs -f` and `baton events -f` whatever it was.
    static func main() {
        var all = sigset_t()
        sigfillset(&all)
        sigprocmask(SIG_UNBLOCK, &all, nil)
        main(nil as [String]?)
    }
}
