import BatonConfig
import BatonCore
import BatonLedger
import BatonReleases
import Foundation
import Logging
import Synchronization

/// What every agent runner shares: the ledger, the registry, the release store, and
/// where instances find batond.
final class SupervisorContext: Sendable {
    let ledger: Ledger
    let registry: InstanceRegistry
    let releases: ReleaseStore
    let handoffs: HandoffBook
    let stats: SupervisorStats
    let logger: Logger
    let socketPath: String
    let url: String?
    let logDirectory: String
    /// Whether instances are stopped when batond stops (`stop_agents_on_exit`).
    let stopAgentsOnExit: Bool
    let logSettings: BatondConfig.LogSettings
    /// Keeps the logs of live instances near their cap.
    let logs: LogRotation
    /// The agents' listening sockets.
    let sockets: AgentSockets

    init(ledger: Ledger, registry: InstanceRegistry, releases: ReleaseStore, handoffs: HandoffBook, stats: SupervisorStats,
         logger: Logger, socketPath: String, url: String?, logDirectory: String, logSettings: BatondConfig.LogSettings,
         stopAgentsOnExit: Bool, sockets: AgentSockets) {
        self.ledger = ledger
        self.sockets = sockets
        self.registry = registry
        self.releases = releases
        self.handoffs = handoffs
        self.stats = stats
        self.logger = logger
        self.socketPath = socketPath
        self.url = url
        self.logDirectory = logDirectory
        self.stopAgentsOnExit = stopAgentsOnExit
        self.logSettings = logSettings
        logs = LogRotation(interval: logSettings.checkInterval)
    }

    /// `<logs>/<agent>.current.log`: a link to the log of the instance that last got go,
    /// a path that stays right across restarts and handoffs (`tail -F` it).
    func currentLogLink(_ agent: String) -> String { "\(logDirectory)/\(agent).current.log" }

    /// Points the agent's `current.log` link at `instance`'s log: a new link renamed over
    /// the old one.
    func linkCurrentLog(agent: String, instance: String) {
        let link = currentLogLink(agent)
        let temporary = link + ".tmp"
        unlink(temporary)
        guard symlink("\(instance).log", temporary) == 0 else { return }
        if rename(temporary, link) != 0 { unlink(temporary) }
    }

    /// The output file of `instance`, started by this batond or an earlier one.
    func log(_ instance: String) -> InstanceLog {
        InstanceLog(path: "\(logDirectory)/\(instance).log", capBytes: logSettings.maxBytes)
    }

    /// 256 random bits, hex: an instance's bearer token, held in memory and in the
    /// child's environment only.
    func makeToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: .min ... .max, using: &generator)) }.joined()
    }
}

/// Counters for /metrics since batond started: handoffs by mode and outcome, their
/// durations and gaps, restarts, rewinds.
public final class SupervisorStats: Sendable {
    public struct HandoffKind: Hashable, Sendable {
        public var mode: HandoffMode
        public var outcome: HandoffOutcome
        public init(mode: HandoffMode, outcome: HandoffOutcome) { self.mode = mode; self.outcome = outcome }
    }

