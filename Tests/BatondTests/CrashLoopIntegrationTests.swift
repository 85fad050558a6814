import BatonCore
import BatonTestSupport
import Foundation
import Testing

/// Crash loops with the real batond and real agents: release 2.0 passes its handoff
/// (ready, go) and then crashes 0.3 s into its work, again at every restart. Checked
/// from outside: the agents' own event file, `/v1/agents`, the ledger's records.
@Suite("crash loops")
struct CrashLoopIntegrationTests {
    /// 3 abnormal exits within 30 s are a loop; restarts wait 100 to 200 ms.
    static let knobs = """

        crash_loop_exits = 3
        crash_loop_window = "30s"
        restart_backoff = "100ms"
        restart_backoff_max = "200ms"
        """

    /// batond with `web` at 1.0, working, and 2.0 that crashes after go.
    func start(irreversible: Bool) throws -> (BatondProcess, TestReleases) {
        let state = TemporaryDirectory("crashloop")
        let agents = TestReleases(state: state)
        try agents.add("1.0")
        try agents.add("2.0", ["--crash-after", "0.3"])
        if irreversible {
            let manifest = ReleaseManifest(agent: "web", version: "2.0", sha256: String(repeating: "0", count: 64), size: 0,
                                           unpackedBytes: 0, files: 1, format: .tar, source: .local, pushedAt: .now(),
                                           pushedBy: "test", irreversible: true)
            try manifest.encoded().write(to: URL(fileURLWithPath: state.file("releases/web/2.0/release.json")))
        }
        try agents.setCurrent("1.0")
        let daemon = try BatondProcess(state: state, configText: agents.config(ready: "5s", stop: "2s", kill: "1s") + Self.knobs)
        try waitUntil(timeout: 30) { (try? self.view(daemon))?["state"] as? String == "running" }
        return (daemon, agents)
    }

    func view(_ daemon: BatondProcess) throws -> [String: Any] {
        try daemon.endpoint.get("/v1/agents/web", token: daemon.token).json()
    }

    func records(_ daemon: BatondProcess) throws -> [[String: Any]] {
        try daemon.endpoint.get("/v1/events?since=0", token: daemon.token).json()["records"] as? [[String: Any]] ?? []
    }

    func desire(_ daemon: BatondProcess, _ version: String) throws {
        let answer = try daemon.endpoint.json("PUT", "/v1/agents/web/desired", token: daemon.token, #"{"version":"\#(version)"}"#)
        guard answer.status == 202 else { throw TestFailure("PUT desired: \(answer.status) \(answer.text)") }
    }

    @Test func aCrashLoopingReleaseIsRewoundByItself() throws {
        let (daemon, agents) = try start(irreversible: false)
        defer { _ = daemon.stop() }
        try desire(daemon, "2.0")
        try waitUntil(timeout: 30) {
            guard let agent = try? self.view(daemon) else { return false }
            return agent["state"] as? String == "rewound" && (agent["running"] as? [String: Any])?["version"] as? String == "1.0"
        }
        let view = try self.view(daemon)
        let rewound = try #require(view["rewound"] as? [String: Any], "\(view)")
        #expect(rewound["from"] as? String == "2.0" && rewound["to"] as? String == "1.0")
        #expect((rewound["reason"] as? String)?.contains("2.0 crash-looped: 3 abnormal exits within 30s") == true, "\(rewound)")
        #expect(rewound["at"] is String && rewound["exits"] as? Int == 3 && rewound["window_ms"] as? Int == 30_000)
        // The rewind is batond's own handoff; the one to 2.0 was the operator's.
        let handoffs = try daemon.endpoint.get("/v1/handoffs?agent=web", token: daemon.token).json()["handoffs"] as? [[String: Any]] ?? []
        #expect(handoffs.map { "\($0["to"] ?? "") by \($0["by"] ?? "")" }.prefix(2) == ["1.0 by batond", "2.0 by operator (token)"], "\(handoffs)")
        #expect(view["failed"] is NSNull)
        #expect(agents.current == "1.0", "current points at the release it went back to")

        // The agents' own records: 2.0 worked three times, each time crashed, and was
        // not started again; 1.0 took over; never two at work at once.
        let events = agents.log()
        let crashed = Set(events.filter { $0.version == "2.0" && $0.event == "go" }.map(\.instance))
        #expect(crashed.count == 3, "\(events)")
        #expect(Set(events.filter { $0.version == "2.0" && $0.event == "started" }.map(\.instance)) == crashed)
        #expect(events.contains { $0.version == "1.0" && $0.event == "go" && !["web.1"].contains($0.instance) })
        #expect(overlaps(events).isEmpty, "two instances worked at once: \(events)")

        // The ledger: the reason is recorded before the handoff back begins, and that
        // handoff is a normal one that commits.
        let ledger = try records(daemon)
        let kinds = ledger.map { $0["kind"] as? String ?? "" }
        let rewoundAt = try #require(kinds.firstIndex(of: "agent.rewound"))
        let data = try #require(ledger[rewoundAt]["data"] as? [String: Any])
        #expect(data["from"] as? String == "2.0" && data["to"] as? String == "1.0" && data["exits"] as? Int == 3
                && data["window_ms"] as? Int == 30_000, "\(data)")
        #expect(kinds[rewoundAt + 1] == "handoff.began", "\(kinds)")
        let began = try #require(ledger[rewoundAt + 1]["data"] as? [String: Any])
        #expect(began["from"] as? String == "2.0" && began["to"] as? String == "1.0" && began["mode"] as? String == "parallel")
        let after = ledger[rewoundAt...]
        #expect(after.contains { $0["kind"] as? String == "handoff.ended" && ($0["data"] as? [String: Any])?["outcome"] as? String == "committed" })
        #expect(kinds.filter { $0 == "agent.rewound" }.count == 1)
        // Within the window: three exits of 2.0 instances, then the rewind.
        let exits = ledger[..<rewoundAt].filter { $0["kind"] as? String == "instance.exited"
            && crashed.contains(($0["data"] as? [String: Any])?["instance"] as? String ?? "") }
        #expect(exits.count == 3)
        // Monitoring sees the rewind, the restarts before it, and the state.
        let metrics = try daemon.endpoint.get("/metrics").text
        #expect(metrics.contains(#"baton_agent_rewinds_total{agent="web"} 1"#), "\(metrics)")
        #expect(metrics.contains(#"baton_agent_restarts_total{agent="web"} 2"#), "two restarts, the third exit is the loop")
        #expect(metrics.contains(#"baton_agents{state="rewound"} 1"#))

        // An operator's desired version ends the rewound state.
        try desire(daemon, "1.0")
        try waitUntil(timeout: 30) { (try? self.view(daemon))?["state"] as? String == "running" }
        #expect(try self.view(daemon)["rewound"] is NSNull)
    }

