import BatonTestSupport
import Crypto
import Foundation
import Glibc
import Testing

/// `POST /v1/releases/{agent}/{version}`: batond downloads a release from a loopback
/// server, with a push's checks; its progress shows while it runs, and a fetch that
/// fails (404, a stall past the deadline, the wrong bytes) leaves nothing on disk and
/// is recorded.
@Suite("releases: fetch", .serialized)
struct ReleaseFetchTests {
    static let config = ReleasePushTests.config + """

    [releases]
    fetch_stall_timeout = "500ms"
    fetch_timeout = "20s"
    """

    static func fetch(_ daemon: BatondProcess, _ version: String, url: String, sha256: String,
                      extra: String = "") throws -> HTTPResponse {
        try daemon.endpoint.json("POST", "/v1/releases/web/\(version)", token: daemon.token,
                                 #"{"url":"\#(url)","sha256":"\#(sha256)"\#(extra)}"#)
    }

    static func release(_ daemon: BatondProcess, _ version: String) throws -> [String: Any] {
        try daemon.endpoint.get("/v1/releases/web/\(version)", token: daemon.token).json()
    }

    /// Waits until the fetch of `version` is no longer running; returns its view.
    static func settled(_ daemon: BatondProcess, _ version: String) throws -> [String: Any] {
        var view: [String: Any] = [:]
        try waitUntil(timeout: 30) {
            view = (try? release(daemon, version)) ?? [:]
            return view["state"] as? String != "fetching"
        }
        return view
    }

    @Test func aFetchedReleaseIsStoredWithItsURL() throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/web-2.0", .bytes(ReleasePushTests.script))
        let daemon = try BatondProcess(configText: Self.config)
        let started = try Self.fetch(daemon, "2.0", url: server.url("/web-2.0"), sha256: ReleasePushTests.sha256(ReleasePushTests.script))
        #expect(started.status == 202, "\(started.text)")
        #expect(started.header("Location") == "/v1/releases/web/2.0")
        let view = try Self.settled(daemon, "2.0")
        #expect(view["state"] as? String == "stored", "\(view)")
        #expect(view["source"] as? String == "fetch" && view["url"] as? String == server.url("/web-2.0"))
        #expect(FileManager.default.contents(atPath: daemon.state.file("releases/web/2.0/bin/web")) == Data(ReleasePushTests.script))
        let stored = try ReleasePushTests.records(daemon, kind: "release.stored")
        #expect(stored.first?["source"] as? String == "fetch" && stored.first?["url"] as? String == server.url("/web-2.0"))

        // The same again is a no-op: nothing is downloaded.
        let requests = server.requests.count
        let again = try Self.fetch(daemon, "2.0", url: server.url("/web-2.0"), sha256: ReleasePushTests.sha256(ReleasePushTests.script))
        #expect(again.status == 200, "\(again.text)")
        #expect(server.requests.count == requests)
    }

