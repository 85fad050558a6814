import Foundation
import Synchronization

/// Who is on the other end of a connection.
public enum Peer: Sendable, Equatable {
    /// A loopback or activated TCP client: only bearer tokens identify it.
    case tcp
    /// A Unix-socket client with the credentials the kernel vouches for (SO_PEERCRED).
    case unix(PeerCredentials?)
}

public struct PeerCredentials: Sendable, Equatable {
    public let pid: Int32
    public let uid: UInt32
    public let gid: UInt32

    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }
}

/// One request as a handler sees it. Header and query lookups read libmicrohttpd's
/// connection and are valid only while the handler (or admission hook) runs.
public struct Request {
    public let method: String
    public let path: String
    public let route: Route
    public let parameters: [String: String]
    public let peer: Peer
    public internal(set) var body: [UInt8] = []
    /// A streamed body's sink (routes with `StreamedBody`), every chunk written to it.
    public internal(set) var sink: (any BodySink)?
    /// Set by the admission hook: who the request acts as.
    public var principal: (any Sendable)?

    let exchange: Exchange

    public func header(_ name: String) -> String? { exchange.lookup(header: name) }
    public func query(_ name: String) -> String? { exchange.lookup(query: name) }

    /// Parks the request: the handler returns `.parked` and answers later, once, through
    /// the returned `Pending`, from any thread. At `deadline` (or at shutdown) the request
    /// is answered with `onDeadline()` if nothing answered it before.
    public func park(deadline: Duration, onDeadline: @escaping @Sendable () -> Response) -> Pending {
        do {
            return try exchange.park(deadline: deadline, limit: nil, onDeadline: onDeadline)
        } catch {
            preconditionFailure("a request parked without a limit was refused: \(error)")
        }
    }

    /// Parks the request within `limit`: past it, throws 503 `too_many_waiters` or
    /// answers the group's oldest request, as the limit says.
    public func park(deadline: Duration, limit: ParkLimit, onDeadline: @escaping @Sendable () -> Response) throws(HTTPError) -> Pending {
        try exchange.park(deadline: deadline, limit: limit, onDeadline: onDeadline)
    }
}

/// A parked request, answered exactly once by whoever calls `answer` first: a waker,
/// the deadline or the shutdown.
public final class Pending: Sendable {
    enum State {
        /// The handler is still running: the connection is not suspended yet.
        case registering
        /// Suspended in libmicrohttpd; `answer` resumes it.
        case suspended
        /// Answered; the response waits to be queued. Final.
        case answered(Response)
        /// The response was handed to libmicrohttpd. Final.
        case delivered
    }

    let state = Mutex<State>(.registering)
    /// The listener (its daemon's context) whose connection the request holds.
    let listener: ObjectIdentifier
    let onDeadline: @Sendable () -> Response
    /// Resumes the connection in libmicrohttpd; called once, under the state lock,
    /// so a resume can never precede the suspend.
    let resume: @Sendable () -> Void
    let forget: @Sendable (Pending) -> Void

    init(listener: ObjectIdentifier, onDeadline: @escaping @Sendable () -> Response,
         resume: @escaping @Sendable () -> Void,
         forget: @escaping @Sendable (Pending) -> Void) {
        self.listener = listener
        self.onDeadline = onDeadline
        self.resume = resume
        self.forget = forget
    }

    /// Answers the request. Returns false if it was answered already.
    @discardableResult
    public func answer(_ response: Response) -> Bool {
        let answered: Bool = state.withLock { state in
            switch state {
            case .registering:
                state = .answered(response)
                return true
            case .suspended:
                state = .answered(response)
                resume()
                return true
            case .answered, .delivered:
                return false
            }
        }
        if answered { forget(self) }
        return answered
    }

    /// Answers with the deadline's response, if still unanswered.
    public func expire() {
        let alreadyAnswered = state.withLock { state -> Bool in
            switch state {
            case .registering, .suspended: return false
            case .answered, .delivered: return true
            }
        }
        if !alreadyAnswered { answer(onDeadline()) }
    }

    public var isAnswered: Bool {
        state.withLock { state in
            switch state {
            case .registering, .suspended: return false
            case .answered, .delivered: return true
            }
        }
    }
}

extension Request {
    /// The per-request state object, for tests that check it is released.
    package var exchangeObject: AnyObject { exchange }
}
