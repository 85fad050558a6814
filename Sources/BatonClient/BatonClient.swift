import BatonWire
import Foundation
import Synchronization

/// A 2xx answer and what its body decoded to. `response.body` is the API's own JSON,
/// byte for byte (what `baton --json` prints).
public struct Reply<Value: Sendable>: Sendable {
    public let value: Value
    public let response: HTTPResponse

    public init(value: Value, response: HTTPResponse) { self.value = value; self.response = response }
}

/// batond's HTTP API over its Unix socket or loopback TCP: keep-alive connections,
/// a deadline per request, the bearer token, JSON in and out, and every failure a
/// `ClientError`. Blocking; safe to call from several threads at once (each call takes
/// a connection of its own from a small pool).
public final class BatonClient: Sendable {
    public let endpoint: BatonClient.Endpoint
    /// The deadline of calls that do not give one.
    public let timeout: Duration
    private let token: String?
    private let idle = Mutex<[HTTPConnection]>([])
    private static let maxIdle = 4

    /// - Parameter token: sent as `Authorization: Bearer …`; nil on the Unix socket,
    ///   where batond knows the caller by its uid. Never logged nor put in a URL.
    public init(endpoint: BatonClient.Endpoint, token: String? = nil, timeout: Duration = .seconds(30)) {
        self.endpoint = endpoint
        self.token = token
        self.timeout = timeout
    }

    // MARK: - Requests

    /// One request; the answer whatever its status.
    public func perform(_ request: HTTPRequest) throws(ClientError) -> HTTPResponse {
        let connection = idle.withLock { $0.popLast() } ?? HTTPConnection(endpoint)
        let response = try connection.send(authorised(request))
        if connection.isOpen {
            idle.withLock { pool in
                if pool.count < Self.maxIdle { pool.append(connection) }
            }
        }
        return response
    }

    /// One request; its 2xx answer, or the refusal as a `ClientError`.
    public func send(_ request: HTTPRequest) throws(ClientError) -> HTTPResponse {
        let response = try perform(request)
        try Self.check(response)
        return response
    }

    /// A request whose answer's body is read as it arrives (on a connection of its own).
    /// A refusal is thrown, its body read whole first.
    public func stream(_ request: HTTPRequest) throws(ClientError) -> ResponseStream {
        let connection = HTTPConnection(endpoint)
        let stream = try connection.open(authorised(request))
        if !(200..<300).contains(stream.status) {
            var body: [UInt8] = []
            let deadline = ContinuousClock.now + request.timeout
            while body.count < 64 * 1024, let chunk = try stream.next(deadline: deadline) { body += chunk }
            try Self.check(HTTPResponse(status: stream.status, headers: stream.headers, body: body))
        }
        return stream
    }

    /// A JSON call: `body` encoded (snake_case keys), the answer decoded.
    public func call<Value: Decodable & Sendable>(
        _ method: String, _ target: String, body: (some Encodable)? = Optional<Empty>.none, as type: Value.Type,
        headers: [(String, String)] = [], timeout: Duration? = nil
    ) throws(ClientError) -> Reply<Value> {
        var request = HTTPRequest(method, target, headers: headers, timeout: timeout ?? self.timeout)
        if let body {
            request.body = .bytes(try Self.encode(body))
            request.headers.append(("Content-Type", "application/json"))
        }
        let response = try send(request)
        return Reply(value: try Self.decode(type, response), response: response)
    }

    public struct Empty: Codable, Sendable {}

    private func authorised(_ request: HTTPRequest) -> HTTPRequest {
        guard let token else { return request }
        var request = request
        request.headers.append(("Authorization", "Bearer \(token)"))
        return request
    }

    static func check(_ response: HTTPResponse) throws(ClientError) {
        guard !(200..<300).contains(response.status) else { return }
        let error = APIError(response)
        if response.status == 401 || (response.status == 403 && error.code == "forbidden") {
            throw .unauthorized(error)
        }
        throw .api(error)
    }

    static let encoder = WireJSON.encoder
    static let decoder = WireJSON.decoder

    static func encode(_ value: some Encodable) throws(ClientError) -> [UInt8] {
        do { return Array(try encoder.encode(value)) } catch { throw .malformedBody("cannot encode the request: \(error)") }
    }

    public static func decode<Value: Decodable>(_ type: Value.Type, _ response: HTTPResponse) throws(ClientError) -> Value {
        do {
            return try decoder.decode(type, from: Data(response.body))
        } catch {
            throw .malformedBody("\(Value.self) expected, got \(String(decoding: response.body.prefix(200), as: UTF8.self))")
        }
    }

    /// Percent-encodes all but unreserved characters, for a path segment or a query value.
    public static func escape(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = Array("0123456789ABCDEF".utf8)
                out += "%"
                out.unicodeScalars.append(Unicode.Scalar(hex[Int(byte >> 4)]))
                out.unicodeScalars.append(Unicode.Scalar(hex[Int(byte & 15)]))
            }
        }
        return out
    }

    /// `12`, `2.5`: seconds for a `wait` parameter, at millisecond precision.
    public static func seconds(_ duration: Duration) -> String {
        let ms = max(duration.milliseconds, 0)
        if ms % 1000 == 0 { return String(ms / 1000) }
        var fraction = String(ms % 1000)
        fraction = String(repeating: "0", count: 3 - fraction.count) + fraction
        while fraction.hasSuffix("0") { fraction.removeLast() }
        return "\(ms / 1000).\(fraction)"
    }
}