    public struct Snapshot: Sendable {
        public var handoffs: [String: [HandoffKind: UInt64]] = [:]
        public var restarts: [String: UInt64] = [:]
        public var rewinds: [String: UInt64] = [:]
        /// Agents waiting out a restart backoff, and when the next start is due.
        public var backoff: [String: Timestamp] = [:]
        /// Effects decided but waiting for the ledger to write again, by agent.
        public var effectsWaiting: [String: Int] = [:]
        /// Committed handoffs' gaps (old instance gone to successor told go), by mode.
        public var gapSeconds: [HandoffMode: Histogram] = [:]
        /// Every ended handoff, began to outcome, by mode.
        public var durationSeconds: [HandoffMode: Histogram] = [:]
        public static let gapBounds = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1]
        public static let durationBounds = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
    }

    private let state = Mutex(Snapshot())

    public init() {}

    public var snapshot: Snapshot { state.withLock { $0 } }

    func handoffEnded(agent: String, mode: HandoffMode, outcome: HandoffOutcome, gapMs: Double?, durationMs: Int64) {
        state.withLock { state in
            state.handoffs[agent, default: [:]][HandoffKind(mode: mode, outcome: outcome), default: 0] += 1
            state.durationSeconds[mode, default: Histogram(bounds: Snapshot.durationBounds)].observe(Double(durationMs) / 1000)
            if outcome == .committed, let gapMs {
                state.gapSeconds[mode, default: Histogram(bounds: Snapshot.gapBounds)].observe(gapMs / 1000)
            }
        }
    }

    func rewound(agent: String) {
        state.withLock { $0.rewinds[agent, default: 0] += 1 }
    }

    func restarted(agent: String) {
        state.withLock { state in
            state.restarts[agent, default: 0] += 1
            state.backoff[agent] = nil
        }
    }

    /// The agent waits out its restart backoff (no instance runs) until `until`; nil
    /// when it no longer does.
    func backingOff(agent: String, until: Timestamp?) {
        state.withLock { $0.backoff[agent] = until }
    }

    func effectsWaiting(agent: String, _ count: Int) {
        state.withLock { $0.effectsWaiting[agent] = count == 0 ? nil : count }
    }

    public func isBackingOff(_ agent: String) -> Bool { nextAttempt(agent) != nil }

    /// When the agent's next start is due, while it waits out a restart backoff.
    public func nextAttempt(_ agent: String) -> Timestamp? { state.withLock { $0.backoff[agent] } }

    /// The agent's restarts (after an unexpected exit) since batond started.
    public func restarts(_ agent: String) -> UInt64 { state.withLock { $0.restarts[agent] ?? 0 } }
}

/// Handoffs by id, for `GET /v1/handoffs/{id}`: the ones of this run of batond (the
/// ledger's history has the older ones).
public final class HandoffBook: Sendable {
    /// Told a handoff's view once it ended; `isAnswered` says it no longer listens (a
    /// parked request answered at its deadline), so it is dropped.
    public struct Waiter: Sendable {
        let ended: @Sendable (HandoffView) -> Void
        let isAnswered: @Sendable () -> Bool

        public init(ended: @escaping @Sendable (HandoffView) -> Void, isAnswered: @escaping @Sendable () -> Bool = { false }) {
            self.ended = ended
            self.isAnswered = isAnswered
        }
    }

    private struct State {
        var views: [String: HandoffView] = [:]
        /// Who waits for a handoff to end (`whenEnded`).
        var waiters: [String: [Waiter]] = [:]
    }
    private let state = Mutex(State())

    public init() {}

    func store(_ view: HandoffView) {
        let waiters = state.withLock { state -> [Waiter] in
            state.views[view.id] = view
            guard view.outcome != nil else { return [] }
            return state.waiters.removeValue(forKey: view.id) ?? []
        }
        for waiter in waiters { waiter.ended(view) }
    }

    public func view(_ id: String) -> HandoffView? { state.withLock { $0.views[id] } }

    /// The handoffs of this run of batond, ended or not.
    public var all: [HandoffView] { state.withLock { Array($0.views.values) } }

    /// Returns the handoff's view if it ended; otherwise `waiter` hears of it once it does.
    public func whenEnded(_ id: String, _ waiter: Waiter) -> HandoffView? {
        state.withLock { state in
            if let view = state.views[id], view.outcome != nil { return view }
            var waiting = state.waiters[id, default: []]
            waiting.removeAll { $0.isAnswered() }
            waiting.append(waiter)
            state.waiters[id] = waiting
            return nil
        }
    }

    /// The handoff's view once it ended (at once if it has).
    public func ended(_ id: String) async -> HandoffView {
        await withCheckedContinuation { continuation in
            if let done = whenEnded(id, Waiter(ended: { continuation.resume(returning: $0) })) {
                continuation.resume(returning: done)
            }
        }
    }
}

