import BatonCore
import BatonTestSupport
import Testing

/// Fixtures for the coordinator's tests: a plan `fleet-2` to 2.0 of agents `api` and
/// `worker`, hosts reporting where they are in it, and states of it.
enum FleetFixture {
    typealias S = FleetRolloutState
    typealias HostPhase = FleetHostStatus.Rollout.Phase

    static let t0 = Timestamp(milliseconds: 1_800_000_000_000)
    static let release = FleetRelease(url: "https://releases.example/x.tar.gz", sha256: String(repeating: "0", count: 64))

    static func plan(id: String = "fleet-2", barrier: Bool = false, canary: Int = 0, soakMs: Int64 = 0, threshold: Int = 0,
                     exclude: [String] = [], maxUnavailable: Int = 1) -> FleetPlan {
        FleetPlan(id: id, version: "2.0", releases: ["api": release, "worker": release], barrier: barrier, canary: canary,
                  maxUnavailable: maxUnavailable, soakMs: soakMs, failureThreshold: threshold, exclude: exclude,
                  by: "uid 0", at: t0)
    }

    /// Host `name`, in the rollout `id` at `phase` (nil: in no rollout); `rewound`: its
    /// agents with a standing rewind.
    static func host(_ name: String, _ phase: HostPhase? = nil, id: String = "fleet-2", error: String? = nil,
                     canary: Bool = false, rewound: Set<String> = []) -> FleetHostStatus {
        FleetHostStatus(
            host: name, labels: canary ? ["canary": "true"] : [:], batondVersion: "1.0", machineVersion: "1.0",
            agents: ["api", "worker", "other"].map {
                .init(name: $0, running: "1.0", desired: nil, state: .running, rewound: rewound.contains($0))
            },
            rollout: phase.map { .init(id: id, version: "2.0", phase: $0, error: error) }, updatedAt: t0)
    }

    static func state(_ phase: S.Phase, id: String = "fleet-2", admitted: [String] = [], all: Bool = false,
                      soakUntil: Timestamp? = nil, failed: [String: String] = [:], reason: String? = nil) -> S {
        S(id: id, version: "2.0", phase: phase, admitted: admitted, all: all, soakUntil: soakUntil, failed: failed,
          reason: reason, coordinator: "h0", updatedAt: Timestamp(milliseconds: t0.milliseconds - 1000))
    }

    static func at(_ ms: Int64) -> Timestamp { Timestamp(milliseconds: t0.milliseconds + ms) }
}

/// The coordinator's rules, row by row: each row is an observation (the plan, the state
/// stored, the hosts and the barrier's keys) and the state the coordinator must write,
/// or nil when it must write nothing.
@Suite("fleet coordinator")
struct FleetCoordinatorTests {
    typealias C = FleetCoordinator
    typealias S = FleetRolloutState
    typealias F = FleetFixture

    struct Row: Sendable, CustomTestStringConvertible {
        let name: String
        let observation: FleetObservation
        /// The state to write (its stamps aside), or nil: no write.
        let want: S?
        var testDescription: String { name }

        init(_ name: String, plan: FleetPlan? = F.plan(), state: S?, hosts: [FleetHostStatus] = [],
             halted: [String: FleetHalted] = [:], claim: String? = nil, outcome: FleetMigrationOutcome? = nil,
             now: Timestamp = F.t0, want: S?) {
            self.name = name
            observation = FleetObservation(plan: plan, state: state, hosts: hosts, halted: halted, migrationClaim: claim,
                                           migrationOutcome: outcome, now: now, me: "h9")
            self.want = want
        }
    }

    static let halt = FleetHalted(migration: false)
    static let haltWithMigration = FleetHalted(migration: true)
    static let bad = "exited before it was ready"

