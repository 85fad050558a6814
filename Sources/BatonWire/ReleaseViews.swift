/// `GET /v1/releases/{agent}/{version}`, and each element of the list: one release as
/// stored (with its manifest's facts), or one being fetched.
public struct ReleaseView: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable {
        /// Whole on disk: it can be started.
        case stored
        /// batond is downloading it (see `fetch`).
        case fetching
        /// The last fetch of it failed (see `fetch.error`); nothing is stored.
        case failed
    }

    public var agent: String
    public var version: String
    public var state: State
    /// The manifest's facts: absent for a release dropped in by hand (`source: local`).
    public var sha256: String?
    public var size: Int64?
    public var unpackedBytes: Int64?
    public var files: Int?
    public var format: ReleaseManifest.Format?
    public var source: ReleaseManifest.Source
    public var url: String?
    /// When batond stored it; for a hand-dropped release, its directory's time.
    public var storedAt: Timestamp?
    public var pushedBy: String?
    public var signedBy: String?
    public var irreversible: Bool
    public var migration: [String]?
    /// `releases/<agent>/current` points at it; the ledger's release before that.
    public var current: Bool
    public var previous: Bool
    /// Why it may not be deleted now (current, previous, a handoff, a live instance).
    public var inUse: String?
    public var fetch: FetchProgress?

    public init(agent: String, version: String, state: State, source: ReleaseManifest.Source, irreversible: Bool = false,
                current: Bool = false, previous: Bool = false) {
        self.agent = agent; self.version = version; self.state = state; self.source = source
        self.irreversible = irreversible; self.current = current; self.previous = previous
    }

    public init(agent: String, version: String, manifest: ReleaseManifest?, declared: ReleaseManifest.Declared,
                storedAt: Timestamp, current: Bool, previous: Bool, inUse: String?) {
        self.init(agent: agent, version: version, state: .stored, source: manifest?.source ?? .local,
                  irreversible: manifest?.irreversible ?? declared.irreversible ?? false, current: current, previous: previous)
        sha256 = manifest?.sha256
        size = manifest?.size
        unpackedBytes = manifest?.unpackedBytes
        files = manifest?.files
        format = manifest?.format
        url = manifest?.url
        self.storedAt = storedAt
        pushedBy = manifest?.pushedBy
        signedBy = manifest?.signedBy
        migration = manifest?.migration ?? declared.migration
        self.inUse = inUse
    }
}

/// A fetch batond runs (or ran last) for a version it does not store yet.
public struct FetchProgress: Codable, Sendable, Equatable {
    public enum Phase: String, Codable, Sendable {
        /// Bytes arrive.
        case downloading
        /// All arrived: checked against the digest, unpacked, recorded.
        case verifying
        case failed
    }
    public var url: String
    public var phase: Phase
    public var receivedBytes: Int64
    /// From Content-Length, when the server sent one.
    public var totalBytes: Int64?
    public var startedAt: Timestamp
    public var by: String
    public var error: String?

    public init(url: String, phase: Phase, receivedBytes: Int64, totalBytes: Int64?, startedAt: Timestamp, by: String, error: String? = nil) {
        self.url = url; self.phase = phase; self.receivedBytes = receivedBytes; self.totalBytes = totalBytes
        self.startedAt = startedAt; self.by = by; self.error = error
    }
}

/// `GET /v1/releases/{agent}`: oldest first, then the fetches of versions not stored.
public struct ReleaseList: Codable, Sendable, Equatable {
    public var agent: String
    public var current: String?
    public var previous: String?
    public var keepReleases: Int
    public var releases: [ReleaseView]

    public init(agent: String, current: String?, previous: String?, keepReleases: Int, releases: [ReleaseView]) {
        self.agent = agent; self.current = current; self.previous = previous
        self.keepReleases = keepReleases; self.releases = releases
    }
}
