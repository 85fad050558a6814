import Glibc

/// A connected non-blocking stream socket with a read buffer. Every wait is a poll(2)
/// bounded by the caller's deadline. The only file of the client that calls the socket
/// API.
final class Socket {
    private var fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0  // bytes before `start` are consumed

    private init(fd: Int32) { self.fd = fd }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    // MARK: - Connecting

    static func connect(_ endpoint: BatonClient.Endpoint, deadline: ContinuousClock.Instant) throws -> Socket {
        switch endpoint {
        case .unix(let path):
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            let capacity = MemoryLayout.size(ofValue: address.sun_path)
            guard !bytes.isEmpty, bytes.count < capacity else {
                throw Failure.local("socket path is empty or longer than \(capacity - 1) bytes: \(path)")
            }
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                raw.copyBytes(from: bytes)
                raw[bytes.count] = 0
            }
            let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)! + bytes.count + 1)
            let socket = try Socket(family: AF_UNIX)
            try withUnsafePointer(to: &address) { pointer in
                try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    try socket.finishConnect(sa, length, deadline: deadline, endpoint: endpoint)
                }
            }
            return socket

        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_family = AF_UNSPEC
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_NUMERICSERV
            var list: UnsafeMutablePointer<addrinfo>?
            let status = getaddrinfo(host, String(port), &hints, &list)
            guard status == 0, let first = list else {
                throw Failure.io("resolve \(host)", status == EAI_SYSTEM ? errno : EHOSTUNREACH)
            }
            defer { freeaddrinfo(list) }
            var lastError: any Error = Failure.local("no address for \(host)")
            var cursor: UnsafeMutablePointer<addrinfo>? = first
            while let info = cursor {
                cursor = info.pointee.ai_next
                guard let sa = info.pointee.ai_addr else { continue }
                do {
                    let socket = try Socket(family: info.pointee.ai_family)
                    try socket.finishConnect(sa, info.pointee.ai_addrlen, deadline: deadline, endpoint: endpoint)
                    var one: Int32 = 1
                    setsockopt(socket.fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                    return socket
                } catch {
                    lastError = error
                }
            }
            throw lastError
        }
    }

    private convenience init(family: Int32) throws {
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let fd = socket(family, type, 0)
        guard fd >= 0 else { throw Failure.io("socket", errno) }
        self.init(fd: fd)
    }

    private func finishConnect(_ address: UnsafePointer<sockaddr>, _ length: socklen_t, deadline: ContinuousClock.Instant,
                               endpoint: BatonClient.Endpoint) throws {
        if Glibc.connect(fd, address, length) == 0 { return }
        let code = errno
        // EINTR: the connection goes on in the background, like EINPROGRESS.
        guard code == EINPROGRESS || code == EINTR else { throw Failure.connect(endpoint, code) }
        try wait(for: Int16(POLLOUT), deadline: deadline, what: "connecting to \(endpoint)")
        var soError: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &size) == 0 else { throw Failure.connect(endpoint, errno) }
        if soError != 0 { throw Failure.connect(endpoint, soError) }
    }

    // MARK: - Waiting

    private func wait(for events: Int16, deadline: ContinuousClock.Instant, what: String) throws {
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw Failure.timedOut(what) }
            let (seconds, attoseconds) = left.components
            let ms = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
            var pfd = pollfd(fd: fd, events: events, revents: 0)
            let n = poll(&pfd, 1, ms)
            if n > 0 { return }  // ready, or an error or hang-up the next call reports
            if n < 0 && errno != EINTR { throw Failure.io("poll", errno) }
        }
    }

    /// Whether the peer sent something (or closed) that has not been read: during an
    /// upload, an answer that came before the whole body.
    func hasAnswerWaiting() -> Bool {
        if start < buffer.count { return true }
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&pfd, 1, 0) > 0 && pfd.revents & Int16(POLLIN | POLLHUP) != 0
    }

    // MARK: - Writing

    func write(_ bytes: ArraySlice<UInt8>, deadline: ContinuousClock.Instant) throws {
        try bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                // MSG_NOSIGNAL: a peer that went away is an error here, not SIGPIPE.
                let n = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n > 0 {
                    offset += n
                    continue
                }
                let code = errno
                if n < 0 && (code == EAGAIN || code == EWOULDBLOCK) {
                    try wait(for: Int16(POLLOUT), deadline: deadline, what: "sending the request")
                } else if n < 0 && code == EINTR {
                    continue
                } else {
                    throw Failure.io("send", code)
                }
            }
        }
    }

    // MARK: - Reading

    /// Reads more into the buffer; false at end of stream.
    private func fill(deadline: ContinuousClock.Instant) throws -> Bool {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        }
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                buffer += chunk[0..<n]
                return true
            }
            if n == 0 { return false }
            let code = errno
            if code == EAGAIN || code == EWOULDBLOCK {
                try wait(for: Int16(POLLIN), deadline: deadline, what: "waiting for batond's answer")
            } else if code != EINTR {
                throw Failure.io("receive", code)
            }
        }
    }

    /// One line ending in CRLF (or LF), without its ending.
    func line(limit: Int, deadline: ContinuousClock.Instant) throws -> String {
        var scanned = 0  // bytes after `start` known to hold no LF (`fill` may move `start`)
        while true {
            if let lf = buffer[(start + scanned)...].firstIndex(of: 10) {
                var end = lf
                if end > start && buffer[end - 1] == 13 { end -= 1 }
                let text = String(decoding: buffer[start..<end], as: UTF8.self)
                start = lf + 1
                return text
            }
            scanned = buffer.count - start
            guard scanned <= limit else { throw Failure.malformed("line over \(limit) bytes") }
            guard try fill(deadline: deadline) else { throw Failure.closed }
        }
    }

    /// Between 1 and `max` bytes: what is buffered, else what arrives next.
    func some(max: Int, deadline: ContinuousClock.Instant) throws -> [UInt8] {
        guard let bytes = try someOrEnd(max: max, deadline: deadline) else { throw Failure.closed }
        return bytes
    }

    /// Like `some`, but nil at the end of the stream.
    func someOrEnd(max: Int, deadline: ContinuousClock.Instant) throws -> [UInt8]? {
        if start == buffer.count {
            guard try fill(deadline: deadline) else { return nil }
        }
        let end = Swift.min(buffer.count, start + max)
        let out = Array(buffer[start..<end])
        start = end
        return out
    }
}
