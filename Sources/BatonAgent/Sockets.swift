import BatonWire
import Glibc

/// The socket calls behind ``BatonAgent/Listener`` and ``BatonAgent/Acceptor``: binding a
/// listener (what one is bound to: ``SocketAddress/bound(to:)``).
enum SocketCalls {
    /// A new close-on-exec listening socket on `address`, in blocking mode.
    static func bindAndListen(_ address: SocketAddress, backlog: Int32) throws -> Int32 {
        guard case (var storage, let length)? = address.sockaddrStorage else {
            throw BatonAgentError.socket("\(address): not a numeric IPv4 or IPv6 address, or a path too long for a socket")
        }
        if case .unix(let path) = address {
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
