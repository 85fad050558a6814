import BatonTestSupport
import Foundation
import Glibc
import Testing

/// Ledger before effect, with a real full disk: the ledger's directory is a small tmpfs
/// the test fills. Nothing happens that the ledger did not decide, and batond resumes by
/// itself once the disk has room again.
@Suite("a full disk", .serialized)
struct FullDiskTests {
    static let canMount: Bool = {
        guard getuid() == 0, which("mount") != nil else { return false }
        let probe = TemporaryDirectory("mount-probe")
        guard (try? run(["/bin/mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe.path]))?.status == 0 else { return false }
        _ = try? run(["/bin/umount", probe.path])
        return true
    }()

    static let registrationToken = "registration-token-0123456789abcdef"

    /// A tmpfs of `size` on `path`, unmounted at the end.
    final class SmallDisk {
        let path: String
        var filler: String { path + "/filler" }

        init(path: String, size: String) throws {
            self.path = path
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            let (status, output) = try run(["/bin/mount", "-t", "tmpfs", "-o", "size=\(size)", "tmpfs", path])
            guard status == 0 else { throw TestFailure("mount: \(output)") }
        }

        /// Writes a file until the disk has no room left.
        func fill() {
            let fd = open(filler, O_WRONLY | O_CREAT | O_APPEND, 0o600)
            defer { close(fd) }
            let block = [UInt8](repeating: 0x55, count: 4096)
            while block.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) > 0 {}
        }

        func free() { unlink(filler) }

        deinit { _ = try? run(["/bin/umount", "-l", path]) }
    }


    func agent(_ daemon: BatondProcess, _ name: String) -> [String: Any]? {
        try? daemon.endpoint.get("/v1/agents/\(name)", token: daemon.token).json()
    }

    func instances(_ daemon: BatondProcess, _ name: String) -> [[String: Any]] {
        agent(daemon, name)?["instances"] as? [[String: Any]] ?? []
    }

    /// Registers sleeping children of the test until one is refused: the ledger noticed
    /// the full disk (a journal page with room left takes a few records first).
    func registerUntilRefused(_ daemon: BatondProcess, children: inout [Process]) throws -> HTTPResponse {
        for _ in 0..<100 {
            let child = Process()
            child.executableURL = URL(fileURLWithPath: "/bin/sleep")
            child.arguments = ["300"]
            try child.run()
            children.append(child)
            let answer = try daemon.unix.json("POST", "/v1/agents/ext/instances", token: Self.registrationToken,
                                              #"{"pid":\#(child.processIdentifier),"version":"1.0"}"#)
            if answer.status != 201 { return answer }
        }
        throw TestFailure("a hundred registrations went through on a full disk")
    }

    /// batond with its ledger on a 1 MiB tmpfs, agent `web` working at 1.0 (with release
    /// 2.0 beside it) and agent `ext` for registered processes.
    func start(old: [String], new: [String]) throws -> (BatondProcess, TestReleases, SmallDisk) {
        let state = TemporaryDirectory("full-disk")
        let disk = try SmallDisk(path: state.file("ledger"), size: "1m")
        let web = TestReleases(state: state)
        try web.add("1.0", old)
        try web.add("2.0", new)
        try web.setCurrent("1.0")
        let daemon = try BatondProcess(state: state, configText: web.config() + """

            [agents.ext]
            command = ["/bin/false"]
            registration_token = "\(Self.registrationToken)"
            """)
        try waitUntil(timeout: 30) { (agent(daemon, "web")?["running"] as? [String: Any])?["version"] as? String == "1.0" }
        return (daemon, web, disk)
    }

    @Test(.enabled(if: canMount, "needs root to mount a small tmpfs"), .timeLimit(.minutes(3)))
    func nothingHappensThatTheLedgerDidNotRecordAndBatondResumesByItself() throws {
        let (daemon, web, disk) = try start(old: ["--stop-takes", "1"], new: [])
        var children: [Process] = []
        defer { for child in children { kill(child.processIdentifier, SIGKILL) } }

        // A handoff whose old instance was told stop when the disk fills up.
        let began = try daemon.endpoint.json("PUT", "/v1/agents/web/desired", token: daemon.token, #"{"version":"2.0"}"#)
        #expect(began.status == 202, "\(began.text)")
        try waitUntil(timeout: 30) { web.log().contains { $0.event == "stop-received" && $0.version == "1.0" } }
        disk.fill()
        let refused = try registerUntilRefused(daemon, children: &children)
        let registered = children.count - 1

        // No token without its record.
        #expect(refused.status == 503, "\(refused.text)")
        #expect(refused.errorCode == "ledger_unavailable")
        #expect(!refused.text.contains("token"))
        let ready = try daemon.endpoint.get("/readyz")
        #expect(ready.status == 503)
        #expect(ready.errorCode == "not_ready")
        #expect(try daemon.endpoint.json("PUT", "/v1/agents/web/desired", token: daemon.token, #"{"version":"1.0"}"#).errorCode
                == "ledger_unavailable")

        // The old instance finishes and reports stopped: its successor gets go at once (the
        // decision, stopping_old, was recorded before the disk filled) and keeps it, while
        // `current` does not flip until the commit is recorded.
        try waitUntil(timeout: 30) { instances(daemon, "web").contains { $0["version"] as? String == "1.0" && $0["state"] as? String == "stopped" } }
        try waitUntil(timeout: 30) { (daemon.metric(#"baton_agent_effects_waiting{agent="web"}"#) ?? 0) >= 1 }
        try waitUntil(timeout: 30) { web.log().contains { $0.event == "go" && $0.version == "2.0" } }
        #expect(web.current == "1.0")

        // Room again: batond resumes by itself, in order; the successor kept its go.
        disk.free()
        try waitUntil(timeout: 30) { (try? daemon.endpoint.get("/readyz").status) == 200 }
        try waitUntil(timeout: 30) { web.current == "2.0" }
        #expect(web.log().filter { $0.event == "go" && $0.version == "2.0" }.count == 1, "\(web.log())")
        #expect(!web.log().contains { $0.version == "2.0" && ["stop-received", "term", "exit"].contains($0.event) }, "\(web.log())")
        let handoff = try daemon.endpoint.get("/v1/handoffs/web-1", token: daemon.token).json()
        #expect(handoff["outcome"] as? String == "committed", "\(handoff)")
        #expect(overlaps(web.log()).isEmpty, "\(web.log())")
        #expect(instances(daemon, "ext").count == registered, "a refused registration left an instance behind")
        #expect((daemon.metric("baton_ledger_recoveries_total") ?? 0) >= 1)

        // A crash while the disk is full: the agent is not restarted before its exit is recorded.
        disk.fill()
        _ = try registerUntilRefused(daemon, children: &children)
        let working = try #require(instances(daemon, "web").first { $0["state"] as? String == "working" })
        let crashed = try #require(working["pid"] as? Int)
        let crashedID = try #require(working["id"] as? String)
        kill(pid_t(crashed), SIGKILL)
        // Its restart is decided after the backoff, and held back.
        try waitUntil(timeout: 30) { (daemon.metric(#"baton_agent_restarts_total{agent="web"}"#) ?? 0) >= 1 }
        #expect((daemon.metric(#"baton_agent_effects_waiting{agent="web"}"#) ?? 0) >= 1)
        #expect(!instances(daemon, "web").contains { $0["version"] as? String == "2.0" }, "restarted with the crash unrecorded")
        disk.free()
        try waitUntil(timeout: 30) { (agent(daemon, "web")?["running"] as? [String: Any])?["version"] as? String == "2.0" }

        // The ledger, read after the fact: the crash is recorded before the restart.
        let page = try daemon.endpoint.get("/v1/events?since=0", token: daemon.token).json()
        let records = page["records"] as? [[String: Any]] ?? []
        func seq(_ kind: String, where match: ([String: Any]) -> Bool) -> Int? {
            records.first { $0["kind"] as? String == kind && match($0["data"] as? [String: Any] ?? [:]) }?["seq"] as? Int
        }
        let exited = try #require(seq("instance.exited") { $0["instance"] as? String == crashedID })
        let respawned = try #require(records.last { $0["kind"] as? String == "instance.spawned" }?["seq"] as? Int)
        #expect(exited < respawned)
        #expect(daemon.stop() == 0)
    }

    @Test(.enabled(if: canMount, "needs root to mount a small tmpfs"), .timeLimit(.minutes(2)))
    func batondStillStopsItsAgentsWhenTheLedgerCannotWrite() throws {
        let (daemon, web, disk) = try start(old: [], new: ["--ready-after", "1"])
        var children: [Process] = []
        defer { for child in children { kill(child.processIdentifier, SIGKILL) } }
        // A successor checks itself while the disk fills: its ready report cannot be
        // recorded, so the handoff waits on the ledger when batond is told to stop.
        #expect(try daemon.endpoint.json("PUT", "/v1/agents/web/desired", token: daemon.token, #"{"version":"2.0"}"#).status == 202)
        try waitUntil(timeout: 30) { web.log().contains { $0.event == "started" && $0.version == "2.0" } }
        disk.fill()
        #expect(try registerUntilRefused(daemon, children: &children).errorCode == "ledger_unavailable")
        try waitUntil(timeout: 30) { instances(daemon, "web").contains { $0["version"] as? String == "2.0" && $0["state"] as? String == "ready" } }

        #expect(daemon.stop() == 0, "batond did not stop while its ledger could not write")
        #expect(web.log().contains { $0.event == "stopped" && $0.version == "1.0" })
        #expect(!web.log().contains { $0.event == "go" && $0.version == "2.0" })
        #expect(web.current == "1.0")
    }
}
