@testable import BatonCore
import BatonTestSupport
import Testing

@Suite("machine rollout")
struct MachineRolloutTests {
    typealias R = MachineRollout

    static func agents(_ names: [String], from: String? = "1.0") -> [R.Agent] {
        names.map { R.Agent(name: $0, from: from) }
    }

    static func handOvers(_ actions: [R.Action]) -> [String] {
        actions.compactMap { if case .handOver(let name, let version) = $0 { "\(name)->\(version)" } else { nil } }
    }

    // MARK: - Without the barrier

    @Test func oneAgentAtATimeInNameOrder() {
        var rollout = R(version: "2.0", barrier: false, migration: nil, agents: Self.agents(["b", "a", "c"]))
        #expect(Self.handOvers(rollout.handle(.begin)) == ["a->2.0"])
        #expect(Self.handOvers(rollout.handle(.handedOver("a", committed: true, error: nil))) == ["b->2.0"])
        #expect(Self.handOvers(rollout.handle(.handedOver("b", committed: true, error: nil))) == ["c->2.0"])
        let last = rollout.handle(.handedOver("c", committed: true, error: nil))
        #expect(last == [.record(.agent("c", .done, error: nil)), .record(.ended(.done, error: nil))])
        #expect(rollout.phase == .done && rollout.agents.allSatisfy { $0.status == .done })
    }

    @Test func theFirstFailureStopsTheRestWhereTheyAre() {
        var rollout = R(version: "2.0", barrier: false, migration: nil, agents: Self.agents(["a", "b", "c"]))
        _ = rollout.handle(.begin)
        let actions = rollout.handle(.handedOver("a", committed: false, error: "not ready within 10s"))
        #expect(Self.handOvers(actions).isEmpty)
        #expect(rollout.phase == .failed)
        #expect(rollout.error == "a: not ready within 10s; not begun, still on their versions: b, c")
        #expect(rollout.agents.map(\.status) == [.failed, .waiting, .waiting])
    }

    @Test func agentsAlreadyOnTheVersionAreNotHandedOver() {
        var rollout = R(version: "2.0", barrier: false, migration: nil,
                        agents: [R.Agent(name: "a", from: "2.0"), R.Agent(name: "b", from: "1.0")])
        #expect(Self.handOvers(rollout.handle(.begin)) == ["b->2.0"])
        var all = R(version: "2.0", barrier: false, migration: nil, agents: [R.Agent(name: "a", from: "2.0")])
        _ = all.handle(.begin)
        #expect(all.phase == .done)
    }

    // MARK: - With the barrier

    @Test func theBarrierHaltsAllMigratesOnceThenStartsAll() {
        var rollout = R(version: "2.0", barrier: true, migration: ["migrate"], agents: Self.agents(["a", "b"]))
        let begin = rollout.handle(.begin)
        #expect(begin.filter { if case .halt = $0 { true } else { false } } == [.halt("a"), .halt("b")])
        #expect(Self.handOvers(begin).isEmpty)
        #expect(!rollout.handle(.halted("a")).contains(.runMigration(["migrate"])), "b still runs")
        let halted = rollout.handle(.halted("b"))
        #expect(halted.last == .runMigration(["migrate"]))
        #expect(rollout.phase == .migrating)
        let migrated = rollout.handle(.migrated(ok: true, detail: "exited 0"))
        #expect(Self.handOvers(migrated) == ["a->2.0", "b->2.0"])
        _ = rollout.handle(.handedOver("a", committed: true, error: nil))
        _ = rollout.handle(.handedOver("b", committed: true, error: nil))
        #expect(rollout.phase == .done)
    }

