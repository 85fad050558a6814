import BatonCore
import BatonHTTP
import Foundation
import Glibc

/// Who a request acts as, once admitted.
public enum Principal: Sendable, Equatable {
    case anonymous
    case `operator`(via: String)
    /// An agent's process, about itself only.
    case instance(String)
    /// The holder of an agent's registration token: may register processes of it.
    case registrar(String)

    /// Who did it, for the ledger's `by` fields.
    public var name: String {
        switch self {
        case .anonymous: "anonymous"
        case .operator(let via): "operator (\(via))"
        case .instance(let id): "instance \(id)"
        case .registrar(let agent): "registrar of \(agent)"
        }
    }
}

/// The auth scopes routes are tagged with: these five and no other (`admit` refuses a
/// route tagged otherwise).
extension RouteScope {
    /// Monitoring: /healthz, /readyz, /metrics. Open unless configured otherwise.
    public static let probe = RouteScope("probe")
    /// People, the CLI and automation.
    public static let `operator` = RouteScope("operator")
    /// An instance, about itself (the `{id}` of its path).
    public static let instance = RouteScope("instance")
    /// Registering a process batond did not start: the operator, or the agent's
    /// registration token from the config.
    public static let registration = RouteScope("registration")
    /// Pages for a person's browser (the status page and its login). Admitted for
    /// anyone, with the operator as principal only when the caller proves to be one: the
    /// handler answers everyone else a page saying how to log in, never the operator's data.
    public static let page = RouteScope("page")

    public static let all: Set<RouteScope> = [.probe, .operator, .instance, .registration, .page]
}

/// Who may call what. Operators: a bearer token (the state directory's
/// `operator.token`), or, on the Unix socket only, a peer whose uid is root, batond's
/// own, or in the operator group, or, on GET routes only, the status page's session
/// cookie (`UISessions`: never the token, and it cannot change anything). Instances:
/// the bearer token batond gave that instance, for routes about that instance only. A
/// Unix-socket peer that is one of batond's instances (or a descendant of one) is that
/// instance, never an operator, even when it runs as batond's user. Tokens are compared in constant time and never logged.
public struct OperatorAuth: Sendable {
    let token: [UInt8]
    let daemonUID: uid_t
    let operatorGID: gid_t?
    let probesOpen: Bool
    /// The instance a bearer token belongs to.
    let instanceForToken: @Sendable (String) -> String?
    /// The instance a process belongs to (itself or an ancestor).
    let instanceForProcess: @Sendable (Int32) -> String?
    /// Each agent's registration token, if it has one.
    let registrationTokens: [String: [UInt8]]
    /// Whether batond is still re-adopting the instances an earlier batond left: an
    /// unknown token may be one of theirs, so the answer is "retry", not "never".
    let adopting: @Sendable () -> Bool
    /// The status page's login codes and browser sessions.
    public let sessions: UISessions

    public init(token: String, operatorGID: gid_t?, probesOpen: Bool,
                instanceForToken: @escaping @Sendable (String) -> String? = { _ in nil },
                instanceForProcess: @escaping @Sendable (Int32) -> String? = { _ in nil },
                registrationTokens: [String: String] = [:], adopting: @escaping @Sendable () -> Bool = { false },
                sessions: UISessions = UISessions()) {
        self.token = Array(token.utf8)
        self.daemonUID = getuid()
        self.operatorGID = operatorGID
        self.probesOpen = probesOpen
        self.instanceForToken = instanceForToken
        self.instanceForProcess = instanceForProcess
        self.registrationTokens = registrationTokens.mapValues { Array($0.utf8) }
        self.adopting = adopting
        self.sessions = sessions
    }

    public func admit(_ request: inout Request) -> HTTPError? {
        // Fail closed: a route with no known scope is nobody's.
        guard RouteScope.all.contains(request.route.scope) else {
            return HTTPError(status: 500, code: "internal", message: "route \(request.route.template) has no known auth scope")
        }
        if request.route.scope == .probe && probesOpen {
            request.principal = Principal.anonymous
            return nil
        }
        if request.route.scope == .page {
            let presented = request.header("Authorization").flatMap(Self.bearer)
            if case .success(let principal) = identify(request, presented: presented), case .operator = principal {
                request.principal = principal
            } else {
                request.principal = Principal.anonymous
            }
            return nil
        }
        // The header is parsed once; every token below is compared with its bytes.
        var presented: [UInt8]?
        if let header = request.header("Authorization") {
            guard let token = Self.bearer(header) else {
                return Self.unauthorized("the Authorization header must be \"Bearer <token>\"")
            }
            presented = token
        }
        if request.route.scope == .registration, let presented,
           let agent = request.parameters["name"], let expected = registrationTokens[agent],
           Self.constantTimeEqual(presented, expected) {
            request.principal = Principal.registrar(agent)
            return nil
        }
        let principal: Principal
        switch identify(request, presented: presented) {
        case .success(let identified): principal = identified
        case .failure(let error): return error
        }
        switch (request.route.scope, principal) {
        case (.instance, .instance(let id)):
            guard id == request.parameters["id"] else {
                return Self.forbidden("instance \(id) may act only on itself")
            }
        case (.instance, _):
            return Self.forbidden("this route is for the instance itself, with its own token")
        case (_, .instance(let id)):
            return Self.forbidden("instance \(id) is not an operator")
        case (_, .operator), (_, .anonymous), (_, .registrar):
            break
        }
        request.principal = principal
        return nil
    }

