import CMicroHTTPD
import Dispatch
import Foundation
import Glibc
import Logging
import Synchronization

// The only Swift file that talks to libmicrohttpd. Everything here runs on a daemon's
// polling thread except `Pending.answer` and `OpenStream.poke` (any thread), which only
// resume a connection.

/// An HTTP server over libmicrohttpd: one daemon (one polling thread, epoll) per
/// listening socket, all serving the same router.
public final class HTTPServer: Sendable {
    public struct Configuration: Sendable {
        /// Request bodies larger than this get 413, decided from Content-Length before reading.
        public var maxBodyBytes = 1 << 20
        /// A listener's connection limit when `serve` is given no policy.
        public var connectionLimit: UInt32 = 1000
        /// Idle connections are closed after this many seconds (libmicrohttpd defaults to never).
        public var connectionTimeoutSeconds: UInt32 = 30
        /// A request head must be complete this long after the connection was accepted
        /// (or, on a kept-alive connection, after the idle timeout that follows an answer).
        /// libmicrohttpd's own timeout is reset by every byte, so a client trickling its
        /// head would otherwise hold its slot for ever.
        public var requestHeadTimeout: Duration = .seconds(10)
        /// A request body must be complete this long after its head.
        public var requestBodyTimeout: Duration = .seconds(30)
        /// Per-connection memory for headers and I/O buffers. libmicrohttpd zeroes this pool
        /// after every request, so it is a per-request cost: 32 KiB (its default) holds any
        /// sane head; bodies are gathered outside it.
        public var connectionMemoryLimit = 32 * 1024
        /// Most streamed answers (`Reply.stream`) open at once, over every listener; one
        /// more is answered 503 `too_many_streams`.
        public var maxStreams = 2000
        /// Every open stream sends its source's keepalive bytes this often.
        public var streamKeepalive: Duration = .seconds(15)

        public init() {}
    }

    /// Called once per answered request, for metrics; `route` is nil when none matched;
    /// `duration` runs from the request's head received to its answer queued (a parked
    /// request's wait included).
    public typealias Observer = @Sendable (_ route: Route?, _ method: String, _ status: Int, _ duration: Duration) -> Void

    let configuration: Configuration
    let router: Router
    let admission: Admission
    let observer: Observer
    let logger: Logger
    let deadlines = DispatchQueue(label: "baton.http.deadlines")

    private let daemons = Mutex<[DaemonContext]>([])
    private let parked = Mutex(ParkedRequests())
    /// The streamed answers in flight. The lock is held while their sockets are peeked.
    private let streams = Mutex<[ObjectIdentifier: OpenStream]>([:])
    /// Closes connections past their head or body deadline, and ticks the streams'
    /// keepalives; started by the first `serve`.
    private let sweeper = Mutex<[any DispatchSourceTimer]>([])
    private let openExchanges = Atomic<Int>(0)
    private let drained = DispatchSemaphore(value: 0)
    let draining = Atomic<Bool>(false)
    /// Set while the listeners are handed over (`handOver`): every answer closes its
    /// connection, so clients reconnect to whoever accepts next.
    let handingOver = Atomic<Bool>(false)

    public init(configuration: Configuration = .init(), router: Router,
                admission: @escaping Admission = { _ in nil },
                observer: @escaping Observer = { _, _, _, _ in },
                logger: Logger) {
        self.configuration = configuration
        self.router = router
        self.admission = admission
        self.observer = observer
        self.logger = logger
    }

    /// Starts serving on `listener` under `policy` (by default every route, up to the
    /// configuration's connection limit). The server takes no ownership of the socket:
    /// the caller closes it (and unlinks a socket file) after `shutdown`.
    public func serve(_ listener: Listener, policy: ListenerPolicy? = nil) throws(ListenerError) {
        let policy = policy ?? ListenerPolicy(maxConnections: Int(configuration.connectionLimit))
        let table = ConnectionTable(policy: policy, headTimeout: configuration.requestHeadTimeout,
                                    bodyTimeout: configuration.requestBodyTimeout,
                                    idleTimeout: .seconds(Int64(configuration.connectionTimeoutSeconds)))
        let context = DaemonContext(server: self, listener: listener, table: table)
        let flags = MHD_USE_INTERNAL_POLLING_THREAD.rawValue | MHD_USE_EPOLL.rawValue
            | MHD_ALLOW_SUSPEND_RESUME.rawValue
        // At its own limit libmicrohttpd stops accepting and clients hang in the backlog:
        // give it room above ours, so that ours decides and refuses at once.
        let hardLimit = UInt32(clamping: policy.maxConnections + max(64, policy.maxConnections / 4))
        guard let daemon = baton_mhd_start(
            flags, listener.fd, acceptPolicy, accessHandler, Unmanaged.passUnretained(context).toOpaque(),
            completedHandler, connectionNotice, hardLimit, configuration.connectionTimeoutSeconds,
            configuration.connectionMemoryLimit)
        else {
            throw ListenerError(message: "libmicrohttpd could not start on \(listener.description)", errno: errno)
        }
        context.daemon.withLock { $0 = UInt(bitPattern: daemon) }
        daemons.withLock { $0.append(context) }
        startSweeping()
    }

