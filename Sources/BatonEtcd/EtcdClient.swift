import Foundation
import Synchronization

/// Where etcd is and how to reach it.
public struct EtcdSettings: Sendable, Equatable {
    /// "http://127.0.0.1:2379", "https://…": tried in order, the last one that answered first.
    public var endpoints: [String]
    /// TLS: the CA bundle that verifies the servers (else the system's CAs).
    public var caFile: String?
    /// TLS client certificate and key, for etcd's `--client-cert-auth`.
    public var certFile: String?
    public var keyFile: String?
    /// etcd's own auth: the client authenticates with these and sends the token it gets.
    public var username: String?
    public var password: String?
    /// One unary call, every endpoint it tries included.
    public var requestTimeout: Duration
    /// Each connection, TLS handshake included.
    public var connectTimeout: Duration

    public init(endpoints: [String], caFile: String? = nil, certFile: String? = nil, keyFile: String? = nil,
                username: String? = nil, password: String? = nil, requestTimeout: Duration = .seconds(5),
                connectTimeout: Duration = .seconds(2)) {
        self.endpoints = endpoints
        self.caFile = caFile
        self.certFile = certFile
        self.keyFile = keyFile
        self.username = username
        self.password = password
        self.requestTimeout = requestTimeout
        self.connectTimeout = connectTimeout
    }

    var tls: TLSFiles { TLSFiles(caFile: caFile, certFile: certFile, keyFile: keyFile) }
}

/// A key as etcd keeps it.
public struct EtcdKeyValue: Sendable, Equatable {
    public var key: String
    public var value: [UInt8]
    public var createRevision: Int64
    public var modRevision: Int64
    public var version: Int64
    public var lease: Int64

    public init(key: String, value: [UInt8], createRevision: Int64 = 0, modRevision: Int64 = 0, version: Int64 = 0, lease: Int64 = 0) {
        self.key = key
        self.value = value
        self.createRevision = createRevision
        self.modRevision = modRevision
        self.version = version
        self.lease = lease
    }

    /// The value as UTF-8.
    public var string: String { String(decoding: value, as: UTF8.self) }
}

/// The keys a range found, and the store's revision when it was read.
public struct EtcdRange: Sendable, Equatable {
    public var revision: Int64
    public var kvs: [EtcdKeyValue]

    public init(revision: Int64, kvs: [EtcdKeyValue]) {
        self.revision = revision
        self.kvs = kvs
    }
}

/// A txn's condition (all of them must hold for its success branch).
public enum EtcdCompare: Sendable, Equatable {
    /// Create-if-absent: `.createRevision(key, equals: 0)`.
    case createRevision(String, equals: Int64)
    case modRevision(String, equals: Int64)
    case value(String, equals: [UInt8])
}

/// One operation of a txn branch.
public enum EtcdOperation: Sendable, Equatable {
    case put(String, value: [UInt8], lease: Int64 = 0)
    case delete(String, prefix: Bool = false)
    case range(String, prefix: Bool = false)
}

public struct EtcdTxnResult: Sendable, Equatable {
    /// Whether the compares held (and the success branch ran).
    public var succeeded: Bool
    public var revision: Int64
    /// The kvs of each range operation of the branch taken, in order.
    public var ranges: [[EtcdKeyValue]]

    public init(succeeded: Bool, revision: Int64, ranges: [[EtcdKeyValue]]) {
        self.succeeded = succeeded
        self.revision = revision
        self.ranges = ranges
    }
}

public struct EtcdLease: Sendable, Equatable {
    public var id: Int64
    public var ttl: Int64

    public init(id: Int64, ttl: Int64) {
        self.id = id
        self.ttl = ttl
    }
}

/// Why a call failed. No text holds a token or a password.
public enum EtcdError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No endpoint answered (refused, TLS failed, timed out, or the connection broke): the
    /// text names each endpoint tried and why. A put, delete or txn whose connection broke
    /// after it was sent may have been applied: re-read.
    case unreachable(String)
    /// etcd answered with a gRPC error (14 "etcdserver: no leader", 14 "request timed out",
    /// 16 "invalid auth token", 3 "authentication failed", …).
    case failed(code: Int, message: String)
    /// The lease expired or was revoked (keepalive, revoke, put with a lease).
    case leaseNotFound
    /// A watch started from a revision compacted away; this is the compact revision.
    case compacted(Int64)
    /// Not the JSON expected.
    case badAnswer(String)

    public var description: String {
        switch self {
        case .unreachable(let text): "etcd is unreachable: \(text)"
        case .failed(let code, let message): "etcd answered: \(message) (gRPC code \(code))"
        case .leaseNotFound: "the etcd lease was not found (expired or revoked)"
        case .compacted(let revision): "etcd compacted the revisions asked for (compacted up to \(revision))"
        case .badAnswer(let text): "etcd's answer was not understood: \(text)"
        }
    }
}

