import BatonTestSupport
import Crypto
import Foundation
import Glibc
import Testing

/// `PUT /v1/releases/{agent}/{version}` and the store's listing, removal and collection,
/// with a real batond: every refusal leaves nothing on disk, a release appears only
/// whole, and every store and removal is in the ledger.
@Suite("releases: push, list, delete", .serialized)
struct ReleasePushTests {
    static let config = """
    [agents.web]
    command = ["{release}/bin/web"]
    ready_timeout = "10s"
    stop_timeout = "2s"
    kill_timeout = "1s"
    """

    static let script = Array("#!/bin/sh\nexec \(Products.path("baton-testagent"))\n".utf8)

    static func sha256(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    static func push(_ daemon: BatondProcess, _ version: String, _ bytes: [UInt8], digest: String? = nil,
                     header: Bool = false, headers extra: [String: String] = [:], agent: String = "web",
                     query: String = "") throws -> HTTPResponse {
        let digest = digest ?? sha256(bytes)
        var headers = ["Content-Type": "application/octet-stream"].merging(extra) { _, new in new }
        var path = "/v1/releases/\(agent)/\(version)"
        if header {
            headers["Content-Digest"] = "sha-256=:\(Data(SHA256.hash(data: bytes)).base64EncodedString()):"
            if !query.isEmpty { path += "?" + query }
        } else {
            path += "?sha256=\(digest)" + (query.isEmpty ? "" : "&" + query)
        }
        return try daemon.endpoint.request("PUT", path, token: daemon.token, headers: headers, body: bytes, timeout: 60)
    }

    /// Begins a push of `body` as 2.0 (its head says all of it) and sends its first
    /// `sending` bytes; the connection stays open for the test to cut or read.
    static func pushPart(_ daemon: BatondProcess, of body: [UInt8], sending: Int) throws -> RawConnection {
        let connection = try RawConnection(daemon.endpoint, timeout: 60)
        let head = "PUT /v1/releases/web/2.0?sha256=\(sha256(body)) HTTP/1.1\r\nHost: localhost\r\n"
            + "Authorization: Bearer \(daemon.token)\r\nContent-Type: application/octet-stream\r\nContent-Length: \(body.count)\r\n\r\n"
        try connection.send(Array(head.utf8) + Array(body[..<sending]))
        return connection
    }

    /// What the agent's release directory holds, temporary entries included.
    static func entries(_ daemon: BatondProcess, _ agent: String = "web") -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: daemon.state.file("releases/\(agent)"))) ?? []).sorted()
    }

    static func records(_ daemon: BatondProcess, kind: String) throws -> [[String: Any]] {
        let page = try daemon.endpoint.get("/v1/events?since=0&limit=1000", token: daemon.token).json()
        return (page["records"] as? [[String: Any]] ?? []).filter { $0["kind"] as? String == kind }.compactMap { $0["data"] as? [String: Any] }
    }

    // MARK: - Refusals leave nothing

    @Test func aWrongDigestIsRefusedAndNothingIsKept() throws {
        let daemon = try BatondProcess(configText: Self.config)
        let wrong = try Self.push(daemon, "2.0", Self.script, digest: Self.sha256(Array("other".utf8)))
        #expect(wrong.status == 422 && wrong.errorCode == "digest_mismatch", "\(wrong.text)")
        #expect(Self.entries(daemon) == [], "no release, no temporary file")
        let missing = try daemon.endpoint.request("PUT", "/v1/releases/web/2.0", token: daemon.token,
                                                  headers: ["Content-Type": "application/octet-stream"], body: Self.script)
        #expect(missing.status == 400 && missing.errorCode == "digest_required", "\(missing.text)")
        let neither = try Self.push(daemon, "2.0", Array("just text\n".utf8))
        #expect(neither.status == 415 && neither.errorCode == "unsupported_release", "\(neither.text)")
        let ghost = try Self.push(daemon, "2.0", Self.script, agent: "ghost")
        #expect(ghost.status == 404 && ghost.errorCode == "agent_not_found", "\(ghost.text)")
        let badVersion = try Self.push(daemon, "..", Self.script)
        #expect(badVersion.status == 400, "\(badVersion.text)")
        let anonymous = try daemon.endpoint.request("PUT", "/v1/releases/web/2.0?sha256=\(Self.sha256(Self.script))",
                                                    headers: ["Content-Type": "application/octet-stream"], body: Self.script)
        #expect(anonymous.status == 401)
        #expect(Self.entries(daemon) == [])
        #expect(try Self.records(daemon, kind: "release.stored").isEmpty)
    }

    @Test func aPushCutShortByTheClientLeavesNothing() throws {
        let daemon = try BatondProcess(configText: Self.config)
        let connection = try Self.pushPart(daemon, of: [UInt8](repeating: 0x41, count: 4 << 20), sending: 1 << 20)
        // The upload's temporary file exists while the body comes.
        try waitUntil(timeout: 10) { Self.entries(daemon).contains { $0.hasPrefix(".upload-") } }
        connection.closeNow()
        // Promptly: not only at the body deadline (request_body_timeout, 30 s).
        try waitUntil(timeout: 10) { Self.entries(daemon).isEmpty }
        #expect(try daemon.endpoint.get("/v1/releases/web", token: daemon.token).json()["releases"] as? [Any] != nil)
        #expect(try Self.records(daemon, kind: "release.stored").isEmpty)
    }

    // MARK: - Immutability

    @Test func theSameBytesAgainChangeNothingAndOtherBytesAreRefused() throws {
        let daemon = try BatondProcess(configText: Self.config)
        let first = try Self.push(daemon, "2.0", Self.script, header: true)
        #expect(first.status == 201, "\(first.text)")
        let view = try first.json()
        #expect(view["sha256"] as? String == Self.sha256(Self.script))
        #expect(view["source"] as? String == "push" && view["format"] as? String == "executable")
        let path = daemon.state.file("releases/web/2.0/bin/web")
        #expect(access(path, X_OK) == 0, "the executable is bin/<agent>, 0755")
        #expect(FileManager.default.contents(atPath: path) == Data(Self.script))
        let manifest = try #require(FileManager.default.contents(atPath: daemon.state.file("releases/web/2.0/release.json")))
        #expect(String(decoding: manifest, as: UTF8.self).contains(Self.sha256(Self.script)))

        let again = try Self.push(daemon, "2.0", Self.script)
        #expect(again.status == 200, "\(again.text)")
        let other = Array("#!/bin/sh\nexit 3\n".utf8)
        let conflict = try Self.push(daemon, "2.0", other)
        #expect(conflict.status == 409 && conflict.errorCode == "release_exists", "\(conflict.text)")
        #expect(FileManager.default.contents(atPath: path) == Data(Self.script), "the stored release is untouched")
        // The same digest announced, other bytes sent: not a no-op.
        let liar = try Self.push(daemon, "2.0", other, digest: Self.sha256(Self.script))
        #expect(liar.status == 422 && liar.errorCode == "digest_mismatch", "\(liar.text)")
        #expect(Self.entries(daemon) == ["2.0"])
        #expect(try Self.records(daemon, kind: "release.stored").count == 1)
    }

    @Test func aReleaseDroppedInByHandIsListedAsLocalAndCannotBeOverwritten() throws {
        let state = TemporaryDirectory("batond")
        try FileManager.default.createDirectory(atPath: state.file("releases/web/1.0/bin"), withIntermediateDirectories: true)
        try Data(Self.script).write(to: URL(fileURLWithPath: state.file("releases/web/1.0/bin/web")))
        let daemon = try BatondProcess(state: state, configText: Self.config)
        let list = try daemon.endpoint.get("/v1/releases/web", token: daemon.token).json()
        let releases = try #require(list["releases"] as? [[String: Any]])
        #expect(releases.count == 1)
        #expect(releases.first?["source"] as? String == "local")
        #expect(releases.first?["sha256"] == nil && releases.first?["signed_by"] == nil)
        let push = try Self.push(daemon, "1.0", Self.script)
        #expect(push.status == 409 && push.errorCode == "release_exists", "\(push.text)")
        #expect(push.text.contains("by hand"), "\(push.text)")
    }

    // MARK: - Signatures

    @Test func requireSignatureRefusesUnsignedAndBadlySignedPushes() throws {
        let key = Curve25519.Signing.PrivateKey()
        let stranger = Curve25519.Signing.PrivateKey()
        let config = Self.config + """

        [releases]
        require_signature = true
        [releases.trusted_keys]
        ci = "\(key.publicKey.rawRepresentation.base64EncodedString())"
        """
        let daemon = try BatondProcess(configText: config)
        let digest = Array(SHA256.hash(data: Self.script))
        func sign(_ with: Curve25519.Signing.PrivateKey) throws -> String { try with.signature(for: digest).base64EncodedString() }

        let unsigned = try Self.push(daemon, "2.0", Self.script)
        #expect(unsigned.status == 403 && unsigned.errorCode == "signature_required", "\(unsigned.text)")
        let bad = try Self.push(daemon, "2.0", Self.script, headers: ["Baton-Signature": try sign(stranger)])
        #expect(bad.status == 403 && bad.errorCode == "bad_signature", "\(bad.text)")
        let garbled = try Self.push(daemon, "2.0", Self.script, headers: ["Baton-Signature": "not base64"])
        #expect(garbled.status == 400 && garbled.errorCode == "invalid_signature", "\(garbled.text)")
        // A signature over another digest does not carry over to these bytes.
        let elsewhere = try key.signature(for: Array(SHA256.hash(data: Array("other".utf8)))).base64EncodedString()
        let moved = try Self.push(daemon, "2.0", Self.script, headers: ["Baton-Signature": elsewhere])
        #expect(moved.status == 403 && moved.errorCode == "bad_signature", "\(moved.text)")
        #expect(Self.entries(daemon) == [])

        let signed = try Self.push(daemon, "2.0", Self.script, headers: ["Baton-Signature": try sign(key)])
        #expect(signed.status == 201, "\(signed.text)")
        #expect(try signed.json()["signed_by"] as? String == "ci")
        #expect(try Self.records(daemon, kind: "release.stored").first?["signed_by"] as? String == "ci")
    }

    // MARK: - Listing, removal, collection

    @Test func deleteRefusesCurrentAndPreviousAndCollectionKeepsThem() throws {
        let daemon = try BatondProcess(configText: Self.config + "\n[releases]\nkeep_releases = 3\n")
        for version in ["1.0", "2.0"] {
            #expect(try Self.push(daemon, version, Self.script).status == 201)
            let desired = try daemon.endpoint.json("PUT", "/v1/agents/web/desired", token: daemon.token, #"{"version":"\#(version)"}"#)
            #expect(desired.status == 202, "\(desired.text)")
            try waitUntil(timeout: 30) {
                (try? daemon.endpoint.get("/v1/releases/web", token: daemon.token).json()["current"] as? String) == version
            }
        }
        let current = try daemon.endpoint.request("DELETE", "/v1/releases/web/2.0", token: daemon.token)
        #expect(current.status == 409 && current.errorCode == "release_in_use", "\(current.text)")
        let previous = try daemon.endpoint.request("DELETE", "/v1/releases/web/1.0", token: daemon.token)
        #expect(previous.status == 409 && previous.errorCode == "release_in_use", "\(previous.text)")

        // Beyond keep_releases = 3, the oldest that is neither current nor previous goes.
        for version in ["3.0", "4.0", "5.0"] {
            #expect(try Self.push(daemon, version, Self.script).status == 201)
        }
        #expect(Self.entries(daemon).filter { $0 != "current" } == ["1.0", "2.0", "5.0"])
        let collected = try Self.records(daemon, kind: "release.deleted")
        #expect(collected.map { $0["version"] as? String } == ["3.0", "4.0"])
        #expect(collected.allSatisfy { $0["reason"] as? String == "collected" })

        let list = try daemon.endpoint.get("/v1/releases/web", token: daemon.token).json()
        let views = try #require(list["releases"] as? [[String: Any]])
        #expect(views.first { $0["version"] as? String == "2.0" }?["current"] as? Bool == true)
        #expect(views.first { $0["version"] as? String == "1.0" }?["previous"] as? Bool == true)
        let deleted = try daemon.endpoint.request("DELETE", "/v1/releases/web/5.0", token: daemon.token)
        #expect(deleted.status == 204, "\(deleted.text)")
        #expect(try daemon.endpoint.get("/v1/releases/web/5.0", token: daemon.token).status == 404)
        #expect(try Self.records(daemon, kind: "release.deleted").last?["reason"] as? String == "deleted")
    }

    // MARK: - A full disk

    @Test(.enabled(if: FullDiskTests.canMount, "needs root and mount(8) for a small tmpfs"))
    func aFullDiskIsRefusedUpFrontOrStoppedCleanly() throws {
        let state = TemporaryDirectory("batond")
        let disk = try FullDiskTests.SmallDisk(path: state.file("releases"), size: "16m")
        let daemon = try BatondProcess(state: state, configText: Self.config + "\n[releases]\nfree_space_margin = 1048576\n")

        // Content-Length says it cannot fit: refused from the head, with the figures.
        let big = [UInt8](repeating: 0x7f, count: 24 << 20)
        let upFront = try RawConnection(daemon.endpoint).request(
            "PUT", "/v1/releases/web/2.0?sha256=\(Self.sha256(big))",
            headers: ["Authorization": "Bearer \(daemon.token)", "Content-Length": "\(big.count)"], body: big, sendBody: false)
        #expect(upFront.status == 507 && upFront.errorCode == "insufficient_storage", "\(upFront.text)")
        #expect(upFront.text.contains("bytes needed") && upFront.text.contains("available"), "\(upFront.text)")
        #expect(Self.entries(daemon) == [])

        // Chunked, with no length to check: the disk fills on the way; 507, and nothing is left.
        let connection = try RawConnection(daemon.endpoint, timeout: 60)
        var request = Array(("PUT /v1/releases/web/2.0?sha256=\(Self.sha256(big)) HTTP/1.1\r\nHost: localhost\r\n"
            + "Authorization: Bearer \(daemon.token)\r\nTransfer-Encoding: chunked\r\n\r\n").utf8)
        for start in stride(from: 0, to: big.count, by: 1 << 20) {
            request += Array("\(String(1 << 20, radix: 16))\r\n".utf8) + big[start..<(start + (1 << 20))] + Array("\r\n".utf8)
        }
        request += Array("0\r\n\r\n".utf8)
        try? connection.send(request)
        let full = try connection.readResponse(method: "PUT")
        #expect(full.status == 507 && full.errorCode == "insufficient_storage", "\(full.text)")
        #expect(full.text.contains("disk is full"), "\(full.text)")
        try waitUntil(timeout: 10) { Self.entries(daemon).isEmpty }

        // With room again, the same push is stored.
        disk.free()
        let small = Self.script
        #expect(try Self.push(daemon, "2.0", small).status == 201)
        withExtendedLifetime(disk) {}
    }

    // MARK: - Archives

    /// A .tar.gz made by Python's tarfile: `files` are (name, bytes) regular files of
    /// random bytes; `hostile` is Python run inside the archive's block, with
    /// `entry(name, data=b"x\\n", type=tarfile.REGTYPE, linkname="", mode=0o644, devmajor=0, devminor=0)`.
    static func archive(_ scratch: TemporaryDirectory, files: [(String, Int)], hostile: String = "") throws -> [UInt8] {
        let out = scratch.file("release.tar.gz")
        let script = """
        import io, os, sys, tarfile
        out, hostile, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
        with tarfile.open(out, "w:gz", compresslevel=1, format=tarfile.GNU_FORMAT) as tar:
            def entry(name, data=b"x\\n", type=tarfile.REGTYPE, linkname="", mode=0o644, devmajor=0, devminor=0):
                info = tarfile.TarInfo(name)
                info.type, info.linkname, info.mode, info.devmajor, info.devminor = type, linkname, mode, devmajor, devminor
                info.size = len(data) if type == tarfile.REGTYPE else 0
                tar.addfile(info, io.BytesIO(data) if type == tarfile.REGTYPE else None)
            for spec in specs:
                name, size = spec.rsplit(":", 1)
                entry(name, os.urandom(int(size)), mode=0o755)
            exec(hostile)
        """
        let result = try run([which("python3") ?? "/usr/bin/python3", "-c", script, out, hostile]
                             + files.map { "\($0.0):\($0.1)" })
        guard result.status == 0 else { throw TestFailure("tarfile: \(result.output)") }
        return Array(try Data(contentsOf: URL(fileURLWithPath: out)))
    }

    /// Each hostile archive, pushed to a real batond: refused whole (422), nothing of it
    /// in the store, nothing written outside.
    static let hostile: [(name: String, python: String, outside: String?)] = [
        ("../x", #"entry("../escaped-dotdot")"#, "releases/web/escaped-dotdot"),
        ("/etc/x", #"entry("/tmp/baton-hostile-absolute")"#, "/tmp/baton-hostile-absolute"),
        ("a symlink to / then a file through it",
         #"entry("link", type=tarfile.SYMTYPE, linkname="/"); entry("link/tmp/baton-hostile-through")"#, "/tmp/baton-hostile-through"),
        ("a hardlink to a file outside", #"entry("hard", type=tarfile.LNKTYPE, linkname="/etc/passwd")"#, nil),
        ("a device node", #"entry("null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)"#, nil),
        ("a fifo", #"entry("pipe", type=tarfile.FIFOTYPE)"#, nil),
    ]

    @Test(arguments: hostile.indices)
    func aHostileArchiveIsRefusedWholeThroughTheRoute(_ index: Int) throws {
        let (name, python, outside) = Self.hostile[index]
        let scratch = TemporaryDirectory("archive")
        let daemon = try BatondProcess(configText: Self.config)
        let bytes = try Self.archive(scratch, files: [("bin/web", 64)], hostile: python)
        let refused = try Self.push(daemon, "3.0", bytes)
        #expect(refused.status == 422 && refused.errorCode == "unsafe_archive", "\(name): \(refused.text)")
        #expect(Self.entries(daemon) == [], "\(name): nothing of it, no temporary directory")
        if let outside {
            let path = outside.hasPrefix("/") ? outside : daemon.state.file(outside)
            #expect(!FileManager.default.fileExists(atPath: path), "\(name): \(path) was written")
        }
        #expect(try Self.records(daemon, kind: "release.stored").isEmpty)
    }

    @Test(.enabled(if: which("tar") != nil && which("truncate") != nil, "needs tar and truncate"))
    func aTenGigabyteSparseBombIsRefusedAtOnce() throws {
        let scratch = TemporaryDirectory("bomb")
        try FileManager.default.createDirectory(atPath: scratch.file("in/bin"), withIntermediateDirectories: true)
        _ = try run(["/usr/bin/env", "truncate", "-s", "10G", scratch.file("in/bin/web")])
        let tar = try run(["/usr/bin/env", "tar", "-C", scratch.file("in"), "-czSf", scratch.file("bomb.tar.gz"), "bin"])
        #expect(tar.status == 0, "\(tar.output)")
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: scratch.file("bomb.tar.gz"))))
        let daemon = try BatondProcess(configText: Self.config + "\n[releases]\nmax_unpacked_bytes = 104857600\n")
        let started = ContinuousClock.now
        let refused = try Self.push(daemon, "3.0", bytes)
        #expect(refused.status == 422 && refused.errorCode == "unsafe_archive", "\(refused.text)")
        #expect(ContinuousClock.now - started < .seconds(10), "refused from the declared size, not after writing gigabytes")
        #expect(Self.entries(daemon) == [])
    }

    @Test func anArchiveIsUnpackedAndAHostileOneLeavesNothing() throws {
        let scratch = TemporaryDirectory("archive")
        let daemon = try BatondProcess(configText: Self.config)
        let good = try Self.archive(scratch, files: [("bin/web", 64), ("lib/data", 4096)])
        let stored = try Self.push(daemon, "2.0", good)
        #expect(stored.status == 201, "\(stored.text)")
        #expect(try stored.json()["format"] as? String == "tar.gz" && stored.json()["files"] as? Int == 4)
        #expect(FileManager.default.fileExists(atPath: daemon.state.file("releases/web/2.0/lib/data")))

        let outside = scratch.path + "/escaped"
        let hostile = try Self.archive(scratch, files: [("bin/web", 64)],
                                       hostile: #"entry("../../../../../../../../\#(outside.dropFirst())")"#)
        let refused = try Self.push(daemon, "3.0", hostile)
        #expect(refused.status == 422 && refused.errorCode == "unsafe_archive", "\(refused.text)")
        #expect(!FileManager.default.fileExists(atPath: outside))
        #expect(Self.entries(daemon) == ["2.0"], "nothing of 3.0, no temporary directory")
    }

    @Test func killedDuringAnUnpackNothingPartialIsListedOrLeftAfterTheRestart() throws {
        let scratch = TemporaryDirectory("archive")
        let state = TemporaryDirectory("batond")
        let daemon = try BatondProcess(state: state, configText: Self.config)
        // Big enough that the unpack takes a while: 1,500 files of 64 KiB of random bytes.
        let big = try Self.archive(scratch, files: (0..<1500).map { ("data/\($0)", 64 << 10) })
        let connection = try Self.pushPart(daemon, of: big, sending: big.count)
        defer { withExtendedLifetime(connection) {} }
        try waitUntil(timeout: 30) { Self.entries(daemon).contains { $0.hasPrefix(".unpack-") } }
        daemon.signal(SIGKILL)
        _ = daemon.waitForExit()
        #expect(!FileManager.default.fileExists(atPath: state.file("releases/web/2.0")), "killed before it was whole")

        let restarted = try BatondProcess(state: state, configText: Self.config)
        #expect(Self.entries(restarted) == [], "swept at start")
        let list = try restarted.endpoint.get("/v1/releases/web", token: restarted.token).json()
        #expect((list["releases"] as? [Any])?.isEmpty == true)
        #expect(try Self.records(restarted, kind: "release.stored").isEmpty)
    }

    // MARK: - A crash mid-push

    @Test func killedDuringAPushNothingPartialIsListedOrLeftAfterTheRestart() throws {
        let state = TemporaryDirectory("batond")
        let daemon = try BatondProcess(state: state, configText: Self.config)
        let connection = try Self.pushPart(daemon, of: [UInt8](repeating: 0x42, count: 8 << 20), sending: 2 << 20)
        defer { withExtendedLifetime(connection) {} }
        try waitUntil(timeout: 10) { Self.entries(daemon).contains { $0.hasPrefix(".upload-") } }
        daemon.signal(SIGKILL)
        _ = daemon.waitForExit()
        #expect(Self.entries(daemon).contains { $0.hasPrefix(".upload-") }, "the crash left the temporary file")

        let restarted = try BatondProcess(state: state, configText: Self.config)
        #expect(Self.entries(restarted) == [], "swept at start")
        let list = try restarted.endpoint.get("/v1/releases/web", token: restarted.token).json()
        #expect((list["releases"] as? [Any])?.isEmpty == true)
    }

    /// A release recorded but gone at start (removed by hand, or a crash between its
    /// record and its rename) is recorded missing; one whole on disk with batond's
    /// manifest but unrecorded is recorded found.
    @Test func atStartTheLedgerIsSquaredWithTheDisk() throws {
        let state = TemporaryDirectory("batond")
        let daemon = try BatondProcess(state: state, configText: Self.config)
        #expect(try Self.push(daemon, "1.0", Self.script).status == 201)
        #expect(try Self.push(daemon, "2.0", Self.script).status == 201)
        #expect(daemon.stop() == 0)
        try FileManager.default.removeItem(atPath: state.file("releases/web/1.0"))

        let restarted = try BatondProcess(state: state, configText: Self.config)
        let missing = try Self.records(restarted, kind: "release.deleted")
        #expect(missing.count == 1 && missing.first?["version"] as? String == "1.0" && missing.first?["reason"] as? String == "missing")
        let stored = try Self.records(restarted, kind: "release.stored")
        #expect(stored.count == 2, "nothing more: 2.0 was recorded")
    }
}
