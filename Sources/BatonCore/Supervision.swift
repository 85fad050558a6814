/// The supervision of one agent: which of its instances works, what starts next and
/// when, and what becomes of the instances that must go. A pure state machine beside
/// `Handoff`, which it owns while a handoff runs (it maps the handoff's roles to
/// instance ids). Events go in, actions come out; the supervisor performs the actions in
/// order, each effect only once every `.record` before it is durable.
///
/// Invariant: **at most one instance holds go.** An instance holds go from the moment it
/// is told go until it reports stopped or exits (told stop, it may still be finishing its
/// work). `grantGo` is the only place that tells an instance go: while another instance
/// holds go, it defers the grant until that one is gone.
///
/// What is wanted (`state`) is kept apart from what runs (`instances`). Events about an
/// instance the machine does not know (it exited, or was never an instance), a ready
/// from one that stopped or is on its way out, a timer that is no longer armed, or a
/// registration already heard are stale, and dropped before the table; every other
/// state × event pair is a cell of `step`.
///
/// Crash loops: an instance of the current release that exits unexpectedly while it
/// works, or before it was ready on a start, is counted; `crashLoopExits` of them within
/// `crashLoopWindow` are a crash loop. Supervision then hands back to the previous release
/// by itself (a parallel handoff from nothing, recorded first as `.rewound`), once: until
/// an operator's desired version, a second crash loop only backs off and says so. An
/// irreversible release is never rewound: supervision gives up on it (`failed`) and
/// starts it no more. The facts it needs (the previous release, which releases are
/// irreversible, what the ledger shows it decided before) come in events.
///
/// An external agent (`Settings.startsReleases` false) is never started by batond: no
/// `.spawn` ever comes out, its desired versions are refused (the shell only records them,
/// for its instances to fetch and start themselves), a crash is no crash loop, and where
/// a release would start the machine goes idle until a registered instance is ready.
///
/// The supervisor's side of the contract: it answers every `.spawn` with `.spawned` or
/// `.spawnFailed` before it feeds anything else; it keeps one timer per `TimerKey`
/// (starting a timer again replaces it) and feeds `.timerFired` only for the latest one.
public struct Supervision<C: Clock>: Sendable where C.Duration == Duration {
    /// What supervision is doing.
    public enum State: Sendable, Equatable {
        /// Before `boot`, the first event. Next: any state.
        case booting
        /// Nothing holds go and nothing starts: there is no current release (or none that
        /// could start). Next: handingOff (desired), working (a registered instance is
        /// ready), stopping, stopped.
        case idle
        /// A start of `version` (the current release) without a handoff: spawning while
        /// `instance` is nil, then waiting for it to report ready within ready_timeout.
        /// An instance that failed stays here until it exited. Next: working, backingOff,
        /// handingOff (a desired version supersedes it), stopping, stopped.
        case starting(version: String, instance: String?)
        /// `instance` holds go (or will, once the one before it is gone) since `since`.
        /// Next: backingOff (it exited), handingOff, stopping, stopped.
        case working(instance: String, since: C.Instant)
        /// Nothing holds go; the current release starts again at `until`. Next: starting,
        /// handingOff, working (a registered instance is ready), stopping, stopped.
        case backingOff(until: C.Instant)
        /// A handoff runs. Next: working (committed, reverted, or failed with the old one
        /// still working), backingOff or idle (failed, nothing works), stopping, stopped.
        case handingOff(HandingOff)
        /// Supervision gave up on the current release (an irreversible release crash-looped,
        /// so it is not rewound): nothing starts until an operator's desired version (a
        /// rollback is one). A registered instance that is ready still works, as in idle,
        /// and the state comes back here when nothing works. Next: handingOff (desired),
        /// working (a registered instance is ready), stopping, stopped.
        case failed(reason: String)
        /// A barrier upgrade holds the agent: every instance was told stop (then TERM and
        /// KILL by their deadlines) and nothing starts or gets go until a desired version
        /// (the barrier's new version, or its old one when the migration failed). Next:
        /// handingOff (desired), stopping, stopped.
        case halted
        /// batond stops and stops every instance: waiting for them to exit. Next: stopped.
        case stopping
        /// Final: batond stopped; its instances exited, or it let them run on.
        case stopped
    }

    /// A handoff in progress and the instances in its roles.
    public struct HandingOff: Sendable, Equatable {
        public var handoff: Handoff
        public var from: String?
        public var to: String
        public var roles: [Handoff.Role: String]
        /// Registered instances that reported ready while it runs: next in line, in order.
        public var queue: [String] = []
        /// Since when the old instance has held go, for the backoff if it keeps working.
        public var oldSince: C.Instant?
        /// Whether batond stores the release it hands over from (a registered old instance
        /// may run one it does not): only such a release can be rewound to.
        public var fromStored = true
    }

    /// An instance that runs (batond's child, or a registered process), as observed.
    public struct Instance: Sendable, Equatable {
        public var version: String
        /// A process batond did not start: it registered itself.
        public var registered: Bool
        /// Whether batond stores its release (a registered process may run another).
        public var stored = true
        public var ready = false
        /// Reported stopped: it no longer works, and must exit.
        public var stopped = false
        /// The signal it was last told.
        public var signal: AgentSignal = .wait
        /// Told go, and not gone since: see the invariant.
        public var holdsGo = false
        /// How far batond went to make it exit, once it must.
        public var leaving: Leaving?
    }

    /// The ladder to an instance's exit: told stop (or reported stopped), then TERM, then
    /// KILL, each after its timeout.
    public enum Leaving: Int, Sendable, Comparable {
        case asked, terminated, killed
        public static func < (a: Leaving, b: Leaving) -> Bool { a.rawValue < b.rawValue }
    }

    /// The one timer facility: keyed by what it is about and its kind.
    public enum TimerKey: Sendable, Hashable {
        /// One of the running handoff's own timers.
        case handoff(Handoff.Timer)
        /// A started instance's ready_timeout.
        case ready(String)
        /// The next rung of the ladder for an instance that must exit.
        case escalate(String)
        /// The backoff before the current release starts again.
        case restart
    }

    /// A process to start, and what for. The supervisor echoes it in its answer.
    public struct Spawn: Sendable, Equatable {
        public enum Purpose: Sendable, Equatable {
            /// A start of the current release without a handoff (boot, restart).
            case start
            /// A role in the running handoff (`.successor` or `.previous`).
            case handoff(Handoff.Role)
        }
        public var version: String
        public var purpose: Purpose
        public init(version: String, purpose: Purpose) {
            self.version = version
            self.purpose = purpose
        }
    }

