import BatonClient
import BatonWire
import Foundation
import Glibc

/// The agent side of the baton protocol, for Swift agents (see docs/agent-protocol.md).
///
/// batond starts an agent with `BATON_SOCKET` (or `BATON_URL`), `BATON_AGENT`,
/// `BATON_INSTANCE`, `BATON_TOKEN` and `BATON_VERSION` in its environment. The agent
/// checks itself, calls ``ready()``, and does no work until it holds ``Signal/go``;
/// then it blocks in ``waitForSignal(seen:wait:)`` until ``Signal/stop``, finishes
/// its work, calls ``stopped()`` and exits 0.
///
/// ```swift
/// let baton = try BatonAgent()
/// var signal = try baton.ready()
/// while signal != .stop {
///     if signal == .go { startWorking() }
///     signal = try baton.waitForSignal(seen: signal)
/// }
/// finishWork()
/// try baton.stopped()
/// exit(0)
/// ```
///
/// While batond is away (restarting, upgrading, killed) the calls keep retrying with
/// ``RetryPolicy`` and the agent goes on under the signal it holds; a `401`/`404`
/// (``BatonAgentError/isUnknownInstance``) means batond does not know this instance,
/// and the agent must stop working and exit non-zero.
///
/// An agent that serves connections gets its listening sockets from batond (the agent's
/// `listen`): ``Listeners`` reads them, ``Acceptor`` accepts on them only while the
/// instance holds `go`.
///
/// Every call blocks the calling thread (plain sockets, no event loop); run them on a
/// thread of their own when the agent has other things to do. The value is immutable
/// and can be shared between threads.
public struct BatonAgent: Sendable {
    /// What batond tells an instance. Level-triggered: it holds until batond changes it:
    /// `wait` (not yet allowed to work: before `ready`, or ready while another instance
    /// works), `go` (work), `stop` (finish the work, report ``BatonAgent/stopped()``, exit 0).
    public typealias Signal = AgentSignal

    /// The agent's desired version while it is not this instance's own, as a signal
    /// answer carries it: for an agent that fetches its own release (see
    /// docs/agent-protocol.md, "Agents that fetch their own release").
    public typealias Desired = DesiredVersion

    /// A signal answer: the signal, and the desired version when it is not this instance's.
    public struct Update: Sendable, Equatable {
        public let signal: Signal
        public let desired: Desired?

        public init(signal: Signal, desired: Desired?) {
            self.signal = signal; self.desired = desired
        }
    }

    /// Where batond listens: `.unix(path:)`, its Unix socket (`BATON_SOCKET`), preferred
    /// when there is one, or `.tcp(host:port:)`, a loopback listener (`BATON_URL`,
    /// `http://HOST:PORT`). The client library's own.
    public typealias Endpoint = BatonClient.Endpoint

    /// The agent's name (`BATON_AGENT`), e.g. `web`.
    public let agent: String
    /// This instance's id (`BATON_INSTANCE`), e.g. `web.3`.
    public let instance: String
    /// The release's version (`BATON_VERSION`), e.g. `2.0`.
    public let version: String
    /// Where batond is.
    public let endpoint: Endpoint
    /// The pauses between attempts while batond is away (see ``RetryPolicy/standard``).
    public let retryPolicy: RetryPolicy
    private let token: Secret
    private let diagnostics: (@Sendable (String) -> Void)?

