import BatonCore
import BatonTestSupport
import Foundation
import Testing


/// Supervision and its handoffs under random events: reports out of order, exits at any
/// time, timers, desired versions, registrations, shutdowns, and batond killed in the
/// middle of a step and started again over the instances that outlived it (adoption).
/// The world below plays the processes and the ledger; after every step it checks:
/// - at most one instance holds go (told go, and not since reported stopped or exited);
/// - a commit comes only after the successor reported ready and the old one is gone;
/// - a successor told go ahead of its records (`signalGoAhead`), batond killed before the
///   commit recorded them: the restart tells it nothing (no wait, stop, TERM or KILL),
///   and the handoff goes on to give it go;
/// - no action addresses an instance that exited;
/// - crash loops (2 abnormal exits within a minute, v2 and v3 irreversible): never a second
///   rewind without an operator's desired version between, never a rewind of an
///   irreversible release, and no start of a release supervision gave up on.
@Suite("supervision random walk")
struct SupervisionWalkTests {
    typealias E = Machine.Event
    typealias A = Machine.Action

    struct Process {
        var version: String
        var registered: Bool
        var alive = true
        var ready = false
        var stopped = false
        var signal: AgentSignal = .wait
        var heldGo = false
        /// batond sent TERM or KILL: it exits soon.
        var dying = false
    }

    /// What runs, and what the ledger holds, whatever becomes of batond.
    struct World {
        var rng: SeededGenerator
        let seed: UInt64
        let clock = ManualClock()
        var machine: Machine
        var processes: [String: Process] = [:]
        var holders: Set<String> = []
        var armed: [Machine.TimerKey: Duration] = [:]
        var awaitedSpawn: Machine.Spawn?
        var spawns = 0
        var registrations = 0
        var steps = 0
        var restarts = 0
        var commits = 0
        var rewinds = 0
        var givenUp = 0
        /// Restarts after a go ahead of its record, before the commit.
        var resumedAfterGoAhead = 0
        // The ledger's view.
        var current: String? = "v1"
        var previous: String?
        var verdict: Machine.Verdict?
        var began: Machine.Note?
        var phase: Handoff.Phase?
        var roles: [Handoff.Role: String] = [:]
        /// Processes that died while batond was down: the ledger still says live.
        var diedWhileDown: Set<String> = []
        /// A successor told go ahead of its record, and the old one's stop report that came
        /// with it: neither is in the ledger until the commit after them is (or, through
        /// restarts, until a later record about them).
        var unrecordedGo: String?
        var unrecordedStop: String?
        /// The successor that heard go before batond died unrecorded: the restarted batond
        /// does not know it holds go until the handoff gives it go again.
        var undecided: String?
        /// The actions of the last event fed, and the successor one of them told go ahead.
        var lastActions: [A] = []
        var aheadInStep: String?

        /// Set BATON_WALK_TRACE to a world's seed to see its every step.
        var trace: Bool

        let settings: Machine.Settings

        init(seed: UInt64, external: Bool = false) {
            trace = ProcessInfo.processInfo.environment["BATON_WALK_TRACE"] == String(seed)
            self.seed = seed
            rng = SeededGenerator(state: seed)
            settings = Machine.Settings(timeouts: Fixture.timeouts, crashLoopExits: 2, crashLoopWindow: .seconds(60),
                                        startsReleases: !external)
            machine = Machine(settings: settings, clock: clock)
        }

        static let irreversible: Set<String> = ["v2", "v3"]

        /// The releases batond stores: every v*, and every other registered one.
        static func isStored(_ version: String) -> Bool {
            version.hasPrefix("v") || Int(version.dropFirst()).map { $0 % 2 == 0 } == true
        }

        var alive: [String] { processes.keys.filter { processes[$0]!.alive }.sorted() }

        mutating func pick<T>(_ items: [T]) -> T? {
            items.isEmpty ? nil : items[Int.random(in: 0..<items.count, using: &rng)]
        }

        mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &rng) < p }

        // MARK: Steps

        /// `cutAfterGoAhead`: batond dies right after every go ahead, before its commit.
        mutating func step(cutAfterGoAhead: Bool = false) {
            steps += 1
            if let spawn = awaitedSpawn {
                awaitedSpawn = nil
                if chance(0.9) {
                    spawns += 1
                    let id = "i.\(spawns)"
                    processes[id] = Process(version: spawn.version, registered: false)
                    return feed(.spawned(id, spawn))
                }
                return feed(.spawnFailed(spawn, reason: "exec failed"))
            }
            if chance(0.01) { return crash() }
            if chance(0.004) { return shutdown(stopAgents: chance(0.5)) }
            let event = randomEvent()
            if cutAfterGoAhead {
                var probe = machine
                if let go = probe.handle(event).firstIndex(where: { if case .signalGoAhead = $0 { true } else { false } }) {
                    return crash(event, cut: go + 1)
                }
            }
            feed(event)
            if machine.isFinished { restart() }
        }

        mutating func randomEvent() -> E {
            let alive = alive
            switch Int.random(in: 0..<100, using: &rng) {
            case 0..<14:
                let waiting = alive.filter { !processes[$0]!.ready }
                if let id = pick(waiting.isEmpty ? alive : waiting) { return .ready(id) }
            case 14..<17:
                if let id = pick(alive) { return .failed(id, reason: "self-check") }
            case 17..<30:
                let asked = alive.filter { processes[$0]!.signal == .stop && !processes[$0]!.stopped }
                if let id = pick(asked.isEmpty || chance(0.2) ? alive : asked) { return .stopped(id) }
            case 30..<45:
                let dying = alive.filter { processes[$0]!.dying || processes[$0]!.stopped }
                if let id = pick(dying.isEmpty || chance(0.3) ? alive : dying) { return .exited(id, description: "exit 1") }
            case 45..<75:
                if let key = pick(armed.keys.sorted { "\($0)" < "\($1)" }) {
                    clock.advance(by: armed[key]!)
                    return .timerFired(key)
                }
            case 75..<77:
                // A barrier upgrade halts the agent; a desired version ends it.
                return .halt
            case 77..<83:
                let version = pick(["v1", "v2", "v3"])!
                return .desired(version: version, mode: chance(0.5) ? .parallel : .sequential,
                                irreversible: Self.irreversible.contains(version))
            case 83..<90:
                registrations += 1
                let id = "r.\(registrations)"
                processes[id] = Process(version: "r\(registrations)", registered: true)
                return .registered(id, version: "r\(registrations)", stored: registrations % 2 == 0)
            case 90..<95:
                // Stale: about an instance long gone, or a timer no longer armed.
                let dead = processes.keys.filter { !processes[$0]!.alive }.sorted()
                if let id = pick(dead) { return pick([.ready(id), .stopped(id), .exited(id, description: "again")])! }
                return .timerFired(.escalate("nobody"))
            default:
                clock.advance(by: .seconds(Int64.random(in: 1...90, using: &rng)))
            }
            return .timerFired(.restart)
        }

        mutating func feed(_ event: E, keep: Int? = nil) {
            // A report or exit batond hears is recorded (the walk's ledger), unless a go
            // ahead of it is cut from its commit below.
            switch event {
            case .stopped(let id), .exited(let id, _): if unrecordedStop == id { unrecordedStop = nil }
            default: break
            }
            // What a process says changes the world whether or not batond hears it.
            switch event {
            case .ready(let id) where processes[id]?.alive == true:
                processes[id]!.ready = true
            case .stopped(let id) where processes[id]?.alive == true:
                processes[id]!.stopped = true
                holders.remove(id)
            case .exited(let id, _) where processes[id]?.alive == true:
                processes[id]!.alive = false
                holders.remove(id)
            default: break
            }
            if case .timerFired(let key) = event { armed[key] = nil }
            let before = machine.state
            let actions = machine.handle(event)
            // An operator's desired version, once accepted (recorded), clears the verdict.
            if case .desired = event, !actions.contains(where: { if case .refuse = $0 { true } else { false } }) {
                verdict = nil
            }
            if trace { print("[\(steps)] \(event)\n    → \(actions)\n    state \(name(machine.state)), holders \(holders)") }
            // Halted for a barrier, nothing starts and nobody gets go.
            if machine.state == .halted {
                #expect(!actions.contains { if case .spawn = $0 { true } else if case .signal(_, .go) = $0 { true } else { false } },
                        "halted, yet a start or a go: seed \(seed), step \(steps), \(event) → \(actions)")
            }
            lastActions = actions
            aheadInStep = nil
            let performed = keep.map { Array(actions.prefix($0)) } ?? actions
            for (index, action) in performed.enumerated() {
                apply(action, next: performed.dropFirst(index + 1).first, cut: performed.count < actions.count, event: event)
            }
            // The roles the ledger knows: those of the steps done (a handoff's old one and
            // registered successor are recorded as it begins).
            var known = machine.state
            if performed.count < actions.count {
                let begun = performed.contains { if case .record(.handoffBegan) = $0 { true } else { false } }
                if !begun { known = before }
            }
            if case .handingOff(let run) = known { roles.merge(run.roles) { $1 } }
            check(after: event)
        }

        mutating func apply(_ action: A, next: A?, cut: Bool, event: E) {
            let where_ = "seed \(seed), step \(steps), \(event) → \(action)"
            if let id = addressed(action) {
                #expect(processes[id]?.alive == true, "an action addresses an instance that exited: \(where_)")
            }
            switch action {
            case .signal(let id, let signal):
                processes[id]?.signal = signal
                if unrecordedGo == id { unrecordedGo = nil }
                if signal == .go {
                    processes[id]?.heldGo = true
                    #expect(holders.subtracting([id]).isEmpty, "two in go (\(holders) and \(id)): \(where_)")
                    holders.insert(id)
                    if undecided == id { undecided = nil }
                }
            case .signalGoAhead(let id):
                #expect(phase == .stoppingOld, "go ahead without stopping_old recorded: \(where_)")
                processes[id]?.signal = .go
                processes[id]?.heldGo = true
                #expect(holders.subtracting([id]).isEmpty, "two in go (\(holders) and \(id)): \(where_)")
                holders.insert(id)
                if undecided == id { undecided = nil }
                unrecordedGo = id
                aheadInStep = id
                if case .stopped(let old) = event { unrecordedStop = old }
            case .terminate(let id), .kill(let id):
                processes[id]?.dying = true
            case .spawn(let spawn):
                #expect(settings.startsReleases, "a release of an external agent started: \(where_)")
                #expect(awaitedSpawn == nil, "two spawns at once: \(where_)")
                if case .failed(let version, _)? = verdict {
                    #expect(spawn != Machine.Spawn(version: version, purpose: .start), "a start of \(version), given up: \(where_)")
                }
                awaitedSpawn = spawn
            case .startTimer(let key, let duration):
                armed[key] = duration
            case .cancelTimer(let key):
                armed[key] = nil
            case .commit(let version):
                commits += 1
                // The shell records the handoff's from as previous; a registered successor
                // of a release batond does not store leaves current as it was.
                if Self.isStored(version) {
                    if case .handoffBegan(let from, _, _)? = began { previous = from }
                    current = version
                }
                phase = .committed
                // Go went ahead of it, or follows, or waits for one told stop before
                // batond's restart to be gone. Its record holds what went ahead.
                let following: String? = if let ahead = aheadInStep { ahead } else if case .signal(let id, .go)? = next { id }
                    else { machine.awaitingGo }
                unrecordedGo = nil
                unrecordedStop = nil
                if next == nil && cut { return } // batond died right after the commit
                guard let successor = following else {
                    Issue.record("commit, and nobody gets go: \(where_)")
                    return
                }
                #expect(processes[successor]?.ready == true, "commit before ready: \(where_)")
                #expect(processes[successor]?.version == version, "commit of another version: \(where_)")
                #expect(holders.subtracting([successor]).isEmpty, "commit before the old one was gone (\(holders)): \(where_)")
            case .release(let id):
                // Another supervisor's from now on: batond no longer answers for it.
                processes[id]?.alive = false
                holders.remove(id)
            case .record(.handoffBegan(let from, let to, let mode)):
                began = .handoffBegan(from: from, to: to, mode: mode)
                phase = nil
                roles = [:]
                // The ledger knows the old one from the moment the handoff began.
                if let old = holders.first { roles[.old] = old }
            case .record(.handoffPhase(let recorded)):
                phase = recorded
            case .record(.handoffEnded):
                began = nil
                phase = nil
                roles = [:]
            case .record(.rewound(let from, let to, _, _, _)):
                rewinds += 1
                #expect(!Self.irreversible.contains(from), "rewound an irreversible release: \(where_)")
                if case .rewound? = verdict { Issue.record("rewound twice without an operator's desired version: \(where_)") }
                #expect(from == current && to == previous, "rewound from \(from) to \(to), not \(current ?? "-") to \(previous ?? "-"): \(where_)")
                verdict = .rewound(from: from, to: to)
            case .record(.failed(let version, let reason)):
                givenUp += 1
                #expect(Self.irreversible.contains(version), "gave up on a release that is not irreversible: \(where_)")
                verdict = .failed(version: version, reason: reason)
            case .recordError, .refuse:
                break
            }
        }

        func addressed(_ action: A) -> String? {
            switch action {
            case .signal(let id, _), .signalGoAhead(let id), .terminate(let id), .kill(let id), .release(let id): id
            case .startTimer(.ready(let id), _), .startTimer(.escalate(let id), _): id
            case .record, .recordError, .spawn, .startTimer, .cancelTimer, .commit, .refuse: nil
            }
        }

        mutating func check(after event: E) {
            let where_ = "seed \(seed), step \(steps), after \(event)"
            #expect(holders.count <= 1, "two in go: \(holders): \(where_)")
            // The machine never forgets one that holds go, but for a successor whose go
            // batond's death left unrecorded, until the handoff gives it go again.
            if let id = undecided, !holders.contains(id) { undecided = nil }
            for id in holders where id != undecided {
                #expect(machine.instances[id]?.holdsGo == true, "\(id) holds go unbeknown: \(where_)")
            }
            if let waiting = machine.awaitingGo {
                let holder = machine.holder.flatMap { machine.instances[$0] }
                #expect(holder?.leaving != nil, "\(waiting) waits for go behind one that is not leaving: \(where_)")
            }
        }

        // MARK: batond's death and restart

        /// kill -9 in the middle of a step: records and effects up to a cut are done, the
        /// rest never happens; some processes die while batond is down. `event` and `cut`:
        /// that step, cut there (else a random one).
        mutating func crash(_ chosen: E? = nil, cut chosenCut: Int? = nil) {
            let event = chosen ?? randomEvent()
            var probe = machine
            let actions = probe.handle(event)
            // Cut anywhere but between a handoff's beginning and its first phase, and
            // before a spawn (its process would be unknown to the ledger).
            var cuts = [0]
            for index in actions.indices {
                if case .spawn = actions[index] { break }
                if case .record(.handoffBegan) = actions[index] { continue }
                cuts.append(index + 1)
            }
            feed(event, keep: chosenCut ?? pick(cuts)!)
            awaitedSpawn = nil
            for id in alive where chance(0.1) {
                processes[id]!.alive = false
                holders.remove(id)
                diedWhileDown.insert(id)
            }
            restart()
        }

        mutating func shutdown(stopAgents: Bool) {
            feed(.shutdown(stopAgents: stopAgents))
            if machine.isFinished { restart() }
        }

        /// batond starts again over the same ledger and whatever still runs.
        mutating func restart() {
            restarts += 1
            armed = [:]
            awaitedSpawn = nil
            let known = Set(machine.instances.keys).union(diedWhileDown)
            let adopted = known.sorted().compactMap { id -> Machine.AdoptedInstance? in
                guard let process = processes[id] else { return nil }
                let role = roles.first { $0.value == id }?.key
                // The ledger's view: what went ahead of the commit is not in it.
                let unrecorded = id == unrecordedGo
                return .init(id: id, version: process.version, registered: process.registered,
                             signal: unrecorded ? .wait : process.signal, heldGo: unrecorded ? false : process.heldGo,
                             ready: process.ready, stopped: id == unrecordedStop ? false : process.stopped,
                             role: began == nil ? nil : role, alive: process.alive, stored: Self.isStored(process.version))
            }
            // Still working on that go (not stopped since, alive): the restart tells it
            // nothing (the shell keeps its polls from hearing wait), and it gets go once the
            // old one is gone.
            let heardGo = unrecordedGo.flatMap { holders.contains($0) ? $0 : nil }
            if let id = heardGo { undecided = id }
            var interrupted: Machine.InterruptedHandoff?
            if case .handoffBegan(let from, let to, let mode)? = began, let phase {
                interrupted = .init(mode: mode, from: from, to: to, phase: phase)
            }
            diedWhileDown = []
            machine = Machine(settings: settings, clock: clock)
            // The ledger keeps the handoff in flight (began, phase) until it records its end.
            roles = [:]
            let stored = previous.flatMap { Self.isStored($0) ? $0 : nil }
            feed(.boot(current: current, instances: adopted, handoff: interrupted,
                       releases: releases(previous: stored, versions: [current, stored, interrupted?.to] + adopted.map(\.version))))
            if let id = heardGo {
                let where_ = "seed \(seed), step \(steps), restart after \(id) heard go unrecorded"
                let untilGo = lastActions.prefix { $0 != .signal(id, .go) && $0 != .signalGoAhead(id) }
                #expect(!untilGo.contains { if case .signal(id, _) = $0 { true } else { false } }, "\(where_): \(lastActions)")
                #expect(!untilGo.contains(.terminate(id)) && !untilGo.contains(.kill(id)), "\(where_): \(lastActions)")
                if untilGo.count == lastActions.count { #expect(machine.instances[id]?.leaving == nil, "\(where_)") }
                resumedAfterGoAhead += 1
            }
        }

        /// What the shell tells the machine at boot: the previous release, which of the
        /// releases it may make current are irreversible, and the ledger's verdict.
        func releases(previous: String?, versions: [String?]) -> Machine.Releases {
            Machine.Releases(previous: previous, irreversible: Self.irreversible.intersection(versions.compactMap { $0 }), verdict: verdict)
        }
    }

    static let seeds: [UInt64] = [1, 2, 3, 0xBA70, 20_261_130]

    @Test(arguments: seeds)
    func walk(seed: UInt64) {
        var world = World(seed: seed)
        world.feed(.boot(current: "v1", instances: [], handoff: nil))
        for _ in 0..<4_000 { world.step() }
        #expect(world.steps >= 4_000)
        // The walk went everywhere that matters.
        #expect(world.commits > 0, "seed \(seed): no commit")
        #expect(world.restarts > 0, "seed \(seed): batond never restarted")
        #expect(world.rewinds > 0, "seed \(seed): no rewind")
        #expect(world.givenUp > 0, "seed \(seed): never gave up on an irreversible release")
    }

    /// batond killed between a go ahead and its commit, over and over: every restart
    /// finds the successor told go unrecorded, and the checks above hold.
    @Test(arguments: seeds)
    func walkThroughKillsBetweenGoAndCommit(seed: UInt64) {
        var world = World(seed: seed)
        world.feed(.boot(current: "v1", instances: [], handoff: nil))
        for _ in 0..<4_000 { world.step(cutAfterGoAhead: true) }
        #expect(world.resumedAfterGoAhead > 0, "seed \(seed): batond was never killed between go and commit")
    }

    /// An external agent: the same walk (desired versions refused, registered instances
    /// handing over), and batond never starts one of its releases, whatever happens.
    @Test(arguments: seeds)
    func walkOfAnExternalAgent(seed: UInt64) {
        var world = World(seed: seed, external: true)
        world.feed(.boot(current: "v1", instances: [], handoff: nil))
        for _ in 0..<4_000 { world.step() }
        #expect(world.commits > 0, "seed \(seed): no registered instance took over")
        #expect(world.restarts > 0, "seed \(seed): batond never restarted")
        #expect(world.spawns == 0 && world.rewinds == 0)
    }

    /// Random ledgers at boot: any phase, any mix of live and dead instances, signals
    /// consistent with one holder of go at most; then a random walk from there. Also for
    /// an external agent (its ledger written before it became external).
    @Test(arguments: seeds, [false, true])
    func adoptionOfRandomLedgers(seed: UInt64, external: Bool) {
        for round in 0..<200 {
            let worldSeed = seed &* 1_000 &+ UInt64(round)
            var rng = SeededGenerator(state: worldSeed ^ 0xAD0B7)
            var world = World(seed: worldSeed, external: external)
            let phases: [Handoff.Phase?] = [nil, .stoppingFirst, .spawning, .waitingReady, .stoppingOld, .abortingSuccessor,
                                            .revertingSpawn, .revertingReady, .committed, .failed]
            let phase = phases[Int.random(in: 0..<phases.count, using: &rng)]
            let mode: Handoff.Mode = Bool.random(using: &rng) ? .parallel : .sequential
            var adopted: [Machine.AdoptedInstance] = []
            func add(_ id: String, _ version: String, role: Handoff.Role?, signal: AgentSignal, registered: Bool = false) {
                let alive = Int.random(in: 0..<4, using: &rng) > 0
                let ready = Bool.random(using: &rng)
                let stopped = signal == .stop && Bool.random(using: &rng)
                let heldGo = signal == .go || (signal == .stop && role == .old)
                adopted.append(.init(id: id, version: version, registered: registered, signal: signal, heldGo: heldGo, ready: ready,
                                     stopped: stopped, role: phase == nil ? nil : role, alive: alive))
                world.processes[id] = Process(version: version, registered: registered, alive: alive, ready: ready,
                                              stopped: stopped, signal: signal, heldGo: heldGo)
                if alive && !stopped && heldGo { world.holders.insert(id) }
            }
            add("o", "v1", role: .old, signal: [.go, .stop, .wait][Int.random(in: 0..<3, using: &rng)])
            if Bool.random(using: &rng) { add("s", "v2", role: .successor, signal: .wait) }
            if Bool.random(using: &rng) { add("p", "v1", role: .previous, signal: .wait) }
            if Bool.random(using: &rng) { add("x", "v1", role: nil, signal: Bool.random(using: &rng) ? .wait : .stop) }
            if Bool.random(using: &rng) { add("r", "r0", role: nil, signal: .wait, registered: true) }
            let interrupted = phase.map { Machine.InterruptedHandoff(mode: mode, from: "v1", to: "v2", phase: $0) }
            if let phase {
                world.began = .handoffBegan(from: "v1", to: "v2", mode: mode)
                world.phase = phase
            }
            world.feed(.boot(current: "v1", instances: adopted, handoff: interrupted,
                             releases: world.releases(previous: nil, versions: ["v1", interrupted?.to] + adopted.map(\.version))))
            for _ in 0..<60 { world.step() }
        }
    }
}
