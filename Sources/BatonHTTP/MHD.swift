import CMicroHTTPD
import Dispatch
import Foundation
import Glibc
import Logging
import Synchronization

// The only Swift file that talks to libmicrohttpd. Everything here runs on a daemon's
// polling thread except `Pending.answer` (any thread), which only resumes a connection.

/// An HTTP server over libmicrohttpd: one daemon (one polling thread, epoll) per
/// listening socket, all serving the same router.
public final class HTTPServer: Sendable {
    public struct Configuration: Sendable {
        /// Request bodies larger than this get 413, decided from Content-Length before reading.
        public var maxBodyBytes = 1 << 20
        /// Connections over this limit are refused by libmicrohttpd (it defaults to 1020).
        public var connectionLimit: UInt32 = 1000
        /// Idle connections are closed after this many seconds (libmicrohttpd defaults to never).
        public var connectionTimeoutSeconds: UInt32 = 30
        /// Per-connection memory for headers and I/O buffers. libmicrohttpd zeroes this pool
        /// after every request, so it is a per-request cost: 32 KiB (its default) holds any
        /// sane head; bodies are gathered outside it.
        public var connectionMemoryLimit = 32 * 1024

        public init() {}
    }

    /// Called once per answered request, for metrics; `route` is nil when none matched.
    public typealias Observer = @Sendable (_ route: Route?, _ method: String, _ status: Int) -> Void

    let configuration: Configuration
    let router: Router
    let admission: Admission
    let observer: Observer
    let logger: Logger
    let deadlines = DispatchQueue(label: "baton.http.deadlines")

    private let daemons = Mutex<[DaemonContext]>([])
    private let parked = Mutex<[ObjectIdentifier: Pending]>([:])
    private let openExchanges = Atomic<Int>(0)
    private let drained = DispatchSemaphore(value: 0)
    let draining = Atomic<Bool>(false)

    public init(configuration: Configuration = .init(), router: Router,
                admission: @escaping Admission = { _ in nil },
                observer: @escaping Observer = { _, _, _ in },
                logger: Logger) {
        self.configuration = configuration
        self.router = router
        self.admission = admission
        self.observer = observer
        self.logger = logger
    }

    /// Starts serving on `listener`. The server takes no ownership of the socket:
    /// the caller closes it (and unlinks a socket file) after `shutdown`.
    public func serve(_ listener: Listener) throws(ListenerError) {
        let context = DaemonContext(server: self, isUnix: listener.isUnix)
        let flags = MHD_USE_INTERNAL_POLLING_THREAD.rawValue | MHD_USE_EPOLL.rawValue
            | MHD_ALLOW_SUSPEND_RESUME.rawValue
        guard let daemon = baton_mhd_start(
            flags, listener.fd, accessHandler, Unmanaged.passUnretained(context).toOpaque(),
            completedHandler, configuration.connectionLimit, configuration.connectionTimeoutSeconds,
            configuration.connectionMemoryLimit)
        else {
            throw ListenerError(message: "libmicrohttpd could not start on \(listener.description)", errno: errno)
        }
        context.daemon.withLock { $0 = UInt(bitPattern: daemon) }
        daemons.withLock { $0.append(context) }
    }

    /// Number of parked requests (long-polls) right now.
    public var parkedCount: Int { parked.withLock { $0.count } }

    /// Stops accepting, answers every parked request with its deadline answer, waits up to
    /// `grace` for answers in flight to be sent, then stops every daemon.
    public func shutdown(grace: Duration = .seconds(5)) {
        guard !draining.exchange(true, ordering: .sequentiallyConsistent) else { return }
        let contexts = daemons.withLock { $0 }
        for context in contexts {
            // Quiescing hands the listening socket back; the listener's owner closes it.
            if let daemon = context.daemonPointer { _ = MHD_quiesce_daemon(daemon) }
        }
        for pending in parked.withLock({ Array($0.values) }) {
            pending.expire()
        }
        let deadline = DispatchTime.now() + .nanoseconds(Int(grace.components.seconds * 1_000_000_000
            + grace.components.attoseconds / 1_000_000_000))
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

    // MARK: - Bookkeeping shared by exchanges

    func opened() { openExchanges.add(1, ordering: .sequentiallyConsistent) }

    func closed() {
        let left = openExchanges.subtract(1, ordering: .sequentiallyConsistent).newValue
        if left == 0 && draining.load(ordering: .sequentiallyConsistent) { drained.signal() }
    }

    func remember(_ pending: Pending) {
        parked.withLock { $0[ObjectIdentifier(pending)] = pending }
    }

    func forget(_ pending: Pending) {
        _ = parked.withLock { $0.removeValue(forKey: ObjectIdentifier(pending)) }
    }
}

/// What a daemon's callbacks get as their closure argument.
final class DaemonContext: Sendable {
    let server: HTTPServer
    let isUnix: Bool
    /// The `MHD_Daemon*`, as an integer so the context stays Sendable; 0 once stopped.
    let daemon = Mutex<UInt>(0)

