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
        case .ledgerCut: "ledger.cut"
        case .daemonUpgradeBegan: "daemon.upgrade_began"
        case .daemonUpgraded: "daemon.upgraded"
        case .daemonUpgradeFailed: "daemon.upgrade_failed"
        case .agentRewound: "agent.rewound"
        case .agentFailed: "agent.failed"
        case .unknown(let kind, _): kind
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

public enum HandoffMode: String, Codable, Sendable, CaseIterable {
    case parallel, sequential
}

public struct AgentDesired: Codable, Sendable, Equatable {
    public var agent: String
    public var version: String
    public var mode: HandoffMode
    public var by: String
    public init(agent: String, version: String, mode: HandoffMode, by: String) {
        self.agent = agent; self.version = version; self.mode = mode; self.by = by
    }
}

public struct HandoffBegan: Codable, Sendable, Equatable {
    public var handoff: String
    public var agent: String
    public var from: String?
    public var to: String
    public var mode: HandoffMode
    public init(handoff: String, agent: String, from: String?, to: String, mode: HandoffMode) {
        self.handoff = handoff; self.agent = agent; self.from = from; self.to = to; self.mode = mode
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

public enum HandoffOutcome: String, Codable, Sendable, CaseIterable {
    case committed, failed, reverted
    /// batond itself stopped before the handoff ended.
    case cancelled
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
