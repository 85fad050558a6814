import BatonConfig
import BatonCore
import BatonLedger
import BatonReleases
import Foundation
import Logging

/// Why `PUT /v1/version` is refused.
public enum RolloutRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    case invalidVersion(String)
    /// No agent has a release of that version.
    case noRelease(String)
    case inProgress(id: String, version: String)
    case ledger(String)

    public var description: String {
        switch self {
        case .invalidVersion(let version): "\"\(version)\" is not a valid version"
        case .noRelease(let version): "no agent has a release \(version): push or fetch it first"
        case .inProgress(let id, let version): "rollout \(id) to \(version) is in progress; wait for it to end (GET /v1/version)"
        case .ledger(let reason): "the ledger cannot record it (\(reason)); nothing was done"
        }
    }
}

/// The shell of `MachineRollout`: performs its actions through the supervisor (handoffs,
/// halts), runs the migrations, and records every step before what follows from it.
/// One rollout at a time; a batond restarted in the middle takes it up again from the
/// ledger (`boot`).
public actor Rollouts {
    /// A migration to run: an agent's, in its release's directory, as its user.
    struct Migration: Sendable {
        var agent: AgentConfig
        var argv: [String]
        var directory: String
    }

    let supervisor: Supervisor
    let ledger: Ledger
    let agents: [AgentConfig]
    let logDirectory: String
    let logger: Logger
    private var machine: MachineRollout?
    private var id: String?
    private var by = ""
    private var migrations: [Migration] = []
    /// A `begin` waits for its record: the actor may take another request meanwhile.
    private var beginning: String?
    /// A fleet's barrier (fleet mode): once every agent here is halted, the rollout waits
    /// for the fleet instead of running its migrations itself; the hook gets them, to run
    /// if this host is the one that claims the fleet's migration, and answers its outcome.
    public typealias FleetBarrier = @Sendable (_ hasMigration: Bool, _ runMigrations: @escaping @Sendable () async -> (ok: Bool, detail: String))
        async -> (ok: Bool, detail: String)
    private var fleetBarrier: FleetBarrier?
    /// A fleet's barrier rollout taken up after a restart waits here for the fleet member
    /// to give its hook again (`rejoinFleetBarrier`): it never decides alone.
    private var fleetBarrierWaiters: [CheckedContinuation<FleetBarrier, Never>] = []

    /// Those waiting for a rollout's end (`awaitEnd`), by rollout id.
    private var endWaiters: [String: [CheckedContinuation<RolloutSummary?, Never>]] = [:]

    public init(supervisor: Supervisor, ledger: Ledger, agents: [AgentConfig], logDirectory: String, logger: Logger) {
        self.supervisor = supervisor
        self.ledger = ledger
        self.agents = agents
        self.logDirectory = logDirectory
        self.logger = logger
    }

    var store: ReleaseStore { supervisor.releases.store }

    public nonisolated var view: MachineVersionView {
        let machine = ledger.state.machine
        return MachineVersionView(version: machine?.version, pending: machine?.rollout, lastError: machine?.lastError,
                                  history: machine?.history ?? [])
    }

    /// A barrier migration runs, or the barrier has the agents down: `/readyz` says so.
    public nonisolated var barrierReason: String? {
        guard let rollout = ledger.state.machine?.rollout, rollout.barrier else { return nil }
        switch rollout.phase {
        case .halting, .migrating, .starting, .restoring:
            return "a barrier upgrade to \(rollout.version) (\(rollout.id)) is \(rollout.phase.rawValue.replacingOccurrences(of: "_", with: " ")): agents do not work until it ends"
        case .pending, .handingOver, .done, .failed, .restored:
            return nil
        }
    }

    // MARK: - Begin

    /// `PUT /v1/version`: records the rollout (the version is pending from here on) and
    /// begins it; answers once that record is durable.
    public func begin(version: String, barrier: Bool, by: String, fleetBarrier: FleetBarrier? = nil)
        async throws(RolloutRefusal) -> MachineVersionView {
        guard Names.isValidVersion(version) else { throw .invalidVersion(version) }
        if let machine, !machine.isFinished, let id { throw .inProgress(id: id, version: machine.version) }
        if let beginning { throw .inProgress(id: "(being recorded)", version: beginning) }
        let state = ledger.state
        if let active = state.machine?.rollout { throw .inProgress(id: active.id, version: active.version) }
        // Agents batond does not start (external) fetch and start their releases themselves.
        let chosen = agents.filter { !$0.external && store.exists(agent: $0.name, version: version) }
        guard !chosen.isEmpty else { throw .noRelease(version) }
        let id = "machine-\((state.machine?.rollouts ?? 0) + 1)"
        // Where each agent is: the version its working instance runs, else the last
        // committed one, else the release `current` names (a start without a handoff).
        let planned = chosen.map { agent in
            let working = supervisor.registry.instances(of: agent.name).first { $0.signal == .go }?.version
            return MachineRollout.Agent(name: agent.name, from: working ?? state.agents[agent.name]?.running?.version
                                            ?? store.current(agent: agent.name))
        }
        let migrations = barrier ? chosen.compactMap { migration(of: $0, version: version) } : []
        let display = migrations.isEmpty ? nil : migrations.flatMap { [$0.agent.name + ":"] + $0.argv }
        beginning = version
        defer { beginning = nil }
        do throws(LedgerError) {
            _ = try await ledger.append(.rolloutBegan(.init(rollout: id, version: version, barrier: barrier, migration: display,
                                                            agents: planned.map { .init(agent: $0.name, from: $0.from) }, by: by)))
        } catch {
            throw .ledger(error.description)
        }
        self.id = id
        self.by = by
        self.migrations = migrations
        self.fleetBarrier = barrier ? fleetBarrier : nil
        supervisor.hold(planned.map(\.name), for: id)
        // Under a fleet's barrier the rollout always waits at the migration step: for the
        // fleet's migration, wherever it runs.
        machine = MachineRollout(version: version, barrier: barrier,
                                 migration: migrations.isEmpty && self.fleetBarrier == nil ? nil : ["migrate"], agents: planned)
        logger.notice("rollout began", metadata: ["rollout": "\(id)", "version": "\(version)", "barrier": "\(barrier)",
                                                  "agents": "\(planned.map(\.name).joined(separator: ","))", "by": "\(by)"])
        await feed(.begin)
        return view
    }

    /// Waits until rollout `id` ends, and answers how (nil: the ledger no longer has it,
    /// or it is not this batond's to end: another batond started after).
    public func awaitEnd(_ id: String) async -> RolloutSummary? {
        if ledger.state.machine?.rollout?.id != id || self.id != id || machine?.isFinished != false {
            return ledger.state.machine?.history.last { $0.id == id }
        }
        return await withCheckedContinuation { endWaiters[id, default: []].append($0) }
    }

    // MARK: - Resume

    /// batond started again in the middle of a rollout (after its agents re-adopted):
    /// takes it up where the ledger has it. An agent whose handoff was in flight is
    /// awaited; one whose handoff ended meanwhile is answered from the ledger's history;
    /// one asked but never begun is asked again. A migration that was running counts as
    /// failed (`MachineRollout.resume`): it never runs twice.
    public func resume() async {
        let state = ledger.state
        guard let active = state.machine?.rollout else { return }
        id = active.id
        by = active.by
        migrations = active.barrier ? agents.filter { agent in active.agents.contains { $0.name == agent.name } }
            .compactMap { migration(of: $0, version: active.version) } : []
        let planned = active.agents.map { MachineRollout.Agent(name: $0.name, from: $0.from, status: $0.status, error: $0.error) }
        supervisor.hold(planned.map(\.name), for: active.id)
        logger.notice("taking up a rollout left in progress", metadata: ["rollout": "\(active.id)", "phase": "\(active.phase.rawValue)"])
        // A fleet's barrier always waits at the migration step: for the fleet's decision.
        let fleet = active.barrier && FleetPlan.isRolloutBy(active.by)
        machine = MachineRollout(version: active.version, barrier: active.barrier,
                                 migration: migrations.isEmpty && !fleet ? nil : ["migrate"], agents: planned, resumingAt: active.phase)
        guard active.phase != .pending else { return await feed(.begin) }
        if fleet && active.phase == .migrating {
            // Halted at the fleet's barrier when batond stopped: wait there again. Whether
            // the fleet proceeds or restores is the fleet's to say, never this host's alone
            // (its agents stay halted meanwhile); a migration this host had claimed is not
            // run again (the fleet member reports its outcome unknown).
            return waitAtFleetBarrier()
        }
        for agent in planned where agent.status == .handingOver {
            let target = active.phase == .restoring ? (agent.from ?? active.version) : active.version
            let recorded = state.agents[agent.name]
            if let handoff = recorded?.handoff, handoff.to == target {
                Task { [supervisor] in
                    let (committed, error) = await supervisor.ended(handoff.id)
                    await self.feed(.handedOver(agent.name, committed: committed, error: error))
                }
            } else if let last = recorded?.history.last, last.to == target, last.startedAt >= active.startedAt {
                await feed(.handedOver(agent.name, committed: last.outcome == .committed,
                                       error: last.outcome == .committed ? nil : last.error ?? last.outcome.rawValue))
            } else {
                let by = "rollout \(active.id) (\(active.by))"
                Task { [supervisor] in
                    let (committed, error) = await supervisor.handOver(agent: agent.name, to: target, by: by)
                    await self.feed(.handedOver(agent.name, committed: committed, error: error))
                }
            }
        }
        await feed(.resume)
    }

    /// The agent's migration for `version`: its release's own (`release.json`), else its
    /// config's; `{release}` expands to the release's directory.
    func migration(of agent: AgentConfig, version: String) -> Migration? {
        guard let directory = store.directory(agent: agent.name, version: version) else { return nil }
        guard let argv = store.release(agent: agent.name, version: version)?.migration ?? agent.migration, !argv.isEmpty else { return nil }
        return Migration(agent: agent, argv: argv.map { $0.replacingOccurrences(of: "{release}", with: directory) },
                         directory: directory)
    }

    // MARK: - The machine

    private func feed(_ event: MachineRollout.Event) async {
        guard var machine, let id else { return }
        let actions = machine.handle(event)
        self.machine = machine
        for action in actions {
            switch action {
            case .record(let note):
                let event: LedgerEvent = switch note {
                case .phase(let phase): .rolloutStep(.init(rollout: id, phase: phase))
                case .agent(let agent, let status, let error): .rolloutStep(.init(rollout: id, agent: agent, status: status, error: error))
                case .migration(let ok, let detail): .rolloutStep(.init(rollout: id, migrationSucceeded: ok, migration: detail))
                case .ended(let outcome, let error): .rolloutEnded(.init(rollout: id, outcome: outcome, error: error))
                }
                do throws(LedgerError) {
                    _ = try await ledger.append(event)
                } catch {
                    // Nothing after an unrecorded step happens: the rollout stays where the
                    // ledger has it, and the next batond takes it up from there.
                    logger.error("a rollout step could not be recorded; the rollout waits", metadata: ["rollout": "\(id)", "error": "\(error)"])
                    return
                }
                if case .ended(let outcome, let error) = note {
                    supervisor.release(id)
                    fleetBarrier = nil
                    let summary = ledger.state.machine?.history.last { $0.id == id }
                    for waiter in endWaiters.removeValue(forKey: id) ?? [] { waiter.resume(returning: summary) }
                    logger.notice("rollout ended", metadata: ["rollout": "\(id)", "outcome": "\(outcome.rawValue)",
                                                              "error": "\(error ?? "")"])
                }
            case .handOver(let agent, let version):
                let by = "rollout \(id) (\(self.by))"
                Task { [supervisor] in
                    let (committed, error) = await supervisor.handOver(agent: agent, to: version, by: by)
                    await self.feed(.handedOver(agent, committed: committed, error: error))
                }
            case .halt(let agent):
                Task { [supervisor, logger] in
                    if let refusal = await supervisor.halt(agent: agent) {
                        // batond stops, or the ledger cannot write: the next batond takes it up.
                        logger.warning("an agent could not be halted; the rollout waits", metadata: ["agent": "\(agent)", "error": "\(refusal)"])
                        return
                    }
                    await self.feed(.halted(agent))
                }
            case .runMigration:
                if fleetBarrier != nil || FleetPlan.isRolloutBy(by) {
                    waitAtFleetBarrier()
                } else {
                    let migrations = self.migrations
                    Task {
                        let (ok, detail) = await self.run(migrations)
                        await self.feed(.migrated(ok: ok, detail: detail))
                    }
                }
            }
        }
    }

    /// Every agent here is halted for a fleet's barrier: the fleet's hook (given at begin,
    /// or again by the fleet member after a restart) says when the agents start, and at
    /// which versions.
    private func waitAtFleetBarrier() {
        let migrations = self.migrations
        let given = fleetBarrier
        Task {
            let hook: FleetBarrier
            if let given { hook = given } else { hook = await withCheckedContinuation { self.fleetBarrierWaiters.append($0) } }
            let (ok, detail) = await hook(!migrations.isEmpty) { await self.run(migrations) }
            await self.feed(.migrated(ok: ok, detail: detail))
        }
    }

    /// The fleet member takes up rollout `id` after a restart: its barrier hook again.
    public func rejoinFleetBarrier(_ id: String, _ hook: @escaping FleetBarrier) {
        guard self.id == id, machine?.isFinished == false else { return }
        fleetBarrier = hook
        for waiter in fleetBarrierWaiters { waiter.resume(returning: hook) }
        fleetBarrierWaiters = []
    }

    /// Runs each migration once, in agent order, each within its deadline; the first
    /// that fails ends the run. Output goes to `<logs>/<rollout>.<agent>.migration.log`.
    private func run(_ migrations: [Migration]) async -> (ok: Bool, detail: String) {
        var details: [String] = []
        for migration in migrations {
            let log = "\(logDirectory)/\(id ?? "rollout").\(migration.agent.name).migration.log"
            logger.notice("migration runs", metadata: ["agent": "\(migration.agent.name)", "argv": "\(migration.argv)", "log": "\(log)"])
            let result = await Processes.runMigration(migration.argv, agent: migration.agent, version: machine?.version ?? "",
                                                      directory: migration.directory, timeout: migration.agent.migrationTimeout, log: log)
            let summary = "\(migration.agent.name): \(result.reason)"
            logger.notice("migration ended", metadata: ["agent": "\(migration.agent.name)", "result": "\(result.reason)"])
            guard result.passed else { return (false, summary) }
            details.append(summary)
        }
        return (true, details.joined(separator: "; "))
    }
}
