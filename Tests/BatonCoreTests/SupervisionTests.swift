import BatonCore
import Testing

typealias Machine = Supervision<ManualClock>

/// Shared vocabulary of the supervision tests: settings, spawns, a state's short name.
enum Fixture: String, CaseIterable, Sendable {
    case booting, idle, starting, working, backingOff, handingOff, failed, halted, stopping, stopped

    typealias E = Machine.Event
    static let timeouts = Handoff.Timeouts(ready: .seconds(60), stop: .seconds(30), kill: .seconds(10))
    static let settings = Machine.Settings(timeouts: timeouts)
    static let start1 = Machine.Spawn(version: "v1", purpose: .start)
    static let successor2 = Machine.Spawn(version: "v2", purpose: .handoff(.successor))
    static let gaveUp = "v1 crash-looped"
    /// A batond started again over a ledger that shows it gave up on v1 (irreversible).
    static let bootGivenUp: E = .boot(current: "v1", instances: [], handoff: nil,
                                      releases: .init(previous: "v0", irreversible: ["v1"], verdict: .failed(version: "v1", reason: gaveUp)))

    /// The events that lead a fresh machine here: `a.1` is the instance of the current
    /// release v1 (holding go from `working` on), `a.2` the successor of a handoff to v2.
    var events: [E] {
        switch self {
        case .booting: []
        case .idle: [.boot(current: nil, instances: [], handoff: nil)]
        case .starting: [.boot(current: "v1", instances: [], handoff: nil), .spawned("a.1", Self.start1)]
        case .working: Fixture.starting.events + [.ready("a.1")]
        case .backingOff: Fixture.working.events + [.exited("a.1", description: "exit 1")]
        case .handingOff: Fixture.working.events + [.desired(version: "v2", mode: .parallel), .spawned("a.2", Self.successor2)]
        case .failed: [Self.bootGivenUp]
        case .halted: Fixture.working.events + [.halt]
        case .stopping: Fixture.working.events + [.shutdown(stopAgents: true)]
        case .stopped: Fixture.working.events + [.shutdown(stopAgents: false)]
        }
    }

    func machine(clock: ManualClock = ManualClock()) -> Machine {
        var machine = Machine(settings: Self.settings, clock: clock)
        for event in events { _ = machine.handle(event) }
        return machine
    }
}

func name(_ state: Machine.State) -> String {
    switch state {
    case .booting: "booting"
    case .idle: "idle"
    case .starting(let version, let instance): "starting(\(version), \(instance ?? "-"))"
    case .working(let instance, _): "working(\(instance))"
    case .backingOff: "backingOff"
    case .handingOff(let run): "handingOff(\(run.handoff.phase.rawValue))"
    case .failed: "failed"
    case .halted: "halted"
    case .stopping: "stopping"
    case .stopped: "stopped"
    }
}

func kind(_ event: Machine.Event) -> String {
    switch event {
    case .boot: "boot"
    case .desired: "desired"
    case .spawned: "spawned"
    case .spawnFailed: "spawnFailed"
    case .registered: "registered"
    case .ready: "ready"
    case .failed: "failed"
    case .stopped: "stopped"
    case .exited: "exited"
    case .timerFired: "timerFired"
    case .shutdown: "shutdown"
    case .halt: "halt"
    }
}

/// The supervision machine, cell by cell: every state × event, each row a state reached
/// by real events, an optional setup, one event, the actions it must give and the state
/// after it.
@Suite("supervision state machine")
struct SupervisionTests {
    typealias E = Machine.Event
    typealias A = Machine.Action
    static let t = Fixture.timeouts

    struct Cell: Sendable, CustomTestStringConvertible {
        let from: Fixture
        var setup: [E] = []
        let event: E
        let actions: [A]
        let after: String
        var testDescription: String { "\(from.rawValue) × \(kind(event))\(setup.isEmpty ? "" : " after \(setup.map(kind))"): \(event)" }
    }

    static let stray: [A] = [.terminate("x.9"), .startTimer(.escalate("x.9"), t.kill)]
    static let reg: E = .registered("r.1", version: "r", stored: true)
    static let beganV2FromV1: [A] = [.record(.handoffBegan(from: "v1", to: "v2", mode: .parallel)), .record(.handoffPhase(.spawning)),
                                     .spawn(Fixture.successor2)]

