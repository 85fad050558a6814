import Dispatch
/// What one listener admits: how many connections, how many per peer, and which routes.
public struct ListenerPolicy: Sendable {
    /// Most connections at once. When full, a new connection takes the slot of the one
    /// that has waited longest for its request head; when none waits for a head (every
    /// slot is busy with a request or a parked wait), the new one is closed at once.
    public var maxConnections: Int
    /// Most connections at once per peer, on a Unix socket; nil for no per-peer cap.
    public var maxConnectionsPerPeer: Int?
    /// Names the peer a per-peer cap counts against, from its credentials (e.g. the
    /// instance the process belongs to, else its uid).
    public var peerKey: @Sendable (PeerCredentials) -> String
    /// The route scopes served here; nil serves every route. Other routes answer 404.
    public var scopes: Set<RouteScope>?
    /// Slots kept for requests that are answered at once: parked requests (long-polls)
    /// and open streams together hold at most `maxConnections - reserved` connections of
    /// the listener. Past that, one more is answered 503 (`too_many_waiters`,
    /// `too_many_streams`) instead of taking the last slots.
    public var reserved: Int

    public init(maxConnections: Int, maxConnectionsPerPeer: Int? = nil,
                peerKey: @escaping @Sendable (PeerCredentials) -> String = { "uid \($0.uid)" },
                scopes: Set<RouteScope>? = nil, reserved: Int = 0) {
        self.maxConnections = maxConnections
        self.maxConnectionsPerPeer = maxConnectionsPerPeer
        self.peerKey = peerKey
        self.scopes = scopes
        self.reserved = reserved
    }

    /// The reserve batond keeps on each listener: an eighth of its slots, at least 4,
    /// and always leaving one slot to hold.
    public static func defaultReserve(maxConnections: Int) -> Int {
        max(0, min(max(4, maxConnections / 8), maxConnections - 1))
    }

    /// Most connections parked requests and open streams may hold at once.
    public var holdLimit: Int { max(0, maxConnections - reserved) }
}

/// A cap on the parked requests of one group (e.g. every events long-poll, or the signal
/// long-polls of one instance).
public struct ParkLimit: Sendable {
    public enum Overflow: Sendable {
        /// Past the cap, the new request gets 503 `too_many_waiters` at once.
        case refuse
        /// Past the cap, the oldest parked request of the group is answered now (with its
        /// deadline answer) to make room: for clients whose earlier wait may have been cut
        /// without the server noticing.
        case answerOldest
    }

    public var group: String
    public var most: Int
    public var overflow: Overflow

    public init(group: String, most: Int, overflow: Overflow) {
        self.group = group
        self.most = most
        self.overflow = overflow
    }
}

/// Why the server closed a connection itself, before any answer.
public enum ConnectionClosure: String, Sendable, CaseIterable {
    /// Its request head was not complete by the deadline.
    case headDeadline = "head_deadline"
    /// Its request body was not complete by the deadline.
    case bodyDeadline = "body_deadline"
    /// Its client closed the connection in the middle of the body (libmicrohttpd may
    /// miss that end of file until the deadline: the sweep looks for it).
    case abandoned
    /// The listener was full and a new connection took its slot while it waited for a head.
    case evicted
    /// The listener was full of busy connections when it arrived.
    case refused
    /// Its peer held as many connections as the per-peer cap allows.
    case peerCap = "peer_cap"
}

/// One listener's connections now, and those the server closed itself since it started.
public struct ListenerStats: Sendable {
    public let listener: String
    public let open: Int
    public let closed: [ConnectionClosure: UInt64]
}

/// A moment on the monotonic clock, in nanoseconds. A plain integer rather than
/// `Tick`, whose layout is opaque outside the standard library: the
/// connection table is touched on every request, and with an opaque field each copy of an
/// entry went through the runtime (a quarter of /healthz's throughput, measured).
struct Tick: Comparable, Sendable {
    var nanoseconds: UInt64

    static var now: Tick { Tick(nanoseconds: DispatchTime.now().uptimeNanoseconds) }

    static func < (a: Tick, b: Tick) -> Bool { a.nanoseconds < b.nanoseconds }

    static func + (tick: Tick, duration: Duration) -> Tick {
        Tick(nanoseconds: tick.nanoseconds &+ duration.nanosecondsClamped)
    }
}

extension Duration {
    /// Whole nanoseconds, 0 for a negative duration, saturating at UInt64.max.
    var nanosecondsClamped: UInt64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0, attoseconds >= 0 else { return 0 }
        let (whole, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? .max : whole.addingReportingOverflow(UInt64(attoseconds / 1_000_000_000)).partialValue
    }

    var dispatch: DispatchTimeInterval { .nanoseconds(Int(clamping: nanosecondsClamped)) }
}

/// The connections of one listener and what each is waiting for, with the decisions the
/// listener's limits and deadlines take. No I/O: the owner shuts down the sockets it is
/// told to, while it still holds the table (a socket leaves the table before
/// libmicrohttpd closes it, so a descriptor named here is never a reused one).
///
/// Invariant: the connections not `closing` never exceed `policy.maxConnections` after
/// `admit`, nor `maxConnectionsPerPeer` for one peer after `started`.
struct ConnectionTable {
    enum Phase: Equatable {
        /// Waiting for a request head: since accept, or since the previous answer of a
        /// kept-alive connection. Closed at `deadline`. Goes to `body`.
        case head(since: Tick, deadline: Tick)
        /// The head is in; the body (if any) must be in by `deadline`. Goes to `busy`.
        case body(deadline: Tick)
        /// Handled or answering: no deadline of ours (an answer has the idle timeout).
        /// Goes to `held` or to `head` when the request ends.
        case busy
        /// Parked, or sending an open stream: holds its slot for long, within the
        /// listener's `holdLimit`. No deadline of ours (a parked request carries its own).
        /// Goes to `head` when the request ends.
        case held
        /// Shut down by us; libmicrohttpd has not closed it yet. Final.
        case closing
    }

