import BatonCore
import CBatonSpawn
import Glibc

/// Who asks to register a process, as the listener saw them.
public enum RegistrationCaller: Sendable, Equatable {
    /// On the Unix socket: the connecting process, as the kernel reports it (SO_PEERCRED).
    case unix(pid: Int32, uid: UInt32)
    /// On TCP, or a socket peer without credentials: nobody the kernel vouches for.
    case unverified
}

/// What the ownership rule needs to know about processes: /proc in batond, a table in tests.
struct ProcessFacts: Sendable {
    var parent: @Sendable (Int32) -> Int32?
    var session: @Sendable (Int32) -> Int32?
    /// Real and effective uid.
    var uids: @Sendable (Int32) -> (real: UInt32, effective: UInt32)?

    static let live = ProcessFacts(
        parent: Processes.parent(of:),
        // 0 is a real answer: the session's leader lives outside batond's PID namespace (a
        // container, `unshare --pid`). A process that calls setsid inside the namespace gets a
        // visible id, so two related processes that both read 0 share their session.
        session: { pid in
            let session = baton_session_of(pid)
            return session >= 0 ? session : nil
        },
        uids: { pid in
            var real: uid_t = 0, effective: uid_t = 0
            return baton_process_uids(pid, &real, &effective) == 0 ? (real, effective) : nil
        })

    /// Whether `ancestor` is a parent, grandparent, ... of `pid` (not `pid` itself).
    func isAncestor(_ ancestor: Int32, of pid: Int32) -> Bool {
        var current = pid
        for _ in 0..<256 {
            guard let next = parent(current), next > 0, next != current else { return false }
            if next == ancestor { return true }
            current = next
        }
        return false
    }
}

/// Whether a caller may register a process, so that no credential lets anyone make batond
/// signal a process the caller does not own. The rule, in order:
/// 1. never pid 1 (or below), batond itself, or an ancestor of batond;
/// 2. on the Unix socket, the caller is the process itself, an ancestor of it (the
///    supervisor that started it) or a descendant of it (a helper it runs, such as `curl`
///    in a shell script), in the same session; and, unless the caller is root, the
///    process's real and effective uid are the caller's. Such a caller could signal the
///    process itself: registering gives it no power it did not have;
/// 3. where the kernel vouches for nobody (TCP), only processes whose real and effective
///    uid are in the agent's `tcp_registration_uids`; refused when that list is empty.
/// Instances already known (of any agent) are refused by the registry, which holds one
/// live registration per pid.
enum OwnershipRule {
    static func refusal(pid: Int32, caller: RegistrationCaller, daemon: Int32, tcpUIDs: Set<UInt32>,
                        facts: ProcessFacts) -> SupervisorError? {
        if pid <= 1 { return .registrationRefused("pid \(pid) is never registered") }
        if pid == daemon { return .registrationRefused("pid \(pid) is batond itself") }
        if facts.isAncestor(pid, of: daemon) { return .registrationRefused("pid \(pid) is an ancestor of batond") }
        guard let owner = facts.uids(pid) else { return .noSuchProcess(pid) }
        guard let reason = ownership(pid: pid, owner: owner, caller: caller, tcpUIDs: tcpUIDs, facts: facts) else { return nil }
        return .registrationRefused(reason)
    }

    private static func ownership(pid: Int32, owner: (real: UInt32, effective: UInt32), caller: RegistrationCaller,
                                  tcpUIDs: Set<UInt32>, facts: ProcessFacts) -> String? {
        switch caller {
        case .unix(let peer, let uid):
            guard peer == pid || facts.isAncestor(peer, of: pid) || facts.isAncestor(pid, of: peer) else {
                return "the caller (pid \(peer)) is neither process \(pid) nor its ancestor or descendant"
            }
            guard let session = facts.session(pid), session == facts.session(peer) else {
                return "process \(pid) is not in the caller's session"
            }
            guard uid == 0 || (owner.real == uid && owner.effective == uid) else {
                return "process \(pid) does not run as the caller's uid \(uid)"
            }
        case .unverified:
            guard !tcpUIDs.isEmpty else {
                return "registration is accepted on the Unix socket only (this agent sets no tcp_registration_uids)"
            }
            guard tcpUIDs.contains(owner.real), tcpUIDs.contains(owner.effective) else {
                return "process \(pid) runs as uid \(owner.real), not one of this agent's tcp_registration_uids"
            }
        }
        return nil
    }
}
