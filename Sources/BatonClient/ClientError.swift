import BatonWire
import Foundation
import Glibc

/// An answer in the API's one error shape, `{"error":{"code":…,"message":…}}`.
public struct APIError: Error, Sendable, Equatable, CustomStringConvertible {
    public let status: Int
    /// Stable and machine-readable (`agent_not_found`); `http_<status>` when the body was
    /// not the error shape (a proxy's page, say).
    public let code: String
    /// For people.
    public let message: String
    /// `Retry-After` in seconds, when the answer had one.
    public let retryAfter: Int?

    public init(status: Int, code: String, message: String, retryAfter: Int? = nil) {
        self.status = status; self.code = code; self.message = message; self.retryAfter = retryAfter
    }

    /// Reads the error shape from an answer that is not 2xx.
    public init(_ response: HTTPResponse) {
        let retryAfter = response.header("Retry-After").flatMap { Int($0) }
        if let shape = try? WireJSON.decoder.decode(ErrorBody.self, from: Data(response.body)) {
            self.init(status: response.status, code: shape.error.code, message: shape.error.message, retryAfter: retryAfter)
        } else {
            let text = String(decoding: response.body.prefix(200), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            self.init(status: response.status, code: "http_\(response.status)", message: text, retryAfter: retryAfter)
        }
    }

    public var description: String { "\(status) \(code): \(message)" }
}

/// Everything a call to batond can end in but a 2xx answer. Each case is a different
/// thing for a person to do: start batond, get the rights to its socket, fix the token,
/// read what batond refused and why, or try again.
public enum ClientError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Nobody listens: the socket file is missing or refuses connections, or nothing
    /// accepts on the TCP port. batond is not running (or runs elsewhere).
    case notRunning(BatonClient.Endpoint, reason: String)
    /// The socket (or a directory above it) may not be opened by this user (EACCES).
    case permissionDenied(BatonClient.Endpoint, reason: String)
    /// `401`, or `403 forbidden`: the token is missing or wrong, or does not grant the route.
    case unauthorized(APIError)
    /// Any other answer that is not 2xx.
    case api(APIError)
    /// Below HTTP: a deadline passed, the connection broke, the answer was malformed.
    case transport(BatonClient.Endpoint, reason: String)
    /// A 2xx answer whose body is not what the route documents.
    case malformedBody(String)
    /// A file to send cannot be read.
    case localFile(String)

    /// Worth another try as it is: batond away or restarting, a broken connection, a
    /// deadline, or a 503 (shutting down, busy, ledger unavailable).
    public var isTransient: Bool {
        switch self {
        case .notRunning, .transport: true
        case .api(let error): error.status == 503
        case .permissionDenied, .unauthorized, .malformedBody, .localFile: false
        }
    }

    /// The decoded error shape, for a refusal.
    public var apiError: APIError? {
        switch self {
        case .unauthorized(let error), .api(let error): error
        case .notRunning, .permissionDenied, .transport, .malformedBody, .localFile: nil
        }
    }

    public var description: String {
        switch self {
        case .notRunning(let endpoint, let reason): "batond is not running at \(endpoint): \(reason)"
        case .permissionDenied(let endpoint, let reason): "no permission to connect to \(endpoint): \(reason)"
        case .unauthorized(let error): "not authorised: \(error.message) (\(error.status) \(error.code))"
        case .api(let error): "\(error.message) (\(error.status) \(error.code))"
        case .transport(let endpoint, let reason): "\(endpoint): \(reason)"
        case .malformedBody(let what): "unexpected answer: \(what)"
        case .localFile(let what): what
        }
    }

    /// Classifies a failed connect(2).
    static func connect(_ endpoint: BatonClient.Endpoint, errno code: Int32) -> ClientError {
        let reason = String(cString: strerror(code))
        switch code {
        case ENOENT, ENOTDIR, ECONNREFUSED: return .notRunning(endpoint, reason: reason)
        case EACCES, EPERM: return .permissionDenied(endpoint, reason: reason)
        default: return .transport(endpoint, reason: "connect: \(reason)")
        }
    }
}