    /// What the ledger knew of an instance when batond started again, and what the
    /// process checks found.
    public struct AdoptedInstance: Sendable, Equatable {
        public var id: String
        public var version: String
        public var registered: Bool
        /// The last signal recorded for it.
        public var signal: AgentSignal
        /// Whether it was ever told go: told stop since, it may still be working.
        public var heldGo: Bool
        public var ready: Bool
        public var stopped: Bool
        /// Its role in the interrupted handoff, if it had one.
        public var role: Handoff.Role?
        /// Whether its pid still runs the same process (start time checked).
        public var alive: Bool
        /// Whether batond stores its release (see `Event.registered`).
        public var stored: Bool

        public init(id: String, version: String, registered: Bool = false, signal: AgentSignal, heldGo: Bool? = nil,
                    ready: Bool, stopped: Bool = false, role: Handoff.Role? = nil, alive: Bool = true, stored: Bool = true) {
            self.id = id; self.version = version; self.registered = registered; self.signal = signal
            self.heldGo = heldGo ?? (signal != .wait)
            self.ready = ready; self.stopped = stopped; self.role = role; self.alive = alive; self.stored = stored
        }
    }

    /// A handoff the ledger shows begun and not ended.
    public struct InterruptedHandoff: Sendable, Equatable {
        public var mode: Handoff.Mode
        public var from: String?
        public var to: String
        /// The last phase the ledger recorded for it.
        public var phase: Handoff.Phase

        public init(mode: Handoff.Mode, from: String?, to: String, phase: Handoff.Phase) {
            self.mode = mode; self.from = from; self.to = to; self.phase = phase
        }
    }

    /// What the ledger and the release store say of the agent's releases at boot, as far
    /// as a crash loop needs.
    public struct Releases: Sendable, Equatable {
        /// The release before current, when batond stores it: where a crash loop goes back to.
        public var previous: String?
        /// Which of the releases that may become current (current, previous, the target
        /// of a handoff in flight, those of adopted instances) declare themselves
        /// irreversible (`release.json`).
        public var irreversible: Set<String>
        /// What supervision decided of a crash loop since the last desired version.
        public var verdict: Verdict?
        /// A barrier upgrade held the agent halted when batond stopped: it stays halted.
        public var halted: Bool

        public init(previous: String? = nil, irreversible: Set<String> = [], verdict: Verdict? = nil, halted: Bool = false) {
            self.previous = previous; self.irreversible = irreversible; self.verdict = verdict; self.halted = halted
        }
    }

    /// What supervision decided of a crash loop; only an operator's desired version clears it.
    public enum Verdict: Sendable, Equatable {
        /// It handed back from `from` to `to` by itself, and does not again.
        case rewound(from: String, to: String)
        /// It gave up on `version`, an irreversible release, and starts it no more.
        case failed(version: String, reason: String)
    }

    public enum Event: Sendable, Equatable {
        /// batond starts: the current release, the instances the ledger says are live, and
        /// the handoff it shows in flight. A first start has neither.
        case boot(current: String?, instances: [AdoptedInstance], handoff: InterruptedHandoff?, releases: Releases = .init())
        /// An operator asks for `version` (a rollback is a desired version too);
        /// `irreversible`: its release declares itself so.
        case desired(version: String, mode: Handoff.Mode, irreversible: Bool = false)
        /// The answer to `.spawn`: the process runs as `instance`, or could not start.
        case spawned(String, Spawn)
        case spawnFailed(Spawn, reason: String)
        /// A process batond did not start registered itself; it was told wait.
        /// `stored`: whether batond stores that release (it may run one batond does not
        /// keep; supervision never starts such a release).
        case registered(String, version: String, stored: Bool, irreversible: Bool = false)
        /// What an instance reports about itself (or its readiness probe, for it).
        case ready(String)
        case failed(String, reason: String)
        case stopped(String)
        /// The process exited.
        case exited(String, description: String)
        case timerFired(TimerKey)
        /// batond stops: it stops every instance, or (`stopAgents` false) lets them run
        /// on for the next batond to adopt, a handoff in flight included.
        case shutdown(stopAgents: Bool)
        /// A barrier upgrade: stop every instance and start none (`halted`). A handoff in
        /// flight ends cancelled.
        case halt
    }

    /// What the ledger must hold before the effects after it.
    public enum Note: Sendable, Equatable {
        case handoffBegan(from: String?, to: String, mode: Handoff.Mode)
        case handoffPhase(Handoff.Phase)
        case handoffEnded(HandoffOutcome, error: String?)
        /// A crash loop of `from`: supervision hands back to `to` by itself. Recorded
        /// before the handoff begins.
        case rewound(from: String, to: String, reason: String, exits: Int, window: Duration)
        /// A crash loop of `version`, irreversible: supervision gives up on it.
        case failed(version: String, reason: String)
    }

    /// Why a request is refused; the API answers with it.
    public enum Refusal: Sendable, Equatable {
        case notBooted, handoffInProgress, shuttingDown
        /// A desired version of an external agent: batond starts none of its releases.
        case startsNoReleases
    }

    public enum Action: Sendable, Equatable {
        /// Record (durably) before anything after it.
        case record(Note)
        /// Record the agent's last error, with the tail of `instance`'s output.
        case recordError(String, instance: String?)
        /// Start a process; answer with `.spawned` or `.spawnFailed`.
        case spawn(Spawn)
        /// Set the instance's level-triggered signal (recorded, then seen by it).
        case signal(String, AgentSignal)
        /// Set the instance's signal to go at once and record it after, with the commit
        /// that follows: the ledger holds the decision already (see
        /// `Handoff.Action.signalGoAhead`).
        case signalGoAhead(String)
        /// SIGTERM, and SIGKILL, to the instance's process group.
        case terminate(String)
        case kill(String)
        case startTimer(TimerKey, Duration)
        case cancelTimer(TimerKey)
        /// Record the commit and flip `current` to `version`, atomically.
        case commit(version: String)
        /// batond stops and lets this registered instance go: forget it, never signal it.
        case release(String)
        /// The request (desired, registered) is refused.
        case refuse(Refusal)
    }

    public struct Settings: Sendable, Equatable {
        public var timeouts: Handoff.Timeouts
        /// Whether batond's stop also stops registered instances (else it lets them go).
        public var stopRegisteredOnExit: Bool
        /// The backoff before a restart: `first`, doubling up to `max`; back to `first`
        /// after `stable` of work, or a handoff that gave go.
        public var firstBackoff: Duration
        public var maxBackoff: Duration
        public var stable: Duration
        /// A crash loop: this many abnormal exits of the current release within
        /// `crashLoopWindow` (0: never one).
        public var crashLoopExits: Int
        public var crashLoopWindow: Duration
        /// Whether batond starts the agent's releases; false for an external agent, whose
        /// instances all register themselves.
        public var startsReleases: Bool

