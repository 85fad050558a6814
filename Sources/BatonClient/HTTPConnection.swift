import Glibc

/// A request as it goes out. The client adds `Host`, `Content-Length` and (unless set)
/// `Accept: application/json`.
public struct HTTPRequest: Sendable {
    public enum Body: Sendable {
        case none
        case bytes([UInt8])
        /// Streamed from disk as it is sent, never held whole in memory.
        case file(path: String)
    }

    public var method: String
    /// Path and query, e.g. `/v1/events?since=4&wait=30`.
    public var target: String
    public var headers: [(String, String)]
    public var body: Body
    /// How long the exchange may take. For a `.file` body it bounds each write of the
    /// body and then the answer, so a large upload is cut only when it stalls.
    public var timeout: Duration
    /// Called as a `.file` body goes out: bytes sent, bytes in all.
    public var progress: (@Sendable (_ sent: Int64, _ total: Int64) -> Void)?

    public init(_ method: String, _ target: String, headers: [(String, String)] = [], body: Body = .none,
                timeout: Duration = .seconds(30), progress: (@Sendable (Int64, Int64) -> Void)? = nil) {
        self.method = method; self.target = target; self.headers = headers; self.body = body
        self.timeout = timeout; self.progress = progress
    }
}

/// An answer read whole.
public struct HTTPResponse: Sendable {
    public let status: Int
    /// Names lowercased; a repeated header keeps its last value.
    public let headers: [String: String]
    public let body: [UInt8]

    public init(status: Int, headers: [String: String], body: [UInt8]) {
        self.status = status; self.headers = headers; self.body = body
    }

    public func header(_ name: String) -> String? { headers[name.lowercased()] }
    public var text: String { String(decoding: body, as: UTF8.self) }
}

/// One HTTP/1.1 connection to batond, kept open between requests (keep-alive) and made
/// again when the server closed it meanwhile. Blocking: every wait goes through poll(2)
/// against the request's deadline, so it suits plain threads (the CLI, the agent
/// library, a readiness probe's thread), never Swift's cooperative pool.
///
/// Invariant: between requests, the connection is either closed (`socket == nil`) or
/// idle with nothing unread, and `reusable` says whether the last answer allows reuse.
///
/// @unchecked Sendable: it is used by one caller at a time; `BatonClient`'s pool hands a
/// connection out exclusively and takes it back only after the answer is read whole.
public final class HTTPConnection: @unchecked Sendable {
    public let endpoint: BatonClient.Endpoint
    private var socket: Socket?

    public static let maxHeadBytes = 64 * 1024
    public static let maxBodyBytes = 64 * 1024 * 1024

    public init(_ endpoint: BatonClient.Endpoint) { self.endpoint = endpoint }

    deinit { socket?.close() }

    /// Closes the connection now; the next request opens another.
    public func close() {
        socket?.close()
        socket = nil
    }

    public var isOpen: Bool { socket != nil }

    /// Sends `request` and reads the whole answer (interim 1xx answers skipped).
    public func send(_ request: HTTPRequest) throws(ClientError) -> HTTPResponse {
        let stream = try open(request)
        var body: [UInt8] = []
        let deadline = ContinuousClock.now + request.timeout
        while let chunk = try stream.next(deadline: deadline) {
            body += chunk
            guard body.count <= Self.maxBodyBytes else {
                close()
                throw .transport(endpoint, reason: "answer body over \(Self.maxBodyBytes) bytes")
            }
        }
        return HTTPResponse(status: stream.status, headers: stream.headers, body: body)
    }

    /// Sends `request` and reads the answer's head; its body is then read from the stream
    /// as it arrives (a long answer, Server-Sent Events, a log). The connection serves no
    /// other request until the body is read to its end or the stream is closed.
    public func open(_ request: HTTPRequest) throws(ClientError) -> ResponseStream {
        // A kept-alive connection the server closed meanwhile fails on the first write or
        // read: then the request went nowhere, and is sent once more on a new connection.
        let reused = socket != nil
        do {
            return try exchange(request)
        } catch is StaleConnection where reused {
            close()
        } catch {
            close()
            throw ClientError(error, endpoint: endpoint)
        }
        do {
            return try exchange(request)
        } catch {
            close()
            throw ClientError(error, endpoint: endpoint)
        }
    }

    // MARK: - The exchange

