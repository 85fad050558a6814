import BatonCore
import CBatonSpawn
import Foundation
import Glibc

/// How a process ended: data, not an error.
public enum ExitStatus: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signalled(Int32)
    /// A process batond did not start ended; only its parent learns how.
    case vanished

    public var description: String {
        switch self {
        case .exited(let code): "exit \(code)"
        case .signalled(let signal): "signal \(signal)"
        case .vanished: "ended"
        }
    }

    var code: Int32? { if case .exited(let code) = self { code } else { nil } }
    var signal: Int32? { if case .signalled(let signal) = self { signal } else { nil } }
}

public struct SpawnError: Error, Sendable, CustomStringConvertible {
    public let description: String
}

/// A started process: its pid (also its process group), its start time (with the pid,
/// its identity) and its output.
struct SpawnedProcess: Sendable {
    let pid: Int32
    let startTime: UInt64
    /// The output batond reads; nil for a registered process (not batond's child).
    let log: InstanceLog?

    var isChild: Bool { log != nil }

    /// Signals the process: the whole process group of a child batond started, the
    /// process alone for a registered one (its group is not batond's to signal).
    func send(_ signal: Int32) {
        if isChild { Processes.signal(pid, signal) } else { kill(pid, signal) }
    }
}

/// Who a child runs as, when not batond's own user.
struct Credentials: Sendable {
    let uid: uid_t
    let gid: gid_t
    let userName: String?

    /// Resolves `user` and `group` names (or numbers) from the agent's config.
    static func resolve(user: String?, group: String?) throws(SpawnError) -> Credentials? {
        guard user != nil || group != nil else { return nil }
        var uid = getuid(), gid = getgid()
        var name: String?
        if let user {
            if let number = uid_t(user) {
                uid = number
                if let entry = getpwuid(number) { gid = entry.pointee.pw_gid; name = String(cString: entry.pointee.pw_name) }
            } else if let entry = getpwnam(user) {
                uid = entry.pointee.pw_uid
                gid = entry.pointee.pw_gid
                name = user
            } else {
                throw SpawnError(description: "no user named \"\(user)\"")
            }
        }
        if let group {
            if let number = gid_t(group) {
                gid = number
            } else if let entry = getgrnam(group) {
                gid = entry.pointee.gr_gid
            } else {
                throw SpawnError(description: "no group named \"\(group)\"")
            }
        }
        return Credentials(uid: uid, gid: gid, userName: name)
    }
}

enum Processes {
    /// Starts `argv` in its own process group with `environment`, its output going to
    /// `logPath` through a pipe batond reads.
    static func spawn(argv: [String], environment: [String: String], logPath: String, directory: String?,
                      credentials: Credentials?) throws(SpawnError) -> SpawnedProcess {
        guard let program = argv.first, !program.isEmpty else { throw SpawnError(description: "empty command") }
        let path = try resolve(program, path: environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin")
        var pipeEnds: [Int32] = [0, 0]
        guard baton_pipe_cloexec(&pipeEnds) == 0 else {
            throw SpawnError(description: "pipe: \(String(cString: strerror(errno)))")
        }
        let cArgv = argv.map { strdup($0) } + [nil]
        let cEnv = environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            cArgv.forEach { free($0) }
            cEnv.forEach { free($0) }
        }
        var childErrno: Int32 = 0
        var stage: UnsafePointer<CChar>?
        let pid = path.withCString { cPath in
            withOptionalCString(directory) { cDirectory in
                withOptionalCString(credentials?.userName) { cUser in
                    baton_spawn(cPath, cArgv, cEnv, pipeEnds[1], cDirectory, credentials == nil ? 0 : 1,
                                credentials?.uid ?? 0, credentials?.gid ?? 0, cUser, &childErrno, &stage)
                }
            }
        }
        close(pipeEnds[1])
        guard pid > 0 else {
            close(pipeEnds[0])
            let step = stage.map { String(cString: $0) } ?? "spawn"
            throw SpawnError(description: "\(step) \(path): \(String(cString: strerror(childErrno)))")
        }
        let log = InstanceLog(path: logPath, readEnd: pipeEnds[0])
        return SpawnedProcess(pid: pid, startTime: baton_process_start_time(pid), log: log)
    }

    /// Calls `onExit` once the child exits, from a thread blocked in waitpid: no polling.
    static func watch(_ pid: Int32, onExit: @escaping @Sendable (ExitStatus) -> Void) {
        let thread = Thread {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 {
                if errno != EINTR { onExit(.exited(-1)); return }
            }
            // WIFEXITED / WEXITSTATUS / WTERMSIG, spelled out (they are C macros).
            if status & 0x7f == 0 {
                onExit(.exited((status >> 8) & 0xff))
            } else {
                onExit(.signalled(status & 0x7f))
            }
        }
        thread.name = "baton.wait"
        thread.start()
    }

    /// Calls `onExit` once a process batond did not start exits: a pidfd becomes
    /// readable then (no polling, and no need to be its parent).
    static func watchForeign(_ pid: Int32, onExit: @escaping @Sendable (ExitStatus) -> Void) {
        let thread = Thread {
            let fd = baton_pidfd_open(pid)
            guard fd >= 0 else { onExit(.vanished); return }
            defer { close(fd) }
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            while poll(&poller, 1, -1) < 0 && errno == EINTR {}
            onExit(.vanished)
        }
        thread.name = "baton.pidfd"
        thread.start()
    }

    /// Sends `signal` to the process group the child leads (its own children too).
    static func signal(_ pid: Int32, _ signal: Int32) {
        if kill(-pid, signal) != 0 { kill(pid, signal) }
    }

    static func startTime(of pid: Int32) -> UInt64 { baton_process_start_time(pid) }

    static func parent(of pid: Int32) -> Int32? {
        let parent = baton_parent_pid(pid)
        return parent > 0 ? parent : nil
    }

    private static func resolve(_ program: String, path: String) throws(SpawnError) -> String {
        if program.contains("/") {
            guard access(program, X_OK) == 0 else {
                throw SpawnError(description: "\(program) is not executable: \(String(cString: strerror(errno)))")
            }
            return program
        }
        for directory in path.split(separator: ":") where access("\(directory)/\(program)", X_OK) == 0 {
            return "\(directory)/\(program)"
        }
        throw SpawnError(description: "\(program) not found in PATH")
    }
}

private func withOptionalCString<R>(_ text: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let text else { return body(nil) }
    return text.withCString { body($0) }
}
