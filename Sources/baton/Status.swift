import ArgumentParser
import BatonClient
import BatonCore
import Foundation

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "batond and every agent: running and desired version, state, since when, last error.")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        try reporting {
            let client = try connection.client()
            let status = try client.status()
            if output.json { return Terminal.printJSON(status.response.body) }
            let machine = try? client.machineVersion().value
            Self.printStatus(status.value, machine: machine)
        }
    }

    static func printStatus(_ status: StatusView, machine: MachineVersionView?) {
        var head = "batond \(status.version), pid \(status.pid), up \(Format.since(status.startedAt)), state \(status.stateDir)"
        if let machine {
            head += ", machine version \(machine.version ?? "-")"
            if let pending = machine.pending { head += " (rollout to \(pending.version): \(pending.phase.rawValue))" }
        }
        if !status.ledger.writable { head += ", " + Terminal.paint("ledger NOT writable", .red) }
        Terminal.print(head)
        if let fleet = status.fleet {
            var line = "fleet \(fleet.fleet) as \(fleet.host)"
            if fleet.connected {
                line += ": plan \(fleet.planId.map { "\($0) (\(fleet.planVersion ?? "?"))" } ?? "none")"
                if let phase = fleet.rolloutPhase { line += ", rollout \(phase.rawValue)" }
                if let phase = fleet.hostPhase { line += ", this host \(phase.rawValue)" }
                if fleet.coordinator { line += ", coordinator" }
            } else {
                line += ": " + Terminal.paint("etcd unreachable", .red) + (fleet.error.map { " (\($0))" } ?? "")
                    + (fleet.lastContact.map { ", last contact \(Format.ago($0))" } ?? "") + "; agents stay as they are"
            }
            Terminal.print(line)
        }
        guard !status.agents.isEmpty else {
            Terminal.print("no agents are configured ([agents.NAME] in batond's config)")
            return
        }
        var table = Table("AGENT", "STATE", "RUNNING", "DESIRED", "SINCE", "CONDITION", "LAST ERROR")
        for agent in status.agents {
            table.add(agent.name, state(agent), agent.running?.version, agent.desired?.version,
                      agent.running.map { Format.ago($0.since) }, condition(agent), agent.lastError.map(lastError))
        }
        table.print()
    }

    static func state(_ agent: AgentView) -> String {
        let text = agent.state.rawValue
        switch agent.state {
        case .running: return Terminal.paint(text, .green)
        case .failed, .rewound, .backoff: return Terminal.paint(text, .red)
        case .handingOff, .starting: return Terminal.paint(text, .yellow)
        case .stopped: return text
        }
    }

    static func condition(_ agent: AgentView) -> String {
        switch agent.condition.status {
        case .ok: return "ok"
        case .degraded: return Terminal.paint("degraded", .red) + (agent.condition.reason.map { ": \($0)" } ?? "")
        }
    }

    static func lastError(_ error: LastError) -> String {
        let firstLine = error.reason.split(separator: "\n").first.map(String.init) ?? error.reason
        return "\(Format.ago(error.at)): \(firstLine)"
    }
}
