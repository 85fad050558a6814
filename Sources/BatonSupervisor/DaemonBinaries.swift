import BatonCore
import BatonReleases
import CBatonSpawn
import Crypto
import Foundation
import Glibc
import Synchronization

/// batond's own binaries, kept like releases: `<state_dir>/daemon/<sha256hex>/batond`
/// (0755, named by the SHA-256 of its bytes) and `daemon/current`, a symlink to the
/// digest directory that the service manager's `ExecStart=` goes through
/// (`daemon/current/batond`). `current` moves only once a new binary has confirmed
/// (`daemon.upgraded`), atomically (new link, rename, fsync of the directory).
public struct DaemonBinaries: Sendable {
    public static let directoryName = "daemon"
    public static let binaryName = "batond"

    public let root: String

    public init(stateDirectory: String) {
        root = stateDirectory + "/" + Self.directoryName
    }

    /// The stored binary with this digest (64 lowercase hex digits), if there is one.
    public func binary(digest: String) -> String? {
        guard Self.isDigest(digest) else { return nil }
        let path = "\(root)/\(digest)/\(Self.binaryName)"
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return nil }
        return path
    }

    /// The digest `current` points at, when it points at a stored binary.
    public var current: String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink("\(root)/current", &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        let target = String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let digest = target.split(separator: "/").last.map(String.init) ?? target
        return binary(digest: digest) == nil ? nil : digest
    }

    /// Points `current` at a stored binary: a new link under a temporary name renamed
    /// over the old one, then the directory fsync'd, so `current` names one binary or
    /// the other, durably.
    public func setCurrent(_ digest: String) throws(StoreError) {
        guard binary(digest: digest) != nil else { throw .notStored(digest) }
        let temporary = "\(root)/.current.\(getpid()).tmp"
        unlink(temporary)
        guard symlink(digest, temporary) == 0 else { throw .io("symlink \(temporary)", errno) }
        guard rename(temporary, "\(root)/current") == 0 else {
            let error = errno
            unlink(temporary)
            throw .io("rename \(temporary)", error)
        }
        try Self.syncDirectory(root)
    }

    /// Removes the temporary files of uploads a crash cut short. Only the batond that
    /// holds the state directory's lock calls it (at start), so none is in progress.
    public func removeLeftoverUploads() {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [] where name.hasPrefix(".upload-") {
            unlink("\(root)/\(name)")
        }
    }

    /// Starts storing a binary whose SHA-256 should be `expected`: its bytes go to a
    /// temporary file in `daemon/` as they arrive (`BinaryUpload.write`), and `finish`
    /// keeps it only if the digest matches.
    public func upload(expected: [UInt8], maxBytes: Int) throws(StoreError) -> BinaryUpload {
        try Self.makeDirectory(root)
        return try BinaryUpload(store: self, expected: expected, maxBytes: maxBytes)
    }

    /// Stores the file at `path` (e.g. `/proc/self/exe`) under its digest; returns the
    /// digest and whether it was stored already.
    public func store(copyOf path: String) throws(StoreError) -> (digest: String, existed: Bool) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io("open \(path)", errno) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .io("stat \(path)", errno) }
        let digest = try Self.digest(of: fd, path: path)
        let upload = try upload(expected: Array(digest.bytes), maxBytes: Int(info.st_size))
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        guard lseek(fd, 0, SEEK_SET) == 0 else { throw .io("seek \(path)", errno) }
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw .io("read \(path)", errno) }
            if count == 0 { break }
            let failure: StoreError? = buffer.withUnsafeBytes { raw in
                do throws(StoreError) {
                    try upload.write(UnsafeRawBufferPointer(rebasing: raw[..<count]))
                    return nil
                } catch {
                    return error
                }
            }
            if let failure { throw failure }
        }
        let stored = try upload.finish()
        return (stored.digest, stored.existed)
    }

    /// The SHA-256 (hex) of a file, read a chunk at a time.
    public static func digest(ofFile path: String) throws(StoreError) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io("open \(path)", errno) }
        defer { close(fd) }
        return try digest(of: fd, path: path).hex
    }

    private static func digest(of fd: Int32, path: String) throws(StoreError) -> (bytes: [UInt8], hex: String) {
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw .io("read \(path)", errno) }
            if count == 0 { break }
            buffer.withUnsafeBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[..<count])) }
        }
        let bytes = Array(hasher.finalize())
        return (bytes, Hex.encode(bytes))
    }

    /// 64 lowercase hex digits: the only names the store has.
    public static func isDigest(_ text: String) -> Bool { Hex.isSHA256(text) }

    static func makeDirectory(_ path: String) throws(StoreError) {
        do { try DigestingFile.makeDirectory(path) } catch { throw StoreError(error) }
    }

    static func syncDirectory(_ path: String) throws(StoreError) {
        do { try DigestingFile.syncDirectory(path) } catch { throw StoreError(error) }
    }

    public enum StoreError: Error, Sendable, CustomStringConvertible {
        case notStored(String)
        case tooLarge(limit: Int)
        case mismatch(expected: String, actual: String)
        case io(String, Int32)

        public var description: String {
            switch self {
            case .notStored(let digest): "no stored batond binary has the digest \(digest)"
            case .tooLarge(let limit): "the binary exceeds \(limit) bytes"
            case .mismatch(let expected, let actual): "the body's SHA-256 is \(actual), not \(expected) as Content-Digest says; nothing was kept"
            case .io(let operation, let errno): "\(operation): \(String(cString: strerror(errno)))"
            }
        }
    }
}