    /// Number of parked requests (long-polls) right now.
    public var parkedCount: Int { parked.withLock { $0.all.count } }

    /// Number of streamed answers (Server-Sent Events) open right now.
    public var streamCount: Int { streams.withLock { $0.count } }

    /// Tells every open stream that its source may have more to say (it asks it). The
    /// streams are woken from the server's own queue: the caller (the ledger's writer,
    /// whose next acknowledgements wait for it) never waits for a thousand resumes.
    public func wakeStreams() {
        deadlines.async { [self] in
            for stream in streams.withLock({ Array($0.values) }) { stream.poke(.news) }
        }
    }

    /// Each listener served, in the order served: its connections now and those closed
    /// by its limits and deadlines.
    public var listenerStats: [ListenerStats] {
        daemons.withLock { $0 }.map { context in
            context.table.withLock { ListenerStats(listener: context.listener, open: $0.open, closed: $0.closures) }
        }
    }

    private func startSweeping() {
        sweeper.withLock { sweeper in
            guard sweeper.isEmpty else { return }
            let shortest = min(configuration.requestHeadTimeout, configuration.requestBodyTimeout)
            let interval = max(Duration.milliseconds(50), min(shortest / 4, .seconds(1)))
            let timer = DispatchSource.makeTimerSource(queue: deadlines)
            timer.schedule(deadline: .now() + interval.dispatch, repeating: interval.dispatch, leeway: .milliseconds(10))
            timer.setEventHandler { [weak self] in self?.closeOverdue() }
            timer.resume()
            let keepalive = DispatchSource.makeTimerSource(queue: deadlines)
            let every = configuration.streamKeepalive.dispatch
            keepalive.schedule(deadline: .now() + every, repeating: every, leeway: .milliseconds(10))
            keepalive.setEventHandler { [weak self] in
                for stream in self?.streams.withLock({ Array($0.values) }) ?? [] { stream.poke(.keepalive) }
            }
            keepalive.resume()
            sweeper = [timer, keepalive]
        }
    }

    /// Shuts down every connection past its head or body deadline, and every one whose
    /// client left in the middle of a body: libmicrohttpd then reads end-of-file and
    /// closes it on its own thread. (Its edge-triggered epoll can miss a client's end of
    /// file that comes while its read buffer is full: an upload cut short would otherwise
    /// hold its temporary file until the body deadline.) Under the table's lock, which
    /// libmicrohttpd takes before it closes a socket, so no descriptor is reused meanwhile.
    private func closeOverdue() {
        let now = Tick.now
        for context in daemons.withLock({ $0 }) {
            let closed = context.table.withLock { table in
                let overdue = table.expire(now: now) + table.abandoned(gone: Self.peerClosed)
                for fd in overdue { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
                return overdue.count
            }
            if closed > 0 {
                logger.debug("closed connections past their request deadline", metadata: ["count": "\(closed)"])
            }
        }
        // A suspended stream's connection is out of libmicrohttpd's sight: a client that
        // left is seen here (a peek reads end of file) and its stream dropped. Peeked under
        // the streams' lock, which a stream's end takes before libmicrohttpd closes its
        // socket (so no descriptor is reused meanwhile); poked after it.
        let gone = streams.withLock { $0.values.filter { Self.peerClosed($0.fd) } }
        for stream in gone { stream.poke(.end(.abort)) }
    }

    /// Whether the client of `fd` closed its side and everything it sent was read: a
    /// peek finds end of file.
    private static func peerClosed(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) == 0
    }

