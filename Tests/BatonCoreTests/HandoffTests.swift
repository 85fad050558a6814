import BatonCore
import Testing

/// The handoff state machine, path by path: each row is a mode, whether an old
/// instance runs, the events in order, the actions expected for each, and the end.
@Suite("handoff state machine")
struct HandoffTests {
    typealias E = Handoff.Event
    typealias A = Handoff.Action
    static let t = Handoff.Timeouts(ready: .seconds(60), stop: .seconds(30), kill: .seconds(10))

    struct Path: Sendable, CustomTestStringConvertible {
        let name: String
        let mode: Handoff.Mode
        let hasOld: Bool
        let steps: [(E, [A])]
        let final: Handoff.Phase
        var testDescription: String { name }
    }

    static let paths: [Path] = [
        Path(name: "parallel: ready, old stops, commit", mode: .parallel, hasOld: true, steps: [
            (.begin, [.recordPhase(.spawning), .spawn(.successor)]),
            (.spawned(.successor), [.recordPhase(.waitingReady), .startTimer(.ready, t.ready)]),
            (.ready(.successor), [.cancelTimer(.ready), .recordPhase(.stoppingOld), .signalStop(.old), .startTimer(.stop, t.stop)]),
            (.stopped(.old), A.goAheadThenCommit),
        ], final: .committed),
        Path(name: "parallel: old exits instead of reporting stopped", mode: .parallel, hasOld: true, steps: [
            (.begin, [.recordPhase(.spawning), .spawn(.successor)]),
            (.spawned(.successor), [.recordPhase(.waitingReady), .startTimer(.ready, t.ready)]),
            (.ready(.successor), [.cancelTimer(.ready), .recordPhase(.stoppingOld), .signalStop(.old), .startTimer(.stop, t.stop)]),
            (.exited(.old, description: "exit 0"), A.goAheadThenCommit),
        ], final: .committed),
        Path(name: "parallel: first start, nothing to stop", mode: .parallel, hasOld: false, steps: [
            (.begin, [.recordPhase(.spawning), .spawn(.successor)]),
            (.spawned(.successor), [.recordPhase(.waitingReady), .startTimer(.ready, t.ready)]),
            (.ready(.successor), [.cancelTimer(.ready), .commit, .signalGo(.successor), .end(.committed, error: nil)]),
        ], final: .committed),
        Path(name: "parallel: old ignores stop, TERM then KILL", mode: .parallel, hasOld: true, steps: [
            (.begin, [.recordPhase(.spawning), .spawn(.successor)]),
            (.spawned(.successor), [.recordPhase(.waitingReady), .startTimer(.ready, t.ready)]),
            (.ready(.successor), [.cancelTimer(.ready), .recordPhase(.stoppingOld), .signalStop(.old), .startTimer(.stop, t.stop)]),
            (.timeout(.stop), [.terminate(.old), .startTimer(.kill, t.kill)]),
            (.timeout(.kill), [.kill(.old)]),
            (.exited(.old, description: "signal 9"), A.goAheadThenCommit),
        ], final: .committed),
        Path(name: "parallel: successor exits before ready", mode: .parallel, hasOld: true, steps: [
            (.begin, [.recordPhase(.spawning), .spawn(.successor)]),
            (.spawned(.successor), [.recordPhase(.waitingReady), .startTimer(.ready, t.ready)]),
            (.exited(.successor, description: "exit 2"), [.cancelTimer(.ready), .recordPhase(.abortingSuccessor),
                                                        .end(.failed, error: "exited before it was ready (exit 2)")]),
        ], final: .failed),
        Path(name: "parallel: successor never ready, TERM, KILL", mode: .parallel, hasOld: true, steps: [
            (.begin, [.recordPhase(.spawning), .spawn(.successor)]),
            (.spawned(.successor), [.recordPhase(.waitingReady), .startTimer(.ready, t.ready)]),
            (.timeout(.ready), [.recordPhase(.abortingSuccessor), .terminate(.successor), .startTimer(.kill, t.kill)]),
            (.timeout(.kill), [.kill(.successor)]),
            (.exited(.successor, description: "signal 9"), [.cancelTimer(.kill), .end(.failed, error: "not ready within 60.0 seconds")]),
        ], final: .failed),
        Path(name: "parallel: successor reports failure", mode: .parallel, hasOld: true, steps: [
            (.begin, [.recordPhase(.spawning), .spawn(.successor)]),
            (.spawned(.successor), [.recordPhase(.waitingReady), .startTimer(.ready, t.ready)]),
            (.reportedFailure(.successor, reason: "db down"), [.cancelTimer(.ready), .recordPhase(.abortingSuccessor), .terminate(.successor), .startTimer(.kill, t.kill)]),
            (.ready(.successor), []),
            (.exited(.successor, description: "exit 3"), [.cancelTimer(.kill), .end(.failed, error: "reported failure: db down")]),
        ], final: .failed),
        Path(name: "parallel: the successor cannot be spawned", mode: .parallel, hasOld: true, steps: [
            (.begin, [.recordPhase(.spawning), .spawn(.successor)]),
            (.spawnFailed(.successor, reason: "no such file"), [.end(.failed, error: "no such file")]),
        ], final: .failed),
        Path(name: "parallel: old crashes while the successor starts", mode: .parallel, hasOld: true, steps: [
            (.begin, [.recordPhase(.spawning), .spawn(.successor)]),
            (.spawned(.successor), [.recordPhase(.waitingReady), .startTimer(.ready, t.ready)]),
            (.exited(.old, description: "signal 11"), []),
            (.ready(.successor), [.cancelTimer(.ready), .commit, .signalGo(.successor), .end(.committed, error: nil)]),
        ], final: .committed),
        Path(name: "parallel: successor dies while the old one stops", mode: .parallel, hasOld: true, steps: [
            (.begin, [.recordPhase(.spawning), .spawn(.successor)]),
            (.spawned(.successor), [.recordPhase(.waitingReady), .startTimer(.ready, t.ready)]),
            (.ready(.successor), [.cancelTimer(.ready), .recordPhase(.stoppingOld), .signalStop(.old), .startTimer(.stop, t.stop)]),
            (.exited(.successor, description: "exit 70"), []),
            (.stopped(.old), [.cancelTimer(.stop), .cancelTimer(.kill), .end(.failed, error: "exited while the old instance was stopping (exit 70)")]),
        ], final: .failed),
        Path(name: "parallel: the successor reports stopped before it was ready", mode: .parallel, hasOld: true, steps: [
            (.begin, [.recordPhase(.spawning), .spawn(.successor)]),
            (.spawned(.successor), [.recordPhase(.waitingReady), .startTimer(.ready, t.ready)]),
            (.stopped(.successor), [.cancelTimer(.ready), .recordPhase(.abortingSuccessor), .terminate(.successor), .startTimer(.kill, t.kill)]),
            (.ready(.successor), []),
            (.exited(.successor, description: "exit 0"), [.cancelTimer(.kill), .end(.failed, error: "stopped before it was ready")]),
        ], final: .failed),
        Path(name: "parallel: the successor reports stopped while the old one stops", mode: .parallel, hasOld: true, steps: [
            (.begin, [.recordPhase(.spawning), .spawn(.successor)]),
            (.spawned(.successor), [.recordPhase(.waitingReady), .startTimer(.ready, t.ready)]),
            (.ready(.successor), [.cancelTimer(.ready), .recordPhase(.stoppingOld), .signalStop(.old), .startTimer(.stop, t.stop)]),
            (.stopped(.successor), [.terminate(.successor)]),
            (.stopped(.old), [.cancelTimer(.stop), .cancelTimer(.kill), .end(.failed, error: "stopped while the old instance was stopping")]),
        ], final: .failed),
        Path(name: "sequential: stop first, then start, commit", mode: .sequential, hasOld: true, steps: [
            (.begin, [.recordPhase(.stoppingFirst), .signalStop(.old), .startTimer(.stop, t.stop)]),
            (.stopped(.old), [.cancelTimer(.stop), .cancelTimer(.kill), .recordPhase(.spawning), .spawn(.successor)]),
            (.spawned(.successor), [.recordPhase(.waitingReady), .startTimer(.ready, t.ready)]),
            (.ready(.successor), [.cancelTimer(.ready), .commit, .signalGo(.successor), .end(.committed, error: nil)]),
        ], final: .committed),
        Path(name: "sequential: the successor fails, the previous release comes back", mode: .sequential, hasOld: true, steps: [
            (.begin, [.recordPhase(.stoppingFirst), .signalStop(.old), .startTimer(.stop, t.stop)]),
            (.exited(.old, description: "exit 0"), [.cancelTimer(.stop), .cancelTimer(.kill), .recordPhase(.spawning), .spawn(.successor)]),
            (.spawned(.successor), [.recordPhase(.waitingReady), .startTimer(.ready, t.ready)]),
            (.exited(.successor, description: "exit 2"), [.cancelTimer(.ready), .recordPhase(.abortingSuccessor), .recordPhase(.revertingSpawn), .spawn(.previous)]),
            (.spawned(.previous), [.recordPhase(.revertingReady), .startTimer(.ready, t.ready)]),
            (.ready(.previous), [.cancelTimer(.ready), .recordPhase(.reverted), .signalGo(.previous),
                                 .end(.reverted, error: "exited before it was ready (exit 2)")]),
        ], final: .reverted),
        Path(name: "sequential: the previous release stops instead of working", mode: .sequential, hasOld: true, steps: [
            (.begin, [.recordPhase(.stoppingFirst), .signalStop(.old), .startTimer(.stop, t.stop)]),
            (.stopped(.old), [.cancelTimer(.stop), .cancelTimer(.kill), .recordPhase(.spawning), .spawn(.successor)]),
            (.spawnFailed(.successor, reason: "exec failed"), [.recordPhase(.revertingSpawn), .spawn(.previous)]),
            (.spawned(.previous), [.recordPhase(.revertingReady), .startTimer(.ready, t.ready)]),
            (.stopped(.previous), [.cancelTimer(.ready), .terminate(.previous),
                                   .end(.failed, error: "exec failed; the previous release stopped too")]),
            (.ready(.previous), []),
        ], final: .failed),
        Path(name: "sequential: old ignores stop", mode: .sequential, hasOld: true, steps: [
            (.begin, [.recordPhase(.stoppingFirst), .signalStop(.old), .startTimer(.stop, t.stop)]),
            (.timeout(.stop), [.terminate(.old), .startTimer(.kill, t.kill)]),
            (.timeout(.kill), [.kill(.old)]),
            (.exited(.old, description: "signal 9"), [.cancelTimer(.stop), .cancelTimer(.kill), .recordPhase(.spawning), .spawn(.successor)]),
        ], final: .spawning),
        Path(name: "sequential: the successor cannot start and the previous release fails too", mode: .sequential, hasOld: true, steps: [
            (.begin, [.recordPhase(.stoppingFirst), .signalStop(.old), .startTimer(.stop, t.stop)]),
            (.stopped(.old), [.cancelTimer(.stop), .cancelTimer(.kill), .recordPhase(.spawning), .spawn(.successor)]),
            (.spawnFailed(.successor, reason: "exec failed"), [.recordPhase(.revertingSpawn), .spawn(.previous)]),
            (.spawned(.previous), [.recordPhase(.revertingReady), .startTimer(.ready, t.ready)]),
            (.exited(.previous, description: "exit 1"), [.cancelTimer(.ready),
                .end(.failed, error: "exec failed; the previous release exited too (exit 1)")]),
        ], final: .failed),
        Path(name: "sequential: nothing running, the successor fails", mode: .sequential, hasOld: false, steps: [
            (.begin, [.recordPhase(.spawning), .spawn(.successor)]),
            (.spawnFailed(.successor, reason: "exec failed"), [.end(.failed, error: "exec failed")]),
        ], final: .failed),
    ]