    /// Reads the environment batond gives the processes it starts.
    ///
    /// - Parameter diagnostics: called with a line when batond stops answering (restarting,
    ///   its socket missing...), about every 30 s while it does not, and when it answers
    ///   again. Never sees the token.
    /// - Parameter retryPolicy: the pauses between attempts while batond is away.
    /// - Throws: ``BatonAgentError/missingEnvironment(_:)`` naming the first variable
    ///   that is missing or empty, ``BatonAgentError/invalidEnvironment(name:reason:)``
    ///   when one cannot be used.
    public init(
        environment: [String: String] = ProcessInfo.processInfo.environment,
        diagnostics: (@Sendable (String) -> Void)? = nil,
        retryPolicy: RetryPolicy = .standard
    ) throws {
        func required(_ name: String) throws -> String {
            guard let value = environment[name], !value.isEmpty else {
                throw BatonAgentError.missingEnvironment(name)
            }
            return value
        }
        let instance = try required("BATON_INSTANCE")
        let token = try required("BATON_TOKEN")
        let agent = try required("BATON_AGENT")
        let version = try required("BATON_VERSION")
        let endpoint: Endpoint
        if let path = environment["BATON_SOCKET"], !path.isEmpty {
            guard path.hasPrefix("/") else {
                throw BatonAgentError.invalidEnvironment(name: "BATON_SOCKET", reason: "not an absolute path: \(path)")
            }
            endpoint = .unix(path: path)
        } else if let url = environment["BATON_URL"], !url.isEmpty {
            guard let parsed = Endpoint(url: url) else {
                throw BatonAgentError.invalidEnvironment(name: "BATON_URL", reason: "not http://HOST:PORT: \(url)")
            }
            endpoint = parsed
        } else {
            throw BatonAgentError.missingEnvironment("BATON_SOCKET")
        }
        self.init(
            agent: agent, instance: instance, version: version, token: token, endpoint: endpoint,
            diagnostics: diagnostics, retryPolicy: retryPolicy)
    }

    /// An instance whose identity came from elsewhere (registration, tests).
    public init(
        agent: String, instance: String, version: String, token: String, endpoint: Endpoint,
        diagnostics: (@Sendable (String) -> Void)? = nil, retryPolicy: RetryPolicy = .standard
    ) {
        self.agent = agent
        self.instance = instance
        self.version = version
        self.token = Secret(value: token)
        self.endpoint = endpoint
        self.diagnostics = diagnostics
        self.retryPolicy = retryPolicy
    }

    // MARK: the four routes

    /// Reports that the instance has verified itself and is ready to work. It must do
    /// no work until it holds ``Signal/go``: the answer is usually ``Signal/wait``
    /// (another instance still works), ``Signal/go`` (nobody else does), or
    /// ``Signal/stop`` (batond gave up on this instance).
    ///
    /// batond answers once the report is on disk and acted on (it gives itself 30 s,
    /// then answers `503 timeout`).
    ///
    /// - Parameter timeout: the whole call, retries included; `nil` (the default):
    ///   until batond answers. Transient failures (batond unreachable, `502/503/504`)
    ///   are retried with ``retryPolicy``; past `timeout` the last one is thrown.
    ///   Reporting ready again is harmless. Any other error is thrown at once: see
    ///   ``BatonAgentError/isUnknownInstance``.
    public func ready(timeout: Duration? = nil) throws -> Signal {
        try post("ready", body: Array("{}".utf8), timeout: timeout)
    }

    /// Reports that the self-check failed, with a reason batond records. The agent
    /// should then exit non-zero; batond never makes this version current. batond keeps
    /// the first 4096 characters of `reason`. `timeout` as for ``ready(timeout:)``.
    public func failed(reason: String, timeout: Duration? = nil) throws -> Signal {
        let body = try WireJSON.encoder.encode(FailedReport(reason: reason))
        return try post("failed", body: Array(body), timeout: timeout)
    }

    /// Blocks until the instance's signal differs from `seen` and returns it; with
    /// `seen` nil, returns the current signal at once.
    ///
    /// Each request is a long-poll of `wait` (at least 1 s): batond parks it and answers
    /// when the signal changes. While batond is away (connection refused, socket
    /// missing, a long-poll cut, timeouts, `502/503/504`) this keeps asking, with the
    /// same `seen`, after the pauses of ``retryPolicy``, for as long as it takes: the
    /// caller goes on under the signal it holds (an agent that holds `go` keeps
    /// working while batond restarts). Other errors are thrown; a `401` or `404`
    /// (``BatonAgentError/isUnknownInstance``) means batond does not know this instance:
    /// stop working and exit non-zero.
    public func waitForSignal(seen: Signal?, wait: Duration = .seconds(60)) throws -> Signal {
        var query = ""
        if let seen { query = "?seen=\(seen.rawValue)" }
        return try longPoll(query: query, wait: wait, answersAtOnce: seen == nil) { $0.signal != seen }.signal
    }

