import ArgumentParser
import BatonClient
import BatonCore
import Foundation

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version",
        abstract: "The machine's version: every agent moved to one release version together.",
        subcommands: [Show.self, SetVersion.self],
        defaultSubcommand: Show.self)

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show", abstract: "The machine's version, the rollout in progress and the last ones (the default).")

        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var output: OutputOptions

        func run() throws {
            try reporting {
                let reply = try connection.client().machineVersion()
                if output.json { return Terminal.printJSON(reply.response.body) }
                VersionCommand.describe(reply.value)
            }
        }
    }

    struct SetVersion: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set",
            abstract: "Move every agent that has a release VERSION to it, following the rollout.",
            discussion: """
                Exits 0 when every agent moved, 2 when the rollout failed, 3 when a barrier \
                rollout restored the previous versions.
                """)

        @Argument(help: "The version.")
        var version: String

        @Flag(help: "Halt every agent, run the migrations once, then start them all at VERSION.")
        var barrier = false

        @Flag(help: "Exit once the rollout is recorded; do not follow it.")
        var noWait = false

        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var output: OutputOptions

        func run() throws {
            try reporting {
                let client = try connection.client(timeout: .seconds(70))
                var seq = try client.lastSeq()
                let began = try client.setMachineVersion(VersionRequest(version: version, barrier: barrier ? true : nil))
                guard let rollout = began.value.pending else {
                    if output.json { return Terminal.printJSON(began.response.body) }
                    return VersionCommand.describe(began.value)
                }
                if noWait {
                    if output.json { return Terminal.printJSON(began.response.body) }
                    return Terminal.print("rollout \(rollout.id) to \(version) began; see baton version")
                }
                if !output.json { Terminal.print("rollout \(rollout.id) to \(version)\(barrier ? " (barrier)" : "")") }
                var shown: [String: String] = [:]
                var current = began
                while let pending = current.value.pending, pending.id == rollout.id {
                    if !output.json {
                        let phase = pending.phase.rawValue
                        if shown["phase"] != phase { Terminal.print("  \(phase)"); shown["phase"] = phase }
                        for agent in pending.agents where shown[agent.name] != agent.status.rawValue {
                            shown[agent.name] = agent.status.rawValue
                            Terminal.print("    \(agent.name): \(agent.status.rawValue)" + (agent.error.map { ": \($0)" } ?? ""))
                        }
                    }
                    // Woken by the ledger's next record rather than by polling.
                    seq = try client.events(since: seq, wait: .seconds(30)).value.lastSeq
                    current = try client.machineVersion()
                }
                if output.json { Terminal.printJSON(current.response.body) }
                guard let summary = current.value.history.last(where: { $0.id == rollout.id }) else {
                    if !output.json { VersionCommand.describe(current.value) }
                    return
                }
                switch summary.outcome {
                case .done:
                    if !output.json { Terminal.print(Terminal.paint("done", .green) + ": the machine runs \(version)") }
                case .restored:
                    throw CLIError.failed("restored: \(summary.error ?? "the migration failed"); the agents run their previous versions",
                                          code: .reverted)
                default:
                    throw CLIError.failed("the rollout \(summary.outcome.rawValue): \(summary.error ?? "no reason recorded")", code: .failed)
                }
            }
        }
    }

    static func describe(_ machine: MachineVersionView) {
        Terminal.print("machine version: \(machine.version ?? "none yet")")
        if let pending = machine.pending {
            Terminal.print("rollout \(pending.id) to \(pending.version) in progress: \(pending.phase.rawValue)"
                           + ", by \(pending.by) at \(Format.clock(pending.startedAt))")
            for agent in pending.agents {
                Terminal.print("  \(agent.name): \(agent.status.rawValue)" + (agent.error.map { ": \($0)" } ?? ""))
            }
        }
        if let error = machine.lastError { Terminal.print("last error \(Format.ago(error.at)): \(error.reason)") }
        guard !machine.history.isEmpty else { return }
        var table = Table("ROLLOUT", "VERSION", "BARRIER", "OUTCOME", "STARTED", "DURATION", "ERROR")
        for rollout in machine.history.reversed() {
            table.add(rollout.id, rollout.version, rollout.barrier ? "yes" : "no", rollout.outcome.rawValue, Format.clock(rollout.startedAt),
                      Format.duration(milliseconds: rollout.endedAt.milliseconds - rollout.startedAt.milliseconds), rollout.error)
        }
        table.print()
    }
}
