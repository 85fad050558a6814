/// The handoff of one agent from its active instance (the "old" one, if any) to a
/// successor: a pure state machine. Events go in, actions come out; the supervisor
/// performs the actions in order, and waits for every `.record` to be durable before
/// it performs the next action, so each step is in the ledger before its effect is
/// visible.
///
/// Invariants:
/// - at most one instance holds `go`: the successor is told go only after the old one
///   is gone (reported stopped, or exited);
/// - the release becomes current (`.commit`) only after the successor reported ready
///   and the old one is gone;
/// - go goes ahead of its records only once `stopping_old` is durable: that record holds
///   the decision "the successor gets go once the old one is gone", so the old one's end
///   is followed at once by go, and the commit comes after (`.signalGoAhead`);
/// - a successor that fails is terminated, and the old one is never disturbed by it
///   (parallel mode): nothing is sent to the old one before the successor is ready.
public struct Handoff: Sendable, Equatable {
    public enum Mode: Sendable, Equatable {
        /// Start the successor beside the old one; stop the old one once it is ready.
        case parallel
        /// Stop the old one first; if the successor fails, start `previous` again.
        case sequential
    }

    /// Which process an action or event is about.
    public enum Role: String, Sendable, Equatable, Codable {
        case old, successor, previous
    }

    public enum Timer: String, Sendable, Equatable, CaseIterable {
        case ready, stop, kill
    }

    public enum Phase: String, Sendable, Equatable, Codable {
        /// Sequential: the old instance was told stop; waiting for it to go. Next: spawning.
        case stoppingFirst = "stopping_first"
        /// The successor is being started. Next: waitingReady, or failing.
        case spawning
        /// The successor runs and verifies itself; the old one still works. Next:
        /// stoppingOld, committing, or abortingSuccessor.
        case waitingReady = "waiting_ready"
        /// The old instance was told stop (then TERM, then KILL). Recorded before the stop,
        /// it holds the decision that the successor gets go once the old one is gone.
        /// Next: committed, or failed.
        case stoppingOld = "stopping_old"
        /// The successor failed and is being terminated. Next: failed, or (sequential)
        /// revertingSpawn.
        case abortingSuccessor = "aborting_successor"
        /// Sequential fallback: the previous release is being started again. Next:
        /// revertingReady, or failed.
        case revertingSpawn = "reverting_spawn"
        /// Sequential fallback: waiting for the previous release to report ready. Next:
        /// reverted, or failed.
        case revertingReady = "reverting_ready"
        /// Final: the successor holds go and its release is current.
        case committed
        /// Final: the successor never took over; the release did not become current.
        case failed
        /// Final (sequential): the previous release runs again.
        case reverted
        /// Final: batond itself stopped before the handoff ended; nobody's fault, and the
        /// release did not become current.
        case cancelled

        public var isFinal: Bool {
            switch self {
            case .committed, .failed, .reverted, .cancelled: true
            case .stoppingFirst, .spawning, .waitingReady, .stoppingOld, .abortingSuccessor, .revertingSpawn, .revertingReady: false
            }
        }
    }

    public enum Event: Sendable, Equatable {
        /// Start the handoff.
        case begin
        /// The process for `role` was started, or could not be (`failure` says why).
        case spawned(Role)
        case spawnFailed(Role, reason: String)
        /// The instance reported ready (or its readiness probe succeeded).
        case ready(Role)
        /// The instance reported that its self-check failed.
        case reportedFailure(Role, reason: String)
        /// The instance reported it finished its work after stop.
        case stopped(Role)
        /// The process exited.
        case exited(Role, description: String)
        case timeout(Timer)
        /// batond itself is stopping: the handoff ends here, and its instances are
        /// stopped with every other.
        case cancel
    }

