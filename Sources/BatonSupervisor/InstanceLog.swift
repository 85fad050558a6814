import Foundation
import Glibc
import Synchronization

/// An instance's output file, `<state_dir>/logs/<instance>.log`. The instance's stdout
/// and stderr are this file itself, opened O_APPEND by batond and inherited: no pipe
/// stands between the instance and the file, so its writes succeed whether batond runs
/// or not. batond keeps the file near `capBytes` while it runs: `rotateIfNeeded` copies
/// it to `.log.1` and truncates it in place (copytruncate; see docs/limits.md for what
/// that costs). Nothing is kept in memory: a value of this type is a path and a cap,
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
    /// truncates the file to 0; writers continue at its new end (O_APPEND). The copy is
    /// written beside `.log.1` and renamed over it, so a crash mid-copy keeps the old
    /// one. Bytes the instance writes while the copy runs are copied too (until the size
    /// holds still); only those written between the last look at the size and the
    /// truncation (a few system calls) are lost. Returns whether it rotated. One caller
    /// per file at a time (batond's one `LogRotation`).
    @discardableResult
    func rotateIfNeeded() -> Bool {
        let source = open(path, O_RDWR | O_CLOEXEC)
        guard source >= 0 else { return false }
        defer { close(source) }
        guard Self.size(source) > capBytes else { return false }
        let temporary = previousPath + ".tmp"
        let target = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard target >= 0 else { return false }
        var copied = 0
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        // Catch up with the writer until a look at the size finds nothing new, a few
        // rounds at most: a writer faster than the copy cannot keep batond here.
        for round in 0... {
            let size = Self.size(source)
            guard size > copied, round < 4 else { break }
            while copied < size {
                let count = buffer.withUnsafeMutableBytes { pread(source, $0.baseAddress, min($0.count, size - copied), off_t(copied)) }
                if count < 0 && errno == EINTR { continue }
                guard count > 0, Self.writeAll(target, buffer[0..<count]) else {
                    close(target)
                    unlink(temporary)
                    return false
                }
                copied += count
            }
        }
        close(target)
        guard rename(temporary, previousPath) == 0 else {
            unlink(temporary)
            return false
        }
        return ftruncate(source, 0) == 0
    }

    private static func size(_ fd: Int32) -> Int {
        var info = stat()
        return fstat(fd, &info) == 0 ? Int(info.st_size) : 0
    }

    private static func writeAll(_ fd: Int32, _ bytes: ArraySlice<UInt8>) -> Bool {
        var rest = bytes
        while !rest.isEmpty {
            let count = rest.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return false }
            rest = rest.dropFirst(count)
        }
        return true
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
