import Glibc

/// A small blocking HTTP/1.1 client: one request per connection (`Connection: close`),
/// over a Unix socket or loopback TCP. Just enough for batond's instance routes:
/// a JSON body with `Content-Length` out; a `Content-Length` (or chunked, or
/// read-to-close) body back. Every step is bounded by one deadline.
struct HTTPResponse: Sendable {
    let status: Int
    /// Header names lowercased; a repeated header keeps its last value.
    let headers: [String: String]
    let body: [UInt8]
}

/// What went wrong below HTTP. All of it is worth a retry: batond restarting, its
/// socket not there yet, a full backlog, a connection cut, a deadline passed.
struct TransportError: Error, Sendable, CustomStringConvertible {
    let description: String

    init(_ what: String, errno code: Int32? = nil) {
        if let code {
            description = "\(what): \(String(cString: strerror(code)))"
        } else {
            description = what
        }
    }
}

enum HTTPClient {
    static let maxHeadBytes = 64 * 1024
    static let maxBodyBytes = 16 * 1024 * 1024

    /// Sends one request and reads its response, all within `timeout`.
    static func send(
        to endpoint: BatonAgent.Endpoint,
        method: String,
        target: String,
        headers: [(String, String)],
        body: [UInt8]?,
        timeout: Duration
    ) throws -> HTTPResponse {
        let deadline = ContinuousClock.now + timeout
        let fd = try connect(to: endpoint, deadline: deadline)
        defer { close(fd) }

        var head = "\(method) \(target) HTTP/1.1\r\n"
        head += "Host: \(endpoint.hostHeader)\r\n"
        head += "Connection: close\r\n"
        head += "Accept: application/json\r\n"
        for (name, value) in headers {
            head += "\(name): \(value)\r\n"
        }
        if let body {
            head += "Content-Length: \(body.count)\r\n"
        }
        head += "\r\n"
        var request = Array(head.utf8)
        if let body { request += body }
        try writeAll(fd, request, deadline: deadline)

        var reader = Reader(fd: fd, deadline: deadline)
        while true {
            let response = try readResponse(&reader, method: method)
            // An interim answer (100 Continue and the like) is followed by the real one.
            if (100..<200).contains(response.status) && response.status != 101 { continue }
            return response
        }
    }

    // MARK: connecting