    public enum Action: Sendable, Equatable {
        /// Record the phase in the ledger (durably) before going on.
        case recordPhase(Phase)
        /// Start a process of the successor's release (`.successor`) or of the previous
        /// release (`.previous`).
        case spawn(Role)
        /// Set the instance's level-triggered signal.
        case signalGo(Role)
        /// Tell the successor go at once, ahead of the records that came with the old
        /// one's end (its stop or exit, the go itself): the decision is durable already,
        /// since `stopping_old` was recorded before the old one was told stop, and a
        /// restarted batond finishes such a handoff as committed (docs/ledger.md). The
        /// commit follows, so its fdatasync is no part of the gap.
        case signalGoAhead(Role)
        case signalStop(Role)
        /// SIGTERM, then (on a later action) SIGKILL, to the instance's process group.
        case terminate(Role)
        case kill(Role)
        case startTimer(Timer, Duration)
        case cancelTimer(Timer)
        /// Record the commit and flip `current` to the successor's release, atomically.
        case commit
        /// The handoff ended; `gap` is from the old instance gone to the successor told go.
        case end(HandoffOutcome, error: String?)
    }

    public struct Timeouts: Sendable, Equatable {
        public var ready: Duration
        public var stop: Duration
        public var kill: Duration

        public init(ready: Duration = .seconds(60), stop: Duration = .seconds(30), kill: Duration = .seconds(10)) {
            self.ready = ready
            self.stop = stop
            self.kill = kill
        }
    }

    public let mode: Mode
    public let timeouts: Timeouts
    /// Whether an old instance was running when the handoff began.
    public let hadOld: Bool
    public private(set) var phase: Phase
    /// Whether the old instance is still running (not stopped, not exited).
    public private(set) var oldAlive: Bool
    /// Whether the successor's (or the previous release's) process is still running.
    public private(set) var successorAlive = false
    public private(set) var previousAlive = false
    /// Why the successor failed, once it did.
    public private(set) var failure: String?
    /// Stage of escalation against the process being stopped: 0 none, 1 stop or TERM
    /// sent, 2 KILL sent.
    private var escalation = 0

    public init(mode: Mode, timeouts: Timeouts, hasOld: Bool) {
        self.mode = mode
        self.timeouts = timeouts
        self.hadOld = hasOld
        self.oldAlive = hasOld
        self.phase = mode == .sequential && hasOld ? .stoppingFirst : .spawning
    }

    /// A handoff that batond's death interrupted, taken up again at `phase` (the last one
    /// the ledger recorded) with the processes the checks found alive. Its timers are not
    /// running: whoever resumes it arms the one its phase waits on.
    public init(mode: Mode, timeouts: Timeouts, resuming phase: Phase, hadOld: Bool, oldAlive: Bool,
                successorAlive: Bool, previousAlive: Bool) {
        self.mode = mode
        self.timeouts = timeouts
        self.hadOld = hadOld
        self.phase = phase
        self.oldAlive = oldAlive
        self.successorAlive = successorAlive
        self.previousAlive = previousAlive
        self.hadBegun = true
        switch phase {
        case .stoppingFirst, .stoppingOld: escalation = 1
        case .spawning, .waitingReady, .abortingSuccessor, .revertingSpawn, .revertingReady,
             .committed, .failed, .reverted, .cancelled: escalation = 0
        }
    }

    public var isFinished: Bool { phase.isFinal }

    // MARK: - Transitions

