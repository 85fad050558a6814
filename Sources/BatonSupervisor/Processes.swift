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

extension Processes {
    /// Every child gets batond's umask as it is now, whatever a library does to the
    /// process's umask later (libarchive zeroes it for an instant per entry). Call once at
    /// start, before any release is unpacked.
    public static func keepUmask() { baton_spawn_keep_umask() }
}

public struct SpawnError: Error, Sendable, CustomStringConvertible {
    public let description: String
}

/// A process batond signals: one it started (a child, leading its own process group) or
/// one that registered (not its child). Its identity is fixed when batond first knows
/// it, so a pid reused after the process is gone is never signalled:
/// - a child is not reaped until its runner has forgotten it (`watch` waits without
///   reaping; the runner calls `reap` once it removed the handle), so while the handle
///   is in use the pid and the group it leads cannot belong to anyone else;
/// - a registered process is signalled only through its pidfd, opened and then checked
///   at registration.
final class ProcessHandle: Sendable {
    let pid: Int32
    /// With the pid, the process's identity (clock ticks since boot, from /proc).
    let startTime: UInt64
    /// The pidfd of a process batond did not start in this run (-1 for a child it
    /// spawned); closed with the handle.
    private let pidfd: Int32
    /// Whether batond is its parent, so it learns the exit status and must reap it.
    let isChild: Bool
    /// Whether it leads its own process group (batond started it, in this run or an
    /// earlier one): signals go to the whole group.
    let leadsGroup: Bool

    private init(pid: Int32, startTime: UInt64, pidfd: Int32, isChild: Bool, leadsGroup: Bool) {
        self.pid = pid
        self.startTime = startTime
        self.pidfd = pidfd
        self.isChild = isChild
        self.leadsGroup = leadsGroup
    }

    static func child(pid: Int32) -> ProcessHandle {
        ProcessHandle(pid: pid, startTime: baton_process_start_time(pid), pidfd: -1, isChild: true, leadsGroup: true)
    }

    /// A process an earlier batond started or registered, found again at start: adopted
    /// only if it is still the very process the ledger recorded, pid *and* start time,
    /// checked after its pidfd is open (a pid reused by a stranger is never adopted).
    /// After batond re-executed itself the process is still its child; after a restart
    /// it is not, and only its pidfd says when it ends. `leadsGroup` when batond started
    /// it (not for a registered process).
    static func adopted(pid: Int32, startTime: UInt64, leadsGroup: Bool) -> ProcessHandle? {
        guard pid > 1, pid != getpid() else { return nil }
        let fd = baton_pidfd_open(pid)
        guard fd >= 0 else { return nil }
        guard startTime != 0, baton_process_start_time(pid) == startTime, baton_pidfd_send_signal(fd, 0) == 0 else {
            close(fd)
            return nil
        }
        return ProcessHandle(pid: pid, startTime: startTime, pidfd: fd,
                             isChild: Processes.parent(of: pid) == getpid(), leadsGroup: leadsGroup)
    }

    /// A handle on a process batond did not start, or nil when it does not exist. The
    /// pidfd is opened first and the start time read after: if `startTime` is what the
    /// caller saw when it checked the process, the pidfd is that process.
    static func foreign(pid: Int32) -> ProcessHandle? {
        let fd = baton_pidfd_open(pid)
        guard fd >= 0 else { return nil }
        let start = baton_process_start_time(pid)
        // Still alive after the start time was read: the start time is this pidfd's.
        guard start != 0, baton_pidfd_send_signal(fd, 0) == 0 else {
            close(fd)
            return nil
        }
        return ProcessHandle(pid: pid, startTime: start, pidfd: fd, isChild: false, leadsGroup: false)
    }

    deinit {
        if pidfd >= 0 { close(pidfd) }
    }

    /// Signals the process: the whole process group of a process batond started, the
    /// process alone (through its pidfd) for a registered one. A group is signalled by
    /// its id only while the handle's process leads it (a child not reaped, or a pidfd
    /// that still reaches the process), so the id cannot have been reused.
    func send(_ signal: Int32) {
        if pidfd < 0 {
            if kill(-pid, signal) != 0 { kill(pid, signal) }
        } else if leadsGroup, baton_pidfd_send_signal(pidfd, 0) == 0, kill(-pid, signal) == 0 {
            return
        } else {
            _ = baton_pidfd_send_signal(pidfd, signal)
        }
    }

    /// Calls `onExit` once the process exits, from a thread of its own: no polling. A
    /// child is left a zombie (see the type's invariant) until `reap`.
    func watch(onExit: @escaping @Sendable (ExitStatus) -> Void) {
        let thread = Thread { [self] in
            if isChild {
                var code: Int32 = 0, signal: Int32 = 0
                guard baton_wait_exit(pid, &code, &signal) == 0 else { return onExit(.exited(-1)) }
                onExit(signal == 0 ? .exited(code) : .signalled(signal))
            } else {
                var poller = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
                while poll(&poller, 1, -1) < 0 && errno == EINTR {}
                onExit(.vanished)
            }
        }
        thread.name = isChild ? "baton.wait" : "baton.pidfd"
        thread.start()
    }

