import BatonCore
import Foundation
import Glibc

/// Release storage: `<state_dir>/releases/<agent>/<version>/`, and the `current`
/// symlink beside them, flipped atomically (new link, rename, fsync the directory).
public struct ReleaseStore: Sendable {
    public let root: String

    public init(stateDirectory: String) {
        root = stateDirectory + "/releases"
    }

    /// The directory of a release. Names are validated before they reach the path.
    public func directory(agent: String, version: String) -> String? {
        guard Names.isValidAgent(agent), Names.isValidVersion(version) else { return nil }
        return "\(root)/\(agent)/\(version)"
    }

    public func exists(agent: String, version: String) -> Bool {
        guard let directory = directory(agent: agent, version: version) else { return false }
        var info = stat()
        return stat(directory, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// What batond's `release.json` says of a release it stored; nil for one dropped in
    /// by hand (see `release(agent:version:)`, which reads those too).
    public func manifest(agent: String, version: String) -> ReleaseManifest? {
        release(agent: agent, version: version)?.manifest
    }

    /// The version `current` points at, if it points at a valid release.
    public func current(agent: String) -> String? {
        guard Names.isValidAgent(agent) else { return nil }
        let link = "\(root)/\(agent)/current"
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink(link, &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        let target = String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let version = target.split(separator: "/").last.map(String.init) ?? target
        guard Names.isValidVersion(version), exists(agent: agent, version: version) else { return nil }
        return version
    }

    /// Points `current` at `version`: a new link under a temporary name, renamed over
    /// the old one, so `current` always names one release or the other. The directory is
    /// not fsync'd here: the ledger's `release.current` record is durable first, and at
    /// boot the supervisor puts `current` back in line with the ledger (`reconcile`),
    /// which keeps an fdatasync out of the handoff's gap.
    public func setCurrent(agent: String, version: String) throws(ReleaseError) {
        guard directory(agent: agent, version: version) != nil else {
            throw .invalidName("\(agent)/\(version)")
        }
        let base = "\(root)/\(agent)"
        let temporary = "\(base)/.current.\(getpid()).tmp"
        unlink(temporary)
        guard symlink(version, temporary) == 0 else {
            throw .io("symlink \(temporary)", errno)
        }
        guard rename(temporary, "\(base)/current") == 0 else {
            let error = errno
            unlink(temporary)
            throw .io("rename \(temporary)", error)
        }
    }

    /// Makes `current` agree with the ledger's last commit, when that release exists.
    /// Returns the version it flipped to, if it had to.
    public func reconcile(agent: String, recorded: String?) -> String? {
        guard let recorded, recorded != current(agent: agent), exists(agent: agent, version: recorded) else { return nil }
        return (try? setCurrent(agent: agent, version: recorded)) == nil ? nil : recorded
    }
}
