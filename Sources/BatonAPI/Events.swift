import BatonCore
import BatonHTTP
import BatonLedger
import Synchronization

/// `GET /v1/events?since=N&wait=S&limit=L`: the ledger's records after `since`, at once
/// if there are any, else parked until one is appended or the wait ends.
final class EventWaiters: Sendable {
    private struct Waiter {
        let since: UInt64
        let limit: Int
        let pending: Pending
    }

    private let ledger: Ledger
    private let waiters = Mutex<[Waiter]>([])

    init(ledger: Ledger) { self.ledger = ledger }

    func handle(_ request: Request, maxWait: Duration, most: Int) throws(HTTPError) -> Reply {
        let since = UInt64(try request.integer("since", default: 0, range: 0...Int.max))
        let limit = try request.integer("limit", default: 1000, range: 1...1000)
        let wait = try request.wait(max: maxWait)
        if wait == 0 || ledger.lastSeq > since {
            return .respond(page(since: since, limit: limit))
        }
        let pending = try request.park(deadline: .milliseconds(Int64(wait * 1000)),
                                       limit: ParkLimit(group: "events", most: most, overflow: .refuse)) { [self] in
            page(since: since, limit: limit)
        }
        waiters.withLock { waiters in
            waiters.removeAll { $0.pending.isAnswered }
            waiters.append(Waiter(since: since, limit: limit, pending: pending))
        }
        // A commit between the check above and the registration would otherwise be missed.
        wake(lastSeq: ledger.lastSeq)
        return .parked
    }

    /// Answers every waiter that has something new. Runs on the ledger's writer thread.
    func wake(lastSeq: UInt64) {
        let ready = waiters.withLock { waiters -> [Waiter] in
            let ready = waiters.filter { $0.since < lastSeq }
            waiters.removeAll { $0.since < lastSeq }
            return ready
        }
        for waiter in ready {
            waiter.pending.answer(page(since: waiter.since, limit: waiter.limit))
        }
    }

    func page(since: UInt64, limit: Int) -> Response {
        let window = ledger.records(after: since, limit: limit)
        let truncated = since + 1 < window.oldestSeq && window.lastSeq >= window.oldestSeq
        var body: [UInt8] = Array(#"{"last_seq":\#(window.lastSeq),"oldest_seq":\#(window.oldestSeq),"records":["#.utf8)
        for (index, line) in window.lines.enumerated() {
            if index > 0 { body.append(UInt8(ascii: ",")) }
            body += line.last == UInt8(ascii: "\n") ? line.dropLast() : line[...]
        }
        body += Array(#"],"truncated":\#(truncated)}"#.utf8)
        return .json(bytes: body)
    }
}
