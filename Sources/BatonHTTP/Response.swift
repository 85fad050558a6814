import Foundation
import BatonWire

/// An HTTP answer. Every error has one shape: `{"error": {"code": "...", "message": "..."}}`.
public struct Response: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public init(status: Int, headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public static let jsonContentType = "application/json"

    /// A JSON body already encoded.
    public static func json(status: Int = 200, bytes: [UInt8]) -> Response {
        Response(status: status, headers: [("Content-Type", jsonContentType)], body: bytes)
    }

    /// A JSON body from an `Encodable` value, encoded with the wire conventions (snake_case keys).
    public static func json<T: Encodable>(status: Int = 200, _ value: T) -> Response {
        do {
            return json(status: status, bytes: Array(try WireJSON.encoder.encode(value)))
        } catch {
            return HTTPError(status: 500, code: "encoding_failed", message: "the answer could not be encoded").response
        }
    }

    public static func text(status: Int = 200, _ text: String, contentType: String = "text/plain; charset=utf-8") -> Response {
        Response(status: status, headers: [("Content-Type", contentType)], body: Array(text.utf8))
    }
}

/// An error the HTTP edge turns into the one JSON error shape.
public struct HTTPError: Error, Sendable, Equatable {
    public var status: Int
    /// A stable, machine-readable code (snake_case), e.g. `agent_not_found`.
    public var code: String
    public var message: String
    public var headers: [String: String]

    public init(status: Int, code: String, message: String, headers: [String: String] = [:]) {
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
    }

    public var response: Response {
        var body = #"{"error":{"code":"#
        body += WireJSON.quote(code)
        body += #","message":"#
        body += WireJSON.quote(message)
        body += "}}"
        var response = Response.json(status: status, bytes: Array(body.utf8))
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) {
            response.headers.append((name, value))
        }
        return response
    }

    // MARK: - The errors the HTTP layer itself produces

    public static func notFound(_ path: String) -> HTTPError {
        HTTPError(status: 404, code: "not_found", message: "no route for \(path)")
    }

    public static func methodNotAllowed(_ method: String, allowed: [String]) -> HTTPError {
        HTTPError(status: 405, code: "method_not_allowed",
                  message: "\(method) is not allowed here; allowed: \(allowed.joined(separator: ", "))",
                  headers: ["Allow": allowed.joined(separator: ", ")])
    }

    public static func payloadTooLarge(limit: Int) -> HTTPError {
        HTTPError(status: 413, code: "payload_too_large", message: "the request body exceeds \(limit) bytes",
                  headers: ["Connection": "close"])
    }

    public static func unsupportedMediaType(_ type: String?) -> HTTPError {
        HTTPError(status: 415, code: "unsupported_media_type",
                  message: "request bodies must be application/json, not \(type ?? "untyped")")
    }

    public static let bodyNotAllowed = HTTPError(status: 400, code: "body_not_allowed",
                                                 message: "this route takes no request body")

    public static func badJSON(_ detail: String) -> HTTPError {
        HTTPError(status: 400, code: "malformed_json", message: "the request body is not valid JSON: \(detail)")
    }

    public static func badParameter(_ name: String, _ detail: String) -> HTTPError {
        HTTPError(status: 400, code: "invalid_parameter", message: "query parameter '\(name)': \(detail)")
    }

    public static func tooManyWaiters(_ group: String) -> HTTPError {
        HTTPError(status: 503, code: "too_many_waiters",
                  message: "too many requests are waiting already (\(group)); retry later",
                  headers: ["Retry-After": "1"])
    }

    public static let tooManyStreams = HTTPError(status: 503, code: "too_many_streams",
                                                 message: "too many event streams are open already; retry later",
                                                 headers: ["Retry-After": "1"])

    public static let shuttingDown = HTTPError(status: 503, code: "shutting_down",
                                               message: "batond is shutting down",
                                               headers: ["Connection": "close", "Retry-After": "1"])
}

