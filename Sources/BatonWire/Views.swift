/// The JSON bodies of the API, shared by the daemon, the CLI and the agent library.
/// Keys are snake_case on the wire (the encoder converts); times are `Timestamp`s.

public struct AgentView: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable, CaseIterable {
        case stopped, starting, running, handingOff = "handing_off", backoff, rewound, failed
    }

    public struct Instance: Codable, Sendable, Equatable {
        public var id: String
        public var pid: Int32
        public var version: String
        public var state: String
        public var startedAt: Timestamp

        public init(id: String, pid: Int32, version: String, state: String, startedAt: Timestamp) {
            self.id = id; self.pid = pid; self.version = version; self.state = state; self.startedAt = startedAt
        }
    }

    /// One of the agent's listening sockets (`listen`), which batond holds and passes to
    /// every instance.
    public struct Socket: Codable, Sendable, Equatable {
        /// Its name in `LISTEN_FDNAMES`.
        public var name: String
        /// As bound (`tcp://127.0.0.1:8080`, `unix:/run/web.sock`): the port the kernel
        /// picked for a configured port 0; as configured while it is not open.
        public var address: String
        public var open: Bool
        /// Why it is not open.
        public var error: String?

        public init(name: String, address: String, open: Bool, error: String?) {
            self.name = name; self.address = address; self.open = open; self.error = error
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(name, forKey: .name)
            try c.encode(address, forKey: .address)
            try c.encode(open, forKey: .open)
            try c.encode(error, forKey: .error)
        }
    }

    public struct Config: Codable, Sendable, Equatable {
        public var mode: HandoffMode
        /// Empty for an external agent.
        public var command: [String]
        /// batond never starts it: its instances register themselves.
        public var external: Bool
        public var readyTimeoutMs: Int64
        public var stopTimeoutMs: Int64
        public var killTimeoutMs: Int64

        public init(mode: HandoffMode, command: [String], external: Bool = false, readyTimeoutMs: Int64, stopTimeoutMs: Int64,
                    killTimeoutMs: Int64) {
            self.mode = mode; self.command = command; self.external = external; self.readyTimeoutMs = readyTimeoutMs
            self.stopTimeoutMs = stopTimeoutMs; self.killTimeoutMs = killTimeoutMs
        }
    }

    public var name: String
    public var desired: DesiredVersion?
    public var running: RunningVersion?
    public var state: State
    public var instances: [Instance]
    public var lastError: LastError?
    /// batond's verdict on a crash loop, until an operator's desired version or rollback.
    public var rewound: RewoundRelease?
    public var failed: FailedRelease?
    /// Whether the agent is where it was asked to be: `ok`, or `degraded` with why (the
    /// desired version is not the one that works, nothing works, a verdict stands).
    public var condition: Condition
    /// Restarts after an unexpected exit since batond started (not kept across restarts of batond).
    public var restarts: Int
    /// When the next start is due while the agent waits out a restart backoff; nil otherwise.
    public var nextAttemptAt: Timestamp?
    /// The listening sockets batond holds for the agent (empty without `listen`).
    public var sockets: [Socket]
    public var config: Config

    public struct Condition: Codable, Sendable, Equatable {
        public enum Status: String, Codable, Sendable { case ok, degraded }
        public var status: Status
        public var reason: String?
        public init(status: Status, reason: String? = nil) { self.status = status; self.reason = reason }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(status, forKey: .status)
            try c.encode(reason, forKey: .reason)
        }
    }

    public init(name: String, desired: DesiredVersion?, running: RunningVersion?, state: State, instances: [Instance],
                lastError: LastError?, rewound: RewoundRelease?, failed: FailedRelease?, condition: Condition, config: Config,
                restarts: Int = 0, nextAttemptAt: Timestamp? = nil, sockets: [Socket] = []) {
        self.name = name; self.desired = desired; self.running = running; self.state = state; self.instances = instances
        self.lastError = lastError; self.rewound = rewound; self.failed = failed; self.condition = condition; self.config = config
        self.restarts = restarts; self.nextAttemptAt = nextAttemptAt; self.sockets = sockets
    }

    // Optionals encode as null, not absent: the contract lists every field.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(desired, forKey: .desired)
        try c.encode(running, forKey: .running)
        try c.encode(state, forKey: .state)
        try c.encode(instances, forKey: .instances)
        try c.encode(lastError, forKey: .lastError)
        try c.encode(rewound, forKey: .rewound)
        try c.encode(failed, forKey: .failed)
        try c.encode(condition, forKey: .condition)
        try c.encode(restarts, forKey: .restarts)
        try c.encode(nextAttemptAt, forKey: .nextAttemptAt)
        try c.encode(sockets, forKey: .sockets)
        try c.encode(config, forKey: .config)
    }
}