    static let cells: [Cell] = [
        // MARK: booting
        Cell(from: .booting, event: .boot(current: "v1", instances: [], handoff: nil), actions: [.spawn(Fixture.start1)], after: "starting(v1, -)"),
        Cell(from: .booting, event: .boot(current: nil, instances: [], handoff: nil), actions: [], after: "idle"),
        Cell(from: .booting, event: .desired(version: "v2", mode: .parallel), actions: [.refuse(.notBooted)], after: "booting"),
        Cell(from: .booting, event: .spawned("x.9", Fixture.start1), actions: stray, after: "booting"),
        Cell(from: .booting, event: .spawnFailed(Fixture.start1, reason: "e"), actions: [], after: "booting"),
        Cell(from: .booting, event: reg, actions: [.refuse(.notBooted)], after: "booting"),
        Cell(from: .booting, event: .ready("a.1"), actions: [], after: "booting"),
        Cell(from: .booting, event: .failed("a.1", reason: "x"), actions: [], after: "booting"),
        Cell(from: .booting, event: .stopped("a.1"), actions: [], after: "booting"),
        Cell(from: .booting, event: .exited("a.1", description: "exit 0"), actions: [], after: "booting"),
        Cell(from: .booting, event: .timerFired(.restart), actions: [], after: "booting"),
        Cell(from: .booting, event: .shutdown(stopAgents: true), actions: [], after: "stopped"),

        // MARK: idle
        Cell(from: .idle, event: .boot(current: "v1", instances: [], handoff: nil), actions: [], after: "idle"),
        Cell(from: .idle, event: .desired(version: "v2", mode: .parallel),
             actions: [.record(.handoffBegan(from: nil, to: "v2", mode: .parallel)), .record(.handoffPhase(.spawning)), .spawn(Fixture.successor2)],
             after: "handingOff(spawning)"),
        Cell(from: .idle, event: .spawned("x.9", Fixture.successor2), actions: stray, after: "idle"),
        Cell(from: .idle, event: .spawnFailed(Fixture.start1, reason: "e"), actions: [], after: "idle"),
        Cell(from: .idle, event: reg, actions: [], after: "idle"),
        Cell(from: .idle, setup: [reg], event: .ready("r.1"), actions: [.signal("r.1", .go)], after: "working(r.1)"),
        Cell(from: .idle, setup: [reg], event: .failed("r.1", reason: "bad"),
             actions: [.recordError("reported failure: bad", instance: "r.1"), .terminate("r.1"), .startTimer(.escalate("r.1"), t.kill)],
             after: "idle"),
        Cell(from: .idle, setup: [reg], event: .stopped("r.1"), actions: [.startTimer(.escalate("r.1"), t.kill)], after: "idle"),
        Cell(from: .idle, setup: [reg], event: .exited("r.1", description: "exit 0"), actions: [], after: "idle"),
        Cell(from: .idle, setup: [reg, .stopped("r.1")], event: .timerFired(.escalate("r.1")),
             actions: [.terminate("r.1"), .startTimer(.escalate("r.1"), t.kill)], after: "idle"),
        Cell(from: .idle, setup: [reg], event: .shutdown(stopAgents: true), actions: [.release("r.1")], after: "stopped"),

        // MARK: starting
        Cell(from: .starting, event: .boot(current: "v1", instances: [], handoff: nil), actions: [], after: "starting(v1, a.1)"),
        Cell(from: .starting, event: .desired(version: "v2", mode: .parallel),
             actions: [.cancelTimer(.ready("a.1")), .terminate("a.1"), .startTimer(.escalate("a.1"), t.kill)] + beganV2FromV1,
             after: "handingOff(spawning)"),
        Cell(from: .starting, event: .spawned("x.9", Fixture.start1), actions: stray, after: "starting(v1, a.1)"),
        Cell(from: .starting, event: .spawnFailed(Fixture.start1, reason: "e"), actions: [], after: "starting(v1, a.1)"),
        Cell(from: .booting, setup: [.boot(current: "v1", instances: [], handoff: nil)], event: .spawnFailed(Fixture.start1, reason: "no such file"),
             actions: [.recordError("cannot start v1: no such file", instance: nil), .startTimer(.restart, .seconds(1))], after: "backingOff"),
        Cell(from: .starting, event: reg, actions: [], after: "starting(v1, a.1)"),
        Cell(from: .starting, event: .ready("a.1"), actions: [.cancelTimer(.ready("a.1")), .signal("a.1", .go)], after: "working(a.1)"),
        Cell(from: .starting, setup: [reg], event: .ready("r.1"),
             actions: [.cancelTimer(.ready("a.1")), .terminate("a.1"), .startTimer(.escalate("a.1"), t.kill), .signal("r.1", .go)],
             after: "working(r.1)"),
        Cell(from: .starting, event: .failed("a.1", reason: "db down"),
             actions: [.recordError("reported failure: db down", instance: "a.1"), .cancelTimer(.ready("a.1")), .terminate("a.1"),
                       .startTimer(.escalate("a.1"), t.kill)],
             after: "starting(v1, a.1)"),
        Cell(from: .starting, event: .stopped("a.1"), actions: [.startTimer(.escalate("a.1"), t.kill)], after: "starting(v1, a.1)"),
        Cell(from: .starting, event: .exited("a.1", description: "exit 2"),
             actions: [.recordError("exited before it was ready (exit 2)", instance: "a.1"), .cancelTimer(.ready("a.1")),
                       .startTimer(.restart, .seconds(1))],
             after: "backingOff"),
        Cell(from: .starting, setup: [.failed("a.1", reason: "db down")], event: .exited("a.1", description: "signal 15"),
             actions: [.cancelTimer(.escalate("a.1")), .startTimer(.restart, .seconds(1))], after: "backingOff"),
        Cell(from: .starting, event: .timerFired(.ready("a.1")),
             actions: [.recordError("not ready within 60.0 seconds", instance: "a.1"), .terminate("a.1"), .startTimer(.escalate("a.1"), t.kill)],
             after: "starting(v1, a.1)"),
        Cell(from: .starting, event: .shutdown(stopAgents: true),
             actions: [.cancelTimer(.ready("a.1")), .signal("a.1", .stop), .startTimer(.escalate("a.1"), t.stop)], after: "stopping"),

        // MARK: working
        Cell(from: .working, event: .boot(current: "v1", instances: [], handoff: nil), actions: [], after: "working(a.1)"),
        Cell(from: .working, event: .desired(version: "v2", mode: .parallel), actions: beganV2FromV1, after: "handingOff(spawning)"),
        Cell(from: .working, event: .spawned("x.9", Fixture.start1), actions: stray, after: "working(a.1)"),
        Cell(from: .working, event: .spawnFailed(Fixture.start1, reason: "e"), actions: [], after: "working(a.1)"),
        Cell(from: .working, event: reg, actions: [], after: "working(a.1)"),
        Cell(from: .working, event: .ready("a.1"), actions: [], after: "working(a.1)"),
        Cell(from: .working, setup: [reg], event: .ready("r.1"),
             actions: [.record(.handoffBegan(from: "v1", to: "r", mode: .parallel)), .record(.handoffPhase(.spawning)),
                       .record(.handoffPhase(.waitingReady)), .startTimer(.handoff(.ready), t.ready), .cancelTimer(.handoff(.ready)),
                       .record(.handoffPhase(.stoppingOld)), .signal("a.1", .stop), .startTimer(.handoff(.stop), t.stop)],
             after: "handingOff(stopping_old)"),
        Cell(from: .working, event: .failed("a.1", reason: "late"), actions: [], after: "working(a.1)"),
        Cell(from: .working, event: .stopped("a.1"), actions: [.startTimer(.escalate("a.1"), t.kill)], after: "working(a.1)"),
        Cell(from: .working, event: .exited("a.1", description: "exit 1"),
             actions: [.recordError("exited unexpectedly (exit 1)", instance: "a.1"), .startTimer(.restart, .seconds(1))], after: "backingOff"),
        Cell(from: .working, event: .timerFired(.restart), actions: [], after: "working(a.1)"),
        Cell(from: .working, event: .shutdown(stopAgents: true), actions: [.signal("a.1", .stop), .startTimer(.escalate("a.1"), t.stop)],
             after: "stopping"),
        Cell(from: .working, event: .shutdown(stopAgents: false), actions: [], after: "stopped"),

        // MARK: backingOff
        Cell(from: .backingOff, event: .boot(current: "v1", instances: [], handoff: nil), actions: [], after: "backingOff"),
        Cell(from: .backingOff, event: .desired(version: "v2", mode: .parallel), actions: [.cancelTimer(.restart)] + beganV2FromV1,
             after: "handingOff(spawning)"),
        Cell(from: .backingOff, event: .spawned("x.9", Fixture.start1), actions: stray, after: "backingOff"),
        Cell(from: .backingOff, event: .spawnFailed(Fixture.start1, reason: "e"), actions: [], after: "backingOff"),
        Cell(from: .backingOff, event: reg, actions: [], after: "backingOff"),
        Cell(from: .backingOff, setup: [reg], event: .ready("r.1"), actions: [.cancelTimer(.restart), .signal("r.1", .go)], after: "working(r.1)"),
        Cell(from: .backingOff, setup: [reg], event: .failed("r.1", reason: "bad"),
             actions: [.recordError("reported failure: bad", instance: "r.1"), .terminate("r.1"), .startTimer(.escalate("r.1"), t.kill)],
             after: "backingOff"),
        Cell(from: .backingOff, setup: [reg], event: .stopped("r.1"), actions: [.startTimer(.escalate("r.1"), t.kill)], after: "backingOff"),
        Cell(from: .backingOff, setup: [reg], event: .exited("r.1", description: "exit 0"), actions: [], after: "backingOff"),
        Cell(from: .backingOff, event: .timerFired(.restart), actions: [.spawn(Fixture.start1)], after: "starting(v1, -)"),
        Cell(from: .backingOff, event: .shutdown(stopAgents: true), actions: [.cancelTimer(.restart)], after: "stopped"),

        // MARK: handingOff (waiting_ready: a.1 old and holding go, a.2 the successor)
        Cell(from: .handingOff, event: .boot(current: "v1", instances: [], handoff: nil), actions: [], after: "handingOff(waiting_ready)"),
        Cell(from: .handingOff, event: .desired(version: "v3", mode: .parallel), actions: [.refuse(.handoffInProgress)],
             after: "handingOff(waiting_ready)"),
        Cell(from: .handingOff, event: .spawned("x.9", Fixture.successor2), actions: stray, after: "handingOff(waiting_ready)"),
        Cell(from: .handingOff, event: .spawnFailed(Fixture.successor2, reason: "e"), actions: [], after: "handingOff(waiting_ready)"),
        Cell(from: .handingOff, event: reg, actions: [], after: "handingOff(waiting_ready)"),
        Cell(from: .handingOff, event: .ready("a.2"),
             actions: [.cancelTimer(.handoff(.ready)), .record(.handoffPhase(.stoppingOld)), .signal("a.1", .stop),
                       .startTimer(.handoff(.stop), t.stop)],
             after: "handingOff(stopping_old)"),
        Cell(from: .handingOff, setup: [reg], event: .ready("r.1"), actions: [], after: "handingOff(waiting_ready)"),
        Cell(from: .handingOff, event: .failed("a.2", reason: "db down"),
             actions: [.cancelTimer(.handoff(.ready)), .record(.handoffPhase(.abortingSuccessor)), .terminate("a.2"),
                       .startTimer(.handoff(.kill), t.kill)],
             after: "handingOff(aborting_successor)"),
        Cell(from: .handingOff, event: .stopped("a.1"), actions: [.startTimer(.escalate("a.1"), t.kill)], after: "handingOff(waiting_ready)"),
        Cell(from: .handingOff, event: .exited("a.2", description: "exit 2"),
             actions: [.cancelTimer(.handoff(.ready)), .record(.handoffPhase(.abortingSuccessor)),
                       .recordError("exited before it was ready (exit 2)", instance: "a.2"),
                       .record(.handoffEnded(.failed, error: "exited before it was ready (exit 2)"))],
             after: "working(a.1)"),
        Cell(from: .handingOff, event: .timerFired(.handoff(.ready)),
             actions: [.record(.handoffPhase(.abortingSuccessor)), .terminate("a.2"), .startTimer(.handoff(.kill), t.kill)],
             after: "handingOff(aborting_successor)"),
        Cell(from: .handingOff, event: .shutdown(stopAgents: true),
             actions: [.cancelTimer(.handoff(.ready)), .record(.handoffEnded(.cancelled, error: nil)),
                       .signal("a.1", .stop), .startTimer(.escalate("a.1"), t.stop), .signal("a.2", .stop), .startTimer(.escalate("a.2"), t.stop)],
             after: "stopping"),
        Cell(from: .handingOff, event: .shutdown(stopAgents: false), actions: [.cancelTimer(.handoff(.ready))], after: "stopped"),

        // MARK: failed (batond gave up on v1, irreversible; nothing runs)
        Cell(from: .failed, event: .boot(current: "v1", instances: [], handoff: nil), actions: [], after: "failed"),
        Cell(from: .failed, event: .desired(version: "v2", mode: .parallel),
             actions: [.record(.handoffBegan(from: "v1", to: "v2", mode: .parallel)), .record(.handoffPhase(.spawning)), .spawn(Fixture.successor2)],
             after: "handingOff(spawning)"),
        Cell(from: .failed, event: .spawned("x.9", Fixture.start1), actions: stray, after: "failed"),
        Cell(from: .failed, event: .spawnFailed(Fixture.start1, reason: "e"), actions: [], after: "failed"),
        Cell(from: .failed, event: reg, actions: [], after: "failed"),
        Cell(from: .failed, setup: [reg], event: .ready("r.1"), actions: [.signal("r.1", .go)], after: "working(r.1)"),
        Cell(from: .failed, setup: [reg], event: .failed("r.1", reason: "bad"),
             actions: [.recordError("reported failure: bad", instance: "r.1"), .terminate("r.1"), .startTimer(.escalate("r.1"), t.kill)],
             after: "failed"),
        Cell(from: .failed, setup: [reg], event: .stopped("r.1"), actions: [.startTimer(.escalate("r.1"), t.kill)], after: "failed"),
        Cell(from: .failed, setup: [reg], event: .exited("r.1", description: "exit 0"), actions: [], after: "failed"),
        Cell(from: .failed, setup: [reg, .stopped("r.1")], event: .timerFired(.escalate("r.1")),
             actions: [.terminate("r.1"), .startTimer(.escalate("r.1"), t.kill)], after: "failed"),
        Cell(from: .failed, event: .timerFired(.restart), actions: [], after: "failed"),
        Cell(from: .failed, setup: [reg], event: .shutdown(stopAgents: true), actions: [.release("r.1")], after: "stopped"),
        Cell(from: .failed, event: .shutdown(stopAgents: false), actions: [], after: "stopped"),

        // MARK: halt, from every state
        Cell(from: .booting, event: .halt, actions: [.refuse(.notBooted)], after: "booting"),
        Cell(from: .idle, event: .halt, actions: [], after: "halted"),
        Cell(from: .starting, event: .halt,
             actions: [.cancelTimer(.ready("a.1")), .signal("a.1", .stop), .startTimer(.escalate("a.1"), t.stop)], after: "halted"),
        Cell(from: .working, event: .halt, actions: [.signal("a.1", .stop), .startTimer(.escalate("a.1"), t.stop)], after: "halted"),
        Cell(from: .working, setup: [reg], event: .halt,
             actions: [.signal("a.1", .stop), .startTimer(.escalate("a.1"), t.stop), .signal("r.1", .stop), .startTimer(.escalate("r.1"), t.stop)],
             after: "halted"),
        Cell(from: .backingOff, event: .halt, actions: [.cancelTimer(.restart)], after: "halted"),
        Cell(from: .handingOff, event: .halt,
             actions: [.cancelTimer(.handoff(.ready)), .record(.handoffEnded(.cancelled, error: nil)),
                       .signal("a.1", .stop), .startTimer(.escalate("a.1"), t.stop),
                       .signal("a.2", .stop), .startTimer(.escalate("a.2"), t.stop)],
             after: "halted"),
        Cell(from: .failed, event: .halt, actions: [], after: "halted"),
        Cell(from: .stopping, event: .halt, actions: [.refuse(.shuttingDown)], after: "stopping"),
        Cell(from: .stopped, event: .halt, actions: [.refuse(.shuttingDown)], after: "stopped"),

        // MARK: halted (a barrier upgrade; a.1 told stop, not yet gone)
        Cell(from: .halted, event: .boot(current: "v1", instances: [], handoff: nil), actions: [], after: "halted"),
        Cell(from: .halted, event: .desired(version: "v2", mode: .parallel), actions: beganV2FromV1, after: "handingOff(spawning)"),
        Cell(from: .halted, setup: [.exited("a.1", description: "exit 0")], event: .desired(version: "v2", mode: .parallel),
             actions: [.record(.handoffBegan(from: "v1", to: "v2", mode: .parallel)), .record(.handoffPhase(.spawning)), .spawn(Fixture.successor2)],
             after: "handingOff(spawning)"),
        Cell(from: .halted, event: .spawned("x.9", Fixture.start1), actions: stray, after: "halted"),
        Cell(from: .halted, event: .spawnFailed(Fixture.start1, reason: "e"), actions: [], after: "halted"),
        Cell(from: .halted, event: reg, actions: [], after: "halted"),
        Cell(from: .halted, setup: [reg], event: .ready("r.1"), actions: [], after: "halted"),
        Cell(from: .halted, setup: [reg], event: .failed("r.1", reason: "bad"),
             actions: [.recordError("reported failure: bad", instance: "r.1"), .terminate("r.1"), .startTimer(.escalate("r.1"), t.kill)],
             after: "halted"),
        Cell(from: .halted, event: .stopped("a.1"), actions: [.startTimer(.escalate("a.1"), t.kill)], after: "halted"),
        Cell(from: .halted, event: .exited("a.1", description: "exit 0"), actions: [.cancelTimer(.escalate("a.1"))], after: "halted"),
        Cell(from: .halted, event: .timerFired(.escalate("a.1")), actions: [.terminate("a.1"), .startTimer(.escalate("a.1"), t.kill)],
             after: "halted"),
        Cell(from: .halted, event: .timerFired(.restart), actions: [], after: "halted"),
        Cell(from: .halted, event: .shutdown(stopAgents: true), actions: [], after: "stopping"),
        Cell(from: .halted, event: .halt, actions: [], after: "halted"),

        // MARK: stopping (a.1 told stop)
        Cell(from: .stopping, event: .boot(current: "v1", instances: [], handoff: nil), actions: [], after: "stopping"),
        Cell(from: .stopping, event: .desired(version: "v2", mode: .parallel), actions: [.refuse(.shuttingDown)], after: "stopping"),
        Cell(from: .stopping, event: .spawned("x.9", Fixture.start1), actions: stray, after: "stopping"),
        Cell(from: .stopping, event: .spawnFailed(Fixture.start1, reason: "e"), actions: [], after: "stopping"),
        Cell(from: .stopping, event: reg, actions: [.refuse(.shuttingDown)], after: "stopping"),
        Cell(from: .stopping, event: .ready("a.1"), actions: [], after: "stopping"),
        Cell(from: .stopping, event: .failed("a.1", reason: "x"), actions: [], after: "stopping"),
        Cell(from: .stopping, event: .stopped("a.1"), actions: [.startTimer(.escalate("a.1"), t.kill)], after: "stopping"),
        Cell(from: .stopping, event: .exited("a.1", description: "exit 0"), actions: [.cancelTimer(.escalate("a.1"))], after: "stopped"),
        Cell(from: .stopping, event: .timerFired(.escalate("a.1")), actions: [.terminate("a.1"), .startTimer(.escalate("a.1"), t.kill)],
             after: "stopping"),
        Cell(from: .stopping, setup: [.timerFired(.escalate("a.1"))], event: .timerFired(.escalate("a.1")), actions: [.kill("a.1")],
             after: "stopping"),
        Cell(from: .stopping, event: .shutdown(stopAgents: true), actions: [], after: "stopping"),

        // MARK: stopped (batond let a.1 run on)
        Cell(from: .stopped, event: .boot(current: "v1", instances: [], handoff: nil), actions: [], after: "stopped"),
        Cell(from: .stopped, event: .desired(version: "v2", mode: .parallel), actions: [.refuse(.shuttingDown)], after: "stopped"),
        Cell(from: .stopped, event: .spawned("x.9", Fixture.start1), actions: stray, after: "stopped"),
        Cell(from: .stopped, event: .spawnFailed(Fixture.start1, reason: "e"), actions: [], after: "stopped"),
        Cell(from: .stopped, event: reg, actions: [.refuse(.shuttingDown)], after: "stopped"),
        Cell(from: .stopped, event: .ready("a.1"), actions: [], after: "stopped"),
        Cell(from: .stopped, event: .failed("a.1", reason: "x"), actions: [], after: "stopped"),
        Cell(from: .stopped, event: .stopped("a.1"), actions: [], after: "stopped"),
        Cell(from: .stopped, event: .exited("a.1", description: "exit 0"), actions: [], after: "stopped"),
        Cell(from: .stopped, event: .timerFired(.restart), actions: [], after: "stopped"),
        Cell(from: .stopped, event: .shutdown(stopAgents: true), actions: [], after: "stopped"),
    ]

