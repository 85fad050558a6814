import Foundation
import Glibc

/// A stand-in for batond on a Unix socket: answers the n-th request (from 1) as the
/// script says (the script may block: the client then waits for its answer), one
/// request per connection, and keeps each request's head and body and when it came.
public final class ScriptedBatond: Sendable {
    public enum Reply: Sendable {
        /// Close the connection without a word (batond dying mid-request).
        case cut
        case answer(Int, String)
    }

    public struct Received: Sendable {
        /// The head and the body, as text.
        public let text: String
        /// `CLOCK_MONOTONIC` when it was read, in nanoseconds.
        public let nanoseconds: UInt64
    }

    public let path: String
    private let listener: Int32
    private let received = Locked<[Received]>([])
    private let arrived = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    private let closed = Locked(false)

    public init(path: String, script: @escaping @Sendable (_ count: Int, _ request: String) -> Reply) throws {
        self.path = path
        listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard listener >= 0, bound == 0, listen(listener, 16) == 0 else {
            throw TestFailure("cannot listen on \(path): \(String(cString: strerror(errno)))")
        }
        Thread { [self] in
            var count = 0
            while true {
                let connection = accept(listener, nil, nil)
                guard connection >= 0 else { break }  // closed
                count += 1
                let request = Self.readRequest(connection)
                received.update { $0 += [Received(text: request, nanoseconds: monotonicNanoseconds())] }
                arrived.signal()
                if case .answer(let status, let body) = script(count, request) {
                    let text = "HTTP/1.1 \(status) X\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
                    _ = Array(text.utf8).withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                }
                Glibc.close(connection)
            }
            done.signal()
        }.start()
    }

    public var requests: [String] { received.get().map(\.text) }
    public var arrivals: [Received] { received.get() }

    public func waitForRequests(_ count: Int, timeout: Double = 10) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while requests.count < count {
            guard arrived.wait(timeout: .now() + deadline.timeIntervalSinceNow) == .success else {
                throw TestFailure("\(requests.count) of \(count) requests arrived")
            }
        }
    }

    /// Stops listening and removes the socket: batond is gone.
    public func close() {
        guard !closed.get() else { return }
        closed.set(true)
        shutdown(listener, Int32(SHUT_RDWR))
        done.wait()
        Glibc.close(listener)
        unlink(path)
    }

    /// The head and the body (by its Content-Length), as text.
    private static func readRequest(_ fd: Int32) -> String {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        func complete() -> Bool {
            let text = String(decoding: bytes, as: UTF8.self)
            guard let end = text.range(of: "\r\n\r\n") else { return false }
            let length = text[..<end.lowerBound].split(separator: "\r\n")
                .first { $0.lowercased().hasPrefix("content-length:") }
                .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
            return text.utf8.count - text.utf8.distance(from: text.startIndex, to: end.upperBound) >= length
        }
        while !complete() {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { break }
            bytes += buffer[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