public struct AgentList: Codable, Sendable, Equatable {
    public var agents: [AgentView]
    public init(agents: [AgentView]) { self.agents = agents }
}

public struct StatusView: Codable, Sendable, Equatable {
    public struct Ledger: Codable, Sendable, Equatable {
        public var lastSeq: UInt64
        public var snapshotSeq: UInt64
        public var journalRecords: Int
        public var writable: Bool
        public init(lastSeq: UInt64, snapshotSeq: UInt64, journalRecords: Int, writable: Bool) {
            self.lastSeq = lastSeq; self.snapshotSeq = snapshotSeq; self.journalRecords = journalRecords; self.writable = writable
        }
    }

    public var version: String
    public var pid: Int32
    public var stateDir: String
    public var startedAt: Timestamp
    public var ledger: Ledger
    public var listeners: [String]
    public var agents: [AgentView]
    /// Fleet mode only: this host in its fleet (absent without `[fleet]`).
    public var fleet: FleetSummary?

    public init(version: String, pid: Int32, stateDir: String, startedAt: Timestamp, ledger: Ledger, listeners: [String], agents: [AgentView],
                fleet: FleetSummary? = nil) {
        self.version = version; self.pid = pid; self.stateDir = stateDir; self.startedAt = startedAt
        self.ledger = ledger; self.listeners = listeners; self.agents = agents; self.fleet = fleet
    }
}

/// batond's own version, reported by `/v1/status`, `/metrics` and the ledger.
public enum BatonVersion {
    public static let current = "0.1.0"
}

// MARK: - The instance protocol

/// What an instance may do, level-triggered: it asks with the last one it saw.
public enum AgentSignal: String, Codable, Sendable, CaseIterable, CustomStringConvertible {
    /// Not (yet) allowed to work: starting, or ready and held back.
    case wait
    /// Work.
    case go
    /// Finish the work, report stopped, exit.
    case stop

    public var description: String { rawValue }
}

/// The answer of every instance route: the instance's signal now, and the agent's
/// desired version when it is not the instance's own (null otherwise): an agent that
/// fetches its own release learns there what to fetch and start.
public struct SignalView: Codable, Sendable, Equatable {
    public var instance: String
    public var signal: AgentSignal
    public var handoff: String?
    public var desired: DesiredVersion?

    public init(instance: String, signal: AgentSignal, handoff: String?, desired: DesiredVersion? = nil) {
        self.instance = instance
        self.signal = signal
        self.handoff = handoff
        self.desired = desired
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(instance, forKey: .instance)
        try c.encode(signal, forKey: .signal)
        try c.encode(handoff, forKey: .handoff)
        try c.encode(desired, forKey: .desired)
    }
}

/// `POST /v1/agents/{name}/instances`: a process that batond did not start asks to be
/// an instance of the agent (see docs/agent-protocol.md).
public struct RegistrationRequest: Codable, Sendable, Equatable {
    public var pid: Int32
    public var version: String
    public init(pid: Int32, version: String) { self.pid = pid; self.version = version }
}

/// What a registered process gets: its instance id and token.
public struct Registration: Codable, Sendable, Equatable {
    public var instance: String
    public var token: String
    public var signal: AgentSignal
    public init(instance: String, token: String, signal: AgentSignal) {
        self.instance = instance; self.token = token; self.signal = signal
    }
}

/// The one error shape of every 4xx and 5xx: `{"error": {"code": "...", "message": "..."}}`.
public struct ErrorBody: Codable, Sendable, Equatable {
    public struct Detail: Codable, Sendable, Equatable {
        /// Stable, for scripts (`agent_not_found`, `handoff_in_progress`, ...).
        public var code: String
        /// For people: what happened and, where there is one, what to do.
        public var message: String
        public init(code: String, message: String) { self.code = code; self.message = message }
    }

    public var error: Detail
    public init(code: String, message: String) { self.error = Detail(code: code, message: message) }
}

