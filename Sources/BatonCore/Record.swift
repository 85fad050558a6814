import Foundation

/// One ledger record: a numbered, timed, checksummed fact. On disk it is one line of
/// JSON, `{"seq":N,"time":"…","kind":"…","v":1,"data":{…},"crc":"xxxxxxxx"}`, where
/// `crc` is the CRC-32C of the line's bytes before `,"crc"`. docs/ledger.md documents
/// every kind.
public struct Record: Sendable, Equatable {
    public let seq: UInt64
    public let time: Timestamp
    public let event: LedgerEvent

    public init(seq: UInt64, time: Timestamp, event: LedgerEvent) {
        self.seq = seq
        self.time = time
        self.event = event
    }
}

/// What a record says. Each kind has a schema version (`v`); a kind or version this
/// build does not know is kept as `.unknown` and ignored by the state, never dropped.
public enum LedgerEvent: Sendable, Equatable {
    case daemonStarted(DaemonStarted)
    case daemonStopped(DaemonStopped)
    case agentDesired(AgentDesired)
    case handoffBegan(HandoffBegan)
    case handoffPhase(HandoffPhase)
    case handoffEnded(HandoffEnded)
    case instanceSpawned(InstanceSpawned)
    case instanceReady(InstanceRef)
    case instanceStopped(InstanceRef)
    case instanceExited(InstanceExited)
    case instanceSignal(InstanceSignal)
    case agentError(AgentError)
    case releaseCurrent(ReleaseCurrent)
    case releaseStored(ReleaseStored)
    case releaseDeleted(ReleaseDeleted)
    case releaseFetchFailed(ReleaseFetchFailed)
    case rolloutBegan(RolloutBegan)
    case rolloutStep(RolloutStep)
    case rolloutEnded(RolloutEnded)
    case ledgerCut(LedgerCut)
    case daemonUpgradeBegan(DaemonUpgradeBegan)
    case daemonUpgraded(DaemonUpgraded)
    case daemonUpgradeFailed(DaemonUpgradeFailed)
    case agentRewound(AgentRewound)
    case agentFailed(AgentFailed)
    case unknown(kind: String, version: Int)

    public var kind: String {
        switch self {
        case .daemonStarted: "daemon.started"
        case .daemonStopped: "daemon.stopped"
        case .agentDesired: "agent.desired"
        case .handoffBegan: "handoff.began"
        case .handoffPhase: "handoff.phase"
        case .handoffEnded: "handoff.ended"
        case .instanceSpawned: "instance.spawned"
        case .instanceReady: "instance.ready"
        case .instanceStopped: "instance.stopped"
        case .instanceExited: "instance.exited"
        case .instanceSignal: "instance.signal"
        case .agentError: "agent.error"
        case .releaseCurrent: "release.current"
        case .releaseStored: "release.stored"
        case .releaseDeleted: "release.deleted"
        case .releaseFetchFailed: "release.fetch_failed"
        case .rolloutBegan: "rollout.began"
        case .rolloutStep: "rollout.step"
        case .rolloutEnded: "rollout.ended"
        case .ledgerCut: "ledger.cut"
        case .daemonUpgradeBegan: "daemon.upgrade_began"
        case .daemonUpgraded: "daemon.upgraded"
        case .daemonUpgradeFailed: "daemon.upgrade_failed"
        case .agentRewound: "agent.rewound"
        case .agentFailed: "agent.failed"
        case .unknown(let kind, _): kind
        }
    }

    /// The agent the record is about, nil for records about the daemon, a rollout as a
    /// whole or the ledger (what `GET /v1/events?agent=` filters on).
    public var agent: String? {
        switch self {
        case .agentDesired(let e): e.agent
        case .handoffBegan(let e): e.agent
        case .handoffPhase(let e): e.agent
        case .handoffEnded(let e): e.agent
        case .instanceSpawned(let e): e.agent
        case .instanceReady(let e), .instanceStopped(let e): e.agent
        case .instanceExited(let e): e.agent
        case .instanceSignal(let e): e.agent
        case .agentError(let e): e.agent
        case .releaseCurrent(let e): e.agent
        case .releaseStored(let e): e.agent
        case .releaseDeleted(let e): e.agent
        case .releaseFetchFailed(let e): e.agent
        case .rolloutStep(let e): e.agent
        case .agentRewound(let e): e.agent
        case .agentFailed(let e): e.agent
        case .daemonStarted, .daemonStopped, .rolloutBegan, .rolloutEnded, .ledgerCut, .daemonUpgradeBegan,
             .daemonUpgraded, .daemonUpgradeFailed, .unknown:
            nil
        }
    }

