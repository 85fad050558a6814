import BatonCore
import BatonLedger
import BatonReleases
import Dispatch
import Synchronization

extension Releases {
    public struct FetchRequest: Sendable {
        public var agent: String
        public var version: String
        public var url: String
        public var sha256: [UInt8]
        /// The signature sent with the request; else batond looks for `<url>.sig`.
        public var signature: [UInt8]?
        public var irreversible: Bool
        public var by: String

        /// The URL as logs, records, manifests and views show it: a query may carry a
        /// credential (a presigned URL), so it is never shown.
        var shown: String { Self.redacted(url) }

        static func redacted(_ url: String) -> String {
            guard let cut = url.firstIndex(where: { $0 == "?" || $0 == "#" }) else { return url }
            return String(url[..<cut]) + "?…"
        }

        /// `text` with the URL in it shown redacted.
        func redacting(_ text: String) -> String {
            shown == url ? text : text.replacingOccurrences(of: url, with: shown)
        }

        public init(agent: String, version: String, url: String, sha256: [UInt8], signature: [UInt8]?,
                    irreversible: Bool, by: String) {
            self.agent = agent; self.version = version; self.url = url; self.sha256 = sha256
            self.signature = signature; self.irreversible = irreversible; self.by = by
        }
    }

    /// What a fetch request got at once.
    public enum FetchStart: Sendable {
        /// The download runs; `GET /v1/releases/{agent}/{version}` shows its progress.
        case started(ReleaseView)
        /// These bytes are stored under this version already; nothing was fetched.
        case stored(ReleaseView)
    }

    /// `POST /v1/releases/{agent}/{version}`: batond downloads the release itself, as the
    /// machine agent of the classic design does. Everything a push checks from its head
    /// is checked before the download begins (the agent, the URL, immutability, the claim,
    /// the signature: the request's, or `<url>.sig`, free space); the download and the
    /// storing then run on, with their progress in `fetches`, and a failure is recorded
    /// (`release.fetch_failed`) with nothing kept.
    public func fetch(_ request: FetchRequest) async throws(ReleaseRefusal) -> FetchStart {
        let (agent, version) = (request.agent, request.version)
        guard agents.contains(agent) else { throw .agentNotFound(agent) }
        if let reason = Download.validate(url: request.url) { throw .badURL(reason) }
        let claim = try claim(agent, version)
        if let existing = store.release(agent: agent, version: version) {
            guard let manifest = existing.manifest else {
                throw .conflict(agent: agent, version: version, reason: "it was put there by hand")
            }
            guard manifest.sha256 == Hex.encode(request.sha256) else {
                throw .conflict(agent: agent, version: version, reason: "it holds other bytes (sha256 \(manifest.sha256))")
            }
            return .stored(try view(agent: agent, version: version))
        }
        var signature = request.signature
        if signature == nil && !trusted.isEmpty {
            do throws(ReleaseRefusal) {
                signature = try await detachedSignature(of: request)
            } catch {
                // Unsigned is acceptable here: only a required signature must be found.
                if settings.requireSignature { throw error }
                logger.warning("no detached signature could be read; fetching unsigned",
                               metadata: ["url": "\(request.shown)", "error": "\(request.redacting(error.description))"])
            }
        }
        let signedBy = try verify(digest: request.sha256, signature: signature)
        let file: DigestingFile
        do throws(ReleaseError) {
            try checkFreeSpace(agent: agent, length: 0)
            file = try store.receive(agent: agent, maxBytes: settings.maxBytes)
        } catch {
            throw .store(error)
        }
        let progress = FetchProgress(url: request.shown, phase: .downloading, receivedBytes: 0, totalBytes: nil,
                                     startedAt: .now(), by: request.by)
        fetches.withLock { $0["\(agent)/\(version)"] = progress }
        logger.info("release fetch began", metadata: ["agent": "\(agent)", "version": "\(version)", "url": "\(request.shown)",
                                                      "by": "\(request.by)"])
        Task { await download(request, into: file, signedBy: signedBy, claim: claim) }
        return .started(Self.fetchView(agent: agent, version: version, progress))
    }