        public init(timeouts: Handoff.Timeouts = .init(), stopRegisteredOnExit: Bool = false,
                    firstBackoff: Duration = .seconds(1), maxBackoff: Duration = .seconds(60), stable: Duration = .seconds(60),
                    crashLoopExits: Int = 5, crashLoopWindow: Duration = .seconds(300), startsReleases: Bool = true) {
            self.timeouts = timeouts
            self.stopRegisteredOnExit = stopRegisteredOnExit
            self.firstBackoff = firstBackoff
            self.maxBackoff = maxBackoff
            self.stable = stable
            self.crashLoopExits = crashLoopExits
            self.crashLoopWindow = crashLoopWindow
            self.startsReleases = startsReleases
        }
    }

    public let settings: Settings
    public let clock: C
    public private(set) var state: State = .booting
    public private(set) var instances: [String: Instance] = [:]
    /// The release supervision starts: `current` at boot, then each commit.
    public private(set) var current: String?
    /// An instance that earned go while another still held it: it gets go once that one is gone.
    public private(set) var awaitingGo: String?
    public private(set) var armed: Set<TimerKey> = []
    /// Restarts since the last stable work: the next backoff is `first * 2^failures`.
    public private(set) var failures = 0
    /// The release before current that batond stores: where a crash loop goes back to.
    public private(set) var previous: String?
    /// The releases known to declare themselves irreversible.
    public private(set) var irreversible: Set<String> = []
    /// What supervision decided of a crash loop since the last desired version.
    public private(set) var verdict: Verdict?
    /// When instances of the current release exited abnormally, since its commit or the
    /// last crash loop, within the window.
    public private(set) var abnormalExits: [C.Instant] = []
    private var out: [Action] = []

    public init(settings: Settings, clock: C) {
        self.settings = settings
        self.clock = clock
    }

    /// The instance that holds go, if any.
    public var holder: String? {
        instances.keys.sorted().first { instances[$0]!.holdsGo }
    }

    public var isFinished: Bool { state == .stopped }

    // MARK: - Events

    public mutating func handle(_ event: Event) -> [Action] {
        out = []
        defer { out = [] }
        guard !isStale(event) else { return [] }
        // An external agent's desired version is its own to fetch and start, never a handoff of batond's.
        if case .desired = event, !settings.startsReleases { return [.refuse(.startsNoReleases)] }
        if case .timerFired(let key) = event { armed.remove(key) }
        observe(event)
        step(event)
        if let next = awaitingGo, holder == nil {
            awaitingGo = nil
            grantGo(next)
        }
        return out
    }

    private func isStale(_ event: Event) -> Bool {
        switch event {
        case .ready(let id):
            // One that stopped, or is on its way out, never gets go: its ready counts for nothing.
            instances[id] == nil || instances[id]!.stopped || instances[id]!.leaving != nil
        case .failed(let id, _), .stopped(let id), .exited(let id, _): instances[id] == nil
        case .registered(let id, _, _, _): instances[id] != nil
        case .timerFired(let key): !armed.contains(key)
        case .boot, .desired, .spawned, .spawnFailed, .shutdown, .halt: false
        }
    }

    /// What an instance says of itself, and what a release declares, is true whatever
    /// supervision does about it.
    private mutating func observe(_ event: Event) {
        switch event {
        case .ready(let id):
            instances[id]?.ready = true
        case .stopped(let id):
            instances[id]?.stopped = true
            instances[id]?.holdsGo = false
        case .desired(let version, _, let irreversible), .registered(_, let version, _, let irreversible):
            if irreversible { self.irreversible.insert(version) } else { self.irreversible.remove(version) }
        case .boot, .spawned, .spawnFailed, .failed, .exited, .timerFired, .shutdown, .halt:
            break
        }
    }