/// A client of etcd's v3 API through its JSON gateway (etcd 3.4: `/v3/…`), over the system's
/// libcurl. Each blocking exchange runs on a thread of its own, never on Swift's cooperative
/// pool, and resumes the caller when done.
///
/// A unary call tries the endpoints in turn, the last one that answered first, within
/// `requestTimeout`: it moves on when an endpoint cannot be reached (nothing was sent) or
/// answers "no leader" (every request carries `Grpc-Metadata-hasleader: true`, so a member
/// cut off from its leader refuses at once, before proposing anything). A read (range,
/// keepalive) also moves on after any 5xx answer, a timeout or a broken connection; a
/// write (put, delete, txn, grant, revoke) does not, since it may have been applied.
public final class EtcdClient: Sendable {
    let settings: EtcdSettings
    /// The endpoint that answered last: where the next call starts.
    let preferred = Atomic<Int>(0)
    let sent = Atomic<Int>(0)
    /// etcd's auth token, once authenticated. Never logged, never in an error text.
    private let token = Mutex<String?>(nil)
    /// Idle connections, kept for the next call (keep-alive, TLS session reuse).
    private let idle = Mutex<[CurlConnectionBox]>([])

    static let maxIdleConnections = 4
    /// The largest answer accepted from a unary call.
    static let maxAnswerBytes = 64 << 20

    public init(_ settings: EtcdSettings) {
        self.settings = settings
    }

    /// Requests sent (every attempt of a unary call, every watch (re)connect), for metrics and the bench.
    public var requests: Int { sent.load(ordering: .relaxed) }

    // MARK: KV

    public func range(_ key: String, prefix: Bool = false) async throws(EtcdError) -> EtcdRange {
        try await offload { () throws(EtcdError) in
            let answer = try self.call("/v3/kv/range", Wire.keyRange(key, prefix: prefix), kind: .read)
            return EtcdRange(revision: try answer.revision(), kvs: try answer.objects("kvs").map { (kv) throws(EtcdError) in try EtcdKeyValue(kv) })
        }
    }

    /// Returns the revision of the put.
    public func put(_ key: String, value: [UInt8], lease: Int64 = 0) async throws(EtcdError) -> Int64 {
        try await offload { () throws(EtcdError) in
            try self.call("/v3/kv/put", Wire.put(key, value: value, lease: lease), kind: .write).revision()
        }
    }

    /// Returns the revision after the delete (the store's, unchanged when nothing was deleted).
    public func delete(_ key: String, prefix: Bool = false) async throws(EtcdError) -> Int64 {
        try await offload { () throws(EtcdError) in
            try self.call("/v3/kv/deleterange", Wire.keyRange(key, prefix: prefix), kind: .write).revision()
        }
    }

    public func txn(_ compares: [EtcdCompare], success: [EtcdOperation], failure: [EtcdOperation] = []) async throws(EtcdError) -> EtcdTxnResult {
        let request: [String: Any] = ["compare": compares.map(Wire.compare), "success": success.map(Wire.operation),
                                      "failure": failure.map(Wire.operation)]
        let body = Wire.encode(request)
        return try await offload { () throws(EtcdError) in
            let answer = try self.call("/v3/kv/txn", body: body, kind: .write)
            var ranges: [[EtcdKeyValue]] = []
            for response in answer.objects("responses") {
                guard let range = response.object("response_range") else { continue }
                ranges.append(try range.objects("kvs").map { (kv) throws(EtcdError) in try EtcdKeyValue(kv) })
            }
            return EtcdTxnResult(succeeded: answer.bool("succeeded"), revision: try answer.revision(), ranges: ranges)
        }
    }

    // MARK: Leases

