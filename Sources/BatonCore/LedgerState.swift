/// What the ledger knows, folded from its records: the answer to "for every agent,
/// desired and running versions with times, the handoff in progress and its phase, the
/// last error, and the history". Pure: `apply` is the only way it changes, so a
/// snapshot plus the journal after it always rebuilds the same state.
public struct LedgerState: Codable, Sendable, Equatable {
    /// The sequence number of the last record applied (0 for an empty ledger).
    public var lastSeq: UInt64 = 0
    public var daemon = DaemonHistory()
    public var agents: [String: AgentLedger] = [:]
    /// The machine's version and its rollouts (absent from snapshots written before them).
    public var machine: MachineLedger?

    /// How many finished handoffs each agent keeps in its history.
    public static let historyLimit = 100

    public init() {}

    public struct DaemonHistory: Codable, Sendable, Equatable {
        public var starts = 0
        public var cleanStops = 0
        public var lastStartedAt: Timestamp?
        public var lastStoppedAt: Timestamp?
        /// batond's own upgrades (absent from snapshots written before they existed).
        public var upgrades: DaemonUpgrades?
    }

    public mutating func apply(_ record: Record) {
        precondition(record.seq > lastSeq, "record \(record.seq) applied after \(lastSeq)")
        lastSeq = record.seq
        let at = record.time
        switch record.event {
        case .daemonStarted:
            daemon.starts += 1
            daemon.lastStartedAt = at
        case .daemonStopped:
            daemon.cleanStops += 1
            daemon.lastStoppedAt = at
        case .agentDesired(let e):
            agents[e.agent, default: AgentLedger()].desired =
                .init(version: e.version, mode: e.mode, setAt: at, setBy: e.by, sha256: e.sha256, url: e.url)
            // An operator acted: supervision's verdict on a crash loop no longer stands.
            agents[e.agent]?.rewound = nil
            agents[e.agent]?.failed = nil
        case .handoffBegan(let e):
            agents[e.agent, default: AgentLedger()].handoffsBegun += 1
            agents[e.agent, default: AgentLedger()].handoff =
                .init(id: e.handoff, from: e.from, to: e.to, mode: e.mode, phase: "began", startedAt: at, by: e.by)
        case .handoffPhase(let e):
            if agents[e.agent]?.handoff?.id == e.handoff { agents[e.agent]?.handoff?.phase = e.phase }
        case .handoffEnded(let e):
            var agent = agents[e.agent, default: AgentLedger()]
            if let active = agent.handoff, active.id == e.handoff {
                agent.history.append(.init(id: active.id, from: active.from, to: active.to, mode: active.mode,
                                           startedAt: active.startedAt, endedAt: at, outcome: e.outcome,
                                           gapMs: e.gapMs, error: e.error, by: active.by))
                if agent.history.count > Self.historyLimit { agent.history.removeFirst(agent.history.count - Self.historyLimit) }
                if e.outcome == .committed { agent.running = .init(version: active.to, since: at) }
                agent.handoff = nil
            }
            agents[e.agent] = agent
        case .instanceSpawned(let e):
            agents[e.agent, default: AgentLedger()].spawns += 1
            agents[e.agent, default: AgentLedger()].instances[e.instance] =
                .init(id: e.instance, version: e.version, pid: e.pid, startTime: e.startTime, startedAt: at, state: .spawned,
                      handoff: e.handoff, role: e.role, tokenDigest: e.tokenDigest, registered: e.registered ?? false)
        case .instanceSignal(let e):
            agents[e.agent]?.instances[e.instance]?.signal = e.signal
            if e.signal == .go { agents[e.agent]?.instances[e.instance]?.heldGo = true }
        case .instanceReady(let e):
            agents[e.agent]?.instances[e.instance]?.state = .ready
        case .instanceStopped(let e):
            agents[e.agent]?.instances[e.instance]?.state = .stopped
        case .instanceExited(let e):
            agents[e.agent]?.instances[e.instance] = nil
        case .agentError(let e):
            agents[e.agent, default: AgentLedger()].lastError =
                .init(reason: e.reason, at: at, stderrTail: e.stderrTail, handoff: e.handoff)
        case .releaseCurrent(let e):
            agents[e.agent, default: AgentLedger()].current = e.version
            agents[e.agent, default: AgentLedger()].previous = e.previous
        case .agentRewound(let e):
            agents[e.agent, default: AgentLedger()].rewound =
                .init(from: e.from, to: e.to, reason: e.reason, at: at, exits: e.exits, windowMs: e.windowMs)
        case .agentFailed(let e):
            agents[e.agent, default: AgentLedger()].failed = .init(version: e.version, reason: e.reason, at: at)
        case .releaseStored(let e):
            agents[e.agent, default: AgentLedger()].stored[e.version] = e.sha256
        case .releaseDeleted(let e):
            agents[e.agent]?.stored[e.version] = nil
        case .releaseFetchFailed:
            break // history only
        case .rolloutBegan(let e):
            var machine = self.machine ?? MachineLedger()
            machine.rollouts += 1
            machine.rollout = ActiveRollout(
                id: e.rollout, version: e.version, barrier: e.barrier, migration: e.migration, phase: .pending,
                agents: e.agents.map { .init(name: $0.agent, from: $0.from) }, startedAt: at, by: e.by)
            self.machine = machine
        case .rolloutStep(let e):
            guard var rollout = machine?.rollout, rollout.id == e.rollout else { break }
            if let phase = e.phase { rollout.phase = phase }
            if let agent = e.agent, let status = e.status, let index = rollout.agents.firstIndex(where: { $0.name == agent }) {
                rollout.agents[index].status = status
                rollout.agents[index].error = e.error
            }
            if let ok = e.migrationSucceeded { rollout.migrationSucceeded = ok; rollout.migrationDetail = e.migration }
            machine?.rollout = rollout
        case .rolloutEnded(let e):
            guard var machine, let rollout = machine.rollout, rollout.id == e.rollout else { break }
            if e.outcome == .done { machine.version = rollout.version }
            machine.lastError = e.error.map { LastError(reason: $0, at: at, stderrTail: "", handoff: nil) } ?? machine.lastError
            machine.history.append(.init(id: rollout.id, version: rollout.version, barrier: rollout.barrier,
                                         startedAt: rollout.startedAt, endedAt: at, outcome: e.outcome, error: e.error,
                                         by: rollout.by))
            if machine.history.count > MachineLedger.historyLimit {
                machine.history.removeFirst(machine.history.count - MachineLedger.historyLimit)
            }
            machine.rollout = nil
            self.machine = machine
        case .daemonUpgradeBegan, .daemonUpgraded, .daemonUpgradeFailed:
            var upgrades = daemon.upgrades ?? DaemonUpgrades()
            upgrades.apply(record.event, at: at)
            daemon.upgrades = upgrades
        case .ledgerCut, .unknown:
            break
        }
    }
}

