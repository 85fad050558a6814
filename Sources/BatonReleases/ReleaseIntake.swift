import BatonCore
import Foundation
import Glibc

/// Where a new release's bytes came from and who asked: written into its manifest.
public struct Provenance: Sendable, Equatable {
    public var source: ReleaseManifest.Source
    public var url: String?
    public var by: String
    public var signedBy: String?
    /// Declared by the pusher (`?irreversible=true`), besides the archive's own `release.json`.
    public var irreversible: Bool

    public init(source: ReleaseManifest.Source, url: String? = nil, by: String, signedBy: String? = nil, irreversible: Bool = false) {
        self.source = source; self.url = url; self.by = by; self.signedBy = signedBy; self.irreversible = irreversible
    }
}

/// A release made whole in a temporary directory beside its final place, every file and
/// directory of it durable: `publish` renames it under its version (one atomic step),
/// `discard` removes it. Until published, no listing shows it and a crash leaves only a
/// temporary name the next start sweeps.
public struct PreparedRelease: Sendable {
    public let manifest: ReleaseManifest
    let temporary: String
    let store: ReleaseStore

    /// Renames it into place and makes the rename durable. Refuses to replace a release
    /// stored meanwhile (the caller holds the version, so only a hand could).
    public func publish() throws(ReleaseError) {
        guard let target = store.directory(agent: manifest.agent, version: manifest.version) else {
            throw .invalidName("\(manifest.agent)/\(manifest.version)")
        }
        guard !store.exists(agent: manifest.agent, version: manifest.version) else {
            discard()
            throw .exists(manifest.version)
        }
        guard rename(temporary, target) == 0 else {
            let code = errno
            discard()
            throw code == ENOTEMPTY || code == EEXIST ? .exists(manifest.version) : .failure("rename \(temporary)", code)
        }
        try ReleaseStore.syncDirectory("\(store.root)/\(manifest.agent)")
    }

    public func discard() {
        Unpacker.removeTree(temporary)
    }
}

extension ReleaseStore {
    /// The file system's free space for new releases of `agent`, in bytes.
    public func freeSpace(agent: String) throws(ReleaseError) -> Int64 {
        try Self.makeDirectory(root)
        var info = statvfs()
        guard statvfs(root, &info) == 0 else { throw .failure("statvfs \(root)", errno) }
        return Int64(info.f_bavail) * Int64(info.f_frsize)
    }

    /// A temporary file in the agent's directory for a new release's bytes, up to `maxBytes`.
    public func receive(agent: String, maxBytes: Int64) throws(ReleaseError) -> DigestingFile {
        guard Names.isValidAgent(agent) else { throw .invalidName(agent) }
        try Self.makeDirectory(root)
        try Self.makeDirectory("\(root)/\(agent)")
        do throws(DigestingFile.Failure) {
            return try DigestingFile(directory: "\(root)/\(agent)", prefix: ".upload-", maxBytes: maxBytes)
        } catch {
            throw ReleaseError(error)
        }
    }

    /// Checks the bytes received in `file` against `expected` (SHA-256), tells what they
    /// are by their content, and makes the release in a temporary directory: a single
    /// executable becomes `bin/<agent>` (0755), an archive is unpacked by `Unpacker`
    /// (its checks and `limits`); then `release.json` is written. Everything is fsync'd.
    /// Whatever it throws, nothing of it is left on disk.
    public func prepare(_ file: DigestingFile, expected: [UInt8], agent: String, version: String,
                        provenance: Provenance, limits: UnpackLimits) throws(ReleaseError) -> PreparedRelease {
        guard directory(agent: agent, version: version) != nil else {
            file.discard()
            throw .invalidName("\(agent)/\(version)")
        }
        let sealed: (digest: [UInt8], size: Int64)
        do throws(DigestingFile.Failure) {
            sealed = try file.seal()
        } catch {
            throw ReleaseError(error)
        }
        let artifact = file.path
        defer { unlink(artifact) }
        guard sealed.digest == expected else {
            throw .digestMismatch(expected: Hex.encode(expected), actual: Hex.encode(sealed.digest))
        }
        guard let format = try? Unpacker.format(ofFileAt: artifact) else { throw .unsupportedFormat }

        let base = "\(root)/\(agent)"
        var template = Array("\(base)/.unpack-\(version)-XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw .failure("create a temporary directory in \(base)", errno)
        }
        let temporary = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        let prepared: PreparedRelease
        do throws(ReleaseError) {
            guard chmod(temporary, 0o755) == 0 else { throw .failure("chmod \(temporary)", errno) }
            var unpacked = Unpacked(bytes: sealed.size, files: 1, declared: nil)
            if format == .executable {
                let bin = "\(temporary)/bin"
                try Self.makeDirectory(bin)
                guard chmod(artifact, 0o755) == 0 else { throw .failure("chmod \(artifact)", errno) }
                guard rename(artifact, "\(bin)/\(agent)") == 0 else { throw .failure("rename \(artifact)", errno) }
                try Self.syncDirectory(bin)
            } else {
                do throws(UnpackError) {
                    unpacked = try Unpacker.unpack(archive: artifact, format: format, into: temporary, limits: limits)
                } catch {
                    throw ReleaseError(error)
                }
            }
            let manifest = ReleaseManifest(
                agent: agent, version: version, sha256: Hex.encode(sealed.digest), size: sealed.size,
                unpackedBytes: unpacked.bytes, files: unpacked.files, format: format, source: provenance.source,
                url: provenance.url, pushedAt: .now(), pushedBy: provenance.by, signedBy: provenance.signedBy,
                irreversible: provenance.irreversible || (unpacked.declared?.irreversible ?? false),
                migration: unpacked.declared?.migration)
            try Self.writeManifest(manifest, into: temporary)
            prepared = PreparedRelease(manifest: manifest, temporary: temporary, store: self)
        } catch {
            Unpacker.removeTree(temporary)
            throw error
        }
        return prepared
    }

    /// `release.json`, written beside under a temporary name and renamed over whatever the
    /// archive had there (a file or a link: rename replaces the name, never a target).
    static func writeManifest(_ manifest: ReleaseManifest, into directory: String) throws(ReleaseError) {
        let data: Data
        do { data = try manifest.encoded() } catch { throw .io("encode release.json: \(error)", EINVAL) }
        let temporary = "\(directory)/.\(ReleaseManifest.fileName).tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o644)
        guard fd >= 0 else { throw .failure("create \(temporary)", errno) }
        defer { close(fd) }
        let written = data.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == data.count else { throw .failure("write \(temporary)", written < 0 ? errno : EIO) }
        guard fsync(fd) == 0 else { throw .failure("fsync \(temporary)", errno) }
        guard rename(temporary, "\(directory)/\(ReleaseManifest.fileName)") == 0 else {
            throw .failure("rename \(temporary)", errno)
        }
        try syncDirectory(directory)
    }
}

extension ReleaseError {
    init(_ error: UnpackError) {
        switch error {
        case .noSpace(let operation, _): self = .noSpace(operation)
        case .io(let operation, let code): self = .io(operation, code)
        default: self = .unsafeArchive(error.description)
        }
    }
}