    static let rows: [Row] = [
        // MARK: no plan, no state, another plan's state
        Row("no plan: nothing", plan: nil, state: F.state(.rolling, all: true), hosts: [F.host("a")], want: nil),
        Row("no state, canary 2: the labelled host first, then by name", plan: F.plan(canary: 2), state: nil,
            hosts: [F.host("b"), F.host("a"), F.host("c", canary: true)], want: F.state(.canary, admitted: ["c", "a"])),
        Row("another plan's state, even final: a new state", plan: F.plan(canary: 2),
            state: F.state(.paused, id: "fleet-1", admitted: ["a"], failed: ["a": "x"], reason: "r"),
            hosts: [F.host("b"), F.host("a")], want: F.state(.canary, admitted: ["a", "b"])),
        Row("no state, canary larger than the fleet: the whole fleet is the wave", plan: F.plan(canary: 5), state: nil,
            hosts: [F.host("b"), F.host("a")], want: F.state(.canary, admitted: ["a", "b"])),
        Row("no state, no canary: rolling", state: nil, hosts: [F.host("a"), F.host("b")], want: F.state(.rolling, all: true)),
        Row("no state, barrier: halting for every registered host, the canary ignored", plan: F.plan(barrier: true, canary: 1),
            state: nil, hosts: [F.host("b"), F.host("a")], want: F.state(.halting, admitted: ["a", "b"], all: true)),
        Row("no state, canary 2, no host yet: an empty wave that waits", plan: F.plan(canary: 2), state: nil,
            want: F.state(.canary, reason: "waiting for a host to register: the canary wave is empty")),
        Row("no state, every host already done: straight to done (one write, its fixed point)", state: nil,
            hosts: [F.host("a", .done), F.host("b", .done)], want: F.state(.done, all: true)),
        Row("no state, no host: rolling, never done on an empty fleet", state: nil, want: F.state(.rolling, all: true)),

        // MARK: canary
        Row("canary: a wave host failed: paused, the host and why recorded", plan: F.plan(canary: 2),
            state: F.state(.canary, admitted: ["a", "b"]), hosts: [F.host("a", .failed, error: bad), F.host("b", .done)],
            want: F.state(.paused, admitted: ["a", "b"], failed: ["a": bad], reason: "the canary wave failed: a (\(bad))")),
        Row("canary: a wave host done, then an agent of the plan rewound: paused", plan: F.plan(canary: 2),
            state: F.state(.canary, admitted: ["a", "b"]), hosts: [F.host("a", .done, rewound: ["api"]), F.host("b", .done)],
            want: F.state(.paused, admitted: ["a", "b"], failed: ["a": "agent api rewound"],
                          reason: "the canary wave failed: a (agent api rewound)")),
        Row("canary: a wave host that restored its previous versions failed", plan: F.plan(canary: 1),
            state: F.state(.canary, admitted: ["a"]), hosts: [F.host("a", .restored)],
            want: F.state(.paused, admitted: ["a"], failed: ["a": "it went back to its previous versions"],
                          reason: "the canary wave failed: a (it went back to its previous versions)")),
        Row("canary: a rewind of an agent outside the plan is no failure: soaking", plan: F.plan(canary: 2, soakMs: 5000),
            state: F.state(.canary, admitted: ["a", "b"]), hosts: [F.host("a", .done, rewound: ["other"]), F.host("b", .done)],
            want: F.state(.soaking, admitted: ["a", "b"], soakUntil: F.at(5000))),
        Row("canary: a rewind reported for another plan is no failure", plan: F.plan(canary: 1),
            state: F.state(.canary, admitted: ["a"]), hosts: [F.host("a", .done, id: "fleet-1", rewound: ["api"])], want: nil),
        Row("canary: the wave done, no soak: rolling", plan: F.plan(canary: 1),
            state: F.state(.canary, admitted: ["a"]), hosts: [F.host("a", .done), F.host("b")],
            want: F.state(.rolling, admitted: ["a"], all: true)),
        Row("canary: a wave host not registered keeps the wave waiting, and says so", plan: F.plan(canary: 2),
            state: F.state(.canary, admitted: ["a", "b"]), hosts: [F.host("a", .done)],
            want: F.state(.canary, admitted: ["a", "b"], reason: "waiting for canary host b, which is not registered")),
        Row("canary: two absent, named together", plan: F.plan(canary: 3),
            state: F.state(.canary, admitted: ["a", "b", "c"]), hosts: [F.host("a", .done)],
            want: F.state(.canary, admitted: ["a", "b", "c"], reason: "waiting for canary hosts b, c, which are not registered")),
        Row("canary: the same absence already said: no write", plan: F.plan(canary: 2),
            state: F.state(.canary, admitted: ["a", "b"], reason: "waiting for canary host b, which is not registered"),
            hosts: [F.host("a", .done)], want: nil),
        Row("canary: the absent host is back: the reason goes", plan: F.plan(canary: 2),
            state: F.state(.canary, admitted: ["a", "b"], reason: "waiting for canary host b, which is not registered"),
            hosts: [F.host("a", .done), F.host("b", .handingOver)], want: F.state(.canary, admitted: ["a", "b"])),
        Row("canary: the wave still handing over: no write", plan: F.plan(canary: 2),
            state: F.state(.canary, admitted: ["a", "b"]), hosts: [F.host("a", .done), F.host("b", .handingOver)], want: nil),
        Row("canary: a failure outside the wave is recorded, and pauses nothing", plan: F.plan(canary: 1),
            state: F.state(.canary, admitted: ["a"]), hosts: [F.host("a", .handingOver), F.host("b", .failed, error: "e")],
            want: F.state(.canary, admitted: ["a"], failed: ["b": "e"])),
        Row("canary: an empty wave takes the first hosts that register", plan: F.plan(canary: 1),
            state: F.state(.canary, reason: "waiting for a host to register: the canary wave is empty"),
            hosts: [F.host("b"), F.host("a")], want: F.state(.canary, admitted: ["a"])),

        // MARK: soaking
        Row("soaking: before its end: no write", plan: F.plan(canary: 1, soakMs: 5000),
            state: F.state(.soaking, admitted: ["a"], soakUntil: F.at(5000)), hosts: [F.host("a", .done)], now: F.at(4999),
            want: nil),
        Row("soaking: at its end: rolling", plan: F.plan(canary: 1, soakMs: 5000),
            state: F.state(.soaking, admitted: ["a"], soakUntil: F.at(5000)), hosts: [F.host("a", .done), F.host("b")],
            now: F.at(5000), want: F.state(.rolling, admitted: ["a"], all: true, soakUntil: F.at(5000))),
        Row("soaking: a wave host rewound: paused", plan: F.plan(canary: 1, soakMs: 5000),
            state: F.state(.soaking, admitted: ["a"], soakUntil: F.at(5000)), hosts: [F.host("a", .done, rewound: ["worker"])],
            now: F.at(1000), want: F.state(.paused, admitted: ["a"], soakUntil: F.at(5000), failed: ["a": "agent worker rewound"],
                                           reason: "the canary wave failed during the soak: a (agent worker rewound)")),
        Row("soaking: a failure and the soak's end seen together: the failure wins", plan: F.plan(canary: 1, soakMs: 5000),
            state: F.state(.soaking, admitted: ["a"], soakUntil: F.at(5000)), hosts: [F.host("a", .failed, error: "e")],
            now: F.at(9000), want: F.state(.paused, admitted: ["a"], soakUntil: F.at(5000), failed: ["a": "e"],
                                           reason: "the canary wave failed during the soak: a (e)")),
        Row("soaking: a wave host gone does not stop the soak", plan: F.plan(canary: 2, soakMs: 5000),
            state: F.state(.soaking, admitted: ["a", "b"], soakUntil: F.at(5000)), hosts: [F.host("a", .done)],
            now: F.at(1000), want: nil),

        // MARK: rolling
        Row("rolling: a failure within the threshold is recorded", plan: F.plan(threshold: 1),
            state: F.state(.rolling, all: true), hosts: [F.host("a", .failed, error: "e"), F.host("b", .handingOver)],
            want: F.state(.rolling, all: true, failed: ["a": "e"])),
        Row("rolling: past the threshold: paused, naming every failed host", plan: F.plan(threshold: 1),
            state: F.state(.rolling, all: true, failed: ["a": "e"]),
            hosts: [F.host("a", .failed, error: "e"), F.host("b", .done, rewound: ["api"]), F.host("c", .waitingSlot)],
            want: F.state(.paused, all: true, failed: ["a": "e", "b": "agent api rewound"],
                          reason: "2 hosts failed, more than the threshold of 1: a (e), b (agent api rewound)")),
        Row("rolling: the canary host that failed after the wave counts", plan: F.plan(canary: 1, threshold: 0),
            state: F.state(.rolling, admitted: ["a"], all: true), hosts: [F.host("a", .done, rewound: ["api"]), F.host("b", .done)],
            want: F.state(.paused, admitted: ["a"], all: true, failed: ["a": "agent api rewound"],
                          reason: "1 host failed, more than the threshold of 0: a (agent api rewound)")),
        Row("rolling: a failed host that went away still counts", plan: F.plan(threshold: 0),
            state: F.state(.rolling, all: true), hosts: [F.host("a", .failed, error: "e")],
            want: F.state(.paused, all: true, failed: ["a": "e"],
                          reason: "1 host failed, more than the threshold of 0: a (e)")),
        Row("rolling: every host done or failed, within the threshold: done", plan: F.plan(threshold: 1),
            state: F.state(.rolling, all: true, failed: ["a": "e"]), hosts: [F.host("a", .failed, error: "e"), F.host("b", .done)],
            want: F.state(.done, all: true, failed: ["a": "e"])),
        Row("rolling: a host still on its way: no write", state: F.state(.rolling, all: true),
            hosts: [F.host("a", .done), F.host("b", .fetching)], want: nil),
        Row("rolling: a registered host in no rollout yet is not done", state: F.state(.rolling, all: true),
            hosts: [F.host("a", .done), F.host("b")], want: nil),
        Row("rolling: no host registered: no write", state: F.state(.rolling, all: true), want: nil),
        Row("rolling: a failed host recovered later keeps its first reason", plan: F.plan(threshold: 1),
            state: F.state(.rolling, all: true, failed: ["a": "e"]), hosts: [F.host("a", .done), F.host("b", .handingOver)],
            want: nil),

        // MARK: halting
        Row("halting: a host that registers joins the barrier", plan: F.plan(barrier: true),
            state: F.state(.halting, admitted: ["b"], all: true), hosts: [F.host("a"), F.host("b", .halted)], halted: ["b": halt],
            want: F.state(.halting, admitted: ["a", "b"], all: true)),
        Row("halting: every host halted, no migration: proceeding", plan: F.plan(barrier: true),
            state: F.state(.halting, admitted: ["a", "b"], all: true), hosts: [F.host("a", .halted), F.host("b", .halted)],
            halted: ["a": halt, "b": halt], want: F.state(.proceeding, admitted: ["a", "b"], all: true)),
        Row("halting: every host halted, one with a migration: migrating", plan: F.plan(barrier: true),
            state: F.state(.halting, admitted: ["a", "b"], all: true), hosts: [F.host("a", .halted), F.host("b", .halted)],
            halted: ["a": halt, "b": haltWithMigration], want: F.state(.migrating, admitted: ["a", "b"], all: true)),
        Row("halting: one host not yet halted: no write", plan: F.plan(barrier: true),
            state: F.state(.halting, admitted: ["a", "b"], all: true), hosts: [F.host("a", .halted), F.host("b", .halting)],
            halted: ["a": halt], want: nil),
        Row("halting: an admitted host gone: waiting, and the reason says how to exclude it", plan: F.plan(barrier: true),
            state: F.state(.halting, admitted: ["a", "b"], all: true), hosts: [F.host("a", .halted)], halted: ["a": halt],
            want: F.state(.halting, admitted: ["a", "b"], all: true,
                          reason: "waiting for b, gone since its lease ended: exclude it with `baton fleet exclude b`")),
        Row("halting: two gone", plan: F.plan(barrier: true),
            state: F.state(.halting, admitted: ["a", "b", "c"], all: true), hosts: [F.host("a", .halted)], halted: ["a": halt],
            want: F.state(.halting, admitted: ["a", "b", "c"], all: true,
                          reason: "waiting for b, c, gone since their leases ended: exclude them with `baton fleet exclude b c`")),
        Row("halting: a halted key without its host does not count", plan: F.plan(barrier: true),
            state: F.state(.halting, admitted: ["a", "b"], all: true), hosts: [F.host("a", .halted)],
            halted: ["a": halt, "b": halt],
            want: F.state(.halting, admitted: ["a", "b"], all: true,
                          reason: "waiting for b, gone since its lease ended: exclude it with `baton fleet exclude b`")),
        Row("halting: the gone host excluded: the barrier goes on", plan: F.plan(barrier: true, exclude: ["b"]),
            state: F.state(.halting, admitted: ["a", "b"], all: true, reason: "waiting for b"),
            hosts: [F.host("a", .halted)], halted: ["a": halt], want: F.state(.proceeding, admitted: ["a", "b"], all: true)),
        Row("halting: a migration only a gone, excluded host had cannot run: proceeding", plan: F.plan(barrier: true, exclude: ["b"]),
            state: F.state(.halting, admitted: ["a", "b"], all: true), hosts: [F.host("a", .halted)],
            halted: ["a": halt, "b": haltWithMigration], want: F.state(.proceeding, admitted: ["a", "b"], all: true)),
        Row("halting: a host's halt failed: restoring", plan: F.plan(barrier: true),
            state: F.state(.halting, admitted: ["a", "b"], all: true),
            hosts: [F.host("a", .halted), F.host("b", .failed, error: "worker did not stop")], halted: ["a": halt],
            want: F.state(.restoring, admitted: ["a", "b"], all: true, failed: ["b": "worker did not stop"],
                          reason: "the barrier failed: b (worker did not stop)")),
        Row("halting: an excluded host's failure is recorded, and restores nothing", plan: F.plan(barrier: true, exclude: ["b"]),
            state: F.state(.halting, admitted: ["a", "b"], all: true),
            hosts: [F.host("a", .halting), F.host("b", .failed, error: "e")],
            want: F.state(.halting, admitted: ["a", "b"], all: true, failed: ["b": "e"])),
        Row("halting: no host to halt: waiting, never proceeding past a migration", plan: F.plan(barrier: true),
            state: F.state(.halting, all: true), want: F.state(.halting, all: true,
                reason: "waiting for a host to halt: none is registered outside the excluded ones")),

        // MARK: migrating
        Row("migrating: nobody claimed yet: no write", plan: F.plan(barrier: true),
            state: F.state(.migrating, admitted: ["a"], all: true), hosts: [F.host("a", .halted)], halted: ["a": haltWithMigration],
            want: nil),
        Row("migrating: claimed, running: no write", plan: F.plan(barrier: true),
            state: F.state(.migrating, admitted: ["a"], all: true), hosts: [F.host("a", .migrating)],
            halted: ["a": haltWithMigration], claim: "a", want: nil),
        Row("migrating: the migration succeeded: proceeding", plan: F.plan(barrier: true),
            state: F.state(.migrating, admitted: ["a", "b"], all: true), hosts: [F.host("a", .halted), F.host("b", .halted)],
            halted: ["a": haltWithMigration, "b": halt], claim: "a", outcome: .init(host: "a", ok: true, detail: "exited 0"),
            want: F.state(.proceeding, admitted: ["a", "b"], all: true)),
        Row("migrating: the migration failed: restoring, and why", plan: F.plan(barrier: true),
            state: F.state(.migrating, admitted: ["a"], all: true), hosts: [F.host("a", .halted)],
            halted: ["a": haltWithMigration], claim: "a", outcome: .init(host: "a", ok: false, detail: "exited 3: no such table"),
            want: F.state(.restoring, admitted: ["a"], all: true, reason: "the migration failed on a: exited 3: no such table")),
        Row("migrating: the claimer gone without an outcome: restoring", plan: F.plan(barrier: true),
            state: F.state(.migrating, admitted: ["a", "b"], all: true), hosts: [F.host("b", .halted)],
            halted: ["b": halt], claim: "a",
            want: F.state(.restoring, admitted: ["a", "b"], all: true, reason: "the migration's host a is gone: its outcome is unknown")),
        Row("migrating: the claimer gone after its outcome: the outcome decides", plan: F.plan(barrier: true),
            state: F.state(.migrating, admitted: ["a", "b"], all: true), hosts: [F.host("b", .halted)], halted: ["b": halt],
            claim: "a", outcome: .init(host: "a", ok: true, detail: "exited 0"),
            want: F.state(.proceeding, admitted: ["a", "b"], all: true)),
        Row("migrating: a failure meanwhile is recorded; the migration is not interrupted", plan: F.plan(barrier: true),
            state: F.state(.migrating, admitted: ["a", "b"], all: true),
            hosts: [F.host("a", .migrating), F.host("b", .failed, error: "e")], halted: ["a": haltWithMigration], claim: "a",
            want: F.state(.migrating, admitted: ["a", "b"], all: true, failed: ["b": "e"])),

        // MARK: proceeding
        Row("proceeding: hosts starting: no write", plan: F.plan(barrier: true),
            state: F.state(.proceeding, admitted: ["a", "b"], all: true), hosts: [F.host("a", .done), F.host("b", .starting)],
            want: nil),
        Row("proceeding: every host outside exclude done or failed: done, the failure recorded",
            plan: F.plan(barrier: true, exclude: ["c"]), state: F.state(.proceeding, admitted: ["a", "b", "c"], all: true),
            hosts: [F.host("a", .done), F.host("b", .failed, error: "e"), F.host("c")],
            want: F.state(.done, admitted: ["a", "b", "c"], all: true, failed: ["b": "e"])),
        Row("proceeding: a host that joined late upgrades the plain way and is waited for", plan: F.plan(barrier: true),
            state: F.state(.proceeding, admitted: ["a"], all: true), hosts: [F.host("a", .done), F.host("d", .handingOver)],
            want: nil),
        Row("proceeding: no failure threshold pauses the barrier's start", plan: F.plan(barrier: true, threshold: 0),
            state: F.state(.proceeding, admitted: ["a", "b"], all: true),
            hosts: [F.host("a", .failed, error: "e"), F.host("b", .failed, error: "f")],
            want: F.state(.done, admitted: ["a", "b"], all: true, failed: ["a": "e", "b": "f"])),

        // MARK: restoring
        Row("restoring: hosts still restoring: no write", plan: F.plan(barrier: true),
            state: F.state(.restoring, admitted: ["a", "b"], all: true, reason: "r"),
            hosts: [F.host("a", .restored), F.host("b", .restoring)], want: nil),
        Row("restoring: back, failed, or never halted: restored; only the failed one recorded", plan: F.plan(barrier: true),
            state: F.state(.restoring, admitted: ["a", "b", "c"], all: true, reason: "r"),
            hosts: [F.host("a", .restored), F.host("b", .failed, error: "e"), F.host("c", .waiting), F.host("d")],
            want: F.state(.restored, admitted: ["a", "b", "c"], all: true, failed: ["b": "e"], reason: "r")),
        Row("restoring: a halted host has yet to start its old versions", plan: F.plan(barrier: true),
            state: F.state(.restoring, admitted: ["a"], all: true, reason: "r"), hosts: [F.host("a", .halted)], want: nil),

        // MARK: final phases are sticky
        Row("paused: everything done since: no write", plan: F.plan(canary: 1),
            state: F.state(.paused, admitted: ["a"], failed: ["a": "e"], reason: "r"), hosts: [F.host("a", .done), F.host("b", .done)],
            want: nil),
        Row("done: a failure after the end: no write", state: F.state(.done, all: true),
            hosts: [F.host("a", .failed, error: "e")], want: nil),
        Row("restored: a migration outcome arriving late: no write", plan: F.plan(barrier: true),
            state: F.state(.restored, admitted: ["a"], all: true, reason: "r"), hosts: [F.host("a", .restored)], claim: "a",
            outcome: .init(host: "a", ok: true, detail: "exited 0"), want: nil),
    ]