    @Test func aFailedMigrationStartsThePreviousVersions() {
        var rollout = R(version: "2.0", barrier: true, migration: ["migrate"],
                        agents: [R.Agent(name: "a", from: "1.0"), R.Agent(name: "b", from: "1.5"), R.Agent(name: "c", from: nil)])
        _ = rollout.handle(.begin)
        for name in ["a", "b", "c"] { _ = rollout.handle(.halted(name)) }
        let failed = rollout.handle(.migrated(ok: false, detail: "exited 3: no such table"))
        #expect(failed.first == .record(.migration(ok: false, detail: "exited 3: no such table")))
        #expect(Self.handOvers(failed) == ["a->1.0", "b->1.5"])
        #expect(rollout.phase == .restoring)
        _ = rollout.handle(.handedOver("a", committed: true, error: nil))
        _ = rollout.handle(.handedOver("b", committed: true, error: nil))
        #expect(rollout.phase == .restored)
        #expect(rollout.error == "the migration failed: exited 3: no such table")
        #expect(rollout.agents.map(\.status) == [.restored, .restored, .failed])
    }

    @Test func withoutAMigrationTheBarrierStartsOnceAllAreHalted() {
        var rollout = R(version: "2.0", barrier: true, migration: nil, agents: Self.agents(["a"]))
        _ = rollout.handle(.begin)
        #expect(Self.handOvers(rollout.handle(.halted("a"))) == ["a->2.0"])
        #expect(rollout.phase == .starting)
    }

    @Test func anAgentThatDoesNotStartFailsTheRollout() {
        var rollout = R(version: "2.0", barrier: true, migration: ["m"], agents: Self.agents(["a", "b"]))
        _ = rollout.handle(.begin)
        _ = rollout.handle(.halted("a"))
        _ = rollout.handle(.halted("b"))
        _ = rollout.handle(.migrated(ok: true, detail: "exited 0"))
        _ = rollout.handle(.handedOver("a", committed: false, error: "exited before it was ready"))
        #expect(rollout.phase == .starting, "b still starts")
        _ = rollout.handle(.handedOver("b", committed: true, error: nil))
        #expect(rollout.phase == .failed)
        #expect(rollout.error == "did not start at 2.0: a (exited before it was ready)")
    }

    // MARK: - Resumed after a restart

    @Test func resumedMidHaltItAsksAgainAndMidMigrationItRestores() {
        let agents = [R.Agent(name: "a", from: "1.0", status: .halted), R.Agent(name: "b", from: "1.0", status: .halting)]
        var halting = R(version: "2.0", barrier: true, migration: ["m"], agents: agents, resumingAt: .halting)
        #expect(halting.handle(.resume) == [.halt("b")])
        var migrating = R(version: "2.0", barrier: true, migration: ["m"],
                          agents: agents.map { R.Agent(name: $0.name, from: $0.from, status: .halted) }, resumingAt: .migrating)
        let actions = migrating.handle(.resume)
        #expect(migrating.phase == .restoring)
        #expect(Self.handOvers(actions) == ["a->1.0", "b->1.0"], "never run twice: the old versions start")
        #expect(actions.contains(.record(.migration(ok: false, detail: "batond stopped while the migration ran: its outcome is unknown"))))
        var rolling = R(version: "2.0", barrier: false, migration: nil,
                        agents: [R.Agent(name: "a", from: "1.0", status: .done), R.Agent(name: "b", from: "1.0")], resumingAt: .handingOver)
        #expect(Self.handOvers(rolling.handle(.resume)) == ["b->2.0"])
    }

    // MARK: - The table: every phase × event

    /// Puts a two-agent rollout in `phase` by the events that lead there.
    static func rollout(in phase: R.Phase) -> R {
        var rollout = R(version: "2.0", barrier: phase != .handingOver, migration: ["m"], agents: agents(["a", "b"]))
        if phase == .pending { return rollout }
        _ = rollout.handle(.begin)
        switch phase {
        case .pending, .handingOver, .halting: break
        case .migrating:
            _ = rollout.handle(.halted("a")); _ = rollout.handle(.halted("b"))
        case .starting, .done, .failed:
            _ = rollout.handle(.halted("a")); _ = rollout.handle(.halted("b"))
            _ = rollout.handle(.migrated(ok: true, detail: "ok"))
            if phase == .done || phase == .failed {
                _ = rollout.handle(.handedOver("a", committed: phase == .done, error: "x"))
                _ = rollout.handle(.handedOver("b", committed: true, error: nil))
            }
        case .restoring, .restored:
            _ = rollout.handle(.halted("a")); _ = rollout.handle(.halted("b"))
            _ = rollout.handle(.migrated(ok: false, detail: "exited 1"))
            if phase == .restored {
                _ = rollout.handle(.handedOver("a", committed: true, error: nil))
                _ = rollout.handle(.handedOver("b", committed: true, error: nil))
            }
        }
        return rollout
    }

