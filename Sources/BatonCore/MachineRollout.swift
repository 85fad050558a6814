/// The machine moving to one version (`PUT /v1/version`): every agent that has that
/// release, one at a time, or all at once behind a barrier. A pure state machine, like
/// `Handoff` and `Supervision`: events go in, actions come out, and the supervisor
/// performs each action only once every `.record` before it is durable.
///
/// Without the barrier, agents are handed over one at a time (parallel handoffs, in
/// name order) and the rollout stops at the first that fails: the rest stay on their
/// versions. With the barrier (a migrating upgrade), every agent is halted first (told
/// stop, then TERM and KILL by its deadlines), the migration runs once while nothing
/// works, then every agent starts at the new version; when the migration fails, the
/// agents start at their previous versions instead.
///
/// Invariants:
/// - the migration runs at most once, and only while every agent is halted;
/// - with the barrier, no agent is started before every agent is halted;
/// - without it, at most one agent is handed over at a time, and none after one failed.
public struct MachineRollout: Sendable, Equatable {
    public enum Phase: String, Sendable, Equatable, Codable, CaseIterable {
        /// Before `begin`.
        case pending
        /// No barrier: agents are handed over one at a time. Next: done, failed.
        case handingOver = "handing_over"
        /// Barrier: every agent is being halted. Next: migrating (or starting, without a
        /// migration command).
        case halting
        /// Barrier: the migration runs. Next: starting, or restoring.
        case migrating
        /// Barrier: the migration succeeded; agents start at the new version. Next: done, failed.
        case starting
        /// Barrier: the migration failed; agents start at their previous versions. Next: restored.
        case restoring
        /// Final: every agent runs the new version.
        case done
        /// Final: an agent could not be handed over or started (see `error`).
        case failed
        /// Final: the migration failed, and the agents were started at their previous
        /// versions (those that could be: see each agent's status).
        case restored

        public var isFinal: Bool {
            switch self {
            case .done, .failed, .restored: true
            case .pending, .handingOver, .halting, .migrating, .starting, .restoring: false
            }
        }
    }

    /// Where one agent is in the rollout.
    public enum AgentStatus: String, Sendable, Equatable, Codable, CaseIterable {
        /// Not begun (no barrier: waiting for its turn).
        case waiting
        /// A handoff to the new version runs (or, restoring, to its previous one).
        case handingOver = "handing_over"
        /// It runs the new version.
        case done
        /// Its handoff failed: it stays where it was (no barrier), or nothing works
        /// (barrier: see the agent's own status).
        case failed
        /// Barrier: told to halt; waiting until no instance of it runs.
        case halting
        case halted
        /// Barrier, migration failed: it runs its previous version again.
        case restored
    }

    public struct Agent: Sendable, Equatable {
        public var name: String
        /// The version it ran (or was to run) when the rollout began; nil: none.
        public var from: String?
        public var status: AgentStatus
        public var error: String?

        public init(name: String, from: String?, status: AgentStatus = .waiting, error: String? = nil) {
            self.name = name; self.from = from; self.status = status; self.error = error
        }
    }

    public enum Event: Sendable, Equatable {
        case begin
        /// batond started again in the middle: ask again what was asked and not answered
        /// (a halt, the next agent's turn). A migration that was running has an unknown
        /// outcome: it counts as failed, and the previous versions start.
        case resume
        /// The handoff the rollout asked of `agent` ended: committed, or not (`error`).
        case handedOver(String, committed: Bool, error: String?)
        /// No instance of `agent` runs any more.
        case halted(String)
        /// The migration ended: exit 0 (`ok`), or failed, timed out or could not start
        /// (`detail` says which, with the output's tail).
        case migrated(ok: Bool, detail: String)
    }

    /// What the ledger must hold before the effects after it.
    public enum Note: Sendable, Equatable {
        case phase(Phase)
        case agent(String, AgentStatus, error: String?)
        case migration(ok: Bool, detail: String)
        case ended(Phase, error: String?)
    }

    public enum Action: Sendable, Equatable {
        case record(Note)
        /// A parallel handoff of `agent` to `version` (the supervisor answers `.handedOver`).
        case handOver(String, to: String)
        /// Stop every instance of `agent` and start none until it is handed over again
        /// (the supervisor answers `.halted`).
        case halt(String)
        /// Run the migration once (the supervisor answers `.migrated`).
        case runMigration([String])
    }

    public let version: String
    public let barrier: Bool
    /// The argv of the migration (barrier only); nil: there is none to run.
    public let migration: [String]?
    public private(set) var phase: Phase
    public private(set) var agents: [Agent]
    public private(set) var error: String?
    private var out: [Action] = []

    /// A rollout of `agents` (those that have the release) to `version`.
    public init(version: String, barrier: Bool, migration: [String]?, agents: [Agent]) {
        self.version = version
        self.barrier = barrier
        self.migration = migration
        self.phase = .pending
        self.agents = agents.sorted { $0.name < $1.name }
    }

    /// A rollout the ledger shows in progress, where it was (a batond restarted in the
    /// middle takes it up: see `resume`).
    public init(version: String, barrier: Bool, migration: [String]?, agents: [Agent], resumingAt phase: Phase) {
        self.init(version: version, barrier: barrier, migration: migration, agents: agents)
        self.phase = phase
    }

    public var isFinished: Bool { phase.isFinal }

    public mutating func handle(_ event: Event) -> [Action] {
        out = []
        defer { out = [] }
        step(event)
        return out
    }

