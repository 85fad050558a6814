import BatonCore
import BatonReleases
import BatonTestSupport
import Crypto
import Foundation
import Testing

@Suite("Download")
struct DownloadTests {
    static let limits = DownloadLimits(maxBytes: 64 << 20, deadline: .seconds(30), stallTimeout: .seconds(10),
                                       connectTimeout: .seconds(5))

    // MARK: - Bodies

    @Test func aFileArrivesWholeAndItsDigestMatches() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        let payload = pattern(5 << 20)
        server.route("/web-2.0.tar.gz", .bytes(payload))
        let fetched = await download(server.url("/web-2.0.tar.gz"))
        let result = try fetched.result.get()
        #expect(result == DownloadResult(bytes: Int64(payload.count), status: 200, effectiveURL: server.url("/web-2.0.tar.gz")))
        #expect(fetched.digest == SHA256.hash(data: payload).hex)
        #expect(fetched.lastProgress?.received == Int64(payload.count))
        #expect(fetched.lastProgress?.total == Int64(payload.count))
        let request = try #require(server.requests.first)
        #expect(request.headers["user-agent"] == "batond/\(BatonVersion.current)")
        #expect(request.headers["authorization"] == nil && request.headers["cookie"] == nil)
    }

    @Test func aChunkedBodyWithoutLengthArrivesWhole() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        let payload = pattern(1 << 20 + 123)
        server.route("/chunked", .chunked(payload, chunkSize: 10_000))
        let fetched = await download(server.url("/chunked"))
        #expect(try fetched.result.get().bytes == Int64(payload.count))
        #expect(fetched.digest == SHA256.hash(data: payload).hex)
        #expect(fetched.lastProgress?.received == Int64(payload.count))
        #expect(fetched.lastProgress?.total == nil)
    }

    @Test(arguments: [401, 403, 404, 500, 503])
    func anErrorStatusFailsAndItsBodyIsNeverWritten(status: Int) async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/missing", .status(status, body: pattern(10_000)))
        let fetched = await download(server.url("/missing"))
        #expect(fetched.error == .httpStatus(status, url: server.url("/missing")))
        #expect(fetched.error?.description == "GET \(server.url("/missing")) answered \(status)")
        #expect(fetched.written == 0)
    }

    @Test func aBodyLargerThanTheLimitByContentLengthIsRefusedBeforeTheBody() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        // Headers announcing 2 MB, then silence: only the Content-Length can refuse it
        // before the stall timeout (10 s).
        server.route("/big", .stall(after: [], declaredLength: 2 << 20))
        let fetched = await download(server.url("/big"), limits: Self.limits.with { $0.maxBytes = 1 << 20 })
        #expect(fetched.error == .tooLarge(1 << 20))
        #expect(fetched.written == 0)
        #expect(fetched.seconds < 5)
    }

    @Test func aChunkedBodyLargerThanTheLimitIsCutByCounting() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/big", .chunked(pattern(2 << 20), chunkSize: 1000))
        let fetched = await download(server.url("/big"), limits: Self.limits.with { $0.maxBytes = 1 << 20 })
        #expect(fetched.error == .tooLarge(1 << 20))
        #expect(fetched.written <= 1 << 20)
    }

    @Test func aBodyOfExactlyTheLimitPassesAndOneByteMoreDoesNot() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/exact", .bytes(pattern(1000)))
        server.route("/exact-chunked", .chunked(pattern(1000), chunkSize: 100))
        server.route("/over", .bytes(pattern(1001)))
        server.route("/over-chunked", .chunked(pattern(1001), chunkSize: 100))
        let limits = Self.limits.with { $0.maxBytes = 1000 }
        #expect(try await download(server.url("/exact"), limits: limits).result.get().bytes == 1000)
        #expect(try await download(server.url("/exact-chunked"), limits: limits).result.get().bytes == 1000)
        #expect(await download(server.url("/over"), limits: limits).error == .tooLarge(1000))
        #expect(await download(server.url("/over-chunked"), limits: limits).error == .tooLarge(1000))
    }

    // MARK: - Time

    @Test func headersThenSilenceStalls() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/silent", .stall(after: [], declaredLength: 1000))
        let fetched = await download(server.url("/silent"), limits: Self.limits.with { $0.stallTimeout = .milliseconds(500) })
        #expect(fetched.error == .stalled(.milliseconds(500)))
        #expect(fetched.error?.description == "no byte for 500ms: stalled")
        #expect(fetched.seconds >= 0.45 && fetched.seconds < 5)
    }

    @Test func silenceInTheMiddleOfTheBodyStalls() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/half", .stall(after: pattern(3000), declaredLength: 6000))
        let fetched = await download(server.url("/half"), limits: Self.limits.with { $0.stallTimeout = .milliseconds(300) })
        #expect(fetched.error == .stalled(.milliseconds(300)))
        #expect(fetched.written == 3000)
        #expect(fetched.seconds < 5)
    }

    @Test func aSlowTransferHitsItsDeadline() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        // 200 bytes, one every 20 ms: 4 s in all, never silent for long.
        server.route("/slow", .drip(pattern(200), piece: 1, every: .milliseconds(20)))
        let fetched = await download(server.url("/slow"), limits: Self.limits.with {
            $0.deadline = .milliseconds(500)
            $0.stallTimeout = .seconds(2)
        })
        #expect(fetched.error == .timedOut(.milliseconds(500)))
        #expect(fetched.written > 0)
        #expect(fetched.seconds >= 0.45 && fetched.seconds < 3)
    }

    @Test func theDeadlineHoldsWhenTheServerSendsNothingAfterTheHeaders() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/silent", .stall(after: [], declaredLength: nil))
        let fetched = await download(server.url("/silent"), limits: Self.limits.with { $0.deadline = .milliseconds(400) })
        #expect(fetched.error == .timedOut(.milliseconds(400)))
        #expect(fetched.seconds < 5)
    }

    // MARK: - Redirects and URLs

    @Test func aRedirectToHTTPIsFollowed() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        let payload = pattern(70_000)
        server.route("/latest", .redirect(to: "/web-2.0.tar.gz"))
        server.route("/moved", .redirect(to: server.url("/latest"), status: 301))
        server.route("/web-2.0.tar.gz", .bytes(payload))
        let fetched = await download(server.url("/moved"))
        #expect(try fetched.result.get().effectiveURL == server.url("/web-2.0.tar.gz"))
        #expect(fetched.digest == SHA256.hash(data: payload).hex)
    }

    @Test func aRedirectToAFileURLIsRefused() async throws {
        let directory = TemporaryDirectory("download")
        let secret = directory.file("secret")
        try Data("not for the network\n".utf8).write(to: URL(fileURLWithPath: secret))
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/evil", .redirect(to: "file://\(secret)"))
        let fetched = await download(server.url("/evil"))
        guard case .invalidURL(let reason) = fetched.error else {
            Issue.record("expected invalidURL, got \(String(describing: fetched.error))")
            return
        }
        #expect(reason.contains("not http or https"))
        #expect(fetched.written == 0)
    }

    @Test func aRedirectLoopStopsAfterFiveRedirects() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/a", .redirect(to: "/b"))
        server.route("/b", .redirect(to: "/a"))
        let fetched = await download(server.url("/a"))
        guard case .network(let text) = fetched.error else {
            Issue.record("expected a network error, got \(String(describing: fetched.error))")
            return
        }
        #expect(text.contains("redirects"))
        #expect(server.requests.count == 6)
    }

    @Test(arguments: [
        ("http://example.com/web-2.0.tar.gz", nil),
        ("https://example.com:8443/a/b?sig=1", nil),
        ("http://127.0.0.1:8080/x", nil),
        ("http://[::1]/x", nil),
        ("ftp://example.com/x", "the scheme is ftp, not http or https"),
        ("file:///etc/passwd", "the scheme is file, not http or https"),
        ("/relative/path", "not an absolute URL"),
        ("example.com/x", "not an absolute URL"),
        ("http:///x", "not an absolute URL"),
        ("HTTP://example.com/x", nil),
        ("http:/example.com/x", "not an absolute URL"),
        ("http://user:secret@example.com/x", "it carries a user name or password; batond sends no credentials"),
        ("http://user@example.com/x", "it carries a user name or password; batond sends no credentials"),
        ("http://example.com/a b", "contains a space or a control character"),
        ("http://example.com/\n", "contains a space or a control character"),
        ("http://example.com/" + String(repeating: "a", count: 2029), nil),
        ("http://example.com/" + String(repeating: "a", count: 2030), "longer than 2048 bytes"),
    ] as [(String, String?)])
    func validate(url: String, reason: String?) {
        let verdict = Download.validate(url: url)
        if let reason {
            #expect(verdict?.hasPrefix(reason) == true, "\(url): \(verdict ?? "accepted")")
        } else {
            #expect(verdict == nil, "\(url): \(verdict ?? "")")
        }
    }

    @Test func aURLThatFailsValidationIsNotFetched() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        let fetched = await download("http://user:pw@127.0.0.1:\(server.port)/x")
        #expect(fetched.error == .invalidURL("it carries a user name or password; batond sends no credentials"))
        #expect(server.requests.isEmpty)
    }

    // MARK: - Aborts

    @Test func aThrowingWriteStopsTheTransferWithItsError() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        // 64 KB of 10 MB, then silence: without the abort this would wait for the stall (10 s).
        server.route("/full", .stall(after: pattern(64 << 10), declaredLength: 10 << 20))
        let fetched = await download(server.url("/full"), failWrites: true)
        #expect(fetched.error == .sink(DiskFull()))
        if case .sink(let error) = fetched.error { #expect(error is DiskFull) }
        #expect(fetched.seconds < 2)
    }

    @Test func cancellationStopsATransferThatIsReceiving() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/big", .stall(after: pattern(64 << 10), declaredLength: 10 << 20))
        let fetched = await download(server.url("/big"), cancel: .afterFirstWrite)
        #expect(fetched.error == .cancelled)
        #expect(fetched.seconds < 2)
    }

    @Test func cancellationStopsATransferThatHearsNothing() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/silent", .stall(after: [], declaredLength: nil))
        let fetched = await download(server.url("/silent"), cancel: .onAsking(3))
        #expect(fetched.error == .cancelled)
        #expect(fetched.seconds < 2)
    }

    @Test func aConnectionClosedMidBodyFails() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/cut", .close(after: pattern(1000), declaredLength: 5000))
        let fetched = await download(server.url("/cut"))
        guard case .network(let text) = fetched.error else {
            Issue.record("expected a network error, got \(String(describing: fetched.error))")
            return
        }
        #expect(text.hasPrefix("GET \(server.url("/cut")): "))
        #expect(fetched.written == 1000)
    }

    @Test func aRefusedConnectionFails() async throws {
        let server = try StaticHTTPServer()
        let url = server.url("/gone")
        server.close()
        let fetched = await download(url)
        guard case .network = fetched.error else {
            Issue.record("expected a network error, got \(String(describing: fetched.error))")
            return
        }
    }

    // MARK: - Small bodies

    @Test func fetchSmallAnswersNilFor404AndTheBytesOtherwise() async throws {
        let server = try StaticHTTPServer()
        defer { server.close() }
        let signature = pattern(64)
        server.route("/web-2.0.tar.gz.sig", .bytes(signature))
        server.route("/huge.sig", .bytes(pattern(5000)))
        server.route("/broken.sig", .status(500))
        let url = server.url("")
        let outcome = await onThread { () -> [Result<[UInt8]?, DownloadError>] in
            ["/web-2.0.tar.gz.sig", "/none.sig", "/huge.sig", "/broken.sig"].map { path in
                Result { () throws(DownloadError) in try Download.fetchSmall(url: url + path, maxBytes: 4096, limits: Self.limits) }
            }
        }
        #expect(try outcome[0].get() == signature)
        #expect(try outcome[1].get() == nil)
        #expect(throws: DownloadError.tooLarge(4096)) { try outcome[2].get() }
        #expect(throws: DownloadError.httpStatus(500, url: url + "/broken.sig")) { try outcome[3].get() }
    }
}