    @Test(arguments: cells)
    func cell(_ cell: Cell) {
        var machine = cell.from.machine()
        for event in cell.setup { _ = machine.handle(event) }
        let actions = machine.handle(cell.event)
        #expect(actions == cell.actions)
        #expect(name(machine.state) == cell.after)
    }

    /// The table has a row for every state × event.
    @Test func everyCellHasARow() {
        let kinds = ["boot", "desired", "spawned", "spawnFailed", "registered", "ready", "failed", "stopped", "exited", "timerFired",
                     "shutdown", "halt"]
        let covered = Set(Self.cells.map { "\($0.from.rawValue) × \(kind($0.event))" })
        for state in Fixture.allCases {
            for event in kinds { #expect(covered.contains("\(state.rawValue) × \(event)")) }
        }
        for state in Fixture.allCases { #expect(name(state.machine().state).hasPrefix(state.rawValue)) }
    }

    // MARK: - Adoption: the table of Supervision.adopt, row by row

    struct Adoption: Sendable, CustomTestStringConvertible {
        let name: String
        var current = "v1"
        let instances: [Machine.AdoptedInstance]
        var phase: Handoff.Phase?
        var mode = Handoff.Mode.parallel
        let actions: [A]
        let after: String
        var testDescription: String { name }
    }

    typealias I = Machine.AdoptedInstance
    static func o(_ signal: AgentSignal = .go, stopped: Bool = false, alive: Bool = true) -> I {
        I(id: "o", version: "v1", signal: signal, heldGo: signal != .wait, ready: true, stopped: stopped, role: .old, alive: alive)
    }
    static func s(ready: Bool = true, alive: Bool = true) -> I {
        I(id: "s", version: "v2", signal: .wait, ready: ready, role: .successor, alive: alive)
    }
    static func p(ready: Bool = true, alive: Bool = true) -> I {
        I(id: "p", version: "v1", signal: .wait, ready: ready, role: .previous, alive: alive)
    }
    static let abortedError = "the successor failed; batond restarted before it was stopped"
    static let notRevertedError = "the successor failed, and the previous release was not running again"

    static let adoptions: [Adoption] = [
        Adoption(name: "stopping_first, O alive and not told stop yet: it is told stop now", instances: [o()], phase: .stoppingFirst,
                 mode: .sequential, actions: [.signal("o", .stop), .startTimer(.handoff(.stop), t.stop)], after: "handingOff(stopping_first)"),
        Adoption(name: "stopping_first, O alive and told stop: wait for it", instances: [o(.stop)], phase: .stoppingFirst, mode: .sequential,
                 actions: [.startTimer(.handoff(.stop), t.stop)], after: "handingOff(stopping_first)"),
        Adoption(name: "stopping_first, O gone: the successor starts", instances: [o(alive: false)], phase: .stoppingFirst, mode: .sequential,
                 actions: [.record(.handoffPhase(.spawning)), .spawn(Fixture.successor2)], after: "handingOff(spawning)"),
        Adoption(name: "stopping_old, O told stop, S ready: wait for O, then commit", instances: [o(.stop), s()], phase: .stoppingOld,
                 actions: [.startTimer(.handoff(.stop), t.stop)], after: "handingOff(stopping_old)"),
        Adoption(name: "waiting_ready, O told stop, S ready: stopping_old is recorded (the decision go ahead needs), wait for O",
                 instances: [o(.stop), s()], phase: .waitingReady,
                 actions: [.record(.handoffPhase(.stoppingOld)), .startTimer(.handoff(.stop), t.stop)], after: "handingOff(stopping_old)"),
        Adoption(name: "waiting_ready, O works, S ready: O is told stop", instances: [o(), s()], phase: .waitingReady,
                 actions: [.record(.handoffPhase(.stoppingOld)), .signal("o", .stop), .startTimer(.handoff(.stop), t.stop)],
                 after: "handingOff(stopping_old)"),
        Adoption(name: "waiting_ready, O gone, S ready: commit now", instances: [o(alive: false), s()], phase: .waitingReady,
                 actions: [.commit(version: "v2"), .signal("s", .go), .record(.handoffEnded(.committed, error: nil))], after: "working(s)"),
        Adoption(name: "stopping_old, O reported stopped, S ready: commit now", instances: [o(.stop, stopped: true), s()], phase: .stoppingOld,
                 actions: [.commit(version: "v2"), .signal("s", .go), .record(.handoffEnded(.committed, error: nil)),
                           .startTimer(.escalate("o"), t.kill)],
                 after: "working(s)"),
        Adoption(name: "waiting_ready, O works, S not ready: S goes, O keeps go", instances: [o(), s(ready: false)], phase: .waitingReady,
                 actions: [.terminate("s"), .startTimer(.escalate("s"), t.kill), .record(.handoffEnded(.cancelled, error: nil))],
                 after: "working(o)"),
        Adoption(name: "spawning, O works, S spawned: S goes, O keeps go", instances: [o(), s(ready: false)], phase: .spawning,
                 actions: [.terminate("s"), .startTimer(.escalate("s"), t.kill), .record(.handoffEnded(.cancelled, error: nil))],
                 after: "working(o)"),
        Adoption(name: "stopping_old, O told stop, S gone: current starts, go once O is gone", instances: [o(.stop), s(alive: false)],
                 phase: .stoppingOld,
                 actions: [.record(.handoffEnded(.cancelled, error: nil)), .startTimer(.escalate("o"), t.stop), .spawn(Fixture.start1)],
                 after: "starting(v1, -)"),
        Adoption(name: "aborting_successor, O works: S goes, O keeps go", instances: [o(), s(ready: false)], phase: .abortingSuccessor,
                 actions: [.terminate("s"), .startTimer(.escalate("s"), t.kill), .recordError(abortedError, instance: "s"),
                           .record(.handoffEnded(.failed, error: abortedError))],
                 after: "working(o)"),
        Adoption(name: "aborting_successor, sequential, O gone: current starts", instances: [o(alive: false), s(ready: false)],
                 phase: .abortingSuccessor, mode: .sequential,
                 actions: [.terminate("s"), .startTimer(.escalate("s"), t.kill), .recordError(abortedError, instance: "s"),
                           .record(.handoffEnded(.failed, error: abortedError)), .spawn(Fixture.start1)],
                 after: "starting(v1, -)"),
        Adoption(name: "reverting_ready, P ready: P gets go", instances: [o(alive: false), p()], phase: .revertingReady, mode: .sequential,
                 actions: [.record(.handoffPhase(.reverted)), .signal("p", .go), .record(.handoffEnded(.reverted, error: nil))],
                 after: "working(p)"),
        Adoption(name: "reverting_ready, P not ready: wait for it", instances: [o(alive: false), p(ready: false)], phase: .revertingReady,
                 mode: .sequential, actions: [.startTimer(.handoff(.ready), t.ready)], after: "handingOff(reverting_ready)"),
        Adoption(name: "reverting_spawn, P gone: current starts", instances: [o(alive: false)], phase: .revertingSpawn, mode: .sequential,
                 actions: [.recordError(notRevertedError, instance: nil), .record(.handoffEnded(.failed, error: notRevertedError)),
                           .spawn(Fixture.start1)],
                 after: "starting(v1, -)"),
        Adoption(name: "committed, only the end not recorded: S gets go", current: "v2", instances: [o(alive: false), s()], phase: .committed,
                 actions: [.record(.handoffEnded(.committed, error: nil)), .signal("s", .go)], after: "working(s)"),
        Adoption(name: "no handoff, one works: it keeps go", instances: [o()], actions: [], after: "working(o)"),
        Adoption(name: "no handoff, nothing alive: current starts at once", instances: [o(alive: false)], actions: [.spawn(Fixture.start1)],
                 after: "starting(v1, -)"),
        Adoption(name: "no handoff, a start not ready yet: it goes on, with a new deadline",
                 instances: [I(id: "c", version: "v1", signal: .wait, ready: false)],
                 actions: [.startTimer(.ready("c"), t.ready)], after: "starting(v1, c)"),
        Adoption(name: "no handoff, a stray child of another release: it goes",
                 instances: [o(), I(id: "c", version: "v0", signal: .wait, ready: false)],
                 actions: [.terminate("c"), .startTimer(.escalate("c"), t.kill)], after: "working(o)"),
        Adoption(name: "no handoff, two recorded in go: the one of current keeps it",
                 instances: [I(id: "a", version: "v0", signal: .go, ready: true), I(id: "b", version: "v1", signal: .go, ready: true)],
                 actions: [.signal("a", .stop), .startTimer(.escalate("a"), t.stop)], after: "working(b)"),
        Adoption(name: "no handoff, a registered one ready beside one that works: it takes over",
                 instances: [o(), I(id: "r", version: "r0", registered: true, signal: .wait, ready: true)],
                 actions: [.record(.handoffBegan(from: "v1", to: "r0", mode: .parallel)), .record(.handoffPhase(.spawning)),
                           .record(.handoffPhase(.waitingReady)), .startTimer(.handoff(.ready), t.ready), .cancelTimer(.handoff(.ready)),
                           .record(.handoffPhase(.stoppingOld)), .signal("o", .stop), .startTimer(.handoff(.stop), t.stop)],
                 after: "handingOff(stopping_old)"),
    ]

    @Test(arguments: adoptions)
    func adoption(_ row: Adoption) {
        var machine = Machine(settings: Fixture.settings, clock: ManualClock())
        let interrupted = row.phase.map { Machine.InterruptedHandoff(mode: row.mode, from: "v1", to: "v2", phase: $0) }
        let actions = machine.handle(.boot(current: row.current, instances: row.instances, handoff: interrupted))
        #expect(actions == row.actions)
        #expect(name(machine.state) == row.after)
    }

    /// The old instance told stop before batond died, the successor ready (and maybe told
    /// go, unrecorded): the successor is told nothing until the old one reports stopped
    /// (again: its report was never answered) or exits; then it gets go at once, and
    /// commits.
    @Test func anInterruptedStopFinishesWithTheCommit() {
        var machine = Machine(settings: Fixture.settings, clock: ManualClock())
        let boot = machine.handle(.boot(current: "v1", instances: [Self.o(.stop), Self.s()],
                                        handoff: .init(mode: .parallel, from: "v1", to: "v2", phase: .stoppingOld)))
        #expect(!boot.contains { if case .signal("s", _) = $0 { true } else { false } }, "\(boot)")
        #expect(!boot.contains(.terminate("s")) && !boot.contains(.kill("s")), "\(boot)")
        #expect(machine.handle(.stopped("o")) == [.startTimer(.escalate("o"), Self.t.kill), .signalGoAhead("s"), .cancelTimer(.handoff(.stop)),
                                                  .commit(version: "v2"), .record(.handoffEnded(.committed, error: nil))])
        #expect(name(machine.state) == "working(s)")
    }

