import BatonWire
import Foundation
import Glibc

public struct ListenerError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public let errno: Int32

    public init(message: String, errno: Int32 = 0) {
        self.message = message
        self.errno = errno
    }

    public var description: String {
        errno == 0 ? message : "\(message): \(String(cString: strerror(errno)))"
    }
}

/// A listening socket: a Unix socket, a loopback TCP port, or one handed over by systemd.
public struct Listener: Sendable, CustomStringConvertible {
    public typealias Address = SocketAddress

    public let fd: Int32
    public let address: Address
    /// Whether this process created the socket file (and so removes it on close).
    let ownsPath: Bool
    /// Identity of the socket file we created, so close never unlinks a successor's socket.
    let fileIdentity: (dev: UInt, ino: UInt)?

    public var isUnix: Bool {
        if case .unix = address { return true }
        return false
    }

    public var description: String {
        switch address {
        case .unix(let path): return "unix:\(path)"
        case .tcp(let host, let port): return "\(host):\(port)"
        }
    }

    /// The base URL of a TCP listener, e.g. `http://127.0.0.1:7070`.
    public var url: String? {
        guard case .tcp(let host, let port) = address else { return nil }
        return host.contains(":") ? "http://[\(host)]:\(port)" : "http://\(host):\(port)"
    }

    public func close() {
        _ = Glibc.close(fd)
        guard ownsPath, case .unix(let path) = address, let identity = fileIdentity else { return }
        var info = stat()
        if lstat(path, &info) == 0, UInt(info.st_dev) == identity.dev, UInt(info.st_ino) == identity.ino {
            unlink(path)
        }
    }

    // MARK: - Unix socket

