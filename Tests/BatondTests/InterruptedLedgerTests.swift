import BatonCore
import BatonLedger
import BatonTestSupport
import Foundation
import Glibc
import Logging
import Testing

/// batond killed at a moment too short to hit from outside: right after it recorded a
/// step. The test kills it with SIGKILL, writes the records it would have written (the
/// ledger's own writer, the lock being free), and starts the next batond, which must
/// act as the table in docs/ledger.md says. Checked from the agents' own event files.
@Suite("interrupted right after a record", .serialized)
struct InterruptedLedgerTests {
    func start(_ releases: [String: [String]]) throws -> (BatondProcess, TestReleases) {
        let state = TemporaryDirectory("interrupted")
        let agents = TestReleases(state: state)
        for (version, switches) in releases { try agents.add(version, switches) }
        try agents.setCurrent("1.0")
        let daemon = try BatondProcess(state: state, configText: agents.config(), agentsOutlive: true)
        try waitUntil(timeout: 30) { agents.log().contains { $0.event == "go" } }
        return (daemon, agents)
    }

    /// SIGKILL, then the records batond had just made durable when it died.
    func kill(_ daemon: BatondProcess, after events: [LedgerEvent]) async throws {
        daemon.signal(SIGKILL)
        guard daemon.waitForExit() != nil else { throw TestFailure("batond did not die") }
        let ledger = try Ledger(stateDirectory: daemon.stateDir, logger: Logger(label: "test"))
        for event in events { _ = try await ledger.append(event) }
        ledger.close()
    }

    @Test func killedRightAfterRecordingSpawningTheOldOneKeepsGo() async throws {
        let (first, agents) = try start(["1.0": ["--work-every", "0.05"], "2.0": []])
        let before = try first.instances().compactMap { $0["pid"] as? Int }
        try await kill(first, after: [
            .agentDesired(.init(agent: "web", version: "2.0", mode: .parallel, by: "test")),
            .handoffBegan(.init(handoff: "web-1", agent: "web", from: "1.0", to: "2.0", mode: .parallel)),
            .handoffPhase(.init(handoff: "web-1", agent: "web", phase: "spawning")),
        ])
        let second = try BatondProcess(state: agents.state, configText: agents.config())
        defer { second.stop() }
        var view: [String: Any] = [:]
        try waitUntil(timeout: 30) {
            view = (try? second.endpoint.get("/v1/handoffs/web-1", token: second.token).json()) ?? [:]
            return view["outcome"] is String
        }
        #expect(view["outcome"] as? String == "cancelled", "\(view)")
        #expect(try second.instances().compactMap { $0["pid"] as? Int } == before, "the old one was not kept")
        let since = monotonicNanoseconds()
        try waitUntil(timeout: 10) { agents.log().contains { $0.event == "work" && $0.version == "1.0" && $0.nanoseconds > since } }
        #expect(!agents.log().contains { $0.version == "1.0" && ["stop-received", "term", "exit"].contains($0.event) })
    }

    /// The ledger names a live process with another start time: the recorded one died and
    /// its pid went to a stranger. The stranger is neither adopted nor ever signalled.
    @Test func aRecordedPidNowRunningAnotherProcessIsNotAdopted() async throws {
        let (first, agents) = try start(["1.0": []])
        let stranger = try spawnSleeper()
        defer { _ = Glibc.kill(stranger, SIGKILL); var status: Int32 = 0; waitpid(stranger, &status, 0) }
        let original = try #require(try first.instances().first?["pid"] as? Int)
        try await kill(first, after: [
            // What batond saw: web.1 exited; web.2 started, its pid now reused by the stranger.
            .instanceExited(.init(agent: "web", instance: "web.1", exitCode: 0, signal: nil)),
            .instanceSpawned(.init(agent: "web", instance: "web.2", version: "1.0", pid: stranger, startTime: 1,
                                   handoff: nil, tokenDigest: String(repeating: "0", count: 64))),
            .instanceSignal(.init(agent: "web", instance: "web.2", signal: .go, handoff: nil)),
        ])
        _ = Glibc.kill(Int32(original), SIGKILL)  // the real web.1, which the records say is gone
        let second = try BatondProcess(state: agents.state, configText: agents.config())
        try waitUntil(timeout: 30) {
            ((try? second.instances()) ?? []).contains { ($0["id"] as? String) == "web.3" }
        }
        let pids = try second.instances().compactMap { $0["pid"] as? Int }
        #expect(!pids.contains(Int(stranger)), "the stranger was adopted")
        #expect(second.stop() == 0)
        var status: Int32 = 0
        #expect(waitpid(stranger, &status, WNOHANG) == 0, "batond signalled a process it does not own")
    }

    /// A `sleep` child of this test with default signal dispositions.
    func spawnSleeper() throws -> Int32 {
        let words = ["/bin/sleep", "300"]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        guard posix_spawn(&pid, "/bin/sleep", nil, &attributes, argv, environ) == 0 else { throw TestFailure("posix_spawn") }
        return pid
    }
}