/// The supervisor: one runner per configured agent, started at boot, stopped (every
/// agent the normal way) at shutdown. It is the one place the API crosses into Swift
/// concurrency: requests become messages to a runner, answered by callback.
public final class Supervisor: Sendable {
    public let registry: InstanceRegistry
    public let handoffs: HandoffBook
    public let stats = SupervisorStats()
    /// The agents' listening sockets (`listen`).
    public var sockets: AgentSockets { context.sockets }
    public let releases: Releases
    let context: SupervisorContext
    private let runners: [String: AgentRunner]
    /// Runners that have not yet re-adopted what the ledger says is live, and who waits
    /// for them all.
    private let adoption: Mutex<(remaining: Int, waiters: [CheckedContinuation<Void, Never>])>

    public init(config: BatondConfig, ledger: Ledger, socketPath: String, url: String?, logger: Logger,
                sockets: AgentSockets = AgentSockets()) {
        registry = InstanceRegistry()
        handoffs = HandoffBook()
        let logDirectory = config.stateDir + "/logs"
        try? FileManager.default.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)
        try? FileManager.default.createDirectory(atPath: config.stateDir + "/releases", withIntermediateDirectories: true)
        context = SupervisorContext(ledger: ledger, registry: registry, releases: ReleaseStore(stateDirectory: config.stateDir),
                                    handoffs: handoffs, stats: stats, logger: logger, socketPath: socketPath, url: url,
                                    logDirectory: logDirectory, logSettings: config.logs,
                                    stopAgentsOnExit: config.stopAgentsOnExit, sockets: sockets)
        releases = Releases(store: context.releases, settings: config.releases, agents: Set(config.agents.map(\.name)),
                            ledger: ledger, registry: registry, logger: logger)
        var runners: [String: AgentRunner] = [:]
        for agent in config.agents { runners[agent.name] = AgentRunner(config: agent, context: context) }
        self.runners = runners
        adoption = Mutex((runners.count, []))
        ledger.observeRecovery { [runners] in
            for runner in runners.values { runner.send(.ledgerRecovered) }
        }
    }

    /// Whether some agent has not yet re-adopted its live instances (batond just started).
    public var isAdopting: Bool { adoption.withLock { $0.remaining > 0 } }

    /// Returns once every agent re-adopted what an earlier batond left running (at once
    /// when there was nothing): batond tells systemd it is ready only then.
    public func adopted() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = adoption.withLock { state -> Bool in
                guard state.remaining > 0 else { return true }
                state.waiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    private func runnerAdopted() {
        let waiters = adoption.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.remaining -= 1
            guard state.remaining == 0 else { return [] }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Runs every agent until `shutdown` has stopped them all.
    public func run() async {
        context.logs.start()
        await withDiscardingTaskGroup { group in
            for runner in runners.values {
                group.addTask { await runner.runLoop(adopted: { [self] in runnerAdopted() }) }
            }
        }
        context.logs.stop()
    }

    /// batond stops: with `stop_agents_on_exit`, stops every agent the normal way and
    /// returns once all their processes exited; otherwise leaves them working, their
    /// state recorded for the next batond to re-adopt.
    public func shutdown() async {
        await withDiscardingTaskGroup { group in
            for runner in runners.values {
                group.addTask {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        runner.send(.shutdown(done: { continuation.resume() }))
                    }
                }
            }
        }
    }

    // MARK: - Requests from the API (any thread)

    /// A handoff of `agent` to `version`; a no-op (`.unchanged`) when that version
    /// already works, unless `force`.
    public func setDesired(agent: String, version: String, mode: HandoffMode?, by: String, force: Bool = false,
                           reply: @escaping @Sendable (Result<DesiredAnswer, SupervisorError>) -> Void) {
        guard let runner = runners[agent] else { return reply(.failure(.agentNotFound(agent))) }
        if let rollout = heldBy(agent) { return reply(.failure(.rolloutInProgress(rollout))) }
        runner.send(.desired(version: version, mode: mode, by: by, force: force, reply: reply))
    }

    /// The agents a rollout moves are its own until it ends: an operator's desired version
    /// or rollback is refused meanwhile (during a barrier it would start an agent while
    /// the migration runs).
    private let holds = Mutex<[String: String]>([:])

    public func hold(_ agents: [String], for rollout: String) {
        holds.withLock { for agent in agents { $0[agent] = rollout } }
    }

    public func release(_ rollout: String) {
        holds.withLock { $0 = $0.filter { $0.value != rollout } }
    }

    func heldBy(_ agent: String) -> String? { holds.withLock { $0[agent] } }

    /// Records the desired version of an agent batond does not start (`external`), with
    /// where to fetch it; its instances see it in their signal.
    public func recordDesired(agent: String, _ request: DesiredRequest, by: String,
                              reply: @escaping @Sendable (Result<DesiredVersion, SupervisorError>) -> Void) {
        guard let runner = runners[agent] else { return reply(.failure(.agentNotFound(agent))) }
        runner.send(.recordDesired(request, by: by, reply: reply))
    }

    /// Whether batond starts `agent` itself (nil: no such agent).
    public func startsReleases(of agent: String) -> Bool? {
        runners[agent].map { !$0.config.external }
    }

    /// A parallel handoff of `agent` to `version`, awaited to its end: whether it
    /// committed, and why not.
    public func handOver(agent: String, to version: String, by: String) async -> (committed: Bool, error: String?) {
        guard let runner = runners[agent] else { return (false, "\(SupervisorError.agentNotFound(agent))") }
        let begun = await withCheckedContinuation { (continuation: CheckedContinuation<Result<DesiredAnswer, SupervisorError>, Never>) in
            runner.send(.desired(version: version, mode: .parallel, by: by, force: false, reply: { continuation.resume(returning: $0) }))
        }
        switch begun {
        case .failure(let error):
            return (false, "the handoff could not begin: \(error)")
        case .success(.unchanged):
            return (true, nil)
        case .success(.handoff(let view)):
            return await ended(view.id)
        }
    }

    /// Waits for handoff `id` to end: whether it committed, and why not.
    public func ended(_ id: String) async -> (committed: Bool, error: String?) {
        let ended = await handoffs.ended(id)
        return (ended.outcome == .committed, ended.outcome == .committed ? nil : ended.error ?? "the handoff ended \(ended.outcome?.rawValue ?? "")")
    }

    /// Back to the previous release; from an irreversible one only with `force`.
    /// Halts `agent` for a barrier upgrade; returns once none of its instances is left
    /// (or why it could not).
    public func halt(agent: String) async -> SupervisorError? {
        guard let runner = runners[agent] else { return .agentNotFound(agent) }
        return await withCheckedContinuation { continuation in
            runner.send(.halt(done: { continuation.resume(returning: $0) }))
        }
    }

    public func rollback(agent: String, by: String, force: Bool = false,
                         reply: @escaping @Sendable (Result<HandoffView, SupervisorError>) -> Void) {
        guard let runner = runners[agent] else { return reply(.failure(.agentNotFound(agent))) }
        if let rollout = heldBy(agent) { return reply(.failure(.rolloutInProgress(rollout))) }
        runner.send(.rollback(by: by, force: force, reply: reply))
    }

    /// Registers a process batond did not start as an instance of `agent`, if `caller`
    /// owns it (see `OwnershipRule`).
    public func register(agent: String, pid: Int32, version: String, caller: RegistrationCaller,
                         reply: @escaping @Sendable (Result<Registration, SupervisorError>) -> Void) {
        guard let runner = runners[agent] else { return reply(.failure(.agentNotFound(agent))) }
        runner.send(.register(pid: pid, version: version, caller: caller, reply: reply))
    }

    public func report(instance: String, _ report: InstanceReport,
                       reply: @escaping @Sendable (Result<SignalView, SupervisorError>) -> Void) {
        guard let agent = registry.instance(instance)?.agent, let runner = runners[agent] else {
            return reply(.failure(.instanceNotFound(instance)))
        }
        runner.send(.report(instance: instance, report, reply: reply))
    }

    /// The instance whose process (or an ancestor of it) is `pid`.
    public func instance(forProcess pid: Int32) -> String? {
        registry.instance(forProcess: pid, stopAt: getpid(), parent: Processes.parent(of:))
    }
}
