import BatonCore
import Testing

/// Crash loops, with time moved by hand: what counts as an abnormal exit, the rewind to
/// the previous release (once), and giving up on an irreversible release.
@Suite("supervision crash loops")
struct CrashLoopTests {
    typealias E = Machine.Event
    typealias A = Machine.Action
    static let t = Fixture.timeouts
    static let settings = Machine.Settings(timeouts: t, crashLoopExits: 3, crashLoopWindow: .seconds(60))
    static let start2 = Machine.Spawn(version: "v2", purpose: .start)
    static let rewindTo1 = Machine.Spawn(version: "v1", purpose: .handoff(.successor))
    static let loop = "v2 crash-looped: 3 abnormal exits within 1m"

    /// v2 is current (committed over v1, which batond stores), its instance a.1 working.
    struct World {
        let clock = ManualClock()
        var machine: Machine
        var generation = 1

        init(settings: Machine.Settings = CrashLoopTests.settings, releases: Machine.Releases = .init(previous: "v1")) {
            machine = Machine(settings: settings, clock: clock)
            _ = machine.handle(.boot(current: "v2", instances: [], handoff: nil, releases: releases))
            _ = machine.handle(.spawned("a.1", CrashLoopTests.start2))
            _ = machine.handle(.ready("a.1"))
        }

        var working: String { "a.\(generation)" }

        /// The working instance exits after `work`; supervision restarts it after the
        /// backoff, and the new one works. The actions of the exit.
        mutating func crash(after work: Duration = .seconds(1), description: String = "exit 1") -> [A] {
            clock.advance(by: work)
            let actions = machine.handle(.exited(working, description: description))
            guard case .backingOff(let until) = machine.state else { return actions }
            clock.advance(by: clock.now.duration(to: until))
            _ = machine.handle(.timerFired(.restart))
            generation += 1
            _ = machine.handle(.spawned(working, CrashLoopTests.start2))
            _ = machine.handle(.ready(working))
            return actions
        }
    }

