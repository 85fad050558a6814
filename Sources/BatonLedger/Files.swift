import BatonCore
import Glibc
import Synchronization

/// The system calls that make ledger bytes durable, as a seam: batond uses the
/// system's; tests inject ENOSPC or EIO on write and fdatasync.
public struct FileIO: Sendable {
    /// write(2): bytes written, or -1 with errno set.
    public var write: @Sendable (_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int
    /// fdatasync(2): 0, or -1 with errno set.
    public var sync: @Sendable (_ fd: Int32) -> Int32

    public init(write: @escaping @Sendable (Int32, UnsafeRawBufferPointer) -> Int, sync: @escaping @Sendable (Int32) -> Int32) {
        self.write = write
        self.sync = sync
    }

    public static let system = FileIO(write: { fd, bytes in Glibc.write(fd, bytes.baseAddress, bytes.count) },
                                      sync: { fd in fdatasync(fd) })
}

/// Thin, errno-checked file operations for the ledger: every durable step (write,
/// fsync, rename, directory fsync) in one place.
enum Files {
    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o640) throws(LedgerError) -> Int32 {
        let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
        guard fd >= 0 else { throw .io(operation: "open", path: path, errno: errno) }
        return fd
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String, io: FileIO = .system) throws(LedgerError) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw in
                io.write(fd, UnsafeRawBufferPointer(rebasing: raw[offset...]))
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw .io(operation: "write", path: path, errno: errno)
            }
            offset += written
        }
    }

    static func sync(_ fd: Int32, path: String, io: FileIO = .system) throws(LedgerError) {
        guard io.sync(fd) == 0 else { throw .io(operation: "fdatasync", path: path, errno: errno) }
    }

    static func syncDirectory(_ path: String) throws(LedgerError) {
        let fd = try open(path, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw .io(operation: "fsync", path: path, errno: errno) }
    }

    static func readAll(_ path: String) throws(LedgerError) -> [UInt8]? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw .io(operation: "open", path: path, errno: errno)
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .io(operation: "read", path: path, errno: errno)
            }
            if count == 0 { break }
            bytes += chunk[0..<count]
        }
        return bytes
    }

    static let chunkSize = 1 << 16

    /// Reads up to `count` bytes at `offset` into `buffer`; 0 at the end of the file.
    static func read(_ fd: Int32, into buffer: inout [UInt8], count: Int, at offset: Int? = nil,
                     path: String) throws(LedgerError) -> Int {
        while true {
            let got = buffer.withUnsafeMutableBytes { raw in
                if let offset { pread(fd, raw.baseAddress, min(count, raw.count), off_t(offset)) }
                else { Glibc.read(fd, raw.baseAddress, min(count, raw.count)) }
            }
            if got >= 0 { return got }
            if errno != EINTR { throw .io(operation: "read", path: path, errno: errno) }
        }
    }

    /// Appends the bytes of `source` from `offset` to its end (or `length` of them) to
    /// `destination`, a chunk at a time; `inspect` sees every chunk.
    static func copy(_ source: Int32, path: String, from offset: Int, length: Int? = nil,
                     to destination: Int32, path destinationPath: String,
                     inspect: ([UInt8]) -> Void = { _ in }) throws(LedgerError) {
        var buffer = [UInt8](repeating: 0, count: chunkSize)
        var position = offset
        var remaining = length ?? Int.max
        while remaining > 0 {
            let count = try read(source, into: &buffer, count: remaining, at: position, path: path)
            if count == 0 {
                guard length == nil else { throw .io(operation: "read", path: path, errno: ENODATA) }
                break
            }
            let chunk = Array(buffer[..<count])
            inspect(chunk)
            try writeAll(destination, chunk, path: destinationPath)
            position += count
            remaining -= count
        }
    }

    /// Replaces `path` with `bytes` atomically and durably: temp file, fsync, rename, fsync dir.
    static func replace(_ path: String, with bytes: [UInt8], directory: String, mode: mode_t = 0o640,
                        io: FileIO = .system) throws(LedgerError) {
        let temporary = path + ".tmp"
        let fd = try open(temporary, O_WRONLY | O_CREAT | O_TRUNC, mode: mode)
        do throws(LedgerError) {
            try writeAll(fd, bytes, path: temporary, io: io)
            try sync(fd, path: temporary, io: io)
        } catch {
            close(fd)
            unlink(temporary)
            throw error
        }
        close(fd)
        guard rename(temporary, path) == 0 else { throw .io(operation: "rename", path: temporary, errno: errno) }
        try syncDirectory(directory)
    }

    static func makeDirectory(_ path: String, mode: mode_t = 0o750) throws(LedgerError) {
        if mkdir(path, mode) != 0 && errno != EEXIST {
            throw .io(operation: "mkdir", path: path, errno: errno)
        }
    }
}

/// The exclusive lock on a state directory (`batond.lock`, flock). Held for the life of
/// the process; the descriptor is close-on-exec so agents never inherit it.
public final class StateLock: Sendable {
    public let path: String
    /// The locked descriptor; -1 once released.
    private let fd: Mutex<Int32>

    public init(directory: String) throws(LedgerError) {
        path = directory + "/batond.lock"
        let fd = try Files.open(path, O_RDWR | O_CREAT, mode: 0o600)
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let holder = (try? Files.readAll(path)).flatMap { $0 }.map { String(decoding: $0, as: UTF8.self) }?
                .trimmed(of: " \n")
            close(fd)
            throw .locked(directory: directory, holder: holder?.isEmpty == false ? holder : nil)
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        self.fd = Mutex(fd)
    }

    /// Unlocks the directory (closing the descriptor drops the flock).
    public func release() {
        fd.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
    }

    deinit { release() }
}