    public mutating func handle(_ event: Event) -> [Action] {
        switch (phase, event) {
        // Final phases take nothing more.
        case (.committed, .begin), (.committed, .spawned), (.committed, .spawnFailed), (.committed, .ready),
             (.committed, .reportedFailure), (.committed, .stopped), (.committed, .exited), (.committed, .timeout), (.committed, .cancel),
             (.failed, .begin), (.failed, .spawned), (.failed, .spawnFailed), (.failed, .ready),
             (.failed, .reportedFailure), (.failed, .stopped), (.failed, .exited), (.failed, .timeout), (.failed, .cancel),
             (.reverted, .begin), (.reverted, .spawned), (.reverted, .spawnFailed), (.reverted, .ready),
             (.reverted, .reportedFailure), (.reverted, .stopped), (.reverted, .exited), (.reverted, .timeout), (.reverted, .cancel),
             (.cancelled, .begin), (.cancelled, .spawned), (.cancelled, .spawnFailed), (.cancelled, .ready),
             (.cancelled, .reportedFailure), (.cancelled, .stopped), (.cancelled, .exited), (.cancelled, .timeout), (.cancelled, .cancel):
            return []

        // batond stops: whatever the phase, the handoff ends without blame, and neither
        // commits nor gives go.
        case (.stoppingFirst, .cancel), (.spawning, .cancel), (.waitingReady, .cancel), (.stoppingOld, .cancel),
             (.abortingSuccessor, .cancel), (.revertingSpawn, .cancel), (.revertingReady, .cancel):
            phase = .cancelled
            return [.cancelTimer(.ready), .cancelTimer(.stop), .cancelTimer(.kill), .end(.cancelled, error: nil)]

        // Only the first phase begins, once.
        case (.stoppingFirst, .begin), (.spawning, .begin):
            guard !hadBegun else { return [] }
            hadBegun = true
            if phase == .stoppingFirst {
                escalation = 1
                return [.recordPhase(.stoppingFirst), .signalStop(.old), .startTimer(.stop, timeouts.stop)]
            }
            return [.recordPhase(.spawning), .spawn(.successor)]
        case (.waitingReady, .begin), (.stoppingOld, .begin), (.abortingSuccessor, .begin), (.revertingSpawn, .begin),
             (.revertingReady, .begin):
            return [] // begun long ago

        // MARK: Sequential: stop the old one first
        case (.stoppingFirst, .stopped(.old)), (.stoppingFirst, .exited(.old, _)):
            oldAlive = false
            escalation = 0
            phase = .spawning
            return [.cancelTimer(.stop), .cancelTimer(.kill), .recordPhase(.spawning), .spawn(.successor)]
        case (.stoppingFirst, .timeout(.stop)):
            escalation = 2
            return [.terminate(.old), .startTimer(.kill, timeouts.kill)]
        case (.stoppingFirst, .timeout(.kill)):
            return [.kill(.old)]
        case (.stoppingFirst, .spawned), (.stoppingFirst, .spawnFailed), (.stoppingFirst, .ready), (.stoppingFirst, .reportedFailure),
             (.stoppingFirst, .stopped(.successor)), (.stoppingFirst, .stopped(.previous)),
             (.stoppingFirst, .exited(.successor, _)), (.stoppingFirst, .exited(.previous, _)), (.stoppingFirst, .timeout(.ready)):
            return [] // nothing else runs yet; the old one's reports no longer count

        // MARK: Starting the successor
        case (.spawning, .spawned(.successor)):
            successorAlive = true
            phase = .waitingReady
            return [.recordPhase(.waitingReady), .startTimer(.ready, timeouts.ready)]
        case (.spawning, .spawnFailed(.successor, let reason)):
            failure = reason
            return afterAbort()
        case (.spawning, .exited(.old, _)), (.waitingReady, .exited(.old, _)):
            // The old instance died on its own while the successor starts: nothing to
            // stop any more. Supervision must not restart it while the handoff runs.
            oldAlive = false
            return []
        case (.spawning, .stopped(.old)), (.waitingReady, .stopped(.old)):
            // Not asked to stop, yet it stopped: it no longer works either way.
            oldAlive = false
            return []
        case (.spawning, .spawned(.old)), (.spawning, .spawned(.previous)), (.spawning, .spawnFailed(.old, _)),
             (.spawning, .spawnFailed(.previous, _)), (.spawning, .ready), (.spawning, .reportedFailure),
             (.spawning, .stopped(.successor)), (.spawning, .stopped(.previous)), (.spawning, .exited(.successor, _)),
             (.spawning, .exited(.previous, _)), (.spawning, .timeout):
            return [] // the successor is not started yet; no timer runs

        // MARK: Waiting for the successor to be ready
        case (.waitingReady, .ready(.successor)):
            if oldAlive {
                phase = .stoppingOld
                escalation = 1
                return [.cancelTimer(.ready), .recordPhase(.stoppingOld), .signalStop(.old), .startTimer(.stop, timeouts.stop)]
            }
            return [.cancelTimer(.ready)] + commit()
        case (.waitingReady, .reportedFailure(.successor, let reason)):
            failure = "reported failure: \(reason)"
            return [.cancelTimer(.ready)] + abortSuccessor()
        case (.waitingReady, .exited(.successor, let description)):
            successorAlive = false
            failure = "exited before it was ready (\(description))"
            return [.cancelTimer(.ready)] + abortSuccessor()
        case (.waitingReady, .timeout(.ready)):
            failure = "not ready within \(timeouts.ready)"
            return abortSuccessor()
        case (.waitingReady, .stopped(.successor)):
            // It says it is done before it ever worked: it never will.
            failure = "stopped before it was ready"
            return [.cancelTimer(.ready)] + abortSuccessor()
        case (.waitingReady, .spawned), (.waitingReady, .spawnFailed), (.waitingReady, .ready(.old)), (.waitingReady, .ready(.previous)),
             (.waitingReady, .reportedFailure(.old, _)), (.waitingReady, .reportedFailure(.previous, _)),
             (.waitingReady, .stopped(.previous)), (.waitingReady, .exited(.previous, _)),
             (.waitingReady, .timeout(.stop)), (.waitingReady, .timeout(.kill)):
            return [] // reports that do not count here, timers not running


        // MARK: Stopping the old instance
        case (.stoppingOld, .stopped(.old)), (.stoppingOld, .exited(.old, _)):
            oldAlive = false
            guard successorAlive else {
                // The successor died while the old one was stopping: nothing to hand to.
                return [.cancelTimer(.stop), .cancelTimer(.kill)] + finishFailure()
            }
            // Go first: `stopping_old` on disk holds the decision, the commit follows.
            phase = .committed
            return [.signalGoAhead(.successor), .cancelTimer(.stop), .cancelTimer(.kill), .commit, .end(.committed, error: nil)]
        case (.stoppingOld, .timeout(.stop)):
            escalation = 2
            return [.terminate(.old), .startTimer(.kill, timeouts.kill)]
        case (.stoppingOld, .timeout(.kill)):
            return [.kill(.old)]
        case (.stoppingOld, .exited(.successor, let description)):
            successorAlive = false
            failure = "exited while the old instance was stopping (\(description))"
            return []
        case (.stoppingOld, .stopped(.successor)):
            // It will not work: nothing to hand to. It still runs, and must exit.
            successorAlive = false
            failure = "stopped while the old instance was stopping"
            return [.terminate(.successor)]
        case (.stoppingOld, .reportedFailure(.successor, let reason)):
            // Too late to report a failed self-check: it already said it was ready.
            failure = "reported failure after ready: \(reason)"
            return []
        case (.stoppingOld, .spawned), (.stoppingOld, .spawnFailed), (.stoppingOld, .ready),
             (.stoppingOld, .reportedFailure(.old, _)), (.stoppingOld, .reportedFailure(.previous, _)),
             (.stoppingOld, .stopped(.previous)), (.stoppingOld, .exited(.previous, _)),
             (.stoppingOld, .timeout(.ready)):
            return [] // duplicates and reports that no longer count

        // MARK: Aborting a failed successor
        case (.abortingSuccessor, .exited(.successor, _)):
            successorAlive = false
            return [.cancelTimer(.kill)] + afterAbort()
        case (.abortingSuccessor, .timeout(.kill)):
            return [.kill(.successor)]
        case (.abortingSuccessor, .exited(.old, _)), (.abortingSuccessor, .stopped(.old)):
            oldAlive = false
            return []
        case (.abortingSuccessor, .spawned), (.abortingSuccessor, .spawnFailed), (.abortingSuccessor, .ready),
             (.abortingSuccessor, .reportedFailure), (.abortingSuccessor, .stopped(.successor)),
             (.abortingSuccessor, .stopped(.previous)), (.abortingSuccessor, .exited(.previous, _)),
             (.abortingSuccessor, .timeout(.ready)), (.abortingSuccessor, .timeout(.stop)):
            return [] // a ready too late does not save it; only its exit counts

        // MARK: Sequential fallback
        case (.revertingSpawn, .spawned(.previous)):
            previousAlive = true
            phase = .revertingReady
            return [.recordPhase(.revertingReady), .startTimer(.ready, timeouts.ready)]
        case (.revertingSpawn, .spawnFailed(.previous, let reason)):
            failure = (failure.map { $0 + "; " } ?? "") + "the previous release did not start: \(reason)"
            return finishFailure()
        case (.revertingSpawn, .spawned(.old)), (.revertingSpawn, .spawned(.successor)), (.revertingSpawn, .spawnFailed(.old, _)),
             (.revertingSpawn, .spawnFailed(.successor, _)), (.revertingSpawn, .ready), (.revertingSpawn, .reportedFailure),
             (.revertingSpawn, .stopped), (.revertingSpawn, .exited), (.revertingSpawn, .timeout):
            return [] // the old one and the successor are gone; no timer runs
        case (.revertingReady, .ready(.previous)):
            phase = .reverted
            return [.cancelTimer(.ready), .recordPhase(.reverted), .signalGo(.previous), .end(.reverted, error: failure)]
        case (.revertingReady, .reportedFailure(.previous, let reason)):
            failure = (failure.map { $0 + "; " } ?? "") + "the previous release failed too: \(reason)"
            return [.cancelTimer(.ready), .terminate(.previous)] + finishFailure()
        case (.revertingReady, .exited(.previous, let description)):
            previousAlive = false
            failure = (failure.map { $0 + "; " } ?? "") + "the previous release exited too (\(description))"
            return [.cancelTimer(.ready)] + finishFailure()
        case (.revertingReady, .stopped(.previous)):
            failure = (failure.map { $0 + "; " } ?? "") + "the previous release stopped too"
            return [.cancelTimer(.ready), .terminate(.previous)] + finishFailure()
        case (.revertingReady, .timeout(.ready)):
            failure = (failure.map { $0 + "; " } ?? "") + "the previous release was not ready either"
            return [.terminate(.previous)] + finishFailure()
        case (.revertingReady, .spawned), (.revertingReady, .spawnFailed), (.revertingReady, .ready(.old)),
             (.revertingReady, .ready(.successor)), (.revertingReady, .reportedFailure(.old, _)),
             (.revertingReady, .reportedFailure(.successor, _)), (.revertingReady, .stopped(.old)), (.revertingReady, .stopped(.successor)),
             (.revertingReady, .exited(.old, _)), (.revertingReady, .exited(.successor, _)),
             (.revertingReady, .timeout(.stop)), (.revertingReady, .timeout(.kill)):
            return [] // only the previous release counts now
        }
    }

