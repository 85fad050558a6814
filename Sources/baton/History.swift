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
            Self.table(handoffs, showAgent: agent == nil, by: Self.initiators(body)).print()
        }
    }

    /// Handoffs newest first, and the body that lists them (`{"handoffs":[...]}`). From a
    /// batond without `GET /v1/handoffs`, they are put together from the ledger's recent
    /// records instead (the ones `GET /v1/events` still holds).
    static func list(_ client: BatonClient, agent: String?, limit: Int) throws -> ([HandoffView], [UInt8]) {
        do {
            let reply = try client.handoffs(agent: agent, limit: limit)
            return (reply.value.handoffs, reply.response.body)
        } catch where error.apiError?.code == "not_found" {
            let records = try client.events(since: 0, limit: 1000).value.records
            let handoffs = Array(fromLedger(records, agent: agent).prefix(limit))
            struct List: Encodable { var handoffs: [HandoffView] }
            let encoder = JSONEncoder()
            encoder.keyEncodingStrategy = .convertToSnakeCase
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            return (handoffs, Array(try encoder.encode(List(handoffs: handoffs))))
        }
    }

    /// The handoffs the records tell of, newest first.
    static func fromLedger(_ records: [Record], agent: String?) -> [HandoffView] {
        var views: [String: HandoffView] = [:]
        var order: [String] = []
        for record in records {
            switch record.event {
            case .handoffBegan(let began) where agent == nil || began.agent == agent:
                order.append(began.handoff)
                views[began.handoff] = HandoffView(id: began.handoff, agent: began.agent, from: began.from, to: began.to, mode: began.mode,
                                                   phase: "began", outcome: nil, error: nil, gapMs: nil, startedAt: record.time,
                                                   endedAt: nil, steps: [.init(phase: "began", at: record.time)])
            case .handoffPhase(let phase):
                views[phase.handoff]?.phase = phase.phase
                views[phase.handoff]?.steps.append(.init(phase: phase.phase, at: record.time))
            case .handoffEnded(let end):
                views[end.handoff]?.outcome = end.outcome
                views[end.handoff]?.phase = end.outcome.rawValue
                views[end.handoff]?.gapMs = end.gapMs
                views[end.handoff]?.error = end.error
                views[end.handoff]?.endedAt = record.time
            default:
                continue
            }
        }
        return order.reversed().compactMap { views[$0] }
    }

    /// `by` of each handoff, where the list gives it.
    static func initiators(_ body: [UInt8]) -> [String: String] {
        struct List: Decodable { var handoffs: [Item] }
        struct Item: Decodable { var id: String; var by: String? }
        let list = try? JSONDecoder().decode(List.self, from: Data(body))
        return Dictionary((list?.handoffs ?? []).compactMap { item in item.by.map { (item.id, $0) } }) { first, _ in first }
    }

    static func table(_ handoffs: [HandoffView], showAgent: Bool, by: [String: String] = [:]) -> Table {
        var table = showAgent
            ? Table("HANDOFF", "AGENT", "FROM", "TO", "MODE", "OUTCOME", "GAP", "DURATION", "STARTED", "BY")
            : Table("HANDOFF", "FROM", "TO", "MODE", "OUTCOME", "GAP", "DURATION", "STARTED", "BY")
        for handoff in handoffs {
            let duration = handoff.endedAt.map { Format.duration(milliseconds: $0.milliseconds - handoff.startedAt.milliseconds) }
            let cells: [String?] = [handoff.id] + (showAgent ? [handoff.agent] : []) + [
                handoff.from, handoff.to, handoff.mode.rawValue, outcome(handoff), Format.gap(handoff.gapMs),
                duration ?? "running", Format.clock(handoff.startedAt), by[handoff.id],
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