    /// The table: every phase × event, grouped by event.
    private mutating func step(_ event: Event) {
        switch (phase, event) {
        // MARK: begin
        case (.pending, .begin):
            if barrier {
                enter(.halting)
                for index in agents.indices { set(index, .halting) }
                for agent in agents { out.append(.halt(agent.name)) }
                afterHalt()
            } else {
                enter(.handingOver)
                // Those already on the version need nothing.
                for index in agents.indices where agents[index].from == version { set(index, .done) }
                next()
            }
        case (.handingOver, .begin), (.halting, .begin), (.migrating, .begin), (.starting, .begin), (.restoring, .begin),
             (.done, .begin), (.failed, .begin), (.restored, .begin):
            break // begins once

        // MARK: resume
        case (.handingOver, .resume):
            // The agent whose handoff ran is awaited by the shell; none: the next one's turn.
            if !agents.contains(where: { $0.status == .handingOver }) { next() }
        case (.halting, .resume):
            for agent in agents where agent.status == .halting { out.append(.halt(agent.name)) }
            afterHalt()
        case (.migrating, .resume):
            step(.migrated(ok: false, detail: "batond stopped while the migration ran: its outcome is unknown"))
        case (.starting, .resume), (.restoring, .resume):
            break // the shell awaits (or asks again) each agent still handing over
        case (.pending, .resume), (.done, .resume), (.failed, .resume), (.restored, .resume):
            break // nothing in flight

        // MARK: handedOver
        case (.handingOver, .handedOver(let name, let committed, let error)):
            guard let index = index(name, .handingOver) else { return }
            if committed {
                set(index, .done)
                next()
            } else {
                set(index, .failed, error: error)
                let rest = agents.filter { $0.status == .waiting }.map(\.name)
                finish(.failed, error: "\(name): \(error ?? "the handoff failed")"
                    + (rest.isEmpty ? "" : "; not begun, still on their versions: \(rest.joined(separator: ", "))"))
            }
        case (.starting, .handedOver(let name, let committed, let error)):
            guard let index = index(name, .handingOver) else { return }
            set(index, committed ? .done : .failed, error: committed ? nil : error)
            if agents.allSatisfy({ $0.status != .handingOver }) {
                let failed = agents.filter { $0.status == .failed }
                if failed.isEmpty {
                    finish(.done, error: nil)
                } else {
                    finish(.failed, error: "did not start at \(version): "
                        + failed.map { "\($0.name) (\($0.error ?? "failed"))" }.joined(separator: ", "))
                }
            }
        case (.restoring, .handedOver(let name, let committed, let error)):
            guard let index = index(name, .handingOver) else { return }
            set(index, committed ? .restored : .failed, error: committed ? nil : error)
            if agents.allSatisfy({ $0.status != .handingOver }) { finish(.restored, error: self.error) }
        case (.pending, .handedOver), (.halting, .handedOver), (.migrating, .handedOver), (.done, .handedOver),
             (.failed, .handedOver), (.restored, .handedOver):
            break // nothing was asked of it now

        // MARK: halted
        case (.halting, .halted(let name)):
            guard let index = index(name, .halting) else { return }
            set(index, .halted)
            afterHalt()
        case (.pending, .halted), (.handingOver, .halted), (.migrating, .halted), (.starting, .halted), (.restoring, .halted),
             (.done, .halted), (.failed, .halted), (.restored, .halted):
            break // not waited for

        // MARK: migrated
        case (.migrating, .migrated(let ok, let detail)):
            out.append(.record(.migration(ok: ok, detail: detail)))
            if ok {
                start()
            } else {
                error = "the migration failed: \(detail)"
                enter(.restoring)
                for index in agents.indices {
                    if let from = agents[index].from {
                        set(index, .handingOver)
                        out.append(.handOver(agents[index].name, to: from))
                    } else {
                        set(index, .failed, error: "it ran no version before")
                    }
                }
                if agents.allSatisfy({ $0.status != .handingOver }) { finish(.restored, error: error) }
            }
        case (.pending, .migrated), (.handingOver, .migrated), (.halting, .migrated), (.starting, .migrated),
             (.restoring, .migrated), (.done, .migrated), (.failed, .migrated), (.restored, .migrated):
            break // no migration runs
        }
    }

    // MARK: - Steps

    /// No barrier: the next agent's turn, or the end.
    private mutating func next() {
        guard let index = agents.firstIndex(where: { $0.status == .waiting }) else {
            return finish(.done, error: nil)
        }
        set(index, .handingOver)
        out.append(.handOver(agents[index].name, to: version))
    }

    /// Barrier: once every agent is halted, the migration runs (or, without one, the
    /// agents start).
    private mutating func afterHalt() {
        guard agents.allSatisfy({ $0.status == .halted }) else { return }
        if let migration {
            enter(.migrating)
            out.append(.runMigration(migration))
        } else {
            start()
        }
    }

    private mutating func start() {
        enter(.starting)
        for index in agents.indices {
            set(index, .handingOver)
            out.append(.handOver(agents[index].name, to: version))
        }
        if agents.isEmpty { finish(.done, error: nil) }
    }

    private mutating func finish(_ outcome: Phase, error: String?) {
        phase = outcome
        self.error = error
        out.append(.record(.ended(outcome, error: error)))
    }

    private mutating func enter(_ phase: Phase) {
        self.phase = phase
        out.append(.record(.phase(phase)))
    }

    private mutating func set(_ index: Int, _ status: AgentStatus, error: String? = nil) {
        agents[index].status = status
        agents[index].error = error
        out.append(.record(.agent(agents[index].name, status, error: error)))
    }

    private func index(_ name: String, _ status: AgentStatus) -> Int? {
        agents.firstIndex { $0.name == name && $0.status == status }
    }
}
