import Foundation
import Glibc

/// A process the test did not start and cannot wait for (an instance whose batond was
/// killed: its parent is now whoever reaps orphans), known by pid and start time so
/// that a reused pid is never taken for it, nor killed in its place.
public struct ProcessProbe: Sendable, CustomStringConvertible {
    public let pid: Int32
    /// `/proc/PID/stat` field 22; nil when the process was already gone.
    public let startTime: UInt64?

    public init(_ pid: Int32) {
        self.pid = pid
        startTime = Self.stat(pid)?.startTime
    }

    /// Still running: the same process, and not a zombie waiting for a reaper.
    public var isAlive: Bool {
        guard let now = Self.stat(pid), now.startTime == startTime else { return false }
        return now.state != "Z"
    }

    /// `/proc/PID/comm`: the program name (e.g. `bash`).
    public var command: String? {
        (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .newlines)
    }

    /// The live processes whose parent this one is.
    public var children: [ProcessProbe] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap(Int32.init).filter { Self.stat($0)?.parent == pid }.map(ProcessProbe.init).filter(\.isAlive)
    }

    /// Its children, their children... (parents first).
    public var descendants: [ProcessProbe] {
        children.flatMap { [$0] + $0.descendants }
    }

    /// SIGKILL, if it is still this process. For a test's cleanup.
    public func kill() {
        if isAlive { Glibc.kill(pid, SIGKILL) }
    }

    /// Waits until the process exits (its pidfd turns readable: exited, reaped or not),
    /// up to `timeout` seconds; true once it has. False if it could not be watched.
    public func waitForExit(timeout: Double) -> Bool {
        guard let pidfdOpen = Self.pidfdOpen else { return false }
        let fd = pidfdOpen(pid, 0)
        guard fd >= 0 else { return errno == ESRCH }
        defer { close(fd) }
        // Opened, then checked: the pidfd is this process's, not a reused pid's.
        guard isAlive else { return true }
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let deadline = monotonicNanoseconds() + UInt64(timeout * 1e9)
        while true {
            let now = monotonicNanoseconds()
            guard now < deadline else { return false }
            let ready = poll(&poller, 1, Int32((deadline - now) / 1_000_000) + 1)
            if ready > 0 { return true }
            if ready < 0 && errno != EINTR { return false }
        }
    }

    /// pidfd_open(2), which the Glibc module does not declare: glibc 2.36 exports it.
    private static let pidfdOpen: (@convention(c) (Int32, UInt32) -> Int32)? =
        dlsym(nil, "pidfd_open").map { unsafeBitCast($0, to: (@convention(c) (Int32, UInt32) -> Int32).self) }

    public var description: String { "pid \(pid)" }

    /// Fields 3 (state), 4 (parent) and 22 (start time) of `/proc/PID/stat`; the
    /// command (field 2) may hold spaces and parentheses, so counting starts after its last `)`.
    static func stat(_ pid: Int32) -> (state: Character, parent: Int32, startTime: UInt64)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let state = fields[0].first, let parent = Int32(fields[1]),
              let start = UInt64(fields[19]) else { return nil }
        return (state, parent, start)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of baton-testagent's `--events` lines.
public func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}
