import BatonCore
import Testing

/// A handoff taken up again after batond died: the rows of the table in docs/ledger.md,
/// then every recorded phase × what was found alive, checked against the invariants.
@Suite("handoff taken up after a restart")
struct HandoffResumeTests {
    typealias A = Handoff.Action
    typealias F = Handoff.Found
    static let t = Handoff.Timeouts(ready: .seconds(60), stop: .seconds(30), kill: .seconds(10))
    static let working = F.alive(ready: true, stopped: false)
    static let verifying = F.alive(ready: false, stopped: false)
    static let reportedStopped = F.alive(ready: true, stopped: true)

    struct Row: Sendable, CustomTestStringConvertible {
        let name: String
        let phase: String
        var mode: Handoff.Mode = .parallel
        let old: F, successor: F
        var previous: F = .none
        let actions: [A]
        let final: Handoff.Phase
        var testDescription: String { name }
    }

    static let rows: [Row] = [
        Row(name: "began: begins again", phase: "began", old: working, successor: .none,
            actions: [.recordPhase(.spawning), .spawn(.successor)], final: .spawning),
        Row(name: "spawning, no successor recorded: spawn it", phase: "spawning", old: working, successor: .none,
            actions: [.spawn(.successor)], final: .spawning),
        Row(name: "spawning, successor recorded and verifying: wait for it", phase: "spawning", old: working, successor: verifying,
            actions: [.startTimer(.ready, t.ready)], final: .waitingReady),
        Row(name: "waiting_ready, successor verifying: the old keeps go", phase: "waiting_ready", old: working, successor: verifying,
            actions: [.startTimer(.ready, t.ready)], final: .waitingReady),
        Row(name: "waiting_ready, successor ready: stop the old one", phase: "waiting_ready", old: working, successor: working,
            actions: [.startTimer(.ready, t.ready), .cancelTimer(.ready), .recordPhase(.stoppingOld), .signalStop(.old),
                      .startTimer(.stop, t.stop)], final: .stoppingOld),
        Row(name: "waiting_ready, successor gone: failed, the old keeps go", phase: "waiting_ready", old: working, successor: .gone,
            actions: [.startTimer(.ready, t.ready), .cancelTimer(.ready), .recordPhase(.abortingSuccessor),
                      .end(.failed, error: "exited before it was ready (ended while batond was down)")], final: .failed),
        Row(name: "stopping_old, old still stopping: stop again, wait", phase: "stopping_old", old: working, successor: working,
            actions: [.signalStop(.old), .startTimer(.stop, t.stop)], final: .stoppingOld),
        Row(name: "stopping_old, old reported stopped: commit", phase: "stopping_old", old: reportedStopped, successor: working,
            actions: [.signalStop(.old), .startTimer(.stop, t.stop), .cancelTimer(.stop), .cancelTimer(.kill), .commit,
                      .signalGo(.successor), .end(.committed, error: nil)], final: .committed),
        Row(name: "stopping_old, old gone: commit", phase: "stopping_old", old: .gone, successor: working,
            actions: [.cancelTimer(.stop), .cancelTimer(.kill), .commit, .signalGo(.successor), .end(.committed, error: nil)],
            final: .committed),
        Row(name: "stopping_old, both gone: failed (supervision starts current)", phase: "stopping_old", old: .gone, successor: .gone,
            actions: [.cancelTimer(.stop), .cancelTimer(.kill), .end(.failed, error: "handoff failed")], final: .failed),
        Row(name: "aborting_successor, successor alive: terminate it again", phase: "aborting_successor", old: working,
            successor: verifying, actions: [.terminate(.successor), .startTimer(.kill, t.kill)], final: .abortingSuccessor),
        Row(name: "aborting_successor, successor gone: failed", phase: "aborting_successor", old: working, successor: .gone,
            actions: [.cancelTimer(.kill), .end(.failed, error: "handoff failed")], final: .failed),
        Row(name: "sequential stopping_first, old stopping: stop again", phase: "stopping_first", mode: .sequential,
            old: working, successor: .none, actions: [.signalStop(.old), .startTimer(.stop, t.stop)], final: .stoppingFirst),
        Row(name: "sequential stopping_first, old gone: start the successor", phase: "stopping_first", mode: .sequential,
            old: .gone, successor: .none,
            actions: [.cancelTimer(.stop), .cancelTimer(.kill), .recordPhase(.spawning), .spawn(.successor)], final: .spawning),
        Row(name: "sequential aborting, successor gone: revert", phase: "aborting_successor", mode: .sequential,
            old: .gone, successor: .gone,
            actions: [.cancelTimer(.kill), .recordPhase(.revertingSpawn), .spawn(.previous)], final: .revertingSpawn),
        Row(name: "sequential reverting_spawn, nothing recorded: spawn previous", phase: "reverting_spawn", mode: .sequential,
            old: .gone, successor: .gone, actions: [.spawn(.previous)], final: .revertingSpawn),
        Row(name: "sequential reverting_ready, previous ready: reverted", phase: "reverting_ready", mode: .sequential,
            old: .gone, successor: .gone, previous: working,
            actions: [.startTimer(.ready, t.ready), .cancelTimer(.ready), .recordPhase(.reverted), .signalGo(.previous),
                      .end(.reverted, error: nil)], final: .reverted),
    ]