    public func grant(ttl: Int64) async throws(EtcdError) -> EtcdLease {
        try await offload { () throws(EtcdError) in
            let answer = try self.call("/v3/lease/grant", ["TTL": String(ttl)], kind: .write)
            // LeaseGrantResponse has an error string of its own besides gRPC's.
            if let error = answer.string("error"), !error.isEmpty { throw .failed(code: 0, message: error) }
            let lease = EtcdLease(id: try answer.int64("ID"), ttl: try answer.int64("TTL"))
            guard lease.id != 0 else { throw .badAnswer("a lease grant without an ID") }
            return lease
        }
    }

    /// Renews the lease once; returns the TTL it has again. The gateway's keepalive is a
    /// stream, but a POST with one request gets one `{"result": …}` and is closed; a lease
    /// that is gone comes back without a TTL (and no error), which throws `.leaseNotFound`.
    public func keepAlive(_ lease: Int64) async throws(EtcdError) -> Int64 {
        try await offload { () throws(EtcdError) in
            let answer = try self.call("/v3/lease/keepalive", ["ID": String(lease)], kind: .read)
            guard let result = answer.object("result") else { throw .badAnswer("a keepalive answer without a result") }
            let ttl = try result.int64("TTL")
            guard ttl > 0 else { throw .leaseNotFound }
            return ttl
        }
    }

    /// Ends the lease and deletes its keys; `.leaseNotFound` when it was gone already.
    public func revoke(_ lease: Int64) async throws(EtcdError) {
        try await offload { () throws(EtcdError) in
            _ = try self.call("/v3/lease/revoke", ["ID": String(lease)], kind: .write)
        }
    }

    // MARK: - Calls

    /// Whether a call may be sent again after it may have reached etcd.
    enum Kind {
        /// Sending it twice does no harm.
        case read
        /// It may have been applied: never sent again once it may have left.
        case write
    }

    func call(_ path: String, _ request: [String: Any], kind: Kind) throws(EtcdError) -> JSONObject {
        try call(path, body: Wire.encode(request), kind: kind)
    }

    /// One unary call, authenticated when the settings have a user: blocks the calling thread.
    /// A token etcd refuses is replaced once.
    func call(_ path: String, body: [UInt8], kind: Kind) throws(EtcdError) -> JSONObject {
        let token = try currentToken()
        do {
            return try exchange(path, body: body, kind: kind, token: token)
        } catch where token != nil && EtcdClient.refusesToken(error) {
            forget(token: token)
            return try exchange(path, body: body, kind: kind, token: try currentToken())
        }
    }

    /// Whether etcd refused the token, having applied nothing, so that the same call may
    /// pass with a new one: "invalid auth token" (simple tokens expire after etcd's
    /// --auth-token-ttl, 5 min, unused, and a restarted member forgets them all), or
    /// "revision of auth store is old" (a JWT made before users or roles last changed;
    /// refused when applied, with no effect).
    static func refusesToken(_ error: EtcdError) -> Bool {
        switch error {
        case .failed(GRPCCode.unauthenticated, _): true
        case .failed(GRPCCode.invalidArgument, let message): message.contains("revision of auth store is old")
        case .failed, .unreachable, .leaseNotFound, .compacted, .badAnswer: false
        }
    }

    /// The token to send, authenticating first when there is none yet; nil without a user.
    func currentToken() throws(EtcdError) -> String? {
        guard let username = settings.username else { return nil }
        if let token = token.withLock({ $0 }) { return token }
        let request = ["name": username, "password": settings.password ?? ""]
        let answer: JSONObject
        do {
            answer = try exchange("/v3/auth/authenticate", body: Wire.encode(request), kind: .read, token: nil)
        } catch .failed(let code, let message) {
            throw .failed(code: code, message: "authenticating as \(username): \(message)")
        }
        guard let fresh = answer.string("token"), !fresh.isEmpty else { throw .badAnswer("authentication gave no token") }
        token.withLock { $0 = fresh }
        return fresh
    }

    /// Drops `token` (unless another call replaced it already): the next call authenticates again.
    func forget(token old: String?) {
        token.withLock { if $0 == old { $0 = nil } }
    }

    /// Headers every request carries; the token's is secret.
    func headers(token: String?) -> [String] {
        var headers = ["Grpc-Metadata-hasleader: true"]
        if let token { headers.append("Authorization: \(token)") }
        return headers
    }