    /// Like ``waitForSignal(seen:wait:)``, but also returns when the desired version the
    /// answer carries differs from the one in `seen` (it passes `seen_desired`): an agent
    /// that fetches its own release learns of a new desired version while it works. With
    /// `seen` nil, returns the current answer at once.
    public func waitForUpdate(seen: Update?, wait: Duration = .seconds(60)) throws -> Update {
        var query = ""
        if let seen {
            query = "?seen=\(seen.signal.rawValue)&seen_desired=\(BatonClient.escape(seen.desired?.version ?? ""))"
        }
        return try longPoll(query: query, wait: wait, answersAtOnce: seen == nil) {
            $0.signal != seen?.signal || $0.desired?.version != seen?.desired?.version
        }
    }

    /// Long-polls the signal route until `isNews` holds for an answer (see
    /// ``waitForSignal(seen:wait:)`` for the retries).
    private func longPoll(query: String, wait: Duration, answersAtOnce: Bool, isNews: (Update) -> Bool) throws -> Update {
        let wait = max(wait, .seconds(1))
        var target = "/v1/instances/\(BatonClient.escape(instance))/signal" + query
        if !answersAtOnce { target += "&wait=\(BatonClient.seconds(wait))" }
        var backoff = retryPolicy.start()
        var outage = Outage(what: "signal")
        while true {
            let started = ContinuousClock.now
            let answer: Update
            do {
                answer = try decodeUpdate(request("GET", target, body: nil, timeout: wait + .seconds(10)))
            } catch let error as BatonAgentError where error.isTransient {
                outage.failed(error, diagnostics)
                sleepThread(for: backoff.next())
                continue
            }
            outage.over(diagnostics)
            if answersAtOnce || isNews(answer) { return answer }
            // Unchanged: the long-poll ran out, ask again. An unchanged answer long before
            // the deadline is not what the contract says; back off so that a server that
            // does not hold requests cannot turn this into a busy loop.
            if ContinuousClock.now - started < wait / 2 {
                sleepThread(for: backoff.next())
            } else {
                backoff = retryPolicy.start()
            }
        }
    }

    /// Reports that the instance has finished its work after ``Signal/stop``; exit 0 right
    /// after (batond sends SIGTERM to an instance that reported stopped and lingers).
    /// `timeout` as for ``ready(timeout:)``; after SIGTERM, pass a short one (a few
    /// seconds): SIGKILL follows.
    public func stopped(timeout: Duration? = nil) throws {
        let target = "/v1/instances/\(BatonClient.escape(instance))/stopped"
        _ = try withRetry(timeout: timeout, what: "stopped") { attempt in
            try request("POST", target, body: Array("{}".utf8), timeout: attempt)
        }
    }

    // MARK: registration

    /// Registers a process that batond did not start (`pid`, by default this one) as a
    /// new instance of `agent`, with the operator token or the agent's
    /// `registration_token`. From there the instance follows the same protocol
    /// (``ready()``...). batond watches the pid to learn when the process ends. Not
    /// retried: each call creates an instance.
    public static func register(
        agent: String, version: String, pid: Int32 = getpid(), registrationToken: String, endpoint: Endpoint,
        diagnostics: (@Sendable (String) -> Void)? = nil, retryPolicy: RetryPolicy = .standard
    ) throws -> BatonAgent {
        let body = try WireJSON.encoder.encode(RegistrationRequest(pid: pid, version: version))
        let response = try perform(
            endpoint: endpoint, token: registrationToken, method: "POST",
            target: "/v1/agents/\(BatonClient.escape(agent))/instances", body: Array(body), timeout: .seconds(70))
        guard let answer = try? WireJSON.decoder.decode(Registration.self, from: Data(response.body)) else {
            throw BatonAgentError.malformedResponse("registration answer without instance and token")
        }
        return BatonAgent(
            agent: agent, instance: answer.instance, version: version, token: answer.token,
            endpoint: endpoint, diagnostics: diagnostics, retryPolicy: retryPolicy)
    }

    // MARK: plumbing