    /// Below `open`: `StaleConnection` when nothing of an answer came back on a connection
    /// that may have been closed while idle; `Failure` otherwise.
    private func exchange(_ request: HTTPRequest) throws -> ResponseStream {
        let deadline = ContinuousClock.now + request.timeout
        if socket == nil { socket = try Socket.connect(endpoint, deadline: deadline) }
        let socket = self.socket!

        var bodyLength: Int64 = 0
        var file: Int32 = -1
        defer { if file >= 0 { Glibc.close(file) } }
        switch request.body {
        case .none: break
        case .bytes(let bytes): bodyLength = Int64(bytes.count)
        case .file(let path):
            file = Glibc.open(path, O_RDONLY | O_CLOEXEC)
            guard file >= 0 else { throw Failure.local("cannot read \(path): \(String(cString: strerror(errno)))") }
            var info = stat()
            guard fstat(file, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { throw Failure.local("\(path) is not a regular file") }
            bodyLength = Int64(info.st_size)
        }

        var head = "\(request.method) \(request.target) HTTP/1.1\r\nHost: \(endpoint.hostHeader)\r\n"
        var hasAccept = false
        for (name, value) in request.headers {
            if name.lowercased() == "accept" { hasAccept = true }
            head += "\(name): \(value)\r\n"
        }
        if !hasAccept { head += "Accept: application/json\r\n" }
        if case .none = request.body, request.method == "GET" || request.method == "HEAD" {
            // No body, no length: batond refuses a body on GET.
        } else {
            head += "Content-Length: \(bodyLength)\r\n"
        }
        head += "\r\n"

        var out = Array(head.utf8)
        if case .bytes(let bytes) = request.body { out += bytes }
        do {
            try socket.write(out[...], deadline: deadline)
        } catch let failure as Failure {
            throw StaleConnection(reason: failure.description)
        }
        if file >= 0 {
            // An answer that comes before the whole body (a refusal) ends the upload.
            try upload(file, length: bodyLength, over: socket, timeout: request.timeout, progress: request.progress)
        }

        let answerDeadline = file >= 0 ? ContinuousClock.now + request.timeout : deadline
        while true {
            let head: ResponseHead
            do {
                head = try ResponseHead.read(from: socket, deadline: answerDeadline)
            } catch let failure as Failure where failure.isClosedBeforeAnswer {
                throw StaleConnection(reason: failure.description)
            }
            if (100..<200).contains(head.status) && head.status != 101 { continue }
            return try ResponseStream(connection: self, socket: socket, head: head, method: request.method)
        }
    }

    private func upload(_ file: Int32, length: Int64, over socket: Socket, timeout: Duration,
                        progress: (@Sendable (Int64, Int64) -> Void)?) throws {
        var chunk = [UInt8](repeating: 0, count: 256 * 1024)
        var sent: Int64 = 0
        progress?(0, length)
        while sent < length {
            if socket.hasAnswerWaiting() { return }
            let n = chunk.withUnsafeMutableBytes { Glibc.read(file, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure.local("the file shrank while it was sent (\(sent) of \(length) bytes)") }
            do {
                try socket.write(chunk[0..<n], deadline: ContinuousClock.now + timeout)
            } catch let failure as Failure {
                // batond may have answered and closed: its answer is what matters.
                if socket.hasAnswerWaiting() { return }
                throw failure
            }
            sent += Int64(n)
            progress?(sent, length)
        }
    }

    fileprivate func finished(reusable: Bool) {
        if !reusable { close() }
    }
}

/// An answer whose body is read as it arrives.
public final class ResponseStream: @unchecked Sendable {
    // @unchecked: like its connection, used by one caller at a time.
    public let status: Int
    /// Names lowercased.
    public let headers: [String: String]
    private let connection: HTTPConnection
    private let socket: Socket
    private var framing: Framing
    private var reusable: Bool
    private var done = false

    private enum Framing {
        case length(remaining: Int64)
        case chunked(remaining: Int64)  // of the current chunk; 0 before a size line
        case untilClose
    }

    fileprivate init(connection: HTTPConnection, socket: Socket, head: ResponseHead, method: String) throws {
        status = head.status
        headers = head.headers
        self.connection = connection
        self.socket = socket
        reusable = head.keepAlive
        if method == "HEAD" || head.status == 204 || head.status == 304 {
            framing = .length(remaining: 0)
        } else if let coding = head.headers["transfer-encoding"], coding.lowercased().contains("chunked") {
            framing = .chunked(remaining: 0)
        } else if let text = head.headers["content-length"] {
            guard let length = Int64(text), length >= 0 else { throw Failure.malformed("Content-Length \(text.prefix(40))") }
            framing = .length(remaining: length)
        } else {
            framing = .untilClose
            reusable = false
        }
    }

    public func header(_ name: String) -> String? { headers[name.lowercased()] }

    /// The next bytes of the body as they arrive; nil at its end. Throws when `deadline`
    /// passes first (the stream is then closed).
    public func next(deadline: ContinuousClock.Instant) throws(ClientError) -> [UInt8]? {
        if done { return nil }
        do {
            let chunk = try read(deadline: deadline)
            if chunk == nil { finish() }
            return chunk
        } catch {
            done = true
            connection.close()
            throw ClientError(error, endpoint: connection.endpoint)
        }
    }

    /// Gives up on the rest of the body: the connection is closed.
    public func close() {
        guard !done else { return }
        done = true
        connection.close()
    }

    deinit { close() }

    private func finish() {
        done = true
        connection.finished(reusable: reusable)
    }

    private func read(deadline: ContinuousClock.Instant) throws -> [UInt8]? {
        switch framing {
        case .length(let remaining):
            guard remaining > 0 else { return nil }
            let bytes = try socket.some(max: Int(min(remaining, 256 * 1024)), deadline: deadline)
            framing = .length(remaining: remaining - Int64(bytes.count))
            return bytes
        case .chunked(var remaining):
            if remaining == 0 {
                let line = try socket.line(limit: 1024, deadline: deadline)
                let sizeText = line.split(separator: ";", maxSplits: 1).first.map { $0.trimmingCharacters(in: " \t") } ?? ""
                guard let size = Int64(sizeText, radix: 16), size >= 0 else { throw Failure.malformed("chunk size \(line.prefix(40))") }
                if size == 0 {
                    while !(try socket.line(limit: HTTPConnection.maxHeadBytes, deadline: deadline)).isEmpty {}
                    return nil
                }
                remaining = size
            }
            let bytes = try socket.some(max: Int(min(remaining, 256 * 1024)), deadline: deadline)
            remaining -= Int64(bytes.count)
            if remaining == 0 {
                guard try socket.line(limit: 2, deadline: deadline).isEmpty else { throw Failure.malformed("chunk ending") }
            }
            framing = .chunked(remaining: remaining)
            return bytes
        case .untilClose:
            return try socket.someOrEnd(max: 256 * 1024, deadline: deadline)
        }
    }
}

// MARK: - The head of an answer

private struct ResponseHead {
    let status: Int
    let headers: [String: String]
    let keepAlive: Bool

    static func read(from socket: Socket, deadline: ContinuousClock.Instant) throws -> ResponseHead {
        let statusLine = try socket.line(limit: HTTPConnection.maxHeadBytes, deadline: deadline)
        let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]), (100...999).contains(status) else {
            throw Failure.malformed("status line \(statusLine.prefix(80))")
        }
        var headers: [String: String] = [:]
        var size = statusLine.utf8.count
        while true {
            let line = try socket.line(limit: HTTPConnection.maxHeadBytes, deadline: deadline)
            if line.isEmpty { break }
            size += line.utf8.count
            guard size <= HTTPConnection.maxHeadBytes else { throw Failure.malformed("head over \(HTTPConnection.maxHeadBytes) bytes") }
            guard let colon = line.firstIndex(of: ":") else { throw Failure.malformed("header line \(line.prefix(80))") }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: " \t")
        }
        let connection = headers["connection"]?.lowercased() ?? ""
        let keepAlive = parts[0] == "HTTP/1.1" ? !connection.contains("close") : connection.contains("keep-alive")
        return ResponseHead(status: status, headers: headers, keepAlive: keepAlive)
    }
}