    @Test(arguments: rows)
    func row(_ row: Row) {
        let (machine, actions) = Handoff.resuming(phase: row.phase, mode: row.mode, timeouts: Self.t, old: row.old,
                                                  successor: row.successor, previous: row.previous,
                                                  fromRecorded: row.mode == .sequential)
        #expect(actions == row.actions)
        #expect(machine.phase == row.final)
    }

    static let phases = ["began", "stopping_first", "spawning", "waiting_ready", "stopping_old", "aborting_successor",
                         "reverting_spawn", "reverting_ready"]
    static let found: [F] = [.none, .gone, .alive(ready: false, stopped: false), .alive(ready: true, stopped: false),
                             .alive(ready: true, stopped: true)]

    /// Every recorded phase × every state of each role, in both modes: go only to a
    /// process alive and ready once the old one is gone, commit only then, and nothing
    /// sent to a process that is gone.
    @Test func everyRowKeepsTheInvariants() {
        for mode in [Handoff.Mode.parallel, .sequential] {
            for phase in Self.phases {
                for old in Self.found {
                    for successor in Self.found {
                        for previous in Self.found where Self.reachable(mode, phase, old, successor, previous) {
                            check(mode, phase, old, successor, previous)
                        }
                    }
                }
            }
        }
    }

    /// What the ledger can hold: its records keep cause before effect (a phase is
    /// recorded after the reports and exits that led to it), so e.g. `stopping_old`
    /// never comes with a successor that has not reported ready.
    static func reachable(_ mode: Handoff.Mode, _ phase: String, _ old: F, _ successor: F, _ previous: F) -> Bool {
        let stopped: Set<F> = [.none, .gone, .alive(ready: false, stopped: true), .alive(ready: true, stopped: true)]
        switch (mode, phase) {
        case (_, "began"):
            return successor == .none && previous == .none
        case (.parallel, "stopping_first"), (.parallel, "reverting_spawn"), (.parallel, "reverting_ready"),
             (.sequential, "stopping_old"):
            return false
        case (.sequential, "stopping_first"):
            return old != .none && successor == .none && previous == .none
        case (.parallel, "stopping_old"):
            return old != .none && successor != .none && successor != .alive(ready: false, stopped: false) && previous == .none
        case (.parallel, _):
            return previous == .none
        case (.sequential, "reverting_spawn"), (.sequential, "reverting_ready"):
            // The successor was gone before the previous release was started again.
            return stopped.contains(old) && successor == .gone
        case (.sequential, _):
            // Past stopping_first, the old one is gone (or reported stopped).
            return stopped.contains(old) && previous == .none
        default:
            return false
        }
    }

    func check(_ mode: Handoff.Mode, _ phase: String, _ old: F, _ successor: F, _ previous: F) {
        let (machine, actions) = Handoff.resuming(phase: phase, mode: mode, timeouts: Self.t, old: old, successor: successor,
                                                  previous: previous, fromRecorded: mode == .sequential)
        let row = "\(mode) \(phase) old=\(old) successor=\(successor) previous=\(previous): \(actions)"
        func found(_ role: Handoff.Role) -> F { role == .old ? old : role == .successor ? successor : previous }
        func alive(_ role: Handoff.Role) -> Bool { if case .alive = found(role) { true } else { false } }
        for action in actions {
            switch action {
            case .signalGo(let role):
                #expect(role != .old, "\(row)")
                #expect(found(role) == .alive(ready: true, stopped: false), "go to a process not alive and ready: \(row)")
                #expect(!machine.oldAlive, "go while the old one may work: \(row)")
            case .signalStop(let role), .terminate(let role), .kill(let role):
                #expect(alive(role), "a signal to a process that is gone: \(row)")
            case .commit:
                #expect(successor == .alive(ready: true, stopped: false), "commit without a ready successor: \(row)")
            case .recordPhase, .spawn, .startTimer, .cancelTimer, .end:
                break
            }
        }
    }
}