    static let events: [R.Event] = [
        .begin, .handedOver("a", committed: true, error: nil), .handedOver("a", committed: false, error: "x"),
        .handedOver("ghost", committed: true, error: nil), .halted("a"), .halted("ghost"),
        .migrated(ok: true, detail: "0"), .migrated(ok: false, detail: "1"), .resume,
    ]

    @Test(arguments: R.Phase.allCases)
    func everyPhaseReachedAndEveryEventEitherStepsOrIsNothing(_ phase: R.Phase) {
        let start = Self.rollout(in: phase)
        #expect(start.phase == phase, "the setup reaches \(phase)")
        for event in Self.events {
            var rollout = start
            let actions = rollout.handle(event)
            let expectsChange: Bool = switch (phase, event) {
            case (.pending, .begin): true
            case (.handingOver, .handedOver("a", _, _)): true
            case (.halting, .halted("a")): true
            case (.migrating, .migrated): true
            case (.starting, .handedOver("a", _, _)): true
            case (.restoring, .handedOver("a", _, _)): true
            case (.halting, .resume), (.migrating, .resume): true
            default: false
            }
            if expectsChange {
                #expect(!actions.isEmpty, "\(phase) × \(event) steps")
            } else {
                #expect(actions.isEmpty && rollout == start, "\(phase) × \(event) is nothing")
            }
        }
    }

    // MARK: - Random walks

    @Test(arguments: [1, 2, 3, 42, 2026])
    func walksKeepTheInvariants(_ seed: UInt64) {
        var random = SeededGenerator(state: seed)
        for _ in 0..<500 {
            let names = (0..<Int(random.next() % 4 + 1)).map { "agent\($0)" }
            let barrier = random.next() % 2 == 0
            var rollout = R(version: "2.0", barrier: barrier, migration: random.next() % 3 == 0 ? nil : ["m"],
                            agents: names.map { R.Agent(name: $0, from: random.next() % 5 == 0 ? nil : "1.0") })
            var migrations = 0
            var handingOver = Set<String>()
            var halted = Set<String>()
            var pending: [R.Event] = [.begin]
            var steps = 0
            while !pending.isEmpty && steps < 200 {
                steps += 1
                let event = pending.remove(at: Int(random.next() % UInt64(pending.count)))
                if case R.Event.halted(let name) = event { halted.insert(name) }
                if case R.Event.handedOver(let name, _, _) = event { handingOver.remove(name) }
                for action in rollout.handle(event) {
                    switch action {
                    case .halt(let name):
                        pending.append(.halted(name))
                    case .runMigration:
                        migrations += 1
                        #expect(halted == Set(names), "the migration runs only while every agent is halted")
                        pending.append(.migrated(ok: random.next() % 2 == 0, detail: "d"))
                    case .handOver(let name, _):
                        if barrier { #expect(halted == Set(names), "nothing starts before every agent is halted") }
                        handingOver.insert(name)
                        if !barrier { #expect(handingOver.count == 1, "one at a time") }
                        pending.append(.handedOver(name, committed: random.next() % 4 != 0, error: "e"))
                    case .record:
                        break
                    }
                }
                // Stale and repeated events change nothing that matters.
                if random.next() % 7 == 0 { _ = rollout.handle(.halted("ghost")) }
            }
            #expect(migrations <= 1)
            #expect(rollout.isFinished, "every walk ends (\(rollout.phase))")
        }
    }
}
