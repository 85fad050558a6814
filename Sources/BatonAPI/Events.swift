import BatonCore
import BatonHTTP
import BatonLedger
import Synchronization

/// `GET /v1/events?since=N&wait=S&limit=L&agent=A`: the ledger's records after `since`
/// (those about agent `A` only, when given), at once if there are any, else parked until
/// one is appended or the wait ends.
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
        let truncated = since + 1 < window.oldestSeq && window.lastSeq >= window.oldestSeq
        var body: [UInt8] = Array(#"{"last_seq":\#(window.lastSeq),"oldest_seq":\#(window.oldestSeq),"records":["#.utf8)
        for (index, record) in window.records.enumerated() {
            if index > 0 { body.append(UInt8(ascii: ",")) }
            body += record.line.last == UInt8(ascii: "\n") ? record.line.dropLast() : record.line[...]
        }
        body += Array(#"],"truncated":\#(truncated)}"#.utf8)
        return .json(bytes: body)
    }
}

extension Request {
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
