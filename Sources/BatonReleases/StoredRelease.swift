import BatonCore
import Foundation
import Glibc

/// One release as it is on disk: batond's manifest when batond stored it, else (dropped
/// in by hand) only what its author declared, if anything, and the directory's time.
public struct StoredRelease: Sendable, Equatable {
    public var version: String
    /// nil: put in `releases/<agent>/` by hand (`source: local`, no digest, unsigned).
    public var manifest: ReleaseManifest?
    /// The author's flags: from the manifest, or a hand-dropped release's own `release.json`.
    public var declared: ReleaseManifest.Declared
    /// When it was stored (`pushed_at`), or the directory's modification time.
    public var storedAt: Timestamp

    public var irreversible: Bool { manifest?.irreversible ?? declared.irreversible ?? false }
    public var migration: [String]? { manifest?.migration ?? declared.migration }
    public var source: ReleaseManifest.Source { manifest?.source ?? .local }
}

extension ReleaseStore {
    /// The release `version` of `agent`, if its directory exists.
    public func release(agent: String, version: String) -> StoredRelease? {
        guard let directory = directory(agent: agent, version: version) else { return nil }
        var info = stat()
        guard lstat(directory, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else { return nil }
        let storedAt = Timestamp(milliseconds: Int64(info.st_mtim.tv_sec) * 1000 + Int64(info.st_mtim.tv_nsec) / 1_000_000)
        var release = StoredRelease(version: version, manifest: nil, declared: .init(), storedAt: storedAt)
        guard let data = FileManager.default.contents(atPath: "\(directory)/\(ReleaseManifest.fileName)") else { return release }
        if let manifest = try? ReleaseManifest.decode(data), manifest.agent == agent, manifest.version == version {
            release.manifest = manifest
            release.declared = .init(irreversible: manifest.irreversible, migration: manifest.migration)
            release.storedAt = manifest.pushedAt
        } else if let declared = try? ReleaseManifest.decodeDeclared(data) {
            release.declared = declared
        }
        return release
    }

    /// Every release of `agent` on disk, oldest first (by `storedAt`, then version).
    /// Temporary entries (dot-names), `current` and anything that is not a valid
    /// version's directory are not releases.
    public func releases(agent: String) -> [StoredRelease] {
        guard Names.isValidAgent(agent) else { return [] }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "\(root)/\(agent)")) ?? []
        return names.filter(Names.isValidVersion).compactMap { release(agent: agent, version: $0) }
            .sorted { ($0.storedAt, $0.version) < ($1.storedAt, $1.version) }
    }

    /// The agents with a directory under `releases/`.
    public var agents: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).filter(Names.isValidAgent).sorted()
    }

    /// Prefixes of the store's temporary entries in an agent's directory: uploads and
    /// downloads, releases being unpacked, releases being removed, `current` being flipped.
    static let temporaryPrefixes = [".upload-", ".unpack-", ".deleted-", ".current."]

    /// Removes what a crash left half-done: temporary files and directories. Only the
    /// batond that holds the state directory's lock calls it (at start), so none is in
    /// progress. Returns the paths it removed.
    @discardableResult
    public func sweepLeftovers() -> [String] {
        var removed: [String] = []
        for agent in agents {
            let base = "\(root)/\(agent)"
            for name in (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []
            where Self.temporaryPrefixes.contains(where: name.hasPrefix) {
                Unpacker.removeTree("\(base)/\(name)")
                removed.append("\(base)/\(name)")
            }
        }
        return removed
    }

    /// Removes a release: renamed out of its version's name first (atomic: it is there
    /// whole or not at all, and the rename is made durable), then its files.
    public func remove(agent: String, version: String) throws(ReleaseError) {
        guard let directory = directory(agent: agent, version: version) else { throw .invalidName("\(agent)/\(version)") }
        let base = "\(root)/\(agent)"
        var template = Array("\(base)/.deleted-\(version)-XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw .io("create a temporary directory in \(base)", errno)
        }
        let trash = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        guard rename(directory, trash) == 0 else {
            let code = errno
            rmdir(trash)
            throw .io("rename \(directory)", code)
        }
        try Self.syncDirectory(base)
        Unpacker.removeTree(trash)
    }

    static func makeDirectory(_ path: String) throws(ReleaseError) {
        do { try DigestingFile.makeDirectory(path) } catch { throw ReleaseError(error) }
    }

    static func syncDirectory(_ path: String) throws(ReleaseError) {
        do { try DigestingFile.syncDirectory(path) } catch { throw ReleaseError(error) }
    }
}
