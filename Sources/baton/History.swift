import ArgumentParser
import BatonClient
import BatonCore
import Foundation

struct History: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Past handoffs, newest first: from, to, mode, outcome, gap, duration, who.")

    @Argument(help: "Only this agent's handoffs.")
    var agent: String?

    @Option(name: [.short, .long], help: "How many handoffs at most (1 to 1000).")
    var limit: Int = 20

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        guard (1...1000).contains(limit) else { throw ValidationError("--limit must be 1 to 1000") }
    }

    func run() throws {
        try reporting {
            let client = try connection.client()
            let (handoffs, body) = try Self.list(client, agent: agent, limit: limit)
            if output.json { return Terminal.printJSON(body) }
            guard !handoffs.isEmpty else {
                return Terminal.print(agent.map { "no handoffs of \($0) yet" } ?? "no handoffs yet")
            }
            Self.table(handoffs, showAgent: agent == nil).print()
        }
    }

    /// Handoffs newest first, and the body that lists them (`{"handoffs":[...]}`).
    static func list(_ client: BatonClient, agent: String?, limit: Int) throws -> ([HandoffView], [UInt8]) {
        let reply = try client.handoffs(agent: agent, limit: limit)
        return (reply.value.handoffs, reply.response.body)
    }

    static func table(_ handoffs: [HandoffView], showAgent: Bool) -> Table {
        var table = showAgent
            ? Table("HANDOFF", "AGENT", "FROM", "TO", "MODE", "OUTCOME", "GAP", "DURATION", "STARTED", "BY")
            : Table("HANDOFF", "FROM", "TO", "MODE", "OUTCOME", "GAP", "DURATION", "STARTED", "BY")
        for handoff in handoffs {
            let duration = handoff.endedAt.map { Format.duration(milliseconds: $0.milliseconds - handoff.startedAt.milliseconds) }
            let cells: [String?] = [handoff.id] + (showAgent ? [handoff.agent] : []) + [
                handoff.from, handoff.to, handoff.mode.rawValue, outcome(handoff), Format.gap(handoff.gapMs),
                duration ?? "running", Format.clock(handoff.startedAt), handoff.by,
            ]
            table.add(cells)
        }
        return table
    }

    static func outcome(_ handoff: HandoffView) -> String {
        guard let outcome = handoff.outcome else { return Terminal.paint(handoff.phase, .yellow) }
        switch outcome {
        case .committed: return Terminal.paint("committed", .green)
        case .failed, .reverted: return Terminal.paint(outcome.rawValue, .red) + (handoff.error.map { ": \($0)" } ?? "")
        case .cancelled: return Terminal.paint("cancelled", .yellow)
        }
    }
}