    /// The table: every state × event, grouped by event.
    private mutating func step(_ event: Event) {
        switch (state, event) {
        // MARK: boot
        case (.booting, .boot(let current, let adopted, let interrupted, let releases)):
            previous = releases.previous
            irreversible = releases.irreversible
            verdict = releases.verdict
            adopt(current: current, adopted, interrupted, halted: releases.halted)
        case (.idle, .boot), (.starting, .boot), (.working, .boot), (.backingOff, .boot), (.handingOff, .boot), (.failed, .boot),
             (.halted, .boot), (.stopping, .boot), (.stopped, .boot):
            break // boot comes once

        // MARK: desired
        case (.booting, .desired):
            emit(.refuse(.notBooted))
        case (.idle, .desired(let version, let mode, _)), (.failed, .desired(let version, let mode, _)),
             (.halted, .desired(let version, let mode, _)):
            operatorAsked()
            begin(to: version, mode: mode, old: nil)
        case (.starting(_, let instance), .desired(let version, let mode, _)):
            // A start not yet ready is superseded: the successor takes its place.
            operatorAsked()
            if let instance { dismiss(instance) }
            begin(to: version, mode: mode, old: nil)
        case (.working(let working, let since), .desired(let version, let mode, _)):
            operatorAsked()
            begin(to: version, mode: mode, old: outgoing(working), oldSince: since)
        case (.backingOff, .desired(let version, let mode, _)):
            operatorAsked()
            disarm(.restart)
            begin(to: version, mode: mode, old: nil)
        case (.handingOff, .desired):
            emit(.refuse(.handoffInProgress))
        case (.stopping, .desired), (.stopped, .desired):
            emit(.refuse(.shuttingDown))

        // MARK: spawned, spawnFailed
        case (.starting(let version, let instance), .spawned(let id, let spawn)):
            guard instance == nil, spawn == Spawn(version: version, purpose: .start) else { return stray(id, spawn) }
            instances[id] = Instance(version: version, registered: false)
            state = .starting(version: version, instance: id)
            arm(.ready(id), settings.timeouts.ready)
        case (.handingOff(var run), .spawned(let id, let spawn)):
            guard let role = awaitedSpawn(run), spawn == Spawn(version: spawnVersion(run, role), purpose: .handoff(role)) else {
                return stray(id, spawn)
            }
            instances[id] = Instance(version: spawn.version, registered: false)
            run.roles[role] = id
            state = .handingOff(run)
            feed(.spawned(role))
        case (.booting, .spawned(let id, let spawn)), (.idle, .spawned(let id, let spawn)), (.working, .spawned(let id, let spawn)),
             (.backingOff, .spawned(let id, let spawn)), (.failed, .spawned(let id, let spawn)), (.halted, .spawned(let id, let spawn)),
             (.stopping, .spawned(let id, let spawn)), (.stopped, .spawned(let id, let spawn)):
            stray(id, spawn) // nothing asked for it: it must not run
        case (.starting(let version, let instance), .spawnFailed(let spawn, let reason)):
            guard instance == nil, spawn == Spawn(version: version, purpose: .start) else { return }
            emit(.recordError("cannot start \(version): \(reason)", instance: nil))
            scheduleRestart()
        case (.handingOff(let run), .spawnFailed(let spawn, let reason)):
            guard let role = awaitedSpawn(run), spawn == Spawn(version: spawnVersion(run, role), purpose: .handoff(role)) else { return }
            feed(.spawnFailed(role, reason: reason))
        case (.booting, .spawnFailed), (.idle, .spawnFailed), (.working, .spawnFailed), (.backingOff, .spawnFailed),
             (.failed, .spawnFailed), (.halted, .spawnFailed), (.stopping, .spawnFailed), (.stopped, .spawnFailed):
            break // an answer nobody waits for

        // MARK: registered
        case (.booting, .registered):
            emit(.refuse(.notBooted))
        case (.idle, .registered(let id, let version, let stored, _)), (.starting, .registered(let id, let version, let stored, _)),
             (.working, .registered(let id, let version, let stored, _)), (.backingOff, .registered(let id, let version, let stored, _)),
             (.handingOff, .registered(let id, let version, let stored, _)), (.failed, .registered(let id, let version, let stored, _)),
             (.halted, .registered(let id, let version, let stored, _)):
            instances[id] = Instance(version: version, registered: true, stored: stored) // told wait; ready decides
        case (.stopping, .registered), (.stopped, .registered):
            emit(.refuse(.shuttingDown))

        // MARK: ready
        case (.idle, .ready(let id)), (.failed, .ready(let id)):
            guard isAvailable(id) else { return }
            giveGoAndWork(id)
        case (.starting(_, let instance), .ready(let id)):
            if id == instance, instances[id]?.leaving == nil {
                disarm(.ready(id))
                giveGoAndWork(id)
            } else if isAvailable(id) {
                // A registered instance is ready first: the start gives way to it.
                if let instance { dismiss(instance) }
                giveGoAndWork(id)
            }
        case (.working(let working, let since), .ready(let id)):
            // A registered instance takes over by the same handoff as a release would.
            guard id != working, isAvailable(id), let version = instances[id]?.version else { return }
            begin(to: version, mode: .parallel, old: outgoing(working), registeredSuccessor: id, oldSince: since)
        case (.backingOff, .ready(let id)):
            guard isAvailable(id) else { return }
            disarm(.restart)
            giveGoAndWork(id)
        case (.handingOff(var run), .ready(let id)):
            if let role = role(of: id, in: run) {
                feed(.ready(role))
            } else if isAvailable(id), !run.queue.contains(id) {
                run.queue.append(id)
                state = .handingOff(run)
            }
        case (.booting, .ready), (.halted, .ready), (.stopping, .ready), (.stopped, .ready):
            break // nobody gets go now (halted: it waits, told wait, for the next handoff)

        // MARK: failed
        case (.starting(_, let instance), .failed(let id, let reason)) where id == instance:
            emit(.recordError("reported failure: \(reason)", instance: id))
            dismiss(id) // stays starting until it exited
        case (.handingOff(let run), .failed(let id, let reason)) where role(of: id, in: run) != nil:
            feed(.reportedFailure(role(of: id, in: run)!, reason: reason))
        case (.idle, .failed(let id, let reason)), (.starting, .failed(let id, let reason)), (.working, .failed(let id, let reason)),
             (.backingOff, .failed(let id, let reason)), (.handingOff, .failed(let id, let reason)), (.failed, .failed(let id, let reason)),
             (.halted, .failed(let id, let reason)):
            // A registered instance that failed its check never gets go; one that already
            // holds go reports too late to matter.
            guard instances[id]?.holdsGo == false, instances[id]?.leaving == nil else { return }
            emit(.recordError("reported failure: \(reason)", instance: id))
            dismiss(id)
        case (.booting, .failed), (.stopping, .failed), (.stopped, .failed):
            break // it is stopped anyway

        // MARK: stopped
        case (.handingOff(let run), .stopped(let id)) where role(of: id, in: run) != nil:
            expectExit(id)
            feed(.stopped(role(of: id, in: run)!))
        case (.idle, .stopped(let id)), (.starting, .stopped(let id)), (.working, .stopped(let id)), (.backingOff, .stopped(let id)),
             (.handingOff, .stopped(let id)), (.failed, .stopped(let id)), (.halted, .stopped(let id)), (.stopping, .stopped(let id)):
            expectExit(id)
        case (.booting, .stopped), (.stopped, .stopped):
            break // nothing of ours runs

        // MARK: exited
        case (.starting(_, let instance), .exited(let id, let description)) where id == instance:
            // Abnormal whatever ended it: it exited, failed its check, or was not ready in time.
            if instances[id]?.leaving == nil {
                emit(.recordError("exited before it was ready (\(description))", instance: id))
            }
            let version = instances[id]?.version
            forget(id)
            if !crashed(version) { scheduleRestart() }
        case (.working(let working, let since), .exited(let id, let description)) where id == working:
            // Never told stop while it works here (exit 0 included: it must work until told).
            emit(.recordError("exited unexpectedly (\(description))", instance: id))
            let version = instances[id]?.version
            forget(id)
            if since.duration(to: clock.now) >= settings.stable { failures = 0 }
            if !crashed(version) { scheduleRestart() }
        case (.handingOff(let run), .exited(let id, let description)) where role(of: id, in: run) != nil:
            forget(id)
            feed(.exited(role(of: id, in: run)!, description: description))
        case (.stopping, .exited(let id, _)):
            forget(id)
            if instances.isEmpty { state = .stopped }
        case (.idle, .exited(let id, _)), (.starting, .exited(let id, _)), (.working, .exited(let id, _)),
             (.backingOff, .exited(let id, _)), (.handingOff, .exited(let id, _)), (.failed, .exited(let id, _)),
             (.halted, .exited(let id, _)), (.booting, .exited(let id, _)), (.stopped, .exited(let id, _)):
            forget(id) // one on its way out, or waiting for its turn

        // MARK: timers
        case (.starting(_, let instance), .timerFired(.ready(let id))) where id == instance:
            emit(.recordError("not ready within \(settings.timeouts.ready)", instance: id))
            dismiss(id) // stays starting until it exited
        case (.booting, .timerFired(.ready)), (.idle, .timerFired(.ready)), (.starting, .timerFired(.ready)),
             (.working, .timerFired(.ready)), (.backingOff, .timerFired(.ready)), (.handingOff, .timerFired(.ready)),
             (.failed, .timerFired(.ready)), (.halted, .timerFired(.ready)), (.stopping, .timerFired(.ready)),
             (.stopped, .timerFired(.ready)):
            break // disarmed when its start ended; armed only while starting
        case (.booting, .timerFired(.escalate(let id))), (.idle, .timerFired(.escalate(let id))),
             (.starting, .timerFired(.escalate(let id))), (.working, .timerFired(.escalate(let id))),
             (.backingOff, .timerFired(.escalate(let id))), (.handingOff, .timerFired(.escalate(let id))),
             (.failed, .timerFired(.escalate(let id))), (.halted, .timerFired(.escalate(let id))),
             (.stopping, .timerFired(.escalate(let id))), (.stopped, .timerFired(.escalate(let id))):
            escalate(id)
        case (.backingOff, .timerFired(.restart)):
            startCurrent()
        case (.booting, .timerFired(.restart)), (.idle, .timerFired(.restart)), (.starting, .timerFired(.restart)),
             (.working, .timerFired(.restart)), (.handingOff, .timerFired(.restart)), (.failed, .timerFired(.restart)),
             (.halted, .timerFired(.restart)), (.stopping, .timerFired(.restart)), (.stopped, .timerFired(.restart)):
            break // armed only while backing off
        case (.handingOff, .timerFired(.handoff(let timer))):
            feed(.timeout(timer))
        case (.booting, .timerFired(.handoff)), (.idle, .timerFired(.handoff)), (.starting, .timerFired(.handoff)),
             (.working, .timerFired(.handoff)), (.backingOff, .timerFired(.handoff)), (.failed, .timerFired(.handoff)),
             (.halted, .timerFired(.handoff)), (.stopping, .timerFired(.handoff)), (.stopped, .timerFired(.handoff)):
            break // disarmed when the handoff ended

        // MARK: shutdown
        case (.booting, .shutdown):
            state = .stopped
        case (.idle, .shutdown(let stopAgents)), (.starting, .shutdown(let stopAgents)), (.working, .shutdown(let stopAgents)),
             (.backingOff, .shutdown(let stopAgents)), (.handingOff, .shutdown(let stopAgents)), (.failed, .shutdown(let stopAgents)),
             (.halted, .shutdown(let stopAgents)):
            shutDown(stopAgents: stopAgents)
        case (.stopping, .shutdown), (.stopped, .shutdown):
            break // already

        // MARK: halt
        case (.booting, .halt):
            emit(.refuse(.notBooted))
        case (.idle, .halt), (.starting, .halt), (.working, .halt), (.backingOff, .halt), (.failed, .halt):
            haltAll()
        case (.handingOff, .halt):
            // Nobody's fault: the handoff ends cancelled, `current` unchanged.
            feed(.cancel)
            haltAll()
        case (.halted, .halt):
            break // already
        case (.stopping, .halt), (.stopped, .halt):
            emit(.refuse(.shuttingDown))
        }
    }

