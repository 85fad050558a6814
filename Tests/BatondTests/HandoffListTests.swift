import BatonCore
import BatonTestSupport
import Foundation
import Testing

/// What an operator reads about handoffs and restarts: the list of handoffs, a wait for
/// one to end, and an agent's restarts and next attempt during a backoff. Real batond,
/// real agents (baton-testagent).
@Suite("handoff list and waits")
struct HandoffListTests {
    /// batond with `web` at 1.0, working, and the other releases given.
    func start(_ releases: [String: [String]], extra: String = "") throws -> (BatondProcess, TestReleases) {
        let state = TemporaryDirectory("handoffs")
        let agents = TestReleases(state: state)
        for (version, switches) in releases { try agents.add(version, switches) }
        try agents.setCurrent("1.0")
        let daemon = try BatondProcess(state: state, configText: agents.config() + extra)
        try waitUntil(timeout: 30) { (try? self.view(daemon))?["state"] as? String == "running" }
        return (daemon, agents)
    }

    func view(_ daemon: BatondProcess) throws -> [String: Any] {
        try daemon.endpoint.get("/v1/agents/web", token: daemon.token).json()
    }

    func desire(_ daemon: BatondProcess, _ version: String) throws -> String {
        let answer = try daemon.endpoint.json("PUT", "/v1/agents/web/desired", token: daemon.token, #"{"version":"\#(version)"}"#)
        guard answer.status == 202, let id = try answer.json()["id"] as? String else {
            throw TestFailure("PUT desired: \(answer.status) \(answer.text)")
        }
        return id
    }

    func list(_ daemon: BatondProcess, _ query: String = "") throws -> [[String: Any]] {
        let answer = try daemon.endpoint.get("/v1/handoffs\(query)", token: daemon.token)
        guard answer.status == 200 else { throw TestFailure("GET /v1/handoffs\(query): \(answer.status) \(answer.text)") }
        return try answer.json()["handoffs"] as? [[String: Any]] ?? []
    }

    /// `?wait=` parks until the outcome: the answer of a wait asked for while the
    /// successor still took its time to get ready carries the outcome.
    @Test func aWaitEndsWithTheOutcome() throws {
        let (daemon, _) = try start(["1.0": [], "2.0": ["--ready-after", "1"]])
        defer { daemon.stop() }
        let id = try desire(daemon, "2.0")
        let started = Date()
        let answer = try daemon.endpoint.get("/v1/handoffs/\(id)?wait=30", token: daemon.token, timeout: 40)
        #expect(answer.status == 200, "\(answer.text)")
        let handoff = try answer.json()
        #expect(handoff["outcome"] as? String == "committed", "\(handoff)")
        #expect(Date().timeIntervalSince(started) >= 0.9, "answered before the successor could be ready")
        // An ended handoff answers at once, wait or not.
        let again = try daemon.endpoint.get("/v1/handoffs/\(id)?wait=30", token: daemon.token, timeout: 5)
        #expect(try again.json()["outcome"] as? String == "committed")
    }

    /// At the end of its wait, the handoff as it is: still running, no outcome.
    @Test func aWaitThatEndsFirstAnswersTheHandoffAsItIs() throws {
        let (daemon, _) = try start(["1.0": [], "2.0": ["--ready-after", "5"]])
        defer { daemon.stop() }
        let id = try desire(daemon, "2.0")
        let started = Date()
        let answer = try daemon.endpoint.get("/v1/handoffs/\(id)?wait=0.4", token: daemon.token, timeout: 10)
        let handoff = try answer.json()
        #expect(answer.status == 200)
        #expect(Date().timeIntervalSince(started) >= 0.35)
        #expect(handoff["outcome"] is NSNull, "\(handoff)")
        #expect(handoff["id"] as? String == id)
        // Meanwhile the list has it, running, first.
        let running = try list(daemon)
        #expect(running.first?["id"] as? String == id && running.first?["outcome"] is NSNull, "\(running)")
        let bad = try daemon.endpoint.get("/v1/handoffs/\(id)?wait=soon", token: daemon.token)
        #expect(bad.status == 400 && bad.errorCode == "invalid_parameter")
    }

    /// Newest first, filtered by agent, limited; ended ones with their outcome.
    @Test func theListIsNewestFirst() throws {
        let (daemon, _) = try start(["1.0": [], "2.0": [], "3.0": ["--fail-check"]])
        defer { daemon.stop() }
        #expect(try list(daemon).isEmpty)
        let first = try desire(daemon, "2.0")
        _ = try daemon.endpoint.get("/v1/handoffs/\(first)?wait=30", token: daemon.token, timeout: 40)
        let second = try desire(daemon, "3.0")
        _ = try daemon.endpoint.get("/v1/handoffs/\(second)?wait=30", token: daemon.token, timeout: 40)
        let all = try list(daemon)
        #expect(all.map { $0["id"] as? String } == [second, first], "\(all)")
        #expect(all.map { $0["outcome"] as? String } == ["failed", "committed"])
        #expect(all.first?["to"] as? String == "3.0" && all.first?["agent"] as? String == "web")
        // Who asked: the desired version's `by` (the operator token here).
        #expect(all.map { $0["by"] as? String } == ["operator (token)", "operator (token)"], "\(all)")
        #expect(try list(daemon, "?limit=1").map { $0["id"] as? String } == [second])
        #expect(try list(daemon, "?agent=web").count == 2)
        #expect(try list(daemon, "?agent=other").isEmpty)
        for query in ["?limit=0", "?limit=1001", "?agent=Not%20A%20Name"] {
            let answer = try daemon.endpoint.get("/v1/handoffs\(query)", token: daemon.token)
            #expect(answer.status == 400 && answer.errorCode == "invalid_parameter", "\(query): \(answer.text)")
        }
        // After a restart of batond, from the ledger's history.
        daemon.stop()
        let again = try BatondProcess(state: daemon.state, configText: TestReleases(state: daemon.state).config())
        defer { again.stop() }
        let history = try list(again)
        #expect(history.map { $0["id"] as? String } == [second, first], "\(history)")
        #expect(history.first?["phase"] as? String == "failed")
    }

    /// An agent whose instance crashes waits out its backoff with the time of the next
    /// attempt in its view; then it counts one restart more.
    @Test func restartsAndTheNextAttemptAreInTheAgentsView() throws {
        let state = TemporaryDirectory("restarts")
        let agents = TestReleases(state: state)
        try agents.add("1.0", ["--crash-after", "0.3"])
        try agents.setCurrent("1.0")
        let config = agents.config() + "\ncrash_loop_exits = 0\nrestart_backoff = \"2s\"\nrestart_backoff_max = \"2s\"\n"
        let daemon = try BatondProcess(state: state, configText: config)
        defer { daemon.stop() }
        var backoff: [String: Any] = [:]
        try waitUntil(timeout: 30) {
            backoff = (try? self.view(daemon)) ?? [:]
            return backoff["state"] as? String == "backoff"
        }
        let next = try #require((backoff["next_attempt_at"] as? String).flatMap { Timestamp(rfc3339: $0) }, "\(backoff)")
        let now = Timestamp.now()
        #expect(next > now && next.milliseconds <= now.milliseconds + 2100, "next attempt \(next) at \(now)")
        #expect(backoff["restarts"] as? Int == 0)
        try waitUntil(timeout: 30) { (try? self.view(daemon))?["restarts"] as? Int == 1 }
        let restarted = try view(daemon)
        #expect(restarted["next_attempt_at"] is NSNull || restarted["state"] as? String == "backoff", "\(restarted)")
    }
}
