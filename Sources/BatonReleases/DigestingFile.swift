import Crypto
import Glibc
import Synchronization

/// A temporary file written a chunk at a time and hashed (SHA-256) as the chunks come:
/// uploads and downloads that never sit whole in memory. Created with `mkstemp` in a
/// directory of the store, so the file it becomes is renamed, never copied. Until
/// `seal`, a file that is dropped (`discard`, or deinit) leaves nothing behind.
public final class DigestingFile: Sendable {
    public enum Failure: Error, Sendable, Equatable {
        case tooLarge(limit: Int64)
        /// ENOSPC or EDQUOT: the disk is full.
        case noSpace(String)
        case io(String, Int32)
    }

    private struct State {
        var fd: Int32
        var hasher = SHA256()
        var size: Int64 = 0
        /// Discarded, or sealed and handed over.
        var done = false
    }

    public let path: String
    public let maxBytes: Int64
    private let state: Mutex<State>

    /// A new empty file `<directory>/<prefix>XXXXXX`, mode 0600.
    public init(directory: String, prefix: String, maxBytes: Int64) throws(Failure) {
        var template = Array("\(directory)/\(prefix)XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw Self.failure("create a temporary file in \(directory)", errno) }
        // batond spawns only through CBatonSpawn, which closes every other descriptor in
        // the child; FD_CLOEXEC is the second line of defence.
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        self.maxBytes = maxBytes
        state = Mutex(State(fd: fd))
    }

    deinit { discard() }

    public var size: Int64 { state.withLock { $0.size } }

    /// Appends a chunk: written, then hashed. Past `maxBytes`, or when the write fails,
    /// the file is discarded and the error thrown.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(Failure) {
        let failure: Failure? = state.withLock { state in
            guard !state.done else { return .io("write \(path)", EBADF) }
            guard state.size + Int64(bytes.count) <= maxBytes else { return .tooLarge(limit: maxBytes) }
            var offset = 0
            while offset < bytes.count {
                let written = Glibc.write(state.fd, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return Self.failure("write \(path)", errno)
                }
                offset += written
            }
            state.hasher.update(bufferPointer: bytes)
            state.size += Int64(bytes.count)
            return nil
        }
        if let failure {
            discard()
            throw failure
        }
    }

    /// The digest and size of everything written, the file made durable (fsync) and
    /// handed over: from here on the caller renames or removes `path`.
    public func seal(mode: mode_t = 0o600) throws(Failure) -> (digest: [UInt8], size: Int64) {
        let result: Result<([UInt8], Int64), Failure> = state.withLock { state in
            guard !state.done else { return .failure(.io("seal \(path)", EBADF)) }
            defer {
                close(state.fd)
                state.done = true
            }
            guard fchmod(state.fd, mode) == 0 else { return .failure(Self.failure("chmod \(path)", errno)) }
            guard fsync(state.fd) == 0 else { return .failure(Self.failure("fsync \(path)", errno)) }
            return .success((Array(state.hasher.finalize()), state.size))
        }
        switch result {
        case .success(let sealed): return sealed
        case .failure(let failure):
            unlink(path)
            throw failure
        }
    }

    /// Drops the file: closes and removes it. Idempotent; a no-op once sealed.
    public func discard() {
        state.withLock { state in
            guard !state.done else { return }
            state.done = true
            close(state.fd)
            unlink(path)
        }
    }

    static func failure(_ operation: String, _ code: Int32) -> Failure {
        code == ENOSPC || code == EDQUOT ? .noSpace(operation) : .io(operation, code)
    }

    /// Creates a directory of a store (one that exists is fine).
    public static func makeDirectory(_ path: String, mode: mode_t = 0o755) throws(Failure) {
        if mkdir(path, mode) != 0 && errno != EEXIST { throw failure("mkdir \(path)", errno) }
    }

    /// Makes a directory's entries (a rename, a new file) durable.
    public static func syncDirectory(_ path: String) throws(Failure) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw failure("open \(path)", errno) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw failure("fsync \(path)", errno) }
    }
}
