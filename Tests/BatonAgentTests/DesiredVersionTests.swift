@testable import BatonAgent
import BatonTestSupport
import BatonWire
import Foundation
import Testing

/// BatonAgent and the desired version a signal answer carries: `waitForUpdate` returns
/// it and asks with `seen_desired`; `waitForSignal` still returns only a new signal.
@Suite("BatonAgent and the desired version")
struct DesiredVersionTests {
    static let goWithDesired = #"{"instance":"web.1","signal":"go","handoff":null,"desired":{"version":"2.0","mode":"parallel","set_at":"2026-11-30T07:00:00.000Z","set_by":"uid 0","sha256":"\#(String(repeating: "a", count: 64))","url":"http://x/2.0"}}"#

    func agent(_ path: String) -> BatonAgent {
        BatonAgent(agent: "web", instance: "web.1", version: "1.0", token: "secret", endpoint: .unix(path: path),
                   retryPolicy: RetryPolicy(first: .milliseconds(10), cap: .milliseconds(50)))
    }

    @Test func waitForUpdateReturnsANewDesiredVersionWithTheSameSignal() throws {
        let directory = TemporaryDirectory("agent")
        let path = directory.file("agent.sock")
        let server = try ScriptedBatond(path: path) { _, _ in .answer(200, Self.goWithDesired) }
        defer { server.close() }
        let update = try agent(path).waitForUpdate(seen: .init(signal: .go, desired: nil), wait: .seconds(5))
        #expect(update == .init(signal: .go, desired: .init(version: "2.0", mode: .parallel, setAt: Timestamp(rfc3339: "2026-11-30T07:00:00.000Z")!, setBy: "uid 0",
                                                                sha256: String(repeating: "a", count: 64), url: "http://x/2.0")))
        #expect(server.requests.first?.contains("GET /v1/instances/web.1/signal?seen=go&seen_desired=&wait=5") == true,
                "\(server.requests)")
    }

    @Test func waitForSignalAsksAgainWhenOnlyTheDesiredVersionChanged() throws {
        let directory = TemporaryDirectory("agent")
        let path = directory.file("agent.sock")
        let server = try ScriptedBatond(path: path) { count, _ in
            count == 1 ? .answer(200, Self.goWithDesired) : .answer(200, #"{"instance":"web.1","signal":"stop","handoff":null,"desired":null}"#)
        }
        defer { server.close() }
        #expect(try agent(path).waitForSignal(seen: .go, wait: .seconds(5)) == .stop)
        #expect(server.requests.count == 2)
        #expect(!(server.requests.first?.contains("seen_desired") ?? true))
    }
}
