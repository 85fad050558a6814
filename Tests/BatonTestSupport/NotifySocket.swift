import Foundation
import Glibc

/// A datagram socket standing in for systemd's NOTIFY_SOCKET: the test reads what the
/// daemon sends (READY=1, STATUS=…, STOPPING=1, WATCHDOG=1) and waits on it, not on sleeps.
public final class NotifySocket {
    public let path: String
    let fd: Int32

    public init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = unixSocketAddress(path)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else { throw TestFailure("bind \(path): \(String(cString: strerror(errno)))") }
    }

    deinit {
        stored.forEach { close($0.fd) }
        close(fd)
        unlink(path)
    }

    /// Descriptors batond put in the "file descriptor store" (`FDSTORE=1` with
    /// SCM_RIGHTS), as systemd would keep them, with their `FDNAME`. The test owns them.
    public private(set) var stored: [(name: String, fd: Int32)] = []
    /// Every datagram received so far, in order.
    public private(set) var messages: [String] = []

    /// The next datagram, or nil after `timeout` seconds. Descriptors that come with an
    /// `FDSTORE=1` message are kept in `stored`.
    public func receive(timeout: Double) -> String? {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(timeout * 1000)) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        var control = [UInt8](repeating: 0, count: 256)
        let count = buffer.withUnsafeMutableBytes { bytes in
            control.withUnsafeMutableBytes { controlBytes in
                var vector = iovec(iov_base: bytes.baseAddress, iov_len: bytes.count)
                return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                    var header = msghdr()
                    header.msg_iov = vectorPointer
                    header.msg_iovlen = 1
                    header.msg_control = controlBytes.baseAddress
                    header.msg_controllen = controlBytes.count
                    return recvmsg(fd, &header, Int32(MSG_CMSG_CLOEXEC))
                }
            }
        }
        guard count > 0 else { return nil }
        let message = String(decoding: buffer[..<count], as: UTF8.self)
        messages.append(message)
        let descriptors = Self.rights(in: control)
        let lines = message.split(separator: "\n")
        if lines.contains("FDSTORE=1"), let name = lines.first(where: { $0.hasPrefix("FDNAME=") })?.dropFirst(7) {
            stored += descriptors.map { (String(name), $0) }
        } else {
            descriptors.forEach { close($0) }
        }
        return message
    }

    /// The descriptors of an SCM_RIGHTS control message (one cmsghdr at the start).
    private static func rights(in control: [UInt8]) -> [Int32] {
        control.withUnsafeBytes { raw -> [Int32] in
            let header = raw.loadUnaligned(as: cmsghdr.self)
            guard header.cmsg_level == SOL_SOCKET, header.cmsg_type == Int32(SCM_RIGHTS) else { return [] }
            let offset = (MemoryLayout<cmsghdr>.size + 7) & ~7
            let count = (Int(header.cmsg_len) - offset) / MemoryLayout<Int32>.size
            return (0..<max(0, count)).map { raw.loadUnaligned(fromByteOffset: offset + $0 * 4, as: Int32.self) }
        }
    }

    /// The stored descriptors once at least one arrived (reading datagrams meanwhile).
    public func storedDescriptors(timeout: Double) throws -> [(name: String, fd: Int32)] {
        let deadline = Date().addingTimeInterval(timeout)
        while stored.isEmpty, Date() < deadline {
            _ = receive(timeout: max(0.01, deadline.timeIntervalSinceNow))
        }
        guard !stored.isEmpty else { throw TestFailure("nothing was put in the descriptor store within \(timeout)s") }
        return stored
    }

    /// Reads datagrams until one contains `line` (e.g. "READY=1"); returns all seen.
    public func wait(for line: String, timeout: Double) throws -> [String] {
        let deadline = Date().addingTimeInterval(timeout)
        var seen: [String] = []
        while Date() < deadline {
            guard let message = receive(timeout: deadline.timeIntervalSinceNow) else { break }
            seen.append(message)
            if message.split(separator: "\n").contains(Substring(line)) { return seen }
        }
        throw TestFailure("no \(line) within \(timeout)s; saw \(seen)")
    }
}
