import BatonTestSupport
import Foundation
import Glibc
import Testing

/// An instance's output goes to its log file with no pipe to batond in between: it keeps
/// arriving while batond is down, and batond keeps the file under its cap while it runs.
@Suite("instance logs")
struct InstanceLogIntegrationTests {
    /// One line of the agent's output: "loop.1 " and a 100-digit counter.
    static let lineLength = 108

    /// A release of agent `loop` (no protocol: ready by a probe) that writes a numbered
    /// line every 20 ms, to stdout and stderr in turn.
    func start(_ state: TemporaryDirectory, logs: String = "") throws -> BatondProcess {
        let bin = "\(state.path)/releases/loop/1.0/bin"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        try """
            #!/bin/sh
            i=0
            while true; do
              i=$((i + 1))
              if [ $((i % 2)) = 0 ]; then printf '%s %0100d\\n' "$BATON_INSTANCE" "$i"
              else printf '%s %0100d\\n' "$BATON_INSTANCE" "$i" >&2; fi
              sleep 0.02
            done
            """.write(toFile: "\(bin)/loop", atomically: true, encoding: .utf8)
        chmod("\(bin)/loop", 0o755)
        symlink("1.0", "\(state.path)/releases/loop/current")
        return try BatondProcess(state: state, configText: logs + """

            [agents.loop]
            command = ["{release}/bin/loop"]
            readiness = { command = ["/bin/true"] }
            stop_timeout = "1s"
            kill_timeout = "1s"
            """)
    }

    /// The pid of the working instance, once there is one.
    func workingPid(_ daemon: BatondProcess) throws -> Int32 {
        var pid: Int32 = 0
        try waitUntil(timeout: 30) {
            guard let view = try? daemon.endpoint.get("/v1/agents/loop", token: daemon.token).json(),
                  view["state"] as? String == "running",
                  let instance = (view["instances"] as? [[String: Any]])?.first,
                  let number = instance["pid"] as? Int else { return false }
            pid = Int32(number)
            return true
        }
        return pid
    }

    func size(_ path: String) -> Int {
        var info = stat()
        return stat(path, &info) == 0 ? Int(info.st_size) : 0
    }

    @Test func anAgentKeepsWritingItsLogWhileBatondIsDown() throws {
        let state = TemporaryDirectory("logs")
        let daemon = try start(state)
        let pid = try workingPid(daemon)
        // The agent outlives batond: the test ends it (its whole process group).
        defer { kill(-pid, SIGKILL) }
        let log = state.file("logs/loop.1.log")
        try waitUntil(timeout: 30) { size(log) > 0 }

        daemon.signal(SIGKILL)
        #expect(daemon.waitForExit() != nil)
        let atDeath = size(log)
        // Ten more lines with batond gone: with a pipe, the first would have been the
        // agent's death by SIGPIPE.
        try waitUntil(timeout: 20) { size(log) >= atDeath + 10 * Self.lineLength }
        #expect(kill(pid, 0) == 0, "the agent is alive")
        let text = try String(contentsOfFile: log, encoding: .utf8)
        #expect(text.split(separator: "\n").allSatisfy { $0.count == Self.lineLength - 1 && $0.hasPrefix("loop.1 ") })
    }

    @Test func batondRotatesALogPastItsCapInPlace() throws {
        let state = TemporaryDirectory("logs")
        let cap = 4096
        let daemon = try start(state, logs: """
            [logs]
            max_bytes = \(cap)
            check_interval = "100ms"
            """)
        let pid = try workingPid(daemon)
        defer { kill(-pid, SIGKILL) }
        let log = state.file("logs/loop.1.log")
        // About 5 KB a second: past the cap within a second, then rotated at the next check.
        try waitUntil(timeout: 30) { size(log + ".1") >= cap }
        try waitUntil(timeout: 10) { size(log) < cap }
        // With the agent and batond gone, the two files hold still for reading.
        kill(-pid, SIGKILL)
        #expect(daemon.stop() == 0)
        let previous = try String(contentsOfFile: log + ".1", encoding: .utf8)
        let current = try String(contentsOfFile: log, encoding: .utf8)
        // Together, whole lines in order and no hole of zeros: the agent's writes went on
        // at the file's new end (O_APPEND), not at its old offset.
        let lines = (previous + current).split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        #expect(!(previous + current).contains("\0"))
        #expect(lines.allSatisfy { $0.count == Self.lineLength - 1 && $0.hasPrefix("loop.1 ") }, "\(previous + current)")
        let numbers = lines.compactMap { Int($0.dropFirst("loop.1 ".count)) }
        #expect(numbers == numbers.sorted() && Set(numbers).count == numbers.count)
    }
}
