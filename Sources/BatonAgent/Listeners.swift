import BatonWire
import Foundation
import Glibc

extension BatonAgent {
    /// A listening socket this process holds: one batond passed (see ``Listeners``), or
    /// one the agent bound itself (``bind(_:backlog:)``).
    public struct Listener: Sendable, Hashable, CustomStringConvertible {
        /// What a listening socket is bound to, as `getsockname(2)` says: `.tcp(host:port:)`
        /// or `.unix(path:)`, spelled as batond's `listen` entries (`tcp://127.0.0.1:8080`).
        public typealias Address = SocketAddress

        /// The descriptor. This process's own: close it when done with it, never
        /// `shutdown(2)` it (see ``Listeners``).
        public let fd: Int32
        /// The name batond gave it (`LISTEN_FDNAMES`; the agent's name unless the `listen`
        /// entry names it), `unknown` when none was given, or the address for one the
        /// agent bound itself.
        public let name: String
        /// Where it listens; nil when the descriptor is not a TCP or Unix socket.
        public let address: Address?

        public init(fd: Int32, name: String, address: Address?) {
            self.fd = fd; self.name = name; self.address = address
        }

        public var description: String { "\(name) (fd \(fd), \(address.map { "\($0)" } ?? "not a TCP or Unix socket"))" }

        /// Binds and listens on `address` itself (`tcp://HOST:PORT` or `unix:/path`), for
        /// an agent run where nothing passes it a socket: standalone, or under a batond
        /// whose configuration has no `listen` for it. Under batond, do this only after
        /// `go`: the previous instance holds the port until it has stopped. TCP sockets get
        /// `SO_REUSEADDR` (the old instance's connections may linger in TIME_WAIT), never
        /// `SO_REUSEPORT`; a Unix socket's stale file is replaced. Close-on-exec.
        public static func bind(_ address: String, backlog: Int32 = 4096) throws -> Listener {
            guard let parsed = Address(address) else {
                throw BatonAgentError.socket("\(address): not tcp://HOST:PORT or unix:/PATH")
            }
            let fd = try SocketCalls.bindAndListen(parsed, backlog: backlog)
            return Listener(fd: fd, name: address, address: SocketAddress.bound(to: fd) ?? parsed)
        }
    }

    /// The listening sockets passed to this process the systemd way, with their names.
    ///
    /// batond opens an agent's `listen` sockets once and passes the same ones to every
    /// instance, in the configuration's order, as descriptors 3, 4, ... with
    /// `LISTEN_FDS=<count>`, `LISTEN_PID=<the instance's pid>` and
    /// `LISTEN_FDNAMES=<name>:<name>:...`, exactly as systemd's socket activation does, so
    /// an agent written for systemd works unchanged (and this type reads what systemd
    /// passes too). ``passed()`` reads them as `sd_listen_fds_with_names(unset=1)` does:
    /// ignored unless `LISTEN_PID` is this process, each descriptor made close-on-exec,
    /// and the three variables removed from the environment so children do not inherit
    /// them.
    ///
    /// The sockets are shared: the old instance, its successor and batond hold the
    /// same ones, and an instance that is not accepting leaves connections waiting in
    /// the kernel's backlog for the next one, so a handoff refuses none. That works only
    /// if every instance keeps these rules (``Acceptor`` keeps them for you):
    ///
    /// - **Accept only while holding `go`.** Before `go`, hold the sockets and do not
    ///   accept: the old instance is still serving from the same backlog.
    /// - **On `stop`: stop accepting, close your own descriptors, drain, report
    ///   `stopped`.** Close with `close(2)`, never `shutdown(2)`: shutdown acts on the
    ///   socket every holder shares and would stop the successor's listener too. Then
    ///   finish the connections already accepted; the ones not yet accepted wait for the
    ///   successor.
    /// - **Leave the flags alone.** `O_NONBLOCK` lives on the open file description that
    ///   every holder shares: an instance that sets it sets it for its successor and for
    ///   batond (which passes the sockets in blocking mode, as systemd does). Poll
    ///   before accepting instead.
    public struct Listeners: Sendable, Equatable {
        /// Every passed socket, in order (descriptors 3, 4, ...).
        public let all: [Listener]

