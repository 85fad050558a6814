import BatonConfig
import CBatonSpawn
import Foundation
import Glibc

extension Processes {
    /// Runs `argv` in its own process group (stdin from /dev/null, stdout and stderr
    /// together) and waits up to `timeout`; past it the group is killed. Its output is
    /// appended to `log` when given, and its last 4 KiB kept for the result. Blocks the
    /// calling thread: call it off the cooperative pool.
    /// With `diesWithBatond`, the process is killed when batond dies (it never outlives
    /// the batond that waits for it).
    static func runToEnd(_ argv: [String], environment: [String: String], directory: String? = nil,
                         credentials: Credentials? = nil, timeout: Duration, log: String? = nil,
                         diesWithBatond: Bool = false) -> DaemonBinaries.CheckResult {
        typealias Result = DaemonBinaries.CheckResult
        let program = argv.first ?? ""
        var pipeEnds: [Int32] = [0, 0]
        guard baton_pipe_cloexec(&pipeEnds) == 0 else {
            return Result(exitCode: nil, signal: nil, timedOut: false, outputTail: "pipe: \(String(cString: strerror(errno)))")
        }
        var childErrno: Int32 = 0
        var stage: UnsafePointer<CChar>?
        let pid = withCStrings(argv, environment) { cArgv, cEnv in
            baton_spawn(program, cArgv, cEnv, pipeEnds[1], directory, credentials == nil ? 0 : 1,
                        credentials?.uid ?? 0, credentials?.gid ?? 0, credentials?.userName, diesWithBatond ? 1 : 0,
                        &childErrno, &stage)
        }
        close(pipeEnds[1])
        defer { close(pipeEnds[0]) }
        guard pid > 0 else {
            let step = stage.map { String(cString: $0) } ?? "spawn"
            return Result(exitCode: nil, signal: nil, timedOut: false,
                          outputTail: "\(step) \(program): \(String(cString: strerror(childErrno)))")
        }
        let logFD = log.map { open($0, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640) } ?? -1
        defer { if logFD >= 0 { close(logFD) } }
        let deadline = ContinuousClock.now + timeout
        var tail: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        var timedOut = false
        // Read until end of file (it closed its output, usually by exiting).
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { timedOut = true; break }
            var poller = pollfd(fd: pipeEnds[0], events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, Int32(max(1, left.milliseconds)))
            if ready < 0 && errno == EINTR { continue }
            if ready == 0 { continue }
            let count = read(pipeEnds[0], &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            if logFD >= 0 { _ = buffer.withUnsafeBytes { write(logFD, $0.baseAddress, count) } }
            tail += buffer[..<count]
            if tail.count > 4096 { tail.removeFirst(tail.count - 4096) }
        }
        var status: Int32 = 0
        while !timedOut {
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid { break }
            if reaped < 0 && errno != EINTR { break }
            if ContinuousClock.now >= deadline { timedOut = true; break }
            usleep(5_000)
        }
        if timedOut {
            kill(-pid, SIGKILL)
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
        let exited = (status & 0x7f) == 0
        return Result(exitCode: timedOut ? nil : exited ? (status >> 8) & 0xff : nil,
                      signal: exited ? nil : status & 0x7f, timedOut: timedOut,
                      outputTail: String(decoding: tail, as: UTF8.self))
    }

    /// An agent's migration: as the agent's user, in `directory`, with the agent's
    /// environment and `BATON_AGENT`, `BATON_VERSION`, `BATON_MIGRATION=1`; off the
    /// cooperative pool. It dies with batond: a batond started again counts it as failed
    /// and starts the previous versions, so it must not run on beside them.
    static func runMigration(_ argv: [String], agent: AgentConfig, version: String, directory: String, timeout: Duration,
                             log: String) async -> DaemonBinaries.CheckResult {
        await offload { () -> DaemonBinaries.CheckResult in
            let credentials: Credentials?
            do {
                credentials = try Credentials.resolve(user: agent.user, group: agent.group)
            } catch {
                return .init(exitCode: nil, signal: nil, timedOut: false, outputTail: "\(error)")
            }
            let environment = InstanceEnvironment.make(
                config: agent, uid: credentials?.uid ?? getuid(), inherited: ProcessInfo.processInfo.environment,
                baton: ["BATON_AGENT": agent.name, "BATON_VERSION": version, "BATON_MIGRATION": "1"])
            return runToEnd(argv, environment: environment, directory: directory, credentials: credentials,
                            timeout: timeout, log: log, diesWithBatond: true)
        }
    }
}
