import BatonTestSupport
import Foundation
import Glibc
import Testing

/// batond is disposable: killed or stopped, it leaves its agents working, and the next
/// batond on the same state directory adopts them (the same pids: no second copy) and
/// takes up a handoff it left in flight. Checked from the agents' own event files.
@Suite("re-adoption", .serialized)
struct ReadoptionTests {
    func pids(_ daemon: BatondProcess) throws -> [Int32] {
        try daemon.instances().compactMap { ($0["pid"] as? Int).map(Int32.init) }
    }

    func agentState(_ daemon: BatondProcess) throws -> String? {
        try daemon.endpoint.get("/v1/agents/web", token: daemon.token).json()["state"] as? String
    }

    /// batond with agent `web` working on `current`, its agents outliving it.
    func start(_ releases: [String: [String]], current: String = "1.0", mode: String = "parallel",
               state: TemporaryDirectory = TemporaryDirectory("readopt")) throws -> (BatondProcess, TestReleases) {
        let agents = TestReleases(state: state)
        for (version, switches) in releases { try agents.add(version, switches) }
        try agents.setCurrent(current)
        let daemon = try BatondProcess(state: state, configText: agents.config(mode: mode), agentsOutlive: true)
        try waitUntil(timeout: 30) { (try? self.agentState(daemon)) == "running" }
        return (daemon, agents)
    }

    /// The next batond on the same state directory; its agents stop with it at the end.
    func restart(_ agents: TestReleases, mode: String = "parallel") throws -> BatondProcess {
        try BatondProcess(state: agents.state, configText: agents.config(mode: mode))
    }

    func kill9(_ daemon: BatondProcess) throws {
        daemon.signal(SIGKILL)
        guard daemon.waitForExit() != nil else { throw TestFailure("batond did not die") }
    }

    /// Running, and not a zombie: an orphaned agent that exited waits for whoever reaps
    /// orphans here, which may be nobody (a container's pid 1).
    func alive(_ pid: Int32) -> Bool { ProcessProbe(pid).isAlive }

    /// At no moment did two instances hold go, by the agents' own events: an instance
    /// works from `go` until it records `stop-received`, `stopped`, `term` or `exit`.
    func neverTwoWorking(_ agents: TestReleases) -> Bool {
        var working: Set<String> = []
        for event in agents.log().sorted(by: { $0.nanoseconds < $1.nanoseconds }) {
            switch event.event {
            case "go":
                if !working.isEmpty && !working.contains(event.instance) { return false }
                working.insert(event.instance)
            case "stop-received", "stopped", "term", "exit":
                working.remove(event.instance)
            default:
                break
            }
        }
        return true
    }

