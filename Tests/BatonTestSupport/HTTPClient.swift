import BatonClient
import Foundation
import Glibc

/// The tests' side of HTTP. Well-formed requests (`Endpoint.request`, `get`, `json`) go
/// through BatonClient, the one client of batond's API; `RawConnection` is a raw sender
/// for what a client never sends: exactly the bytes asked for (a head without its body,
/// framing set by hand, half-open connections), with one response parsed back.
public struct HTTPResponse: Sendable {
    public let status: Int
    public let headers: [String: String]
    public let body: [UInt8]

    public var text: String { String(decoding: body, as: UTF8.self) }

    public func json() throws -> [String: Any] {
        guard let object = try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else {
            throw TestFailure("body is not a JSON object: \(text)")
        }
        return object
    }

    /// The `error.code` of the one error shape, if the body has it.
    public var errorCode: String? {
        ((try? json())?["error"] as? [String: Any])?["code"] as? String
    }

    public func header(_ name: String) -> String? { headers[name.lowercased()] }
}

public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public enum Endpoint: Sendable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    /// Parses `HOST:PORT` as batond writes it to batond.addr.
    public init?(address: String) {
        let trimmed = address.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let colon = trimmed.lastIndex(of: ":"), let port = Int(trimmed[trimmed.index(after: colon)...]) else { return nil }
        self = .tcp(host: String(trimmed[..<colon]), port: port)
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): "\(host):\(port)"
        case .unix(let path): "unix:\(path)"
        }
    }
}

/// One raw connection. Requests on it are sent one after another (keep-alive).
public final class RawConnection {
    private(set) var fd: Int32
    private var buffer: [UInt8] = []

    public init(_ endpoint: Endpoint, timeout: Double = 30) throws {
        switch endpoint {
        case .tcp(let host, let port):
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET, host, &address.sin_addr)
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard result == 0 else { close(fd); throw TestFailure("connect \(endpoint): \(String(cString: strerror(errno)))") }
        case .unix(let path):
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = unixSocketAddress(path)
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard result == 0 else { close(fd); throw TestFailure("connect \(endpoint): \(String(cString: strerror(errno)))") }
        }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Closes the connection now, as a client that gives up mid-request (or dies).
    public func closeNow() {
        close(fd)
        fd = -1
    }

    public func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { throw TestFailure("send: \(String(cString: strerror(errno)))") }
            offset += sent
        }
    }

    /// Sends a request. `extraHead` lets a test claim a body it never sends.
    public func request(_ method: String, _ path: String, headers: [String: String] = [:], body: [UInt8]? = nil,
                        sendBody: Bool = true) throws -> HTTPResponse {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\n"
        var headers = headers
        if let body, headers["Content-Length"] == nil { headers["Content-Length"] = "\(body.count)" }
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        try send(Array(head.utf8))
        if let body, sendBody { try send(body) }
        return try readResponse(method: method)
    }

    public func readResponse(method: String = "GET") throws -> HTTPResponse {
        let (status, headers) = try readHead()
        let length = method == "HEAD" ? 0 : Int(headers["content-length"] ?? "0") ?? 0
        while buffer.count < length { try fill() }
        let body = Array(buffer[..<length])
        buffer.removeFirst(length)
        return HTTPResponse(status: status, headers: headers, body: body)
    }

    /// Reads a response's head only (status, headers with lowercased names); its body
    /// is left to `readSome`.
    public func readHead() throws -> (status: Int, headers: [String: String]) {
        while true {
            if let end = find(Array("\r\n\r\n".utf8)) {
                let head = String(decoding: buffer[..<end], as: UTF8.self)
                var lines = head.components(separatedBy: "\r\n")
                let statusLine = lines.removeFirst().split(separator: " ")
                guard statusLine.count >= 2, let status = Int(statusLine[1]) else { throw TestFailure("bad status line: \(head)") }
                var headers: [String: String] = [:]
                for line in lines {
                    guard let colon = line.firstIndex(of: ":") else { continue }
                    headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                }
                buffer.removeFirst(end + 4)
                return (status, headers)
            }
            try fill()
        }
    }

    /// The bytes received and not read yet, waiting for some when there are none (up to
    /// the connection's timeout).
    public func readSome() throws -> [UInt8] {
        if buffer.isEmpty { try fill() }
        defer { buffer = [] }
        return buffer
    }

    /// Whether the server has closed the connection (reads EOF).
    public func isClosedByPeer() -> Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, 0) == 0
    }

    private func fill() throws {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let count = recv(fd, &chunk, chunk.count, 0)
        guard count > 0 else { throw TestFailure(count == 0 ? "connection closed" : "recv: \(String(cString: strerror(errno)))") }
        buffer += chunk[..<count]
    }

    private func find(_ needle: [UInt8]) -> Int? {
        guard buffer.count >= needle.count else { return nil }
        for index in 0...(buffer.count - needle.count) where buffer[index..<(index + needle.count)].elementsEqual(needle) {
            return index
        }
        return nil
    }
}