    /// Stops accepting, answers every parked request with its deadline answer, waits up to
    /// `grace` for answers in flight to be sent, then stops every daemon.
    public func shutdown(grace: Duration = .seconds(5)) {
        guard !draining.exchange(true, ordering: .sequentiallyConsistent) else { return }
        sweeper.withLock { for timer in $0 { timer.cancel() } }
        let contexts = daemons.withLock { $0 }
        for context in contexts {
            // Quiescing hands the listening socket back; the listener's owner closes it.
            if let daemon = context.daemonPointer { _ = MHD_quiesce_daemon(daemon) }
        }
        for pending in parked.withLock({ Array($0.all.values) }) {
            pending.expire()
        }
        endStreams()
        let deadline = DispatchTime.now() + grace.dispatch
        while openExchanges.load(ordering: .sequentiallyConsistent) > 0 {
            if drained.wait(timeout: deadline) == .timedOut {
                logger.warning("shutdown grace ended with requests still open",
                               metadata: ["open": "\(openExchanges.load(ordering: .relaxed))"])
                break
            }
        }
        for context in contexts {
            if let daemon = context.daemonPointer { MHD_stop_daemon(daemon) }
            context.daemon.withLock { $0 = 0 }
        }
    }

    // MARK: - Handing the listeners over

    /// Stops serving while keeping every listening socket open, for a successor that
    /// accepts on the same sockets (batond's re-exec): connections that arrive meanwhile
    /// wait in the kernel's backlog, never refused. Quiesces each daemon, answers every
    /// parked request with its deadline answer, answers whatever else comes with
    /// `Connection: close`, closes connections idle for 100 ms, and waits up to `grace`
    /// for every connection to close before stopping the daemons.
    /// The caller owns the sockets, as before; `resumeServing` undoes this. Returns false,
    /// doing nothing, when the server is shutting down or handing over already.
    public func handOver(grace: Duration) -> Bool {
        guard !draining.load(ordering: .sequentiallyConsistent),
              !handingOver.exchange(true, ordering: .sequentiallyConsistent) else { return false }
        let contexts = daemons.withLock { $0 }
        for context in contexts {
            if let daemon = context.daemonPointer { _ = MHD_quiesce_daemon(daemon) }
        }
        for pending in parked.withLock({ Array($0.all.values) }) {
            pending.expire()
        }
        endStreams()
        // A connection answered just before the quiesce sends its next request at once and
        // gets `Connection: close`; one that stays silent this long is idle: closing it
        // cannot cut a request short.
        let idle = Duration.milliseconds(100)
        let deadline = ContinuousClock.now + grace
        while ContinuousClock.now < deadline {
            let now = Tick.now
            var open = 0
            for context in contexts {
                open += context.table.withLock { table in
                    for fd in table.closeIdle(for: idle, now: now) { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
                    return table.open
                }
            }
            if open == 0 && openExchanges.load(ordering: .sequentiallyConsistent) == 0 { break }
            // Connections close on libmicrohttpd's threads, which signal nothing here: poll.
            Thread.sleep(forTimeInterval: 0.002)
        }
        let left = contexts.reduce(0) { total, context in total + context.table.withLock { $0.open } }
        if left > 0 {
            logger.info("closing idle connections to hand the listeners over", metadata: ["open": "\(left)"])
        }
        for context in contexts {
            if let daemon = context.daemonPointer { MHD_stop_daemon(daemon) }
            context.daemon.withLock { $0 = 0 }
        }
        daemons.withLock { $0.removeAll() }
        return true
    }

    /// Serves again on the listeners a `handOver` stopped serving (the successor never
    /// came: batond's exec failed).
    public func resumeServing(_ listeners: [(Listener, ListenerPolicy)]) throws(ListenerError) {
        handingOver.store(false, ordering: .sequentiallyConsistent)
        for (listener, policy) in listeners {
            try serve(listener, policy: policy)
        }
    }

    // MARK: - Bookkeeping shared by exchanges

    func opened() { openExchanges.add(1, ordering: .sequentiallyConsistent) }

    func closed() {
        let left = openExchanges.subtract(1, ordering: .sequentiallyConsistent).newValue
        if left == 0 && draining.load(ordering: .sequentiallyConsistent) { drained.signal() }
    }

    /// Takes a parked request in, within its group's limit: past it, throws 503
    /// `too_many_waiters`, or answers the group's oldest to make room. A limited request
    /// (a long-poll) also takes one of the slots its listener lets be held (`hold`, forced
    /// when it replaces the group's oldest); when none is left, throws 503
    /// `too_many_waiters` too, unless the request is the first of a displacing group (one
    /// client's polls) and another such group has two or more parked on the listener: the
    /// oldest of those is answered, so that every client keeps one. One without a limit
    /// (a report being processed, answered in moments) holds no slot.
    func remember(_ pending: Pending, limit: ParkLimit?, hold: (_ force: Bool) -> Bool) throws(HTTPError) {
        let displaced: Pending? = try parked.withLock { (parked) throws(HTTPError) -> Pending? in
            var displaced: Pending?
            if let limit {
                var members = parked.groups[limit.group, default: []]
                if members.count >= limit.most {
                    switch limit.overflow {
                    case .refuse: throw HTTPError.tooManyWaiters(limit.group)
                    case .answerOldest: displaced = members.isEmpty ? nil : members.removeFirst()
                    }
                }
                // The table's lock inside the parked one: nothing takes them the other way round.
                var held = hold(displaced != nil)
                if !held, limit.overflow == .answerOldest, members.isEmpty,
                   let spare = parked.takeSpare(on: pending.listener) {
                    // Every slot is taken, and this client has none: one that has two gives one up.
                    displaced = spare
                    held = hold(true)
                }
                guard held else { throw HTTPError.tooManyWaiters("this listener's slots for waiting") }
                members.append(pending)
                parked.groups[limit.group] = members
                if limit.overflow == .answerOldest { parked.displacing.insert(limit.group) }
            }
            parked.all[ObjectIdentifier(pending)] = pending
            return displaced
        }
        displaced?.expire()
    }

    /// Takes a new stream in, within `maxStreams` and within the slots its listener lets
    /// be held (`hold`): past either, throws 503 `too_many_streams`.
    func admit(_ stream: OpenStream, hold: () -> Bool) throws(HTTPError) {
        try streams.withLock { (streams) throws(HTTPError) in
            guard streams.count < configuration.maxStreams, hold() else { throw HTTPError.tooManyStreams }
            streams[ObjectIdentifier(stream)] = stream
        }
    }

    /// The stream's request ended (its client left, or its body was ended).
    func ended(_ stream: OpenStream) {
        _ = streams.withLock { $0.removeValue(forKey: ObjectIdentifier(stream)) }
    }

    /// Ends every open stream properly (the server stops serving): each client reads the
    /// end of the body, and reconnects to whoever serves next.
    private func endStreams() {
        for stream in streams.withLock({ Array($0.values) }) { stream.poke(.end(.finish)) }
    }

    func forget(_ pending: Pending, group: String?) {
        parked.withLock { parked in
            parked.all[ObjectIdentifier(pending)] = nil
            guard let group, var members = parked.groups[group] else { return }
            members.removeAll { $0 === pending }
            parked.groups[group] = members.isEmpty ? nil : members
            if members.isEmpty { parked.displacing.remove(group) }
        }
    }
}

/// Every parked request, and the members of each limited group, oldest first.
struct ParkedRequests {
    var all: [ObjectIdentifier: Pending] = [:]
    var groups: [String: [Pending]] = [:]
    /// The groups whose overflow answers their oldest (one client's polls, of which a
    /// second one is spare).
    var displacing: Set<String> = []

