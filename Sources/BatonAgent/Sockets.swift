import BatonWire
import Glibc

/// The socket calls behind ``BatonAgent/Listener`` and ``BatonAgent/Acceptor``: binding a
/// listener (what one is bound to: ``SocketAddress/bound(to:)``).
enum SocketCalls {
    /// A new close-on-exec listening socket on `address`, in blocking mode.
    static func bindAndListen(_ address: SocketAddress, backlog: Int32) throws -> Int32 {
        var storage = sockaddr_storage()
        let length: socklen_t
        switch address {
        case .tcp(let host, let port):
            var v4 = sockaddr_in()
            var v6 = sockaddr_in6()
            if inet_pton(AF_INET, host, &v4.sin_addr) == 1 {
                v4.sin_family = sa_family_t(AF_INET)
                v4.sin_port = in_port_t(UInt16(port).bigEndian)
                withUnsafeMutableBytes(of: &storage) { raw in withUnsafeBytes(of: v4) { raw.copyMemory(from: $0) } }
                length = socklen_t(MemoryLayout<sockaddr_in>.size)
            } else if inet_pton(AF_INET6, host, &v6.sin6_addr) == 1 {
                v6.sin6_family = sa_family_t(AF_INET6)
                v6.sin6_port = in_port_t(UInt16(port).bigEndian)
                withUnsafeMutableBytes(of: &storage) { raw in withUnsafeBytes(of: v6) { raw.copyMemory(from: $0) } }
                length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            } else {
                throw BatonAgentError.socket("\(address): not a numeric IPv4 or IPv6 address")
            }
        case .unix(let path):
            var unix = sockaddr_un()
            unix.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: unix.sun_path) else {
                throw BatonAgentError.socket("\(address): the path is too long for a socket")
            }
            withUnsafeMutableBytes(of: &unix.sun_path) { raw in
                raw.copyBytes(from: bytes)
                raw[bytes.count] = 0
            }
            withUnsafeMutableBytes(of: &storage) { raw in withUnsafeBytes(of: unix) { raw.copyMemory(from: $0) } }
            length = socklen_t(MemoryLayout<sockaddr_un>.size)
            // A socket file left by an earlier run refuses every connection: replace it.
            var info = stat()
            if lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFSOCK { unlink(path) }
        }
        let fd = socket(Int32(storage.ss_family), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw failure("socket for \(address)") }
        if case .tcp = address {
            var on: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        }
        let bound = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, length) }
        }
        guard bound == 0, listen(fd, backlog) == 0 else {
            let error = failure("bind \(address)")
            close(fd)
            throw error
        }
        return fd
    }

    /// `what: <strerror(errno)>`.
    static func failure(_ what: String) -> BatonAgentError {
        .socket("\(what): \(String(cString: strerror(errno)))")
    }
}

/// CLOCK_MONOTONIC in nanoseconds: system-wide on Linux, so times taken by several
/// processes sort into one time line.
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}