// MARK: - The operator's routes

extension BatonClient {
    public func status() throws(ClientError) -> Reply<StatusView> {
        try call("GET", "/v1/status", as: StatusView.self)
    }

    public func agents() throws(ClientError) -> Reply<AgentList> {
        try call("GET", "/v1/agents", as: AgentList.self)
    }

    public func agent(_ name: String) throws(ClientError) -> Reply<AgentView> {
        try call("GET", "/v1/agents/\(Self.escape(name))", as: AgentView.self)
    }

    /// What `PUT /v1/agents/{name}/desired` answered.
    public enum DesiredReply: Sendable, Equatable {
        /// 202: a handoff began.
        case handoff(HandoffView)
        /// 200: that version already works; nothing was handed over.
        case unchanged(UnchangedView)
        /// 202 for an external agent: the desired version as recorded.
        case recorded(DesiredVersion)
    }

    public func setDesired(_ agent: String, _ request: DesiredRequest) throws(ClientError) -> Reply<DesiredReply> {
        let response = try send(HTTPRequest("PUT", "/v1/agents/\(Self.escape(agent))/desired",
                                            headers: [("Content-Type", "application/json")],
                                            body: .bytes(try Self.encode(request)), timeout: timeout))
        let value: DesiredReply
        if response.status == 200 {
            value = .unchanged(try Self.decode(UnchangedView.self, response))
        } else if let handoff = try? Self.decode(HandoffView.self, response) {
            value = .handoff(handoff)
        } else {
            value = .recorded(try Self.decode(DesiredVersion.self, response))
        }
        return Reply(value: value, response: response)
    }

    public func rollback(_ agent: String, force: Bool = false) throws(ClientError) -> Reply<HandoffView> {
        try call("POST", "/v1/agents/\(Self.escape(agent))/rollback", body: RollbackRequest(force: force ? true : nil),
                 as: HandoffView.self)
    }

    /// A handoff; with `wait`, the answer comes once it has an outcome or the wait ends.
    public func handoff(_ id: String, wait: Duration? = nil) throws(ClientError) -> Reply<HandoffView> {
        let query = wait.map { "?wait=\(Self.seconds($0))" } ?? ""
        return try call("GET", "/v1/handoffs/\(Self.escape(id))\(query)", as: HandoffView.self,
                        timeout: (wait ?? .zero) + timeout)
    }

    /// Handoffs newest first, of one agent or all.
    public func handoffs(agent: String? = nil, limit: Int? = nil) throws(ClientError) -> Reply<HandoffList> {
        var query: [String] = []
        if let agent { query.append("agent=\(Self.escape(agent))") }
        if let limit { query.append("limit=\(limit)") }
        return try call("GET", "/v1/handoffs" + (query.isEmpty ? "" : "?" + query.joined(separator: "&")), as: HandoffList.self)
    }

    /// `GET /v1/events` as Server-Sent Events, from after `since`. A batond without them
    /// answers JSON instead: check the stream's `Content-Type`.
    public func eventStream(since: UInt64, agent: String? = nil) throws(ClientError) -> ResponseStream {
        var target = "/v1/events?since=\(since)"
        if let agent { target += "&agent=\(Self.escape(agent))" }
        return try stream(HTTPRequest("GET", target, headers: [("Accept", "text/event-stream"), ("Last-Event-ID", "\(since)")],
                                      timeout: timeout))
    }

    public func releases(_ agent: String) throws(ClientError) -> Reply<ReleaseList> {
        try call("GET", "/v1/releases/\(Self.escape(agent))", as: ReleaseList.self)
    }

    public func release(_ agent: String, _ version: String) throws(ClientError) -> Reply<ReleaseView> {
        try call("GET", "/v1/releases/\(Self.escape(agent))/\(Self.escape(version))", as: ReleaseView.self)
    }

    /// Streams `file` as release `version` of `agent`. `sha256` is the file's (hex);
    /// `signature` base64 of an Ed25519 signature over it.
    public func pushRelease(
        _ agent: String, _ version: String, file: String, sha256: String, signature: String? = nil,
        progress: (@Sendable (Int64, Int64) -> Void)? = nil
    ) throws(ClientError) -> Reply<ReleaseView> {
        var headers = [("Content-Type", "application/octet-stream")]
        if let signature { headers.append(("Baton-Signature", signature)) }
        let response = try send(HTTPRequest("PUT", "/v1/releases/\(Self.escape(agent))/\(Self.escape(version))?sha256=\(sha256)",
                                            headers: headers, body: .file(path: file), timeout: timeout, progress: progress))
        return Reply(value: try Self.decode(ReleaseView.self, response), response: response)
    }

    public func fetchRelease(_ agent: String, _ version: String, _ request: FetchRequest) throws(ClientError) -> Reply<ReleaseView> {
        try call("POST", "/v1/releases/\(Self.escape(agent))/\(Self.escape(version))", body: request, as: ReleaseView.self)
    }

    /// A one-time login path for the status page.
    public func uiLink() throws(ClientError) -> Reply<UILink> {
        try call("POST", "/v1/ui/links", as: UILink.self)
    }
}