// MARK: - Helpers

/// What a download did: its result, the bytes written (digested, not kept), its time.
private struct Fetched: Sendable {
    var result: Result<DownloadResult, DownloadError>
    var written = 0
    var digest = ""
    var lastProgress: (received: Int64, total: Int64?)?
    var seconds = 0.0

    var error: DownloadError? {
        if case .failure(let error) = result { error } else { nil }
    }
}

private struct DiskFull: Error, CustomStringConvertible {
    var description: String { "No space left on device" }
}

private enum Cancel: Sendable {
    case never
    case afterFirstWrite
    /// Cancelled the n-th time `isCancelled` is asked.
    case onAsking(Int)
}

/// Runs `Download.fetch` on a thread of its own, as batond does.
private func download(_ url: String, limits: DownloadLimits = DownloadTests.limits, failWrites: Bool = false,
              cancel: Cancel = .never) async -> Fetched {
    await onThread {
        var hasher = SHA256()
        var fetched = Fetched(result: .failure(.cancelled))
        var asked = 0
        let started = ContinuousClock.now
        fetched.result = Result { () throws(DownloadError) in
            try Download.fetch(url: url, limits: limits, write: { bytes in
                if failWrites { throw DiskFull() }
                hasher.update(bufferPointer: bytes)
                fetched.written += bytes.count
            }, progress: { received, total in
                fetched.lastProgress = (received, total)
            }, isCancelled: {
                asked += 1
                switch cancel {
                case .never: return false
                case .afterFirstWrite: return fetched.written > 0
                case .onAsking(let n): return asked >= n
                }
            })
        }
        let elapsed = ContinuousClock.now - started
        fetched.seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        fetched.digest = hasher.finalize().hex
        return fetched
    }
}

/// Blocking work on a plain thread, awaited without holding a thread of Swift's pool.
private func onThread<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: work()) }.start()
    }
}

/// Bytes that differ from offset to offset, so a lost or repeated piece changes the digest.
private func pattern(_ count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) }
}

private extension DownloadLimits {
    func with(_ change: (inout DownloadLimits) -> Void) -> DownloadLimits {
        var copy = self
        change(&copy)
        return copy
    }
}

private extension Digest {
    var hex: String { map { String(format: "%02x", $0) }.joined() }
}
