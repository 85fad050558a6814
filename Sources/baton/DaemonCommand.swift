import ArgumentParser
import BatonClient
import BatonCore
import Foundation

struct DaemonCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "batond itself: version, pid, uptime, state directory, listeners, binary digest; and its upgrade.",
        subcommands: [Show.self, UpgradeDaemon.self],
        defaultSubcommand: Show.self)

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show", abstract: "batond's version, pid, uptime, state directory, listeners and binary (the default).")

        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var output: OutputOptions

        func run() throws {
            try reporting {
                let client = try connection.client()
                let daemon = try client.daemon()
                if output.json { return Terminal.printJSON(daemon.response.body) }
                let status = try client.status().value
                let view = daemon.value
                Terminal.print("batond \(view.version)")
                Terminal.print("  pid:        \(view.pid)")
                Terminal.print("  up:         \(Format.since(view.startedAt)) (since \(Format.clock(view.startedAt)))")
                Terminal.print("  state dir:  \(status.stateDir)")
                Terminal.print("  listeners:  \(status.listeners.joined(separator: ", "))")
                Terminal.print("  binary:     sha256 \(view.sha256)")
                Terminal.print("  restart runs: \(view.current.map { "daemon/\($0)" } ?? "the installed binary")")
                Terminal.print("  ledger:     seq \(status.ledger.lastSeq), \(status.ledger.writable ? "writable" : Terminal.paint("NOT writable", .red))")
                if let last = view.lastUpgrade {
                    Terminal.print("  last upgrade: \(last.outcome.rawValue) at \(Format.clock(last.at)), \(short(last.from)) → \(short(last.to))"
                                   + (last.reason.map { ": \($0)" } ?? ""))
                }
            }
        }

        private func short(_ digest: String) -> String { String(digest.prefix(12)) }
    }

    struct UpgradeDaemon: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "upgrade",
            abstract: "Upgrade batond in place to a new binary: store it, self-check it, re-execute (agents keep working).",
            discussion: "Exits 0 once the new binary confirmed, 2 when its self-check refused or it failed.")

        @Argument(help: "The new batond binary.")
        var path: String

        @Flag(help: "Try a binary that died before confirming in an earlier upgrade.")
        var force = false

        @Flag(help: "Exit once batond accepted the upgrade; do not wait for the new binary to confirm.")
        var noWait = false

        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var output: OutputOptions

        func run() throws {
            try reporting {
                let client = try connection.client(timeout: .seconds(60))
                let digest = try Upload.sha256(of: path)
                let stored = try client.storeDaemonBinary(file: path, sha256: digest, progress: Upload.progressBar("upload"))
                if !output.json {
                    Terminal.print("stored batond \(String(digest.prefix(12))) (\(Format.bytes(stored.value.size)))"
                                   + (stored.response.status == 200 ? ", already there" : ""))
                }
                let attempt: Reply<UpgradeAttempt>
                do {
                    attempt = try client.upgradeDaemon(UpgradeRequest(digest: digest, force: force ? true : nil))
                } catch let error as ClientError where error.apiError?.code == "self_check_failed" {
                    // Not a refusal of the request: the new binary failed its check.
                    throw CLIError.failed(error.apiError?.message ?? "\(error)", code: .failed)
                }
                if noWait {
                    if output.json { return Terminal.printJSON(attempt.response.body) }
                    return Terminal.print("self-check passed; batond re-executes into \(String(digest.prefix(12)))")
                }
                if !output.json { Terminal.print("self-check passed; batond re-executes…") }
                // The re-exec keeps the listening sockets: calls wait in the backlog meanwhile.
                let deadline = ContinuousClock.now + .seconds(120)
                while ContinuousClock.now < deadline {
                    if let reply = try? client.daemon(), let last = reply.value.lastUpgrade, last.to == digest, last.outcome != .inProgress {
                        if output.json { Terminal.printJSON(reply.response.body) }
                        if last.outcome == .upgraded {
                            if !output.json { Terminal.print(Terminal.paint("upgraded", .green) + ": batond \(reply.value.version), pid \(reply.value.pid)") }
                            return
                        }
                        throw CLIError.failed("the upgrade failed (\(last.stage?.rawValue ?? "?")): \(last.reason ?? "no reason recorded")",
                                              code: .failed)
                    }
                    Thread.sleep(forTimeInterval: 0.2)
                }
                throw CLIError.failed("the new batond did not confirm within 120 s; see baton daemon", code: .failed)
            }
        }
    }
}
