import Foundation
import Glibc

/// A loopback HTTP/1.1 server for download tests, on raw sockets so that every
/// misbehaviour can be scripted per path: a body with or without a length, a status, a
/// redirect anywhere, silence after the headers, a close in the middle of the body, a
/// slow drip. It binds 127.0.0.1 on a port of the kernel's choosing, serves each
/// connection on a thread of its own (one request each, then `Connection: close`), and
/// records the requests it saw.
///
/// Call `close()` when done (`defer { server.close() }`): it releases every stalled answer
/// and waits for the threads. Routes may be changed at any time.
public final class StaticHTTPServer: Sendable {
    public enum Route: Sendable {
        /// The bytes, with a Content-Length.
        case bytes([UInt8])
        /// A file's bytes, with a Content-Length, read from disk as they are sent.
        case file(String)
        /// The bytes in chunks of `chunkSize` (Transfer-Encoding: chunked, no length).
        case chunked([UInt8], chunkSize: Int = 16 * 1024)
        /// This status, with this body.
        case status(Int, body: [UInt8] = Array("an error page\n".utf8))
        /// A redirect to `location`: a path on this server or any URL (`file:///etc/passwd`).
        case redirect(to: String, status: Int = 302)
        /// The headers (Content-Length `declaredLength`, or chunked when nil) and the bytes,
        /// then nothing at all until the server closes.
        case stall(after: [UInt8], declaredLength: Int?)
        /// Content-Length `declaredLength`, the bytes, then the connection closes.
        case close(after: [UInt8], declaredLength: Int)
        /// The bytes `piece` at a time, one piece every `every`, with a Content-Length.
        case drip([UInt8], piece: Int, every: Duration)
    }

    /// A request as received.
    public struct Request: Sendable {
        public let method: String
        public let path: String
        /// Header names in lower case.
        public let headers: [String: String]
    }

    public let port: Int
    private let core: Core

    public init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                bind(fd, address, length) == 0 && listen(fd, 128) == 0 && getsockname(fd, address, &length) == 0
            }
        }
        guard bound else {
            let error = errno
            Glibc.close(fd)
            throw TestFailure("bind 127.0.0.1:0: errno \(error)")
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        core = Core(listener: fd)
        core.start()
    }

    deinit { core.close() }

    /// `http://127.0.0.1:PORT/path`.
    public func url(_ path: String) -> String { "http://127.0.0.1:\(port)\(path)" }

    /// Serves `route` at `path` (the query is ignored); unknown paths answer 404.
    public func route(_ path: String, _ route: Route) {
        core.withLock { $0.routes[path] = route }
    }

    /// The requests received so far, oldest first.
    public var requests: [Request] { core.withLock { $0.requests } }

    /// Stops accepting, releases stalled answers, cuts open connections and waits for
    /// every thread. Idempotent.
    public func close() { core.close() }
}

// MARK: - The server's threads

/// Shared by the accept thread and the connection threads.
private final class Core: @unchecked Sendable {
    // @unchecked: `state` is only touched under `condition`'s lock; `listener` is immutable;
    // `threads` is a DispatchGroup (thread-safe). Stalled answers wait on `condition`,
    // which `close()` broadcasts.
    struct State {
        var routes: [String: StaticHTTPServer.Route] = [:]
        var requests: [StaticHTTPServer.Request] = []
        var connections: Set<Int32> = []
        var closed = false
    }

    let listener: Int32
    private let condition = NSCondition()
    private var state = State()
    private let threads = DispatchGroup()

    init(listener: Int32) { self.listener = listener }

    func withLock<T>(_ body: (inout State) -> T) -> T {
        condition.lock()
        defer { condition.unlock() }
        return body(&state)
    }

    func start() {
        threads.enter()
        Thread { [self] in
            defer { threads.leave() }
            while true {
                let fd = accept(listener, nil, nil)
                if fd < 0 {
                    if errno == EINTR { continue }
                    return
                }
                let admitted = withLock { state -> Bool in
                    guard !state.closed else { return false }
                    state.connections.insert(fd)
                    threads.enter()
                    return true
                }
                guard admitted else {
                    Glibc.close(fd)
                    return
                }
                Thread { [self] in
                    defer { threads.leave() }
                    serve(fd)
                    // Forgotten before it is closed, so `close()` never shuts down a reused number.
                    withLock { _ = $0.connections.remove(fd) }
                    Glibc.close(fd)
                }.start()
            }
        }.start()
    }

    func close() {
        let first = withLock { state -> Bool in
            guard !state.closed else { return false }
            state.closed = true
            // Wakes blocking sends and receives; the threads then close their sockets.
            for fd in state.connections { shutdown(fd, Int32(SHUT_RDWR)) }
            return true
        }
        guard first else { return }
        condition.broadcast()
        shutdown(listener, Int32(SHUT_RDWR))  // wakes accept()
        threads.wait()
        Glibc.close(listener)
    }