extension Endpoint {
    /// One well-formed request on a fresh connection, through BatonClient (the client the
    /// CLI and the agent library use). A request whose framing the test sets itself
    /// (`Content-Length`, `Transfer-Encoding`, `Host`) is deliberately unusual: the raw
    /// sender sends it as it is.
    public func request(_ method: String, _ path: String, token: String? = nil, headers: [String: String] = [:],
                        body: [UInt8]? = nil, timeout: Double = 30) throws -> HTTPResponse {
        var headers = headers
        if let token { headers["Authorization"] = "Bearer \(token)" }
        if headers.keys.contains(where: { ["content-length", "transfer-encoding", "host"].contains($0.lowercased()) }) {
            return try RawConnection(self, timeout: timeout).request(method, path, headers: headers, body: body)
        }
        let request = HTTPRequest(method, path, headers: headers.sorted { $0.key < $1.key }.map { ($0.key, $0.value) },
                                  body: body.map { .bytes($0) } ?? .none, timeout: .milliseconds(Int64(timeout * 1000)))
        do {
            let answer = try HTTPConnection(shared).send(request)
            return HTTPResponse(status: answer.status, headers: answer.headers, body: answer.body)
        } catch {
            throw TestFailure("\(method) \(path) on \(self): \(error)")
        }
    }

    /// The same place, as BatonClient names it.
    var shared: BatonClient.Endpoint {
        switch self {
        case .tcp(let host, let port): .tcp(host: host, port: port)
        case .unix(let path): .unix(path: path)
        }
    }

    /// A request with a JSON body.
    public func json(_ method: String, _ path: String, token: String? = nil, _ body: String) throws -> HTTPResponse {
        try request(method, path, token: token, headers: ["Content-Type": "application/json"], body: Array(body.utf8))
    }

    public func get(_ path: String, token: String? = nil, timeout: Double = 30) throws -> HTTPResponse {
        try request("GET", path, token: token, timeout: timeout)
    }
}

/// A `sockaddr_un` for `path`.
public func unixSocketAddress(_ path: String) -> sockaddr_un {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        let bytes = Array(path.utf8)
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return address
}

extension RawConnection {
    /// Whether the server closes the connection within `seconds` (end of file or reset).
    public func isClosedByPeer(waiting seconds: Double) -> Bool {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(seconds * 1000)) > 0 else { return false }
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, Int32(MSG_DONTWAIT)) <= 0
    }
}

/// A slowloris: `count` connections that each sent half a request head and then nothing.
/// Closed when released.
public final class SlowHeads {
    public let connections: [RawConnection]

    public init(_ endpoint: Endpoint, count: Int) throws {
        var connections: [RawConnection] = []
        for _ in 0..<count {
            let connection = try RawConnection(endpoint, timeout: 5)
            // The server may already have closed it (over a limit): that is its answer.
            try? connection.send(Array("GET /healthz HTTP/1.1\r\nHost: x\r\n".utf8))
            connections.append(connection)
        }
        self.connections = connections
    }

    /// How many of the connections the server closes within `seconds` (all of them waited
    /// on together).
    public func closedByPeer(within seconds: Double) -> Int {
        let deadline = Date().addingTimeInterval(seconds)
        var open = connections
        var closed = 0
        while !open.isEmpty, Date() < deadline {
            var still: [RawConnection] = []
            for connection in open {
                if connection.isClosedByPeer(waiting: 0) { closed += 1 } else { still.append(connection) }
            }
            open = still
            usleep(20_000)
        }
        return closed
    }
}
