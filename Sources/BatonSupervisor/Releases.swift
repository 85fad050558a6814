import BatonConfig
import BatonCore
import BatonLedger
import BatonReleases
import Crypto
import Dispatch
import Logging
import Synchronization

/// Why a release request is refused; the API answers with it.
public enum ReleaseRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    case agentNotFound(String)
    case notFound(agent: String, version: String)
    /// Another push, fetch or removal of the same version runs.
    case busy(agent: String, version: String)
    /// The version holds other bytes (or was put there by hand): releases are immutable.
    case conflict(agent: String, version: String, reason: String)
    case inUse(agent: String, version: String, reason: String)
    case signatureRequired
    case badSignature
    /// The fetch's URL is not one batond fetches from.
    case badURL(String)
    /// The detached signature (`<url>.sig`) could not be fetched.
    case signatureUnavailable(String)
    case store(ReleaseError)
    /// The ledger cannot record it: nothing was done.
    case ledger(String)

    public var description: String {
        switch self {
        case .agentNotFound(let agent): "no agent named \(agent) is configured"
        case .notFound(let agent, let version): "agent \(agent) has no release \(version)"
        case .busy(let agent, let version): "release \(agent)/\(version) is being pushed, fetched or removed; retry when that ends"
        case .conflict(let agent, let version, let reason): "release \(agent)/\(version) exists: \(reason); releases are immutable, push a new version"
        case .inUse(let agent, let version, let reason): "release \(agent)/\(version) is \(reason); it cannot be deleted now"
        case .signatureRequired:
            "this batond requires releases signed by a trusted key: send Baton-Signature (base64 Ed25519 signature over the SHA-256 digest)"
        case .badSignature: "the signature does not verify under any trusted key (it signs the 32 bytes of the SHA-256 digest)"
        case .badURL(let reason): "not a URL batond fetches from: \(reason)"
        case .signatureUnavailable(let reason): "the detached signature could not be fetched: \(reason)"
        case .store(let error): error.description
        case .ledger(let reason): "the ledger cannot record it (\(reason)); nothing was done"
        }
    }
}

/// The releases of every agent: pushes, fetches, removals and collection, each recorded
/// in the ledger before it shows on disk. One version is handled by one request at a
/// time (`Claim`); its bytes go to a temporary file, are checked against the digest
/// announced before they were sent, and become a release only whole (`PreparedRelease`).
public final class Releases: Sendable {
    public let store: ReleaseStore
    public let settings: BatondConfig.ReleaseSettings
    let trusted: TrustedKeys
    let agents: Set<String>
    let ledger: Ledger
    let registry: InstanceRegistry
    let logger: Logger
    /// `agent/version` of every request that holds a version.
    private let claimed = Mutex<Set<String>>([])
    /// Fetches running, and the last failed one, by `agent/version`.
    let fetches = Mutex<[String: FetchProgress]>([:])

    init(store: ReleaseStore, settings: BatondConfig.ReleaseSettings, agents: Set<String>, ledger: Ledger,
         registry: InstanceRegistry, logger: Logger) {
        self.store = store
        self.settings = settings
        self.trusted = TrustedKeys(settings.trustedKeys)
        self.agents = agents
        self.ledger = ledger
        self.registry = registry
        self.logger = logger
    }

    var unpackLimits: UnpackLimits { UnpackLimits(maxBytes: settings.maxUnpackedBytes, maxFiles: settings.maxFiles) }

    // MARK: - Start: what a crash left

    /// At start, before anything is served: removes what a crash left half-done, and makes
    /// the ledger agree with the disk for the releases batond stored (one recorded but
    /// gone is recorded `missing`; one whole on disk with batond's manifest and no record,
    /// a removal cut short before it began, is recorded `found`).
    public func boot() async {
        for path in store.sweepLeftovers() {
            logger.notice("removed what an interrupted release operation left", metadata: ["path": "\(path)"])
        }
        let state = ledger.state
        for agent in agents.sorted() {
            let recorded = state.agents[agent]?.stored ?? [:]
            let onDisk = store.releases(agent: agent).filter { $0.manifest != nil && $0.source != .local }
            let present = Set(onDisk.map(\.version))
            var events: [LedgerEvent] = []
            for version in recorded.keys.sorted() where !present.contains(version) {
                events.append(.releaseDeleted(.init(agent: agent, version: version, by: "batond", reason: .missing)))
            }
            for release in onDisk where recorded[release.version] == nil {
                events.append(.releaseStored(Self.record(release.manifest!, found: true)))
            }
            for event in events {
                do { _ = try await ledger.append(event) } catch {
                    logger.warning("cannot record the release store's state at start", metadata: ["error": "\(error)"])
                    return
                }
            }
        }
    }

