import BatonCore
import Testing

/// An external agent (`startsReleases` false): batond starts none of its releases. Its
/// instances register themselves, and hand over by the usual handoff; boot, restarts,
/// crash loops and desired versions never make the machine emit `.spawn`.
@Suite("supervision of an external agent")
struct ExternalAgentTests {
    typealias E = Machine.Event
    typealias A = Machine.Action
    static let settings = Machine.Settings(timeouts: Fixture.timeouts, crashLoopExits: 2, crashLoopWindow: .seconds(60),
                                           startsReleases: false)

    static func spawns(_ actions: [A]) -> [A] {
        actions.filter { if case .spawn = $0 { true } else { false } }
    }

    /// Booted over a current release v1 (v0 before it, stored), with `r.1` (v1)
    /// registered, ready and working.
    static func working(clock: ManualClock = ManualClock()) -> Machine {
        var machine = Machine(settings: settings, clock: clock)
        #expect(machine.handle(.boot(current: "v1", instances: [], handoff: nil, releases: .init(previous: "v0"))) == [])
        #expect(machine.state == .idle)
        _ = machine.handle(.registered("r.1", version: "v1", stored: true))
        #expect(machine.handle(.ready("r.1")) == [.signal("r.1", .go)])
        return machine
    }

    @Test func bootStartsNothingAndWaitsForARegisteredInstance() {
        var machine = Machine(settings: Self.settings, clock: ManualClock())
        #expect(machine.handle(.boot(current: "v1", instances: [], handoff: nil, releases: .init(previous: "v0"))) == [])
        #expect(name(machine.state) == "idle")
        // The same machine for an agent batond starts would spawn v1.
        var starting = Machine(settings: Fixture.settings, clock: ManualClock())
        #expect(starting.handle(.boot(current: "v1", instances: [], handoff: nil)) == [.spawn(Fixture.start1)])
    }

    @Test(arguments: [HandoffMode.parallel, .sequential])
    func aDesiredVersionIsRefusedInEveryState(_ mode: HandoffMode) {
        var machine = Self.working()
        let mode: Handoff.Mode = mode == .parallel ? .parallel : .sequential
        #expect(machine.handle(.desired(version: "v2", mode: mode)) == [.refuse(.startsNoReleases)])
        #expect(name(machine.state) == "working(r.1)")
        var idle = Machine(settings: Self.settings, clock: ManualClock())
        _ = idle.handle(.boot(current: nil, instances: [], handoff: nil))
        #expect(idle.handle(.desired(version: "v2", mode: mode)) == [.refuse(.startsNoReleases)])
    }

    /// Its working instance exits: nothing restarts it (another supervisor's job), and no
    /// count of exits makes a crash loop that would rewind by starting a release.
    @Test func anExitRestartsNothingAndNeverRewinds() {
        let clock = ManualClock()
        var machine = Self.working(clock: clock)
        for round in 1...4 {
            let actions = machine.handle(.exited("r.\(round)", description: "exit 1"))
            #expect(Self.spawns(actions).isEmpty)
            #expect(!actions.contains { if case .record(.rewound) = $0 { true } else { false } }, "\(actions)")
            #expect(!actions.contains { if case .record(.handoffBegan) = $0 { true } else { false } }, "\(actions)")
            #expect(!actions.contains(.startTimer(.restart, Self.settings.firstBackoff)))
            #expect(name(machine.state) == "idle")
            _ = machine.handle(.registered("r.\(round + 1)", version: "v1", stored: true))
            #expect(machine.handle(.ready("r.\(round + 1)")) == [.signal("r.\(round + 1)", .go)])
            clock.advance(by: .seconds(1))
        }
    }

    /// The usual handoff between two registered instances: the new version's instance
    /// reports ready, the old one is told stop, and once it stopped the new one gets go.
    @Test func aRegisteredSuccessorTakesOverWithoutASpawn() {
        var machine = Self.working()
        var all: [A] = []
        all += machine.handle(.registered("r.2", version: "v2", stored: false))
        let ready = machine.handle(.ready("r.2"))
        all += ready
        #expect(ready.contains(.signal("r.1", .stop)))
        all += machine.handle(.stopped("r.1"))
        all += machine.handle(.exited("r.1", description: "exit 0"))
        #expect(all.contains(.commit(version: "v2")))
        #expect(all.contains(.signalGoAhead("r.2")))
        #expect(Self.spawns(all).isEmpty)
        #expect(name(machine.state) == "working(r.2)")
    }

    /// A sequential handoff of an older ledger, taken up after the agent became
    /// external: where it would start the successor (and then the previous release), it
    /// fails instead, and nothing starts.
    @Test func anInterruptedHandoffThatWouldStartAReleaseFails() {
        var machine = Machine(settings: Self.settings, clock: ManualClock())
        let old = Machine.AdoptedInstance(id: "a.1", version: "v1", signal: .stop, ready: true, stopped: true, role: .old)
        let actions = machine.handle(.boot(current: "v1", instances: [old],
                                           handoff: .init(mode: .sequential, from: "v1", to: "v2", phase: .stoppingFirst)))
        #expect(Self.spawns(actions).isEmpty, "\(actions)")
        #expect(actions.contains { if case .record(.handoffEnded(.failed, _)) = $0 { true } else { false } }, "\(actions)")
        #expect(name(machine.state) == "idle")
    }
}
