extension BatonClient {
    /// Where batond listens: its Unix control socket (the agent socket, for instances), or
    /// a loopback TCP listener.
    public enum Endpoint: Sendable, Hashable, CustomStringConvertible {
        case unix(path: String)
        case tcp(host: String, port: Int)

        /// Parses `http://HOST:PORT` (a trailing `/` allowed; no other path; `[::1]:7070`
        /// for IPv6; port 80 when none is given).
        public init?(url: String) {
            var rest = Substring(url)
            guard rest.lowercased().hasPrefix("http://") else { return nil }
            rest = rest.dropFirst("http://".count)
            if rest.hasSuffix("/") { rest = rest.dropLast() }
            guard !rest.isEmpty, !rest.contains("/"), !rest.contains("@") else { return nil }
            let host: Substring
            var portText: Substring?
            if rest.hasPrefix("[") {
                guard let close = rest.firstIndex(of: "]") else { return nil }
                host = rest[rest.index(after: rest.startIndex)..<close]
                let after = rest[rest.index(after: close)...]
                if !after.isEmpty {
                    guard after.hasPrefix(":") else { return nil }
                    portText = after.dropFirst()
                }
            } else if let colon = rest.lastIndex(of: ":") {
                host = rest[..<colon]
                portText = rest[rest.index(after: colon)...]
            } else {
                host = rest
            }
            var port = 80
            if let portText {
                guard let value = Int(portText), (1...65535).contains(value) else { return nil }
                port = value
            }
            guard !host.isEmpty else { return nil }
            self = .tcp(host: String(host), port: port)
        }

        /// `unix:/run/baton/batond.sock` or `http://127.0.0.1:7070`.
        public var description: String {
            switch self {
            case .unix(let path): "unix:\(path)"
            case .tcp(let host, let port): "http://\(authority(host, port))"
            }
        }

        /// The `Host` header: batond ignores it on the socket.
        var hostHeader: String {
            switch self {
            case .unix: "localhost"
            case .tcp(let host, let port): authority(host, port)
            }
        }

        /// `http://HOST:PORT` for a TCP endpoint (links a person opens, such as `baton ui`'s).
        public var baseURL: String? {
            if case .tcp = self { return description }
            return nil
        }

        private func authority(_ host: String, _ port: Int) -> String {
            host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        }
    }
}