    static func record(_ manifest: ReleaseManifest, found: Bool? = nil) -> ReleaseStored {
        ReleaseStored(agent: manifest.agent, version: manifest.version, sha256: manifest.sha256, size: manifest.size,
                      source: manifest.source.rawValue, url: manifest.url, by: manifest.pushedBy,
                      signedBy: manifest.signedBy, irreversible: manifest.irreversible, found: found)
    }

    // MARK: - Claims

    /// A version held by one request; let go when the request is done (`release`: its
    /// answer may be sent before the HTTP layer drops the request) or dropped.
    final class Claim: Sendable {
        let key: String
        let releases: Releases
        /// Once: a later request may hold the same version by then.
        private let held = Atomic(true)
        init(key: String, releases: Releases) {
            self.key = key
            self.releases = releases
        }
        func release() {
            guard held.exchange(false, ordering: .acquiringAndReleasing) else { return }
            _ = releases.claimed.withLock { $0.remove(key) }
        }
        deinit { release() }
    }

    func claim(_ agent: String, _ version: String) throws(ReleaseRefusal) -> Claim {
        let key = "\(agent)/\(version)"
        guard claimed.withLock({ $0.insert(key).inserted }) else { throw .busy(agent: agent, version: version) }
        return Claim(key: key, releases: self)
    }

    // MARK: - Push

    public struct Announcement: Sendable {
        public var agent: String
        public var version: String
        /// The SHA-256 the bytes must have.
        public var sha256: [UInt8]
        public var signature: [UInt8]?
        /// Content-Length, when the client sent one: checked against free space first.
        public var length: Int64?
        public var irreversible: Bool
        public var by: String

        public init(agent: String, version: String, sha256: [UInt8], signature: [UInt8]?, length: Int64?,
                    irreversible: Bool, by: String) {
            self.agent = agent; self.version = version; self.sha256 = sha256; self.signature = signature
            self.length = length; self.irreversible = irreversible; self.by = by
        }
    }

    /// Where the bytes of a push go: a temporary file, or only a hash when the version
    /// is stored already with the announced digest (the same bytes again: a no-op, once
    /// they are shown to be the same).
    public final class Intake: Sendable {
        enum Target: Sendable {
            case file(DigestingFile)
            case compare(RunningDigest)
        }
        let announcement: Announcement
        let signedBy: String?
        let target: Target
        let claim: Claim

        init(announcement: Announcement, signedBy: String?, target: Target, claim: Claim) {
            self.announcement = announcement
            self.signedBy = signedBy
            self.target = target
            self.claim = claim
        }

        public func write(_ bytes: UnsafeRawBufferPointer) throws(ReleaseRefusal) {
            switch target {
            case .file(let file):
                do { try file.write(bytes) } catch { throw .store(ReleaseError(error)) }
            case .compare(let digest):
                digest.update(bytes)
            }
        }
    }

    /// Everything that can be decided before the body is read: the agent, the signature,
    /// immutability, the claim, free space. Throws the refusal; else the body goes to
    /// the returned intake.
    public func announce(_ announcement: Announcement) throws(ReleaseRefusal) -> Intake {
        let (agent, version) = (announcement.agent, announcement.version)
        guard agents.contains(agent) else { throw .agentNotFound(agent) }
        let signedBy = try verify(digest: announcement.sha256, signature: announcement.signature)
        let claim = try claim(agent, version)
        if let existing = store.release(agent: agent, version: version) {
            guard let manifest = existing.manifest else {
                throw .conflict(agent: agent, version: version, reason: "it was put there by hand")
            }
            guard manifest.sha256 == Hex.encode(announcement.sha256) else {
                throw .conflict(agent: agent, version: version, reason: "it holds other bytes (sha256 \(manifest.sha256))")
            }
            return Intake(announcement: announcement, signedBy: signedBy, target: .compare(RunningDigest()), claim: claim)
        }
        let file: DigestingFile
        do throws(ReleaseError) {
            try checkFreeSpace(agent: agent, length: announcement.length ?? 0)
            file = try store.receive(agent: agent, maxBytes: settings.maxBytes)
        } catch {
            throw .store(error)
        }
        return Intake(announcement: announcement, signedBy: signedBy, target: .file(file), claim: claim)
    }

    /// The name of the trusted key that signed `digest`; nil for an unsigned release
    /// where none is required. With no trusted key configured there is nothing to check
    /// a signature against: it is not checked.
    func verify(digest: [UInt8], signature: [UInt8]?) throws(ReleaseRefusal) -> String? {
        guard let signature, !trusted.isEmpty else {
            if settings.requireSignature { throw .signatureRequired }
            return nil
        }
        guard let signer = trusted.signer(of: digest, signature: signature) else { throw .badSignature }
        return signer
    }

