import BatonConfig
import BatonCore
import BatonHTTP
import CBatonSpawn
import Foundation
import Glibc
import Logging
import Synchronization

/// The agents' listening sockets (`listen` in an agent's config), owned by batond: each
/// is bound once and every instance of the agent gets the same socket, so that it is
/// never unbound while an instance holds go, and connections that arrive while no
/// instance accepts (the handoff's gap, a restart of batond) wait in its backlog instead
/// of being refused.
///
/// A socket outlives batond's own restarts and upgrades. At start batond takes it back,
/// in this order, before any instance of the agent starts:
/// 1. across its own re-exec (a self-upgrade): the descriptors cross the exec, named in
///    `BATON_AGENT_SOCKETS`;
/// 2. from systemd's file descriptor store (`FDSTORE=1`, which batond fills whenever it
///    runs under systemd): they come back with `LISTEN_FDS`, named `agent.<agent>.<n>`;
/// 3. from a live instance of the agent (one the ledger recorded and batond adopted):
///    a copy of the instance's own descriptor (pidfd_getfd(2); needs ptrace access to
///    it, which root has);
/// 4. else bound afresh: no instance holds the socket, so nobody could be accepting on it.
/// If none of these works (an instance holds the address but cannot be reached), the
/// agent's next spawn fails with the reason and nothing else is disturbed; each later
/// spawn tries again.
///
/// batond never accepts on these sockets, never shuts them down, and never closes them
/// while it runs.
public final class AgentSockets: Sendable {
    /// The variable naming the sockets that cross a re-exec: `NAME=FD,...`.
    public static let handedOverVariable = "BATON_AGENT_SOCKETS"
    /// The prefix of their names across an exec and in systemd's store.
    public static let storePrefix = "agent."

    /// One configured socket, once open.
    struct Open: Sendable {
        let fd: Int32
        let address: AgentSocket.Address
    }

    /// One `listen` entry's socket: open, or why it could not be bound.
    private enum Slot {
        case open(Open)
        case failed(String)
    }

    private struct State {
        /// Descriptors given at start (re-exec, systemd's store) not yet matched to a config entry.
        var inherited: [String: Int32]
        /// By store name (`agent.<agent>.<index>`).
        var slots: [String: Slot] = [:]
    }

    /// A keeper of descriptors that outlives batond: systemd's file descriptor store.
    public struct Store: Sendable {
        /// Keeps `fd` under `name` (`FDSTORE=1`).
        public let keep: @Sendable (_ fd: Int32, _ name: String) -> Void
        /// Drops every descriptor kept under `name` (`FDSTOREREMOVE=1`).
        public let remove: @Sendable (_ name: String) -> Void

        public init(keep: @escaping @Sendable (Int32, String) -> Void, remove: @escaping @Sendable (String) -> Void) {
            self.keep = keep
            self.remove = remove
        }
    }

    private let state: Mutex<State>
    /// Where each socket batond opens or takes from an instance goes, under its name, in
    /// place of whatever was kept under that name (under systemd; nil otherwise).
    private let store: Store?
    private let logger: Logger

    /// `inherited`: descriptors by store name, from a re-exec or systemd's store.
    public init(inherited: [String: Int32] = [:], logger: Logger = Logger(label: "baton.sockets"), store: Store? = nil) {
        state = Mutex(State(inherited: inherited))
        self.store = store
        self.logger = logger
    }

    static func storeName(agent: String, index: Int) -> String { "\(storePrefix)\(agent).\(index)" }

    // MARK: - Taking the sockets back at start

    /// Opens the agent's sockets that are not open yet: from what batond inherited, else
    /// from `holders` (its live instances, the one holding go first), else afresh. Called
    /// once the agent adopted its instances, before it starts any. Errors are kept, shown
    /// in the agent's view, and met again by `passed(for:)`.
    func open(_ agent: AgentConfig, holders: [ProcessHandle]) {
        for (index, spec) in agent.listen.enumerated() where socket(agent.name, index) == nil {
            let name = Self.storeName(agent: agent.name, index: index)
            let inherited = state.withLock { $0.inherited.removeValue(forKey: name) }
            if let fd = inherited {
                if Self.matches(fd, spec) {
                    adopt(fd, spec, agent: agent.name)
                    keep(Open(fd: fd, address: Self.address(of: fd, spec)), agent: agent.name, index: index, store: false)
                    continue
                }
                logger.warning("an inherited socket no longer matches the config; closing it",
                               metadata: ["agent": "\(agent.name)", "socket": "\(spec.address)"])
                close(fd)
                store?.remove(name)
            }
            if let fd = Self.copy(spec, fromAny: holders) {
                logger.info("socket taken back from a live instance", metadata: ["agent": "\(agent.name)", "socket": "\(spec.address)"])
                adopt(fd, spec, agent: agent.name)
                keep(Open(fd: fd, address: Self.address(of: fd, spec)), agent: agent.name, index: index, store: true)
                continue
            }
            bind(spec, agent: agent.name, index: index)
        }
    }

