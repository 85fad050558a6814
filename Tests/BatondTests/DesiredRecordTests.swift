import BatonTestSupport
import Foundation
import Glibc
import Testing

/// An operator's desired version is never half recorded: its `agent.desired` reaches the
/// disk in the same batch as the handoff it begins. batond killed right after that batch
/// (its debug build's crash point `desired-recorded`, before the answer) leaves a handoff
/// in flight that the next batond ends as the table of docs/ledger.md says, never a
/// desired version that nothing hands over to. The crash-point soak (SoakTests) found it.
@Suite("desired version and its handoff, one batch", .serialized)
struct DesiredRecordTests {
    @Test(.enabled(if: CrashPoints.work, "crash points exist only in debug builds"), .timeLimit(.minutes(3)))
    func killedOnceTheDesiredVersionIsDurableItsHandoffIsTooAndEnds() throws {
        let state = TemporaryDirectory("desired-recorded")
        let agents = TestReleases(state: state)
        try agents.add("1.0", [])
        try agents.add("2.0", [])
        try agents.setCurrent("1.0")
        let config = agents.config(stop: "2s", kill: "1s")
        let first = try CrashPoints.start("desired-recorded", agents, state: state, config: config)
        // No answer comes: batond dies once the desired version is durable.
        #expect(throws: (any Error).self) {
            try first.endpoint.json("PUT", "/v1/agents/web/desired", token: first.token, #"{"version":"2.0"}"#)
        }
        CrashPoints.expectKilled(first)

        let second = try BatondProcess(state: state, configText: config)
        defer { second.stop() }
        let records = try second.endpoint.get("/v1/events?since=0", token: second.token).json()["records"] as? [[String: Any]] ?? []
        let kinds = records.map { $0["kind"] as? String ?? "" }
        let desired = try #require(kinds.firstIndex(of: "agent.desired"), "\(kinds)")
        // The handoff began with it, before batond died.
        let began = try #require(kinds.firstIndex(of: "handoff.began"), "a desired version that nothing hands over to: \(kinds)")
        let restarted = try #require(kinds.lastIndex(of: "daemon.started"))
        #expect(desired < began && began < restarted, "\(kinds)")
        let id = try #require((records[began]["data"] as? [String: Any])?["handoff"] as? String)
        #expect((records[began]["data"] as? [String: Any])?["by"] as? String == "operator (token)", "\(records[began])")

        // The next batond ends it as the table says (nothing of it had run: cancelled),
        // and 1.0 works on; never two at once.
        var view: [String: Any] = [:]
        try waitUntil(timeout: 60) {
            view = (try? second.endpoint.get("/v1/handoffs/\(id)", token: second.token).json()) ?? [:]
            return view["outcome"] is String
        }
        #expect(["cancelled", "committed"].contains(view["outcome"] as? String), "\(view)")
        try waitUntil(timeout: 30) {
            (try? second.endpoint.get("/v1/agents/web", token: second.token).json()["state"] as? String) == "running"
        }
        #expect(overlaps(agents.log()).isEmpty, "\(agents.log())")
    }
}
