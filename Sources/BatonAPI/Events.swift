import BatonCore
import BatonHTTP
import BatonLedger
import Foundation
import Synchronization

/// `GET /v1/events?since=N&wait=S&limit=L&agent=A`: the ledger's records after `since`
/// (those about agent `A` only, when given), at once if there are any, else parked until
/// one is appended or the wait ends. Asked with `Accept: text/event-stream`, the same
/// records as Server-Sent Events, without end (`LedgerEventStream`).
final class EventWaiters: Sendable {
    private struct Waiter {
        let since: UInt64
        let limit: Int
        let agent: String?
        /// Where the search for this waiter's records goes on from (past records the
        /// agent filter left out).
        var scanned: UInt64
        let pending: Pending
    }

    private let ledger: Ledger
    private let waiters = Mutex<[Waiter]>([])

    init(ledger: Ledger) { self.ledger = ledger }

    func handle(_ request: Request, maxWait: Duration, most: Int) throws(HTTPError) -> Reply {
        let since = UInt64(try request.integer("since", default: 0, range: 0...Int.max))
        let limit = try request.integer("limit", default: 1000, range: 1...1000)
        let agent = try request.agentFilter()
        let wait = try request.wait(max: maxWait)
        if request.accepts(LedgerEventStream.mediaType) {
            // The browser's EventSource sends the id of the last event it saw when it reconnects.
            var after = since
            if let header = request.header("Last-Event-ID") {
                guard let seq = UInt64(header.trimmingCharacters(in: .whitespaces)) else {
                    throw HTTPError(status: 400, code: "invalid_parameter",
                                    message: "header 'Last-Event-ID': must be the seq of a record (an integer), not \(WireJSON.quote(header))")
                }
                after = seq
            }
            return .stream(StreamedResponse(headers: LedgerEventStream.headers,
                                            source: LedgerEventStream(ledger: ledger, after: after, agent: agent)))
        }
        if wait == 0 || hasNews(since: since, agent: agent) {
            return .respond(page(since: since, limit: limit, agent: agent))
        }
        let pending = try request.park(deadline: .milliseconds(Int64(wait * 1000)),
                                       limit: ParkLimit(group: "events", most: most, overflow: .refuse)) { [self] in
            page(since: since, limit: limit, agent: agent)
        }
        waiters.withLock { waiters in
            waiters.removeAll { $0.pending.isAnswered }
            waiters.append(Waiter(since: since, limit: limit, agent: agent, scanned: since, pending: pending))
        }
        // A commit between the check above and the registration would otherwise be missed.
        wake(lastSeq: ledger.lastSeq)
        return .parked
    }

    /// Whether a request for the records after `since` gets an answer now: records to
    /// give, or the news that some it asked for are gone.
    private func hasNews(since: UInt64, agent: String?) -> Bool {
        guard ledger.lastSeq > since else { return false }
        guard let agent else { return true }
        let window = ledger.records(after: since, limit: 1, agent: agent)
        return !window.records.isEmpty || since + 1 < window.oldestSeq
    }

    /// Answers every waiter that has something new. Runs on the ledger's writer thread.
    func wake(lastSeq: UInt64) {
        let ready = waiters.withLock { waiters -> [Waiter] in
            var ready: [Waiter] = []
            waiters.removeAll { waiter in
                guard waiter.scanned < lastSeq else { return false }
                if waiter.agent == nil || hasNews(since: waiter.scanned, agent: waiter.agent) {
                    ready.append(waiter)
                    return true
                }
                return false
            }
            for index in waiters.indices where waiters[index].agent != nil { waiters[index].scanned = lastSeq }
            return ready
        }
        for waiter in ready {
            waiter.pending.answer(page(since: waiter.since, limit: waiter.limit, agent: waiter.agent))
        }
    }

    func page(since: UInt64, limit: Int, agent: String?) -> Response {
        let window = ledger.records(after: since, limit: limit, agent: agent)
        let truncated = window.missed(after: since)
        var body: [UInt8] = Array(#"{"last_seq":\#(window.lastSeq),"oldest_seq":\#(window.oldestSeq),"records":["#.utf8)
        for (index, record) in window.records.enumerated() {
            if index > 0 { body.append(UInt8(ascii: ",")) }
            body += record.json
        }
        body += Array(#"],"truncated":\#(truncated)}"#.utf8)
        return .json(bytes: body)
    }
}

/// The ledger's records after a seq as Server-Sent Events, one event per record:
///
///     id: <seq>
///     event: <kind, e.g. handoff.phase>
///     data: <the record's line, as GET /v1/events gives it>
///
/// Each read starts from the seq of the last record given, never from the commit that
/// woke the stream: records appended meanwhile come in order, none twice. When the
/// records asked for have left the ledger's window, one `truncated` event (without id)
/// says so, then the stream goes on from the oldest record kept.
final class LedgerEventStream: StreamSource {
    static let mediaType = "text/event-stream"
    static let headers: [(name: String, value: String)] = [
        ("Content-Type", mediaType), ("Cache-Control", "no-cache"),
        // nginx would otherwise hold the events back in its buffer.
        ("X-Accel-Buffering", "no"),
    ]
    /// Records read at a time: a stream far behind catches up in pieces this big.
    static let batch = 256

    private let ledger: Ledger
    private let agent: String?
    /// The seq of the last record given (or looked at, past the agent filter).
    private let cursor: Mutex<UInt64>
    let keepalive = Array(": keepalive\n\n".utf8)

    init(ledger: Ledger, after: UInt64, agent: String?) {
        self.ledger = ledger
        self.agent = agent
        self.cursor = Mutex(after)
    }

    func next() -> [UInt8] {
        cursor.withLock { cursor in
            let window = ledger.records(after: cursor, limit: Self.batch, agent: agent)
            var out: [UInt8] = []
            if window.missed(after: cursor) {
                out += Array("event: truncated\ndata: {\"after\":\(cursor),\"oldest_seq\":\(window.oldestSeq)}\n\n".utf8)
            }
            for record in window.records {
                out += Array("id: \(record.seq)\nevent: \(record.kind)\ndata: ".utf8)
                out += record.json
                out += [UInt8(ascii: "\n"), UInt8(ascii: "\n")]
            }
            cursor = window.scanned
            return out
        }
    }
}

extension Request {
    /// Whether the `Accept` header names `mediaType` (parameters and q-values aside).
    func accepts(_ mediaType: String) -> Bool {
        guard let accept = header("Accept") else { return false }
        return accept.split(separator: ",").contains { range in
            range.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } == mediaType
        }
    }

    /// The `agent` query parameter: only records about this agent (400 when it is no
    /// agent name; an agent that is not configured simply has no records).
    func agentFilter() throws(HTTPError) -> String? {
        guard let agent = query("agent") else { return nil }
        guard Names.isValidAgent(agent) else {
            throw HTTPError.badParameter("agent", "must be an agent name, not \(WireJSON.quote(agent))")
        }
        return agent
    }
}
