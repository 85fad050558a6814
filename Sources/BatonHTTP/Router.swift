import Foundation

/// HTTP methods batond routes. Anything else gets 405 on a known path.
public enum HTTPMethod: String, Sendable, Hashable, CaseIterable {
    case GET, HEAD, POST, PUT, PATCH, DELETE
}

/// What a handler does with a request: answer it now, park it and answer it later
/// through the `Pending` it got from `Request.park`, or stream an answer without end.
public enum Reply: Sendable {
    case respond(Response)
    case parked
    /// Past `Configuration.maxStreams` open streams, answered 503 `too_many_streams` instead.
    case stream(StreamedResponse)
}

public typealias Handler = @Sendable (Request) throws(HTTPError) -> Reply

/// Decides, from the head of a request alone, whether it may go on; sets the request's
/// principal. Runs before the body is read, so unauthorised uploads are never buffered.
public typealias Admission = @Sendable (inout Request) -> HTTPError?

/// Where a streamed request body goes, a chunk at a time, as it arrives: uploads that
/// must never sit whole in memory. Chunks come in order on the listener's thread; a
/// throw stops the writing (the rest of the body is read and dropped) and answers the
/// request with the error.
public protocol BodySink: AnyObject, Sendable {
    func write(_ bytes: UnsafeRawBufferPointer) throws(HTTPError)
}

/// How a route takes a streamed body: `open` runs once the head is admitted (it may
/// refuse with an error, before any of the body is read) and returns the sink; the
/// handler then finds it in `Request.sink`. `maxBytes` replaces the server's JSON body
/// limit for this route; any media type is accepted.
public struct StreamedBody: Sendable {
    public var maxBytes: Int
    public var open: @Sendable (Request) throws(HTTPError) -> any BodySink

    public init(maxBytes: Int, open: @escaping @Sendable (Request) throws(HTTPError) -> any BodySink) {
        self.maxBytes = maxBytes
        self.open = open
    }
}

/// What a route is for, as the admission hook reads it (the API's auth scopes). A
/// type, not a string: a route can only be tagged with a scope its API declared
/// (`extension RouteScope { static let … }`), so a typo does not compile.
public struct RouteScope: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public init(_ name: String) { self.name = name }
    public var description: String { name }
}

/// One route: a method and a path template whose `{name}` segments are parameters.
/// A class: requests carry their route by reference, and metrics key on its identity.
public final class Route: Sendable {
    public let method: HTTPMethod
    public let template: String
    /// What the admission hook reads (the auth scope).
    public let scope: RouteScope
    /// Whether the route takes a JSON body.
    public let takesBody: Bool
    /// Set when the route takes its body as a stream instead.
    public let streamed: StreamedBody?
    public let handler: Handler
    let segments: [Segment]

    enum Segment: Sendable, Equatable {
        case literal(String)
        case parameter(String)
    }

    public init(_ method: HTTPMethod, _ template: String, scope: RouteScope, takesBody: Bool = false,
                streamed: StreamedBody? = nil, handler: @escaping Handler) {
        self.method = method
        self.template = template
        self.scope = scope
        self.takesBody = takesBody || streamed != nil
        self.streamed = streamed
        self.handler = handler
        self.segments = template.split(separator: "/", omittingEmptySubsequences: true).map { part in
            if part.hasPrefix("{") && part.hasSuffix("}") {
                return .parameter(String(part.dropFirst().dropLast()))
            }
            return .literal(String(part))
        }
    }
}

/// The routing table. Literal segments win over parameters; a path that matches
/// with another method answers 405 with `Allow`.
public struct Router: Sendable {
    public private(set) var routes: [Route] = []
    /// Routes without parameters by exact path: the common case costs one lookup.
    private var literal: [String: [Route]] = [:]

    public init(_ routes: [Route] = []) {
        for route in routes { add(route) }
    }

    public mutating func add(_ route: Route) {
        precondition(!routes.contains { $0.method == route.method && $0.segments == route.segments },
                     "route \(route.method) \(route.template) registered twice")
        routes.append(route)
        if !route.segments.contains(where: { if case .parameter = $0 { true } else { false } }) {
            literal["/" + route.segments.map { if case .literal(let text) = $0 { text } else { "" } }.joined(separator: "/"), default: []].append(route)
        }
    }

    public enum Match {
        case found(Route, parameters: [String: String])
        case wrongMethod(allowed: [String])
        case notFound
    }

    public func match(method: String, path: String) -> Match {
        let effective = method == "HEAD" ? "GET" : method
        if let candidates = literal[path], let route = candidates.first(where: { $0.method.rawValue == effective }) {
            return .found(route, parameters: [:])
        }
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        var allowed: [String] = []
        var best: (route: Route, parameters: [String: String], literals: Int)?
        for route in routes {
            guard let (parameters, literals) = Self.bind(route.segments, to: parts) else { continue }
            guard route.method.rawValue == effective else {
                allowed.append(route.method.rawValue)
                if route.method == .GET { allowed.append("HEAD") }
                continue
            }
            if best == nil || literals > best!.literals {
                best = (route, parameters, literals)
            }
        }
        if let best { return .found(best.route, parameters: best.parameters) }
        if !allowed.isEmpty { return .wrongMethod(allowed: Array(Set(allowed)).sorted()) }
        return .notFound
    }

    private static func bind(_ segments: [Route.Segment], to parts: [Substring]) -> ([String: String], Int)? {
        guard segments.count == parts.count else { return nil }
        var parameters: [String: String] = [:]
        var literals = 0
        for (segment, part) in zip(segments, parts) {
            switch segment {
            case .literal(let text):
                guard text == part else { return nil }
                literals += 1
            case .parameter(let name):
                // libmicrohttpd has already percent-decoded the path.
                parameters[name] = String(part)
            }
        }
        return (parameters, literals)
    }
}
