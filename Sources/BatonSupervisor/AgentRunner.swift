import BatonConfig
import BatonCore
import BatonLedger
import Foundation
import Glibc
import Logging

/// Why the supervisor refused an operator's request; the API maps each to a status.
public enum SupervisorError: Error, Sendable, Equatable {
    case agentNotFound(String)
    case noSuchProcess(Int32)
    case invalidVersion(String)
    case releaseNotFound(agent: String, version: String)
    case handoffInProgress(String)
    case noPreviousRelease(String)
    case shuttingDown
    case ledger(String)
    case instanceNotFound(String)
    /// The caller may not register this process (it does not own it).
    case registrationRefused(String)
    /// The pid is already an instance (of this agent or another).
    case alreadyRegistered(pid: Int32, instance: String)
}

/// What an instance reports about itself.
public enum InstanceReport: Sendable, Equatable {
    case ready
    case failed(reason: String)
    case stopped
}

/// Runs one agent: its instances, the handoff between them, supervision after it.
/// Every change goes through one mailbox, processed to completion one message at a
/// time (ledger appends included), so the handoff machine never sees interleaved events.
///
/// Ledger before effect: every effect (a signal, a process started or signalled,
/// `current` flipped, a token issued) runs through `whenDurable`, after every record
/// queued before it is on disk. While the ledger cannot write, effects wait in order in
/// `deferred` and run, in that order, once it recovers; requests that would change
/// something are refused meanwhile (`SupervisorError.ledger`).
actor AgentRunner {
    enum Message: Sendable {
        /// batond starts: adopt what an earlier batond left, then start what is missing.
        case boot(adopted: @Sendable () -> Void)
        case desired(version: String, mode: HandoffMode?, by: String, reply: @Sendable (Result<HandoffView, SupervisorError>) -> Void)
        case rollback(by: String, reply: @Sendable (Result<HandoffView, SupervisorError>) -> Void)
        case report(instance: String, InstanceReport, reply: @Sendable (Result<SignalView, SupervisorError>) -> Void)
        case exited(instance: String, ExitStatus)
        case handoffTimer(Handoff.Timer, token: Int)
        case readyDeadline(instance: String)
        case restart(token: Int)
        case escalate(instance: String, Int32)
        case register(pid: Int32, version: String, caller: RegistrationCaller,
                      reply: @Sendable (Result<Registration, SupervisorError>) -> Void)
        /// The ledger writes again: deferred effects may run.
        case ledgerRecovered
        case shutdown(done: @Sendable () -> Void)
    }

    /// A handoff in progress.
    struct Run {
        var view: HandoffView
        var machine: Handoff
        var roles: [Handoff.Role: String] = [:]
        /// Roles already filled by a registered process that reported ready: the
        /// machine's spawn and ready steps are fed at once.
        var registered: Set<Handoff.Role> = []
        var oldGoneAt: ContinuousClock.Instant?
        /// When batond took the handoff up again after a restart: the old instance may
        /// have gone while it was down, so the gap it can measure starts here.
        var resumedAt: ContinuousClock.Instant?
        var gapMs: Double?
    }

    let config: AgentConfig
    let context: SupervisorContext
    private let mailbox: AsyncStream<Message>
    private let inbox: AsyncStream<Message>.Continuation

    /// The instance that holds go, or will once ready (supervision start).
    private var active: String?
    private var run: Run?
    private var processes: [String: ProcessHandle] = [:]
    /// Instances started by supervision (boot, restart) that have not reported ready yet.
    private var starting: Set<String> = []
    /// Registered processes (not batond's children) that have not reported ready yet.
    private var registered: Set<String> = []
    /// Registered processes that reported ready while a handoff ran: next in line.
    private var waitingRegistered: [String] = []
    private var timers: [Handoff.Timer: (token: Int, task: Task<Void, Never>)] = [:]
    private var nextToken = 0
    private var backoff: Duration = .seconds(1)
    private var restartToken: Int?
    private var goSince: ContinuousClock.Instant?
    private var shutdownDone: (@Sendable () -> Void)?
    /// Readiness probes running, for agents that do not speak the protocol.
    private var probes: [String: Task<Void, Never>] = [:]
    /// Records not yet written: see `record` and `flush`.
    private var unflushed: [LedgerEvent] = []
    /// Effects waiting for the ledger to write again, in the order they were decided.
    private var deferred: [() async -> Void] = []
    /// Whether the last flush failed (logged once, not at every retry).
    private var ledgerRefused = false

    /// The last instance generation and handoff number used. Kept here, not read back
    /// from the ledger's state, which lags the records still queued for `flush`.
    private var generations: Int
    private var handoffNumbers: Int

    init(config: AgentConfig, context: SupervisorContext) {
        self.config = config
        self.context = context
        let recorded = context.ledger.state.agents[config.name]
        generations = recorded?.spawns ?? 0
        handoffNumbers = recorded?.handoffsBegun ?? 0
        (mailbox, inbox) = AsyncStream.makeStream(of: Message.self)
    }

    /// `<agent>.<generation>`: a new instance id, never used before.
    private func nextInstanceID() -> String {
        generations += 1
        return "\(name).\(generations)"
    }

    /// `<agent>-<n>`: a new handoff id.
    private func nextHandoffID() -> String {
        handoffNumbers += 1
        return "\(name)-\(handoffNumbers)"
    }

    /// A handoff that begins now, with the machine for `mode`.
    private func makeRun(id: String, from: String?, to: String, mode: HandoffMode, hasOld: Bool) -> Run {
        let now = Timestamp.now()
        return Run(view: HandoffView(id: id, agent: name, from: from, to: to, mode: mode, phase: "began",
                                     outcome: nil, error: nil, gapMs: nil, startedAt: now, endedAt: nil,
                                     steps: [.init(phase: "began", at: now)]),
                   machine: Handoff(mode: mode == .parallel ? .parallel : .sequential,
                                    timeouts: .init(ready: config.readyTimeout, stop: config.stopTimeout, kill: config.killTimeout),
                                    hasOld: hasOld))
    }

    nonisolated func send(_ message: Message) {
        inbox.yield(message)
    }

    var name: String { config.name }
    var logger: Logger { context.logger }

    /// Processes messages until shutdown completes.
    func runLoop() async {
        for await message in mailbox {
            await handle(message)
            if shutdownDone != nil && processes.isEmpty {
                finishShutdown()
                break
            }
        }
    }

    // MARK: - Messages

    private func handle(_ message: Message) async {
        await process(message)
        await flush()
    }

    private func process(_ message: Message) async {
        switch message {
        case .boot(let adopted):
            if let fixed = context.releases.reconcile(agent: name, recorded: context.ledger.state.agents[name]?.current) {
                logger.warning("current did not match the ledger's last commit; fixed", metadata: ["agent": "\(name)", "current": "\(fixed)"])
            }
            await adopt()
            adopted()
            guard run == nil, active == nil else { return }
            guard let version = context.releases.current(agent: name) else {
                logger.notice("agent has no current release; waiting for a desired version", metadata: ["agent": "\(name)"])
                return
            }
            await startSupervised(version: version)
        case .desired(let version, let mode, let by, let reply):
            let result = await begin(to: version, mode: mode ?? config.mode, by: by)
            await flush()
            reply(result)
        case .rollback(let by, let reply):
            let state = context.ledger.state.agents[name]
            guard let previous = state?.previous, context.releases.exists(agent: name, version: previous) else {
                reply(.failure(.noPreviousRelease(name)))
                return
            }
            let result = await begin(to: previous, mode: config.mode, by: by)
            await flush()
            reply(result)
        case .report(let instance, let report, let reply):
            guard context.registry.instance(instance) != nil else { return reply(.failure(.instanceNotFound(instance))) }
            await received(report, from: instance)
            if let failure = await flush() { return reply(.failure(.ledger(failure.description))) }
            guard let view = context.registry.view(instance) else { return reply(.failure(.instanceNotFound(instance))) }
            reply(.success(view))
        case .exited(let instance, let status):
            await exited(instance, status)
        case .handoffTimer(let timer, let token):
            guard timers[timer]?.token == token else { return }
            timers[timer] = nil
            await feed(.timeout(timer))
        case .readyDeadline(let instance):
            guard starting.contains(instance), processes[instance] != nil else { return }
            // A late ready report must not give go to an instance on its way out.
            starting.remove(instance)
            recordError("not ready within \(config.readyTimeout)", instance: instance)
            await stop(instance)
        case .restart(let token):
            guard restartToken == token, shutdownDone == nil, run == nil, active == nil else { return }
            context.stats.backingOff(agent: name, false)
            restartToken = nil
            if let version = context.releases.current(agent: name) {
                context.stats.restarted(agent: name)
                await startSupervised(version: version)
            }
        case .escalate(let instance, let signal):
            if shutdownDone != nil {
                // Stopping never lets two work: at shutdown it does not wait for the ledger.
                processes[instance]?.send(signal)
            } else {
                await whenDurable { self.processes[instance]?.send(signal) }
            }
        case .register(let pid, let version, let caller, let reply):
            reply(await register(pid: pid, version: version, caller: caller))
        case .ledgerRecovered:
            await runDeferred()
        case .shutdown(let done):
            shutdownDone = done
            await stopEverything()
        }
    }

    // MARK: - Re-adoption

    /// batond starts where an earlier batond left off (killed, or stopped without
    /// stopping its agents): every instance the ledger says is live and that still runs,
    /// the same pid *and* process start time, is adopted with its recorded signal and
    /// token (by its digest); the others are recorded as gone. A handoff left in flight
    /// is taken up again (`Handoff.resuming`). A second copy is never started beside a
    /// live instance: the caller starts `current` only when nothing was adopted.
    private func adopt() async {
        guard let recorded = context.ledger.state.agents[name] else { return }
        let instances = recorded.instances.values.sorted { ($0.startedAt, $0.id) < ($1.startedAt, $1.id) }
        var alive: [InstanceLedger] = []
        for instance in instances {
            let log = instance.registered ? nil : context.log(instance.id)
            guard let process = ProcessHandle.adopted(pid: instance.pid, startTime: instance.startTime, log: log) else {
                logger.notice("a recorded instance is gone", metadata: ["agent": "\(name)", "instance": "\(instance.id)", "pid": "\(instance.pid)"])
                record(.instanceExited(.init(agent: name, instance: instance.id, exitCode: nil, signal: nil)))
                continue
            }
            processes[instance.id] = process
            if let log { context.logs.watch(instance.id, log) }
            // An instance recorded before tokens had digests cannot be known by its token:
            // it is adopted (so nothing starts beside it) and stopped.
            context.registry.add(.init(id: instance.id, agent: name, version: instance.version, pid: instance.pid,
                                       signal: instance.signal, handoff: nil, startedAt: instance.startedAt,
                                       ready: instance.state != .spawned, stopped: instance.state == .stopped,
                                       spawned: !instance.registered, tokenDigest: instance.tokenDigest ?? ""))
            let runner = self, id = instance.id
            process.watch { status in runner.send(.exited(instance: id, status)) }
            logger.info("instance adopted", metadata: ["agent": "\(name)", "instance": "\(id)", "pid": "\(instance.pid)",
                                                       "signal": "\(instance.signal.rawValue)"])
            alive.append(instance)
        }
        var others = alive
        if let flight = recorded.handoff {
            others = await resume(flight, recorded: instances, alive: alive)
        }
        for instance in others {
            await readopt(instance)
        }
    }

    /// An adopted instance outside any handoff takes up its place: go works on, stop is
    /// seen through, a start not yet ready gets its ready deadline again, a ready one
    /// with no go yet gets it if nothing else works.
    private func readopt(_ instance: InstanceLedger) async {
        let id = instance.id
        if instance.tokenDigest == nil { return await stop(id) }
        switch instance.signal {
        case .go where active == nil:
            active = id
            goSince = .now
        case .go, .stop:
            // A second instance in go cannot happen (go is given after the other is gone);
            // were it so, the later one would stop.
            if instance.signal == .go { await give(.stop, to: id, handoff: nil) }
            expectExit(id)
        case .wait where instance.registered:
            if instance.state == .spawned { registered.insert(id) } else { await takeOver(registeredInstance: id) }
        case .wait where active != nil || run != nil:
            await stop(id)
        case .wait where instance.state == .spawned:
            active = id
            starting.insert(id)
            readyDeadline(id)
        case .wait:
            active = id
            await give(.go, to: id, handoff: nil)
        }
    }

    /// Takes up the handoff `flight`, left in flight by an earlier batond; returns the
    /// adopted instances that are not part of it.
    private func resume(_ flight: ActiveHandoff, recorded: [InstanceLedger], alive: [InstanceLedger]) async -> [InstanceLedger] {
        let live = Set(alive.map(\.id))
        func found(_ instance: InstanceLedger?) -> Handoff.Found {
            guard let instance else { return .none }
            guard live.contains(instance.id) else { return .gone }
            return .alive(ready: instance.state != .spawned, stopped: instance.state == .stopped)
        }
        let successor = recorded.last { $0.handoff == flight.id && $0.role != Handoff.Role.previous.rawValue }
        let previous = recorded.last { $0.handoff == flight.id && $0.role == Handoff.Role.previous.rawValue }
        // The old instance: the one that held go when the handoff began, told stop by it since.
        let old = recorded.last { $0.handoff == nil && $0.signal == .go }
            ?? recorded.last { $0.handoff == nil && $0.signal == .stop && !$0.registered }
        let (machine, actions) = Handoff.resuming(
            phase: flight.phase, mode: flight.mode == .parallel ? .parallel : .sequential,
            timeouts: .init(ready: config.readyTimeout, stop: config.stopTimeout, kill: config.killTimeout),
            old: found(old), successor: found(successor), previous: found(previous),
            fromRecorded: flight.mode == .sequential && flight.from != nil)
        var run = Run(view: HandoffView(id: flight.id, agent: name, from: flight.from, to: flight.to, mode: flight.mode,
                                        phase: flight.phase, outcome: nil, error: nil, gapMs: nil, startedAt: flight.startedAt,
                                        endedAt: nil, steps: [.init(phase: flight.phase, at: flight.startedAt)]),
                      machine: machine)
        run.resumedAt = .now
        if let old, live.contains(old.id) {
            run.roles[.old] = old.id
            if old.signal == .go { active = old.id; goSince = .now }
            // It reported stopped: it must exit, as before batond died.
            if old.state == .stopped { expectExit(old.id) }
        }
        if let successor, live.contains(successor.id) { run.roles[.successor] = successor.id }
        if let previous, live.contains(previous.id) { run.roles[.previous] = previous.id }
        for (_, instance) in run.roles { context.registry.update(instance) { $0.handoff = flight.id } }
        self.run = run
        publish()
        logger.notice("taking up a handoff left in flight", metadata: ["agent": "\(name)", "handoff.id": "\(flight.id)",
                                                                         "phase": "\(flight.phase)"])
        await perform(actions)
        let roles = Set(run.roles.values)
        return alive.filter { !roles.contains($0.id) }
    }

    // MARK: - Supervision: start, watch, restart

    /// Starts `version` with no handoff: it gets go once it reports ready.
    private func startSupervised(version: String) async {
        await whenDurable { await self.spawnSupervised(version: version) }
    }

    private func spawnSupervised(version: String) async {
        guard shutdownDone == nil, run == nil, active == nil else { return }
        switch await spawn(version: version, handoff: nil) {
        case .success(let id):
            active = id
            starting.insert(id)
            readyDeadline(id)
        case .failure(let error):
            recordError("cannot start \(version): \(error)", instance: nil)
            scheduleRestart()
        }
    }

    /// Changes `instance`'s signal: recorded first, so a restarted batond knows who
    /// holds go, and seen by the instance once the record is durable.
    private func give(_ signal: AgentSignal, to instance: String, handoff: String?) async {
        await inOrder { self.record(.instanceSignal(.init(agent: self.name, instance: instance, signal: signal, handoff: handoff))) }
        await whenDurable {
            if signal == .go { self.goSince = .now }
            self.context.registry.setSignal(instance, signal, handoff: handoff)
        }
    }

    /// A supervised start that is not ready within ready_timeout is stopped.
    private func readyDeadline(_ id: String) {
        let deadline = config.readyTimeout
        let runner = self
        Task {
            try? await Task.sleep(for: deadline)
            runner.send(.readyDeadline(instance: id))
        }
    }

    private func received(_ report: InstanceReport, from instance: String) async {
        guard let known = context.registry.instance(instance) else { return }
        switch report {
        // A report repeated (the agent retries until its answer is durable) was heard already.
        case .ready where known.ready, .stopped where known.stopped:
            return
        case .ready:
            context.registry.update(instance) { $0.ready = true }
            record(.instanceReady(.init(agent: name, instance: instance)))
        case .stopped:
            context.registry.update(instance) { $0.stopped = true }
            record(.instanceStopped(.init(agent: name, instance: instance)))
        case .failed:
            break
        }
        if let role = role(of: instance) {
            switch report {
            case .ready: await feed(.ready(role))
            case .failed(let reason): await feed(.reportedFailure(role, reason: reason))
            case .stopped:
                await feed(.stopped(role))
                expectExit(instance)
            }
            return
        }
        if starting.contains(instance) {
            switch report {
            case .ready:
                starting.remove(instance)
                await give(.go, to: instance, handoff: nil)
            case .failed(let reason):
                starting.remove(instance)
                recordError("reported failure: \(reason)", instance: instance)
                await stop(instance)
            case .stopped:
                expectExit(instance)
            }
            return
        }
        if registered.contains(instance) {
            switch report {
            case .ready:
                registered.remove(instance)
                await takeOver(registeredInstance: instance)
            case .failed(let reason):
                registered.remove(instance)
                recordError("reported failure: \(reason)", instance: instance)
            case .stopped:
                expectExit(instance)
            }
            return
        }
        if case .stopped = report { expectExit(instance) }
    }

    // MARK: - Registered processes

    /// A registered instance is ready: it gets go when nothing works, the same handoff
    /// as for releases batond starts when another instance works, or waits its turn
    /// while a handoff runs.
    private func takeOver(registeredInstance instance: String) async {
        if run != nil {
            waitingRegistered.append(instance)
        } else if let active, processes[active] != nil {
            await beginRegistered(successor: instance, old: active)
        } else {
            active = instance
            await give(.go, to: instance, handoff: nil)
        }
    }

    /// Registers a process batond did not start, once the caller proved it owns it
    /// (`OwnershipRule`) and no instance holds its pid. Its record is durable before the
    /// token exists; a ledger that cannot write refuses the registration.
    private func register(pid: Int32, version: String, caller: RegistrationCaller) async -> Result<Registration, SupervisorError> {
        guard shutdownDone == nil else { return .failure(.shuttingDown) }
        guard Names.isValidVersion(version) else { return .failure(.invalidVersion(version)) }
        if let refusal = refuseChanges() { return .failure(refusal) }
        if let refusal = OwnershipRule.refusal(pid: pid, caller: caller, daemon: getpid(), tcpUIDs: config.tcpRegistrationUIDs,
                                               facts: .live) {
            logger.warning("registration refused", metadata: ["agent": "\(name)", "pid": "\(pid)", "reason": "\(refusal)"])
            return .failure(refusal)
        }
        let id = nextInstanceID()
        if let holder = context.registry.claim(pid: pid, for: id) {
            return .failure(.alreadyRegistered(pid: pid, instance: holder))
        }
        guard let process = ProcessHandle.foreign(pid: pid) else {
            context.registry.release(pid: pid, claimedBy: id)
            if kill(pid, 0) != 0 && errno == EPERM {
                return .failure(.registrationRefused("batond may not signal process \(pid), so it could not stop it"))
            }
            return .failure(.noSuchProcess(pid))
        }
        let token = context.makeToken()
        record(.instanceSpawned(.init(agent: name, instance: id, version: version, pid: pid, startTime: process.startTime,
                                      handoff: nil, tokenDigest: TokenDigest.hex(token), registered: true)))
        if let failure = await flush() {
            unflushed.removeAll()
            context.registry.release(pid: pid, claimedBy: id)
            return .failure(.ledger(failure.description))
        }
        processes[id] = process
        registered.insert(id)
        context.registry.add(.init(id: id, agent: name, version: version, pid: pid, signal: .wait, handoff: nil,
                                   startedAt: .now(), ready: false, stopped: false, spawned: false,
                                   tokenDigest: TokenDigest.hex(token)))
        let runner = self
        process.watch { status in runner.send(.exited(instance: id, status)) }
        logger.info("instance registered", metadata: ["agent": "\(name)", "instance": "\(id)", "pid": "\(pid)", "version": "\(version)"])
        return .success(Registration(instance: id, token: token, signal: .wait))
    }

    private func beginRegistered(successor: String, old: String) async {
        guard let to = context.registry.instance(successor)?.version else { return }
        let from = context.registry.instance(old)?.version
        let id = nextHandoffID()
        record(.handoffBegan(.init(handoff: id, agent: name, from: from, to: to, mode: .parallel)))
        var run = makeRun(id: id, from: from, to: to, mode: .parallel, hasOld: true)
        run.roles = [.old: old, .successor: successor]
        run.registered = [.successor]
        context.registry.update(successor) { $0.handoff = id }
        self.run = run
        publish()
        logger.info("handoff between registered instances began", metadata: ["agent": "\(name)", "handoff.id": "\(id)"])
        await feed(.begin)
    }

    private func exited(_ instance: String, _ status: ExitStatus) async {
        guard let process = processes.removeValue(forKey: instance) else { return }
        // Nothing signals it from here on: its pid may be freed.
        process.reap()
        probes.removeValue(forKey: instance)?.cancel()
        context.registry.remove(instance)
        context.logs.forget(instance)
        record(.instanceExited(.init(agent: name, instance: instance, exitCode: status.code, signal: status.signal)))
        if let role = role(of: instance) {
            await feed(.exited(role, description: status.description))
            return
        }
        registered.remove(instance)
        waitingRegistered.removeAll { $0 == instance }
        let wasStarting = starting.remove(instance) != nil
        guard active == instance else { return }
        active = nil
        guard shutdownDone == nil else { return }
        let reason = wasStarting ? "exited before it was ready (\(status))" : "exited unexpectedly (\(status))"
        recordError(reason, instance: instance, output: process.log?.lastOutput)
        if let since = goSince, ContinuousClock.now - since > .seconds(60) { backoff = .seconds(1) }
        goSince = nil
        scheduleRestart()
    }

    /// Exponential backoff from 1 s to 60 s, reset after a minute of stable work.
    private func scheduleRestart() {
        guard shutdownDone == nil else { return }
        nextToken += 1
        let token = nextToken
        restartToken = token
        let delay = backoff
        backoff = min(backoff * 2, .seconds(60))
        context.stats.backingOff(agent: name, true)
        logger.notice("restarting after backoff", metadata: ["agent": "\(name)", "delay": "\(delay)"])
        let runner = self
        Task {
            try? await Task.sleep(for: delay)
            runner.send(.restart(token: token))
        }
    }

    /// A stopped instance must exit: TERM after kill_timeout, KILL after twice that.
    private func expectExit(_ instance: String) {
        escalateLater(instance, SIGTERM, after: config.killTimeout)
        escalateLater(instance, SIGKILL, after: config.killTimeout * 2)
    }

    private func stop(_ instance: String) async {
        await whenDurable {
            guard let process = self.processes[instance] else { return }
            process.send(SIGTERM)
            self.escalateLater(instance, SIGKILL, after: self.config.killTimeout)
        }
    }

    private func escalateLater(_ instance: String, _ signal: Int32, after delay: Duration) {
        let runner = self
        Task {
            try? await Task.sleep(for: delay)
            runner.send(.escalate(instance: instance, signal))
        }
    }

    // MARK: - Handoffs

    private func begin(to version: String, mode: HandoffMode, by: String) async -> Result<HandoffView, SupervisorError> {
        guard shutdownDone == nil else { return .failure(.shuttingDown) }
        guard Names.isValidVersion(version) else { return .failure(.invalidVersion(version)) }
        if let refusal = refuseChanges() { return .failure(refusal) }
        guard context.releases.exists(agent: name, version: version) else {
            return .failure(.releaseNotFound(agent: name, version: version))
        }
        if let run { return .failure(.handoffInProgress(run.view.id)) }
        // A supervised start that has not reported ready yet is superseded: the successor
        // takes its place.
        let superseded = active.flatMap { starting.contains($0) ? $0 : nil }
        let working = superseded == nil ? active : nil
        let from = working.flatMap { context.registry.instance($0)?.version } ?? context.releases.current(agent: name)
        let id = nextHandoffID()
        record(.agentDesired(.init(agent: name, version: version, mode: mode, by: by)))
        record(.handoffBegan(.init(handoff: id, agent: name, from: from, to: version, mode: mode)))
        if let failure = await flush() {
            // Refused: its records must not reach the ledger later either.
            unflushed.removeAll()
            return .failure(.ledger(failure.description))
        }
        // Recorded: the superseded start and a pending restart give way.
        restartToken = nil
        context.stats.backingOff(agent: name, false)
        if let superseded {
            starting.remove(superseded)
            active = nil
            await stop(superseded)
        }
        var run = makeRun(id: id, from: from, to: version, mode: mode, hasOld: active != nil)
        if let active { run.roles[.old] = active }
        self.run = run
        publish()
        logger.info("handoff began", metadata: ["agent": "\(name)", "handoff.id": "\(id)", "from": "\(from ?? "-")", "to": "\(version)"])
        await feed(.begin)
        // The book holds every change of the view, also after a handoff that already ended.
        return .success(context.handoffs.view(id) ?? run.view)
    }

    private func role(of instance: String) -> Handoff.Role? {
        run?.roles.first { $0.value == instance }?.key
    }

    /// Gives the machine an event and performs what it asks, in order.
    private func feed(_ event: Handoff.Event) async {
        guard var current = run else { return }
        if case .stopped(.old) = event, current.oldGoneAt == nil { current.oldGoneAt = .now }
        if case .exited(.old, _) = event, current.oldGoneAt == nil { current.oldGoneAt = .now }
        let actions = current.machine.handle(event)
        run = current
        // Each action in order; an effect only once the records before it are durable.
        await perform(actions)
    }

    /// Performs a machine's actions in order; an effect only once the records before it
    /// are durable.
    private func perform(_ actions: [Handoff.Action]) async {
        for action in actions {
            switch action {
            case .signalGo(let role), .signalStop(let role):
                let signal: AgentSignal = action == .signalGo(role) ? .go : .stop
                await inOrder {
                    guard let run = self.run, let instance = run.roles[role] else { return }
                    self.record(.instanceSignal(.init(agent: self.name, instance: instance, signal: signal, handoff: run.view.id)))
                }
                await whenDurable { await self.perform(action) }
            case .spawn, .terminate, .kill:
                await whenDurable { await self.perform(action) }
            case .recordPhase, .startTimer, .cancelTimer, .commit, .end:
                await inOrder { await self.perform(action) }
            }
        }
    }

    private func perform(_ action: Handoff.Action) async {
        guard var current = run else { return }
        let id = current.view.id
        switch action {
        case .recordPhase(let phase):
            current.view.phase = phase.rawValue
            current.view.steps.append(.init(phase: phase.rawValue, at: .now()))
            run = current
            publish()
            record(.handoffPhase(.init(handoff: id, agent: name, phase: phase.rawValue)))
        case .spawn(let role) where current.registered.contains(role):
            await feed(.spawned(role))
            await feed(.ready(role))
        case .spawn(let role):
            let version = role == .previous ? (current.view.from ?? current.view.to) : current.view.to
            switch await spawn(version: version, handoff: id, role: role) {
            case .success(let instance):
                run?.roles[role] = instance
                await feed(.spawned(role))
            case .failure(let error):
                await feed(.spawnFailed(role, reason: error.description))
            }
        case .signalGo(let role):
            guard let instance = current.roles[role] else { return }
            context.registry.setSignal(instance, .go, handoff: id)
            if let gone = current.oldGoneAt ?? current.resumedAt {
                let gap = ContinuousClock.now - gone
                run?.gapMs = Double(gap.components.seconds) * 1000 + Double(gap.components.attoseconds) / 1e15
            }
            active = instance
            goSince = .now
            backoff = .seconds(1)
        case .signalStop(let role):
            guard let instance = current.roles[role] else { return }
            context.registry.setSignal(instance, .stop, handoff: id)
            // An agent without the protocol cannot hear stop: SIGTERM is its stop.
            if config.readiness != nil { processes[instance]?.send(SIGTERM) }
        case .terminate(let role):
            guard let instance = current.roles[role], let process = processes[instance] else { return }
            process.send(SIGTERM)
        case .kill(let role):
            guard let instance = current.roles[role], let process = processes[instance] else { return }
            process.send(SIGKILL)
        case .startTimer(let timer, let duration):
            nextToken += 1
            let token = nextToken
            let runner = self
            timers[timer]?.task.cancel()
            timers[timer] = (token, Task {
                try? await Task.sleep(for: duration)
                guard !Task.isCancelled else { return }
                runner.send(.handoffTimer(timer, token: token))
            })
        case .cancelTimer(let timer):
            timers.removeValue(forKey: timer)?.task.cancel()
        case .commit:
            let from = current.view.from
            record(.releaseCurrent(.init(agent: name, version: current.view.to, previous: from)))
            let version = current.view.to
            await whenDurable {
                // Registered processes may run releases batond does not store.
                guard self.context.releases.exists(agent: self.name, version: version) else { return }
                do {
                    try self.context.releases.setCurrent(agent: self.name, version: version)
                } catch {
                    self.logger.critical("cannot flip the current release", metadata: ["agent": "\(self.name)", "error": "\(error)"])
                }
            }
        case .end(let outcome, let error):
            await end(outcome, error: error)
        }
    }

    private func end(_ outcome: HandoffOutcome, error: String?) async {
        guard var current = run else { return }
        for (_, timer) in timers { timer.task.cancel() }
        timers = [:]
        let now = Timestamp.now()
        current.view.outcome = outcome
        current.view.error = error
        current.view.gapMs = current.gapMs
        current.view.endedAt = now
        current.view.phase = current.machine.phase.rawValue
        current.view.steps.append(.init(phase: current.machine.phase.rawValue, at: now))
        run = current
        publish()
        // The error first: whoever sees the end in the ledger finds the reason there too.
        if let error {
            let failed = current.roles[.successor]
            // Its output is in its log file, also once it exited.
            let output = failed.map { context.log($0).lastOutput } ?? ""
            recordError(error, instance: failed, output: output)
        }
        record(.handoffEnded(.init(handoff: current.view.id, agent: name, outcome: outcome, gapMs: current.gapMs, error: error)))
        context.stats.handoffEnded(agent: name, outcome: outcome, gapMs: current.gapMs)
        logger.info("handoff ended", metadata: ["agent": "\(name)", "handoff.id": "\(current.view.id)",
                                                "outcome": "\(outcome.rawValue)", "gap_ms": "\(current.gapMs.map { String($0) } ?? "-")"])
        guard shutdownDone == nil else {
            // batond stops: every instance is stopped the normal way, nothing restarts.
            run = nil
            return
        }
        // Instances of this handoff that are not the one holding go must go away.
        for (role, instance) in current.roles where instance != active {
            if role == .old, current.machine.oldAlive { continue }
            if processes[instance] != nil, context.registry.instance(instance)?.stopped == false { await stop(instance) }
        }
        run = nil
        if let next = waitingRegistered.first {
            waitingRegistered.removeFirst()
            if processes[next] != nil { await takeOver(registeredInstance: next) }
            return
        }
        if outcome == .failed, let active, processes[active] == nil {
            // The old instance is gone (crashed, or stopped for a successor that then
            // failed): supervision brings the current release back.
            self.active = nil
            scheduleRestart()
        } else if outcome == .failed, active == nil {
            scheduleRestart()
        }
    }

    private func publish() {
        if let view = run?.view { context.handoffs.store(view) }
    }

    // MARK: - Shutdown

    /// batond stops. By default its agents keep working: batond lets go of every
    /// instance as it is, a handoff in flight included, and the next batond re-adopts
    /// them from the ledger. With `stop_agents_on_exit`, every instance is stopped the
    /// normal way: stop signal, then TERM after stop_timeout, then KILL after kill_timeout.
    private func stopEverything() async {
        restartToken = nil
        for (_, timer) in timers { timer.task.cancel() }
        timers = [:]
        guard context.stopAgentsOnExit else { return await letGo() }
        // Registered instances belong to another supervisor unless the config says otherwise:
        // batond lets go of them (their tokens die with it) and never signals them.
        if !config.stopRegisteredOnExit {
            for (instance, process) in processes where process.isRegistered {
                processes[instance] = nil
                context.registry.remove(instance)
                logger.info("leaving a registered instance running", metadata: ["agent": "\(name)", "instance": "\(instance)", "pid": "\(process.pid)"])
            }
        }
        // batond stops even when the ledger cannot write: stopping never lets two work,
        // and what waits for the ledger (a go, a spawn, a current flip) is not done.
        if !deferred.isEmpty {
            logger.warning("stopping with effects that were never recorded; they are not done",
                           metadata: ["agent": "\(name)", "effects": "\(deferred.count)"])
            deferred.removeAll()
            context.stats.effectsWaiting(agent: name, 0)
        }
        // A handoff cut short by batond's own stop is nobody's fault: it ends cancelled.
        if run != nil { await feed(.cancel) }
        for instance in processes.keys {
            record(.instanceSignal(.init(agent: name, instance: instance, signal: .stop, handoff: run?.view.id)))
        }
        await flush()
        for instance in processes.keys {
            context.registry.setSignal(instance, .stop, handoff: run?.view.id)
            if config.readiness != nil { processes[instance]?.send(SIGTERM) }
            escalateLater(instance, SIGTERM, after: config.stopTimeout)
            escalateLater(instance, SIGKILL, after: config.stopTimeout + config.killTimeout)
        }
    }

    /// Leaves every instance working as it is. What waits for the ledger is not done
    /// (it was never recorded); what was recorded is made durable if the ledger can.
    private func letGo() async {
        for task in probes.values { task.cancel() }
        probes = [:]
        if !deferred.isEmpty {
            logger.warning("stopping with effects that were never recorded; they are not done",
                           metadata: ["agent": "\(name)", "effects": "\(deferred.count)"])
            deferred.removeAll()
            context.stats.effectsWaiting(agent: name, 0)
        }
        await flush()
        // The registry keeps them: forgetting one would answer its long-poll with stop.
        // Their parked requests get 503 when the HTTP side stops; they retry.
        for (instance, process) in processes {
            logger.info("leaving an instance working", metadata: ["agent": "\(name)", "instance": "\(instance)", "pid": "\(process.pid)"])
        }
        processes = [:]
    }

    private func finishShutdown() {
        shutdownDone?()
        shutdownDone = nil
        inbox.finish()
    }

    // MARK: - Spawning and records

    private func spawn(version: String, handoff: String?, role: Handoff.Role? = nil) async -> Result<String, SpawnError> {
        guard let directory = context.releases.directory(agent: name, version: version) else {
            return .failure(SpawnError(description: "invalid version \(version)"))
        }
        let id = nextInstanceID()
        let token = context.makeToken()
        var baton = ["BATON_SOCKET": context.socketPath, "BATON_AGENT": name, "BATON_INSTANCE": id,
                     "BATON_TOKEN": token, "BATON_VERSION": version]
        if let url = context.url { baton["BATON_URL"] = url }
        let argv = config.command.map { $0.replacingOccurrences(of: "{release}", with: directory) }
        let held: HeldProcess
        let environment: [String: String]
        do {
            let credentials = try Credentials.resolve(user: config.user, group: config.group)
            environment = InstanceEnvironment.make(config: config, uid: credentials?.uid ?? getuid(),
                                                   inherited: ProcessInfo.processInfo.environment, baton: baton)
            held = try Processes.spawn(argv: argv, environment: environment, log: context.log(id),
                                       directory: directory, credentials: credentials)
        } catch {
            // The generation is used up either way, so ids never repeat.
            record(.instanceSpawned(.init(agent: name, instance: id, version: version, pid: 0, startTime: 0, handoff: handoff)))
            record(.instanceExited(.init(agent: name, instance: id, exitCode: nil, signal: nil)))
            return .failure(error)
        }
        // No effect without a record: the process runs nothing of the agent until its
        // record is durable, so a batond killed meanwhile leaves no unknown instance.
        record(.instanceSpawned(.init(agent: name, instance: id, version: version, pid: held.pid,
                                      startTime: held.startTime, handoff: handoff, role: role?.rawValue,
                                      tokenDigest: TokenDigest.hex(token))))
        if let failure = await flush() {
            // Given up before exec; when the ledger writes again it says so.
            record(.instanceExited(.init(agent: name, instance: id, exitCode: 127, signal: nil)))
            return .failure(SpawnError(description: "not started: \(failure)"))
        }
        let process: ProcessHandle
        do {
            process = try held.release()
        } catch {
            record(.instanceExited(.init(agent: name, instance: id, exitCode: 127, signal: nil)))
            return .failure(error)
        }
        processes[id] = process
        context.logs.watch(id, context.log(id))
        context.registry.add(.init(id: id, agent: name, version: version, pid: process.pid, signal: .wait, handoff: handoff,
                                   startedAt: .now(), ready: false, stopped: false, spawned: true,
                                   tokenDigest: TokenDigest.hex(token)))
        let runner = self
        process.watch { status in runner.send(.exited(instance: id, status)) }
        if let readiness = config.readiness {
            // The agent cannot report ready: its probe does, on its behalf.
            let probeLog = context.log(id + ".probe")
            probes[id] = Task { [environment] in
                guard await ReadinessProbe.wait(for: readiness, directory: directory, environment: environment,
                                                log: probeLog) else { return }
                runner.send(.report(instance: id, .ready, reply: { _ in }))
            }
        }
        logger.info("instance started", metadata: ["agent": "\(name)", "instance": "\(id)", "pid": "\(process.pid)", "version": "\(version)"])
        return .success(id)
    }

    private func recordError(_ reason: String, instance: String?, output: String? = nil) {
        let tail = output ?? instance.flatMap { processes[$0]?.log?.lastOutput } ?? ""
        logger.warning("agent error", metadata: ["agent": "\(name)", "instance": "\(instance ?? "-")", "reason": "\(reason)"])
        record(.agentError(.init(agent: name, reason: reason, stderrTail: tail, handoff: run?.view.id, instance: instance)))
    }

    /// Queues a record. Records are written (one group commit) by `flush`, which runs
    /// before every effect anyone can see: a signal, a process started or signalled,
    /// `current` flipped, an answer. So each step is durable before its effect, and a
    /// step's records share one fdatasync instead of paying one each.
    private func record(_ event: LedgerEvent) {
        unflushed.append(event)
    }

    /// Writes the queued records and waits until they are durable. When the ledger cannot
    /// write, the records stay queued (in order, ahead of any new ones) for the next try.
    @discardableResult
    private func flush() async -> LedgerError? {
        guard !unflushed.isEmpty else { return nil }
        let batch = unflushed
        unflushed = []
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<[Record], LedgerError>, Never>) in
            context.ledger.append(batch) { continuation.resume(returning: $0) }
        }
        guard case .failure(let error) = result else {
            ledgerRefused = false
            return nil
        }
        unflushed = batch + unflushed
        if !ledgerRefused {
            ledgerRefused = true
            logger.error("cannot record \(batch.map(\.kind).joined(separator: ", ")); effects wait for the ledger",
                         metadata: ["agent": "\(name)", "error": "\(error)"])
        }
        return error
    }

    // MARK: - Ledger before effect

    /// Runs `effect` once every record queued so far is durable. While the ledger cannot
    /// write, the effect waits behind those already waiting, so effects keep their order.
    private func whenDurable(_ effect: @escaping () async -> Void) async {
        guard deferred.isEmpty, await flush() == nil else { return holdBack(effect) }
        await effect()
    }

    /// Runs a step with no effect outside batond (a record queued, a timer) at once, or,
    /// while effects wait for the ledger, behind them: steps keep their order without
    /// paying an fdatasync each.
    private func inOrder(_ step: @escaping () async -> Void) async {
        guard deferred.isEmpty else { return holdBack(step) }
        await step()
    }

    private func holdBack(_ step: @escaping () async -> Void) {
        deferred.append(step)
        context.stats.effectsWaiting(agent: name, deferred.count)
    }

    /// The ledger writes again: runs the waiting effects in order. An effect that decides
    /// more effects runs them before the next waiting one, as it would have without the
    /// wait; if the ledger fails again, the rest keep waiting.
    private func runDeferred() async {
        while !deferred.isEmpty {
            guard await flush() == nil else { return }
            let next = deferred.removeFirst()
            let rest = deferred
            deferred = []
            await next()
            deferred += rest
            context.stats.effectsWaiting(agent: name, deferred.count)
        }
        await flush()
    }

    /// Requests that change something are refused while effects wait for the ledger: their
    /// answer could not be made durable, and their effects would pile up behind the others.
    private func refuseChanges() -> SupervisorError? {
        guard deferred.isEmpty, context.ledger.isWritable else {
            return .ledger("the ledger cannot write; batond retries by itself (see /readyz)")
        }
        return nil
    }
}
