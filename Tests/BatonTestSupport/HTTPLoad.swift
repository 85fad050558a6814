import BatonWire
import Foundation
import Glibc
import Synchronization

/// Continuous HTTP requests at an agent's socket, counting what failed and how: each
/// of `connections` threads loops on a new TCP connection, `GET /`, and reading the whole
/// answer (the agents answer `Connection: close`).
public final class HTTPLoad: Sendable {
    public struct Failure: Error, Sendable, Equatable, CustomStringConvertible {
        public enum Kind: String, Sendable {
            /// connect(2) refused: nobody listened (the socket was closed, or its backlog full).
            case refused
            /// The connection was reset (a listener closed with it still queued, a process killed).
            case reset
            /// No whole answer within the timeout.
            case timeout
            /// An answer that is not `200` with a body, or a connection closed before one.
            case badAnswer = "bad-answer"
        }

        public let kind: Kind
        /// CLOCK_MONOTONIC, in nanoseconds, when it failed (the events files' clock).
        public let nanoseconds: UInt64
        public let detail: String

        public var description: String { "\(kind.rawValue) at \(nanoseconds): \(detail)" }
    }

    public struct Result: Sendable {
        /// Requests answered `200`.
        public var ok = 0
        public var failures: [Failure] = []
        /// Every distinct body of a `200` answer (e.g. `web.3 2.0\n`: which instance answered).
        public var bodies: Set<String> = []
    }

    public let host: String
    public let port: Int
    private let timeout: Duration
    private let running = Locked(false)
    private let result = Mutex(Result())
    private let finished = DispatchGroup()

    /// - Parameters:
    ///   - address: `tcp://HOST:PORT` or `HOST:PORT` (`[::1]:PORT` for IPv6), numeric.
    ///   - timeout: how long a request may wait for its whole answer; it includes the time
    ///     spent in the listener's backlog while no instance accepts.
    public init(address: String, timeout: Duration = .seconds(10)) throws {
        var rest = address.hasPrefix("tcp://") ? Substring(address.dropFirst("tcp://".count)) : Substring(address)
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]) else {
            throw TestFailure("HTTPLoad: not HOST:PORT: \(address)")
        }
        rest = rest[..<colon]
        if rest.hasPrefix("[") && rest.hasSuffix("]") { rest = rest.dropFirst().dropLast() }
        self.host = String(rest)
        self.port = port
        self.timeout = timeout
    }

    /// Starts `connections` request loops.
    public func start(connections: Int) {
        running.set(true)
        for _ in 0..<connections {
            finished.enter()
            Thread.detachNewThread { [self] in
                while running.get() { record(request()) }
                finished.leave()
            }
        }
    }

    /// Lets every loop finish the request it is making, and returns the counts.
    public func stop() -> Result {
        running.set(false)
        finished.wait()
        return counts
    }

    /// What has been counted so far (the loops go on).
    public var counts: Result { result.withLock { $0 } }

    private func record(_ outcome: Swift.Result<String, Failure>) {
        result.withLock { result in
            switch outcome {
            case .success(let body):
                result.ok += 1
                result.bodies.insert(body)
            case .failure(let failure):
                result.failures.append(failure)
            }
        }
    }

    /// One request on a new connection: the body of a `200` answer, or why not.
    func request() -> Swift.Result<String, Failure> {
        func failed(_ kind: Failure.Kind, _ detail: String) -> Swift.Result<String, Failure> {
            .failure(Failure(kind: kind, nanoseconds: monotonicNanoseconds(), detail: detail))
        }
        func failedErrno(_ what: String) -> Swift.Result<String, Failure> {
            let code = errno
            let detail = "\(what): \(String(cString: strerror(code)))"
            switch code {
            case ECONNREFUSED: return failed(.refused, detail)
            case ECONNRESET, EPIPE: return failed(.reset, detail)
            case EAGAIN, ETIMEDOUT, EINPROGRESS: return failed(.timeout, detail)
            default: return failed(.badAnswer, detail)
            }
        }
        guard case (var storage, let length)? = SocketAddress.tcp(host: host, port: port).sockaddrStorage else {
            return failed(.badAnswer, "not a numeric address: \(host)")
        }
        let fd = socket(Int32(storage.ss_family), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return failedErrno("socket") }
        defer { close(fd) }
        // Blocking, with the timeout on every call: connect (a full backlog), send, and
        // each read (a connection queued while no instance accepts).
        let (seconds, attoseconds) = timeout.components
        var limit = timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        let connected = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) }
        }
        guard connected == 0 else { return failedErrno("connect") }
        let request = Array("GET / HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n".utf8)
        let sent = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == request.count else { return sent < 0 ? failedErrno("send") : failed(.badAnswer, "short send") }
        let deadline = ContinuousClock.now + timeout
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                answer += chunk[0..<n]
                guard ContinuousClock.now < deadline else { return failed(.timeout, "answer not complete in \(timeout)") }
                continue
            }
            if n == 0 { break }
            if errno == EINTR { continue }
            return failedErrno(answer.isEmpty ? "waiting for the answer" : "reading the answer")
        }
        let text = String(decoding: answer, as: UTF8.self)
        guard text.hasPrefix("HTTP/1.1 200 "), let blank = text.range(of: "\r\n\r\n") else {
            return failed(.badAnswer, answer.isEmpty ? "closed without an answer" : "answer: \(text.prefix(200))")
        }
        let body = String(text[blank.upperBound...])
        return body.isEmpty ? failed(.badAnswer, "200 without a body") : .success(body)
    }
}

/// Every `accept` line of an events file (baton-testagent `--http`) that is not within its
/// instance's own go window: from a `go` line to the instance's next `stopped`, `exit` or
/// `disowned` line (or the end of the file while none came). Empty when only the
/// instance holding `go` accepted.
public func acceptsOutsideGoWindows(_ events: [AgentEvent]) -> [AgentEvent] {
    // Sorted by time, lines of equal times kept in the file's order.
    let ordered = events.enumerated().sorted { ($0.element.nanoseconds, $0.offset) < ($1.element.nanoseconds, $1.offset) }.map(\.element)
    let byInstance = Dictionary(grouping: ordered, by: \.instance)
    var outside: [AgentEvent] = []
    for (_, mine) in byInstance {
        var holdsGo = false
        for event in mine {
            switch event.event {
            case "go": holdsGo = true
            case "stopped", "exit", "disowned": holdsGo = false
            case "accept" where !holdsGo: outside.append(event)
            default: break
            }
        }
    }
    return outside.sorted { $0.nanoseconds < $1.nanoseconds }
}