/// A binary on its way into the store: bytes are written to a temporary file and hashed
/// as they come (`DigestingFile`), so the body is never whole in memory. `finish` checks
/// the digest, and renames it to `daemon/<digest>/batond`; an upload that is never
/// finished, or whose digest does not match, leaves nothing behind.
public final class BinaryUpload: Sendable {
    let store: DaemonBinaries
    let expected: [UInt8]
    let file: DigestingFile

    init(store: DaemonBinaries, expected: [UInt8], maxBytes: Int) throws(DaemonBinaries.StoreError) {
        self.store = store
        self.expected = expected
        do {
            file = try DigestingFile(directory: store.root, prefix: ".upload-", maxBytes: Int64(maxBytes))
        } catch {
            throw DaemonBinaries.StoreError(error)
        }
    }

    public var size: Int { Int(file.size) }

    /// Appends a chunk: written to the file and hashed. Past `maxBytes`, throws (and the
    /// upload is abandoned).
    public func write(_ bytes: UnsafeRawBufferPointer) throws(DaemonBinaries.StoreError) {
        do { try file.write(bytes) } catch { throw DaemonBinaries.StoreError(error) }
    }

    /// Checks the digest and keeps the binary: fsync, 0755, rename into its digest's
    /// directory, fsync both directories. When that digest is stored already, the
    /// upload is dropped and `existed` is true.
    public func finish() throws(DaemonBinaries.StoreError) -> (digest: String, size: Int, existed: Bool) {
        let sealed: (digest: [UInt8], size: Int64)
        do { sealed = try file.seal(mode: 0o755) } catch { throw DaemonBinaries.StoreError(error) }
        let temporary = file.path
        let hex = Hex.encode(sealed.digest)
        guard sealed.digest == expected else {
            unlink(temporary)
            throw .mismatch(expected: Hex.encode(expected), actual: hex)
        }
        if store.binary(digest: hex) != nil {
            unlink(temporary)
            return (hex, Int(sealed.size), true)
        }
        do throws(DaemonBinaries.StoreError) {
            let directory = "\(store.root)/\(hex)"
            try DaemonBinaries.makeDirectory(directory)
            let target = "\(directory)/\(DaemonBinaries.binaryName)"
            guard rename(temporary, target) == 0 else { throw .io("rename \(temporary) to \(target)", errno) }
            try DaemonBinaries.syncDirectory(directory)
            try DaemonBinaries.syncDirectory(store.root)
        } catch {
            unlink(temporary)
            throw error
        }
        return (hex, Int(sealed.size), false)
    }

    /// Drops the upload: closes and removes the temporary file. Idempotent.
    public func abandon() {
        file.discard()
    }
}

extension DaemonBinaries.StoreError {
    init(_ failure: DigestingFile.Failure) {
        switch failure {
        case .tooLarge(let limit): self = .tooLarge(limit: Int(limit))
        case .noSpace(let operation): self = .io(operation, ENOSPC)
        case .io(let operation, let code): self = .io(operation, code)
        }
    }
}

// MARK: - Running a binary's self-check

extension DaemonBinaries {
    /// How a `--self-check` run ended.
    public struct CheckResult: Sendable {
        public var exitCode: Int32?
        public var signal: Int32?
        public var timedOut: Bool
        /// The last 4 KiB of what it printed (stdout and stderr together).
        public var outputTail: String

        public var passed: Bool { exitCode == 0 && !timedOut }

        /// How it ended, with the output's tail: "exited 3: ...".
        public var reason: String {
            let tail = outputTail.trimmingCharacters(in: .whitespacesAndNewlines)
            if !timedOut && exitCode == nil && signal == nil { return "could not start: \(tail)" }
            let how = timedOut ? "did not finish in time (killed)"
                : exitCode.map { "exited \($0)" } ?? "was killed by signal \(signal ?? 0)"
            return how + (tail.isEmpty ? "" : ": \(tail)")
        }
    }

    /// Runs `binary` with `arguments` (`--self-check` among them) and waits up to
    /// `timeout` (see `Processes.runToEnd`). Blocks the calling thread: call it off the
    /// cooperative pool. `environment` should not carry NOTIFY_SOCKET: the check is no service.
    public static func runCheck(binary: String, arguments: [String], environment: [String: String],
                                timeout: Duration) -> CheckResult {
        Processes.runToEnd([binary] + arguments, environment: environment, timeout: timeout)
    }
}
