import BatonConfig
import BatonCore
import BatonLedger
import BatonReleases
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
    /// A rollback from an irreversible release, without force.
    case irreversibleRelease(agent: String, version: String, previous: String)
    case shuttingDown
    case ledger(String)
    case instanceNotFound(String)
    /// The caller may not register this process (it does not own it).
    case registrationRefused(String)
    /// A machine rollout (`PUT /v1/version`) moves this agent until it ends.
    case rolloutInProgress(String)
    /// The pid is already an instance (of this agent or another).
    case alreadyRegistered(pid: Int32, instance: String)
    /// A handoff of an agent batond does not start (`external`): its desired version is
    /// only recorded, for its instances to fetch and start.
    case externalAgent(String)
    /// A url or sha256 with a desired version of an agent batond starts itself.
    case notExternal(String)
}

/// What an instance reports about itself.
public enum InstanceReport: Sendable, Equatable {
    case ready
    case failed(reason: String)
    case stopped
}

/// Runs one agent: the shell that performs what its `Supervision` machine decides. The
/// machine says who works, what starts and what must go; the runner turns processes,
/// reports, timers and requests into its events, and its actions into records, signals
/// and processes.
///
/// One event loop: the mailbox, one message at a time to completion (ledger appends
/// included). An action whose performing yields an event (a spawn answers `.spawned` or
/// `.spawnFailed`) queues it in `followUps`, fed before the next message: the machine
/// never hears an event from inside another's actions. One timer facility, keyed by
/// `Supervision.TimerKey`: starting a key replaces its timer, and only its latest
/// firing is fed.
///
/// Ledger before effect: every effect (a signal, a process started or signalled,
/// `current` flipped, a token issued) runs through `whenDurable`, after every record
/// queued before it is on disk. While the ledger cannot write, effects wait in order in
/// `deferred` and run, in that order, once it recovers; requests that would change
/// something are refused meanwhile (`SupervisorError.ledger`). A spawn that waits so is
/// answered late, after other events: a `.spawned` the machine no longer waits for is a
/// stray to it, and terminated. At shutdown, effects no longer wait (stopping never lets
/// two work) and those still waiting are dropped.
actor AgentRunner {
    typealias Machine = Supervision<ContinuousClock>

    enum Message: Sendable {
        /// `force`: hand over even to the version that already works.
        case desired(version: String, mode: HandoffMode?, by: String, force: Bool,
                     reply: @Sendable (Result<DesiredAnswer, SupervisorError>) -> Void)
        /// An external agent's desired version: recorded and shown to its instances.
        case recordDesired(DesiredRequest, by: String, reply: @Sendable (Result<DesiredVersion, SupervisorError>) -> Void)
        /// `force`: also from an irreversible release.
        case rollback(by: String, force: Bool, reply: @Sendable (Result<HandoffView, SupervisorError>) -> Void)
        case report(instance: String, InstanceReport, reply: @Sendable (Result<SignalView, SupervisorError>) -> Void)
        case register(pid: Int32, version: String, caller: RegistrationCaller,
                      reply: @Sendable (Result<Registration, SupervisorError>) -> Void)
        case exited(instance: String, ExitStatus)
        /// A timer went off; only the latest start of its key (`generation`) counts.
        case timerFired(Machine.TimerKey, generation: Int)
        /// The ledger writes again: deferred effects may run.
        case ledgerRecovered
        case shutdown(done: @Sendable () -> Void)
        /// A barrier upgrade: stop every instance, start none; `done` once none is left
        /// (nil: refused, with why).
        case halt(done: @Sendable (SupervisorError?) -> Void)
    }

    /// The handoff the machine runs, as the API shows it.
    struct Flight {
        var view: HandoffView
        /// The instance that held go when it began; the gap starts once it is gone.
        var old: String?
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

    private var machine: Machine
    /// Events that performing actions yielded, fed in order before the next message.
    private var followUps: [Machine.Event] = []
    private var processes: [String: ProcessHandle] = [:]
    private var timers: [Machine.TimerKey: (generation: Int, task: Task<Void, Never>)] = [:]
    private var timerGenerations = 0
    /// Retries `current` after a failed flip (`catchUpCurrent`).
    private var currentCatchUp: Task<Void, Never>?
    private var flight: Flight?
    private var shutdownDone: (@Sendable () -> Void)?
    /// Who waits for the halt to leave no instance.
    private var haltWaiters: [@Sendable (SupervisorError?) -> Void] = []
    /// Readiness probes running, for agents that do not speak the protocol.
    private var probes: [String: Task<Void, Never>] = [:]
    /// Records not yet written: see `record` and `flush`.
    private var unflushed: [LedgerEvent] = []
    /// The desired version `begin` queued with its handoff's first records, not yet in the
    /// ledger's state: whom that handoff's record names as asking.
    private var asked: (version: String, by: String)?
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
        machine = Machine(settings: .init(timeouts: .init(ready: config.readyTimeout, stop: config.stopTimeout, kill: config.killTimeout),
                                          stopRegisteredOnExit: config.stopRegisteredOnExit,
                                          firstBackoff: config.restartBackoff, maxBackoff: config.restartBackoffMax,
                                          crashLoopExits: config.crashLoopExits, crashLoopWindow: config.crashLoopWindow,
                                          startsReleases: !config.external),
                          clock: ContinuousClock())
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

    nonisolated func send(_ message: Message) {
        inbox.yield(message)
    }

    var name: String { config.name }
    var logger: Logger { context.logger }

    /// Adopts what an earlier batond left (then `adopted`), and processes messages until
    /// shutdown completes.
    func runLoop(adopted: @Sendable () -> Void) async {
        await boot()
        await flush()
        adopted()
        for await message in mailbox {
            await handle(message)
            await flush()
            if !haltWaiters.isEmpty, machine.state == .halted, machine.instances.isEmpty {
                let waiters = haltWaiters
                haltWaiters = []
                for waiter in waiters { waiter(nil) }
            }
            if shutdownDone != nil, machine.isFinished {
                finishShutdown()
                break
            }
        }
    }

    // MARK: - The event loop

    /// Gives the machine `event`, then every event that performing its actions yields.
    private func feed(_ event: Machine.Event) async {
        followUps.append(event)
        await drain()
    }

    private func drain() async {
        while !followUps.isEmpty {
            let event = followUps.removeFirst()
            switch event {
            case .stopped(let id), .exited(let id, _):
                if id == flight?.old, flight?.oldGoneAt == nil {
                    flight?.oldGoneAt = .now
                    logger.info("handoff: the old instance is gone; the successor gets go", metadata: [
                        "agent": "\(name)", "handoff.id": "\(flight?.view.id ?? "-")", "instance": "\(id)"])
                }
            case .boot, .desired, .spawned, .spawnFailed, .registered, .ready, .failed, .timerFired, .shutdown, .halt:
                break
            }
            await perform(machine.handle(event))
        }
    }

    /// Performs the actions in order: records first, each effect only once the records
    /// before it are durable.
    private func perform(_ actions: [Machine.Action]) async {
        // The go that follows a commit is recorded with it: the flip and the go then wait
        // for one fdatasync, not two, and the gap holds only one.
        var goRecordedWithCommit: String?
        for (index, action) in actions.enumerated() {
            switch action {
            case .record(let note):
                await inOrder { self.record(note) }
            case .recordError(let reason, let instance):
                await inOrder { self.recordError(reason, instance: instance) }
            case .spawn(let spawn):
                await whenDurable { await self.spawn(spawn) }
            case .signal(let instance, let signal):
                if goRecordedWithCommit != instance || signal != .go {
                    await inOrder { self.recordSignal(instance, signal) }
                }
                await whenDurable { self.signal(instance, signal) }
            case .signalGoAhead(let instance):
                await goAhead(instance)
            case .terminate(let instance):
                await whenDurable { self.processes[instance]?.send(SIGTERM) }
            case .kill(let instance):
                await whenDurable { self.processes[instance]?.send(SIGKILL) }
            case .startTimer(let key, let duration):
                await inOrder { self.startTimer(key, duration) }
            case .cancelTimer(let key):
                await inOrder { self.cancelTimer(key) }
            case .commit(let version):
                var go: String?
                if index + 1 < actions.count, case .signal(let instance, .go) = actions[index + 1] { go = instance }
                goRecordedWithCommit = go
                await inOrder {
                    self.record(.releaseCurrent(.init(agent: self.name, version: version, previous: self.flight?.view.from)))
                    if let go { self.recordSignal(go, .go) }
                }
                await whenDurable { self.flipCurrent(to: version) }
            case .release(let instance):
                letGo(instance)
            case .refuse:
                break // the request that caused it answers with it: see `attempt`
            }
        }
    }

    /// The successor hears go the moment the old instance is gone, before the records
    /// that came with that (the old one's stop or exit, this go, the commit after it) are
    /// durable: the ledger holds the decision already, in the handoff's `stopping_old`,
    /// and a restarted batond finishes such a handoff as committed (docs/ledger.md). So
    /// the commit's fdatasync follows the go instead of sitting in the gap. Unless the
    /// ledger shows that phase durable for this handoff, and no effect waits for it, the
    /// go waits for its record like any other.
    private func goAhead(_ instance: String) async {
        let durable = context.ledger.state.agents[name]?.handoff
        guard let id = flight?.view.id, durable?.id == id, durable?.phase == Handoff.Phase.stoppingOld.rawValue,
              deferred.isEmpty, shutdownDone == nil else {
            await inOrder { self.recordSignal(instance, .go) }
            return await whenDurable { self.signal(instance, .go) }
        }
        signal(instance, .go)
        recordSignal(instance, .go)
        if CrashPoint.goBeforeCommit.isArmed {
            // Dies once the successor asks again with `seen=go`: it heard go for sure.
            for _ in 0..<10_000 where !context.registry.isParked(instance, seen: .go) {
                try? await Task.sleep(for: .milliseconds(1))
            }
            CrashPoint.goBeforeCommit.reached()
        }
    }

    private func recordSignal(_ instance: String, _ signal: AgentSignal) {
        record(.instanceSignal(.init(agent: name, instance: instance, signal: signal, handoff: flight?.view.id)))
    }

    /// A request that changes something, tried on a copy of the machine: its refusal, or
    /// the actions to perform once the caller made its own records durable.
    private func attempt(_ event: Machine.Event) -> (Machine, [Machine.Action], SupervisorError?) {
        var trial = machine
        let actions = trial.handle(event)
        for case .refuse(let refusal) in actions {
            let error: SupervisorError = switch refusal {
            case .handoffInProgress: .handoffInProgress(flight?.view.id ?? "in progress")
            // `runLoop` boots before it reads a request: a request is never before boot.
            case .notBooted, .shuttingDown: .shuttingDown
            case .startsNoReleases: .externalAgent(name)
            }
            return (machine, [], error)
        }
        return (trial, actions, nil)
    }

    private func handle(_ message: Message) async {
        switch message {
        case .desired(let version, let mode, let by, let force, let reply):
            // A verdict on a crash loop stands until an operator's handoff: that one is not a no-op.
            if !force, machine.verdict == nil, let working = workingVersion, working == version {
                return reply(await unchanged(version, mode: mode ?? config.mode, by: by))
            }
            await answerWhenDurable(await begin(to: version, mode: mode ?? config.mode, by: by).map(DesiredAnswer.handoff), reply)
        case .recordDesired(let request, let by, let reply):
            reply(await recordDesired(request, by: by))
        case .rollback(let by, let force, let reply):
            let state = context.ledger.state.agents[name]
            guard let previous = state?.previous, context.releases.exists(agent: name, version: previous) else {
                return reply(.failure(.noPreviousRelease(name)))
            }
            // The release it leaves may have migrated data the previous one cannot read.
            if !force, let current = state?.current, isIrreversible(current) {
                return reply(.failure(.irreversibleRelease(agent: name, version: current, previous: previous)))
            }
            await answerWhenDurable(await begin(to: previous, mode: config.mode, by: by), reply)
        case .report(let instance, let report, let reply):
            guard context.registry.instance(instance) != nil else { return reply(.failure(.instanceNotFound(instance))) }
            await received(report, from: instance)
            if let failure = await flush() { return reply(.failure(.ledger(failure.description))) }
            guard let view = context.registry.view(instance) else { return reply(.failure(.instanceNotFound(instance))) }
            reply(.success(view))
        case .register(let pid, let version, let caller, let reply):
            reply(await register(pid: pid, version: version, caller: caller))
        case .exited(let instance, let status):
            await exited(instance, status)
        case .timerFired(let key, let generation):
            guard timers[key]?.generation == generation else { return }
            timers[key] = nil
            if key == .restart { context.stats.restarted(agent: name) }
            await feed(.timerFired(key))
        case .ledgerRecovered:
            await runDeferred()
        case .shutdown(let done):
            await shutDown(done)
        case .halt(let done):
            if let refusal = refuseChanges() { return done(refusal) }
            let (next, actions, refusal) = attempt(.halt)
            if let refusal { return done(refusal) }
            machine = next
            haltWaiters.append(done)
            logger.notice("halting for a barrier upgrade", metadata: ["agent": "\(name)", "instances": "\(machine.instances.count)"])
            await perform(actions)
            await drain()
        }
    }

    // MARK: - Boot: adoption

    /// batond starts where an earlier batond left off (killed, or stopped without
    /// stopping its agents): every instance the ledger says is live and that still runs,
    /// the same pid *and* process start time, is adopted with its recorded signal and
    /// token (by its digest); the others are recorded as gone. The machine decides the
    /// rest (`Supervision.adopt`): a handoff left in flight is finished or ended, and the
    /// current release starts only when nothing was adopted to work.
    private func boot() async {
        if let fixed = context.releases.reconcile(agent: name, recorded: context.ledger.state.agents[name]?.current) {
            logger.warning("current did not match the ledger's last commit; fixed", metadata: ["agent": "\(name)", "current": "\(fixed)"])
        }
        let recorded = context.ledger.state.agents[name]
        let interrupted = recorded?.handoff
        if let interrupted {
            let steps = [HandoffView.Step(phase: interrupted.phase, at: interrupted.startedAt)]
            flight = Flight(view: HandoffView(id: interrupted.id, agent: name, from: interrupted.from, to: interrupted.to,
                                              mode: interrupted.mode, phase: interrupted.phase, outcome: nil, error: nil, gapMs: nil,
                                              startedAt: interrupted.startedAt, endedAt: nil, steps: steps, by: interrupted.by),
                            resumedAt: .now)
            publish()
            logger.notice("taking up a handoff left in flight", metadata: ["agent": "\(name)", "handoff.id": "\(interrupted.id)",
                                                                             "phase": "\(interrupted.phase)"])
        }
        let instances = (recorded.map { Array($0.instances.values) } ?? []).sorted { ($0.startedAt, $0.id) < ($1.startedAt, $1.id) }
        let found = instances.map { adopt($0, in: interrupted) }
        if !config.listen.isEmpty {
            // Before anything starts: an adopted instance may hold the sockets, the one
            // holding go first.
            let holders = found.filter { $0.alive && !$0.registered }.sorted { $0.signal == .go && $1.signal != .go }
            context.sockets.open(config, holders: holders.compactMap { processes[$0.id] })
        }
        let current = context.releases.current(agent: name)
        await feed(.boot(current: current, instances: found, handoff: interrupted.map { handoff in
            // "began" is recorded with its first phase, before any effect: nothing of it
            // happened, and a handoff that spawned nothing ends cancelled.
            Machine.InterruptedHandoff(mode: Handoff.Mode(handoff.mode), from: handoff.from, to: handoff.to,
                                       phase: Handoff.Phase(rawValue: handoff.phase) ?? .spawning)
        }, releases: releaseFacts(current: current, recorded: recorded, adopted: found)))
        if case .handingOff(let run) = machine.state { flight?.old = run.roles[.old] }
        if config.external {
            logger.notice("external agent: waiting for its instances to register", metadata: ["agent": "\(name)"])
        } else if current == nil, case .idle = machine.state {
            logger.notice("agent has no current release; waiting for a desired version", metadata: ["agent": "\(name)"])
        }
        publishDesired()
    }

    /// Shows the agent's desired version to its instances (`SignalView.desired`): as
    /// recorded, with the stored release's digest and URL when the record has none.
    private func publishDesired() {
        var desired = context.ledger.state.agents[name]?.desired
        if let recorded = desired, recorded.sha256 == nil, let manifest = context.releases.manifest(agent: name, version: recorded.version) {
            desired?.sha256 = manifest.sha256
            desired?.url = manifest.url
        }
        context.registry.setDesired(agent: name, desired)
    }

    /// What a crash loop needs to know at boot: the previous release if batond stores it,
    /// which of the releases that may become current are irreversible (current, previous,
    /// the target of a handoff in flight, those of adopted instances), and what the ledger
    /// shows supervision decided.
    private func releaseFacts(current: String?, recorded: AgentLedger?, adopted: [Machine.AdoptedInstance]) -> Machine.Releases {
        let previous = recorded?.previous.flatMap { context.releases.exists(agent: name, version: $0) ? $0 : nil }
        var verdict: Machine.Verdict?
        if let rewound = recorded?.rewound { verdict = .rewound(from: rewound.from, to: rewound.to) }
        if let failed = recorded?.failed { verdict = .failed(version: failed.version, reason: failed.reason) }
        let versions = Set([current, previous, recorded?.handoff?.to].compactMap { $0 } + adopted.filter(\.stored).map(\.version))
        // A barrier upgrade had it halted (halting, or halted while the migration ran).
        let rollout = context.ledger.state.machine?.rollout
        let halted = rollout.map { rollout in
            rollout.barrier && rollout.agents.contains { $0.name == name && ($0.status == .halting || $0.status == .halted) }
        } ?? false
        return Machine.Releases(previous: previous, irreversible: versions.filter(isIrreversible), verdict: verdict, halted: halted)
    }

    /// Whether the release declares itself irreversible (`release.json`; one without says nothing).
    private func isIrreversible(_ version: String) -> Bool {
        context.releases.manifest(agent: name, version: version)?.irreversible ?? false
    }

    /// One instance the ledger says is live, as found: adopted (registry entry with its
    /// token digest, watched, its log rotated) if it is still the recorded process, else
    /// recorded as gone.
    private func adopt(_ instance: InstanceLedger, in interrupted: ActiveHandoff?) -> Machine.AdoptedInstance {
        let process = ProcessHandle.adopted(pid: instance.pid, startTime: instance.startTime, leadsGroup: !instance.registered)
        // One recorded before tokens had digests cannot be known by its token: it is
        // taken as told stop, and goes to its exit like any instance told stop.
        let signal: AgentSignal = instance.tokenDigest == nil ? .stop : instance.signal
        let inFlight = instance.handoff != nil && instance.handoff == interrupted?.id
        // Go goes ahead of its record once `stopping_old` is durable: a ready successor
        // recorded in wait may have heard go, and must not hear wait now (docs/ledger.md).
        let undecided = inFlight && interrupted?.phase == Handoff.Phase.stoppingOld.rawValue
            && instance.role == Handoff.Role.successor.rawValue && instance.state == .ready && signal == .wait
        if let process {
            processes[instance.id] = process
            if !instance.registered { context.logs.watch(instance.id, context.log(instance.id)) }
            context.registry.add(.init(id: instance.id, agent: name, version: instance.version, pid: instance.pid,
                                       signal: signal, handoff: inFlight ? instance.handoff : nil,
                                       startedAt: instance.startedAt, ready: instance.state != .spawned,
                                       stopped: instance.state == .stopped, spawned: !instance.registered,
                                       tokenDigest: instance.tokenDigest ?? "", undecided: undecided))
            if signal != instance.signal {
                record(.instanceSignal(.init(agent: name, instance: instance.id, signal: signal, handoff: nil)))
            }
            let runner = self, id = instance.id
            process.watch { status in runner.send(.exited(instance: id, status)) }
            logger.info("instance adopted", metadata: ["agent": "\(name)", "instance": "\(id)", "pid": "\(instance.pid)",
                                                       "signal": "\(signal.rawValue)"])
        } else {
            logger.notice("a recorded instance is gone", metadata: ["agent": "\(name)", "instance": "\(instance.id)", "pid": "\(instance.pid)"])
            record(.instanceExited(.init(agent: name, instance: instance.id, exitCode: nil, signal: nil)))
        }
        let role = inFlight ? instance.role.flatMap(Handoff.Role.init(rawValue:)) : nil
        return .init(id: instance.id, version: instance.version, registered: instance.registered, signal: signal,
                     heldGo: instance.heldGo, ready: instance.state != .spawned, stopped: instance.state == .stopped,
                     role: role, alive: process != nil,
                     stored: !instance.registered || context.releases.exists(agent: name, version: instance.version))
    }

    // MARK: - Requests

    /// The version the instance holding go runs, while no handoff runs.
    private var workingVersion: String? {
        guard case .working(let instance, _) = machine.state, machine.holder == instance else { return nil }
        return machine.instances[instance]?.version
    }

    /// A desired version that already works: recorded (so desired and running agree
    /// again), nothing handed over.
    private func unchanged(_ version: String, mode: HandoffMode, by: String) async -> Result<DesiredAnswer, SupervisorError> {
        if let refusal = refuseChanges() { return .failure(refusal) }
        if context.ledger.state.agents[name]?.desired?.version != version,
           let failure = await writeDesired(.init(agent: name, version: version, mode: mode, by: by)) {
            return .failure(failure)
        }
        return .success(.unchanged(agent: name, version: version))
    }

    /// Records a desired version, durable before anything follows from it, and shows it
    /// to the agent's instances. A record the ledger refused must not reach it later either.
    private func writeDesired(_ desired: AgentDesired) async -> SupervisorError? {
        record(.agentDesired(desired))
        if let failure = await flush() {
            unflushed.removeAll()
            return .ledger(failure.description)
        }
        publishDesired()
        return nil
    }

    /// A handoff to `version`, asked for by `by`: answered with its view once its
    /// first records are durable.
    private func begin(to version: String, mode: HandoffMode, by: String) async -> Result<HandoffView, SupervisorError> {
        guard Names.isValidVersion(version) else { return .failure(.invalidVersion(version)) }
        if let refusal = refuseChanges() { return .failure(refusal) }
        guard context.releases.exists(agent: name, version: version) else {
            return .failure(.releaseNotFound(agent: name, version: version))
        }
        let (next, actions, refusal) = attempt(.desired(version: version, mode: Handoff.Mode(mode), irreversible: isIrreversible(version)))
        if let refusal { return .failure(refusal) }
        // The desired version goes to disk in one batch with the handoff's first records: a
        // batond killed between two batches would leave a desired version recorded that
        // nothing hands over to. So `handoff.began` goes first, ahead of any effect (a
        // start not yet ready is terminated before the handoff begins).
        record(.agentDesired(.init(agent: name, version: version, mode: mode, by: by)))
        asked = (version, by)
        machine = next
        let began = actions.filter(\.beginsHandoff)
        await perform(began + actions.filter { !$0.beginsHandoff })
        asked = nil
        publishDesired()
        await drain()
        await flush()
        // The handoff just begun took the last number. The book holds every change of its
        // view, also once it ended.
        let id = "\(name)-\(handoffNumbers)"
        guard let view = context.handoffs.view(id) else { return .failure(.ledger("handoff \(id) was not recorded")) }
        return .success(view)
    }

    /// Answers a change once its records are durable: a handoff begun while the ledger
    /// failed under it is acknowledged only when the ledger writes again (its records and
    /// effects wait in order until then; the API answers `503 timeout` meanwhile, "it may
    /// still take effect"). A refusal answers at once.
    private func answerWhenDurable<Success>(_ result: Result<Success, SupervisorError>,
                                            _ reply: @escaping @Sendable (Result<Success, SupervisorError>) -> Void) async {
        guard case .success = result else { return reply(result) }
        await whenDurable { reply(result) }
    }

    /// An external agent's desired version: recorded, then shown to its instances, which
    /// fetch and start it themselves. Nothing begins here: the handoff follows when an
    /// instance of that version registers and reports ready.
    private func recordDesired(_ request: DesiredRequest, by: String) async -> Result<DesiredVersion, SupervisorError> {
        guard config.external else { return .failure(.notExternal(name)) }
        guard Names.isValidVersion(request.version) else { return .failure(.invalidVersion(request.version)) }
        if let refusal = refuseChanges() { return .failure(refusal) }
        if let failure = await writeDesired(.init(agent: name, version: request.version, mode: request.mode ?? config.mode, by: by,
                                                   url: request.url, sha256: request.sha256?.lowercased())) {
            return .failure(failure)
        }
        logger.info("desired version recorded for the agent to fetch", metadata: ["agent": "\(name)", "version": "\(request.version)"])
        guard let recorded = context.ledger.state.agents[name]?.desired else { return .failure(.ledger("the desired version was not recorded")) }
        return .success(recorded)
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
            await feed(.ready(instance))
        case .stopped:
            context.registry.update(instance) { $0.stopped = true }
            record(.instanceStopped(.init(agent: name, instance: instance)))
            await feed(.stopped(instance))
        case .failed(let reason):
            await feed(.failed(instance, reason: reason))
        }
    }

    /// Registers a process batond did not start, once the caller proved it owns it
    /// (`OwnershipRule`) and no instance holds its pid. Its record is durable before the
    /// token exists; a ledger that cannot write refuses the registration.
    private func register(pid: Int32, version: String, caller: RegistrationCaller) async -> Result<Registration, SupervisorError> {
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
        let stored = context.releases.exists(agent: name, version: version)
        let (next, actions, refusal) = attempt(.registered(id, version: version, stored: stored, irreversible: stored && isIrreversible(version)))
        if let refusal {
            context.registry.release(pid: pid, claimedBy: id)
            return .failure(refusal)
        }
        let token = context.makeToken()
        let tokenDigest = TokenDigest.hex(token)
        record(.instanceSpawned(.init(agent: name, instance: id, version: version, pid: pid, startTime: process.startTime,
                                      handoff: nil, tokenDigest: tokenDigest, registered: true)))
        if let failure = await flush() {
            unflushed.removeAll()
            context.registry.release(pid: pid, claimedBy: id)
            return .failure(.ledger(failure.description))
        }
        processes[id] = process
        context.registry.add(.init(id: id, agent: name, version: version, pid: pid, signal: .wait, handoff: nil,
                                   startedAt: .now(), ready: false, stopped: false, spawned: false,
                                   tokenDigest: tokenDigest))
        let runner = self
        process.watch { status in runner.send(.exited(instance: id, status)) }
        logger.info("instance registered", metadata: ["agent": "\(name)", "instance": "\(id)", "pid": "\(pid)", "version": "\(version)"])
        machine = next
        await perform(actions)
        await drain()
        return .success(Registration(instance: id, token: token, signal: .wait))
    }

    private func exited(_ instance: String, _ status: ExitStatus) async {
        guard let process = processes.removeValue(forKey: instance) else { return }
        // Nothing signals it from here on: its pid may be freed.
        process.reap()
        probes.removeValue(forKey: instance)?.cancel()
        context.registry.remove(instance)
        context.logs.forget(instance)
        record(.instanceExited(.init(agent: name, instance: instance, exitCode: status.code, signal: status.signal)))
        await feed(.exited(instance, description: status.description))
    }

    // MARK: - Actions

    /// The instance sees its new signal (its record is durable by now).
    private func signal(_ instance: String, _ signal: AgentSignal) {
        if signal == .go, var flight, instance != flight.old, let gone = flight.oldGoneAt ?? flight.resumedAt {
            let gap = ContinuousClock.now - gone
            flight.gapMs = Double(gap.components.seconds) * 1000 + Double(gap.components.attoseconds) / 1e15
            self.flight = flight
        }
        context.registry.setSignal(instance, signal, handoff: flight?.view.id)
        // Registered processes write elsewhere: only batond's children have a log here.
        if signal == .go, context.registry.instance(instance)?.spawned == true {
            context.linkCurrentLog(agent: name, instance: instance)
        }
        // An agent without the protocol cannot hear stop: SIGTERM is its stop.
        if signal == .stop, config.readiness != nil { processes[instance]?.send(SIGTERM) }
    }

    /// Starts a process for the machine, and queues its answer.
    private func spawn(_ spawn: Machine.Spawn) async {
        var role: Handoff.Role?
        if case .handoff(let part) = spawn.purpose { role = part }
        switch await start(version: spawn.version, handoff: role == nil ? nil : flight?.view.id, role: role) {
        case .success(let instance): followUps.append(.spawned(instance, spawn))
        case .failure(let error): followUps.append(.spawnFailed(spawn, reason: error.description))
        }
    }

    private func flipCurrent(to version: String) {
        // Registered processes may run releases batond does not store.
        guard context.releases.exists(agent: name, version: version) else { return }
        do {
            try context.releases.setCurrent(agent: name, version: version)
        } catch {
            logger.critical("cannot flip the current release; trying again every second",
                            metadata: ["agent": "\(name)", "version": "\(version)", "error": "\(error)"])
            catchUpCurrent()
        }
    }

    /// `current` could not follow a commit (the disk failed on symlink or rename): it is
    /// put in line with the ledger's last commit every second until that works, rather
    /// than at batond's next start.
    private func catchUpCurrent() {
        guard currentCatchUp == nil else { return }
        currentCatchUp = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                let recorded = context.ledger.state.agents[name]?.current
                guard let recorded, context.releases.exists(agent: name, version: recorded) else { break }
                if context.releases.current(agent: name) == recorded { break }
                if context.releases.reconcile(agent: name, recorded: recorded) != nil {
                    logger.notice("current follows the ledger again", metadata: ["agent": "\(name)", "current": "\(recorded)"])
                    break
                }
            }
            currentCatchUp = nil
        }
    }

    private func startTimer(_ key: Machine.TimerKey, _ duration: Duration) {
        timerGenerations += 1
        let generation = timerGenerations
        let runner = self
        timers[key]?.task.cancel()
        timers[key] = (generation, Task {
            try? await Task.sleep(for: duration)
            guard !Task.isCancelled else { return }
            runner.send(.timerFired(key, generation: generation))
        })
        if key == .restart {
            context.stats.backingOff(agent: name, until: Timestamp(milliseconds: Timestamp.now().milliseconds + duration.milliseconds))
            logger.notice("restarting after backoff", metadata: ["agent": "\(name)", "delay": "\(duration)"])
        }
    }

    private func cancelTimer(_ key: Machine.TimerKey) {
        timers.removeValue(forKey: key)?.task.cancel()
        if key == .restart { context.stats.backingOff(agent: name, until: nil) }
    }

    /// A handoff phase in a few words, for batond's log.
    static func says(_ phase: Handoff.Phase) -> String {
        switch phase {
        case .stoppingFirst: "the old instance is told stop first (sequential)"
        case .spawning: "starting the successor"
        case .waitingReady: "the successor runs; waiting for it to report ready"
        case .stoppingOld: "the successor is ready; the old instance is told stop"
        case .abortingSuccessor: "the successor failed; stopping it"
        case .revertingSpawn: "starting the previous release again"
        case .revertingReady: "waiting for the previous release to report ready"
        case .committed, .failed, .reverted, .cancelled: phase.rawValue
        }
    }

    /// What the machine notes, in the ledger and in the handoff's view.
    private func record(_ note: Machine.Note) {
        let now = Timestamp.now()
        switch note {
        case .handoffBegan(let from, let to, let mode):
            let id = nextHandoffID()
            let mode = HandoffMode(mode)
            // Asked for by whoever set the version it goes to; a rewind goes elsewhere.
            let desired = asked ?? context.ledger.state.agents[name]?.desired.map { ($0.version, $0.setBy) }
            let by = desired?.version == to ? desired?.by ?? "batond" : "batond"
            record(.handoffBegan(.init(handoff: id, agent: name, from: from, to: to, mode: mode, by: by)))
            var old: String?
            if case .handingOff(let run) = machine.state { old = run.roles[.old] }
            flight = Flight(view: HandoffView(id: id, agent: name, from: from, to: to, mode: mode, phase: "began", outcome: nil,
                                              error: nil, gapMs: nil, startedAt: now, endedAt: nil, steps: [.init(phase: "began", at: now)], by: by),
                            old: old)
            publish()
            logger.info("handoff began", metadata: ["agent": "\(name)", "handoff.id": "\(id)", "from": "\(from ?? "-")", "to": "\(to)"])
        case .handoffPhase(let phase):
            guard let id = flight?.view.id else { return }
            flight?.view.phase = phase.rawValue
            flight?.view.steps.append(.init(phase: phase.rawValue, at: now))
            publish()
            record(.handoffPhase(.init(handoff: id, agent: name, phase: phase.rawValue)))
            logger.info("handoff: \(Self.says(phase))", metadata: ["agent": "\(name)", "handoff.id": "\(id)", "phase": "\(phase.rawValue)"])
        case .rewound(let from, let to, let reason, let exits, let window):
            record(.agentRewound(.init(agent: name, from: from, to: to, reason: reason, exits: exits, windowMs: window.milliseconds)))
            context.stats.rewound(agent: name)
            logger.error("crash loop: rewinding", metadata: ["agent": "\(name)", "from": "\(from)", "to": "\(to)", "reason": "\(reason)"])
        case .failed(let version, let reason):
            record(.agentFailed(.init(agent: name, version: version, reason: reason)))
            logger.critical("crash loop of an irreversible release: gave up", metadata: ["agent": "\(name)", "version": "\(version)",
                                                                                         "reason": "\(reason)"])
        case .handoffEnded(let outcome, let error):
            guard var flight else { return }
            flight.view.outcome = outcome
            flight.view.error = error
            flight.view.gapMs = flight.gapMs
            flight.view.endedAt = now
            flight.view.phase = outcome.rawValue
            if flight.view.steps.last?.phase != outcome.rawValue { flight.view.steps.append(.init(phase: outcome.rawValue, at: now)) }
            context.handoffs.store(flight.view)
            self.flight = nil
            record(.handoffEnded(.init(handoff: flight.view.id, agent: name, outcome: outcome, gapMs: flight.gapMs, error: error)))
            context.stats.handoffEnded(agent: name, mode: flight.view.mode, outcome: outcome, gapMs: flight.gapMs,
                                       durationMs: max(0, now.milliseconds - flight.view.startedAt.milliseconds))
            logger.info("handoff ended", metadata: ["agent": "\(name)", "handoff.id": "\(flight.view.id)", "outcome": "\(outcome.rawValue)",
                                                    "gap_ms": "\(flight.gapMs.map { String($0) } ?? "-")"])
        }
    }

    private func publish() {
        if let view = flight?.view { context.handoffs.store(view) }
    }

    // MARK: - Shutdown

    /// batond stops. By default its agents keep working: batond lets go of every
    /// instance as it is, a handoff in flight included, and the next batond re-adopts
    /// them from the ledger. With `stop_agents_on_exit`, every instance is stopped the
    /// normal way: stop signal, then TERM after stop_timeout, then KILL after kill_timeout;
    /// a handoff in flight ends cancelled.
    private func shutDown(_ done: @escaping @Sendable () -> Void) async {
        shutdownDone = done
        // batond stops even when the ledger cannot write: stopping never lets two work,
        // and what waits for the ledger (a go, a spawn, a current flip) is not done.
        if !deferred.isEmpty {
            logger.warning("stopping with effects that were never recorded; they are not done",
                           metadata: ["agent": "\(name)", "effects": "\(deferred.count)"])
            deferred.removeAll()
            context.stats.effectsWaiting(agent: name, 0)
        }
        await feed(.shutdown(stopAgents: context.stopAgentsOnExit))
        guard !context.stopAgentsOnExit else { return }
        for task in probes.values { task.cancel() }
        probes = [:]
        // The registry keeps them: forgetting one would answer its long-poll with stop.
        // Their parked requests get 503 when the HTTP side stops; they retry.
        for (instance, process) in processes {
            logger.info("leaving an instance working", metadata: ["agent": "\(name)", "instance": "\(instance)", "pid": "\(process.pid)"])
        }
        processes = [:]
    }

    /// A registered instance batond lets go of at its stop: another supervisor's unless
    /// the config says otherwise. It is never signalled, nor told stop: the registry
    /// keeps it (forgetting it would answer its long-poll with stop), and the next batond
    /// adopts it.
    private func letGo(_ instance: String) {
        guard let process = processes.removeValue(forKey: instance) else { return }
        logger.info("leaving a registered instance running", metadata: ["agent": "\(name)", "instance": "\(instance)", "pid": "\(process.pid)"])
    }

    private func finishShutdown() {
        for timer in timers.values { timer.task.cancel() }
        shutdownDone?()
        shutdownDone = nil
        inbox.finish()
    }

    // MARK: - Spawning and records

    private func start(version: String, handoff: String?, role: Handoff.Role?) async -> Result<String, SpawnError> {
        guard let directory = context.releases.directory(agent: name, version: version) else {
            return .failure(SpawnError(description: "invalid version \(version)"))
        }
        let id = nextInstanceID()
        let token = context.makeToken()
        let tokenDigest = TokenDigest.hex(token)
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
                                       directory: directory, credentials: credentials,
                                       sockets: try context.sockets.passed(for: config))
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
                                      tokenDigest: tokenDigest)))
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
                                   tokenDigest: tokenDigest))
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

    /// The agent's last error, with the tail of `instance`'s output (its log file, also
    /// once it exited).
    private func recordError(_ reason: String, instance: String?) {
        let tail = instance.map { context.log($0).lastOutput } ?? ""
        logger.warning("agent error", metadata: ["agent": "\(name)", "instance": "\(instance ?? "-")", "reason": "\(reason)"])
        record(.agentError(.init(agent: name, reason: reason, stderrTail: tail, handoff: flight?.view.id, instance: instance)))
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
            if batch.contains(where: { $0.kind == "agent.desired" }) { CrashPoint.desiredRecorded.reached() }
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
        // batond stops: stopping never lets two work, so it does not wait for the ledger.
        guard shutdownDone == nil else {
            await flush()
            return await effect()
        }
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

    /// The ledger writes again: runs the waiting effects in order. An effect that yields
    /// an event (a spawn) has it fed, and its actions performed, before the next waiting
    /// one, as it would have without the wait; if the ledger fails again, the rest keep
    /// waiting.
    private func runDeferred() async {
        while !deferred.isEmpty {
            guard await flush() == nil else { return }
            let next = deferred.removeFirst()
            let rest = deferred
            deferred = []
            await next()
            await drain()
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

extension Supervision.Action {
    var beginsHandoff: Bool {
        if case .record(.handoffBegan) = self { true } else { false }
    }
}

// The ledger's and the API's handoff mode, and the machine's.
extension Handoff.Mode {
    init(_ mode: HandoffMode) {
        self = switch mode {
        case .parallel: .parallel
        case .sequential: .sequential
        }
    }
}

extension HandoffMode {
    init(_ mode: Handoff.Mode) {
        self = switch mode {
        case .parallel: .parallel
        case .sequential: .sequential
        }
    }
}
