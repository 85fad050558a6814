/// Everything the coordinator reads from etcd at one revision, and the time it read it.
public struct FleetObservation: Sendable, Equatable {
    public var plan: FleetPlan?
    /// What `<prefix>/<fleet>/rollout` holds now.
    public var state: FleetRolloutState?
    /// The hosts whose key exists now (their lease lives).
    public var hosts: [FleetHostStatus]
    /// `barrier/<plan.id>/halted/*`: host → value.
    public var halted: [String: FleetHalted]
    /// `barrier/<plan.id>/migration`: the claimer's host name.
    public var migrationClaim: String?
    public var migrationOutcome: FleetMigrationOutcome?
    public var now: Timestamp
    /// The coordinator's host name (it goes into `state.coordinator`).
    public var me: String

    public init(plan: FleetPlan?, state: FleetRolloutState?, hosts: [FleetHostStatus] = [], halted: [String: FleetHalted] = [:],
                migrationClaim: String? = nil, migrationOutcome: FleetMigrationOutcome? = nil, now: Timestamp, me: String) {
        self.plan = plan; self.state = state; self.hosts = hosts; self.halted = halted
        self.migrationClaim = migrationClaim; self.migrationOutcome = migrationOutcome; self.now = now; self.me = me
    }
}

/// The fleet coordinator's decisions: what the rollout state of the current plan must
/// become, given everything in etcd now. Level-triggered and pure: the shell calls `next`
/// whenever anything under the fleet's prefix changes (and at `wakeAt`), writes what it
/// returns through its leader-guarded transaction, and asks again. The answer depends
/// only on the observation, so a coordinator that takes over from a dead one decides
/// exactly as it would have.
///
/// `next` runs the phase steps below to a fixed point, so what it returns, once written,
/// is answered by nil until something else changes (hosts, the barrier's keys, or time).
/// A state that differs from the stored one only in `updatedAt` or `coordinator` is not
/// written: a new coordinator does not rewrite the state to sign it.
///
/// What counts:
/// - a host is done with the plan when its status says `rollout.id == plan.id` and
///   phase `done`, and no agent of the plan on it has a standing rewind;
/// - a host failed when its phase for the plan is `failed` or `restored` (its `error`
///   says why), or it was done and then an agent of the plan rewound ("agent X rewound").
///   Failed hosts are recorded in `state.failed` once, with the first reason seen, and
///   stay there for the plan: a host that fails then recovers still counts against
///   the rollout. While restoring, `restored` is what the fleet asks for, not a failure:
///   only `failed` hosts are recorded then.
///
/// The phases, and where each goes:
/// - `canary`: the wave (`admitted`: up to `plan.canary` hosts, those labelled
///   `canary=true` first, then by name) upgrades. Any wave host failed → `paused`. Every
///   wave host registered and done → `soaking` until now + `soakMs` (no soak: `rolling`).
///   A wave host that is not registered keeps the wave waiting, and `reason` names it.
///   The wave is chosen when the state is made; a plan set while no host was registered
///   takes its wave from the first hosts that register, never an empty wave that would
///   pass without a host having run the version.
/// - `soaking`: a wave host failed (or rewound) → `paused`; the soak's end → `rolling`.
///   A wave host that vanishes during the soak does not stop it: the coordinator judges
///   what hosts report, and a host that comes back failed is still caught while soaking.
/// - `rolling`: every host may upgrade (the slots bound how many at once). More failed
///   hosts than `plan.failureThreshold` (the wave's included) → `paused`. Every
///   registered host done or failed → `done`.
/// - `halting` (barrier): every registered host, and each that registers since, is in
///   `admitted`; the barrier waits for `admitted − plan.exclude` to be registered and
///   halted. A host of the barrier failed → `restoring`. All halted → `migrating` when a
///   halted host has a migration to run, else `proceeding`. An admitted host that is
///   gone keeps it waiting, named in `reason` with the command that excludes it.
/// - `migrating`: the outcome decides: ok → `proceeding`, failed → `restoring`. A claim
///   whose claimer is no longer registered, without an outcome → `restoring` (the
///   migration ran at most once, and nobody can say how it ended). Failures seen meanwhile
///   are recorded, and wait for the outcome: the migration is not interrupted.
/// - `proceeding`: every host starts the new version; every registered host outside
///   `exclude` done or failed → `done`. No threshold pauses it: after the migration,
///   neither holding hosts halted nor going back to the old versions is safe, so
///   failures are only recorded.
/// - `restoring`: every host starts its previous versions; every registered host outside
///   `exclude` back (`restored`), failed, or never halted → `restored`.
/// - `paused`, `done`, `restored`: final for the plan; only a new plan id starts again.
///
/// No finish on an empty fleet: `done` needs at least one registered host, and the
/// barrier at least one host to halt, so a fleet that shows no host for a while (every
/// lease ended in an etcd outage) is never taken for a finished one, and a migration is
/// never skipped for want of a host to run it.
public enum FleetCoordinator {
    public typealias State = FleetRolloutState