    /// A socket bound by an earlier batond gets what the config says now: its backlog
    /// (listen(2) again changes it in place) and, for a Unix socket, its file's mode and
    /// owner.
    private func adopt(_ fd: Int32, _ spec: AgentSocket, agent: String) {
        var problems: [String] = []
        if listen(fd, Int32(spec.backlog)) != 0 { problems.append("listen: \(String(cString: strerror(errno)))") }
        if case .unix(let path) = spec.address {
            if chmod(path, mode_t(spec.mode)) != 0 { problems.append("chmod \(path): \(String(cString: strerror(errno)))") }
            do {
                let owner = try Self.resolve(user: spec.owner), group = try Self.resolve(group: spec.group)
                if owner != nil || group != nil, chown(path, owner ?? uid_t.max, group ?? gid_t.max) != 0 {
                    problems.append("chown \(path): \(String(cString: strerror(errno)))")
                }
            } catch {
                problems.append(error.description)
            }
        }
        if !problems.isEmpty {
            logger.warning("a kept socket keeps its earlier settings", metadata: [
                "agent": "\(agent)", "socket": "\(spec.address)", "error": "\(problems.joined(separator: "; "))"])
        }
    }

    /// Closes what was inherited and matches no configured socket (an agent removed from
    /// the config, an address changed), and drops it from the store: nothing would ever
    /// pass it on, and it would keep its address bound. Returns the names.
    public func closeUnclaimed() -> [String] {
        let left = state.withLock { state -> [String: Int32] in
            defer { state.inherited = [:] }
            return state.inherited
        }
        for (name, fd) in left {
            close(fd)
            store?.remove(name)
        }
        return left.keys.sorted()
    }

    // MARK: - Passing them on

    /// The agent's sockets for a new instance, in config order; opens any that is not
    /// open yet (a bind that failed before). Throws when one cannot be had: the instance
    /// must not start without it.
    func passed(for agent: AgentConfig) throws(SpawnError) -> [PassedSocket] {
        var passed: [PassedSocket] = []
        for (index, spec) in agent.listen.enumerated() {
            if socket(agent.name, index) == nil { bind(spec, agent: agent.name, index: index) }
            guard let open = socket(agent.name, index) else {
                throw SpawnError(description: "listening socket \(spec.address): \(failure(agent.name, index) ?? "not open")")
            }
            passed.append(PassedSocket(fd: open.fd, name: spec.name))
        }
        return passed
    }

    /// What each of the agent's sockets is bound to (the port the kernel picked for port
    /// 0), or why it is not open.
    public func views(of agent: AgentConfig) -> [AgentView.Socket] {
        agent.listen.enumerated().map { index, spec in
            if let open = socket(agent.name, index) {
                return AgentView.Socket(name: spec.name, address: open.address.description, open: true, error: nil)
            }
            return AgentView.Socket(name: spec.name, address: spec.address.description, open: false, error: failure(agent.name, index))
        }
    }

    /// Every open socket with its store name: what crosses a re-exec.
    public var all: [(name: String, fd: Int32)] {
        state.withLock { state in
            state.slots.compactMap { name, slot in
                if case .open(let open) = slot { (name, open.fd) } else { nil }
            }.sorted { $0.0 < $1.0 }
        }
    }

    /// `NAME=FD,...` for `handedOverVariable`, the sockets made to cross the exec (or,
    /// `false`, close-on-exec again after a failed one).
    public func prepareReexec(_ crossing: Bool) -> String {
        let sockets = all
        for (_, fd) in sockets {
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 { _ = fcntl(fd, F_SETFD, crossing ? flags & ~FD_CLOEXEC : flags | FD_CLOEXEC) }
        }
        return sockets.map { "\($0.name)=\($0.fd)" }.joined(separator: ",")
    }

    /// The sockets the previous image left across its re-exec, by name (close-on-exec
    /// again; the variable removed).
    public static func handedOver() -> [String: Int32] {
        defer { unsetenv(handedOverVariable) }
        guard let text = getenv(handedOverVariable).map({ String(cString: $0) }) else { return [:] }
        var found: [String: Int32] = [:]
        for entry in text.split(separator: ",") {
            let parts = entry.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let fd = Int32(parts[1]), fd > 2, fcntl(fd, F_SETFD, FD_CLOEXEC) == 0 else { continue }
            found[String(parts[0])] = fd
        }
        return found
    }

    // MARK: - Internals

    private func socket(_ agent: String, _ index: Int) -> Open? {
        state.withLock { state in
            if case .open(let open)? = state.slots[Self.storeName(agent: agent, index: index)] { open } else { nil }
        }
    }

    private func failure(_ agent: String, _ index: Int) -> String? {
        state.withLock { state in
            if case .failed(let reason)? = state.slots[Self.storeName(agent: agent, index: index)] { reason } else { nil }
        }
    }

