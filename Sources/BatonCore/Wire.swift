/// The JSON bodies of the API, shared by the daemon, the CLI and the agent library.
/// Keys are snake_case on the wire (the encoder converts); times are `Timestamp`s.

public struct AgentView: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable {
        case stopped, starting, running, handingOff = "handing_off", backoff, failed
    }

    public struct Instance: Codable, Sendable, Equatable {
        public var id: String
        public var pid: Int32
        public var version: String
        public var state: String
        public var startedAt: Timestamp
    }

    public struct Config: Codable, Sendable, Equatable {
        public var mode: HandoffMode
        public var command: [String]
        public var readyTimeoutMs: Int64
        public var stopTimeoutMs: Int64
        public var killTimeoutMs: Int64

        public init(mode: HandoffMode, command: [String], readyTimeoutMs: Int64, stopTimeoutMs: Int64, killTimeoutMs: Int64) {
            self.mode = mode; self.command = command; self.readyTimeoutMs = readyTimeoutMs
            self.stopTimeoutMs = stopTimeoutMs; self.killTimeoutMs = killTimeoutMs
        }
    }

    public var name: String
    public var desired: DesiredVersion?
    public var running: RunningVersion?
    public var state: State
    public var instances: [Instance]
    public var lastError: LastError?
    public var config: Config

    /// The view of a configured agent, from what the ledger knows of it.
    public init(name: String, ledger: AgentLedger?, config: Config) {
        self.name = name
        self.desired = ledger?.desired
        self.running = ledger?.running
        self.lastError = ledger?.lastError
        self.instances = (ledger?.instances.values.sorted { $0.id < $1.id } ?? []).map {
            Instance(id: $0.id, pid: $0.pid, version: $0.version, state: $0.state.rawValue, startedAt: $0.startedAt)
        }
        self.state = .stopped
        self.config = config
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

    public init(version: String, pid: Int32, stateDir: String, startedAt: Timestamp, ledger: Ledger, listeners: [String], agents: [AgentView]) {
        self.version = version; self.pid = pid; self.stateDir = stateDir; self.startedAt = startedAt
        self.ledger = ledger; self.listeners = listeners; self.agents = agents
    }
}

/// batond's own version, reported by `/v1/status`, `/metrics` and the ledger.
public enum BatonVersion {
    public static let current = "0.1.0"
}