    /// One pass over the endpoints, the preferred one first, within the request timeout.
    private func exchange(_ path: String, body: [UInt8], kind: Kind, token: String?) throws(EtcdError) -> JSONObject {
        let endpoints = settings.endpoints
        guard !endpoints.isEmpty else { throw .unreachable("no endpoint is configured") }
        let deadline = ContinuousClock.now + settings.requestTimeout
        let first = preferred.load(ordering: .relaxed) % endpoints.count
        var reasons: [String] = []
        var answered: EtcdError?
        for step in 0..<endpoints.count {
            let index = (first + step) % endpoints.count
            let endpoint = endpoints[index]
            let left = deadline - .now
            guard left > .zero else {
                reasons.append("\(endpoint): not tried, the request timeout of \(settings.requestTimeout.spelled) passed")
                break
            }
            let post = Post(url: endpoint + path, body: body, headers: headers(token: token), tls: settings.tls,
                            connectTimeout: min(settings.connectTimeout, left), timeout: left)
            var answer: [UInt8] = []
            var tooLarge = false
            sent.add(1, ordering: .relaxed)
            let outcome = withConnection { connection in
                post.perform(connection: connection, onData: { bytes in
                    guard answer.count + bytes.count <= EtcdClient.maxAnswerBytes else {
                        tooLarge = true
                        return false
                    }
                    answer.append(contentsOf: bytes)
                    return true
                })
            }
            switch outcome {
            case .answered where tooLarge:
                throw .badAnswer("\(endpoint)\(path) answered more than \(EtcdClient.maxAnswerBytes) bytes")
            case .answered(status: 200):
                preferred.store(index, ordering: .relaxed)
                return try JSONObject(parsing: answer)
            case .answered(let status):
                let error = EtcdError.answered(status: status, body: answer)
                // "no leader" comes from the hasleader check, before anything is proposed.
                let noLeader = if case .failed(GRPCCode.unavailable, let message) = error { message.contains("no leader") } else { false }
                guard noLeader || (kind == .read && status >= 500) else {
                    preferred.store(index, ordering: .relaxed)
                    throw error
                }
                reasons.append("\(endpoint): \(error)")
                answered = error
            case .failed(let reason, let wasSent):
                reasons.append("\(endpoint): \(reason)")
                if wasSent && kind == .write {
                    throw .unreachable(reasons.joined(separator: "; ") + " (after the request was sent: it may have been applied)")
                }
            case .timedOut:
                reasons.append("\(endpoint): no answer within the request timeout of \(settings.requestTimeout.spelled)")
                if kind == .write {
                    throw .unreachable(reasons.joined(separator: "; ") + " (after the request was sent: it may have been applied)")
                }
            case .cancelled:
                throw .unreachable("cancelled")
            }
        }
        // An answer says more than a refused connection: the last one is the error.
        if let answered { throw answered }
        throw .unreachable(reasons.joined(separator: "; "))
    }

    /// Runs `body` with an idle connection (or a new one), kept afterwards for reuse when
    /// the exchange ended cleanly.
    func withConnection(_ body: (CurlConnection) -> PostOutcome) -> PostOutcome {
        let box = idle.withLock { $0.popLast() } ?? CurlConnection().map(CurlConnectionBox.init)
        guard let box else { return .failed(reason: "libcurl could not start a transfer", sent: false) }
        let outcome = body(box.connection)
        if case .answered = outcome {
            idle.withLock { if $0.count < EtcdClient.maxIdleConnections { $0.append(box) } }
        }
        return outcome
    }
}

/// A connection handed between threads through the idle list.
// @unchecked Sendable: a CurlConnection is used by one thread at a time; it is only ever
// in the idle list (behind its mutex) or taken out of it by the one call that uses it.
final class CurlConnectionBox: @unchecked Sendable {
    let connection: CurlConnection
    init(_ connection: CurlConnection) { self.connection = connection }
}

/// Runs blocking work on a thread of its own, off Swift's cooperative pool, and resumes
/// the caller with its result.
func offload<T: Sendable>(_ work: @escaping @Sendable () throws(EtcdError) -> T) async throws(EtcdError) -> T {
    let result: Result<T, EtcdError> = await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: Result { () throws(EtcdError) -> T in try work() }) }
        thread.start()
    }
    return try result.get()
}
