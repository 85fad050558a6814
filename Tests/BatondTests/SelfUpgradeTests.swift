import BatonTestSupport
import Foundation
import Glibc
import Testing

/// `batond --self-check`, the daemon's own binaries (`PUT /v1/daemon/binary`), its view
/// (`GET /v1/daemon`) and the in-place re-exec (`POST /v1/daemon/upgrade`), with real
/// batond processes.
@Suite("batond self-upgrade", .serialized)
struct SelfUpgradeTests {
    // MARK: - --self-check

    @Test func selfCheckBesideARunningBatondPassesAndDisturbsNothing() throws {
        let daemon = try BatondProcess()
        let journal = daemon.state.file("ledger/journal.jsonl")
        let before = try Data(contentsOf: URL(fileURLWithPath: journal))
        let entries = try FileManager.default.contentsOfDirectory(atPath: daemon.stateDir).sorted()
        let result = try run([Products.path("batond"), "--self-check", "--state-dir", daemon.stateDir,
                              "--socket", daemon.socketPath])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("fit"), "\(result.output)")
        #expect(result.output.contains("ledger at seq 1"), "\(result.output)")
        // Nothing written or created, and the running batond keeps its lock and serves.
        #expect(try Data(contentsOf: URL(fileURLWithPath: journal)) == before)
        #expect(try FileManager.default.contentsOfDirectory(atPath: daemon.stateDir).sorted() == entries)
        #expect(try daemon.unix.get("/healthz").status == 200)
        #expect(try daemon.endpoint.get("/readyz").status == 200)
        let second = try BatondProcess(state: daemon.state, tcp: false, waitReady: false)
        #expect(second.waitForExit() == 75, "the running batond still holds the lock")
    }

    @Test func selfCheckRefusesABadConfigWithTheReason() throws {
        let state = TemporaryDirectory("batond")
        let path = state.file("bad.toml")
        try "[daemon]\nlog_level = \"loud\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        let result = try run([Products.path("batond"), "--self-check", "--config", path, "--state-dir", state.path])
        #expect(result.status == 78, "\(result.output)")
        #expect(result.output.contains("log_level"), "\(result.output)")
    }

    @Test func selfCheckRefusesADamagedLedgerWithTheReason() throws {
        let state = TemporaryDirectory("batond")
        #expect(try BatondProcess(state: state, tcp: false).stop() == 0)
        let journal = state.file("ledger/journal.jsonl")
        let converted = Data(try Data(contentsOf: URL(fileURLWithPath: journal)).flatMap { $0 == 10 ? [13, 10] : [$0] })
        try converted.write(to: URL(fileURLWithPath: journal))
        let result = try run([Products.path("batond"), "--self-check", "--state-dir", state.path])
        #expect(result.status == 74, "\(result.output)")
        #expect(result.output.contains("self-check failed") && result.output.contains("CRLF"), "\(result.output)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: journal)) == converted, "the check repairs nothing")
    }

    @Test func selfCheckRefusesAMissingStateDirectory() throws {
        let state = TemporaryDirectory("batond")
        let result = try run([Products.path("batond"), "--self-check", "--state-dir", state.file("nowhere")])
        #expect(result.status != 0)
        #expect(result.output.contains("nowhere"), "\(result.output)")
        #expect(!FileManager.default.fileExists(atPath: state.file("nowhere")), "the check creates nothing")
    }

    // MARK: - PUT /v1/daemon/binary

    @Test func putKeepsABinaryOnlyUnderTheDigestItWasSentWith() throws {
        let daemon = try BatondProcess()
        let token = daemon.token
        let bytes = Array("#!/bin/sh\nexit 0\n".utf8)
        let digest = try Self.sha256(bytes)
        let store = daemon.state.file("daemon")

        let missing = try Self.put(bytes, digest: nil, to: daemon.endpoint, token: token)
        #expect(missing.status == 400 && missing.errorCode == "digest_required", "\(missing.text)")

        let wrong = try Self.put(bytes, digest: try Self.sha256(Array("something else".utf8)), to: daemon.endpoint, token: token)
        #expect(wrong.status == 422 && wrong.errorCode == "digest_mismatch", "\(wrong.text)")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: store)) ?? []).isEmpty, "nothing is kept")

        let empty = try Self.put([], digest: try Self.sha256([]), to: daemon.endpoint, token: token)
        #expect(empty.status == 400 && empty.errorCode == "binary_required", "\(empty.text)")

        let anonymous = try Self.put(bytes, digest: digest, to: daemon.endpoint, token: nil)
        #expect(anonymous.status == 401)
        let stranger = try Self.put(bytes, digest: digest, to: daemon.endpoint, token: "not-the-token")
        #expect(stranger.status == 401)

        let stored = try Self.put(bytes, digest: digest, to: daemon.endpoint, token: token)
        #expect(stored.status == 201, "\(stored.text)")
        #expect(try stored.json()["sha256"] as? String == digest)
        #expect(try stored.json()["size"] as? Int == bytes.count)
        let path = "\(store)/\(digest)/batond"
        #expect(FileManager.default.contents(atPath: path).map(Array.init) == bytes)
        #expect((try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) == 0o755)
        #expect(try FileManager.default.contentsOfDirectory(atPath: store) == [digest], "no temporary file is left")

        let again = try Self.put(bytes, digest: digest, to: daemon.unix, token: token)
        #expect(again.status == 200, "\(again.text)")
    }

    // MARK: - POST /v1/daemon/upgrade

    @Test func anUpgradeToABinaryThatFailsItsSelfCheckChangesNothing() throws {
        let daemon = try BatondProcess()
        let token = daemon.token
        let before = try daemon.endpoint.get("/v1/daemon", token: token).json()
        let script = Array("#!/bin/sh\necho \"not fit for $*\" >&2\nexit 1\n".utf8)
        let digest = try Self.sha256(script)
        #expect(try Self.put(script, digest: digest, to: daemon.endpoint, token: token).status == 201)

        let unknown = try daemon.endpoint.json("POST", "/v1/daemon/upgrade", token: token, #"{"digest":"\#(String(repeating: "0", count: 64))"}"#)
        #expect(unknown.status == 404 && unknown.errorCode == "binary_not_found", "\(unknown.text)")

        let refused = try daemon.endpoint.json("POST", "/v1/daemon/upgrade", token: token, #"{"digest":"\#(digest)"}"#)
        #expect(refused.status == 422 && refused.errorCode == "self_check_failed", "\(refused.text)")
        #expect(refused.text.contains("not fit for") && refused.text.contains("--self-check"), "\(refused.text)")

        let after = try daemon.endpoint.get("/v1/daemon", token: token).json()
        #expect(after["pid"] as? Int == Int(daemon.process.processIdentifier))
        #expect(after["pid"] as? Int == before["pid"] as? Int)
        #expect(after["sha256"] as? String == before["sha256"] as? String)
        #expect(after["started_at"] as? String == before["started_at"] as? String)
        let last = try #require(after["last_upgrade"] as? [String: Any])
        #expect(last["outcome"] as? String == "failed")
        #expect(last["stage"] as? String == "self_check")
        #expect(last["to"] as? String == digest)
        let journal = try String(contentsOfFile: daemon.state.file("ledger/journal.jsonl"), encoding: .utf8)
        #expect(journal.contains("\"kind\":\"daemon.upgrade_failed\""))
        #expect(!journal.contains("daemon.upgrade_began"))
        #expect(try daemon.endpoint.get("/healthz").status == 200)
    }

    @Test(.enabled(if: which("wrk") != nil, "needs wrk (apt-get install wrk)"))
    func anUpgradeUnderLoadKeepsThePidAndRefusesNothing() throws {
        let state = TemporaryDirectory("batond")
        let seeded = try Self.installSelf(state)
        // An agent working throughout, recording its work in its own event file.
        let agents = TestReleases(state: state)
        try agents.add("1.0", ["--work-every", "0.05"])
        try agents.setCurrent("1.0")
        let daemon = try BatondProcess(state: state, configText: agents.config(), executable: state.file("daemon/current/batond"))
        let token = daemon.token
        guard case .tcp(let host, let port) = daemon.endpoint else { throw TestFailure("no TCP listener") }
        try waitUntil(timeout: 30) { agents.log().contains { $0.event == "work" } }
        let agentPids = try daemon.instances().compactMap { $0["pid"] as? Int }
        #expect(agentPids.count == 1)
        #expect(try daemon.endpoint.get("/v1/daemon", token: token).json()["sha256"] as? String == seeded)
        let sockets = [daemon.socketPath, daemon.agentSocketPath].map(Self.inode)

        // The same batond with bytes after its ELF image: it runs the same, and has a digest of its own.
        var copy = try Array(Data(contentsOf: URL(fileURLWithPath: Products.path("batond"))))
        copy += Array("\nbaton self-upgrade test \(UUID())\n".utf8)
        let digest = try Self.sha256(copy)
        #expect(try Self.put(copy, digest: digest, to: daemon.unix, token: token).status == 201)

        // A parked long-poll is answered (its deadline answer) before the exec, not cut.
        let lastSeq = try #require(try daemon.endpoint.get("/v1/status", token: token).json()["ledger"] as? [String: Any])["last_seq"] as? Int ?? 0
        let endpoint = daemon.endpoint
        // The agent's own long-poll may be parked too: wait for one more than before.
        func parkedCount() -> Int? {
            guard let text = try? endpoint.get("/metrics").text,
                  let line = text.split(separator: "\n").first(where: { $0.hasPrefix("baton_http_parked_requests ") }) else { return nil }
            return Int(line.split(separator: " ").last ?? "")
        }
        let parkedBefore = try #require(parkedCount())
        let parked = inBackground { try endpoint.get("/v1/events?since=\(lastSeq + 1000)&wait=60", token: token, timeout: 90).status }
        try waitUntil(timeout: 20) { (parkedCount() ?? 0) > parkedBefore }
        let load = inBackground { () -> WrkResult in
            let result = try run([which("wrk")!, "-t2", "-c16", "-d6s", "--latency", "http://\(host):\(port)/healthz"])
            return WrkResult(status: result.status, output: result.output)
        }
        let unixLoop = UnixLoop(daemon.unix)
        Thread.sleep(forTimeInterval: 1.5)  // load before, during and after the upgrade
        let accepted = try daemon.endpoint.json("POST", "/v1/daemon/upgrade", token: token, #"{"digest":"\#(digest)"}"#)
        #expect(accepted.status == 202, "\(accepted.text)")
        #expect(accepted.header("Connection") == "close")
        _ = try daemon.notify.wait(for: "RELOADING=1", timeout: 30)
        let execAt = monotonicNanoseconds()
        _ = try daemon.notify.wait(for: "READY=1", timeout: 60)
        #expect(try parked.wait(timeout: 30) == 200, "the parked request was answered at the handover, long before its 60 s")
        let wrk = try load.wait(timeout: 60)
        let unix = unixLoop.stop()

        #expect(wrk.status == 0, "\(wrk.output)")
        #expect(!wrk.output.contains("Socket errors"), "\(wrk.output)")
        #expect(!wrk.output.contains("Non-2xx"), "\(wrk.output)")
        #expect(unix.failures == 0 && unix.successes > 0, "unix loop: \(unix)")
        let view = try daemon.endpoint.get("/v1/daemon", token: token).json()
        #expect(view["pid"] as? Int == Int(daemon.process.processIdentifier))
        #expect(view["sha256"] as? String == digest)
        #expect(view["current"] as? String == digest)
        #expect((view["last_upgrade"] as? [String: Any])?["outcome"] as? String == "upgraded")
        let current = try FileManager.default.destinationOfSymbolicLink(atPath: state.file("daemon/current"))
        #expect(current == digest, "a restart now runs the new binary")
        #expect([daemon.socketPath, daemon.agentSocketPath].map(Self.inode) == sockets, "the socket files were never replaced")
        // The agent is the same process, adopted by the new image, and never stopped working.
        #expect(try daemon.instances().compactMap { $0["pid"] as? Int } == agentPids, "the agent was not re-adopted")
        try waitUntil(timeout: 10) { agents.log().contains { $0.event == "work" && $0.nanoseconds > execAt + 500_000_000 } }
        let events = agents.log()
        #expect(events.filter { $0.event == "started" }.count == 1, "a second copy was started: \(events)")
        #expect(!events.contains { ["stop-received", "term", "exit", "disowned"].contains($0.event) }, "\(events)")
        #expect(daemon.stop() == 0, "the new image stops cleanly on SIGTERM")
    }

    @Test func aBinaryThatDiesAfterTheExecLeavesThePreviousOneRunningAfterTheRestart() throws {
        let state = TemporaryDirectory("batond")
        let seeded = try Self.installSelf(state)
        let daemon = try BatondProcess(state: state, executable: state.file("daemon/current/batond"))
        let token = daemon.token
        let script = Array("#!/bin/sh\ncase \"$*\" in *--self-check*) exit 0;; esac\nexit 1\n".utf8)
        let digest = try Self.sha256(script)
        #expect(try Self.put(script, digest: digest, to: daemon.endpoint, token: token).status == 201)
        let accepted = try daemon.endpoint.json("POST", "/v1/daemon/upgrade", token: token, #"{"digest":"\#(digest)"}"#)
        #expect(accepted.status == 202, "\(accepted.text)")
        #expect(daemon.waitForExit() == 1, "the new image exits at once")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: state.file("daemon/current")) == seeded)

        // As systemd would: through daemon/current, which still names the previous binary.
        let restarted = try BatondProcess(state: state, executable: state.file("daemon/current/batond"))
        let view = try restarted.endpoint.get("/v1/daemon", token: token).json()
        #expect(view["sha256"] as? String == seeded)
        let last = try #require(view["last_upgrade"] as? [String: Any])
        #expect(last["outcome"] as? String == "failed")
        #expect(last["stage"] as? String == "confirm")
        #expect(last["to"] as? String == digest)
        let again = try restarted.endpoint.json("POST", "/v1/daemon/upgrade", token: token, #"{"digest":"\#(digest)"}"#)
        #expect(again.status == 409 && again.errorCode == "binary_died_before", "never tried again unless forced: \(again.text)")
        #expect(restarted.stop() == 0)
    }

    @Test func aFailedExecLeavesTheOldImageServingOnTheSameSockets() throws {
        let daemon = try BatondProcess()
        let token = daemon.token
        let before = try daemon.endpoint.get("/v1/daemon", token: token).json()
        // Passes its check, then takes its own execute bit away: the execve that follows fails.
        let script = Array("#!/bin/sh\nchmod 0644 \"$0\"\nexit 0\n".utf8)
        let digest = try Self.sha256(script)
        #expect(try Self.put(script, digest: digest, to: daemon.endpoint, token: token).status == 201)
        let sockets = [daemon.socketPath, daemon.agentSocketPath].map(Self.inode)
        let accepted = try daemon.endpoint.json("POST", "/v1/daemon/upgrade", token: token, #"{"digest":"\#(digest)"}"#)
        #expect(accepted.status == 202, "\(accepted.text)")
        _ = try daemon.notify.wait(for: "RELOADING=1", timeout: 30)
        _ = try daemon.notify.wait(for: "READY=1", timeout: 30)

        try waitUntil(timeout: 20) {
            ((try? daemon.endpoint.get("/v1/daemon", token: token).json()["last_upgrade"] as? [String: Any])??["stage"] as? String) == "exec"
        }
        let after = try daemon.endpoint.get("/v1/daemon", token: token).json()
        #expect(after["pid"] as? Int == before["pid"] as? Int)
        #expect(after["sha256"] as? String == before["sha256"] as? String)
        #expect(after["started_at"] as? String == before["started_at"] as? String, "the same image serves on")
        let last = try #require(after["last_upgrade"] as? [String: Any])
        #expect(last["outcome"] as? String == "failed")
        #expect((last["reason"] as? String)?.contains("execve") == true, "\(last)")
        #expect(try daemon.unix.get("/healthz").status == 200)
        #expect(try daemon.endpoint.get("/healthz").status == 200)
        #expect([daemon.socketPath, daemon.agentSocketPath].map(Self.inode) == sockets)
        #expect(daemon.process.isRunning)
        #expect(daemon.stop() == 0)
    }

    // MARK: - Helpers

    /// `batond --install-self` on `state`; returns the digest `daemon/current` names.
    static func installSelf(_ state: TemporaryDirectory) throws -> String {
        let result = try run([Products.path("batond"), "--install-self", "--state-dir", state.path])
        guard result.status == 0 else { throw TestFailure("--install-self: \(result.output)") }
        return try FileManager.default.destinationOfSymbolicLink(atPath: state.file("daemon/current"))
    }

    /// The SHA-256 (hex) by sha256sum: an oracle apart from batond's own code.
    static func sha256(_ bytes: [UInt8]) throws -> String {
        let scratch = TemporaryDirectory("digest")
        let path = scratch.file("bytes")
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let result = try run([which("sha256sum") ?? "/usr/bin/sha256sum", path])
        guard result.status == 0, let digest = result.output.split(separator: " ").first else {
            throw TestFailure("sha256sum: \(result.output)")
        }
        return String(digest)
    }

    static func put(_ bytes: [UInt8], digest: String?, to endpoint: Endpoint, token: String?) throws -> HTTPResponse {
        var headers = ["Content-Type": "application/octet-stream"]
        if let digest {
            var raw: [UInt8] = []
            var index = digest.startIndex
            while index < digest.endIndex {
                let next = digest.index(index, offsetBy: 2)
                raw.append(UInt8(digest[index..<next], radix: 16)!)
                index = next
            }
            headers["Content-Digest"] = "sha-256=:\(Data(raw).base64EncodedString()):"
        }
        return try endpoint.request("PUT", "/v1/daemon/binary", token: token, headers: headers, body: bytes, timeout: 60)
    }

    static func inode(_ path: String) -> UInt64 {
        var info = stat()
        return lstat(path, &info) == 0 ? UInt64(info.st_ino) : 0
    }
}

struct WrkResult: Sendable {
    let status: Int32
    let output: String
}

/// A client looping on a Unix socket, one request per connection, counting what failed.
final class UnixLoop: @unchecked Sendable {
    // @unchecked: the counters are touched under `lock` only; `running` is read under it too.
    private let lock = NSLock()
    private var running = true
    private var counts = (successes: 0, failures: 0, last: "")
    private let done = DispatchSemaphore(value: 0)

    init(_ endpoint: Endpoint) {
        Thread { [self] in
            while lock.withLock({ running }) {
                do {
                    let response = try endpoint.get("/healthz", timeout: 10)
                    lock.withLock {
                        if response.status == 200 { counts.successes += 1 } else {
                            counts.failures += 1
                            counts.last = "status \(response.status)"
                        }
                    }
                } catch {
                    lock.withLock {
                        counts.failures += 1
                        counts.last = "\(error)"
                    }
                }
            }
            done.signal()
        }.start()
    }

    func stop() -> (successes: Int, failures: Int, last: String) {
        lock.withLock { running = false }
        done.wait()
        return lock.withLock { counts }
    }
}
