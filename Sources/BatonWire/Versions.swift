/// The versions of an agent and batond's verdicts on them, as the ledger keeps them and the
/// API shows them.

public enum HandoffMode: String, Codable, Sendable, CaseIterable {
    case parallel, sequential
}

public enum HandoffOutcome: String, Codable, Sendable, CaseIterable {
    case committed, failed, reverted
    /// batond itself stopped before the handoff ended.
    case cancelled
}

public struct DesiredVersion: Codable, Sendable, Equatable {
    public var version: String
    public var mode: HandoffMode
    public var setAt: Timestamp
    public var setBy: String
    /// Where the release is and its digest, for an agent that fetches its own release:
    /// as the desired request gave them, or (in views) from the stored release's
    /// `release.json`. Absent when unknown.
    public var sha256: String?
    public var url: String?

    public init(version: String, mode: HandoffMode, setAt: Timestamp, setBy: String, sha256: String? = nil, url: String? = nil) {
        self.version = version; self.mode = mode; self.setAt = setAt; self.setBy = setBy; self.sha256 = sha256; self.url = url
    }
}

public struct RunningVersion: Codable, Sendable, Equatable {
    public var version: String
    public var since: Timestamp

    public init(version: String, since: Timestamp) {
        self.version = version
        self.since = since
    }
}

public struct LastError: Codable, Sendable, Equatable {
    public var reason: String
    public var at: Timestamp
    public var stderrTail: String
    public var handoff: String?

    public init(reason: String, at: Timestamp, stderrTail: String, handoff: String?) {
        self.reason = reason; self.at = at; self.stderrTail = stderrTail; self.handoff = handoff
    }

    // Every field present, `handoff` null when no handoff was involved: the agent view
    // serves this as it is, and the contract lists every field.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(reason, forKey: .reason)
        try c.encode(at, forKey: .at)
        try c.encode(stderrTail, forKey: .stderrTail)
        try c.encode(handoff, forKey: .handoff)
    }
}

/// batond handed back from `from` to `to` by itself: `from` crash-looped.
public struct RewoundRelease: Codable, Sendable, Equatable {
    public var from: String
    public var to: String
    public var reason: String
    public var at: Timestamp
    public var exits: Int
    public var windowMs: Int64

    public init(from: String, to: String, reason: String, at: Timestamp, exits: Int, windowMs: Int64) {
        self.from = from; self.to = to; self.reason = reason; self.at = at; self.exits = exits; self.windowMs = windowMs
    }
}

/// batond gave up on `version`: an irreversible release that crash-looped.
public struct FailedRelease: Codable, Sendable, Equatable {
    public var version: String
    public var reason: String
    public var at: Timestamp

    public init(version: String, reason: String, at: Timestamp) {
        self.version = version; self.reason = reason; self.at = at
    }
}
