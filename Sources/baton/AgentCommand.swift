import ArgumentParser
import BatonClient
import BatonCore
import Foundation

struct AgentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "One agent in depth: versions, instances, pids, uptime, restarts, last handoffs, log files.")

    @Argument(help: "The agent's name.")
    var name: String

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        try reporting {
            let client = try connection.client()
            let reply = try client.agent(name)
            if output.json { return Terminal.printJSON(reply.response.body) }
            let agent = reply.value
            let stateDir = try? client.status().value.stateDir

            var head = "\(agent.name): \(Status.state(agent))"
            if let running = agent.running { head += ", running \(running.version) since \(Format.clock(running.since))" }
            if let desired = agent.desired, desired.version != agent.running?.version { head += ", desired \(desired.version)" }
            Terminal.print(head)
            Terminal.print("  condition: \(Status.condition(agent))")
            let config = agent.config
            Terminal.print("  mode: \(config.mode.rawValue)\(config.external ? " (external: its instances register themselves)" : "")"
                           + ", ready within \(Format.duration(milliseconds: config.readyTimeoutMs))"
                           + ", stop within \(Format.duration(milliseconds: config.stopTimeoutMs))")
            Terminal.print("  restarts: \(agent.restarts) since batond started")
            for socket in agent.sockets {
                let state = socket.open ? "held by batond" : Terminal.paint("not open", .red) + (socket.error.map { ": \($0)" } ?? "")
                Terminal.print("  socket \(socket.name): \(socket.address), \(state)")
            }
            if let next = agent.nextAttemptAt { Terminal.print("  next attempt: \(Format.clock(next))") }
            if let desired = agent.desired {
                Terminal.print("  desired \(desired.version) set by \(desired.setBy) at \(Format.clock(desired.setAt))")
            }
            if let rewound = agent.rewound {
                Terminal.print("  " + Terminal.paint("rewound", .red) + " from \(rewound.from) to \(rewound.to): \(rewound.reason)")
            }
            if let failed = agent.failed {
                Terminal.print("  " + Terminal.paint("failed", .red) + " release \(failed.version): \(failed.reason)")
            }
            if let error = agent.lastError {
                Terminal.print("  last error \(Format.ago(error.at))\(error.handoff.map { " (handoff \($0))" } ?? ""): \(error.reason)")
                for line in Format.tail(error.stderrTail, lines: 10) { Terminal.print(line) }
            }

            Terminal.print("")
            if agent.instances.isEmpty {
                Terminal.print("no instances")
            } else {
                var table = Table("INSTANCE", "PID", "VERSION", "STATE", "UP", "LOG")
                for instance in agent.instances {
                    table.add(instance.id, String(instance.pid), instance.version, instance.state, Format.since(instance.startedAt),
                              stateDir.map { Logs.instanceLog(stateDir: $0, instance: instance.id) })
                }
                table.print()
            }
            if let stateDir { Terminal.print("log of the working instance: \(Logs.currentLog(stateDir: stateDir, agent: name))") }

            if let (handoffs, _) = try? History.list(client, agent: name, limit: 5), !handoffs.isEmpty {
                Terminal.print("")
                History.table(handoffs, showAgent: false).print()
            }
        }
    }
}