/// The machine as the ledger knows it: the version it was last moved to whole, and the
/// rollout in progress (its version is the pending one).
public struct MachineLedger: Codable, Sendable, Equatable {
    public var version: String?
    public var rollout: ActiveRollout?
    public var lastError: LastError?
    public var history: [RolloutSummary] = []
    /// Rollouts begun so far: the next one is `machine-<rollouts + 1>`.
    public var rollouts = 0

    public static let historyLimit = 20
    public init() {}
}

/// `GET /v1/version`: the machine's version, the rollout that makes another one pending,
/// and the rollouts before.
public struct MachineVersionView: Codable, Sendable, Equatable {
    public var version: String?
    public var pending: ActiveRollout?
    public var lastError: LastError?
    public var history: [RolloutSummary]

    public init(version: String?, pending: ActiveRollout?, lastError: LastError?, history: [RolloutSummary]) {
        self.version = version; self.pending = pending; self.lastError = lastError; self.history = history
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(version, forKey: .version)
        try c.encode(pending, forKey: .pending)
        try c.encode(lastError, forKey: .lastError)
        try c.encode(history, forKey: .history)
    }
}

public struct ActiveRollout: Codable, Sendable, Equatable {
    public struct Agent: Codable, Sendable, Equatable {
        public var name: String
        public var from: String?
        public var status: MachineRollout.AgentStatus = .waiting
        public var error: String?
    }
    public var id: String
    public var version: String
    public var barrier: Bool
    public var migration: [String]?
    public var phase: MachineRollout.Phase
    public var agents: [Agent]
    public var startedAt: Timestamp
    public var by: String
    public var migrationSucceeded: Bool?
    public var migrationDetail: String?
}