    func checkFreeSpace(agent: String, length: Int64) throws(ReleaseError) {
        let available = try store.freeSpace(agent: agent)
        let needed = length + settings.freeSpaceMargin
        guard available >= needed else {
            throw .insufficientSpace(needed: needed, available: available, path: store.root)
        }
    }

    public struct Stored: Sendable {
        public var view: ReleaseView
        /// false: the same bytes were stored under this version already; nothing changed.
        public var created: Bool
    }

    /// The body is in: checks it, makes the release, records it, publishes it, collects
    /// what is beyond `keep_releases`. Disk work runs off the caller's thread.
    public func complete(_ intake: Intake) async throws(ReleaseRefusal) -> Stored {
        defer { intake.claim.release() }
        let announcement = intake.announcement
        switch intake.target {
        case .compare(let digest):
            let actual = digest.finalize()
            guard actual == announcement.sha256 else {
                throw .store(.digestMismatch(expected: Hex.encode(announcement.sha256), actual: Hex.encode(actual)))
            }
            return Stored(view: try view(agent: announcement.agent, version: announcement.version), created: false)
        case .file(let file):
            let provenance = Provenance(source: .push, by: announcement.by, signedBy: intake.signedBy,
                                        irreversible: announcement.irreversible)
            return try await store(file, announcement: announcement, provenance: provenance, letGo: intake.claim.release)
        }
    }

    /// Makes, records and publishes a release from received bytes (push or fetch).
    /// `letGo` lets go of the version once the release is in place (before old ones are
    /// collected); on a failure, the caller does.
    func store(_ file: DigestingFile, announcement: Announcement, provenance: Provenance,
               letGo: () -> Void) async throws(ReleaseRefusal) -> Stored {
        let (agent, version) = (announcement.agent, announcement.version)
        let limits = unpackLimits
        let prepared = try await offload { [store] () throws(ReleaseRefusal) -> PreparedRelease in
            do throws(ReleaseError) {
                return try store.prepare(file, expected: announcement.sha256, agent: agent, version: version,
                                         provenance: provenance, limits: limits)
            } catch {
                throw .store(error)
            }
        }
        do throws(LedgerError) {
            _ = try await ledger.append(.releaseStored(Self.record(prepared.manifest)))
        } catch {
            prepared.discard()
            throw .ledger(error.description)
        }
        do throws(ReleaseError) {
            try prepared.publish()
        } catch {
            logger.error("a recorded release could not be put in place", metadata: ["agent": "\(agent)", "version": "\(version)",
                                                                                     "error": "\(error)"])
            _ = try? await ledger.append(.releaseDeleted(.init(agent: agent, version: version, by: "batond", reason: .missing)))
            throw .store(error)
        }
        logger.info("release stored", metadata: ["agent": "\(agent)", "version": "\(version)", "sha256": "\(prepared.manifest.sha256)",
                                                  "source": "\(provenance.source.rawValue)", "by": "\(provenance.by)"])
        letGo()
        await collect(agent: agent, keeping: version)
        return Stored(view: try view(agent: agent, version: version), created: true)
    }

    // MARK: - Reading

    /// The releases in use and why: they may not be deleted or collected.
    func inUse(agent: String) -> [String: String] {
        var reasons: [String: String] = [:]
        let state = ledger.state.agents[agent]
        for instance in registry.instances(of: agent) { reasons[instance.version] = "run by instance \(instance.id)" }
        if let handoff = state?.handoff {
            if let from = handoff.from { reasons[from] = "used by handoff \(handoff.id)" }
            reasons[handoff.to] = "used by handoff \(handoff.id)"
        }
        if let previous = state?.previous { reasons[previous] = "the previous release (rollback goes to it)" }
        if let current = current(agent, state) { reasons[current] = "the current release" }
        return reasons
    }

    /// What `releases/<agent>/current` names, else the ledger's last commit.
    func current(_ agent: String, _ state: AgentLedger?) -> String? {
        store.current(agent: agent) ?? state?.current
    }

    private func view(of release: StoredRelease, agent: String, state: AgentLedger?, current: String?,
                      inUse: [String: String]) -> ReleaseView {
        ReleaseView(agent: agent, version: release.version, manifest: release.manifest, declared: release.declared,
                    storedAt: release.storedAt, current: release.version == current,
                    previous: release.version == state?.previous, inUse: inUse[release.version])
    }