    @Test(arguments: paths)
    func path(_ path: Path) {
        var handoff = Handoff(mode: path.mode, timeouts: Self.t, hasOld: path.hasOld)
        for (index, (event, expected)) in path.steps.enumerated() {
            let actions = handoff.handle(event)
            #expect(actions == expected, "step \(index): \(event)")
        }
        #expect(handoff.phase == path.final)
    }

    /// Exclusion, from the actions alone: across every path, go to the successor comes
    /// only after the old instance was seen gone, and `commit` only after ready.
    @Test(arguments: paths)
    func goOnlyAfterTheOldIsGone(_ path: Path) {
        var handoff = Handoff(mode: path.mode, timeouts: Self.t, hasOld: path.hasOld)
        var oldGone = !path.hasOld
        var ready = false
        for (event, _) in path.steps {
            switch event {
            case .stopped(.old), .exited(.old, _): oldGone = true
            case .ready(.successor): ready = true
            default: break
            }
            for action in handoff.handle(event) {
                if action == .signalGo(.successor) || action == .signalGoAhead(.successor) {
                    #expect(oldGone, "\(path.name): go before the old one was gone")
                }
                if action == .commit { #expect(ready && oldGone, "\(path.name): commit too early") }
            }
        }
    }

    /// Go ahead of its records only where the ledger holds the decision: after
    /// `stopping_old` was recorded (and the old one told stop after it), with the commit
    /// in the same step after it. Elsewhere the commit comes first.
    @Test(arguments: paths)
    func goAheadOnlyOnceStoppingOldIsRecorded(_ path: Path) {
        var handoff = Handoff(mode: path.mode, timeouts: Self.t, hasOld: path.hasOld)
        var recorded: [A] = []
        for (event, _) in path.steps {
            let actions = handoff.handle(event)
            if let go = actions.firstIndex(of: .signalGoAhead(.successor)) {
                #expect(recorded.contains(.recordPhase(.stoppingOld)) && recorded.contains(.signalStop(.old)),
                        "\(path.name): go ahead without stopping_old recorded")
                #expect(actions.suffix(from: go).contains(.commit), "\(path.name): go ahead, and no commit after it")
            }
            if let go = actions.firstIndex(of: .signalGo(.successor)) {
                #expect(actions.prefix(upTo: go).contains(.commit), "\(path.name): go before the commit without stopping_old")
            }
            recorded += actions
        }
    }