    /// The schema version this build writes for each kind.
    public var version: Int {
        if case .unknown(_, let version) = self { return version }
        return 1
    }

    public static let knownKinds = [
        "daemon.started", "daemon.stopped", "agent.desired", "handoff.began", "handoff.phase", "handoff.ended",
        "instance.spawned", "instance.ready", "instance.stopped", "instance.exited", "agent.error", "release.current",
        "ledger.cut", "instance.signal", "daemon.upgrade_began", "daemon.upgraded", "daemon.upgrade_failed",
        "release.stored", "release.deleted", "release.fetch_failed", "rollout.began", "rollout.step", "rollout.ended",
        "agent.rewound", "agent.failed",
    ]
}

// MARK: - Payloads (v1)

public struct DaemonStarted: Codable, Sendable, Equatable {
    public var pid: Int32
    public var version: String
    public var config: String?
    public var listeners: [String]
    public init(pid: Int32, version: String, config: String?, listeners: [String]) {
        self.pid = pid; self.version = version; self.config = config; self.listeners = listeners
    }
}

public struct DaemonStopped: Codable, Sendable, Equatable {
    public var pid: Int32
    public var reason: String
    public init(pid: Int32, reason: String) { self.pid = pid; self.reason = reason }
}

public struct AgentDesired: Codable, Sendable, Equatable {
    public var agent: String
    public var version: String
    public var mode: HandoffMode
    public var by: String
    /// For an agent that fetches its own release (`external`): where it is and its
    /// SHA-256, as the request gave them (absent from records that had none).
    public var url: String?
    public var sha256: String?
    public init(agent: String, version: String, mode: HandoffMode, by: String, url: String? = nil, sha256: String? = nil) {
        self.agent = agent; self.version = version; self.mode = mode; self.by = by; self.url = url; self.sha256 = sha256
    }
}

public struct HandoffBegan: Codable, Sendable, Equatable {
    public var handoff: String
    public var agent: String
    public var from: String?
    public var to: String
    public var mode: HandoffMode
    /// Who asked for it: the desired version's `by`, or `batond` when batond began it by
    /// itself (a rewind). Absent from records written before it was kept.
    public var by: String?
    public init(handoff: String, agent: String, from: String?, to: String, mode: HandoffMode, by: String? = nil) {
        self.handoff = handoff; self.agent = agent; self.from = from; self.to = to; self.mode = mode; self.by = by
    }
}

public struct HandoffPhase: Codable, Sendable, Equatable {
    public var handoff: String
    public var agent: String
    public var phase: String
    public init(handoff: String, agent: String, phase: String) {
        self.handoff = handoff; self.agent = agent; self.phase = phase
    }
}

public struct HandoffEnded: Codable, Sendable, Equatable {
    public var handoff: String
    public var agent: String
    public var outcome: HandoffOutcome
    public var gapMs: Double?
    public var error: String?
    public init(handoff: String, agent: String, outcome: HandoffOutcome, gapMs: Double?, error: String?) {
        self.handoff = handoff; self.agent = agent; self.outcome = outcome; self.gapMs = gapMs; self.error = error
    }
}

public struct InstanceSpawned: Codable, Sendable, Equatable {
    public var agent: String
    public var instance: String
    public var version: String
    public var pid: Int32
    /// The process's start time in clock ticks since boot (/proc/PID/stat field 22):
    /// with the pid, it tells a re-adopted process from a stranger that reused the pid.
    public var startTime: UInt64
    public var handoff: String?
    /// The instance's part in `handoff`: `successor` or `previous`.
    public var role: String?
    /// SHA-256 (hex) of the instance's bearer token, never the token: a restarted batond
    /// that re-adopts the instance still knows it by its token.
    public var tokenDigest: String?
    /// A process that registered itself (not batond's child).
    public var registered: Bool?
    public init(agent: String, instance: String, version: String, pid: Int32, startTime: UInt64, handoff: String?,
                role: String? = nil, tokenDigest: String? = nil, registered: Bool? = nil) {
        self.agent = agent; self.instance = instance; self.version = version; self.pid = pid
        self.startTime = startTime; self.handoff = handoff; self.role = role
        self.tokenDigest = tokenDigest; self.registered = registered
    }
}