    @Test(arguments: rows)
    func theRules(_ row: Row) {
        let got = C.next(row.observation)
        guard let want = row.want else {
            #expect(got == nil, "no write")
            return
        }
        var expected = want
        expected.updatedAt = row.observation.now
        expected.coordinator = "h9"
        #expect(got == expected)
        // What it wrote, read back, is its own answer: nothing more to write.
        var again = row.observation
        again.state = got
        #expect(C.next(again) == nil, "the written state is a fixed point")
    }

    /// Every phase has a row that leaves it, or says why it cannot be left.
    @Test func everyPhaseHasRows() {
        let phases = Set(Self.rows.compactMap { $0.observation.state?.phase })
        #expect(phases == Set(S.Phase.allCases))
    }

    /// A new coordinator does not rewrite the state to sign it, and neither does time alone.
    @Test func noWriteForTheStampAlone() {
        let stored = F.state(.rolling, all: true)
        let observation = FleetObservation(plan: F.plan(), state: stored, hosts: [F.host("a", .handingOver)],
                                           now: F.at(60_000), me: "another")
        #expect(C.next(observation) == nil)
        #expect(C.wakeAt(observation) == nil)
    }

    @Test func theSoakEndIsTheWakeUp() {
        let plan = F.plan(canary: 1, soakMs: 5000)
        let soaking = FleetObservation(plan: plan, state: F.state(.soaking, admitted: ["a"], soakUntil: F.at(5000)),
                                       hosts: [F.host("a", .done)], now: F.at(1000), me: "h9")
        #expect(C.wakeAt(soaking) == F.at(5000))
        // The state about to be written counts: the wave just finished, the soak starts now.
        let finishing = FleetObservation(plan: plan, state: F.state(.canary, admitted: ["a"]), hosts: [F.host("a", .done)],
                                         now: F.at(2000), me: "h9")
        #expect(C.wakeAt(finishing) == F.at(7000))
        var over = soaking
        over.now = F.at(5000)
        #expect(C.wakeAt(over) == nil, "rolling now: nothing to wait for")
        #expect(C.wakeAt(FleetObservation(plan: nil, state: soaking.state, now: F.t0, me: "h9")) == nil)
    }
}