    private func keep(_ open: Open, agent: String, index: Int, store: Bool) {
        state.withLock { $0.slots[Self.storeName(agent: agent, index: index)] = .open(open) }
        if store, let keeper = self.store {
            // systemd keeps every descriptor sent under a name: drop what an earlier batond
            // kept there (a socket no longer configured) before keeping this one.
            let name = Self.storeName(agent: agent, index: index)
            keeper.remove(name)
            keeper.keep(open.fd, name)
        }
    }

    private func bind(_ spec: AgentSocket, agent: String, index: Int) {
        do {
            let listener: Listener
            switch spec.address {
            case .tcp(let host, let port):
                listener = try Listener.tcp(host: host, port: port, backlog: Int32(spec.backlog))
            case .unix(let path):
                let owner = try Self.resolve(user: spec.owner)
                let group = try Self.resolve(group: spec.group)
                listener = try Listener.unix(path: path, mode: mode_t(spec.mode), owner: owner, group: group,
                                             backlog: Int32(spec.backlog))
            }
            let address = listener.address
            logger.info("listening socket bound", metadata: ["agent": "\(agent)", "socket": "\(address)"])
            keep(Open(fd: listener.fd, address: address), agent: agent, index: index, store: true)
        } catch {
            logger.error("cannot bind a listening socket", metadata: ["agent": "\(agent)", "socket": "\(spec.address)",
                                                                      "error": "\(error)"])
            state.withLock { $0.slots[Self.storeName(agent: agent, index: index)] = .failed(error.description) }
        }
    }

    private static func resolve(user: String?) throws(ListenerError) -> uid_t? {
        guard let user else { return nil }
        if let uid = uid_t(user) { return uid }
        guard let entry = getpwnam(user) else { throw ListenerError(message: "no user named \"\(user)\"") }
        return entry.pointee.pw_uid
    }

    private static func resolve(group: String?) throws(ListenerError) -> gid_t? {
        guard let group else { return nil }
        if let gid = gid_t(group) { return gid }
        guard let entry = getgrnam(group) else { throw ListenerError(message: "no group named \"\(group)\"") }
        return entry.pointee.gr_gid
    }

    /// A copy of the live instance's own descriptor for `spec`: first where batond put
    /// it (3, 4, ...), else any listening socket of the process bound to that address.
    private static func copy(_ spec: AgentSocket, fromAny holders: [ProcessHandle]) -> Int32? {
        for holder in holders {
            for fd in holder.socketDescriptors() {
                guard let copy = holder.copyDescriptor(fd) else { continue }
                if matches(copy, spec) { return copy }
                close(copy)
            }
        }
        return nil
    }

    /// Whether `fd` is a listening stream socket bound to `spec`'s address (any port for port 0).
    static func matches(_ fd: Int32, _ spec: AgentSocket) -> Bool {
        var listening: Int32 = 0, type: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) == 0, listening == 1 else { return false }
        length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0, type == Int32(SOCK_STREAM.rawValue) else { return false }
        guard let bound = SocketAddress.bound(to: fd) else { return false }
        switch (spec.address, bound) {
        case (.tcp(let host, let port), .tcp(let boundHost, let boundPort)):
            return sameHost(host, boundHost) && (port == 0 || port == boundPort)
        case (.unix(let path), .unix(let boundPath)):
            // Bound under `PATH.PID.tmp`, then renamed over the path (see Listener.unix).
            return boundPath == path || (boundPath.hasPrefix(path + ".") && boundPath.hasSuffix(".tmp"))
        default:
            return false
        }
    }

    private static func sameHost(_ a: String, _ b: String) -> Bool {
        var left = in6_addr(), right = in6_addr()
        if inet_pton(AF_INET6, a, &left) == 1, inet_pton(AF_INET6, b, &right) == 1 {
            return withUnsafeBytes(of: left) { l in withUnsafeBytes(of: right) { r in l.elementsEqual(r) } }
        }
        var left4 = in_addr(), right4 = in_addr()
        return inet_pton(AF_INET, a, &left4) == 1 && inet_pton(AF_INET, b, &right4) == 1 && left4.s_addr == right4.s_addr
    }

    /// What the socket is bound to: the port the kernel picked for port 0; a Unix
    /// socket's configured path (it was bound under a temporary name).
    private static func address(of fd: Int32, _ spec: AgentSocket) -> AgentSocket.Address {
        if case .tcp = spec.address, let bound = SocketAddress.bound(to: fd) { return bound }
        return spec.address
    }
}

extension ProcessHandle {
    /// The process's socket descriptors, lowest first (from /proc/PID/fd).
    func socketDescriptors() -> [Int32] {
        let directory = "/proc/\(pid)/fd"
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [] }
        return entries.compactMap(Int32.init).sorted().filter { fd in
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\(fd)"))?.hasPrefix("socket:") == true
        }
    }
}