    @Test func threeExitsWithinTheWindowRewindToThePreviousRelease() {
        var world = World()
        #expect(world.crash().last == .startTimer(.restart, .seconds(1)))
        #expect(world.crash().last == .startTimer(.restart, .seconds(2)))
        let third = world.crash()
        #expect(third == [.recordError("exited unexpectedly (exit 1)", instance: "a.3"),
                          .record(.rewound(from: "v2", to: "v1", reason: "\(Self.loop); rewound to v1", exits: 3, window: .seconds(60))),
                          .record(.handoffBegan(from: "v2", to: "v1", mode: .parallel)), .record(.handoffPhase(.spawning)),
                          .spawn(Self.rewindTo1)])
        #expect(world.machine.verdict == .rewound(from: "v2", to: "v1"))
        // A normal handoff from nothing: v1 commits once ready, and v2 becomes the previous.
        _ = world.machine.handle(.spawned("b.1", Self.rewindTo1))
        let commit = world.machine.handle(.ready("b.1"))
        #expect(commit.contains(.commit(version: "v1")) && commit.contains(.signal("b.1", .go)))
        #expect(world.machine.current == "v1" && world.machine.previous == "v2")
        #expect(name(world.machine.state) == "working(b.1)")
    }

    @Test func exitsSpreadWiderThanTheWindowAreNoLoop() {
        var world = World()
        for _ in 0..<6 {
            let actions = world.crash(after: .seconds(31))
            #expect(actions.last.map { if case .startTimer(.restart, _) = $0 { true } else { false } } == true, "\(actions)")
        }
        #expect(world.machine.verdict == nil)
    }

    /// Exits before ready on restarts count, whatever ended them: the process itself, its
    /// failed self-check, or ready_timeout.
    @Test func failedStartsCount() {
        var world = World()
        _ = world.crash() // a.1 exits while working; a.2 starts and works
        _ = world.machine.handle(.exited("a.2", description: "exit 1"))
        world.clock.advance(by: .seconds(2))
        _ = world.machine.handle(.timerFired(.restart))
        _ = world.machine.handle(.spawned("a.3", Self.start2))
        _ = world.machine.handle(.failed("a.3", reason: "db down"))
        let third = world.machine.handle(.exited("a.3", description: "signal 15"))
        #expect(third.contains(.record(.rewound(from: "v2", to: "v1", reason: "\(Self.loop); rewound to v1", exits: 3, window: .seconds(60)))))
        #expect(name(world.machine.state) == "handingOff(spawning)")
    }

    /// Only the release's own exits count, and only since its commit: the old instance told
    /// stop by a handoff is no crash, and the new release starts from none.
    @Test func aCommitStartsTheCountAgainAndAnInstanceToldStopIsNoCrash() {
        var world = World()
        _ = world.crash()
        _ = world.crash()
        _ = world.machine.handle(.desired(version: "v3", mode: .parallel))
        let successor = Machine.Spawn(version: "v3", purpose: .handoff(.successor))
        _ = world.machine.handle(.spawned("c.1", successor))
        _ = world.machine.handle(.ready("c.1"))
        _ = world.machine.handle(.stopped(world.working))
        #expect(world.machine.current == "v3" && world.machine.abnormalExits.isEmpty)
        #expect(world.machine.handle(.exited(world.working, description: "exit 0")) == [.cancelTimer(.escalate(world.working))])
        // Two exits of v3 are not three.
        let start3 = Machine.Spawn(version: "v3", purpose: .start)
        for generation in 1...2 {
            world.clock.advance(by: .seconds(1))
            let actions = world.machine.handle(.exited("c.\(generation)", description: "exit 1"))
            #expect(actions.last.map { if case .startTimer(.restart, _) = $0 { true } else { false } } == true, "\(actions)")
            world.clock.advance(by: .seconds(2))
            _ = world.machine.handle(.timerFired(.restart))
            _ = world.machine.handle(.spawned("c.\(generation + 1)", start3))
            _ = world.machine.handle(.ready("c.\(generation + 1)"))
        }
        #expect(world.machine.verdict == nil)
    }

    /// Once rewound, a crash loop of the release it went back to backs off and says so:
    /// no ping-pong until an operator's desired version.
    @Test func itRewindsOnceUntilAnOperatorActs() {
        var world = World()
        for _ in 0..<3 { _ = world.crash() }
        _ = world.machine.handle(.spawned("b.1", Self.rewindTo1))
        _ = world.machine.handle(.ready("b.1"))
        var actions: [A] = []
        for (index, id) in ["b.1", "b.2", "b.3"].enumerated() {
            world.clock.advance(by: .seconds(1))
            actions = world.machine.handle(.exited(id, description: "exit 1"))
            guard index < 2 else { break }
            world.clock.advance(by: .seconds(4))
            _ = world.machine.handle(.timerFired(.restart))
            let start = Machine.Spawn(version: "v1", purpose: .start)
            _ = world.machine.handle(.spawned("b.\(index + 2)", start))
            _ = world.machine.handle(.ready("b.\(index + 2)"))
        }
        #expect(actions.contains(.recordError("v1 crash-looped: 3 abnormal exits within 1m; batond rewound from v2 to v1 already and does "
                                              + "not rewind again: restarting it with backoff until a desired version or a rollback",
                                              instance: nil)), "\(actions)")
        #expect(name(world.machine.state) == "backingOff")
        // An operator's desired version clears it: the next loop rewinds again.
        _ = world.machine.handle(.desired(version: "v3", mode: .parallel))
        #expect(world.machine.verdict == nil)
    }

    @Test func withoutAStoredPreviousReleaseItBacksOffAndSaysSo() {
        var world = World(releases: .init(previous: nil))
        _ = world.crash()
        _ = world.crash()
        let third = world.crash()
        #expect(third.contains(.recordError("\(Self.loop); batond stores no previous release to rewind to: restarting it with backoff",
                                            instance: nil)))
        #expect(third.last == .startTimer(.restart, .seconds(4)))
    }

    @Test func zeroExitsDisablesIt() {
        var settings = Self.settings
        settings.crashLoopExits = 0
        var world = World(settings: settings)
        for _ in 0..<10 { _ = world.crash() }
        #expect(world.machine.verdict == nil)
        #expect(name(world.machine.state) == "working(a.11)")
    }

    /// An irreversible release is never rewound: supervision gives up, records why, and
    /// starts it no more; an operator's desired version gets it going again.
    @Test func anIrreversibleReleaseFailsInsteadOfRewinding() {
        var world = World(releases: .init(previous: "v1", irreversible: ["v2"]))
        _ = world.crash()
        _ = world.crash()
        let third = world.crash()
        let reason = "\(Self.loop); it is irreversible, so batond does not rewind it and stops restarting it: "
            + "set a desired version, or roll back with force"
        #expect(third == [.recordError("exited unexpectedly (exit 1)", instance: "a.3"), .record(.failed(version: "v2", reason: reason))])
        #expect(world.machine.state == .failed(reason: reason))
        #expect(world.machine.armed.isEmpty, "nothing restarts it")
        let rollback = world.machine.handle(.desired(version: "v1", mode: .parallel))
        #expect(rollback.last == .spawn(Self.rewindTo1))
        #expect(world.machine.verdict == nil)
    }

    /// Irreversibility comes with the desired version that commits the release.
    @Test func irreversibilityComesWithTheDesiredVersion() {
        var world = World()
        _ = world.machine.handle(.desired(version: "v3", mode: .parallel, irreversible: true))
        let successor = Machine.Spawn(version: "v3", purpose: .handoff(.successor))
        _ = world.machine.handle(.spawned("c.1", successor))
        _ = world.machine.handle(.ready("c.1"))
        #expect(world.machine.handle(.stopped("a.1")).contains(.commit(version: "v3")))
        #expect(world.machine.previous == "v2")
        let start3 = Machine.Spawn(version: "v3", purpose: .start)
        var actions: [A] = []
        for generation in 1...3 {
            world.clock.advance(by: .seconds(1))
            actions = world.machine.handle(.exited("c.\(generation)", description: "exit 70"))
            guard generation < 3 else { break }
            world.clock.advance(by: .seconds(10))
            _ = world.machine.handle(.timerFired(.restart))
            _ = world.machine.handle(.spawned("c.\(generation + 1)", start3))
            _ = world.machine.handle(.ready("c.\(generation + 1)"))
        }
        #expect(actions.contains { if case .record(.failed(version: "v3", _)) = $0 { true } else { false } }, "\(actions)")
        #expect(name(world.machine.state) == "failed")
    }

    /// A registered instance may work while batond gave up; once it is gone, nothing starts.
    @Test func whenARegisteredInstanceLeavesAFailedAgentItIsFailedAgain() {
        var machine = Fixture.failed.machine()
        _ = machine.handle(.registered("r.1", version: "r", stored: false))
        #expect(machine.handle(.ready("r.1")) == [.signal("r.1", .go)])
        #expect(machine.handle(.exited("r.1", description: "exit 1")) == [.recordError("exited unexpectedly (exit 1)", instance: "r.1")])
        #expect(name(machine.state) == "failed")
    }

    // MARK: - Adoption: a batond started again keeps what the ledger shows

    @Test func aRestartedBatondKeepsAFailedAgentFailed() {
        var machine = Machine(settings: Self.settings, clock: ManualClock())
        // A start it had left (not ready) goes; nothing else starts.
        let left = Machine.AdoptedInstance(id: "a.7", version: "v1", signal: .wait, ready: false)
        let actions = machine.handle(.boot(current: "v1", instances: [left], handoff: nil,
                                           releases: .init(irreversible: ["v1"], verdict: .failed(version: "v1", reason: "gave up"))))
        #expect(actions == [.terminate("a.7"), .startTimer(.escalate("a.7"), Self.t.kill)])
        #expect(machine.state == .failed(reason: "gave up"))
    }

    @Test func aRestartedBatondDoesNotRewindTwice() {
        var machine = Machine(settings: Self.settings, clock: ManualClock())
        _ = machine.handle(.boot(current: "v1", instances: [], handoff: nil,
                                 releases: .init(previous: "v2", verdict: .rewound(from: "v2", to: "v1"))))
        var actions: [A] = []
        for generation in 1...3 {
            _ = machine.handle(.spawned("b.\(generation)", Fixture.start1))
            actions = machine.handle(.exited("b.\(generation)", description: "exit 2"))
            _ = machine.handle(.timerFired(.restart))
        }
        #expect(!actions.contains { if case .record(.rewound) = $0 { true } else { false } }, "\(actions)")
        #expect(actions.contains { if case .recordError(let reason, nil) = $0 { reason.contains("does not rewind again") } else { false } })
    }
}