    /// The rollout state to write now, or nil when nothing changes.
    public static func next(_ observation: FleetObservation) -> State? {
        guard let plan = observation.plan else { return nil }
        let fleet = Fleet(observation, plan)
        let current = observation.state.flatMap { $0.id == plan.id ? $0 : nil }
        var state = current ?? begin(plan, fleet)
        // Each step moves forward (phases and recorded failures only grow), so a few
        // rounds reach the fixed point; the bound only keeps a bug from hanging the shell.
        for _ in 0..<2 * State.Phase.allCases.count {
            let after = step(state, plan, fleet)
            if after == state { break }
            state = after
        }
        if let current, sameIgnoringStamp(state, current) { return nil }
        state.updatedAt = observation.now
        state.coordinator = observation.me
        return state
    }

    /// When the coordinator must look again even if nothing in etcd changes (the end of a
    /// soak), or nil.
    public static func wakeAt(_ observation: FleetObservation) -> Timestamp? {
        guard let plan = observation.plan,
              let state = next(observation) ?? observation.state, state.id == plan.id,
              state.phase == .soaking, let until = state.soakUntil, until > observation.now
        else { return nil }
        return until
    }

    // MARK: - The fleet as this plan sees it

    private struct Fleet {
        let now: Timestamp
        let registered: [String: FleetHostStatus]
        let halted: [String: FleetHalted]
        let claim: String?
        let outcome: FleetMigrationOutcome?
        /// Hosts done with the plan.
        let done: Set<String>
        /// Hosts failed for the plan, and why (`restored` counts).
        let failures: [String: String]
        /// Hosts that failed outright (`failed` only: what restoring records).
        let failedOutright: [String: String]

        init(_ observation: FleetObservation, _ plan: FleetPlan) {
            now = observation.now
            halted = observation.halted
            claim = observation.migrationClaim
            outcome = observation.migrationOutcome
            var registered: [String: FleetHostStatus] = [:]
            for host in observation.hosts { registered[host.host] = host }
            self.registered = registered
            var done = Set<String>()
            var failures: [String: String] = [:], failedOutright: [String: String] = [:]
            for (name, host) in registered {
                guard let rollout = host.rollout, rollout.id == plan.id else { continue }
                switch rollout.phase {
                case .failed:
                    failures[name] = rollout.error ?? "its upgrade failed"
                    failedOutright[name] = failures[name]
                case .restored:
                    failures[name] = rollout.error ?? "it went back to its previous versions"
                case .done:
                    let rewound = host.agents.filter { $0.rewound && plan.releases[$0.name] != nil }.map(\.name).sorted()
                    if rewound.isEmpty {
                        done.insert(name)
                    } else {
                        failures[name] = rewound.map { "agent \($0) rewound" }.joined(separator: "; ")
                    }
                case .waiting, .fetching, .waitingSlot, .handingOver, .halting, .halted, .migrating, .starting, .restoring:
                    break
                }
            }
            self.done = done
            self.failures = failures
            self.failedOutright = failedOutright
        }

        /// Done with the plan, or failed for it (`failed`: the state's record).
        func isSettled(_ host: String, failed: [String: String]) -> Bool {
            done.contains(host) || failed[host] != nil
        }

        /// Whether `host` has nothing more to do while restoring: it is back on its previous
        /// versions, failed, at any end, or it never halted (not in this rollout, or not yet
        /// halting).
        func isRestored(_ host: String, _ plan: FleetPlan) -> Bool {
            guard let rollout = registered[host]?.rollout, rollout.id == plan.id else { return true }
            switch rollout.phase {
            case .done, .failed, .restored, .waiting, .fetching: return true
            case .waitingSlot, .handingOver, .halting, .halted, .migrating, .starting, .restoring: return false
            }
        }

        /// The first `count` registered hosts: those labelled `canary=true` first, then by name.
        func wave(_ count: Int) -> [String] {
            let ordered = registered.values.sorted {
                let (a, b) = ($0.labels["canary"] == "true", $1.labels["canary"] == "true")
                return a != b ? a : $0.host < $1.host
            }
            return Array(ordered.prefix(max(count, 0)).map(\.host))
        }
    }

    // MARK: - Steps

    /// The first state of a plan: the barrier halts every registered host; a canary admits
    /// its wave; without either, every host may begin.
    private static func begin(_ plan: FleetPlan, _ fleet: Fleet) -> State {
        var state = State(id: plan.id, version: plan.version, phase: .rolling, all: true, coordinator: "",
                          updatedAt: fleet.now)
        if plan.barrier {
            state.phase = .halting
            state.admitted = fleet.registered.keys.sorted()
        } else if plan.canary > 0 {
            state.phase = .canary
            state.all = false
            state.admitted = fleet.wave(plan.canary)
        }
        return state
    }