    /// Takes out of its group the oldest request parked on `listener` of a displacing
    /// group with two or more parked (its client keeps the others), if there is one.
    mutating func takeSpare(on listener: ObjectIdentifier) -> Pending? {
        for group in displacing {
            guard var members = groups[group], members.count >= 2,
                  let index = members.firstIndex(where: { $0.listener == listener }) else { continue }
            let spare = members.remove(at: index)
            groups[group] = members
            return spare
        }
        return nil
    }
}


/// What a daemon's callbacks get as their closure argument.
final class DaemonContext: Sendable {
    let server: HTTPServer
    /// The listener's description, e.g. `unix:/run/baton/batond.sock`.
    let listener: String
    let isUnix: Bool
    let policy: ListenerPolicy
    /// This listener's connections; the lock is held while a socket is shut down.
    let table: Mutex<ConnectionTable>
    /// The `MHD_Daemon*`, as an integer so the context stays Sendable; 0 once stopped.
    let daemon = Mutex<UInt>(0)

    init(server: HTTPServer, listener: Listener, table: ConnectionTable) {
        self.server = server
        self.listener = listener.description
        self.isUnix = listener.isUnix
        self.policy = table.policy
        self.table = Mutex(table)
    }

    var daemonPointer: OpaquePointer? { OpaquePointer(bitPattern: daemon.withLock { $0 }) }
}

// MARK: - Callbacks

// The accept policy and the connection notices run on the daemon's thread, the accept
// policy just before the notice that the connection started.

private let acceptPolicy: MHD_AcceptPolicyCallback = { cls, _, _ in
    guard let cls else { return .NO }
    let context = Unmanaged<DaemonContext>.fromOpaque(cls).takeUnretainedValue()
    return context.table.withLock { table -> MHD_Result in
        switch table.admit() {
        case .accept:
            return .YES
        case .acceptEvicting(let fd):
            Glibc.shutdown(fd, Int32(SHUT_RDWR))
            return .YES
        case .refuse:
            return .NO
        }
    }
}

private let connectionNotice: MHD_NotifyConnectionCallback = { cls, connection, _, event in
    guard let cls, let connection else { return }
    let context = Unmanaged<DaemonContext>.fromOpaque(cls).takeUnretainedValue()
    let key = UInt(bitPattern: connection)
    switch event {
    case .CONNECTION_NOTIFY_STARTED:
        let fd = baton_mhd_connection_fd(connection)
        var peer: String?
        if context.isUnix, context.policy.maxConnectionsPerPeer != nil, let credentials = peerCredentials(fd) {
            peer = context.policy.peerKey(credentials)
        }
        context.table.withLock { table in
            if !table.started(key, fd: fd, peer: peer, now: .now) { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
        }
    case .CONNECTION_NOTIFY_CLOSED:
        context.table.withLock { $0.closed(key) }
    default:
        break
    }
}

private let accessHandler: MHD_AccessHandlerCallback = { cls, connection, url, method, _, uploadData, uploadDataSize, conCls in
    guard let cls, let connection, let conCls, let uploadDataSize else { return .NO }
    if let existing = conCls.pointee {
        let exchange = Unmanaged<Exchange>.fromOpaque(existing).takeUnretainedValue()
        return exchange.proceed(uploadData: uploadData, size: uploadDataSize)
    }
    let context = Unmanaged<DaemonContext>.fromOpaque(cls).takeUnretainedValue()
    context.table.withLock { $0.headReceived(UInt(bitPattern: connection), now: .now) }
    let exchange = Exchange(context: context, connection: connection)
    conCls.pointee = Unmanaged.passRetained(exchange).toOpaque()
    context.server.opened()
    return exchange.begin(method: method.map { String(cString: $0) } ?? "",
                          path: url.map { String(cString: $0) } ?? "/")
}

private let completedHandler: MHD_RequestCompletedCallback = { cls, connection, conCls, _ in
    if let cls, let connection {
        let context = Unmanaged<DaemonContext>.fromOpaque(cls).takeUnretainedValue()
        context.table.withLock { $0.requestEnded(UInt(bitPattern: connection), now: .now) }
    }
    guard let conCls, let raw = conCls.pointee else { return }
    conCls.pointee = nil
    let exchange = Unmanaged<Exchange>.fromOpaque(raw).takeRetainedValue()
    exchange.finish()
    exchange.server.closed()
}

// MARK: - One request

/// The state of one request across libmicrohttpd's calls. Touched only on its daemon's
/// polling thread; the one cross-thread part, the parked answer, lives in `Pending`.
final class Exchange {
    let server: HTTPServer
    let context: DaemonContext
    let connection: OpaquePointer
    private var request: Request?
    private var body: [UInt8] = []
    private var answered = false
    private var tooLarge = false
    private var pending: Pending?
    /// The streamed answer being sent, if the route streams one.
    private var stream: OpenStream?
    /// A streamed body's sink, the bytes it took, and why it stopped taking them.
    private var sink: (any BodySink)?
    private var streamedBytes = 0
    private var sinkFailure: HTTPError?
    /// An error decided from the head of a request without a body, answered at the final call.
    private var refusal: Response?
    /// For metrics: the matched route (nil for none) and the method as sent.
    private var route: Route?
    private var method = ""
    private let received = ContinuousClock.now

    init(context: DaemonContext, connection: OpaquePointer) {
        self.server = context.server
        self.context = context
        self.connection = connection
    }

    /// First call: headers only. Routes and admits. An answer queued now makes
    /// libmicrohttpd close the connection afterwards, so only a refusal of a request
    /// that still has a body to send (401, 413, …) is answered here: the body is never
    /// read. Everything else is answered from the final call, keeping the connection alive.
    func begin(method: String, path: String) -> MHD_Result {
        self.method = method
        let length = lookup(header: "Content-Length").flatMap { Int($0.trimmedOfSpaces) }
        let chunked = lookup(header: "Transfer-Encoding")?.lowercased().contains("chunked") ?? false
        let hasBody = (length ?? 0) > 0 || chunked
        func refuse(_ error: HTTPError) -> MHD_Result {
            if hasBody { return queue(error.response) }
            refusal = error.response
            return .YES
        }
        if server.draining.load(ordering: .relaxed) {
            return refuse(.shuttingDown)
        }
        switch server.router.match(method: method, path: path) {
        case .notFound:
            return refuse(.notFound(path))
        case .wrongMethod(let allowed):
            return refuse(.methodNotAllowed(method, allowed: allowed))
        case .found(let route, _) where context.policy.scopes.map({ !$0.contains(route.scope) }) ?? false:
            return refuse(.notFound(path))
        case .found(let route, let parameters):
            self.route = route
            var request = Request(method: method, path: path, route: route, parameters: parameters,
                                  peer: peer(), exchange: self)
            if let refusal = server.admission(&request) {
                return refuse(refusal)
            }
            let limit = route.streamed?.maxBytes ?? server.configuration.maxBodyBytes
            if let length, length > limit {
                return refuse(.payloadTooLarge(limit: limit))
            }
            if let length, length > 0, !route.takesBody {
                return refuse(.bodyNotAllowed)
            }
            if let streamed = route.streamed {
                // Opened before any of the body is read, so the route can refuse it whole.
                do { sink = try streamed.open(request) } catch { return refuse(error) }
            } else if hasBody && route.takesBody {
                let type = lookup(header: "Content-Type")
                let mediaType = type?.split(separator: ";").first.map { String($0).trimmedOfSpaces.lowercased() }
                guard mediaType == "application/json" else {
                    return refuse(.unsupportedMediaType(type))
                }
            }
            self.request = request
            return .YES
        }
    }

    /// The request ended (answered, or the client left mid-body): drop the request,
    /// which refers back to this exchange.
    func finish() {
        request = nil
        body = []
        sink = nil
        if let stream = stream.take() { server.ended(stream) }
    }

    /// Later calls: body chunks, then the final call (size 0), or the call after a resume.
    func proceed(uploadData: UnsafePointer<CChar>?, size: UnsafeMutablePointer<Int>) -> MHD_Result {
        if size.pointee > 0 {
            if !answered && !tooLarge, let uploadData, let sink {
                // Past a failure the rest of the body is read and dropped.
                if sinkFailure == nil, let limit = request?.route.streamed?.maxBytes {
                    streamedBytes += size.pointee
                    do throws(HTTPError) {
                        guard streamedBytes <= limit else { throw HTTPError.payloadTooLarge(limit: limit) }
                        try sink.write(UnsafeRawBufferPointer(start: uploadData, count: size.pointee))
                    } catch {
                        sinkFailure = error
                    }
                }
            } else if !answered && !tooLarge, let uploadData {
                if body.count + size.pointee > server.configuration.maxBodyBytes {
                    // Chunked bodies have no length to refuse up front: stop keeping them.
                    tooLarge = true
                    body = []
                } else {
                    uploadData.withMemoryRebound(to: UInt8.self, capacity: size.pointee) {
                        body.append(contentsOf: UnsafeBufferPointer(start: $0, count: size.pointee))
                    }
                }
            }
            size.pointee = 0
            return .YES
        }
        if !answered && pending == nil {
            context.table.withLock { $0.bodyReceived(UInt(bitPattern: connection)) }
        }
        if let pending {
            return deliver(pending)
        }
        if answered { return .YES }
        if let refusal { return queue(refusal) }
        if tooLarge {
            return queue(HTTPError.payloadTooLarge(limit: server.configuration.maxBodyBytes).response)
        }
        if let sinkFailure {
            return queue(sinkFailure.response)
        }
        // Taken out: a request refers to its exchange, so keeping it here would be a cycle.
        guard var request = self.request.take() else {
            return queue(HTTPError(status: 500, code: "internal", message: "lost request").response)
        }
        // A chunked body has no length to refuse up front: a route that takes none
        // refuses it here, once it is known not to be empty.
        if !request.route.takesBody && !body.isEmpty {
            return queue(HTTPError.bodyNotAllowed.response)
        }
        request.body = body
        request.sink = sink.take()
        body = []
        return dispatch(request)
    }

    private func dispatch(_ request: Request) -> MHD_Result {
        let reply: Reply
        do {
            reply = try request.route.handler(request)
        } catch {
            return queue(error.response)
        }
        switch reply {
        case .respond(let response):
            return queue(response)
        case .parked:
            guard let pending else {
                return queue(HTTPError(status: 500, code: "internal", message: "handler parked without a pending answer").response)
            }
            if server.draining.load(ordering: .relaxed) || server.handingOver.load(ordering: .relaxed) { pending.expire() }
            return deliver(pending)
        case .stream(let streamed):
            return open(streamed)
        }
    }

    /// Queues a body without end, which `OpenStream` writes as its source has something
    /// to say.
    private func open(_ streamed: StreamedResponse) -> MHD_Result {
        if server.draining.load(ordering: .relaxed) || server.handingOver.load(ordering: .relaxed) {
            return queue(HTTPError.shuttingDown.response)
        }
        let stream = OpenStream(source: streamed.source, connection: connection)
        let key = UInt(bitPattern: connection)
        do {
            try server.admit(stream) { [context] in context.table.withLock { $0.hold(key) } }
        } catch {
            return queue(error.response)
        }
        self.stream = stream
        answered = true
        // The response holds the stream until libmicrohttpd frees it (`streamFreed`).
        let held = Unmanaged.passRetained(stream)
        guard let response = MHD_create_response_from_callback(baton_mhd_size_unknown, 1024, streamReader,
                                                                held.toOpaque(), streamFreed)
        else {
            held.release()
            return .NO
        }
        defer { MHD_destroy_response(response) }
        for (name, value) in streamed.headers {
            _ = MHD_add_response_header(response, name, value)
        }
        // Counted when it opens (the stream's duration has no end to measure).
        server.observer(route, method, 200, ContinuousClock.now - received)
        return MHD_queue_response(connection, 200, response)
    }

    /// Queues the pending answer if there is one, or suspends the connection until there is.
    private func deliver(_ pending: Pending) -> MHD_Result {
        let connection = self.connection
        let response: Response? = pending.state.withLock { state in
            switch state {
            case .registering:
                MHD_suspend_connection(connection)
                state = .suspended
                return nil
            case .answered(let response):
                state = .delivered
                return response
            case .suspended, .delivered:
                return nil
            }
        }
        guard let response else { return .YES }
        return queue(response)
    }

    func park(deadline: Duration, limit: ParkLimit?, onDeadline: @escaping @Sendable () -> Response) throws(HTTPError) -> Pending {
        precondition(pending == nil, "a request can be parked once")
        let address = UInt(bitPattern: connection)
        let server = self.server
        let group = limit?.group
        let pending = Pending(
            listener: ObjectIdentifier(context),
            onDeadline: onDeadline,
            resume: { MHD_resume_connection(OpaquePointer(bitPattern: address)) },
            forget: { server.forget($0, group: group) })
        let context = self.context
        try server.remember(pending, limit: limit) { force in context.table.withLock { $0.hold(address, force: force) } }
        self.pending = pending
        server.deadlines.asyncAfter(deadline: .now() + deadline.dispatch) { [weak pending] in
            pending?.expire()
        }
        return pending
    }

    private func queue(_ response: Response) -> MHD_Result {
        answered = true
        let created: OpaquePointer? = response.body.withUnsafeBytes { bytes in
            MHD_create_response_from_buffer(bytes.count, UnsafeMutableRawPointer(mutating: bytes.baseAddress),
                                            .RESPMEM_MUST_COPY)
        }
        guard let mhdResponse = created else { return .NO }
        defer { MHD_destroy_response(mhdResponse) }
        for (name, value) in response.headers {
            _ = MHD_add_response_header(mhdResponse, name, value)
        }
        if server.handingOver.load(ordering: .relaxed) && !response.headers.contains(where: { $0.name == "Connection" }) {
            _ = MHD_add_response_header(mhdResponse, "Connection", "close")
        }
        server.observer(route, method, response.status, ContinuousClock.now - received)
        return MHD_queue_response(connection, UInt32(response.status), mhdResponse)
    }

    // MARK: - Connection facts

    func lookup(header name: String) -> String? {
        MHD_lookup_connection_value(connection, .HEADER_KIND, name).map { String(cString: $0) }
    }

    func lookup(query name: String) -> String? {
        MHD_lookup_connection_value(connection, .GET_ARGUMENT_KIND, name).map { String(cString: $0) }
    }

    private func peer() -> Peer {
        guard context.isUnix else { return .tcp }
        return .unix(peerCredentials(baton_mhd_connection_fd(connection)))
    }
}

// MARK: - Streamed answers

/// libmicrohttpd asks an open stream for more of its body, on the daemon's thread.
private let streamReader: MHD_ContentReaderCallback = { cls, _, buffer, max in
    guard let cls, let buffer else { return baton_mhd_reader_abort }
    return Unmanaged<OpenStream>.fromOpaque(cls).takeUnretainedValue().read(into: buffer, max: max)
}

private let streamFreed: MHD_ContentReaderFreeCallback = { cls in
    guard let cls else { return }
    Unmanaged<OpenStream>.fromOpaque(cls).release()
}

/// One streamed answer in flight: what its source gave that libmicrohttpd has not taken
/// yet, and what wakes its connection when it sleeps (suspended, holding no thread).
final class OpenStream: Sendable {
    let source: any StreamSource
    /// The connection's socket, peeked by the sweep to see a client that left.
    let fd: Int32
    /// The `MHD_Connection*`, as an integer so the stream stays Sendable.
    private let connection: UInt
    private let wakeups = Mutex(StreamWakeups())
    /// Bytes from the source not yet handed over, from `offset`. Only the daemon's
    /// thread touches them (the reader); the lock keeps the type Sendable.
    private let unsent = Mutex<(bytes: [UInt8], offset: Int)>(([], 0))

    init(source: any StreamSource, connection: OpaquePointer) {
        self.source = source
        self.connection = UInt(bitPattern: connection)
        self.fd = baton_mhd_connection_fd(connection)
    }

    /// Wakes the stream (from any thread): resumes its connection if it sleeps.
    func poke(_ poke: StreamWakeups.Poke) {
        let connection = self.connection
        wakeups.withLock { wakeups in
            if wakeups.poke(poke) { MHD_resume_connection(OpaquePointer(bitPattern: connection)) }
        }
    }

    /// Copies up to `max` bytes of the body into `buffer`; when there is nothing to
    /// send, suspends the connection (libmicrohttpd asks again once it is resumed) and
    /// returns 0. Always reads from the source, never from what woke it: records that
    /// came meanwhile are in what the source says.
    func read(into buffer: UnsafeMutablePointer<CChar>, max: Int) -> Int {
        while true {
            let copied = unsent.withLock { unsent -> Int in
                let count = min(max, unsent.bytes.count - unsent.offset)
                guard count > 0 else { return 0 }
                unsent.bytes.withUnsafeBytes { bytes in
                    UnsafeMutableRawPointer(buffer).copyMemory(from: bytes.baseAddress! + unsent.offset, byteCount: count)
                }
                unsent.offset += count
                if unsent.offset == unsent.bytes.count { unsent = ([], 0) }
                return count
            }
            if copied > 0 { return copied }
            let (ending, keepalive) = wakeups.withLock { $0.take() }
            switch ending {
            case .finish: return baton_mhd_reader_end
            case .abort: return baton_mhd_reader_abort
            case nil: break
            }
            var bytes = source.next()
            if keepalive { bytes += source.keepalive }
            if !bytes.isEmpty {
                unsent.withLock { $0 = (bytes, 0) }
                continue
            }
            let connection = self.connection
            let suspended = wakeups.withLock { wakeups -> Bool in
                guard wakeups.rest() else { return false }
                MHD_suspend_connection(OpaquePointer(bitPattern: connection))
                return true
            }
            if suspended { return 0 }
        }
    }
}

/// The kernel's word on who is at the other end of a Unix socket.
private func peerCredentials(_ fd: Int32) -> PeerCredentials? {
    var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
    guard fd >= 0, baton_peer_credentials(fd, &pid, &uid, &gid) == 0 else { return nil }
    return PeerCredentials(pid: pid, uid: uid, gid: gid)
}

extension String {
    /// Without leading and trailing spaces and tabs (Foundation's trimming is slow here).
    var trimmedOfSpaces: String {
        var text = Substring(self)
        while let first = text.first, first == " " || first == "\t" { text = text.dropFirst() }
        while let last = text.last, last == " " || last == "\t" { text = text.dropLast() }
        return String(text)
    }
}