    static let cancelEnd: [A] = [.cancelTimer(.ready), .cancelTimer(.stop), .cancelTimer(.kill), .end(.cancelled, error: nil)]

    /// batond's own stop, after every prefix of every path that leaves the handoff
    /// unfinished: it ends cancelled, without blame, commit or go, and takes nothing more.
    @Test(arguments: paths)
    func batondStoppingCancelsAnUnfinishedHandoff(_ path: Path) {
        var reached: Set<String> = []
        for length in 0...path.steps.count {
            var machine = Handoff(mode: path.mode, timeouts: Self.t, hasOld: path.hasOld)
            for (event, _) in path.steps.prefix(length) { _ = machine.handle(event) }
            guard !machine.isFinished else { continue }
            reached.insert(machine.phase.rawValue)
            let actions = machine.handle(.cancel)
            #expect(actions == Self.cancelEnd, "after \(length) steps, in \(machine.phase)")
            #expect(machine.phase == .cancelled)
            for (event, _) in path.steps.suffix(from: length) {
                #expect(machine.handle(event).isEmpty, "\(event) after cancel")
            }
        }
        #expect(!reached.isEmpty)
    }

    @Test func finalPhasesIgnoreEverything() {
        var handoff = Handoff(mode: .parallel, timeouts: Self.t, hasOld: false)
        _ = handoff.handle(.begin)
        _ = handoff.handle(.spawnFailed(.successor, reason: "x"))
        #expect(handoff.isFinished)
        let late: [E] = [.begin, .ready(.successor), .timeout(.kill), .exited(.successor, description: "x"), .stopped(.old), .cancel]
        for event in late { #expect(handoff.handle(event).isEmpty) }
    }

    static let everyEvent: [E] = [.begin, .cancel] + Handoff.Timer.allCases.map { .timeout($0) }
        + [Handoff.Role.old, .successor, .previous].flatMap { role -> [E] in
            [.spawned(role), .spawnFailed(role, reason: "x"), .ready(role), .reportedFailure(role, reason: "x"), .stopped(role),
             .exited(role, description: "x")]
        }
    static let everyPhase: [Handoff.Phase] = [.stoppingFirst, .spawning, .waitingReady, .stoppingOld, .abortingSuccessor,
                                              .revertingSpawn, .revertingReady, .committed, .failed, .reverted, .cancelled]

    /// Every phase × every event is a cell: each answers, a final phase with nothing, and
    /// go goes only to the one whose turn it is.
    @Test(arguments: [Handoff.Mode.parallel, .sequential])
    func everyCellAnswers(mode: Handoff.Mode) {
        for phase in Self.everyPhase {
            for event in Self.everyEvent {
                var handoff = Handoff(mode: mode, timeouts: Self.t, resuming: phase, hadOld: true, oldAlive: true,
                                      successorAlive: true, previousAlive: true)
                let actions = handoff.handle(event)
                if phase.isFinal { #expect(actions.isEmpty && handoff.phase == phase, "\(phase) × \(event)") }
                if actions.contains(.signalGo(.successor)) { #expect(event == .ready(.successor), "\(phase) × \(event)") }
                if actions.contains(.signalGoAhead(.successor)) {
                    #expect(phase == .stoppingOld && (event == .stopped(.old) || event == .exited(.old, description: "x")), "\(phase) × \(event)")
                    #expect(actions == A.goAheadThenCommit, "\(phase) × \(event)")
                }
                if actions.contains(.signalGo(.previous)) { #expect(event == .ready(.previous)) }
            }
        }
    }

    /// A handoff taken up again after batond's death goes on from its phase.
    @Test func aResumedHandoffGoesOnFromItsPhase() {
        var stopping = Handoff(mode: .parallel, timeouts: Self.t, resuming: .stoppingOld, hadOld: true, oldAlive: true,
                               successorAlive: true, previousAlive: false)
        #expect(stopping.handle(.begin).isEmpty)
        #expect(stopping.handle(.timeout(.stop)) == [.terminate(.old), .startTimer(.kill, Self.t.kill)])
        #expect(stopping.handle(.exited(.old, description: "signal 15"))
            == A.goAheadThenCommit)
        var reverting = Handoff(mode: .sequential, timeouts: Self.t, resuming: .revertingReady, hadOld: true, oldAlive: false,
                                successorAlive: false, previousAlive: true)
        #expect(reverting.handle(.ready(.previous))
            == [.cancelTimer(.ready), .recordPhase(.reverted), .signalGo(.previous), .end(.reverted, error: nil)])
    }

    @Test func staleTimersAreIgnored() {
        var handoff = Handoff(mode: .parallel, timeouts: Self.t, hasOld: true)
        _ = handoff.handle(.begin)
        _ = handoff.handle(.spawned(.successor))
        #expect(handoff.handle(.timeout(.stop)).isEmpty)
        #expect(handoff.handle(.timeout(.kill)).isEmpty)
        #expect(handoff.phase == .waitingReady)
    }
}

extension Handoff.Action {
    /// The old one is gone after `stopping_old` was recorded: go at once, the commit after.
    static let goAheadThenCommit: [Handoff.Action] = [.signalGoAhead(.successor), .cancelTimer(.stop), .cancelTimer(.kill), .commit,
                                                      .end(.committed, error: nil)]
}