    /// Binds a Unix socket at `path` with `mode` (and `group`, when given). A stale socket
    /// file (nobody accepts on it) is replaced atomically; a live one is never touched,
    /// nor is any file that is not a socket.
    public static func unix(path: String, mode: mode_t = 0o660, owner: uid_t? = nil, group: gid_t? = nil,
                            backlog: Int32 = 512) throws(ListenerError) -> Listener {
        // Bind under a temporary name and rename over the path: there is never a moment
        // with no socket file, nor one with a file of the wrong mode. The temporary name
        // is the longer one, and must fit too (sockaddr_un would cut it short).
        let temporary = "\(path).\(getpid()).tmp"
        guard temporary.utf8.count < MemoryLayout.size(ofValue: sockaddr_un().sun_path) else {
            throw ListenerError(message: "socket path is too long (\(path.utf8.count) bytes, and \(temporary.utf8.count) while bound under a temporary name): \(path)")
        }
        var existing = stat()
        if lstat(path, &existing) == 0 {
            guard (existing.st_mode & S_IFMT) == S_IFSOCK else {
                throw ListenerError(message: "\(path) exists and is not a socket; refusing to replace it")
            }
            if isAccepting(path) {
                throw ListenerError(message: "another process is serving on \(path)")
            }
        }
        unlink(temporary)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ListenerError(message: "socket(AF_UNIX)", errno: errno) }
        do throws(ListenerError) {
            var address = unixAddress(temporary)
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard bound == 0 else { throw ListenerError(message: "bind \(temporary)", errno: errno) }
            guard chmod(temporary, mode) == 0 else { throw ListenerError(message: "chmod \(temporary)", errno: errno) }
            if owner != nil || group != nil, chown(temporary, owner ?? uid_t.max, group ?? gid_t.max) != 0 {
                throw ListenerError(message: "chown \(temporary) to \(owner.map { "user \($0)" } ?? "") \(group.map { "group \($0)" } ?? "")",
                                    errno: errno)
            }
            guard listen(fd, backlog) == 0 else { throw ListenerError(message: "listen \(temporary)", errno: errno) }
            guard rename(temporary, path) == 0 else { throw ListenerError(message: "rename \(temporary) to \(path)", errno: errno) }
        } catch {
            unlink(temporary)
            _ = Glibc.close(fd)
            throw error
        }
        var info = stat()
        let identity: (UInt, UInt)? = lstat(path, &info) == 0 ? (UInt(info.st_dev), UInt(info.st_ino)) : nil
        return Listener(fd: fd, address: .unix(path: path), ownsPath: true, fileIdentity: identity)
    }

    /// Whether some process accepts connections on the socket file at `path`.
    public static func isAccepting(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { _ = Glibc.close(fd) }
        var address = unixAddress(path)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return result == 0
    }

    private static func unixAddress(_ path: String) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    // MARK: - TCP

    /// Binds `host:port` (IPv4 or IPv6 literal; port 0 picks a free port, read back here).
    public static func tcp(host: String, port: Int, backlog: Int32 = 512) throws(ListenerError) -> Listener {
        guard case (var storage, let length)? = SocketAddress.tcp(host: host, port: port).sockaddrStorage else {
            throw ListenerError(message: host.contains(":") ? "not an IPv6 address: \(host)" : "not an IPv4 address: \(host)")
        }
        let fd = socket(Int32(storage.ss_family), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ListenerError(message: "socket", errno: errno) }
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else {
            let error = errno
            _ = Glibc.close(fd)
            throw ListenerError(message: "bind \(host):\(port)", errno: error)
        }
        guard listen(fd, backlog) == 0 else {
            let error = errno
            _ = Glibc.close(fd)
            throw ListenerError(message: "listen \(host):\(port)", errno: error)
        }
        return Listener(fd: fd, address: .tcp(host: host, port: boundPort(fd) ?? port), ownsPath: false, fileIdentity: nil)
    }

    private static func boundPort(_ fd: Int32) -> Int? {
        guard case .tcp(_, let port)? = SocketAddress.bound(to: fd) else { return nil }
        return port
    }

    // MARK: - Handed over across an exec

    /// The variable through which batond's previous image names the listening sockets
    /// it left open across its re-exec: `ROLE=FD[:owned],...`, e.g.
    /// `control=5:owned,tcp=6,agent=7:owned` (`owned`: this process created the socket
    /// file, so it removes it on a clean stop).
    public static let handedOverVariable = "BATON_LISTEN_FDS"

    /// Describes `listeners` for `handedOverVariable`.
    public static func handOverDescription(_ listeners: [(role: String, listener: Listener)]) -> String {
        listeners.map { "\($0.role)=\($0.listener.fd)\($0.listener.ownsPath ? ":owned" : "")" }.joined(separator: ",")
    }

    /// Keeps the socket open across an exec (`true`) or closes it there (`false`).
    public func setInheritable(_ inheritable: Bool) -> Bool {
        let flags = fcntl(fd, F_GETFD)
        guard flags >= 0 else { return false }
        return fcntl(fd, F_SETFD, inheritable ? flags & ~FD_CLOEXEC : flags | FD_CLOEXEC) == 0
    }

    /// The listening sockets the previous image handed over, by role; empty when batond
    /// was not re-executed. Each is made close-on-exec again, and the variable removed.
    /// A socket file is never unlinked or bound again: clients keep connecting to the
    /// same socket, queued in its backlog while no image accepts.
    public static func handedOver() -> [String: Listener] {
        defer { unsetenv(handedOverVariable) }
        guard let text = getenv(handedOverVariable).map({ String(cString: $0) }) else { return [:] }
        var found: [String: Listener] = [:]
        for entry in text.split(separator: ",") {
            let parts = entry.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let fields = parts[1].split(separator: ":")
            guard let fd = fields.first.flatMap({ Int32($0) }), fd >= 0 else { continue }
            let owned = fields.dropFirst().contains("owned")
            guard let address = address(of: fd) else { continue }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            var identity: (UInt, UInt)?
            if owned, case .unix(let path) = address {
                var info = stat()
                if lstat(path, &info) == 0 { identity = (UInt(info.st_dev), UInt(info.st_ino)) }
            }
            found[String(parts[0])] = Listener(fd: fd, address: address, ownsPath: owned && identity != nil, fileIdentity: identity)
        }
        return found
    }

    // MARK: - systemd socket activation

    /// The descriptors systemd passed (`LISTEN_FDS` for this pid), fds 3 and up, each
    /// with its name from `LISTEN_FDNAMES` (nil when unnamed): a socket unit's sockets,
    /// and what batond put in systemd's file descriptor store before a restart. Empty when
    /// none. Each is made close-on-exec, and the variables are removed so children do not
    /// inherit them.
    public static func activatedDescriptors() -> [(fd: Int32, name: String?)] {
        defer {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        guard let pidText = getenv("LISTEN_PID").map({ String(cString: $0) }), Int32(pidText) == getpid(),
              let countText = getenv("LISTEN_FDS").map({ String(cString: $0) }), let count = Int32(countText), count > 0
        else { return [] }
        let names = getenv("LISTEN_FDNAMES").map { String(cString: $0).split(separator: ":", omittingEmptySubsequences: false).map(String.init) } ?? []
        return (0..<count).map { index in
            let fd = 3 + index
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            return (fd, Int(index) < names.count ? names[Int(index)] : nil)
        }
    }

    /// A socket activation passed: a listening socket on `fd`, or nil for another kind.
    public static func activated(fd: Int32) -> Listener? {
        address(of: fd).map { Listener(fd: fd, address: $0, ownsPath: false, fileIdentity: nil) }
    }

    /// What a socket is bound to (getsockname), or nil for other kinds.
    public static func address(of fd: Int32) -> Address? { SocketAddress.bound(to: fd) }
}
