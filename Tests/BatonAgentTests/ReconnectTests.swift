@testable import BatonAgent
import BatonTestSupport
import Foundation
import Glibc
import Testing

/// BatonAgent while batond is away: against a stand-in for batond on a Unix socket
/// that cuts a long-poll, disappears, and comes back.
@Suite("BatonAgent while batond is away")
struct ReconnectTests {
    static let fast = RetryPolicy(first: .milliseconds(10), cap: .milliseconds(50))

    func agent(_ path: String, lines: Lines = Lines()) -> BatonAgent {
        BatonAgent(
            agent: "web", instance: "web.1", version: "1.0", token: "secret", endpoint: .unix(path: path),
            diagnostics: { lines.append($0) }, retryPolicy: Self.fast)
    }

    @Test func theLongPollRidesOutBatondsAbsenceAndResumesWithItsSeenCursor() throws {
        let directory = TemporaryDirectory("agent")
        let path = directory.file("agent.sock")
        let lines = Lines()
        let baton = agent(path, lines: lines)

        // batond parks the long-poll, then dies: the connection ends with no answer.
        let first = try ScriptedBatond(path: path) { _, _ in .cut }
        let answer = inBackground { try baton.waitForSignal(seen: .go, wait: .seconds(20)) }
        try first.waitForRequests(1)
        first.close()  // and its socket is gone
        try lines.wait { $0.contains("baton: signal: cannot reach batond") && $0.contains("retrying") }
        // Away for a while: the agent keeps asking (a missing socket, refused)...
        usleep(300_000)
        // ...and a batond that knows it comes back, busy at first.
        let second = try ScriptedBatond(path: path) { count, _ in
            count == 1 ? .answer(503, #"{"error":{"code":"shutting_down","message":"stopping"}}"#)
                : .answer(200, #"{"instance":"web.1","signal":"stop","handoff":null}"#)
        }
        defer { second.close() }
        #expect(try answer.wait(timeout: 20) == .stop)
        let polls = first.requests + second.requests
        #expect(second.requests.count == 2)
        #expect(polls.allSatisfy { $0.hasPrefix("GET /v1/instances/web.1/signal?seen=go&wait=20 HTTP/1.1\r\n") }, "\(polls)")
        #expect(polls.allSatisfy { $0.contains("Authorization: Bearer secret\r\n") })
        #expect(lines.values.contains { $0.contains("batond answers again") }, "\(lines.values)")
        #expect(!lines.values.joined().contains("secret"))
    }

    @Test func aReportIsRetriedUntilBatondAnswersIt() throws {
        let directory = TemporaryDirectory("agent")
        let path = directory.file("agent.sock")
        let baton = agent(path)
        // No batond at all when the report is made.
        let answer = inBackground { try baton.ready() }
        usleep(300_000)
        let server = try ScriptedBatond(path: path) { count, _ in
            count == 1 ? .cut : .answer(200, #"{"instance":"web.1","signal":"wait","handoff":null}"#)
        }
        defer { server.close() }
        #expect(try answer.wait(timeout: 20) == .wait)
        #expect(server.requests.count == 2)
        #expect(server.requests.allSatisfy { $0.hasPrefix("POST /v1/instances/web.1/ready HTTP/1.1\r\n") && $0.hasSuffix("{}") })
    }

    @Test(arguments: [401, 404])
    func anAnswerThatBatondDoesNotKnowTheInstanceIsThrownAtOnce(status: Int) throws {
        let directory = TemporaryDirectory("agent")
        let path = directory.file("agent.sock")
        let server = try ScriptedBatond(path: path) { _, _ in
            .answer(status, #"{"error":{"code":"unauthorized","message":"the token is not valid"}}"#)
        }
        defer { server.close() }
        let baton = agent(path)
        let calls: [() throws -> Void] = [{ _ = try baton.waitForSignal(seen: .go) }, { _ = try baton.ready() }, { try baton.stopped() }]
        for call in calls {
            let error = try #require(throws: BatonAgentError.self) { try call() }
            #expect(error.isUnknownInstance)
            #expect(!error.isTransient)
        }
        #expect(server.requests.count == 3, "each asked once, never retried")
    }

    @Test func aReportBatondRefusesAsMeaninglessIsNotRetried() throws {
        let directory = TemporaryDirectory("agent")
        let path = directory.file("agent.sock")
        let server = try ScriptedBatond(path: path) { _, _ in
            .answer(400, #"{"error":{"code":"bad_request","message":"no"}}"#)
        }
        defer { server.close() }
        let error = try #require(throws: BatonAgentError.self) { _ = try agent(path).failed(reason: "x") }
        #expect(!error.isUnknownInstance && !error.isTransient)
        #expect(server.requests.count == 1)
    }

    @Test func theStandardPausesDoubleFrom100msTo5sWithJitter() {
        var backoff = RetryPolicy.standard.start()
        var step: Duration = .milliseconds(100)
        for _ in 0..<12 {
            let pause = backoff.next()
            #expect(pause >= step / 2 && pause <= step, "\(pause) for a step of \(step)")
            step = min(step * 2, .seconds(5))
        }
        #expect(step == .seconds(5))
        // Jitter: two agents cut off together do not retry in step.
        let pauses = (0..<20).map { _ in
            var fresh = RetryPolicy.standard.start()
            return fresh.next()
        }
        #expect(Set(pauses).count > 1)
    }
}

/// Lines a call wrote to its diagnostics, shared with the test.
final class Lines: Sendable {
    private let lines = Locked<[String]>([])
    private let added = DispatchSemaphore(value: 0)

    func append(_ line: String) {
        lines.update { $0 += [line] }
        added.signal()
    }

    var values: [String] { lines.get() }

    /// Waits until a line satisfies `condition`.
    func wait(timeout: Double = 10, for condition: (String) -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !values.contains(where: condition) {
            guard added.wait(timeout: .now() + deadline.timeIntervalSinceNow) == .success else {
                throw TestFailure("no such diagnostics line in \(values)")
            }
        }
    }
}