    /// A copy of the process's descriptor `fd` (pidfd_getfd(2), close-on-exec), or nil:
    /// the process is gone, or batond may not reach into it (ptrace access).
    func copyDescriptor(_ fd: Int32) -> Int32? {
        let handle = pidfd >= 0 ? pidfd : baton_pidfd_open(pid)
        guard handle >= 0 else { return nil }
        defer { if handle != pidfd { close(handle) } }
        let copy = baton_pidfd_getfd(handle, fd)
        return copy >= 0 ? copy : nil
    }

    /// Frees an exited child's pid. Called by the runner once nothing can signal it.
    func reap() {
        if isChild { baton_reap(pid) }
    }
}

/// A child forked and set up but held before exec (see `Processes.spawn`). `release`
/// lets it run; dropped without it, the child ends without running anything of the
/// agent. Used by one runner (an actor) only.
final class HeldProcess {
    let pid: Int32
    /// Read while the child is held, so it is this child's.
    let startTime: UInt64
    /// The program, for the error if exec fails.
    let path: String
    private let gate: Int32
    private let report: Int32
    private var settled = false

    init(pid: Int32, path: String, gate: Int32, report: Int32) {
        self.pid = pid
        self.startTime = baton_process_start_time(pid)
        self.path = path
        self.gate = gate
        self.report = report
    }

    /// Lets it exec and waits until it did.
    func release() throws(SpawnError) -> ProcessHandle {
        precondition(!settled, "a held process is released once")
        settled = true
        var childErrno: Int32 = 0
        var stage: UnsafePointer<CChar>?
        guard baton_spawn_release(pid, gate, report, &childErrno, &stage) == 0 else {
            let step = stage.map { String(cString: $0) } ?? "spawn"
            throw SpawnError(description: "\(step) \(path): \(String(cString: strerror(childErrno)))")
        }
        return .child(pid: pid)
    }

    deinit {
        if !settled { baton_spawn_abandon(pid, gate, report) }
    }
}

/// A listening socket handed to a child: its descriptor in batond and its name in
/// `LISTEN_FDNAMES`.
struct PassedSocket: Sendable {
    let fd: Int32
    let name: String
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

public enum Processes {
    /// Forks `argv` in its own process group with `environment`, its stdout and stderr
    /// being `log`'s file (no pipe: its writes never depend on batond), and holds it
    /// before exec: nothing of the agent runs until `release`, once batond's record of
    /// the process is durable. Should batond die first, the child ends without exec.
    ///
    /// `sockets` become the child's descriptors 3, 4, ..., announced the systemd way:
    /// `LISTEN_FDS`, `LISTEN_FDNAMES`, and `LISTEN_PID`, which the child itself sets to
    /// its own pid between fork and exec.
    static func spawn(argv: [String], environment: [String: String], log: InstanceLog, directory: String?,
                      credentials: Credentials?, sockets: [PassedSocket] = []) throws(SpawnError) -> HeldProcess {
        guard let program = argv.first, !program.isEmpty else { throw SpawnError(description: "empty command") }
        let path = try resolve(program, path: environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin")
        let output = try log.openForAppending()
        defer { close(output) }
        var environment = environment
        if !sockets.isEmpty {
            environment["LISTEN_FDS"] = "\(sockets.count)"
            environment["LISTEN_FDNAMES"] = sockets.map(\.name).joined(separator: ":")
            // Room for any pid; the child writes its own over it.
            environment["LISTEN_PID"] = String(repeating: "0", count: 10)
        }
        let descriptors = sockets.map(\.fd)
        var childErrno: Int32 = 0
        var stage: UnsafePointer<CChar>?
        var gate: Int32 = -1, report: Int32 = -1
        let pid = withCStrings(argv, environment) { cArgv, cEnv in
            let pidEntry = sockets.isEmpty ? nil : cEnv.first { $0.map { strncmp($0, "LISTEN_PID=", 11) == 0 } ?? false } ?? nil
            return path.withCString { cPath in
                withOptionalCString(directory) { cDirectory in
                    withOptionalCString(credentials?.userName) { cUser in
                        descriptors.withUnsafeBufferPointer { fds in
                            baton_spawn_held(cPath, cArgv, cEnv, output, cDirectory, credentials == nil ? 0 : 1,
                                             credentials?.uid ?? 0, credentials?.gid ?? 0, cUser,
                                             fds.baseAddress, Int32(fds.count), pidEntry, &gate, &report,
                                             &childErrno, &stage)
                        }
                    }
                }
            }
        }
        guard pid > 0 else {
            let step = stage.map { String(cString: $0) } ?? "spawn"
            throw SpawnError(description: "\(step) \(path): \(String(cString: strerror(childErrno)))")
        }
        return HeldProcess(pid: pid, path: path, gate: gate, report: report)
    }

    /// `argv` and `environment` as the NULL-terminated C arrays exec wants, for `body`.
    static func withCStrings<R>(_ argv: [String], _ environment: [String: String],
                                _ body: ([UnsafeMutablePointer<CChar>?], [UnsafeMutablePointer<CChar>?]) -> R) -> R {
        let cArgv = argv.map { strdup($0) } + [nil]
        let cEnv = environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            cArgv.forEach { free($0) }
            cEnv.forEach { free($0) }
        }
        return body(cArgv, cEnv)
    }

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