public struct RolloutSummary: Codable, Sendable, Equatable {
    public var id: String
    public var version: String
    public var barrier: Bool
    public var startedAt: Timestamp
    public var endedAt: Timestamp
    public var outcome: MachineRollout.Phase
    public var error: String?
    /// Who asked for it (absent from snapshots written before it was kept).
    public var by: String?
}

/// One agent as the ledger knows it. `desired` is what was asked; `running` and
/// `instances` are what was observed: they are kept apart on purpose.
public struct AgentLedger: Codable, Sendable, Equatable {
    public var desired: DesiredVersion?
    public var running: RunningVersion?
    /// The release `releases/<agent>/current` points at, and the one before it.
    public var current: String?
    public var previous: String?
    public var lastError: LastError?
    /// Supervision's verdict on a crash loop, until the next desired version (absent from
    /// snapshots written before they existed).
    public var rewound: RewoundRelease?
    public var failed: FailedRelease?
    public var handoff: ActiveHandoff?
    public var history: [HandoffSummary] = []
    public var instances: [String: InstanceLedger] = [:]
    /// The releases batond stored (pushed or fetched) and has not removed: version to
    /// SHA-256. Absent from snapshots written before releases were recorded.
    public var releases: [String: String]?
    /// Processes spawned so far: the next instance is `<agent>.<spawns + 1>`.
    public var spawns = 0
    /// Handoffs begun so far: the next one is `<agent>-<handoffsBegun + 1>`.
    public var handoffsBegun = 0

    public init() {}

    /// `releases`, empty when absent.
    public var stored: [String: String] {
        get { releases ?? [:] }
        set { releases = newValue.isEmpty ? nil : newValue }
    }
}

public struct ActiveHandoff: Codable, Sendable, Equatable {
    public var id: String
    public var from: String?
    public var to: String
    public var mode: HandoffMode
    public var phase: String
    public var startedAt: Timestamp
    public var by: String?
}

public struct HandoffSummary: Codable, Sendable, Equatable {
    public var id: String
    public var from: String?
    public var to: String
    public var mode: HandoffMode
    public var startedAt: Timestamp
    public var endedAt: Timestamp
    public var outcome: HandoffOutcome
    public var gapMs: Double?
    public var error: String?
    public var by: String?
}

public struct InstanceLedger: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable {
        case spawned, ready, stopped
    }
    public var id: String
    public var version: String
    public var pid: Int32
    public var startTime: UInt64
    public var startedAt: Timestamp
    public var state: State
    /// The handoff that started it, and its part in it (`successor`, `previous`).
    public var handoff: String?
    public var role: String?
    public var tokenDigest: String?
    public var registered: Bool
    /// The last signal recorded for it.
    public var signal: AgentSignal
    /// Whether it was ever told go: told stop since, it may still be working.
    public var heldGo: Bool

    public init(id: String, version: String, pid: Int32, startTime: UInt64, startedAt: Timestamp, state: State,
                handoff: String? = nil, role: String? = nil, tokenDigest: String? = nil, registered: Bool = false,
                signal: AgentSignal = .wait, heldGo: Bool = false) {
        self.id = id; self.version = version; self.pid = pid; self.startTime = startTime; self.startedAt = startedAt
        self.state = state; self.handoff = handoff; self.role = role; self.tokenDigest = tokenDigest
        self.registered = registered; self.signal = signal; self.heldGo = heldGo
    }

    // Snapshots written before these fields existed still load.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(String.self, forKey: .id)
        version = try c.decode(String.self, forKey: .version)
        pid = try c.decode(Int32.self, forKey: .pid)
        startTime = try c.decode(UInt64.self, forKey: .startTime)
        startedAt = try c.decode(Timestamp.self, forKey: .startedAt)
        state = try c.decode(State.self, forKey: .state)
        handoff = try c.decodeIfPresent(String.self, forKey: .handoff)
        role = try c.decodeIfPresent(String.self, forKey: .role)
        tokenDigest = try c.decodeIfPresent(String.self, forKey: .tokenDigest)
        registered = try c.decodeIfPresent(Bool.self, forKey: .registered) ?? false
        signal = try c.decodeIfPresent(AgentSignal.self, forKey: .signal) ?? .wait
        // Written before it was kept: one in go, or told stop (perhaps after go), may
        // still work, so go waits for it.
        heldGo = try c.decodeIfPresent(Bool.self, forKey: .heldGo) ?? (signal != .wait)
    }
}