    @Test func aNotFoundAStallAndTheWrongBytesFailAndLeaveNothing() throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/stall", .stall(after: Array(ReleasePushTests.script.prefix(4)), declaredLength: ReleasePushTests.script.count))
        server.route("/wrong", .bytes(Array("#!/bin/sh\nexit 9\n".utf8)))
        let daemon = try BatondProcess(configText: Self.config)
        let digest = ReleasePushTests.sha256(ReleasePushTests.script)
        for (version, path, expected) in [("2.0", "/missing", "answered 404"), ("2.1", "/stall", "stalled"),
                                          ("2.2", "/wrong", "SHA-256")] {
            let started = try Self.fetch(daemon, version, url: server.url(path), sha256: digest)
            #expect(started.status == 202, "\(started.text)")
            let view = try Self.settled(daemon, version)
            #expect(view["state"] as? String == "failed", "\(view)")
            let error = (view["fetch"] as? [String: Any])?["error"] as? String ?? ""
            #expect(error.contains(expected), "\(version): \(error)")
        }
        #expect(ReleasePushTests.entries(daemon) == [], "no release, no temporary file")
        let failures = try ReleasePushTests.records(daemon, kind: "release.fetch_failed")
        #expect(failures.map { $0["version"] as? String } == ["2.0", "2.1", "2.2"])
        #expect(try ReleasePushTests.records(daemon, kind: "release.stored").isEmpty)
        let list = try daemon.endpoint.get("/v1/releases/web", token: daemon.token).json()
        #expect((list["releases"] as? [[String: Any]])?.map { $0["state"] as? String } == ["failed", "failed", "failed"])
    }

    /// A fetch seen stored or failed has let go of its version: asked again at once, it is
    /// answered (200 for the same bytes, 202 for a retry), never `409 release_busy`. The
    /// view is read back to back, so the moment it changes is met each time.
    @Test func aFetchSeenOverMayBeAskedAgainAtOnce() throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/web", .bytes(ReleasePushTests.script))
        let daemon = try BatondProcess(configText: Self.config)
        let digest = ReleasePushTests.sha256(ReleasePushTests.script)
        func over(_ version: String) throws -> String {
            while true {
                let state = try Self.release(daemon, version)["state"] as? String ?? ""
                if state != "fetching" { return state }
            }
        }
        for round in 1...25 {
            let stored = "3.\(round)"
            #expect(try Self.fetch(daemon, stored, url: server.url("/web"), sha256: digest).status == 202)
            #expect(try over(stored) == "stored")
            let again = try Self.fetch(daemon, stored, url: server.url("/web"), sha256: digest)
            #expect(again.status == 200, "round \(round): \(again.text)")

            let retried = "4.\(round)"
            #expect(try Self.fetch(daemon, retried, url: server.url("/missing"), sha256: digest).status == 202)
            #expect(try over(retried) == "failed")
            let retry = try Self.fetch(daemon, retried, url: server.url("/web"), sha256: digest)
            #expect(retry.status == 202, "round \(round): \(retry.text)")
            #expect(try over(retried) == "stored")
        }
    }

    /// Between the release put in place and the fetch letting go of its version (here the
    /// sync of `releases/web` stalls, as on a hung disk), the fetch is not over: it shows
    /// fetching, in the release and in the list, and asking again is `409 release_busy`.
    /// Shown stored while the version was still held, a caller asking again at once was
    /// refused (a fresh-clone CI run met it).
    @Test(.enabled(if: DiskFaults.isAvailable, "needs a C compiler for the fault shim"), .timeLimit(.minutes(2)))
    func aFetchShowsFetchingUntilItLetsGoOfItsVersion() throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/web", .bytes(ReleasePushTests.script))
        let state = TemporaryDirectory("batond")
        let faults = DiskFaults(directory: state)
        let daemon = try BatondProcess(state: state, configText: Self.config, environment: try faults.environment())
        let directory = state.file("releases/web")
        try faults.set([.init(.sync, DiskFaults.Fault.stall, directory, exact: true)])
        let digest = ReleasePushTests.sha256(ReleasePushTests.script)
        #expect(try Self.fetch(daemon, "2.0", url: server.url("/web"), sha256: digest).status == 202)
        try waitUntil(timeout: 30) { FileManager.default.fileExists(atPath: "\(directory)/2.0/bin/web") }
        #expect(faults.hits.contains("sync -1 \(directory)"), "\(faults.hits)")

        #expect(try Self.release(daemon, "2.0")["state"] as? String == "fetching")
        let listed = try daemon.endpoint.get("/v1/releases/web", token: daemon.token).json()["releases"] as? [[String: Any]] ?? []
        #expect(listed.map { "\($0["version"] ?? "") \($0["state"] ?? "")" } == ["2.0 fetching"])
        let busy = try Self.fetch(daemon, "2.0", url: server.url("/web"), sha256: digest)
        #expect(busy.status == 409 && busy.errorCode == "release_busy", "\(busy.text)")

        try faults.clear()
        #expect(try Self.settled(daemon, "2.0")["state"] as? String == "stored")
        let again = try Self.fetch(daemon, "2.0", url: server.url("/web"), sha256: digest)
        #expect(again.status == 200, "\(again.text)")
    }

    @Test func aDownloadPastItsDeadlineFails() throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        // Bytes keep coming (never a stall), but the whole takes longer than fetch_timeout.
        let body = ReleasePushTests.script + [UInt8](repeating: 0x23, count: 32 << 10)
        server.route("/slow", .drip(body, piece: 1 << 10, every: .milliseconds(100)))
        let daemon = try BatondProcess(configText: ReleasePushTests.config + "\n[releases]\nfetch_timeout = \"1s\"\n")
        #expect(try Self.fetch(daemon, "2.0", url: server.url("/slow"), sha256: ReleasePushTests.sha256(body)).status == 202)
        let view = try Self.settled(daemon, "2.0")
        #expect(view["state"] as? String == "failed")
        let error = (view["fetch"] as? [String: Any])?["error"] as? String ?? ""
        #expect(error.contains("deadline"), "\(view)")
        #expect(ReleasePushTests.entries(daemon) == [])
    }

    @Test func progressShowsWhileItRuns() throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        let body = ReleasePushTests.script + [UInt8](repeating: 0x23, count: 64 << 10)
        server.route("/slow", .drip(body, piece: 8 << 10, every: .milliseconds(100)))
        let daemon = try BatondProcess(configText: Self.config)
        #expect(try Self.fetch(daemon, "2.0", url: server.url("/slow"), sha256: ReleasePushTests.sha256(body)).status == 202)
        var seen: [String: Any] = [:]
        try waitUntil(timeout: 10) {
            seen = (try? Self.release(daemon, "2.0")) ?? [:]
            return ((seen["fetch"] as? [String: Any])?["received_bytes"] as? Int ?? 0) > 0
        }
        #expect(seen["state"] as? String == "fetching")
        #expect((seen["fetch"] as? [String: Any])?["total_bytes"] as? Int == body.count)
        let busy = try Self.fetch(daemon, "2.0", url: server.url("/slow"), sha256: ReleasePushTests.sha256(body))
        #expect(busy.status == 409 && busy.errorCode == "release_busy", "\(busy.text)")
        #expect(try Self.settled(daemon, "2.0")["state"] as? String == "stored")
    }

    @Test func requireSignatureReadsTheDetachedSignature() throws {
        let key = Curve25519.Signing.PrivateKey()
        let server = try StaticHTTPServer()
        defer { server.close() }
        let digest = Array(SHA256.hash(data: ReleasePushTests.script))
        server.route("/signed", .bytes(ReleasePushTests.script))
        server.route("/signed.sig", .bytes(Array(try key.signature(for: digest).base64EncodedString().utf8)))
        server.route("/forged", .bytes(ReleasePushTests.script))
        server.route("/forged.sig", .bytes(Array(try Curve25519.Signing.PrivateKey().signature(for: digest))))
        server.route("/unsigned", .bytes(ReleasePushTests.script))
        let daemon = try BatondProcess(configText: ReleasePushTests.config + """

            [releases]
            require_signature = true
            [releases.trusted_keys]
            ci = "\(key.publicKey.rawRepresentation.base64EncodedString())"
            """)
        let hex = ReleasePushTests.sha256(ReleasePushTests.script)
        let unsigned = try Self.fetch(daemon, "2.0", url: server.url("/unsigned"), sha256: hex)
        #expect(unsigned.status == 403 && unsigned.errorCode == "signature_required", "\(unsigned.text)")
        let forged = try Self.fetch(daemon, "2.0", url: server.url("/forged"), sha256: hex)
        #expect(forged.status == 403 && forged.errorCode == "bad_signature", "\(forged.text)")
        #expect(!server.requests.contains { $0.path == "/unsigned" || $0.path == "/forged" }, "refused before any download")
        #expect(ReleasePushTests.entries(daemon) == [])

        #expect(try Self.fetch(daemon, "2.0", url: server.url("/signed"), sha256: hex).status == 202)
        let view = try Self.settled(daemon, "2.0")
        #expect(view["state"] as? String == "stored" && view["signed_by"] as? String == "ci", "\(view)")
    }

    /// A presigned URL's query is a credential: it is used, never shown or recorded.
    @Test func aURLsQueryIsNeverShownNorRecorded() throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/web-2.0", .bytes(ReleasePushTests.script))
        let daemon = try BatondProcess(configText: Self.config)
        let secret = "X-Amz-Signature=0123456789secret"
        let url = server.url("/web-2.0") + "?" + secret
        #expect(try Self.fetch(daemon, "2.0", url: url, sha256: ReleasePushTests.sha256(ReleasePushTests.script)).status == 202)
        #expect(try Self.fetch(daemon, "2.1", url: server.url("/missing") + "?" + secret,
                               sha256: ReleasePushTests.sha256(ReleasePushTests.script)).status == 202)
        let stored = try Self.settled(daemon, "2.0"), failed = try Self.settled(daemon, "2.1")
        #expect(stored["state"] as? String == "stored" && stored["url"] as? String == server.url("/web-2.0") + "?…", "\(stored)")
        #expect(failed["state"] as? String == "failed")
        #expect(server.requests.contains { $0.path.hasPrefix("/web-2.0") }, "the query was used to fetch")
        for text in [try daemon.endpoint.get("/v1/releases/web", token: daemon.token).text,
                     try String(contentsOfFile: daemon.state.file("ledger/journal.jsonl"), encoding: .utf8),
                     try String(contentsOfFile: daemon.state.file("releases/web/2.0/release.json"), encoding: .utf8),
                     daemon.log] {
            #expect(!text.contains("secret"), "the query shows: \(text.suffix(500))")
        }
    }

    @Test func aBadURLIsRefusedAtOnce() throws {
        let daemon = try BatondProcess(configText: Self.config)
        let digest = String(repeating: "0", count: 64)
        for url in ["file:///etc/passwd", "ftp://127.0.0.1/x", "http://user:pw@127.0.0.1/x", "not a url"] {
            let refused = try Self.fetch(daemon, "2.0", url: url, sha256: digest)
            #expect(refused.status == 422 && refused.errorCode == "invalid_url", "\(url): \(refused.text)")
        }
        let badDigest = try Self.fetch(daemon, "2.0", url: "http://127.0.0.1:9/x", sha256: "abc")
        #expect(badDigest.status == 422 && badDigest.errorCode == "invalid_digest", "\(badDigest.text)")
    }
}