/// The coordinator over a simulated fleet: 1–12 hosts with random plans (canary, soak,
/// threshold, barrier, exclusions, which hosts have a migration), hosts that follow the
/// rollout state and upgrade, fail, rewind, halt, claim and run the migration, vanish
/// and come back, hosts that report nonsense now and then, time that advances, and a new
/// plan now and then. The coordinator looks after most changes, not all (watch events
/// coalesce). After each of its answers the walk checks:
/// - the answer is for the plan, stamped now by this coordinator, and never a write for nothing;
/// - what it wrote, asked again, is answered by nil (a fixed point);
/// - in canary and soaking, only the wave is admitted: at most `canary` hosts, the first by
///   label then name when chosen, never changed after;
/// - soaking begins only with every wave host done; rolling (with a canary) only after the
///   wave was done and the soak ended;
/// - paused, done and restored are sticky for the plan;
/// - migrating only with halted ⊇ admitted − exclude; proceeding only with an ok outcome, or
///   everyone halted and no halted host with a migration; restoring only with a failed
///   outcome, a failed host of the barrier, or the claimer gone;
/// - done only when every registered host (outside exclude, with the barrier) is done or
///   failed, and, without the barrier, no more failed than the threshold;
/// - failures recorded stay recorded, and each new one is a host failing now.
@Suite("fleet coordinator random walk")
struct FleetCoordinatorWalkTests {
    typealias C = FleetCoordinator
    typealias S = FleetRolloutState
    typealias F = FleetFixture

