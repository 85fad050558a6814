import CBatonSpawn
import Foundation
import Glibc
import Synchronization

/// An instance's output file, `<state_dir>/logs/<instance>.log`. The instance's stdout
/// and stderr are this file itself, opened O_APPEND by batond and inherited: no pipe
/// stands between the instance and the file, so its writes succeed whether batond runs
/// or not. batond keeps the file near `capBytes` while it runs: `rotateIfNeeded` moves
/// its content to `.log.1` in place (docs/limits.md says how, and what it costs).
/// Nothing is kept in memory: a value of this type is a path and a cap,
/// so one can be made for any instance's file, a re-adopted one's included.
struct InstanceLog: Sendable {
    let path: String
    let capBytes: Int

    /// What `lastOutput` returns at most.
    static let tailBytes = 4096

    init(path: String, capBytes: Int) {
        self.path = path
        self.capBytes = capBytes
    }

    var previousPath: String { path + ".1" }

    /// A descriptor for the child's stdout and stderr: append-only, close-on-exec in
    /// batond (the child's dup2 onto 1 and 2 clears it). The file belongs to batond's
    /// user (0640): an agent running as another user writes through the inherited
    /// descriptor, whose access was checked here, and cannot reopen, truncate or read it.
    func openForAppending() throws(SpawnError) -> Int32 {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw SpawnError(description: "open \(path): \(String(cString: strerror(errno)))") }
        return fd
    }

    /// The last `tailBytes` the instance wrote, as text: the end of the file, preceded
    /// by the end of `.log.1` when the file holds less (it was just rotated).
    var lastOutput: String {
        var bytes = Self.readEnd(of: path, count: Self.tailBytes)
        if bytes.count < Self.tailBytes {
            bytes = Self.readEnd(of: previousPath, count: Self.tailBytes - bytes.count) + bytes
        }
        // The cut may fall inside a UTF-8 sequence: start at the next character.
        let start = bytes.firstIndex { $0 & 0xC0 != 0x80 } ?? bytes.endIndex
        return String(decoding: bytes[start...], as: UTF8.self)
    }

    /// Past the cap, moves the file's content to `.log.1` (replacing the one before) and
    /// removes it from the file in place; the instance's writes (O_APPEND) go on at the
    /// file's end throughout. Returns whether it rotated. One caller per file at a time
    /// (batond's one `LogRotation`).
    ///
    /// The whole blocks before the file's last byte are copied to `.log.1.tmp`, renamed
    /// over `.log.1`, and cut from the front of the file with COLLAPSE_RANGE, which the
    /// file system does under the lock appending writers take: nothing is lost, and
    /// less than a block of old output stays at the start. Where the file system cannot
    /// collapse (tmpfs, btrfs), the rest is copied too, up to the moment a read finds
    /// the end, and the file is truncated right then (copytruncate): a write landing
    /// between that read and the truncation is lost. A crash mid-way loses nothing
    /// (at worst `.log.1` and the file share some output).
    @discardableResult
    func rotateIfNeeded() -> Bool {
        let source = open(path, O_RDWR | O_CLOEXEC)
        guard source >= 0 else { return false }
        defer { close(source) }
        var info = stat()
        guard fstat(source, &info) == 0, Int(info.st_size) > capBytes else { return false }
        let size = Int(info.st_size)
        let block = max(Int(info.st_blksize), 1)
        let whole = (size - 1) / block * block
        let temporary = previousPath + ".tmp"
        let target = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard target >= 0 else { return false }
        defer { close(target) }
        var copy = Copy(source: source, target: target)
        guard copy.run(upTo: whole), copy.copied == whole, rename(temporary, previousPath) == 0 else {
            unlink(temporary)
            return false
        }
        if whole > 0 && baton_collapse_front(source, Int64(whole)) == 0 { return true }
        // A writer faster than the copy is cut off after one more cap's worth.
        return copy.run(upTo: size + capBytes, truncatingAtEnd: true)
    }

    /// Copies a file's bytes from the start to a target, in order.
    private struct Copy {
        let source: Int32
        let target: Int32
        var copied = 0
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)

        init(source: Int32, target: Int32) {
            self.source = source
            self.target = target
        }

        /// Copies until `limit` bytes are copied or a read finds the end; with
        /// `truncatingAtEnd`, truncates the source to 0 the moment it does, before
        /// anything else. false on an error (nothing truncated then).
        mutating func run(upTo limit: Int, truncatingAtEnd: Bool = false) -> Bool {
            while copied < limit {
                let count = buffer.withUnsafeMutableBytes { [copied] in
                    pread(source, $0.baseAddress, min($0.count, limit - copied), off_t(copied))
                }
                if count < 0 && errno == EINTR { continue }
                guard count >= 0 else { return false }
                if count == 0 { break }
                guard writeAll(count) else { return false }
                copied += count
            }
            return !truncatingAtEnd || ftruncate(source, 0) == 0
        }

        private func writeAll(_ count: Int) -> Bool {
            var written = 0
            while written < count {
                let result = buffer.withUnsafeBytes { write(target, $0.baseAddress! + written, count - written) }
                if result < 0 && errno == EINTR { continue }
                guard result > 0 else { return false }
                written += result
            }
            return true
        }
    }

    private static func size(_ fd: Int32) -> Int {
        var info = stat()
        return fstat(fd, &info) == 0 ? Int(info.st_size) : 0
    }

    /// Up to `count` bytes from the end of the file at `path` (none if it is missing).
    private static func readEnd(of path: String, count: Int) -> [UInt8] {
        guard count > 0 else { return [] }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        let size = Self.size(fd)
        var bytes = [UInt8](repeating: 0, count: min(count, size))
        var filled = 0
        while filled < bytes.count {
            let got = bytes.withUnsafeMutableBytes {
                pread(fd, $0.baseAddress! + filled, $0.count - filled, off_t(size - $0.count + filled))
            }
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else { break }
            filled += got
        }
        return Array(bytes[0..<filled])
    }
}

/// Keeps the logs of the instances batond knows (started or re-adopted) near their cap:
/// one thread for all of them, waking every `interval`, never one per instance.
final class LogRotation: Sendable {
    let interval: Duration
    private let logs = Mutex<[String: InstanceLog]>([:])
    private let stopped = DispatchSemaphore(value: 0)
    private let running = Atomic<Bool>(false)

    init(interval: Duration) {
        self.interval = interval
    }

    /// Checks `log` from now on, as the log of `instance`.
    func watch(_ instance: String, _ log: InstanceLog) {
        logs.withLock { $0[instance] = log }
    }

    /// Stops checking the log of `instance` (it exited).
    func forget(_ instance: String) {
        logs.withLock { _ = $0.removeValue(forKey: instance) }
    }

    /// Checks every watched log once.
    func rotateAll() {
        for log in logs.withLock({ Array($0.values) }) { log.rotateIfNeeded() }
    }

    /// Starts the checks (once).
    func start() {
        guard !running.exchange(true, ordering: .relaxed) else { return }
        let thread = Thread { [self] in
            // The config keeps the interval between 100 ms and an hour.
            let nanoseconds = Int(interval.components.seconds) * 1_000_000_000 + Int(interval.components.attoseconds / 1_000_000_000)
            while stopped.wait(timeout: .now() + .nanoseconds(nanoseconds)) == .timedOut { rotateAll() }
        }
        thread.name = "baton.logs"
        thread.start()
    }

    /// Ends the checks (the instances' output still reaches their files).
    func stop() {
        if running.load(ordering: .relaxed) { stopped.signal() }
    }
}