    private func post(_ route: String, body: [UInt8], timeout: Duration?) throws -> Signal {
        let target = "/v1/instances/\(BatonClient.escape(instance))/\(route)"
        let response = try withRetry(timeout: timeout, what: route) { attempt in
            try request("POST", target, body: body, timeout: attempt)
        }
        return try decodeUpdate(response).signal
    }

    /// batond answers a report within 30 s (or `503 timeout`); an attempt waits a little
    /// longer than that for its answer.
    private static let reportAttempt: Duration = .seconds(40)

    /// Calls `call` with the time its attempt may take, retrying transient failures
    /// until `timeout` (nil: forever) has passed since the start.
    private func withRetry(
        timeout: Duration?, what: String, _ call: (Duration) throws -> HTTPResponse
    ) throws -> HTTPResponse {
        let giveUp = timeout.map { ContinuousClock.now + max($0, .seconds(1)) }
        var backoff = retryPolicy.start()
        var outage = Outage(what: what)
        while true {
            do {
                let response = try call(giveUp.map { min(Self.reportAttempt, $0 - ContinuousClock.now) } ?? Self.reportAttempt)
                outage.over(diagnostics)
                return response
            } catch let error as BatonAgentError where error.isTransient {
                let pause = backoff.next()
                if let giveUp, ContinuousClock.now + pause + .milliseconds(100) >= giveUp { throw error }
                outage.failed(error, diagnostics)
                sleepThread(for: pause)
            }
        }
    }

    private func request(_ method: String, _ target: String, body: [UInt8]?, timeout: Duration) throws -> HTTPResponse {
        try Self.perform(endpoint: endpoint, token: token.value, method: method, target: target, body: body, timeout: timeout)
    }

    /// One request; a 2xx answer or a ``BatonAgentError``.
    private static func perform(
        endpoint: Endpoint, token: String, method: String, target: String, body: [UInt8]?, timeout: Duration
    ) throws -> HTTPResponse {
        var headers = [("Authorization", "Bearer \(token)")]
        if body != nil { headers.append(("Content-Type", "application/json")) }
        let response: HTTPResponse
        do {
            response = try HTTPConnection(endpoint).send(
                HTTPRequest(method, target, headers: headers, body: body.map { .bytes($0) } ?? .none, timeout: timeout))
        } catch {
            throw BatonAgentError.transport(error.description)
        }
        guard (200..<300).contains(response.status) else {
            let error = APIError(response)
            throw BatonAgentError.server(status: error.status, code: error.code, message: error.message)
        }
        return response
    }

    private func decodeUpdate(_ response: HTTPResponse) throws -> Update {
        guard let answer = try? WireJSON.decoder.decode(SignalView.self, from: Data(response.body)) else {
            let text = String(decoding: response.body.prefix(200), as: UTF8.self)
            throw BatonAgentError.malformedResponse("no known signal in the answer: \(text)")
        }
        return Update(signal: answer.signal, desired: answer.desired)
    }
}

extension BatonAgent: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    // Spelled out so that printing or dumping the value never shows the token.
    public var description: String {
        "BatonAgent(agent: \(agent), instance: \(instance), version: \(version), endpoint: \(endpoint))"
    }

    public var debugDescription: String { description }

    public var customMirror: Mirror {
        Mirror(self, children: ["agent": agent, "instance": instance, "version": version, "endpoint": endpoint])
    }
}