    struct Entry {
        let fd: Int32
        let peer: String?
        var phase: Phase
    }

    let policy: ListenerPolicy
    let headTimeout: Duration
    let bodyTimeout: Duration
    /// A kept-alive connection may idle this long before its next head's clock runs.
    let idleTimeout: Duration
    private let idleThenHeadTimeout: Duration
    private(set) var entries: [UInt: Entry] = [:]
    private(set) var closures: [ConnectionClosure: UInt64] = [:]
    /// The entries `held` now.
    private(set) var held = 0

    init(policy: ListenerPolicy, headTimeout: Duration, bodyTimeout: Duration, idleTimeout: Duration) {
        self.policy = policy
        self.headTimeout = headTimeout
        self.bodyTimeout = bodyTimeout
        self.idleTimeout = idleTimeout
        idleThenHeadTimeout = idleTimeout + headTimeout
    }

    var open: Int { entries.values.count { $0.phase != .closing } }

    enum Admission: Equatable {
        case accept
        /// Accept, after shutting down this connection that waited longest for its head.
        case acceptEvicting(fd: Int32)
        case refuse
    }

    /// A socket was accepted: take it, take it in place of the oldest connection still
    /// waiting for a head, or refuse it.
    mutating func admit() -> Admission {
        guard open >= policy.maxConnections else { return .accept }
        var oldest: (key: UInt, since: Tick)?
        for (key, entry) in entries {
            guard case .head(let since, _) = entry.phase else { continue }
            if oldest == nil || since < oldest!.since { oldest = (key, since) }
        }
        guard let oldest, let victim = entries[oldest.key] else {
            closures[.refused, default: 0] += 1
            return .refuse
        }
        entries[oldest.key]?.phase = .closing
        closures[.evicted, default: 0] += 1
        return .acceptEvicting(fd: victim.fd)
    }

    /// A connection began. Returns false when its peer is over its cap: shut it down.
    mutating func started(_ connection: UInt, fd: Int32, peer: String?, now: Tick) -> Bool {
        var phase = Phase.head(since: now, deadline: now + headTimeout)
        if let peer, let cap = policy.maxConnectionsPerPeer,
           entries.values.count(where: { $0.peer == peer && $0.phase != .closing }) >= cap {
            phase = .closing
            closures[.peerCap, default: 0] += 1
        }
        entries[connection] = Entry(fd: fd, peer: peer, phase: phase)
        return phase != .closing
    }

    mutating func headReceived(_ connection: UInt, now: Tick) {
        move(connection, to: .body(deadline: now + bodyTimeout))
    }

    mutating func bodyReceived(_ connection: UInt) {
        move(connection, to: .busy)
    }

    mutating func requestEnded(_ connection: UInt, now: Tick) {
        move(connection, to: .head(since: now, deadline: now + idleThenHeadTimeout))
    }

    mutating func closed(_ connection: UInt) {
        if entries.removeValue(forKey: connection)?.phase == .held { held -= 1 }
    }

    /// The request of `connection` is about to park or stream: takes one of the slots
    /// that may be held, or returns false when they are all taken (answer it 503). With
    /// `force` it is taken anyway: the request replaces a held one that is being
    /// answered (the count goes over by one until that one's answer is sent).
    mutating func hold(_ connection: UInt, force: Bool = false) -> Bool {
        guard let index = entries.index(forKey: connection), entries.values[index].phase == .busy else { return true }
        guard force || held < policy.holdLimit else { return false }
        entries.values[index].phase = .held
        held += 1
        return true
    }

    /// The connections past their head or body deadline, now `closing`: shut them down.
    mutating func expire(now: Tick) -> [Int32] {
        var expired: [Int32] = []
        for (key, entry) in entries {
            switch entry.phase {
            case .head(_, let deadline), .body(let deadline):
                guard deadline <= now else { continue }
                entries[key]?.phase = .closing
                expired.append(entry.fd)
                if case .head = entry.phase {
                    closures[.headDeadline, default: 0] += 1
                } else {
                    closures[.bodyDeadline, default: 0] += 1
                }
            case .busy, .held, .closing:
                continue
            }
        }
        return expired
    }

    /// The connections in the middle of a body whose client has gone (`gone` says so of a
    /// socket), now `closing`: shut them down.
    mutating func abandoned(gone: (Int32) -> Bool) -> [Int32] {
        var closed: [Int32] = []
        for (key, entry) in entries {
            guard case .body = entry.phase, gone(entry.fd) else { continue }
            entries[key]?.phase = .closing
            closures[.abandoned, default: 0] += 1
            closed.append(entry.fd)
        }
        return closed
    }

    /// The connections waiting for a head for `idle` or longer, now `closing`: shut them
    /// down (the listeners are being handed over, and these clients send nothing).
    mutating func closeIdle(for idle: Duration, now: Tick) -> [Int32] {
        var closed: [Int32] = []
        for (key, entry) in entries {
            guard case .head(let since, _) = entry.phase, since + idle <= now else { continue }
            entries[key]?.phase = .closing
            closed.append(entry.fd)
        }
        return closed
    }

    private mutating func move(_ connection: UInt, to phase: Phase) {
        guard let index = entries.index(forKey: connection), entries.values[index].phase != .closing else { return }
        if entries.values[index].phase == .held { held -= 1 }
        entries.values[index].phase = phase
    }
}