    // MARK: - Go

    /// The only place that tells an instance go (see the invariant). While another
    /// instance holds go, `id` waits in `awaitingGo` and `handle` grants it once that one
    /// is gone; so a grant never makes two. `ahead`: the handoff's decision is durable,
    /// so the go need not wait for its own record; one deferred behind another holder
    /// waits for its record like any other.
    private mutating func grantGo(_ id: String, ahead: Bool = false) {
        guard let instance = instances[id], instance.leaving == nil, !instance.stopped, !instance.holdsGo else { return }
        if let other = holder, other != id {
            awaitingGo = id
            return
        }
        instances[id]?.holdsGo = true
        instances[id]?.signal = .go
        emit(ahead ? .signalGoAhead(id) : .signal(id, .go))
    }

    private mutating func giveGoAndWork(_ id: String) {
        grantGo(id)
        state = .working(instance: id, since: clock.now)
    }

    /// A registered instance, told nothing yet, that could take over.
    private func isAvailable(_ id: String) -> Bool {
        guard let instance = instances[id] else { return false }
        return instance.registered && instance.ready && !instance.stopped && instance.leaving == nil && !instance.holdsGo
            && awaitingGo != id
    }

    // MARK: - Starting and restarting

    private mutating func startCurrent() {
        guard settings.startsReleases, let version = current else {
            state = .idle
            return
        }
        state = .starting(version: version, instance: nil)
        emit(.spawn(Spawn(version: version, purpose: .start)))
    }

    /// Nothing works: the current release starts again after the backoff.
    private mutating func scheduleRestart() {
        guard settings.startsReleases, current != nil else {
            state = .idle
            return
        }
        if let reason = gaveUp { return state = .failed(reason: reason) }
        var delay = settings.firstBackoff
        for _ in 0..<failures where delay < settings.maxBackoff { delay *= 2 }
        delay = min(delay, settings.maxBackoff)
        failures += 1
        arm(.restart, delay)
        state = .backingOff(until: clock.now.advanced(by: delay))
    }

    // MARK: - Crash loops

    /// An instance of `version` exited abnormally. One of the current release counts
    /// toward a crash loop; at the limit supervision rewinds, gives up on an irreversible
    /// release, or says why it can do neither. Whether it took over (else the caller
    /// backs off as before).
    private mutating func crashed(_ version: String?) -> Bool {
        guard settings.startsReleases, settings.crashLoopExits > 0, let current, version == current else { return false }
        let now = clock.now, window = settings.crashLoopWindow
        abnormalExits.removeAll { $0.duration(to: now) >= window }
        abnormalExits.append(now)
        guard abnormalExits.count >= settings.crashLoopExits else { return false }
        abnormalExits = []
        let loop = "\(current) crash-looped: \(settings.crashLoopExits) abnormal exits within \(settings.crashLoopWindow.spelled)"
        if irreversible.contains(current) {
            let reason = "\(loop); it is irreversible, so batond does not rewind it and stops restarting it: "
                + "set a desired version, or roll back with force"
            emit(.record(.failed(version: current, reason: reason)))
            verdict = .failed(version: current, reason: reason)
            state = .failed(reason: reason)
            return true
        }
        if case .rewound(let from, let to)? = verdict {
            emit(.recordError("\(loop); batond rewound from \(from) to \(to) already and does not rewind again: "
                              + "restarting it with backoff until a desired version or a rollback", instance: nil))
            return false
        }
        guard let previous, previous != current else {
            emit(.recordError("\(loop); batond stores no previous release to rewind to: restarting it with backoff", instance: nil))
            return false
        }
        emit(.record(.rewound(from: current, to: previous, reason: "\(loop); rewound to \(previous)",
                              exits: settings.crashLoopExits, window: settings.crashLoopWindow)))
        verdict = .rewound(from: current, to: previous)
        begin(to: previous, mode: .parallel, old: nil)
        return true
    }

    /// Why supervision gave up on the current release, if it did: it starts it no more
    /// (a registered instance's handoff may have made another release current since).
    private var gaveUp: String? {
        if case .failed(let version, let reason)? = verdict, version == current { reason } else { nil }
    }

    /// An operator's desired version (or rollback) is accepted: what supervision decided
    /// of a crash loop no longer stands, and the count starts again.
    private mutating func operatorAsked() {
        verdict = nil
        abnormalExits = []
    }

    // MARK: - Instances that must go

    /// Told stop (at batond's stop): TERM after `within`, KILL after kill_timeout more.
    private mutating func ask(_ id: String, within: Duration) {
        guard let instance = instances[id] else { return }
        if awaitingGo == id { awaitingGo = nil }
        guard (instance.leaving ?? .asked) == .asked else { return continueLeaving(id) }
        if instance.signal != .stop && !instance.stopped { tell(id, .stop) }
        instances[id]?.leaving = .asked
        arm(.escalate(id), within)
    }