    /// Waits until the server closes or `deadline` passes; true when it closed.
    /// (No `.distantFuture`: corelibs Foundation traps converting it to a timespec.)
    private func waitForClose(until deadline: Date? = nil) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while !state.closed {
            if let deadline {
                if !condition.wait(until: deadline) { return state.closed }
            } else {
                condition.wait()
            }
        }
        return true
    }

    // MARK: One connection

    private func serve(_ fd: Int32) {
        guard let request = readRequest(fd) else { return }
        let route = withLock { state -> StaticHTTPServer.Route? in
            state.requests.append(request)
            return state.routes[String(request.path.prefix { $0 != "?" })]
        }
        guard let route else {
            _ = send(fd, head(404, ["Content-Length": "10"]) + Array("no route\r\n".utf8))
            return
        }
        switch route {
        case .bytes(let bytes):
            _ = send(fd, head(200, ["Content-Length": "\(bytes.count)"]) + bytes)
        case .file(let path):
            sendFile(fd, path)
        case .chunked(let bytes, let chunkSize):
            guard send(fd, head(200, ["Transfer-Encoding": "chunked"])) else { return }
            var offset = 0
            while offset < bytes.count {
                let end = min(bytes.count, offset + chunkSize)
                guard send(fd, chunk(bytes[offset..<end])) else { return }
                offset = end
            }
            _ = send(fd, Array("0\r\n\r\n".utf8))
        case .status(let status, let body):
            _ = send(fd, head(status, ["Content-Length": "\(body.count)"]) + body)
        case .redirect(let location, let status):
            let body = Array("see \(location)\n".utf8)
            _ = send(fd, head(status, ["Location": location, "Content-Length": "\(body.count)"]) + body)
        case .stall(let bytes, let declaredLength):
            let framing = declaredLength.map { ["Content-Length": "\($0)"] } ?? ["Transfer-Encoding": "chunked"]
            let body = declaredLength == nil && !bytes.isEmpty ? chunk(bytes[...]) : bytes
            guard send(fd, head(200, framing) + body) else { return }
            _ = waitForClose()
        case .close(let bytes, let declaredLength):
            _ = send(fd, head(200, ["Content-Length": "\(declaredLength)"]) + bytes)
        case .drip(let bytes, let piece, let interval):
            guard send(fd, head(200, ["Content-Length": "\(bytes.count)"])) else { return }
            var offset = 0
            while offset < bytes.count {
                let end = min(bytes.count, offset + piece)
                guard send(fd, Array(bytes[offset..<end])) else { return }
                offset = end
                let (seconds, attoseconds) = interval.components
                if waitForClose(until: Date().addingTimeInterval(Double(seconds) + Double(attoseconds) / 1e18)) { return }
            }
        }
    }

    private func readRequest(_ fd: Int32) -> StaticHTTPServer.Request? {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        let end = Array("\r\n\r\n".utf8)
        while received.count < 64 * 1024 {
            let count = recv(fd, &buffer, buffer.count, 0)
            guard count > 0 else { return nil }
            received += buffer[0..<count]
            guard let headEnd = received.firstRange(of: end) else { continue }
            let lines = String(decoding: received[..<headEnd.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
            let words = lines[0].split(separator: " ")
            guard words.count == 3 else { return nil }
            var headers: [String: String] = [:]
            for line in lines.dropFirst() {
                guard let colon = line.firstIndex(of: ":") else { continue }
                headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            return .init(method: String(words[0]), path: String(words[1]), headers: headers)
        }
        return nil
    }

    private func sendFile(_ fd: Int32, _ path: String) {
        let file = open(path, O_RDONLY | O_CLOEXEC)
        guard file >= 0 else {
            _ = send(fd, head(404, ["Content-Length": "0"]))
            return
        }
        defer { Glibc.close(file) }
        var info = stat()
        fstat(file, &info)
        guard send(fd, head(200, ["Content-Length": "\(info.st_size)"])) else { return }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = read(file, &buffer, buffer.count)
            guard count > 0, buffer.withUnsafeBytes({ send(fd, UnsafeRawBufferPointer(rebasing: $0[0..<count])) }) else { return }
        }
    }

    private func head(_ status: Int, _ headers: [String: String]) -> [UInt8] {
        var text = "HTTP/1.1 \(status) \([200: "OK", 302: "Found", 404: "Not Found"][status] ?? "Status")\r\n"
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) { text += "\(name): \(value)\r\n" }
        text += "Connection: close\r\n\r\n"
        return Array(text.utf8)
    }

    private func chunk(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
        Array("\(String(bytes.count, radix: 16))\r\n".utf8) + bytes + Array("\r\n".utf8)
    }

    /// All of `bytes`, or false when the peer is gone. MSG_NOSIGNAL: a peer that hung up
    /// must not raise SIGPIPE in the test process.
    private func send(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let sent = Glibc.send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if sent < 0, errno == EINTR { continue }
            guard sent > 0 else { return false }
            offset += sent
        }
        return true
    }

    private func send(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { send(fd, $0) }
    }
}
