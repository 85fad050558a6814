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