    private func identify(_ request: Request, presented: [UInt8]?) -> Result<Principal, HTTPError> {
        if let presented {
            if Self.constantTimeEqual(presented, token) { return .success(.operator(via: "token")) }
            if let id = instanceForToken(String(decoding: presented, as: UTF8.self)) { return .success(.instance(id)) }
            if request.route.scope == .instance, adopting() {
                return .failure(HTTPError(status: 503, code: "starting",
                                          message: "batond is re-adopting its instances; retry in a moment",
                                          headers: ["Retry-After": "1"]))
            }
            return .failure(Self.unauthorized("the token is not valid"))
        }
        if case .unix(let credentials?) = request.peer {
            if let id = instanceForProcess(credentials.pid) { return .success(.instance(id)) }
            if isOperator(credentials) { return .success(.operator(via: "uid \(credentials.uid)")) }
        }
        // A browser's session reads, never writes: a cookie comes with every request the
        // browser sends, so it must not be what lets one change anything.
        if request.route.method == .GET, request.route.scope == .operator || request.route.scope == .page,
           let cookie = request.header("Cookie"), let session = UISessions.cookie(in: cookie),
           sessions.isValid(session: session) {
            return .success(.operator(via: "status page session"))
        }
        return .failure(Self.unauthorized("this route needs a bearer token, or an operator's Unix-socket peer"))
    }

    static func forbidden(_ message: String) -> HTTPError {
        HTTPError(status: 403, code: "forbidden", message: message)
    }

    func isOperator(_ peer: PeerCredentials) -> Bool {
        if peer.uid == 0 || peer.uid == daemonUID { return true }
        guard let operatorGID else { return false }
        return peer.gid == operatorGID || Self.supplementaryGroups(of: peer.pid).contains(operatorGID)
    }

    static func unauthorized(_ message: String) -> HTTPError {
        HTTPError(status: 401, code: "unauthorized", message: message, headers: ["WWW-Authenticate": "Bearer realm=\"batond\""])
    }

    /// The token of a `Bearer <token>` header, as bytes: the scheme is
    /// case-insensitive (RFC 6750) and spaces around the token are allowed. Plain byte
    /// work (Foundation's trimming is slow on Linux): this runs on every guarded request.
    static func bearer(_ header: String) -> [UInt8]? {
        var header = header
        return header.withUTF8 { bytes -> [UInt8]? in
            let scheme: StaticString = "bearer "
            let schemeLength = scheme.utf8CodeUnitCount
            guard bytes.count > schemeLength else { return nil }
            for index in 0..<schemeLength {
                let expected = scheme.utf8Start[index]
                guard bytes[index] | (expected == 0x20 ? 0 : 0x20) == expected else { return nil }
            }
            var start = schemeLength, end = bytes.count
            while start < end, bytes[start] == 0x20 || bytes[start] == 0x09 { start += 1 }
            while end > start, bytes[end - 1] == 0x20 || bytes[end - 1] == 0x09 { end -= 1 }
            return start < end ? Array(bytes[start..<end]) : nil
        }
    }

    /// Equal-length comparison whose time depends only on the lengths.
    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: a.count ^ b.count)
        for index in 0..<max(a.count, b.count) {
            let x = index < a.count ? a[index] : 0
            let y = index < b.count ? b[index] : 0
            difference |= x ^ y
        }
        return difference == 0
    }

    /// The peer's supplementary groups, from /proc (SO_PEERCRED carries the primary gid only).
    static func supplementaryGroups(of pid: Int32) -> [gid_t] {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Groups:") })
        else { return [] }
        return line.dropFirst("Groups:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { gid_t($0) }
    }
}

/// The operator token file: `<state_dir>/operator.token`, mode 0600, 256 random bits in
/// hex, created on first start. The file holds the token alone (a trailing newline is allowed).
public enum OperatorToken {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public static func loadOrCreate(at path: String) throws(Failure) -> String {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if fd >= 0 {
            let token = randomHex(bytes: 32)
            let bytes = Array((token + "\n").utf8)
            let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            let synced = fsync(fd)
            close(fd)
            guard written == bytes.count, synced == 0 else {
                unlink(path)
                throw Failure(description: "cannot write \(path): \(String(cString: strerror(errno)))")
            }
            return token
        }
        guard errno == EEXIST else {
            throw Failure(description: "cannot create \(path): \(String(cString: strerror(errno)))")
        }
        var info = stat()
        guard stat(path, &info) == 0 else { throw Failure(description: "cannot stat \(path)") }
        guard info.st_mode & 0o077 == 0 else {
            throw Failure(description: "\(path) is readable by others (mode \(String(info.st_mode & 0o777, radix: 8))); chmod 600 it")
        }
        guard let contents = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw Failure(description: "cannot read \(path)")
        }
        var token = Substring(contents)
        if token.hasSuffix("\n") { token = token.dropLast() }
        guard token.utf8.count >= 16, !token.contains(where: { $0.isWhitespace }) else {
            throw Failure(description: "\(path) must hold one token of at least 16 characters and no spaces")
        }
        return String(token)
    }

    /// `count` random bytes in lowercase hex.
    static func randomHex(bytes count: Int) -> String {
        random(bytes: count).map { String(format: "%02x", $0) }.joined()
    }

    static func random(bytes count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }
}
