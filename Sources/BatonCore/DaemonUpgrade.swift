/// batond upgrading itself: the ledger records of an attempt, what the ledger folds
/// them into, and the wire view of the daemon (`GET /v1/daemon`).
///
/// An attempt is `daemon.upgrade_began` (durable before batond answers 202 and
/// re-executes) followed by exactly one of `daemon.upgraded` (the new image confirmed)
/// or `daemon.upgrade_failed`; a binary that fails its self-check gets a
/// `daemon.upgrade_failed` alone (stage `self_check`: nothing began).
/// Binaries are named by the SHA-256 of their bytes, in hex.

/// Where an upgrade attempt failed.
public enum UpgradeStage: String, Codable, Sendable, CaseIterable {
    /// The new binary's `--self-check` refused (or timed out): nothing changed.
    case selfCheck = "self_check"
    /// `execve` of the new binary failed: the old image kept serving.
    case exec
    /// The new image never confirmed: it died (or was stopped) after the exec, and the
    /// service manager started the previous binary again.
    case confirm
}

public struct DaemonUpgradeBegan: Codable, Sendable, Equatable {
    public var from: String
    public var fromVersion: String
    public var to: String
    public var pid: Int32
    public var by: String
    public init(from: String, fromVersion: String, to: String, pid: Int32, by: String) {
        self.from = from; self.fromVersion = fromVersion; self.to = to; self.pid = pid; self.by = by
    }
}

public struct DaemonUpgraded: Codable, Sendable, Equatable {
    public var from: String
    public var fromVersion: String
    public var to: String
    public var toVersion: String
    public var pid: Int32
    public init(from: String, fromVersion: String, to: String, toVersion: String, pid: Int32) {
        self.from = from; self.fromVersion = fromVersion; self.to = to; self.toVersion = toVersion; self.pid = pid
    }
}

public struct DaemonUpgradeFailed: Codable, Sendable, Equatable {
    /// The binary running when the attempt was made.
    public var from: String
    public var to: String
    public var stage: UpgradeStage
    public var reason: String
    public init(from: String, to: String, stage: UpgradeStage, reason: String) {
        self.from = from; self.to = to; self.stage = stage; self.reason = reason
    }
}

/// The last upgrade attempt, as the ledger knows it.
public struct UpgradeAttempt: Codable, Sendable, Equatable {
    public enum Outcome: String, Codable, Sendable {
        /// Began; the new image has not confirmed yet. A batond that starts and finds
        /// this without being that new image records the attempt failed (`confirm`).
        case inProgress = "in_progress"
        case upgraded
        case failed
    }

    public var from: String
    public var to: String
    /// The versions, as far as they are known: `to`'s only once it confirmed.
    public var fromVersion: String?
    public var toVersion: String?
    public var outcome: Outcome
    public var stage: UpgradeStage?
    public var at: Timestamp
    public var reason: String?

    public init(from: String, to: String, fromVersion: String? = nil, toVersion: String? = nil, outcome: Outcome,
                stage: UpgradeStage?, at: Timestamp, reason: String?) {
        self.from = from; self.to = to; self.fromVersion = fromVersion; self.toVersion = toVersion
        self.outcome = outcome; self.stage = stage; self.at = at; self.reason = reason
    }

    // Every field present, null when absent: the contract lists every field.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(from, forKey: .from)
        try c.encode(to, forKey: .to)
        try c.encode(fromVersion, forKey: .fromVersion)
        try c.encode(toVersion, forKey: .toVersion)
        try c.encode(outcome, forKey: .outcome)
        try c.encode(stage, forKey: .stage)
        try c.encode(at, forKey: .at)
        try c.encode(reason, forKey: .reason)
    }
}

/// What the ledger keeps of batond's own upgrades.
public struct DaemonUpgrades: Codable, Sendable, Equatable {
    public var last: UpgradeAttempt?
    /// Binaries that died after the exec before confirming, newest last (at most
    /// `failedLimit`): batond never tries one again unless the operator forces it.
    public var diedBeforeConfirming: [String] = []

    public static let failedLimit = 20

    public init() {}

    mutating func apply(_ event: LedgerEvent, at: Timestamp) {
        switch event {
        case .daemonUpgradeBegan(let e):
            last = UpgradeAttempt(from: e.from, to: e.to, fromVersion: e.fromVersion, outcome: .inProgress, stage: nil,
                                  at: at, reason: nil)
        case .daemonUpgraded(let e):
            last = UpgradeAttempt(from: e.from, to: e.to, fromVersion: e.fromVersion, toVersion: e.toVersion,
                                  outcome: .upgraded, stage: nil, at: at, reason: nil)
            diedBeforeConfirming.removeAll { $0 == e.to }
        case .daemonUpgradeFailed(let e):
            let fromVersion = last?.to == e.to ? last?.fromVersion : nil
            last = UpgradeAttempt(from: e.from, to: e.to, fromVersion: fromVersion, outcome: .failed, stage: e.stage,
                                  at: at, reason: e.reason)
            if e.stage == .confirm {
                diedBeforeConfirming.removeAll { $0 == e.to }
                diedBeforeConfirming.append(e.to)
                if diedBeforeConfirming.count > Self.failedLimit { diedBeforeConfirming.removeFirst() }
            }
        default:
            break
        }
    }
}

/// `GET /v1/daemon`: the running binary and the last upgrade attempt.
public struct DaemonView: Codable, Sendable, Equatable {
    public var version: String
    /// SHA-256 (hex) of the running binary (`/proc/self/exe`), taken once at start.
    public var sha256: String
    public var pid: Int32
    public var startedAt: Timestamp
    /// The stored binary `daemon/current` points at: the one a restart runs.
    public var current: String?
    public var lastUpgrade: UpgradeAttempt?

    public init(version: String, sha256: String, pid: Int32, startedAt: Timestamp, current: String?, lastUpgrade: UpgradeAttempt?) {
        self.version = version; self.sha256 = sha256; self.pid = pid; self.startedAt = startedAt
        self.current = current; self.lastUpgrade = lastUpgrade
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(version, forKey: .version)
        try c.encode(sha256, forKey: .sha256)
        try c.encode(pid, forKey: .pid)
        try c.encode(startedAt, forKey: .startedAt)
        try c.encode(current, forKey: .current)
        try c.encode(lastUpgrade, forKey: .lastUpgrade)
    }
}
