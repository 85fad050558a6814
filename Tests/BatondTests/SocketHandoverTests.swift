import BatonTestSupport
import Foundation
import Glibc
import Testing

/// Socket hand-over under fire: continuous HTTP requests (a new connection each) at an
/// agent whose listening socket batond holds, through many handoffs, batond's kill -9
/// and restart, and its self-upgrade. Counted from the client's side (every request
/// refused, reset, timed out or answered wrongly) and from the agents' own connection
/// log (every accepted connection inside its instance's go window).
@Suite("socket hand-over", .serialized)
struct SocketHandoverTests {
    /// batond with agent `web` serving HTTP on a socket batond holds (port 0), working on
    /// release `a`; `releases` maps versions to test-agent switches (`--http` added).
    func start(_ releases: [String: [String]], mode: String = "parallel", agentsOutlive: Bool = false,
               state: TemporaryDirectory = TemporaryDirectory("handover"), executable: String? = nil)
        throws -> (BatondProcess, TestReleases, String) {
        let agents = TestReleases(state: state)
        for (version, switches) in releases { try agents.add(version, ["--http"] + switches) }
        try agents.setCurrent("a")
        let daemon = try BatondProcess(state: state, configText: config(agents, mode: mode), executable: executable,
                                       agentsOutlive: agentsOutlive)
        try waitForRunning(daemon, "a")
        let sockets = try daemon.endpoint.get("/v1/agents/web", token: daemon.token).json()["sockets"] as? [[String: Any]]
        let address = try #require(sockets?.first?["address"] as? String)
        return (daemon, agents, address)
    }

    func config(_ agents: TestReleases, mode: String) -> String {
        agents.config(mode: mode, ready: "10s", stop: "5s", kill: "2s") + "\nlisten = [\"tcp://127.0.0.1:0\"]\n"
    }

    func waitForRunning(_ daemon: BatondProcess, _ version: String) throws {
        try waitUntil(timeout: 30) {
            let view = try? daemon.endpoint.get("/v1/agents/web", token: daemon.token).json()
            return view?["state"] as? String == "running" && (view?["running"] as? [String: Any])?["version"] as? String == version
        }
    }

    /// Hands over to `version` and, once its instance runs (before it can be ready),
    /// kills it with SIGKILL: the handoff fails and the old instance serves on.
    func handOffKillingTheSuccessor(_ daemon: BatondProcess, to version: String) throws -> [String: Any] {
        let answer = try daemon.endpoint.json("PUT", "/v1/agents/web/desired", token: daemon.token, #"{"version":"\#(version)"}"#)
        let id = try #require(try answer.json()["id"] as? String, "\(answer.text)")
        var successor: Int32?
        try waitUntil(timeout: 30) {
            successor = (try? daemon.instances())?.first { $0["version"] as? String == version }.flatMap { ($0["pid"] as? Int).map(Int32.init) }
            return successor != nil
        }
        kill(successor!, SIGKILL)
        return try daemon.endpoint.get("/v1/handoffs/\(id)?wait=60", token: daemon.token, timeout: 70).json()
    }

    /// What the client and the agents' own logs say after the load stopped.
    func expectNothingRefused(_ result: HTTPLoad.Result, _ agents: TestReleases, versions: Set<String>,
                              sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.failures.isEmpty, "\(result.failures.count) of \(result.ok + result.failures.count) requests failed: \(result.failures.prefix(10))",
                sourceLocation: sourceLocation)
        #expect(result.ok > 0, sourceLocation: sourceLocation)
        let answered = Set(result.bodies.compactMap { $0.split(separator: " ").last.map { String($0.dropLast($0.hasSuffix("\n") ? 1 : 0)) } })
        #expect(answered.isSuperset(of: versions), "answered by \(answered), expected \(versions)", sourceLocation: sourceLocation)
        let events = agents.log()
        let outside = acceptsOutsideGoWindows(events)
        #expect(outside.isEmpty, "accepted outside its go window: \(outside.prefix(10))", sourceLocation: sourceLocation)
        #expect(events.contains { $0.event == "accept" }, sourceLocation: sourceLocation)
        #expect(overlaps(events).isEmpty, "two instances worked at once: \(overlaps(events))", sourceLocation: sourceLocation)
    }