/// The instance's signal changes (recorded before the instance can see it), so a
/// restarted batond knows which instance holds go.
public struct InstanceSignal: Codable, Sendable, Equatable {
    public var agent: String
    public var instance: String
    public var signal: AgentSignal
    public var handoff: String?
    public init(agent: String, instance: String, signal: AgentSignal, handoff: String?) {
        self.agent = agent; self.instance = instance; self.signal = signal; self.handoff = handoff
    }
}

public struct InstanceRef: Codable, Sendable, Equatable {
    public var agent: String
    public var instance: String
    public init(agent: String, instance: String) { self.agent = agent; self.instance = instance }
}

public struct InstanceExited: Codable, Sendable, Equatable {
    public var agent: String
    public var instance: String
    public var exitCode: Int32?
    public var signal: Int32?
    public init(agent: String, instance: String, exitCode: Int32?, signal: Int32?) {
        self.agent = agent; self.instance = instance; self.exitCode = exitCode; self.signal = signal
    }
}

public struct AgentError: Codable, Sendable, Equatable {
    public var agent: String
    public var reason: String
    public var stderrTail: String
    public var handoff: String?
    public var instance: String?
    public init(agent: String, reason: String, stderrTail: String, handoff: String?, instance: String?) {
        self.agent = agent; self.reason = reason; self.stderrTail = stderrTail; self.handoff = handoff; self.instance = instance
    }
}

public struct ReleaseCurrent: Codable, Sendable, Equatable {
    public var agent: String
    public var version: String
    public var previous: String?
    public init(agent: String, version: String, previous: String?) {
        self.agent = agent; self.version = version; self.previous = previous
    }
}

/// A crash loop of `from`: supervision hands back to `to` by itself, through a normal
/// handoff that begins after this record.
public struct AgentRewound: Codable, Sendable, Equatable {
    public var agent: String
    public var from: String
    public var to: String
    public var reason: String
    /// The limit reached: `exits` abnormal exits within `windowMs`.
    public var exits: Int
    public var windowMs: Int64
    public init(agent: String, from: String, to: String, reason: String, exits: Int, windowMs: Int64) {
        self.agent = agent; self.from = from; self.to = to; self.reason = reason; self.exits = exits; self.windowMs = windowMs
    }
}

/// A crash loop of an irreversible release: supervision gave up on `version` and starts
/// it no more until an operator's desired version.
public struct AgentFailed: Codable, Sendable, Equatable {
    public var agent: String
    public var version: String
    public var reason: String
    public init(agent: String, version: String, reason: String) {
        self.agent = agent; self.version = version; self.reason = reason
    }
}

/// A release was stored (pushed, fetched), recorded before it appears under its version.
/// `found`: batond found it whole on disk at start without a record (a removal that a
/// crash cut short before it began), and recorded it then.
public struct ReleaseStored: Codable, Sendable, Equatable {
    public var agent: String
    public var version: String
    public var sha256: String
    public var size: Int64
    public var source: String
    public var url: String?
    public var by: String
    public var signedBy: String?
    public var irreversible: Bool
    public var found: Bool?
    public init(agent: String, version: String, sha256: String, size: Int64, source: String, url: String?, by: String,
                signedBy: String?, irreversible: Bool, found: Bool? = nil) {
        self.agent = agent; self.version = version; self.sha256 = sha256; self.size = size; self.source = source
        self.url = url; self.by = by; self.signedBy = signedBy; self.irreversible = irreversible; self.found = found
    }
}

