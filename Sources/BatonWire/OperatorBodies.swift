/// The bodies of the operator's requests that change things, and the answers that have
/// no view of their own elsewhere.

/// `PUT /v1/version`: move every agent that has a release of `version` to it.
public struct VersionRequest: Codable, Sendable, Equatable {
    public var version: String
    /// Halt every agent, run the migration once, then start them all at the version.
    public var barrier: Bool?
    public init(version: String, barrier: Bool? = nil) { self.version = version; self.barrier = barrier }
}

/// `POST /v1/releases/{agent}/{version}`: have batond download a release.
public struct FetchRequest: Codable, Sendable, Equatable {
    public var url: String
    public var sha256: String
    /// Base64 of the Ed25519 signature over the digest; else batond looks for `<url>.sig`.
    public var signature: String?
    public var irreversible: Bool?
    public init(url: String, sha256: String, signature: String? = nil, irreversible: Bool? = nil) {
        self.url = url; self.sha256 = sha256; self.signature = signature; self.irreversible = irreversible
    }
}

/// `PUT /v1/daemon/binary`'s answer: the stored binary.
public struct StoredBinary: Codable, Sendable, Equatable {
    public var sha256: String
    public var size: Int64
    public init(sha256: String, size: Int64) { self.sha256 = sha256; self.size = size }
}

/// `POST /v1/daemon/upgrade`.
public struct UpgradeRequest: Codable, Sendable, Equatable {
    public var digest: String
    /// Try a binary that died before confirming once already (the operator's explicit choice).
    public var force: Bool?
    public init(digest: String, force: Bool? = nil) { self.digest = digest; self.force = force }
}