    /// A failed, superseded or stray instance: TERM now, KILL after kill_timeout.
    private mutating func dismiss(_ id: String) {
        guard let instance = instances[id] else { return }
        if awaitingGo == id { awaitingGo = nil }
        disarm(.ready(id))
        guard (instance.leaving ?? .asked) < .terminated else { return continueLeaving(id) }
        instances[id]?.leaving = .terminated
        emit(.terminate(id))
        arm(.escalate(id), settings.timeouts.kill)
    }

    /// It reported stopped: it must exit, TERM after kill_timeout, KILL after twice that.
    private mutating func expectExit(_ id: String) {
        guard let instance = instances[id], (instance.leaving ?? .asked) == .asked else { return }
        instances[id]?.leaving = .asked
        arm(.escalate(id), settings.timeouts.kill)
    }

    /// Its ladder goes on where it was (after a handoff that drove it ended).
    private mutating func continueLeaving(_ id: String) {
        guard let instance = instances[id], !armed.contains(.escalate(id)) else { return }
        switch instance.leaving {
        case nil: dismiss(id)
        case .asked?, .terminated?: arm(.escalate(id), settings.timeouts.kill)
        case .killed?: break
        }
    }

    private mutating func escalate(_ id: String) {
        switch instances[id]?.leaving {
        case .asked?:
            instances[id]?.leaving = .terminated
            emit(.terminate(id))
            arm(.escalate(id), settings.timeouts.kill)
        case .terminated?:
            instances[id]?.leaving = .killed
            emit(.kill(id))
        case .killed?, nil:
            break
        }
    }

    /// The handoff drives its own ladder: only where it is is noted.
    private mutating func raise(_ id: String, to rung: Leaving) {
        guard let instance = instances[id] else { return }
        instances[id]?.leaving = max(instance.leaving ?? rung, rung)
    }

    private mutating func stray(_ id: String, _ spawn: Spawn) {
        instances[id] = Instance(version: spawn.version, registered: false)
        dismiss(id)
    }

    /// It exited: nothing addresses it any more.
    private mutating func forget(_ id: String) {
        instances[id] = nil
        disarm(.escalate(id))
        disarm(.ready(id))
        if awaitingGo == id { awaitingGo = nil }
        if case .handingOff(var run) = state, run.queue.contains(id) {
            run.queue.removeAll { $0 == id }
            state = .handingOff(run)
        }
    }

    // MARK: - Halt

    /// Every instance is told stop (TERM after stop_timeout, KILL after kill_timeout more),
    /// registered ones too: a barrier means nothing works. Nothing restarts.
    private mutating func haltAll() {
        disarm(.restart)
        awaitingGo = nil
        for id in instances.keys.sorted() {
            guard let instance = instances[id] else { continue }
            disarm(.ready(id))
            if instance.leaving == nil && !instance.stopped {
                ask(id, within: settings.timeouts.stop)
            } else if instance.leaving == nil {
                expectExit(id)
            } else {
                continueLeaving(id)
            }
        }
        state = .halted
    }

    // MARK: - Shutdown

    private mutating func shutDown(stopAgents: Bool) {
        // A handoff cut short by batond's own stop is nobody's fault: it ends cancelled.
        // Letting the agents run on, it stays in flight for the next batond's table.
        if stopAgents, case .handingOff = state { feed(.cancel) }
        for key in armed.sorted(by: { "\($0)" < "\($1)" }) {
            if case .escalate = key, stopAgents { continue }
            disarm(key)
        }
        awaitingGo = nil
        guard stopAgents else {
            state = .stopped
            return
        }
        for id in instances.keys.sorted() {
            guard let instance = instances[id] else { continue }
            if instance.registered && !settings.stopRegisteredOnExit {
                instances[id] = nil
                disarm(.escalate(id))
                emit(.release(id))
            } else if instance.leaving == nil && !instance.stopped {
                ask(id, within: settings.timeouts.stop)
            } else if instance.leaving == nil {
                expectExit(id)
            } else {
                continueLeaving(id)
            }
        }
        state = instances.isEmpty ? .stopped : .stopping
    }

    // MARK: - Handoffs

    /// A handoff to `version` from `old`, or else from the one that still holds go (told
    /// stop before batond restarted): the successor gets go only once that one is gone.
    private mutating func begin(to version: String, mode: Handoff.Mode, old: String?, registeredSuccessor: String? = nil,
                                oldSince: C.Instant? = nil) {
        let old = old ?? holder
        let from = old.flatMap { instances[$0]?.version } ?? current
        emit(.record(.handoffBegan(from: from, to: version, mode: mode)))
        var roles: [Handoff.Role: String] = [:]
        roles[.old] = old
        roles[.successor] = registeredSuccessor
        state = .handingOff(HandingOff(handoff: Handoff(mode: mode, timeouts: settings.timeouts, hasOld: old != nil),
                                       from: from, to: version, roles: roles, oldSince: oldSince,
                                       fromStored: old.flatMap { instances[$0]?.stored } ?? true))
        feed(.begin)
    }

    /// The instance a handoff from `working` starts from: that one, unless it stopped or
    /// still waits for go behind one on its way out; then it gives way like a start.
    private mutating func outgoing(_ working: String) -> String? {
        if awaitingGo == working { dismiss(working) }
        guard instances[working]?.holdsGo == true else { return nil }
        return working
    }

    private func role(of id: String, in run: HandingOff) -> Handoff.Role? {
        run.roles.first { $0.value == id }?.key
    }

    /// The role whose process the handoff is starting, if it waits for one.
    private func awaitedSpawn(_ run: HandingOff) -> Handoff.Role? {
        switch run.handoff.phase {
        case .spawning: run.roles[.successor] == nil ? .successor : nil
        case .revertingSpawn: run.roles[.previous] == nil ? .previous : nil
        case .stoppingFirst, .waitingReady, .stoppingOld, .abortingSuccessor, .revertingReady,
             .committed, .failed, .reverted, .cancelled: nil
        }
    }

    private func spawnVersion(_ run: HandingOff, _ role: Handoff.Role) -> String {
        role == .previous ? (run.from ?? run.to) : run.to
    }

    /// Gives the handoff an event and performs what it asks, mapping roles to instances.
    private mutating func feed(_ event: Handoff.Event) {
        guard case .handingOff(var run) = state else { return }
        let actions = run.handoff.handle(event)
        state = .handingOff(run)
        for action in actions { perform(action) }
        if case .handingOff(let run) = state, run.handoff.isFinished { finish(run) }
    }

