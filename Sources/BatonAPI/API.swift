import BatonConfig
import BatonCore
import BatonFleet
import BatonHTTP
import BatonLedger
import BatonSupervisor
import Foundation
import Logging
import Synchronization

/// The batond API: its routes and handlers. Handlers run on libmicrohttpd's threads and
/// never block: they read published state, or park the request and answer it later.
public final class API: Sendable {
    public struct Context: Sendable {
        public var config: BatondConfig
        public var startedAt: Timestamp
        public var listeners: [String]
        public init(config: BatondConfig, startedAt: Timestamp, listeners: [String]) {
            self.config = config
            self.startedAt = startedAt
            self.listeners = listeners
        }
    }

    let context: Context
    let ledger: Ledger
    let supervisor: Supervisor
    let rollouts: Rollouts
    /// Fleet mode, when `[fleet]` is configured.
    let fleet: Fleet?
    let auth: OperatorAuth
    let daemon: any DaemonControl
    let metrics: Metrics
    /// The encoded `/v1/status` body and the ledger position it was built at.
    private let statusCache = Mutex<(seq: UInt64, instances: Int, writable: Bool, fleet: FleetSummary?, body: [UInt8])?>(nil)
    let events: EventWaiters
    let logger: Logger
    /// Installed by `makeServer`; read by /metrics for its gauges, told of every commit
    /// for its event streams.
    private let server = Mutex<HTTPServer?>(nil)

    public init(context: Context, ledger: Ledger, supervisor: Supervisor, rollouts: Rollouts, fleet: Fleet? = nil, auth: OperatorAuth,
                daemon: any DaemonControl, logger: Logger) {
        self.context = context
        self.ledger = ledger
        self.supervisor = supervisor
        self.rollouts = rollouts
        self.fleet = fleet
        self.auth = auth
        self.daemon = daemon
        self.logger = logger
        self.events = EventWaiters(ledger: ledger)
        self.metrics = Metrics()
        ledger.observeCommits { [weak self] lastSeq in
            self?.events.wake(lastSeq: lastSeq)
            self?.server.withLock { $0 }?.wakeStreams()
        }
    }

    /// An HTTP server for this API: its routes, its admission (auth) and its metrics.
    public func makeServer(configuration: HTTPServer.Configuration) -> HTTPServer {
        let server = HTTPServer(
            configuration: configuration, router: router,
            admission: { [auth] request in auth.admit(&request) },
            observer: { [metrics] route, method, status, duration in
                metrics.recordRequest(route: route, method: method, status: status, duration: duration)
            },
            logger: logger)
        self.server.withLock { $0 = server }
        metrics.countStreams { [weak server] in server?.streamCount ?? 0 }
        return server
    }