    @Test func fiftyParallelHandoffsUnderLoadRefuseNothing() throws {
        let (daemon, agents, address) = try start(["a": [], "b": [], "bad": ["--fail-check"], "slow": ["--ready-after", "30"]])
        let load = try HTTPLoad(address: address)
        load.start(connections: 4)
        var outcomes: [String: Int] = [:]
        var next = "b"
        for round in 1...50 {
            let handoff: [String: Any]
            switch round % 10 {
            case 3: handoff = try daemon.handOff(to: "bad")
            case 7: handoff = try handOffKillingTheSuccessor(daemon, to: "slow")
            default:
                handoff = try daemon.handOff(to: next)
                next = next == "a" ? "b" : "a"
            }
            outcomes[handoff["outcome"] as? String ?? "?", default: 0] += 1
        }
        let result = load.stop()
        #expect(outcomes == ["committed": 40, "failed": 10], "\(outcomes)")
        expectNothingRefused(result, agents, versions: ["a", "b"])
        #expect(!agents.log().contains { $0.event == "accept" && ["bad", "slow"].contains($0.version) },
                "a successor that never held go never accepted")
    }

    /// Sequential mode stops the old instance before the successor starts: nobody accepts
    /// meanwhile, but the socket stays bound, so requests wait in its backlog and are
    /// served late, not refused, and a failed successor falls back to the previous release.
    @Test func sequentialHandoffsUnderLoadQueueRequestsInsteadOfRefusingThem() throws {
        let (daemon, agents, address) = try start(["a": [], "b": [], "bad": ["--fail-check"]], mode: "sequential")
        let load = try HTTPLoad(address: address)
        load.start(connections: 4)
        var outcomes: [String: Int] = [:]
        for version in ["b", "a", "bad", "b", "a", "b", "bad", "a", "b", "a"] {
            outcomes[try daemon.handOff(to: version)["outcome"] as? String ?? "?", default: 0] += 1
        }
        let result = load.stop()
        #expect(outcomes == ["committed": 8, "reverted": 2], "\(outcomes)")
        expectNothingRefused(result, agents, versions: ["a", "b"])
    }

    /// batond killed twice under load: between handoffs, and in the middle of one (its
    /// successor still checking itself), which the restarted batond ends `cancelled`
    /// (docs/ledger.md: a successor not ready is terminated, the old instance serves on).
    @Test func aKill9AndRestartOfBatondMidStreamRefusesNothing() throws {
        let state = TemporaryDirectory("handover")
        let (first, agents, address) = try start(["a": [], "b": [], "c": ["--ready-after", "1"]], agentsOutlive: true, state: state)
        let load = try HTTPLoad(address: address)
        load.start(connections: 4)
        #expect(try first.handOff(to: "b")["outcome"] as? String == "committed")
        first.signal(SIGKILL)
        #expect(first.waitForExit() != nil)
        // Served all along by the instance holding go; batond is not on the path.
        let whileDown = load.counts.ok
        try waitUntil(timeout: 10) { load.counts.ok > whileDown + 20 }

        let second = try BatondProcess(state: state, configText: config(agents, mode: "parallel"), agentsOutlive: true)
        try waitForRunning(second, "b")
        #expect(try second.handOff(to: "a")["outcome"] as? String == "committed")
        // Mid-handoff: c starts beside a and checks itself for a second; batond dies.
        let answer = try second.endpoint.json("PUT", "/v1/agents/web/desired", token: second.token, #"{"version":"c"}"#)
        #expect(answer.status == 202, "\(answer.text)")
        try waitUntil(timeout: 30) { agents.log().contains { $0.event == "started" && $0.version == "c" } }
        second.signal(SIGKILL)
        #expect(second.waitForExit() != nil)

        let third = try BatondProcess(state: state, configText: config(agents, mode: "parallel"))
        defer { _ = third.stop() }
        try waitForRunning(third, "a")
        let cancelled = try third.endpoint.get("/v1/handoffs?agent=web&limit=1", token: third.token).json()["handoffs"] as? [[String: Any]]
        #expect(cancelled?.first?["outcome"] as? String == "cancelled", "\(String(describing: cancelled))")
        #expect(try third.handOff(to: "c")["outcome"] as? String == "committed")
        let result = load.stop()
        expectNothingRefused(result, agents, versions: ["a", "b", "c"])
    }

    @Test func aSelfUpgradeMidStreamRefusesNothing() throws {
        let state = TemporaryDirectory("handover")
        _ = try SelfUpgradeTests.installSelf(state)
        let (daemon, agents, address) = try start(["a": [], "b": []], state: state, executable: state.file("daemon/current/batond"))
        defer { _ = daemon.stop() }
        let load = try HTTPLoad(address: address)
        load.start(connections: 4)
        var copy = try Array(Data(contentsOf: URL(fileURLWithPath: Products.path("batond"))))
        copy += Array("\nbaton socket hand-over test \(UUID())\n".utf8)
        let digest = try SelfUpgradeTests.sha256(copy)
        #expect(try SelfUpgradeTests.put(copy, digest: digest, to: daemon.unix, token: daemon.token).status == 201)
        #expect(try daemon.handOff(to: "b")["outcome"] as? String == "committed")
        let accepted = try daemon.endpoint.json("POST", "/v1/daemon/upgrade", token: daemon.token, #"{"digest":"\#(digest)"}"#)
        #expect(accepted.status == 202, "\(accepted.text)")
        _ = try daemon.notify.wait(for: "RELOADING=1", timeout: 30)
        _ = try daemon.notify.wait(for: "READY=1", timeout: 60)
        #expect(try daemon.endpoint.get("/v1/daemon", token: daemon.token).json()["sha256"] as? String == digest)
        #expect(try daemon.handOff(to: "a")["outcome"] as? String == "committed")
        let result = load.stop()
        expectNothingRefused(result, agents, versions: ["a", "b"])
    }
}