    private static func connect(to endpoint: BatonAgent.Endpoint, deadline: ContinuousClock.Instant) throws -> Int32 {
        switch endpoint {
        case .unix(let path):
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            let capacity = MemoryLayout.size(ofValue: address.sun_path)
            guard !bytes.isEmpty, bytes.count < capacity else {
                throw TransportError("socket path is empty or longer than \(capacity - 1) bytes: \(path)")
            }
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                raw.copyBytes(from: bytes)
                raw[bytes.count] = 0
            }
            let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)! + bytes.count + 1)
            let fd = try openSocket(family: AF_UNIX)
            do {
                try withUnsafePointer(to: &address) { pointer in
                    try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                        try finishConnect(fd, sa, length, deadline: deadline, peer: path)
                    }
                }
            } catch {
                close(fd)
                throw error
            }
            return fd

        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_family = AF_UNSPEC
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_NUMERICSERV
            var list: UnsafeMutablePointer<addrinfo>?
            let status = getaddrinfo(host, String(port), &hints, &list)
            guard status == 0, let first = list else {
                throw TransportError("cannot resolve \(host): \(String(cString: gai_strerror(status)))")
            }
            defer { freeaddrinfo(list) }
            var lastError = TransportError("no address for \(host)")
            var cursor: UnsafeMutablePointer<addrinfo>? = first
            while let info = cursor {
                cursor = info.pointee.ai_next
                guard let sa = info.pointee.ai_addr else { continue }
                let fd: Int32
                do {
                    fd = try openSocket(family: info.pointee.ai_family)
                } catch let error as TransportError {
                    lastError = error
                    continue
                }
                do {
                    try finishConnect(fd, sa, info.pointee.ai_addrlen, deadline: deadline, peer: "\(host):\(port)")
                    return fd
                } catch let error as TransportError {
                    close(fd)
                    lastError = error
                }
            }
            throw lastError
        }
    }

    /// A non-blocking socket: every wait goes through poll(2) against the deadline.
    private static func openSocket(family: Int32) throws -> Int32 {
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let fd = socket(family, type, 0)
        guard fd >= 0 else { throw TransportError("socket", errno: errno) }
        return fd
    }

    private static func finishConnect(
        _ fd: Int32, _ address: UnsafePointer<sockaddr>, _ length: socklen_t,
        deadline: ContinuousClock.Instant, peer: String
    ) throws {
        if Glibc.connect(fd, address, length) == 0 { return }
        let code = errno
        // EINTR: the connection goes on in the background, like EINPROGRESS.
        guard code == EINPROGRESS || code == EINTR else {
            // ENOENT, ECONNREFUSED, EAGAIN (a Unix socket's full backlog)...
            throw TransportError("connect to \(peer)", errno: code)
        }
        try waitFor(fd, events: Int16(POLLOUT), deadline: deadline, what: "connect to \(peer)")
        var soError: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &size) == 0 else {
            throw TransportError("connect to \(peer)", errno: errno)
        }
        if soError != 0 { throw TransportError("connect to \(peer)", errno: soError) }
    }

    // MARK: I/O

    private static func waitFor(_ fd: Int32, events: Int16, deadline: ContinuousClock.Instant, what: String) throws {
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw TransportError("\(what): timed out") }
            let (seconds, attoseconds) = left.components
            let ms = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
            var pfd = pollfd(fd: fd, events: events, revents: 0)
            let n = poll(&pfd, 1, ms)
            if n > 0 { return }  // ready, or an error/hang-up the next call will report
            if n < 0 && errno != EINTR { throw TransportError("\(what): poll", errno: errno) }
        }
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8], deadline: ContinuousClock.Instant) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                // MSG_NOSIGNAL: a peer that went away is an error here, not SIGPIPE.
                Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
            }
            if n > 0 {
                offset += n
                continue
            }
            let code = errno
            if n < 0 && (code == EAGAIN || code == EWOULDBLOCK) {
                try waitFor(fd, events: Int16(POLLOUT), deadline: deadline, what: "send")
            } else if n < 0 && code == EINTR {
                continue
            } else {
                throw TransportError("send", errno: code)
            }
        }
    }

    /// Buffered reads from the socket, each bounded by the deadline.
    struct Reader {
        let fd: Int32
        let deadline: ContinuousClock.Instant
        var buffer: [UInt8] = []
        var start = 0  // bytes before `start` are consumed
        var atEOF = false

        init(fd: Int32, deadline: ContinuousClock.Instant) {
            self.fd = fd
            self.deadline = deadline
        }

        var available: Int { buffer.count - start }

        /// Reads more bytes; false at end of stream.
        mutating func fill() throws -> Bool {
            if atEOF { return false }
            if start > 0 && start == buffer.count {
                buffer.removeAll(keepingCapacity: true)
                start = 0
            }
            var chunk = [UInt8](repeating: 0, count: 16 * 1024)
            while true {
                let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n > 0 {
                    buffer += chunk[0..<n]
                    return true
                }
                if n == 0 {
                    atEOF = true
                    return false
                }
                let code = errno
                if code == EAGAIN || code == EWOULDBLOCK {
                    try HTTPClient.waitFor(fd, events: Int16(POLLIN), deadline: deadline, what: "waiting for the answer")
                } else if code != EINTR {
                    throw TransportError("receive", errno: code)
                }
            }
        }

        /// One line ending in CRLF (or LF), without its ending.
        mutating func line(limit: Int) throws -> String {
            var scanned = start
            while true {
                if let lf = buffer[scanned...].firstIndex(of: 10) {
                    var end = lf
                    if end > start && buffer[end - 1] == 13 { end -= 1 }
                    let text = String(decoding: buffer[start..<end], as: UTF8.self)
                    start = lf + 1
                    return text
                }
                scanned = buffer.count
                guard available <= limit else { throw TransportError("malformed answer: line too long") }
                guard try fill() else { throw TransportError("connection closed before the answer was complete") }
            }
        }

        mutating func bytes(_ count: Int) throws -> [UInt8] {
            while available < count {
                guard try fill() else { throw TransportError("connection closed before the answer was complete") }
            }
            let out = Array(buffer[start..<(start + count)])
            start += count
            return out
        }

        mutating func rest(limit: Int) throws -> [UInt8] {
            while try fill() {
                guard available <= limit else { throw TransportError("answer body too large") }
            }
            let out = Array(buffer[start...])
            start = buffer.count
            return out
        }
    }

    private static func readResponse(_ reader: inout Reader, method: String) throws -> HTTPResponse {
        let statusLine = try reader.line(limit: maxHeadBytes)
        // "HTTP/1.1 200 OK"
        let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]), (100...999).contains(status) else {
            throw TransportError("malformed status line: \(statusLine.prefix(80))")
        }
        var headers: [String: String] = [:]
        var headBytes = statusLine.utf8.count
        while true {
            let line = try reader.line(limit: maxHeadBytes)
            if line.isEmpty { break }
            headBytes += line.utf8.count
            guard headBytes <= maxHeadBytes else { throw TransportError("malformed answer: head too large") }
            guard let colon = line.firstIndex(of: ":") else {
                throw TransportError("malformed header line: \(line.prefix(80))")
            }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingSpaces()
            headers[name] = value
        }

        let body: [UInt8]
        if method == "HEAD" || (100..<200).contains(status) || status == 204 || status == 304 {
            body = []
        } else if let coding = headers["transfer-encoding"], coding.lowercased().contains("chunked") {
            body = try readChunked(&reader)
        } else if let lengthText = headers["content-length"] {
            guard let length = Int(lengthText), length >= 0 else {
                throw TransportError("malformed Content-Length: \(lengthText.prefix(40))")
            }
            guard length <= maxBodyBytes else { throw TransportError("answer body too large (\(length) bytes)") }
            body = try reader.bytes(length)
        } else {
            body = try reader.rest(limit: maxBodyBytes)
        }
        return HTTPResponse(status: status, headers: headers, body: body)
    }

    private static func readChunked(_ reader: inout Reader) throws -> [UInt8] {
        var body: [UInt8] = []
        while true {
            let sizeLine = try reader.line(limit: 1024)
            let sizeText = sizeLine.split(separator: ";", maxSplits: 1).first.map { String($0).trimmingSpaces() } ?? ""
            guard let size = Int(sizeText, radix: 16), size >= 0 else {
                throw TransportError("malformed chunk size: \(sizeLine.prefix(40))")
            }
            if size == 0 {
                // Trailers, up to the empty line.
                while !(try reader.line(limit: maxHeadBytes)).isEmpty {}
                return body
            }
            guard body.count + size <= maxBodyBytes else { throw TransportError("answer body too large") }
            body += try reader.bytes(size)
            guard try reader.line(limit: 2).isEmpty else { throw TransportError("malformed chunk ending") }
        }
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces and tabs (no Foundation needed).
    func trimmingSpaces() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = firstIndex(where: { !isSpace($0) }) else { return "" }
        let last = lastIndex(where: { !isSpace($0) })!
        return String(self[first...last])
    }
}

extension Duration {
    /// Whole milliseconds, rounded down.
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}

/// Sleeps the calling thread (nanosleep; an interrupted sleep goes on for the rest).
func sleepThread(for duration: Duration) {
    guard duration > .zero else { return }
    let (seconds, attoseconds) = duration.components
    var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 && errno == EINTR {
        request = remaining
    }
}