    /// One step from `state`: the same state when nothing moves it.
    private static func step(_ state: State, _ plan: FleetPlan, _ fleet: Fleet) -> State {
        var state = state
        switch state.phase {
        case .paused, .done, .restored:
            return state
        case .restoring:
            record(fleet.failedOutright, into: &state)
        case .canary, .soaking, .rolling, .halting, .migrating, .proceeding:
            record(fleet.failures, into: &state)
        }
        let excluded = Set(plan.exclude)
        switch state.phase {
        case .canary:
            if state.admitted.isEmpty { state.admitted = fleet.wave(plan.canary) }
            let failed = state.admitted.filter { state.failed[$0] != nil }
            if !failed.isEmpty {
                return pause(state, "the canary wave failed: " + describe(failed, state.failed))
            }
            if !state.admitted.isEmpty && state.admitted.allSatisfy(fleet.done.contains) {
                state.reason = nil
                if plan.soakMs > 0 {
                    state.phase = .soaking
                    state.soakUntil = Timestamp(milliseconds: fleet.now.milliseconds + plan.soakMs)
                } else {
                    state.phase = .rolling
                    state.all = true
                }
                return state
            }
            let absent = state.admitted.filter { fleet.registered[$0] == nil }
            state.reason = state.admitted.isEmpty ? "waiting for a host to register: the canary wave is empty"
                : absent.isEmpty ? nil
                : absent.count == 1 ? "waiting for canary host \(absent[0]), which is not registered"
                : "waiting for canary hosts \(absent.joined(separator: ", ")), which are not registered"
        case .soaking:
            let failed = state.admitted.filter { state.failed[$0] != nil }
            if !failed.isEmpty {
                return pause(state, "the canary wave failed during the soak: " + describe(failed, state.failed))
            }
            if state.soakUntil.map({ fleet.now >= $0 }) ?? true {
                state.phase = .rolling
                state.all = true
            }
        case .rolling:
            let count = state.failed.count
            if count > plan.failureThreshold {
                return pause(state, "\(count) host\(count == 1 ? "" : "s") failed, more than the threshold of \(plan.failureThreshold): "
                    + describe(state.failed.keys.sorted(), state.failed))
            }
            if !fleet.registered.isEmpty && fleet.registered.keys.allSatisfy({ fleet.isSettled($0, failed: state.failed) }) {
                state.phase = .done
            }
        case .halting:
            state.admitted = Array(Set(state.admitted).union(fleet.registered.keys)).sorted()
            let waited = state.admitted.filter { !excluded.contains($0) }
            let failed = waited.filter { state.failed[$0] != nil }
            if !failed.isEmpty {
                state.phase = .restoring
                state.reason = "the barrier failed: " + describe(failed, state.failed)
                return state
            }
            let gone = waited.filter { fleet.registered[$0] == nil }
            if !waited.isEmpty && waited.allSatisfy({ fleet.registered[$0] != nil && fleet.halted[$0] != nil }) {
                state.reason = nil
                let migration = fleet.halted.contains { fleet.registered[$0.key] != nil && $0.value.migration }
                state.phase = migration ? .migrating : .proceeding
            } else if waited.isEmpty {
                state.reason = "waiting for a host to halt: none is registered outside the excluded ones"
            } else if gone.isEmpty {
                state.reason = nil
            } else if gone.count == 1 {
                state.reason = "waiting for \(gone[0]), gone since its lease ended: exclude it with `baton fleet exclude \(gone[0])`"
            } else {
                state.reason = "waiting for \(gone.joined(separator: ", ")), gone since their leases ended: "
                    + "exclude them with `baton fleet exclude \(gone.joined(separator: " "))`"
            }
        case .migrating:
            if let outcome = fleet.outcome {
                if outcome.ok {
                    state.phase = .proceeding
                } else {
                    state.phase = .restoring
                    state.reason = "the migration failed on \(outcome.host): \(outcome.detail)"
                }
            } else if let claimer = fleet.claim, fleet.registered[claimer] == nil {
                state.phase = .restoring
                state.reason = "the migration's host \(claimer) is gone: its outcome is unknown"
            }
        case .proceeding:
            let waited = fleet.registered.keys.filter { !excluded.contains($0) }
            if !waited.isEmpty && waited.allSatisfy({ fleet.isSettled($0, failed: state.failed) }) {
                state.phase = .done
            }
        case .restoring:
            if fleet.registered.keys.filter({ !excluded.contains($0) }).allSatisfy({ fleet.isRestored($0, plan) }) {
                state.phase = .restored
            }
        case .paused, .done, .restored:
            preconditionFailure("final phase \(state.phase) returned above")
        }
        return state
    }

    // MARK: - Helpers

    /// Records hosts not yet recorded; a recorded host keeps its first reason.
    private static func record(_ failures: [String: String], into state: inout State) {
        for (host, why) in failures where state.failed[host] == nil { state.failed[host] = why }
    }

    private static func pause(_ state: State, _ reason: String) -> State {
        var state = state
        state.phase = .paused
        state.reason = reason
        return state
    }

    /// `h1 (why), h2 (why)`.
    private static func describe(_ hosts: [String], _ failed: [String: String]) -> String {
        hosts.map { "\($0) (\(failed[$0] ?? "failed"))" }.joined(separator: ", ")
    }

    private static func sameIgnoringStamp(_ a: State, _ b: State) -> Bool {
        var a = a
        a.updatedAt = b.updatedAt
        a.coordinator = b.coordinator
        return a == b
    }
}
