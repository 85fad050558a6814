import BatonTestSupport
import Foundation
import Glibc
import Testing

/// The successor hears go the moment the old instance is gone, before the records that
/// came with it (the old one's stop, the go, the commit) are durable; the ledger held the
/// decision since `stopping_old`. batond killed right there (its debug build's crash
/// point `go-before-commit`): the successor works on through the restart, never told
/// wait or stop, and the next batond records the commit. Checked from the agents' own
/// event files.
@Suite("go before the commit record", .serialized)
struct GoBeforeCommitTests {
    @Test(.enabled(if: CrashPoints.work, "crash points exist only in debug builds"), .timeLimit(.minutes(3)))
    func killedBetweenGoAndTheCommitTheSuccessorWorksOnAndTheNextBatondCommits() throws {
        let state = TemporaryDirectory("go-before-commit")
        let agents = TestReleases(state: state)
        try agents.add("1.0", [])
        try agents.add("2.0", ["--work-every", "0.02"])
        try agents.setCurrent("1.0")
        let config = agents.config(stop: "2s", kill: "1s")
        let first = try CrashPoints.start("go-before-commit", agents, state: state, config: config)
        let old = Int32(try #require(first.instances().first?["pid"] as? Int))
        let answer = try first.endpoint.json("PUT", "/v1/agents/web/desired", token: first.token, #"{"version":"2.0"}"#)
        #expect(answer.status == 202, "\(answer.text)")

        // batond kills itself once the successor heard go and asks again with seen=go.
        CrashPoints.expectKilled(first)
        let killedAt = monotonicNanoseconds()
        let successor = try #require(agents.log().first { $0.event == "go" && $0.version == "2.0" }, "\(agents.log())")
        #expect(agents.log().contains { $0.event == "stopped" && $0.version == "1.0" })
        // Nothing after the go was durable: `current` did not flip.
        #expect(agents.current == "1.0")

        // It works while batond is down.
        try waitUntil(timeout: 10) {
            agents.log().contains { $0.instance == successor.instance && $0.event == "work" && $0.nanoseconds > killedAt }
        }

        // The old instance, its stopped report never answered, would report again at once:
        // frozen, it cannot, so the next batond sees it alive and told stop, as when its
        // report is still on its way, and waits for it (stop_timeout, TERM, KILL) while the
        // successor polls with seen=go. That poll must park, not hear wait.
        kill(old, SIGSTOP)
        defer { kill(old, SIGKILL) }
        let second = try BatondProcess(state: state, configText: config)
        defer { second.stop() }
        var view: [String: Any] = [:]
        try waitUntil(timeout: 60) {
            view = (try? second.endpoint.get("/v1/handoffs/web-1", token: second.token).json()) ?? [:]
            return view["outcome"] is String
        }
        #expect(view["outcome"] as? String == "committed", "\(view)\n\(second.log)")
        #expect(agents.current == "2.0")
        let committedAt = monotonicNanoseconds()
        try waitUntil(timeout: 10) {
            agents.log().contains { $0.instance == successor.instance && $0.event == "work" && $0.nanoseconds > committedAt }
        }
        let running = try second.endpoint.get("/v1/agents/web", token: second.token).json()["running"] as? [String: Any]
        #expect(running?["version"] as? String == "2.0")

        // The restarted batond recorded the commit (the first one never did).
        let page = try second.endpoint.get("/v1/events?since=0", token: second.token).json()
        let records = page["records"] as? [[String: Any]] ?? []
        let commits = records.filter { $0["kind"] as? String == "release.current" && ($0["data"] as? [String: Any])?["version"] as? String == "2.0" }
        #expect(commits.count == 1, "\(records)")
        let daemonStarts = records.compactMap { $0["kind"] as? String == "daemon.started" ? $0["seq"] as? Int : nil }
        #expect(daemonStarts.count == 2 && (commits.first?["seq"] as? Int ?? 0) > daemonStarts[1], "\(records)")

        // The successor that heard go was never told wait or stop: it went to work once
        // (a wait and a go again would write a second `go`), and nothing ended its work.
        let mine = agents.log().filter { $0.instance == successor.instance }
        #expect(mine.filter { $0.event == "go" }.count == 1, "\(mine)")
        #expect(!mine.contains { ["stop-received", "stopped", "term", "exit", "disowned"].contains($0.event) }, "\(mine)")
        let output = (try? String(contentsOfFile: state.file("logs/\(successor.instance).log"), encoding: .utf8)) ?? ""
        #expect(!output.contains("told to wait"), "\(output)")
        #expect(overlaps(agents.log()).isEmpty, "\(agents.log())")
    }
}