    /// `<url>.sig` (`.sig` added to the path, a query kept), if the server publishes one
    /// (nil on 404).
    private func detachedSignature(of request: FetchRequest) async throws(ReleaseRefusal) -> [UInt8]? {
        let cut = request.url.firstIndex(of: "?") ?? request.url.endIndex
        let url = String(request.url[..<cut]) + ".sig" + String(request.url[cut...])
        let shown = FetchRequest.redacted(url)
        let limits = DownloadLimits(maxBytes: 4096, deadline: .seconds(30), stallTimeout: settings.fetchStallTimeout)
        let fetched = await offload { () -> Result<[UInt8]?, DownloadError> in
            Result { () throws(DownloadError) -> [UInt8]? in try Download.fetchSmall(url: url, maxBytes: 4096, limits: limits) }
        }
        switch fetched {
        case .success(nil): return nil
        case .success(let bytes?):
            guard let signature = TrustedKeys.parseSignature(bytes) else {
                throw .signatureUnavailable("\(shown) is not a base64 or raw 64-byte Ed25519 signature")
            }
            return signature
        case .failure(let error):
            throw .signatureUnavailable("\(shown): \(error.description.replacingOccurrences(of: url, with: shown))")
        }
    }

    /// Downloads into `file`, then stores as a push would. Runs after the request was
    /// answered; its outcome is the release (or the failure) `GET` shows, and the ledger.
    private func download(_ request: FetchRequest, into file: DigestingFile, signedBy: String?, claim: Claim) async {
        defer { claim.release() }
        let key = "\(request.agent)/\(request.version)"
        let limits = DownloadLimits(maxBytes: settings.maxBytes, deadline: settings.fetchTimeout,
                                    stallTimeout: settings.fetchStallTimeout)
        let margin = settings.freeSpaceMargin
        // Set from the progress callback when Content-Length cannot fit: the download stops.
        let short = Mutex<ReleaseError?>(nil)
        let downloaded = await offload { () -> Result<DownloadResult, DownloadError> in
            var checked = false
            return Result { () throws(DownloadError) -> DownloadResult in
                try Download.fetch(url: request.url, limits: limits, write: { bytes in
                    do throws(DigestingFile.Failure) { try file.write(bytes) } catch { throw ReleaseError(error) }
                }, progress: { received, total in
                    self.fetches.withLock { $0[key]?.receivedBytes = received; $0[key]?.totalBytes = total }
                    guard !checked, let total else { return }
                    checked = true
                    if let available = try? self.store.freeSpace(agent: request.agent), available < total + margin {
                        short.withLock {
                            $0 = .insufficientSpace(needed: total + margin, available: available, path: self.store.root)
                        }
                    }
                }, isCancelled: { short.withLock { $0 != nil } })
            }
        }
        if case .failure(let error) = downloaded {
            file.discard()
            let reason: String = switch error {
            case .cancelled: short.withLock { $0 }?.description ?? error.description
            default: error.description
            }
            return await failed(request, reason: reason, claim: claim)
        }
        fetches.withLock { $0[key]?.phase = .verifying }
        let announcement = Announcement(agent: request.agent, version: request.version, sha256: request.sha256, signature: nil,
                                        length: nil, irreversible: request.irreversible, by: request.by)
        let provenance = Provenance(source: .fetch, url: request.shown, by: request.by, signedBy: signedBy,
                                    irreversible: request.irreversible)
        var stored = false
        do throws(ReleaseRefusal) {
            // Done in one step: no one sees the fetch over while it still holds the version.
            _ = try await self.store(file, announcement: announcement, provenance: provenance, letGo: {
                fetches.withLock { $0[key] = nil; claim.release() }
                stored = true
            })
        } catch where !stored {
            await failed(request, reason: error.description, claim: claim)
        } catch {
            // Stored and recorded: only reading it back failed (it was deleted meanwhile).
            logger.warning("a fetched release was stored, then could not be read back",
                           metadata: ["agent": "\(request.agent)", "version": "\(request.version)", "error": "\(error)"])
        }
    }

    private func failed(_ request: FetchRequest, reason: String, claim: Claim) async {
        let reason = request.redacting(reason)
        logger.warning("release fetch failed", metadata: ["agent": "\(request.agent)", "version": "\(request.version)",
                                                          "url": "\(request.shown)", "error": "\(reason)"])
        // Recorded before it shows: whoever sees the fetch failed finds it in the ledger.
        do throws(LedgerError) {
            _ = try await ledger.append(.releaseFetchFailed(.init(agent: request.agent, version: request.version, url: request.shown,
                                                                  by: request.by, error: reason)))
        } catch {
            logger.warning("the failed fetch could not be recorded", metadata: ["error": "\(error)"])
        }
        // Shown failed as the version is let go, in one step (a retry seen failed is
        // never refused as busy).
        fetches.withLock {
            $0["\(request.agent)/\(request.version)"]?.phase = .failed
            $0["\(request.agent)/\(request.version)"]?.error = reason
            claim.release()
        }
    }

    static func fetchView(agent: String, version: String, _ fetch: FetchProgress) -> ReleaseView {
        var view = ReleaseView(agent: agent, version: version, state: fetch.phase == .failed ? .failed : .fetching, source: .fetch)
        view.url = fetch.url
        view.fetch = fetch
        return view
    }
}
