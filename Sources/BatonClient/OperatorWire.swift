import BatonCore

// The bodies of operator routes whose types are not in BatonWire yet: today they are
// declared inside BatonAPI or BatonSupervisor (internal there). They belong in
// BatonWire with the rest; once there, these declarations go.

/// `GET /v1/events` as JSON: a page of ledger records.
public struct EventPage: Decodable, Sendable, Equatable {
    public var lastSeq: UInt64
    public var oldestSeq: UInt64
    public var records: [Record]
    public var truncated: Bool
}

/// `GET /v1/version`.
public struct MachineVersion: Decodable, Sendable, Equatable {
    public var version: String?
    public var pending: ActiveRollout?
    public var lastError: LastError?
    public var history: [RolloutSummary]
}

/// `PUT /v1/version`.
public struct VersionRequest: Encodable, Sendable, Equatable {
    public var version: String
    public var barrier: Bool?
    public init(version: String, barrier: Bool? = nil) { self.version = version; self.barrier = barrier }
}

/// `POST /v1/releases/{agent}/{version}`.
public struct FetchRequest: Encodable, Sendable, Equatable {
    public var url: String
    public var sha256: String
    public var signature: String?
    public var irreversible: Bool?
    public init(url: String, sha256: String, signature: String? = nil, irreversible: Bool? = nil) {
        self.url = url; self.sha256 = sha256; self.signature = signature; self.irreversible = irreversible
    }
}

/// `PUT /v1/daemon/binary`'s answer.
public struct StoredBinary: Decodable, Sendable, Equatable {
    public var sha256: String
    public var size: Int64
}

/// `POST /v1/daemon/upgrade`.
public struct UpgradeRequest: Encodable, Sendable, Equatable {
    public var digest: String
    public var force: Bool?
    public init(digest: String, force: Bool? = nil) { self.digest = digest; self.force = force }
}