    init(server: HTTPServer, isUnix: Bool) {
        self.server = server
        self.isUnix = isUnix
    }

    var daemonPointer: OpaquePointer? { OpaquePointer(bitPattern: daemon.withLock { $0 }) }
}

// MARK: - Callbacks

private let accessHandler: MHD_AccessHandlerCallback = { cls, connection, url, method, _, uploadData, uploadDataSize, conCls in
    guard let cls, let connection, let conCls, let uploadDataSize else { return .NO }
    if let existing = conCls.pointee {
        let exchange = Unmanaged<Exchange>.fromOpaque(existing).takeUnretainedValue()
        return exchange.proceed(uploadData: uploadData, size: uploadDataSize)
    }
    let context = Unmanaged<DaemonContext>.fromOpaque(cls).takeUnretainedValue()
    let exchange = Exchange(server: context.server, connection: connection, isUnix: context.isUnix)
    conCls.pointee = Unmanaged.passRetained(exchange).toOpaque()
    context.server.opened()
    return exchange.begin(method: method.map { String(cString: $0) } ?? "",
                          path: url.map { String(cString: $0) } ?? "/")
}

private let completedHandler: MHD_RequestCompletedCallback = { _, _, conCls, _ in
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
    let connection: OpaquePointer
    let isUnix: Bool
    private var request: Request?
    private var body: [UInt8] = []
    private var answered = false
    private var tooLarge = false
    private var pending: Pending?
    /// An error decided from the head of a request without a body, answered at the final call.
    private var refusal: Response?
    /// For metrics: the matched route (nil for none) and the method as sent.
    private var route: Route?
    private var method = ""

    init(server: HTTPServer, connection: OpaquePointer, isUnix: Bool) {
        self.server = server
        self.connection = connection
        self.isUnix = isUnix
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
        case .found(let route, let parameters):
            self.route = route
            var request = Request(method: method, path: path, route: route, parameters: parameters,
                                  peer: peer(), exchange: self)
            if let refusal = server.admission(&request) {
                return refuse(refusal)
            }
            let limit = server.configuration.maxBodyBytes
            if let length, length > limit {
                return refuse(.payloadTooLarge(limit: limit))
            }
            if let length, length > 0, !route.takesBody {
                return refuse(.bodyNotAllowed)
            }
            if hasBody && route.takesBody {
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
    }

    /// Later calls: body chunks, then the final call (size 0), or the call after a resume.
    func proceed(uploadData: UnsafePointer<CChar>?, size: UnsafeMutablePointer<Int>) -> MHD_Result {
        if size.pointee > 0 {
            if !answered && !tooLarge, let uploadData {
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
        if let pending {
            return deliver(pending)
        }
        if answered { return .YES }
        if let refusal { return queue(refusal) }
        if tooLarge {
            return queue(HTTPError.payloadTooLarge(limit: server.configuration.maxBodyBytes).response)
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
            if server.draining.load(ordering: .relaxed) { pending.expire() }
            return deliver(pending)
        }
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

    func park(deadline: Duration, onDeadline: @escaping @Sendable () -> Response) -> Pending {
        precondition(pending == nil, "a request can be parked once")
        let address = UInt(bitPattern: connection)
        let server = self.server
        let pending = Pending(
            onDeadline: onDeadline,
            resume: { MHD_resume_connection(OpaquePointer(bitPattern: address)) },
            forget: { server.forget($0) })
        self.pending = pending
        server.remember(pending)
        let nanoseconds = deadline.components.seconds * 1_000_000_000 + deadline.components.attoseconds / 1_000_000_000
        server.deadlines.asyncAfter(deadline: .now() + .nanoseconds(Int(max(0, nanoseconds)))) { [weak pending] in
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
        server.observer(route, method, response.status)
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
        guard isUnix else { return .tcp }
        let fd = baton_mhd_connection_fd(connection)
        var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
        guard fd >= 0, baton_peer_credentials(fd, &pid, &uid, &gid) == 0 else { return .unix(nil) }
        return .unix(PeerCredentials(pid: pid, uid: uid, gid: gid))
    }
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
