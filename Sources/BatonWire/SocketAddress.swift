import Glibc

/// Where a listening socket is: spelled `tcp://127.0.0.1:8080`, `tcp://[::1]:8080` or
/// `unix:/run/web.sock`, as an agent's `listen` entries are, as the API shows them, and
/// as the agent library hands them to agents.
public enum SocketAddress: Sendable, Hashable, CustomStringConvertible {
    /// `host` is numeric (`127.0.0.1`, `::1`, `0.0.0.0`); port 0 lets the kernel pick one.
    case tcp(host: String, port: Int)
    /// A socket file's path, or `@name` for an abstract socket (as ss(8) spells it).
    case unix(path: String)

    /// Parses `tcp://HOST:PORT` (HOST a numeric IPv4 address or a bracketed IPv6 one) or
    /// `unix:/absolute/path`.
    public init?(_ text: String) {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst("unix:".count))
            guard path.hasPrefix("/"), !path.utf8.contains(0) else { return nil }
            self = .unix(path: path)
            return
        }
        guard text.hasPrefix("tcp://") else { return nil }
        let rest = text.dropFirst("tcp://".count)
        guard let colon = rest.lastIndex(of: ":") else { return nil }
        var host = rest[..<colon]
        let bracketed = host.hasPrefix("[") && host.hasSuffix("]")
        if bracketed { host = host.dropFirst().dropLast() }
        let digits = rest[rest.index(after: colon)...]
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), let port = Int(digits), (0...65535).contains(port),
              host.contains(":") == bracketed, Self.isNumeric(String(host))
        else { return nil }
        self = .tcp(host: String(host), port: port)
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "tcp://[\(host)]:\(port)" : "tcp://\(host):\(port)"
        case .unix(let path): "unix:\(path)"
        }
    }

    static func isNumeric(_ host: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    /// The address as bind(2) and connect(2) take it: its family's sockaddr, in storage
    /// large enough for any, and its length. Nil for a TCP host that is not a numeric
    /// address, or a Unix path that does not fit in sun_path with its NUL.
    public var sockaddrStorage: (storage: sockaddr_storage, length: socklen_t)? {
        var storage = sockaddr_storage()
        switch self {
        case .tcp(let host, let port):
            var v4 = sockaddr_in(), v6 = sockaddr_in6()
            if inet_pton(AF_INET, host, &v4.sin_addr) == 1 {
                v4.sin_family = sa_family_t(AF_INET)
                v4.sin_port = in_port_t(UInt16(port).bigEndian)
                withUnsafeMutableBytes(of: &storage) { raw in withUnsafeBytes(of: v4) { raw.copyMemory(from: $0) } }
                return (storage, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
            guard inet_pton(AF_INET6, host, &v6.sin6_addr) == 1 else { return nil }
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = in_port_t(UInt16(port).bigEndian)
            withUnsafeMutableBytes(of: &storage) { raw in withUnsafeBytes(of: v6) { raw.copyMemory(from: $0) } }
            return (storage, socklen_t(MemoryLayout<sockaddr_in6>.size))
        case .unix(let path):
            var unix = sockaddr_un()
            unix.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: unix.sun_path) else { return nil }
            withUnsafeMutableBytes(of: &unix.sun_path) { raw in
                raw.copyBytes(from: bytes)
                raw[bytes.count] = 0
            }
            withUnsafeMutableBytes(of: &storage) { raw in withUnsafeBytes(of: unix) { raw.copyMemory(from: $0) } }
            return (storage, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }

    /// What the socket `fd` is bound to (getsockname(2)), or nil when it is not a TCP or
    /// Unix socket.
    public static func bound(to fd: Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard ok == 0 else { return nil }
        return withUnsafeBytes(of: storage) { raw -> SocketAddress? in
            switch Int32(storage.ss_family) {
            case AF_INET:
                var address = raw.load(as: sockaddr_in.self)
                return .tcp(host: numericHost(AF_INET, &address.sin_addr), port: Int(UInt16(bigEndian: address.sin_port)))
            case AF_INET6:
                var address = raw.load(as: sockaddr_in6.self)
                return .tcp(host: numericHost(AF_INET6, &address.sin6_addr), port: Int(UInt16(bigEndian: address.sin6_port)))
            case AF_UNIX:
                let offset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!
                let path = raw[offset..<min(Int(length), raw.count)]
                if path.first == 0 { return .unix(path: "@" + String(decoding: path.dropFirst(), as: UTF8.self)) }
                return .unix(path: String(decoding: path.prefix { $0 != 0 }, as: UTF8.self))
            default:
                return nil
            }
        }
    }

    private static func numericHost(_ family: Int32, _ address: UnsafeRawPointer) -> String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(family, address, &text, socklen_t(text.count)) != nil else { return "?" }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