    struct World {
        var rng: SeededGenerator
        let seed: UInt64
        let names: [String]
        var plan: FleetPlan
        /// The hosts that have a migration to run for the plan.
        var migrators: Set<String> = []
        var state: S?
        /// Every host's last status (kept while it is away, as its ledger would).
        var statuses: [String: FleetHostStatus] = [:]
        var registered: Set<String> = []
        var halted: [String: FleetHalted] = [:]
        var claim: String?
        var outcome: FleetMigrationOutcome?
        var now = F.t0
        var steps = 0
        /// The wave of the current plan, once chosen.
        var wave: [String]?
        var seen: Set<S.Phase> = []

        init(seed: UInt64) {
            self.seed = seed
            rng = SeededGenerator(state: seed)
            names = (1...Int.random(in: 1...12, using: &rng)).map { String(format: "h%02d", $0) }
            plan = F.plan(id: "fleet-1")
            for name in names {
                statuses[name] = F.host(name, canary: Double.random(in: 0..<1, using: &rng) < 0.2)
                if chance(0.85) { registered.insert(name) }
            }
            newPlan()
        }

        mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &rng) < p }
        mutating func pick<T>(_ items: [T]) -> T? { items.isEmpty ? nil : items[Int.random(in: 0..<items.count, using: &rng)] }

        mutating func newPlan() {
            let exclude = names.filter { _ in chance(0.1) }
            plan = F.plan(id: "fleet-\(plan.number + 1)", barrier: chance(0.4), canary: Int.random(in: 0...4, using: &rng),
                          soakMs: pick([0, 0, 1000, 5000])!, threshold: Int.random(in: 0...2, using: &rng), exclude: exclude,
                          maxUnavailable: Int.random(in: 1...3, using: &rng))
            migrators = chance(0.6) ? Set(names.filter { _ in chance(0.5) }) : []
            halted = [:]; claim = nil; outcome = nil; wave = nil
        }

        var observation: FleetObservation {
            FleetObservation(plan: plan, state: state, hosts: registered.sorted().map { statuses[$0]! }, halted: halted,
                             migrationClaim: claim, migrationOutcome: outcome, now: now, me: "h00")
        }

        // MARK: The fleet moves

        mutating func move() {
            steps += 1
            switch Int.random(in: 0..<100, using: &rng) {
            case 0..<15:
                now = Timestamp(milliseconds: now.milliseconds + Int64.random(in: 0...3000, using: &rng))
            case 15..<22:
                // A host's lease ends: its key and its halted key go with it.
                if let name = pick(registered.sorted()) { registered.remove(name); halted[name] = nil }
            case 22..<32:
                if let name = pick(names.filter { !registered.contains($0) }) { registered.insert(name) }
            case 32..<34:
                // Nonsense: a host reports any phase of the plan (the rules hold whatever hosts say).
                if let name = pick(registered.sorted()), let phase = pick(FleetHostStatus.Rollout.Phase.allCases) {
                    statuses[name]!.rollout = .init(id: plan.id, version: plan.version, phase: phase, error: "said \(phase)")
                }
            case 34:
                newPlan()
            default:
                if let name = pick(registered.sorted()) { follow(name) }
            }
        }

        /// A host does the next thing the rollout state asks of it, or fails at it.
        mutating func follow(_ name: String) {
            guard let state, state.id == plan.id else { return }
            var status = statuses[name]!
            var rollout = status.rollout?.id == plan.id ? status.rollout!
                : FleetHostStatus.Rollout(id: plan.id, version: plan.version, phase: .waiting)
            func upgrading() {
                rollout.phase = .handingOver
                for index in status.agents.indices { status.agents[index].rewound = false }
            }
            switch rollout.phase {
            case .waiting, .fetching, .waitingSlot:
                if plan.barrier && state.phase == .halting {
                    rollout.phase = .halting
                } else if state.admits(name) {
                    upgrading()
                }
            case .handingOver:
                if chance(0.85) { rollout.phase = .done } else { rollout.phase = .failed; rollout.error = "exited early" }
            case .halting:
                if state.phase == .halting {
                    if chance(0.95) {
                        rollout.phase = .halted
                        halted[name] = FleetHalted(migration: migrators.contains(name))
                    } else {
                        rollout.phase = .failed; rollout.error = "did not halt"
                    }
                } else if state.phase == .proceeding || state.phase == .done {
                    rollout.phase = .starting
                } else if state.phase == .restoring || state.phase == .restored {
                    rollout.phase = .restored
                }
            case .halted:
                switch state.phase {
                case .halting:
                    halted[name] = FleetHalted(migration: migrators.contains(name)) // again, after a new lease
                case .migrating:
                    if claim == nil && halted[name]?.migration == true { claim = name; rollout.phase = .migrating }
                case .proceeding, .done:
                    rollout.phase = .starting
                case .restoring, .restored:
                    rollout.phase = .restoring
                case .canary, .soaking, .rolling, .paused:
                    break
                }
            case .migrating:
                if state.phase == .migrating && claim == name && outcome == nil {
                    outcome = FleetMigrationOutcome(host: name, ok: chance(0.7), detail: "exited")
                    rollout.phase = .halted
                } else if state.phase != .migrating {
                    rollout.phase = .halted
                }
            case .starting:
                if chance(0.9) { rollout.phase = .done } else { rollout.phase = .failed; rollout.error = "did not start" }
            case .restoring:
                if chance(0.9) { rollout.phase = .restored } else { rollout.phase = .failed; rollout.error = "did not start" }
            case .done:
                if chance(0.1), let agent = pick(status.agents.indices.map { $0 }) { status.agents[agent].rewound = true }
            case .failed, .restored:
                break
            }
            status.rollout = rollout
            statuses[name] = status
        }

        // MARK: The coordinator looks

        mutating func look() {
            let observation = self.observation
            let old = state?.id == plan.id ? state : nil
            let new = C.next(observation)
            if let old, [.paused, .done, .restored].contains(old.phase) {
                #expect(new == nil, "\(old.phase) is sticky: \(at)")
            }
            guard let new else { return }
            check(new, after: old, observation)
            state = new
            seen.insert(new.phase)
            var again = observation
            again.state = new
            #expect(C.next(again) == nil, "a fixed point: \(at)")
        }

        var at: String { "seed \(seed), step \(steps)" }

        /// Done with the plan, as the rules define it (the test's own reading).
        func isDone(_ name: String) -> Bool {
            guard registered.contains(name), let status = statuses[name], let rollout = status.rollout else { return false }
            return rollout.id == plan.id && rollout.phase == .done
                && !status.agents.contains { $0.rewound && plan.releases[$0.name] != nil }
        }

        func isFailing(_ name: String) -> Bool {
            guard registered.contains(name), let status = statuses[name], let rollout = status.rollout, rollout.id == plan.id
            else { return false }
            return rollout.phase == .failed || rollout.phase == .restored
                || (rollout.phase == .done && status.agents.contains { $0.rewound && plan.releases[$0.name] != nil })
        }

        mutating func check(_ new: S, after old: S?, _ observation: FleetObservation) {
            let at = self.at
            #expect(new.id == plan.id && new.version == plan.version && new.updatedAt == now && new.coordinator == "h00", "\(at)")
            if let old {
                var unstamped = new
                unstamped.updatedAt = old.updatedAt; unstamped.coordinator = old.coordinator
                #expect(unstamped != old, "never a write for nothing: \(at)")
                for (host, why) in old.failed { #expect(new.failed[host] == why, "failures stay recorded: \(at)") }
            }
            for host in new.failed.keys where old?.failed[host] == nil {
                #expect(isFailing(host), "\(host) recorded failed while it is not failing: \(at)")
            }
            let entered = old?.phase != new.phase
            let excluded = Set(plan.exclude)
            let waited = new.admitted.filter { !excluded.contains($0) }
            let haltedHere = Set(halted.keys).intersection(registered)
            switch new.phase {
            case .canary, .soaking:
                #expect(!new.all && new.admitted.count <= plan.canary, "only the wave: \(at)")
                if let wave {
                    #expect(new.admitted == wave, "the wave never changes: \(at)")
                } else if !new.admitted.isEmpty {
                    let ordered = registered.sorted {
                        let (a, b) = (statuses[$0]!.labels["canary"] == "true", statuses[$1]!.labels["canary"] == "true")
                        return a != b ? a : $0 < $1
                    }
                    #expect(new.admitted == Array(ordered.prefix(plan.canary)), "the first by label, then name: \(at)")
                    wave = new.admitted
                }
                if new.phase == .soaking && entered {
                    #expect(new.admitted.allSatisfy(isDone), "soaking only once the wave is done: \(at)")
                    #expect(new.soakUntil == Timestamp(milliseconds: now.milliseconds + plan.soakMs), "\(at)")
                }
            case .rolling:
                if entered && !plan.barrier && plan.canary > 0 {
                    if old?.phase == .soaking {
                        #expect(now >= old!.soakUntil!, "rolling only after the soak: \(at)")
                    } else {
                        #expect(plan.soakMs == 0 && !new.admitted.isEmpty && new.admitted.allSatisfy(isDone),
                                "rolling without a soak only once the wave is done: \(at)")
                    }
                }
            case .migrating:
                if entered {
                    #expect(!waited.isEmpty && Set(waited).isSubset(of: haltedHere), "migrating only with every host halted: \(at)")
                }
            case .proceeding:
                if entered {
                    let everyoneHaltedNoMigration = !waited.isEmpty && Set(waited).isSubset(of: haltedHere)
                        && !halted.values.contains(where: \.migration)
                    #expect(outcome?.ok == true || everyoneHaltedNoMigration, "proceeding: \(at)")
                }
            case .restoring:
                if entered {
                    let claimerGone = claim.map { !registered.contains($0) } ?? false
                    #expect(outcome?.ok == false || claimerGone || waited.contains { new.failed[$0] != nil }, "restoring: \(at)")
                }
            case .done:
                let hosts = registered.filter { !plan.barrier || !excluded.contains($0) }
                #expect(!hosts.isEmpty && hosts.allSatisfy { isDone($0) || new.failed[$0] != nil }, "done: \(at)")
                if !plan.barrier { #expect(new.failed.count <= plan.failureThreshold, "done within the threshold: \(at)") }
            case .halting, .paused, .restored:
                break
            }
        }
    }

    @Test(arguments: [1, 2, 3, 42, 2026] as [UInt64])
    func walksKeepTheInvariants(_ seed: UInt64) {
        var seen: Set<S.Phase> = []
        var random = SeededGenerator(state: seed)
        for _ in 0..<100 {
            var world = World(seed: random.next())
            for _ in 0..<250 {
                world.move()
                if world.chance(0.7) { world.look() }
            }
            seen.formUnion(world.seen)
        }
        #expect(seen == Set(S.Phase.allCases), "the walks reach every phase")
    }
}