    private mutating func perform(_ action: Handoff.Action) {
        guard case .handingOff(let run) = state else { return }
        switch action {
        case .recordPhase(let phase):
            emit(.record(.handoffPhase(phase)))
        case .spawn(let role):
            if role == .successor, run.roles[.successor] != nil {
                // A registered successor runs and is ready already.
                feed(.spawned(.successor))
                feed(.ready(.successor))
            } else if !settings.startsReleases {
                // A handoff of an external agent taken up from an older ledger: nothing starts.
                feed(.spawnFailed(role, reason: "batond starts no release of an external agent"))
            } else {
                emit(.spawn(Spawn(version: spawnVersion(run, role), purpose: .handoff(role))))
            }
        case .signalGo(let role):
            if let id = run.roles[role] { grantGo(id) }
        case .signalGoAhead(let role):
            if let id = run.roles[role] { grantGo(id, ahead: true) }
        case .signalStop(let role):
            guard let id = run.roles[role], instances[id] != nil else { return }
            tell(id, .stop)
            raise(id, to: .asked)
        case .terminate(let role):
            guard let id = run.roles[role], instances[id] != nil else { return }
            raise(id, to: .terminated)
            emit(.terminate(id))
        case .kill(let role):
            guard let id = run.roles[role], instances[id] != nil else { return }
            raise(id, to: .killed)
            emit(.kill(id))
        case .startTimer(let timer, let duration):
            arm(.handoff(timer), duration)
        case .cancelTimer(let timer):
            disarm(.handoff(timer))
        case .commit:
            // A registered successor may run a release batond does not store: supervision
            // goes on starting the one it has.
            if let successor = run.roles[.successor], instances[successor]?.stored == false {} else {
                // The ledger's previous is the release handed over from: a crash loop goes
                // back to it if batond stores it.
                previous = run.fromStored ? run.from : nil
                current = run.to
                abnormalExits = []
            }
            emit(.commit(version: run.to))
        case .end(let outcome, let error):
            if let error { emit(.recordError(error, instance: run.roles[.successor])) }
            emit(.record(.handoffEnded(outcome, error: error)))
        }
    }

    /// The handoff ended: the instance that holds go works, the others of the handoff
    /// go, and the registered instances that waited take their turn.
    private mutating func finish(_ run: HandingOff) {
        for timer in Handoff.Timer.allCases { disarm(.handoff(timer)) }
        // batond stops: shutDown decides what becomes of every instance.
        guard run.handoff.phase != .cancelled else {
            state = .idle
            return
        }
        for id in run.roles.values.sorted() where instances[id]?.holdsGo == false && awaitingGo != id {
            continueLeaving(id)
        }
        switch run.handoff.phase {
        case .committed:
            failures = 0
            state = .working(instance: run.roles[.successor]!, since: clock.now)
        case .reverted:
            failures = 0
            state = .working(instance: run.roles[.previous]!, since: clock.now)
        case .failed:
            if let old = run.roles[.old], instances[old]?.holdsGo == true {
                state = .working(instance: old, since: run.oldSince ?? clock.now)
            } else if run.queue.contains(where: { isAvailable($0) }) {
                state = .idle
            } else {
                scheduleRestart()
            }
        case .cancelled, .stoppingFirst, .spawning, .waitingReady, .stoppingOld, .abortingSuccessor, .revertingSpawn, .revertingReady:
            preconditionFailure("finish(_:) in the unfinished phase \(run.handoff.phase)")
        }
        for id in run.queue { step(.ready(id)) }
    }

    // MARK: - Adoption

    /// batond starts again over instances that outlived the one before. The rules, for
    /// the ledger's last recorded phase of a handoff in flight (O the old instance, S the
    /// successor, P the previous release's; "alive" as the process checks found it,
    /// "ready"/"stopped" as recorded; go never goes to a second instance while one that
    /// was told go or stop has not reported stopped or exited):
    ///
    /// | phase | situation | outcome |
    /// | --- | --- | --- |
    /// | stopping_first | O alive, not stopped | finish: O is told stop again (stop_timeout, TERM, KILL); once it is gone the handoff goes on (spawns S) |
    /// | stopping_first | O gone or stopped | finish: S is spawned now |
    /// | spawning, waiting_ready, stopping_old | O alive and told stop, S alive and ready | finish: wait for O (stop_timeout, TERM, KILL), then commit S; S is told nothing meanwhile (in stopping_old it may hold go unrecorded: `signalGoAhead`) |
    /// | waiting_ready, stopping_old | O alive and not told stop, S alive and ready | finish: O is told stop, then S commits |
    /// | waiting_ready, stopping_old | O gone or stopped, S alive and ready | finish: commit S now |
    /// | spawning, waiting_ready, stopping_old | S not alive, or not ready | cancelled: S (if alive) is terminated; O keeps go if it was not told stop, else the current release starts now and gets go once O is gone |
    /// | aborting_successor | any | failed: S (if alive) is terminated; O keeps go if it was not told stop, else the current release starts |
    /// | reverting_spawn, reverting_ready | P alive, and no other works | finish: P gets go once ready (within ready_timeout), reverted |
    /// | reverting_spawn, reverting_ready | P gone, or another works | failed: P (if alive) is terminated; the one that works keeps go, else the current release starts |
    /// | committed, failed, reverted, cancelled | (only the end was not recorded) | the end is recorded; instances as below |
    ///
    /// The instance that holds go is the handoff's old one, even if the ledger lost that
    /// role. Instances outside the handoff: one alive with go recorded keeps it (if two were,
    /// the one that is O, or runs current, keeps it and the other is told stop); one told
    /// stop, or that reported stopped, goes on to its exit; a registered one that was
    /// ready takes its turn as if it reported ready now; one of the current release that
    /// has not reported ready is the start it was, with a new ready_timeout; any other
    /// child is terminated. When nothing holds go and nothing is resumed or starting, the
    /// current release starts at once (no backoff).
    private mutating func adopt(current: String?, _ adopted: [AdoptedInstance], _ interrupted: InterruptedHandoff?,
                                halted: Bool) {
        self.current = current
        var roles: [Handoff.Role: String] = [:]
        for instance in adopted where instance.alive {
            let toldStop = instance.signal == .stop
            instances[instance.id] = Instance(
                version: instance.version, registered: instance.registered, stored: instance.stored,
                ready: instance.ready, stopped: instance.stopped,
                signal: instance.signal, holdsGo: !instance.stopped && instance.signal != .wait && instance.heldGo,
                leaving: instance.stopped || toldStop ? .asked : nil)
        }
        // Roles name the dead too: a handoff that had an old instance reverts to it.
        for instance in adopted {
            if let role = instance.role, interrupted != nil { roles[role] = instance.id }
        }
        // The one that holds go is the handoff's old one, whatever the ledger lost.
        if interrupted != nil, roles[.old].flatMap({ instances[$0] }) == nil,
           let holding = instances.keys.sorted().first(where: { instances[$0]!.holdsGo && !roles.values.contains($0) }) {
            roles[.old] = holding
        }
        // Two recorded in go: one keeps it, the other is told stop.
        let working = instances.keys.sorted().filter { instances[$0]!.holdsGo && instances[$0]!.leaving == nil }
        let keep = working.first { $0 == roles[.old] } ?? working.first { instances[$0]!.version == current } ?? working.first
        for id in working where id != keep { ask(id, within: settings.timeouts.stop) }

        if let interrupted { resume(interrupted, roles: roles) }
        // Those on their way out go on; a resumed handoff drives its own.
        var placed: Set<String> = []
        if case .handingOff(let run) = state { placed = Set(run.roles.values) }
        for id in instances.keys.sorted() where !armed.contains(.escalate(id)) {
            guard let instance = instances[id], instance.leaving != nil else { continue }
            if instance.stopped {
                expectExit(id)
            } else if !placed.contains(id) {
                arm(.escalate(id), settings.timeouts.stop)
            }
        }
        if case .booting = state {
            if halted { haltAll() } else { settle(keep: keep) }
        }
        switch state {
        case .working(let id, _), .starting(_, let id?): placed.insert(id)
        case .booting, .idle, .starting, .backingOff, .handingOff, .failed, .halted, .stopping, .stopped: break
        }
        // The rest: registered instances take their turn; stray children go.
        for id in instances.keys.sorted() where !placed.contains(id) {
            guard let instance = instances[id], instance.leaving == nil, !instance.holdsGo, awaitingGo != id else { continue }
            if !instance.registered {
                dismiss(id)
            } else if instance.ready {
                step(.ready(id))
            }
        }
    }