/// Why a call failed.
public enum BatonAgentError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A variable batond sets is missing or empty. `BATON_SOCKET` stands for "neither
    /// BATON_SOCKET nor BATON_URL".
    case missingEnvironment(String)
    /// A variable is set but unusable.
    case invalidEnvironment(name: String, reason: String)
    /// batond could not be reached or the exchange broke off (transient).
    case transport(String)
    /// batond answered with an error: the one error shape's `code` and `message`.
    case server(status: Int, code: String, message: String)
    /// A 2xx answer that is not what the protocol says.
    case malformedResponse(String)
    /// A socket of the agent's own could not be set up (``BatonAgent/Listener/bind(_:backlog:)``,
    /// ``BatonAgent/Acceptor``): what failed, with the system's reason.
    case socket(String)

    /// Worth retrying: batond away, restarting or busy. Every call but `register`
    /// retries these itself.
    public var isTransient: Bool {
        switch self {
        case .transport: true
        case .server(let status, _, _): status == 502 || status == 503 || status == 504
        case .missingEnvironment, .invalidEnvironment, .malformedResponse, .socket: false
        }
    }

    /// batond does not know this instance (`401`: its token is unknown; `404`: no such
    /// instance), e.g. a batond started on an empty state directory. Whatever that batond
    /// starts may already be working: stop working at once and exit non-zero, never
    /// keep working beside it.
    public var isUnknownInstance: Bool {
        switch self {
        case .server(let status, _, _): status == 401 || status == 404
        case .missingEnvironment, .invalidEnvironment, .transport, .malformedResponse, .socket: false
        }
    }

    public var description: String {
        switch self {
        case .missingEnvironment("BATON_SOCKET"):
            "neither BATON_SOCKET nor BATON_URL is set: this program expects to be started by batond"
        case .missingEnvironment(let name):
            "\(name) is not set: this program expects to be started by batond"
        case .invalidEnvironment(let name, let reason):
            "\(name) is unusable: \(reason)"
        case .transport(let what):
            "cannot reach batond: \(what)"
        case .server(let status, let code, let message):
            message.isEmpty ? "batond answered \(status) \(code)" : "batond answered \(status) \(code): \(message)"
        case .malformedResponse(let what):
            "unexpected answer from batond: \(what)"
        case .socket(let what):
            what
        }
    }
}

/// The bearer token, kept out of every description.
private struct Secret: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    let value: String
    var description: String { "<redacted>" }
    var debugDescription: String { "<redacted>" }
    var customMirror: Mirror { Mirror(self, children: []) }
}

/// How long an agent waits between attempts while batond is away.
public struct RetryPolicy: Sendable, Equatable {
    /// The first pause.
    public let first: Duration
    /// Each pause doubles up to this.
    public let cap: Duration

    /// 100 ms, 200 ms, 400 ms... doubling to 5 s: a restarted batond is heard within
    /// about 5 s, and an agent waiting on a dead one costs one connect every 5 s.
    public static let standard = RetryPolicy(first: .milliseconds(100), cap: .seconds(5))

    public init(first: Duration, cap: Duration) {
        self.first = max(first, .milliseconds(1))
        self.cap = max(cap, self.first)
    }

    func start() -> Backoff { Backoff(step: first, cap: cap) }
}

/// The pauses of one outage: each step doubles up to the cap, and each pause is drawn
/// at random between half the step and all of it, so that the agents a dead batond
/// cut off together do not all come back in the same millisecond.
struct Backoff {
    var step: Duration
    let cap: Duration

    mutating func next() -> Duration {
        let pause = step * Double.random(in: 0.5...1)
        step = min(step * 2, cap)
        return pause
    }
}

/// What an outage says through `diagnostics`: a line when it starts, one about every
/// 30 s while it lasts, and one when batond answers again.
private struct Outage {
    let what: String
    private var lastLine: ContinuousClock.Instant?
    private var failures = 0

    init(what: String) { self.what = what }

    mutating func failed(_ error: BatonAgentError, _ diagnostics: (@Sendable (String) -> Void)?) {
        failures += 1
        let now = ContinuousClock.now
        if let lastLine, now - lastLine < .seconds(30) { return }
        lastLine = now
        diagnostics?("baton: \(what): \(error); retrying" + (failures > 1 ? " (attempt \(failures))" : ""))
    }

    mutating func over(_ diagnostics: (@Sendable (String) -> Void)?) {
        guard failures > 0 else { return }
        diagnostics?("baton: \(what): batond answers again after \(failures) failed attempts")
        failures = 0
        lastLine = nil
    }
}

/// Sleeps the calling thread (nanosleep; an interrupted sleep goes on for the rest).
func sleepThread(for duration: Duration) {
    guard duration > .zero else { return }
    let (seconds, attoseconds) = duration.components
    var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 && errno == EINTR {
        request = remaining
    }
}