    /// batond died while stopping every agent: the one that worked was told stop and may
    /// still finish its work. The current release starts at once, and gets go only once
    /// that one is gone.
    @Test func goWaitsForOneToldStopBeforeTheRestart() {
        var machine = Machine(settings: Fixture.settings, clock: ManualClock())
        let x = I(id: "x", version: "v1", signal: .stop, heldGo: true, ready: true)
        #expect(machine.handle(.boot(current: "v1", instances: [x], handoff: nil))
            == [.startTimer(.escalate("x"), Self.t.stop), .spawn(Fixture.start1)])
        _ = machine.handle(.spawned("a.1", Fixture.start1))
        #expect(machine.handle(.ready("a.1")) == [.cancelTimer(.ready("a.1"))])
        #expect(machine.awaitingGo == "a.1")
        #expect(machine.handle(.exited("x", description: "exit 0")) == [.cancelTimer(.escalate("x")), .signal("a.1", .go)])
        #expect(machine.holder == "a.1")
    }

    // MARK: - Backoff

    /// Each quick death doubles the wait before the next start, from 1 s to 60 s; a
    /// minute of work brings it back to 1 s. Time moves by hand.
    @Test func backoffDoublesToAMinuteAndResetsAfterStableWork() {
        let clock = ManualClock()
        var machine = Fixture.working.machine(clock: clock)
        var delays: [Duration] = []
        var generation = 1
        func crashAndRestart(after work: Duration) {
            clock.advance(by: work)
            let actions = machine.handle(.exited("a.\(generation)", description: "exit 1"))
            guard case .startTimer(.restart, let delay)? = actions.last else {
                Issue.record("no restart after \(actions)")
                return
            }
            delays.append(delay)
            #expect(machine.state == .backingOff(until: clock.now.advanced(by: delay)))
            clock.advance(by: delay)
            #expect(machine.handle(.timerFired(.restart)) == [.spawn(Fixture.start1)])
            generation += 1
            _ = machine.handle(.spawned("a.\(generation)", Fixture.start1))
            _ = machine.handle(.ready("a.\(generation)"))
        }
        for _ in 0..<8 { crashAndRestart(after: .seconds(5)) }
        #expect(delays == [1, 2, 4, 8, 16, 32, 60, 60].map { Duration.seconds($0) })
        crashAndRestart(after: .seconds(60))
        #expect(delays.last == .seconds(1))
        crashAndRestart(after: .seconds(59))
        #expect(delays.last == .seconds(2))
    }

    @Test func aCommittedHandoffResetsTheBackoff() {
        var machine = Fixture.working.machine()
        for generation in 1...3 {
            _ = machine.handle(.exited("a.\(generation)", description: "exit 1"))
            _ = machine.handle(.timerFired(.restart))
            _ = machine.handle(.spawned("a.\(generation + 1)", Fixture.start1))
            _ = machine.handle(.ready("a.\(generation + 1)"))
        }
        #expect(machine.failures == 3)
        _ = machine.handle(.desired(version: "v2", mode: .parallel))
        _ = machine.handle(.spawned("b.1", Fixture.successor2))
        _ = machine.handle(.ready("b.1"))
        let commit = machine.handle(.stopped("a.4"))
        #expect(commit.contains(.commit(version: "v2")) && commit.contains(.signalGoAhead("b.1")))
        #expect(machine.failures == 0)
        #expect(machine.handle(.exited("b.1", description: "exit 1")).last == .startTimer(.restart, .seconds(1)))
    }

    // MARK: - Exclusion across paths

    /// The old instance is told stop and still holds go: a registered instance that is
    /// ready meanwhile waits for the handoff, then takes over by a handoff of its own.
    @Test func aRegisteredInstanceWaitsForTheRunningHandoff() {
        var machine = Fixture.handingOff.machine()
        _ = machine.handle(.registered("r.1", version: "r", stored: true))
        #expect(machine.handle(.ready("r.1")).isEmpty)
        _ = machine.handle(.ready("a.2"))
        let commit = machine.handle(.stopped("a.1"))
        #expect(commit.prefix(4) == [.startTimer(.escalate("a.1"), Self.t.kill), .signalGoAhead("a.2"), .cancelTimer(.handoff(.stop)),
                                     .commit(version: "v2")])
        // r.1's turn: a handoff from a.2.
        #expect(commit.contains(.record(.handoffBegan(from: "v2", to: "r", mode: .parallel))))
        #expect(commit.last == .startTimer(.handoff(.stop), Self.t.stop))
        #expect(name(machine.state) == "handingOff(stopping_old)")
        #expect(machine.holder == "a.2")
    }

    /// A registered instance may run a release batond does not store: its handoff
    /// commits, but supervision goes on starting the release it has when it exits.
    @Test func aCommittedUnstoredReleaseIsNeverStartedBySupervision() {
        var machine = Fixture.working.machine()
        _ = machine.handle(.registered("r.1", version: "elsewhere", stored: false))
        _ = machine.handle(.ready("r.1"))
        let commit = machine.handle(.stopped("a.1"))
        #expect(commit.contains(.commit(version: "elsewhere")) && commit.contains(.signalGoAhead("r.1")))
        #expect(machine.current == "v1")
        _ = machine.handle(.exited("r.1", description: "exit 1"))
        _ = machine.handle(.timerFired(.restart))
        #expect(name(machine.state) == "starting(v1, -)")
    }
}