    @Test func afterKill9TheNextBatondAdoptsTheSamePidsAndAHandoffCommits() throws {
        let (first, agents) = try start(["1.0": ["--work-every", "0.05"], "2.0": []])
        let before = try pids(first)
        #expect(before.count == 1)
        try kill9(first)
        // The agent works on while batond is down: its own event file says so.
        let killedAt = monotonicNanoseconds()
        try waitUntil(timeout: 10) {
            agents.log().filter { $0.event == "work" && $0.nanoseconds > killedAt }.count >= 5
        }
        #expect(before.allSatisfy(alive), "the agent died with batond")

        let second = try restart(agents)
        defer { second.stop() }
        try waitUntil(timeout: 30) { (try? self.agentState(second)) == "running" }
        let after = try pids(second)
        #expect(after == before, "not the same process: \(after) vs \(before)\n\(second.log)")
        let started = agents.log().filter { $0.event == "started" }
        #expect(started.count == 1, "a second copy was started: \(started)")

        let answer = try second.endpoint.json("PUT", "/v1/agents/web/desired", token: second.token, #"{"version":"2.0"}"#)
        #expect(answer.status == 202, "\(answer.text)")
        try waitUntil(timeout: 30) { agents.log().contains { $0.event == "go" && $0.version == "2.0" } }
        try waitUntil(timeout: 30) { !before.contains(where: alive) }
        #expect(neverTwoWorking(agents), "\(agents.log())")
    }

    @Test func aGracefulStopLeavesTheAgentsWorkingByDefault() throws {
        let (first, agents) = try start(["1.0": []])
        let before = try pids(first)
        #expect(first.stop() == 0)
        #expect(before.allSatisfy(alive), "batond's stop stopped its agent")
        #expect(!agents.log().contains { $0.event == "stop-received" || $0.event == "term" }, "\(agents.log())\n\(first.log)")

        let second = try restart(agents)
        defer { second.stop() }
        try waitUntil(timeout: 30) { (try? self.agentState(second)) == "running" }
        let after = try pids(second)
        #expect(after == before)
        #expect(agents.log().filter { $0.event == "started" }.count == 1)
    }

    // MARK: - A handoff in flight when batond died

    /// Starts a handoff to 2.0, kills batond with SIGKILL once the handoff is in `phase`,
    /// starts the next batond, and returns the handoff's view once it ended there.
    func killDuring(_ phase: String, releases: [String: [String]], mode: String = "parallel",
                    timeouts: (ready: String, kill: String) = ("10s", "2s")) throws -> (view: [String: Any], agents: TestReleases, daemon: BatondProcess) {
        let state = TemporaryDirectory("inflight")
        let agents = TestReleases(state: state)
        for (version, switches) in releases { try agents.add(version, switches) }
        try agents.setCurrent("1.0")
        let config = agents.config(mode: mode, ready: timeouts.ready, stop: "10s", kill: timeouts.kill)
        let first = try BatondProcess(state: state, configText: config, agentsOutlive: true)
        try waitUntil(timeout: 30) { (try? self.agentState(first)) == "running" }
        let answer = try first.endpoint.json("PUT", "/v1/agents/web/desired", token: first.token, #"{"version":"2.0"}"#)
        guard answer.status == 202, let id = try answer.json()["id"] as? String else { throw TestFailure("PUT desired: \(answer.text)") }
        // Killed once the phase is in the ledger (`/v1/events` serves durable records):
        // the handoff's view shows a phase before its record is durable, and what comes
        // back goes by the last phase recorded.
        try waitUntil(timeout: 30) {
            ((try? ReleasePushTests.records(first, kind: "handoff.phase")) ?? []).contains {
                $0["handoff"] as? String == id && $0["phase"] as? String == phase
            }
        }
        try kill9(first)
        let second = try BatondProcess(state: state, configText: config)
        var view: [String: Any] = [:]
        try waitUntil(timeout: 60) {
            view = (try? second.endpoint.get("/v1/handoffs/\(id)", token: second.token).json()) ?? [:]
            return view["outcome"] is String
        }
        return (view, agents, second)
    }

    func working(_ agents: TestReleases) -> [String] {
        var working: [String] = []
        for event in agents.log().sorted(by: { $0.nanoseconds < $1.nanoseconds }) {
            switch event.event {
            case "go": working.append(event.version)
            case "stop-received", "stopped", "term", "exit": working.removeAll { $0 == event.version }
            default: break
            }
        }
        return working
    }

    @Test func killedWhileTheSuccessorVerifiesItselfItIsTerminatedAndTheOldOneKeepsGo() throws {
        let (view, agents, daemon) = try killDuring("waiting_ready", releases: ["1.0": [], "2.0": ["--ready-after", "2"]])
        defer { daemon.stop() }
        #expect(view["outcome"] as? String == "cancelled", "\(view)")
        #expect(view["error"] is NSNull, "\(view)")
        try waitUntil(timeout: 10) { agents.log().contains { $0.version == "2.0" && $0.event == "exit" } }
        #expect(working(agents) == ["1.0"])
        #expect(!agents.log().contains { $0.version == "2.0" && $0.event == "go" }, "the successor got go")
        #expect(!agents.log().contains { $0.version == "1.0" && $0.event == "stop-received" }, "the old one was disturbed")
        #expect(agents.log().filter { $0.event == "started" }.count == 2, "only the two instances ever ran")
        #expect(neverTwoWorking(agents), "\(agents.log())")
    }

    @Test func sequentialKilledWhileTheSuccessorVerifiesItselfTheCurrentReleaseStartsAgain() throws {
        // The old one is gone already: the successor, not ready, is terminated, and a
        // fresh 1.0 gets go.
        let (view, agents, daemon) = try killDuring("waiting_ready", releases: ["1.0": [], "2.0": ["--ready-after", "3"]],
                                                    mode: "sequential")
        defer { daemon.stop() }
        #expect(view["outcome"] as? String == "cancelled", "\(view)")
        try waitUntil(timeout: 10) {
            self.working(agents) == ["1.0"] && agents.log().filter { $0.event == "started" && $0.version == "1.0" }.count == 2
        }
        #expect(!agents.log().contains { $0.version == "2.0" && $0.event == "go" }, "the successor got go")
        #expect(neverTwoWorking(agents), "\(agents.log())")
    }

    @Test func killedWhileTheOldOneStopsItIsWaitedForAndTheSuccessorGetsGo() throws {
        let (view, agents, daemon) = try killDuring("stopping_old", releases: ["1.0": ["--stop-takes", "2"], "2.0": []])
        defer { daemon.stop() }
        #expect(view["outcome"] as? String == "committed", "\(view)")
        try waitUntil(timeout: 10) { self.working(agents) == ["2.0"] }
        #expect(neverTwoWorking(agents), "\(agents.log())")
        #expect(agents.log().filter { $0.event == "started" }.count == 2, "only the two instances ever ran")
    }

    @Test func killedWhileAbortingAFailedSuccessorTheOldOneKeepsGo() throws {
        let (view, agents, daemon) = try killDuring("aborting_successor",
                                                    releases: ["1.0": [], "2.0": ["--never-ready", "--ignore-term"]],
                                                    timeouts: (ready: "1s", kill: "3s"))
        defer { daemon.stop() }
        #expect(view["outcome"] as? String == "failed", "\(view)")
        #expect(working(agents) == ["1.0"])
        #expect(!agents.log().contains { $0.version == "1.0" && $0.event == "stop-received" }, "the old one was disturbed")
        #expect(neverTwoWorking(agents), "\(agents.log())")
    }

    @Test func sequentialKilledWhileStoppingFirstTheHandoffFinishes() throws {
        let (view, agents, daemon) = try killDuring("stopping_first", releases: ["1.0": ["--stop-takes", "2"], "2.0": []],
                                                    mode: "sequential")
        defer { daemon.stop() }
        #expect(view["outcome"] as? String == "committed", "\(view)")
        try waitUntil(timeout: 10) { self.working(agents) == ["2.0"] }
        #expect(neverTwoWorking(agents), "\(agents.log())")
    }

    @Test func sequentialKilledWhileRevertingThePreviousReleaseComesBack() throws {
        // 2.0 fails its self-check; 1.0 comes back, slowly: batond dies meanwhile.
        let (view, agents, daemon) = try killDuring("reverting_ready", releases: ["1.0": ["--ready-after", "2"], "2.0": ["--fail-check"]],
                                                    mode: "sequential")
        defer { daemon.stop() }
        #expect(view["outcome"] as? String == "reverted", "\(view)")
        try waitUntil(timeout: 10) { self.working(agents) == ["1.0"] }
        #expect(neverTwoWorking(agents), "\(agents.log())")
    }
}