    private var hadBegun = false

    // MARK: - Steps shared by several transitions

    /// The successor is ready and nothing was told stop for it (`stopping_old` was never
    /// recorded): the commit is the decision, so it is durable before the go.
    private mutating func commit() -> [Action] {
        phase = .committed
        return [.commit, .signalGo(.successor), .end(.committed, error: nil)]
    }

    private mutating func abortSuccessor() -> [Action] {
        phase = .abortingSuccessor
        guard successorAlive else { return [.recordPhase(.abortingSuccessor)] + afterAbort() }
        return [.recordPhase(.abortingSuccessor), .terminate(.successor), .startTimer(.kill, timeouts.kill)]
    }

    /// The failed successor is gone: in sequential mode with an old release to go back
    /// to, start it again; otherwise the handoff failed.
    private mutating func afterAbort() -> [Action] {
        if mode == .sequential && hadOld && !oldAlive {
            phase = .revertingSpawn
            return [.recordPhase(.revertingSpawn), .spawn(.previous)]
        }
        return finishFailure()
    }

    private mutating func finishFailure() -> [Action] {
        phase = .failed
        var actions: [Action] = []
        if successorAlive { actions.append(.terminate(.successor)) }
        actions.append(.end(.failed, error: failure ?? "handoff failed"))
        return actions
    }
}