    /// Every route of the API in one table: method, path, the auth scope that admits it
    /// (an enum: a typo does not compile), how it takes a body, and its handler. The
    /// handlers live beside the things they serve; api/openapi.yaml lists the same routes
    /// (a test checks both ways).
    public var router: Router {
        let http = context.config.http
        let instances = InstanceRoutes(supervisor: supervisor, maxWait: http.maxWait)
        let handoffs = HandoffRoutes(supervisor: supervisor, ledger: { [ledger] in ledger.state }, maxWait: http.maxWait,
                                     maxWaiters: http.maxEventWaiters)
        let releases = ReleaseRoutes(releases: supervisor.releases)
        let version = VersionRoutes(rollouts: rollouts)
        let daemon = DaemonRoutes(control: self.daemon)
        let fleet = FleetRoutes(fleet: self.fleet)
        let page = StatusPageRoutes(sessions: auth.sessions)
        return Router([
            // Probes: anyone.
            Route(.GET, "/healthz", scope: .probe) { _ in .respond(Self.healthy) },
            Route(.GET, "/readyz", scope: .probe) { [self] _ in .respond(readiness()) },
            Route(.GET, "/metrics", scope: .probe) { [self] _ in .respond(metricsPage()) },
            // What batond knows: the operator (and the status page's session).
            Route(.GET, "/v1/status", scope: .operator) { [self] _ in .respond(statusResponse()) },
            Route(.GET, "/v1/agents", scope: .operator) { [self] _ in .respond(.json(AgentList(agents: agentViews()))) },
            Route(.GET, "/v1/agents/{name}", scope: .operator) { [self] (request) throws(HTTPError) -> Reply in
                .respond(.json(try agentView(request.agentName())))
            },
            Route(.GET, "/v1/events", scope: .operator) { [self] (request) throws(HTTPError) -> Reply in
                try events.handle(request, maxWait: http.maxWait, most: http.maxEventWaiters)
            },
            // Handoffs: the operator asks; processes batond did not start register.
            Route(.PUT, "/v1/agents/{name}/desired", scope: .operator, takesBody: true, handler: handoffs.setDesired),
            Route(.POST, "/v1/agents/{name}/rollback", scope: .operator, takesBody: true, handler: handoffs.rollback),
            Route(.POST, "/v1/agents/{name}/instances", scope: .registration, takesBody: true, handler: handoffs.register),
            Route(.GET, "/v1/handoffs", scope: .operator, handler: handoffs.listHandoffs),
            Route(.GET, "/v1/handoffs/{id}", scope: .operator, handler: handoffs.handoff),
            // The instance protocol: each instance about itself only.
            Route(.POST, "/v1/instances/{id}/ready", scope: .instance, takesBody: true, handler: instances.reportReady),
            Route(.POST, "/v1/instances/{id}/failed", scope: .instance, takesBody: true, handler: instances.reportFailed),
            Route(.POST, "/v1/instances/{id}/stopped", scope: .instance, takesBody: true, handler: instances.reportStopped),
            Route(.GET, "/v1/instances/{id}/signal", scope: .instance, handler: instances.signal),
            // Releases and the machine's version.
            Route(.PUT, "/v1/releases/{agent}/{version}", scope: .operator, streamed: releases.pushBody, handler: releases.push),
            Route(.POST, "/v1/releases/{agent}/{version}", scope: .operator, takesBody: true, handler: releases.fetch),
            Route(.GET, "/v1/releases/{agent}", scope: .operator, handler: releases.listReleases),
            Route(.GET, "/v1/releases/{agent}/{version}", scope: .operator, handler: releases.getRelease),
            Route(.DELETE, "/v1/releases/{agent}/{version}", scope: .operator, handler: releases.deleteRelease),
            Route(.GET, "/v1/version", scope: .operator, handler: version.getVersion),
            Route(.PUT, "/v1/version", scope: .operator, takesBody: true, handler: version.setVersion),
            // The fleet (fleet mode): what this host sees in etcd, and the fleet's plan.
            Route(.GET, "/v1/fleet", scope: .operator, handler: fleet.get),
            Route(.PUT, "/v1/fleet", scope: .operator, takesBody: true, handler: fleet.set),
            Route(.POST, "/v1/fleet/rollback", scope: .operator, takesBody: true, handler: fleet.rollback),
            Route(.POST, "/v1/fleet/exclude", scope: .operator, takesBody: true, handler: fleet.exclude),
            // batond itself.
            Route(.GET, "/v1/daemon", scope: .operator, handler: daemon.getDaemon),
            Route(.PUT, "/v1/daemon/binary", scope: .operator, streamed: daemon.binaryBody, handler: daemon.storeBinary),
            Route(.POST, "/v1/daemon/upgrade", scope: .operator, takesBody: true, handler: daemon.upgradeDaemon),
            // The status page: a page anyone may ask for, shown to the operator's session.
            Route(.GET, "/", scope: .page, handler: page.page),
            Route(.GET, "/ui/login", scope: .page, handler: page.login),
            Route(.POST, "/v1/ui/links", scope: .operator, handler: page.issueLink),
        ])
    }

    // MARK: - Probes