    /// The interrupted handoff is finished or ended by the table above.
    private mutating func resume(_ interrupted: InterruptedHandoff, roles: [Handoff.Role: String]) {
        let old = roles[.old].flatMap { instances[$0] }
        let successor = roles[.successor].flatMap { instances[$0] }
        let oldWorks = old.map { !$0.stopped } ?? false
        let successorReady = successor.map { $0.ready && !$0.stopped && $0.leaving == nil } ?? false
        let previousAlive = roles[.previous].flatMap { instances[$0] }.map { !$0.stopped && $0.leaving == nil } ?? false

        func take(_ phase: Handoff.Phase, oldAlive: Bool, successorAlive: Bool, previousAlive: Bool) {
            let handoff = Handoff(mode: interrupted.mode, timeouts: settings.timeouts, resuming: phase, hadOld: roles[.old] != nil,
                                  oldAlive: oldAlive, successorAlive: successorAlive, previousAlive: previousAlive)
            var kept = roles
            if !successorAlive { kept[.successor] = nil }
            state = .handingOff(HandingOff(handoff: handoff, from: interrupted.from, to: interrupted.to, roles: kept,
                                           fromStored: roles[.old].flatMap { instances[$0]?.stored } ?? true))
        }
        func stopOld() {
            guard let id = roles[.old] else { return }
            if instances[id]?.signal != .stop { tell(id, .stop) }
            instances[id]?.leaving = .asked
            arm(.handoff(.stop), settings.timeouts.stop)
        }

        switch interrupted.phase {
        case .stoppingFirst:
            if let successor = roles[.successor] { dismiss(successor) }
            take(.stoppingFirst, oldAlive: true, successorAlive: false, previousAlive: false)
            if oldWorks { return stopOld() }
            feed(.stopped(.old))
        case .spawning, .waitingReady, .stoppingOld:
            if successorReady, oldWorks, old?.signal == .stop {
                take(.stoppingOld, oldAlive: true, successorAlive: true, previousAlive: false)
                // The decision that lets go go ahead of its records once O is gone.
                if interrupted.phase != .stoppingOld { emit(.record(.handoffPhase(.stoppingOld))) }
                return stopOld()
            }
            if successorReady, interrupted.phase != .spawning {
                take(.waitingReady, oldAlive: oldWorks, successorAlive: true, previousAlive: false)
                return feed(.ready(.successor))
            }
            abandon(interrupted, roles: roles, .cancelled, error: nil)
        case .abortingSuccessor:
            abandon(interrupted, roles: roles, .failed, error: "the successor failed; batond restarted before it was stopped")
        case .revertingSpawn, .revertingReady:
            let working = instances.values.contains { $0.holdsGo && $0.leaving == nil }
            guard previousAlive, !working, let previous = roles[.previous] else {
                return abandon(interrupted, roles: roles, .failed, error: "the successor failed, and the previous release was not running again")
            }
            if let successor = roles[.successor] { dismiss(successor) }
            take(.revertingReady, oldAlive: false, successorAlive: false, previousAlive: true)
            if instances[previous]!.ready {
                feed(.ready(.previous))
            } else {
                arm(.handoff(.ready), settings.timeouts.ready)
            }
        case .committed, .failed, .reverted, .cancelled:
            let outcome: HandoffOutcome = switch interrupted.phase {
            case .committed: .committed
            case .reverted: .reverted
            case .cancelled: .cancelled
            case .failed, .stoppingFirst, .spawning, .waitingReady, .stoppingOld, .abortingSuccessor, .revertingSpawn, .revertingReady: .failed
            }
            emit(.record(.handoffEnded(outcome, error: nil)))
        }
    }

    /// The interrupted handoff ends here: its successor and previous release go.
    private mutating func abandon(_ interrupted: InterruptedHandoff, roles: [Handoff.Role: String],
                                  _ outcome: HandoffOutcome, error: String?) {
        for role in [Handoff.Role.successor, .previous] {
            if let id = roles[role], instances[id]?.holdsGo == false { dismiss(id) }
        }
        if let error { emit(.recordError(error, instance: roles[.successor])) }
        emit(.record(.handoffEnded(outcome, error: error)))
    }

    /// No handoff runs after adoption: who works, or what starts.
    private mutating func settle(keep: String?) {
        if let keep {
            state = .working(instance: keep, since: clock.now)
            return
        }
        // Given up on current: only a registered instance may work; a start goes with the strays.
        let waiting = instances.keys.sorted().filter {
            let instance = instances[$0]!
            return instance.leaving == nil && !instance.holdsGo && !instance.stopped
                && (instance.registered || (instance.version == current && gaveUp == nil))
        }
        if let ready = waiting.first(where: { instances[$0]!.ready }) {
            giveGoAndWork(ready)
        } else if let reason = gaveUp {
            state = .failed(reason: reason)
        } else if let start = waiting.first(where: { !instances[$0]!.registered }), let current {
            state = .starting(version: current, instance: start)
            arm(.ready(start), settings.timeouts.ready)
        } else {
            startCurrent()
        }
    }

    // MARK: - Output

    private mutating func emit(_ action: Action) {
        out.append(action)
    }

    private mutating func tell(_ id: String, _ signal: AgentSignal) {
        guard instances[id] != nil else { return }
        instances[id]?.signal = signal
        emit(.signal(id, signal))
    }

    private mutating func arm(_ key: TimerKey, _ duration: Duration) {
        armed.insert(key)
        emit(.startTimer(key, duration))
    }

    private mutating func disarm(_ key: TimerKey) {
        if armed.remove(key) != nil { emit(.cancelTimer(key)) }
    }
}