    public func list(agent: String) throws(ReleaseRefusal) -> ReleaseList {
        guard agents.contains(agent) else { throw .agentNotFound(agent) }
        let state = ledger.state.agents[agent]
        let current = current(agent, state)
        let inUse = inUse(agent: agent)
        let views = store.releases(agent: agent).map { view(of: $0, agent: agent, state: state, current: current, inUse: inUse) }
        let fetched = fetches.withLock { $0 }.filter { $0.key.hasPrefix(agent + "/") }.sorted { $0.key < $1.key }
            .map { key, fetch in (version: String(key.dropFirst(agent.count + 1)), fetch: fetch) }
        // A fetch shows until it is done (see `view`), a failed one only where nothing is stored.
        let running = Set(fetched.filter { $0.fetch.phase != .failed }.map(\.version))
        let shown = views.filter { !running.contains($0.version) }
        let stored = Set(shown.map(\.version))
        let fetching = fetched.filter { !stored.contains($0.version) }
            .map { Self.fetchView(agent: agent, version: $0.version, $0.fetch) }
        return ReleaseList(agent: agent, current: current, previous: state?.previous, keepReleases: settings.keepReleases,
                           releases: shown + fetching)
    }

    public func view(agent: String, version: String) throws(ReleaseRefusal) -> ReleaseView {
        guard agents.contains(agent) else { throw .agentNotFound(agent) }
        // A fetch shows as fetching until it has let go of the version, even once its
        // release is in place: whoever sees it stored (or failed) may ask for it again.
        let fetch = fetches.withLock { $0["\(agent)/\(version)"] }
        if let fetch, fetch.phase != .failed { return Self.fetchView(agent: agent, version: version, fetch) }
        guard let release = store.release(agent: agent, version: version) else {
            guard let fetch else { throw .notFound(agent: agent, version: version) }
            return Self.fetchView(agent: agent, version: version, fetch)
        }
        let state = ledger.state.agents[agent]
        return view(of: release, agent: agent, state: state, current: current(agent, state), inUse: inUse(agent: agent))
    }

    // MARK: - Removal

    /// `DELETE`: refused for a release in use; recorded, then removed.
    public func delete(agent: String, version: String, by: String) async throws(ReleaseRefusal) {
        guard agents.contains(agent) else { throw .agentNotFound(agent) }
        let claim = try claim(agent, version)
        guard store.release(agent: agent, version: version) != nil else { throw .notFound(agent: agent, version: version) }
        if let reason = inUse(agent: agent)[version] { throw .inUse(agent: agent, version: version, reason: reason) }
        try await remove(agent: agent, version: version, by: by, reason: .deleted)
        claim.release()
    }

    func remove(agent: String, version: String, by: String, reason: ReleaseDeleted.Reason) async throws(ReleaseRefusal) {
        do throws(LedgerError) {
            _ = try await ledger.append(.releaseDeleted(.init(agent: agent, version: version, by: by, reason: reason)))
        } catch {
            throw .ledger(error.description)
        }
        try await offload { [store] () throws(ReleaseRefusal) in
            do throws(ReleaseError) { try store.remove(agent: agent, version: version) } catch { throw .store(error) }
        }
        logger.info("release removed", metadata: ["agent": "\(agent)", "version": "\(version)", "by": "\(by)", "reason": "\(reason.rawValue)"])
    }

    /// Beyond `keep_releases`, the oldest releases go: never one in use, nor `keeping`
    /// (the one just stored), nor one another request holds.
    func collect(agent: String, keeping: String) async {
        guard settings.keepReleases > 0 else { return }
        let releases = store.releases(agent: agent)
        var excess = releases.count - settings.keepReleases
        guard excess > 0 else { return }
        let inUse = inUse(agent: agent)
        for release in releases where excess > 0 && release.version != keeping && inUse[release.version] == nil {
            guard let claim = try? claim(agent, release.version) else { continue }
            do {
                try await remove(agent: agent, version: release.version, by: "batond", reason: .collected)
                excess -= 1
                claim.release()
            } catch {
                logger.warning("cannot collect an old release", metadata: ["agent": "\(agent)", "version": "\(release.version)",
                                                                           "error": "\(error)"])
                return
            }
        }
    }
}

/// A SHA-256 fed a chunk at a time from the listener's thread.
final class RunningDigest: Sendable {
    private let state = Mutex(SHA256())
    func update(_ bytes: UnsafeRawBufferPointer) { state.withLock { $0.update(bufferPointer: bytes) } }
    func finalize() -> [UInt8] { state.withLock { Array($0.finalize()) } }
}

/// Runs blocking disk work on a global queue, off the cooperative pool.
func offload<T: Sendable, E: Error>(_ work: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
    let result: Result<T, E> = await withCheckedContinuation { continuation in
        DispatchQueue.global().async {
            continuation.resume(returning: Result { () throws(E) -> T in try work() })
        }
    }
    return try result.get()
}