/// A release stored by batond was removed: recorded before it goes.
public struct ReleaseDeleted: Codable, Sendable, Equatable {
    public enum Reason: String, Codable, Sendable {
        /// `DELETE /v1/releases/{agent}/{version}`.
        case deleted
        /// Beyond `keep_releases`, oldest first.
        case collected
        /// Recorded as stored, but not on disk at start (removed by hand, or a crash cut
        /// its storing short after the record).
        case missing
    }
    public var agent: String
    public var version: String
    public var by: String
    public var reason: Reason
    public init(agent: String, version: String, by: String, reason: Reason) {
        self.agent = agent; self.version = version; self.by = by; self.reason = reason
    }
}

/// A fetch batond ran for an operator ended without a release.
public struct ReleaseFetchFailed: Codable, Sendable, Equatable {
    public var agent: String
    public var version: String
    public var url: String
    public var by: String
    public var error: String
    public init(agent: String, version: String, url: String, by: String, error: String) {
        self.agent = agent; self.version = version; self.url = url; self.by = by; self.error = error
    }
}

/// The machine moves to `version` (`PUT /v1/version`): the version is pending until
/// `rollout.ended`.
public struct RolloutBegan: Codable, Sendable, Equatable {
    public struct Agent: Codable, Sendable, Equatable {
        public var agent: String
        public var from: String?
        public init(agent: String, from: String?) { self.agent = agent; self.from = from }
    }
    public var rollout: String
    public var version: String
    public var barrier: Bool
    public var migration: [String]?
    public var agents: [Agent]
    public var by: String
    public init(rollout: String, version: String, barrier: Bool, migration: [String]?, agents: [Agent], by: String) {
        self.rollout = rollout; self.version = version; self.barrier = barrier; self.migration = migration
        self.agents = agents; self.by = by
    }
}

/// One step of a rollout: its phase changed, an agent's status changed, or the
/// migration ended. Recorded before what follows from it.
public struct RolloutStep: Codable, Sendable, Equatable {
    public var rollout: String
    public var phase: MachineRollout.Phase?
    public var agent: String?
    public var status: MachineRollout.AgentStatus?
    public var error: String?
    /// The migration's end: whether it exited 0, and how it ended with its output's tail.
    public var migrationSucceeded: Bool?
    public var migration: String?
    public init(rollout: String, phase: MachineRollout.Phase? = nil, agent: String? = nil, status: MachineRollout.AgentStatus? = nil,
                error: String? = nil, migrationSucceeded: Bool? = nil, migration: String? = nil) {
        self.rollout = rollout; self.phase = phase; self.agent = agent; self.status = status; self.error = error
        self.migrationSucceeded = migrationSucceeded; self.migration = migration
    }
}

public struct RolloutEnded: Codable, Sendable, Equatable {
    public var rollout: String
    /// `done`, `failed` or `restored`.
    public var outcome: MachineRollout.Phase
    public var error: String?
    public init(rollout: String, outcome: MachineRollout.Phase, error: String?) {
        self.rollout = rollout; self.outcome = outcome; self.error = error
    }
}

/// Recovery cut a torn last write out of the journal and kept its bytes in `file`. The
/// record takes the cut bytes' place, so its `seq` is above every seq seen (the
/// snapshot's, the journal's, and any read from the cut bytes): numbers are never
/// reused. It is the one record that may skip numbers: it follows the record whose seq
/// is `follows`, whatever its own seq.
public struct LedgerCut: Codable, Sendable, Equatable {
    /// The file in `ledger/` holding the cut bytes, e.g. `journal.jsonl.cut-20261130T021939.123Z`.
    public var file: String
    /// The journal line the cut began at, and how many bytes it took.
    public var line: Int
    public var bytes: UInt64
    /// Why the line was damaged: `no end of line`, `checksum mismatch`...
    public var reason: String
    /// The seq of the last record before the cut (the snapshot's when there was none).
    public var follows: UInt64
    /// The highest seq read from the cut bytes, if any could be read.
    public var highestCutSeq: UInt64?
    public init(file: String, line: Int, bytes: UInt64, reason: String, follows: UInt64, highestCutSeq: UInt64?) {
        self.file = file; self.line = line; self.bytes = bytes; self.reason = reason
        self.follows = follows; self.highestCutSeq = highestCutSeq
    }
}