    static let healthy = Response.json(bytes: Array(#"{"status":"ok"}"#.utf8))

    func readiness() -> Response {
        let health = ledger.health
        if let failure = health.failure {
            let since = health.since.map { " since \($0)" } ?? ""
            let tried = health.lastAttempt.map { ", last tried \($0)" } ?? ""
            return HTTPError(status: 503, code: "not_ready",
                             message: "the ledger cannot write\(since) (\(failure)); nothing is acted on until it can; "
                                 + "batond tries a probe write every \(health.retryInterval.milliseconds) ms\(tried)").response
        }
        if supervisor.isAdopting {
            return HTTPError(status: 503, code: "not_ready",
                             message: "batond is re-adopting the instances an earlier batond left running").response
        }
        if let barrier = rollouts.barrierReason {
            return HTTPError(status: 503, code: "not_ready", message: barrier).response
        }
        return .json(bytes: Array(#"{"checks":{"ledger":"ok"},"status":"ready"}"#.utf8))
    }

    func metricsPage() -> Response {
        let server = self.server.withLock { $0 }
        let parked = server?.parkedCount ?? 0
        let state = ledger.state
        // The views and the ledger-derived families from one snapshot of the ledger.
        let views = agentViews(in: state)
        let text = metrics.render(.init(startedAt: context.startedAt, now: .now(), ledger: ledger.metrics,
                                        lastSeq: state.lastSeq, ledgerWritable: ledger.isWritable,
                                        parked: parked, listeners: server?.listenerStats ?? [],
                                        views: views.sorted { $0.name < $1.name }, history: state.agents,
                                        supervisor: supervisor.stats.snapshot, fleet: fleet?.metrics))
        return .text(text, contentType: "text/plain; version=0.0.4; charset=utf-8")
    }

    // MARK: - Operator views

    /// `/v1/status`, encoded once per ledger change: monitoring polls it often and
    /// everything in it derives from the ledger's published state and fixed facts.
    func statusResponse() -> Response {
        let seq = ledger.lastSeq, instances = supervisor.registry.generation, writable = ledger.isWritable, fleet = fleet?.summary
        if let cached = statusCache.withLock({ $0 }), cached.seq == seq, cached.instances == instances, cached.writable == writable,
           cached.fleet == fleet {
            return .json(bytes: cached.body)
        }
        var view = status()
        view.fleet = fleet
        let response = Response.json(view)
        if response.status == 200 {
            statusCache.withLock { $0 = (seq, instances, writable, fleet, response.body) }
        }
        return response
    }

    func status() -> StatusView {
        StatusView(version: BatonVersion.current, pid: getpid(), stateDir: context.config.stateDir,
                   startedAt: context.startedAt,
                   ledger: .init(lastSeq: ledger.lastSeq, snapshotSeq: ledger.snapshotSeq,
                                 journalRecords: ledger.journalRecords, writable: ledger.isWritable),
                   listeners: context.listeners, agents: agentViews())
    }

    public func agentViews(in state: LedgerState? = nil) -> [AgentView] {
        let state = state ?? ledger.state
        return context.config.agents.map { view(of: $0, ledger: state.agents[$0.name]) }
    }

    /// What the ledger knows of an agent, with its live instances from the supervisor.
    func view(of config: AgentConfig, ledger: AgentLedger?) -> AgentView {
        var view = AgentView(name: config.name, ledger: ledger, config: config.view)
        view.sockets = supervisor.sockets.views(of: config)
        // With the stored release's digest and URL, as the agent's instances see it.
        view.desired = supervisor.registry.desired(of: config.name) ?? view.desired
        let live = supervisor.registry.instances(of: config.name)
        view.instances = live.map {
            AgentView.Instance(id: $0.id, pid: $0.pid, version: $0.version, state: $0.stopped ? "stopped" : $0.signal == .go ? "working" : $0.ready ? "ready" : $0.signal == .stop ? "stopping" : "starting", startedAt: $0.startedAt)
        }
        let working = live.first { $0.signal == .go }
        if let working {
            view.running = RunningVersion(version: working.version, since: working.startedAt)
            view.state = .running
        } else {
            view.running = nil
            view.state = !live.isEmpty ? .starting : supervisor.stats.isBackingOff(config.name) ? .backoff : .stopped
        }
        view.restarts = Int(supervisor.stats.restarts(config.name))
        view.nextAttemptAt = live.isEmpty ? supervisor.stats.nextAttempt(config.name) : nil
        // A handoff shows first; then batond's verdict on a crash loop, until an operator acts:
        // given up on current (while nothing works), or rewound (whatever runs).
        if ledger?.handoff != nil {
            view.state = .handingOff
        } else if let failed = ledger?.failed, failed.version == ledger?.current ?? failed.version, working == nil {
            view.state = .failed
        } else if ledger?.rewound != nil {
            view.state = .rewound
        }
        view.condition = Self.condition(of: view, ledger: ledger)
        return view
    }

    /// `degraded` while the agent is not where it was asked to be, once no handoff runs
    /// (a person and an alert read the same reason).
    static func condition(of view: AgentView, ledger: AgentLedger?) -> AgentView.Condition {
        let last = ledger?.history.last
        let why = last.map { " (handoff \($0.id) to \($0.to) \($0.outcome.rawValue)\($0.error.map { ": \($0)" } ?? ""))" } ?? ""
        switch view.state {
        case .handingOff, .starting:
            return .init(status: .ok)
        case .failed:
            return .init(status: .degraded, reason: view.failed?.reason ?? "batond gave up on the current release")
        case .rewound:
            return .init(status: .degraded, reason: "rewound from \(view.rewound?.from ?? "?") to \(view.rewound?.to ?? "?") after a crash loop")
        case .stopped, .backoff:
            guard view.desired != nil || ledger?.current != nil else { return .init(status: .ok) }
            return .init(status: .degraded, reason: "no instance works" + (view.state == .backoff ? " (restarting with backoff)" : ""))
        case .running:
            guard let desired = view.desired?.version, let running = view.running?.version, desired != running else { return .init(status: .ok) }
            return .init(status: .degraded, reason: "desired \(desired) is not reached: \(running) works\(why)")
        }
    }

    func agentView(_ name: String) throws(HTTPError) -> AgentView {
        guard let config = context.config.agents.first(where: { $0.name == name }) else {
            throw SupervisorError.agentNotFound(name).http
        }
        return view(of: config, ledger: ledger.state.agents[name])
    }
}

// MARK: - Query parameters

extension Request {
    func integer(_ name: String, default value: Int, range: ClosedRange<Int>) throws(HTTPError) -> Int {
        guard let text = query(name) else { return value }
        guard let number = Int(text), range.contains(number) else {
            throw HTTPError.badParameter(name, "must be an integer from \(range.lowerBound) to \(range.upperBound), not \"\(text)\"")
        }
        return number
    }

    func seconds(_ name: String, default value: Double) throws(HTTPError) -> Double {
        guard let text = query(name) else { return value }
        guard let number = Double(text), number.isFinite, number >= 0 else {
            throw HTTPError.badParameter(name, "must be a number of seconds >= 0, not \"\(text)\"")
        }
        return number
    }

    /// A long-poll's `wait` in seconds (0 when absent), capped at `max`: a longer wait
    /// is not an error.
    func wait(max: Duration) throws(HTTPError) -> Double {
        let cap = Double(max.components.seconds) + Double(max.components.attoseconds) / 1e18
        return min(try seconds("wait", default: 0), cap)
    }

    /// The `{name}` of the path, validated before it is used (400 `invalid_name`).
    func agentName() throws(HTTPError) -> String {
        let name = parameters["name"] ?? ""
        guard Names.isValidAgent(name) else {
            throw HTTPError(status: 400, code: "invalid_name", message: "\"\(name)\" is not a valid agent name")
        }
        return name
    }
}