// MARK: - Failures below HTTP

/// What the transport throws inside this file; `open` and `next` turn it into a
/// `ClientError`.
enum Failure: Error, CustomStringConvertible {
    case connect(BatonClient.Endpoint, Int32)
    case io(String, Int32)
    case timedOut(String)
    case closed
    case malformed(String)
    case local(String)

    var description: String {
        switch self {
        case .connect(let endpoint, let code): "connect to \(endpoint): \(String(cString: strerror(code)))"
        case .io(let what, let code): "\(what): \(String(cString: strerror(code)))"
        case .timedOut(let what): "timed out \(what)"
        case .closed: "the connection closed before the answer was complete"
        case .malformed(let what): "malformed answer: \(what)"
        case .local(let what): what
        }
    }

    var isClosedBeforeAnswer: Bool {
        switch self {
        case .closed: true
        case .io(_, let code): code == ECONNRESET || code == EPIPE
        case .connect, .timedOut, .malformed, .local: false
        }
    }
}

/// A failure on a kept-alive connection before any of the answer came: the server may
/// have closed it while idle.
private struct StaleConnection: Error {
    let reason: String
}

extension ClientError {
    /// What a failure inside the transport means to a caller of `endpoint`.
    init(_ error: any Error, endpoint: BatonClient.Endpoint) {
        if let error = error as? ClientError {
            self = error
            return
        }
        if let stale = error as? StaleConnection {
            self = .transport(endpoint, reason: stale.reason)
            return
        }
        guard let failure = error as? Failure else {
            self = .transport(endpoint, reason: "\(error)")
            return
        }
        switch failure {
        case .connect(let endpoint, let code): self = .connect(endpoint, errno: code)
        case .local(let what): self = .localFile(what)
        case .io, .timedOut, .closed, .malformed: self = .transport(endpoint, reason: failure.description)
        }
    }
}

extension StringProtocol {
    fileprivate func trimmingCharacters(in set: String) -> String {
        guard let first = firstIndex(where: { !set.contains($0) }) else { return "" }
        let last = lastIndex(where: { !set.contains($0) })!
        return String(self[first...last])
    }
}