    @Test func anIrreversibleReleaseIsNotRewoundButFailed() throws {
        let (daemon, agents) = try start(irreversible: true)
        try desire(daemon, "2.0")
        try waitUntil(timeout: 30) { (try? self.view(daemon))?["state"] as? String == "failed" }
        var view = try self.view(daemon)
        let failed = try #require(view["failed"] as? [String: Any], "\(view)")
        #expect(failed["version"] as? String == "2.0")
        #expect((failed["reason"] as? String)?.contains("2.0 crash-looped: 3 abnormal exits within 30s; it is irreversible") == true,
                "\(failed)")
        #expect(view["rewound"] is NSNull && view["running"] is NSNull && (view["instances"] as? [Any])?.isEmpty == true)
        #expect(agents.current == "2.0", "not rewound")
        let kinds = try records(daemon).map { $0["kind"] as? String ?? "" }
        #expect(kinds.contains("agent.failed") && !kinds.contains("agent.rewound"), "\(kinds)")

        // Restarts stop: with a 200 ms backoff, 2.0 would have started several times.
        let started = agents.log().filter { $0.version == "2.0" && $0.event == "started" }.count
        #expect(started == 3)
        usleep(1_500_000)
        #expect(agents.log().filter { $0.version == "2.0" && $0.event == "started" }.count == started)

        // A batond started again keeps it failed, from the ledger.
        #expect(daemon.stop() == 0)
        let second = try BatondProcess(state: daemon.state, configText: agents.config(ready: "5s", stop: "2s", kill: "1s") + Self.knobs)
        defer { _ = second.stop() }
        view = try self.view(second)
        #expect(view["state"] as? String == "failed", "\(view)")
        usleep(500_000)
        #expect(agents.log().filter { $0.version == "2.0" && $0.event == "started" }.count == started)

        // Rolling back from an irreversible release needs force.
        let refused = try second.endpoint.json("POST", "/v1/agents/web/rollback", token: second.token, "{}")
        #expect(refused.status == 409)
        #expect(refused.errorCode == "irreversible_release")
        let message = try #require((try refused.json()["error"] as? [String: Any])?["message"] as? String)
        #expect(message.contains("2.0 is irreversible") && message.contains(#"{"force": true}"#), "\(message)")
        let noBody = try second.endpoint.request("POST", "/v1/agents/web/rollback", token: second.token)
        #expect(noBody.status == 409 && noBody.errorCode == "irreversible_release")
        let forced = try second.endpoint.json("POST", "/v1/agents/web/rollback", token: second.token, #"{"force": true}"#)
        #expect(forced.status == 202, "\(forced.text)")
        try waitUntil(timeout: 30) {
            guard let agent = try? self.view(second) else { return false }
            return agent["state"] as? String == "running" && (agent["running"] as? [String: Any])?["version"] as? String == "1.0"
        }
        #expect(try self.view(second)["failed"] is NSNull)
        #expect(agents.current == "1.0")
        #expect(overlaps(agents.log()).isEmpty)
    }
}