public struct FailedReport: Codable, Sendable, Equatable {
    public var reason: String
    public init(reason: String) { self.reason = reason }
}

// MARK: - Handoffs

public struct DesiredRequest: Codable, Sendable, Equatable {
    public var version: String
    public var mode: HandoffMode?
    /// Only for an `external` agent, which fetches its own release: where, and its SHA-256.
    public var url: String?
    public var sha256: String?
    /// Hand over even when the version already works (a restart by handoff).
    public var force: Bool?
    public init(version: String, mode: HandoffMode?, url: String? = nil, sha256: String? = nil, force: Bool? = nil) {
        self.version = version
        self.mode = mode
        self.url = url
        self.sha256 = sha256
        self.force = force
    }
}

/// What `PUT /v1/agents/{name}/desired` did.
public enum DesiredAnswer: Sendable, Equatable {
    /// A handoff began (202).
    case handoff(HandoffView)
    /// That version already works: recorded as desired, nothing handed over (200).
    case unchanged(agent: String, version: String)
}

/// The `200` of a desired version that already works.
public struct UnchangedView: Codable, Sendable, Equatable {
    public var agent: String
    public var version: String
    public var unchanged: Bool
    public var message: String
    public init(agent: String, version: String) {
        self.agent = agent
        self.version = version
        self.unchanged = true
        self.message = "\(agent) already runs \(version): nothing to hand over (send \"force\": true to hand over anyway)"
    }
}

/// `POST /v1/agents/{name}/rollback`: `force` rolls back from an irreversible release too.
public struct RollbackRequest: Codable, Sendable, Equatable {
    public var force: Bool?
    public init(force: Bool? = nil) { self.force = force }
}

/// A handoff as the API shows it: `outcome` stays null until it ends.
public struct HandoffView: Codable, Sendable, Equatable {
    public struct Step: Codable, Sendable, Equatable {
        public var phase: String
        public var at: Timestamp
        public init(phase: String, at: Timestamp) { self.phase = phase; self.at = at }
    }

    public var id: String
    public var agent: String
    public var from: String?
    public var to: String
    public var mode: HandoffMode
    public var phase: String
    public var outcome: HandoffOutcome?
    public var error: String?
    public var gapMs: Double?
    public var startedAt: Timestamp
    public var endedAt: Timestamp?
    public var steps: [Step]
    /// Who asked for it (the desired version's `by`), or `batond` for a rewind; null
    /// for handoffs recorded before batond kept it.
    public var by: String?

    public init(id: String, agent: String, from: String?, to: String, mode: HandoffMode, phase: String,
                outcome: HandoffOutcome?, error: String?, gapMs: Double?, startedAt: Timestamp, endedAt: Timestamp?, steps: [Step],
                by: String? = nil) {
        self.id = id; self.agent = agent; self.from = from; self.to = to; self.mode = mode; self.phase = phase
        self.outcome = outcome; self.error = error; self.gapMs = gapMs; self.startedAt = startedAt; self.endedAt = endedAt
        self.steps = steps
        self.by = by
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(agent, forKey: .agent)
        try c.encode(from, forKey: .from)
        try c.encode(to, forKey: .to)
        try c.encode(mode, forKey: .mode)
        try c.encode(phase, forKey: .phase)
        try c.encode(outcome, forKey: .outcome)
        try c.encode(error, forKey: .error)
        try c.encode(gapMs, forKey: .gapMs)
        try c.encode(startedAt, forKey: .startedAt)
        try c.encode(endedAt, forKey: .endedAt)
        try c.encode(steps, forKey: .steps)
        try c.encode(by, forKey: .by)
    }
}

/// `GET /v1/handoffs`: newest first.
public struct HandoffList: Codable, Sendable, Equatable {
    public var handoffs: [HandoffView]
    public init(handoffs: [HandoffView]) { self.handoffs = handoffs }
}

/// `POST /v1/ui/links`: a one-time login link to the status page. `path` is relative to
/// the TCP listener (`http://127.0.0.1:7070` + path); its code is spent by the first
/// visit and expires at `expires_at` (60 s).
public struct UILink: Codable, Sendable, Equatable {
    public var path: String
    public var expiresAt: Timestamp
    public init(path: String, expiresAt: Timestamp) {
        self.path = path
        self.expiresAt = expiresAt
    }
}