        public init(_ all: [Listener]) { self.all = all }

        /// The sockets named `name`, in order (several `listen` entries may share a name:
        /// by default they are all named after the agent).
        public func named(_ name: String) -> [Listener] { all.filter { $0.name == name } }

        /// The sockets passed to this process, read once per process (the variables are
        /// removed on the first call; later calls return the same answer). Empty when none
        /// were passed, or when `LISTEN_PID` names another process (a parent's variables,
        /// inherited).
        ///
        /// - Throws: ``BatonAgentError/invalidEnvironment(name:reason:)`` when the variables
        ///   are malformed, name a different number of sockets than `LISTEN_FDS`, or a
        ///   descriptor is not open.
        ///
        /// Call it first, before starting threads: it changes the environment (`unsetenv`).
        public static func passed() throws -> Listeners { try ofThisProcess.get() }

        private static let ofThisProcess = Result { try take(firstDescriptor: 3) }

        /// Reads the variables from the process environment, removes them, and parses them
        /// with descriptors counted from `firstDescriptor` (3, except in tests).
        static func take(firstDescriptor: Int32) throws -> Listeners {
            let names = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]
            var environment: [String: String] = [:]
            for name in names {
                if let value = getenv(name) { environment[name] = String(cString: value) }
            }
            for name in names { unsetenv(name) }
            return try Listeners(environment: environment, pid: getpid(), firstDescriptor: firstDescriptor)
        }

        /// Parses `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` for the process `pid`,
        /// whose sockets start at `firstDescriptor`, and makes each descriptor close-on-exec.
        init(environment: [String: String], pid: pid_t, firstDescriptor: Int32) throws {
            func invalid(_ name: String, _ reason: String) -> BatonAgentError {
                .invalidEnvironment(name: name, reason: reason)
            }
            guard let pidText = environment["LISTEN_PID"] else {
                self.init([])
                return
            }
            guard let listenPID = pid_t(pidText), listenPID > 0 else { throw invalid("LISTEN_PID", "not a pid: \(pidText)") }
            // Meant for another process (set for a parent, inherited): not ours to take.
            guard listenPID == pid, let countText = environment["LISTEN_FDS"] else {
                self.init([])
                return
            }
            guard let count = Int32(countText), count > 0, count <= Int32.max - firstDescriptor else {
                throw invalid("LISTEN_FDS", "not a count of descriptors: \(countText)")
            }
            var names = [String](repeating: "unknown", count: Int(count))
            if let namesText = environment["LISTEN_FDNAMES"] {
                let given = namesText.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
                guard given.count == Int(count) else {
                    throw invalid("LISTEN_FDNAMES", "\(given.count) names for LISTEN_FDS=\(count) descriptors: \(namesText)")
                }
                names = given
            }
            var listeners: [Listener] = []
            for (offset, name) in names.enumerated() {
                let fd = firstDescriptor + Int32(offset)
                let flags = fcntl(fd, F_GETFD)
                guard flags >= 0, fcntl(fd, F_SETFD, flags | FD_CLOEXEC) == 0 else {
                    throw invalid("LISTEN_FDS", "descriptor \(fd): \(String(cString: strerror(errno)))")
                }
                listeners.append(Listener(fd: fd, name: name, address: SocketAddress.bound(to: fd)))
            }
            self.init(listeners)
        }
    }

    /// The sockets batond passed to this process (``Listeners/passed()``), in order.
    public func listeners() throws -> [Listener] { try Listeners.passed().all }

    /// The passed sockets named `name` (``Listeners/named(_:)``), in order.
    public func listeners(named name: String) throws -> [Listener] { try Listeners.passed().named(name) }
}
