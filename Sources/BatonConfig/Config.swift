import BatonCore
import Glibc

/// batond's configuration: loaded from one TOML file, validated once at start-up,
/// then overridden by command-line flags. Every key is documented in config/batond.toml.
public struct BatondConfig: Sendable, Equatable {
    /// The file it came from, if any.
    public var file: String?
    /// Holds the ledger, the operator token, the releases, logs and the lock.
    public var stateDir = "/var/lib/baton"
    /// The control socket; `<state_dir>/batond.sock` when unset.
    public var socket: String?
    /// The agents' socket: instance routes and registration only, passed to instances
    /// as `BATON_SOCKET`; `<state_dir>/agent.sock` when unset.
    public var agentSocket: String?
    /// Loopback TCP listener, `HOST:PORT` (port 0 picks one); none when unset.
    public var listen: ListenAddress?
    public var logLevel: LogLevel = .info
    /// Members of this group are operators on the Unix socket (besides root and batond's own uid).
    public var operatorGroup: String?
    /// Whether batond stops its agents when it stops. By default it does not: agents
    /// keep working, and the next batond re-adopts them.
    public var stopAgentsOnExit = false
    public var http = HTTPSettings()
    public var ledger = LedgerSettings()
    public var logs = LogSettings()
    public var releases = ReleaseSettings()
    /// Fleet mode: nil unless `[fleet]` names etcd endpoints.
    public var fleet: FleetSettings?
    public var agents: [AgentConfig] = []

    public init() {}

    public var socketPath: String { socket ?? stateDir + "/batond.sock" }
    public var agentSocketPath: String { agentSocket ?? stateDir + "/agent.sock" }

    public struct HTTPSettings: Sendable, Equatable {
        /// Per listener: the control socket and the TCP listener each.
        public var maxConnections = 1000
        public var connectionTimeout: Duration = .seconds(30)
        public var requestHeadTimeout: Duration = .seconds(10)
        public var requestBodyTimeout: Duration = .seconds(30)
        /// The agent socket's own limit, and its cap per peer (an instance, else a uid).
        public var agentMaxConnections = 256
        public var agentConnectionsPerPeer = 8
        /// Parked `GET /v1/events` long-polls, over every listener.
        public var maxEventWaiters = 100
        /// Open `GET /v1/events` Server-Sent Events streams, over every listener.
        public var maxEventStreams = 2000
        /// How often each stream gets a keepalive comment.
        public var eventStreamKeepalive: Duration = .seconds(15)
        public var maxBodyBytes = 1 << 20
        public var maxWait: Duration = .seconds(300)
        /// Whether /healthz, /readyz and /metrics answer without credentials.
        public var probesOpen = true
        public init() {}
    }

    public struct LedgerSettings: Sendable, Equatable {
        public var snapshotEvery = 10_000
        public var retainRecords = 10_000
        public init() {}
    }

    /// The instances' output files, `<state_dir>/logs/<instance>.log`.
    public struct LogSettings: Sendable, Equatable {
        /// Past it, a file is moved to `.log.1` at the next check.
        public var maxBytes = 1 << 20
        public var checkInterval: Duration = .seconds(1)
        public init() {}
    }

    /// Releases pushed and fetched: limits, collection, trust.
    public struct ReleaseSettings: Sendable, Equatable {
        /// Releases kept per agent; older ones are collected (never current, previous, or
        /// one in use). 0 keeps every release.
        public var keepReleases = 10
        /// Refuse pushes and fetches that no trusted key signed.
        public var requireSignature = false
        /// Ed25519 public keys (32 raw bytes) by name.
        public var trustedKeys: [String: [UInt8]] = [:]
        /// The largest release pushed or fetched, as sent (compressed).
        public var maxBytes: Int64 = 1 << 30
        /// What an archive may unpack to: bytes and entries.
        public var maxUnpackedBytes: Int64 = 4 << 30
        public var maxFiles = 100_000
        /// Free space a push or fetch leaves besides its own bytes.
        public var freeSpaceMargin: Int64 = 64 << 20
        /// A fetch's whole deadline, and how long it may receive nothing.
        public var fetchTimeout: Duration = .seconds(1800)
        public var fetchStallTimeout: Duration = .seconds(60)
        public init() {}
    }

    /// `[fleet]`: this batond follows a fleet's version kept in etcd.
    public struct FleetSettings: Sendable, Equatable {
        /// etcd client URLs (`http://` or `https://`), tried in order.
        public var endpoints: [String]
        /// The fleet this host belongs to: its keys live under `<prefix>/<name>/`.
        public var name = "default"
        /// This host's name in the fleet; the machine's host name when unset.
        public var host: String
        public var labels: [String: String] = [:]
        /// The etcd key prefix, `/` followed by key characters, without a trailing `/`.
        public var prefix = "/baton"
        /// Whether this batond may be elected the fleet's coordinator.
        public var coordinator = true
        /// The lease of this host's keys (its presence, its slots, its barrier keys): it
        /// ends this long after batond stops renewing it. Renewed at a third of it.
        public var leaseTTL: Duration = .seconds(10)
        /// The host's status is written when it changes, and at least this often.
        public var heartbeat: Duration = .seconds(30)
        /// TLS to etcd: the CA that signs its certificates, and a client certificate and key.
        public var caFile: String?
        public var certFile: String?
        public var keyFile: String?
        /// etcd's own authentication: a user, with its password in a file (never in this one).
        public var username: String?
        public var passwordFile: String?
        public var requestTimeout: Duration = .seconds(5)

        public static let leaseTTLRange: ClosedRange<Duration> = .seconds(2) ... .seconds(300)
        public static let heartbeatRange: ClosedRange<Duration> = .seconds(1) ... .seconds(3600)
        public static let requestTimeoutRange: ClosedRange<Duration> = .milliseconds(100) ... .seconds(300)

        public init(endpoints: [String], host: String) {
            self.endpoints = endpoints
            self.host = host
        }

        /// Fleet, host and label names: 1 to 63 of letters, digits, `.`, `_`, `-`, starting
        /// with a letter or digit (each becomes one etcd key segment).
        public static func isValidName(_ name: String) -> Bool {
            let bytes = Array(name.utf8)
            guard (1...63).contains(bytes.count), bytes[0] < 128, isalnum(Int32(bytes[0])) != 0 else { return false }
            return bytes.allSatisfy {
                $0 < 128 && (isalnum(Int32($0)) != 0 || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-"))
            }
        }

        /// The keys of this fleet: `<prefix>/<name>/`.
        public var keyRoot: String { "\(prefix)/\(name)/" }
    }

    public enum LogLevel: String, Sendable, CaseIterable {
        case trace, debug, info, notice, warning, error, critical
    }
}

public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    /// Parses `HOST:PORT` or `[V6]:PORT`; only numeric loopback hosts are accepted.
    public init?(_ text: String) {
        let host: Substring, port: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            port = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            port = text[text.index(after: colon)...]
        }
        guard let number = Int(port), (0...65535).contains(number), !host.isEmpty else { return nil }
        self.host = String(host)
        self.port = number
    }

    public var isLoopback: Bool { host == "::1" || host.hasPrefix("127.") }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// One `[agents.NAME]` table.
public struct AgentConfig: Sendable, Equatable {
    public var name: String
    /// argv; `{release}` expands to the agent's release directory. Empty for an external agent.
    public var command: [String]
    /// batond never starts the agent: its instances start elsewhere (a container runtime,
    /// another supervisor), register themselves, fetch their own releases, and hand over
    /// by the usual handoff. A desired version is only recorded and shown to them.
    public var external = false
    public var env: [String: String] = [:]
    /// Variables passed on from batond's own environment (instances get a defined one).
    public var inheritEnv: [String] = []
    public var mode: HandoffMode = .parallel
    public var readyTimeout: Duration = .seconds(60)
    public var stopTimeout: Duration = .seconds(30)
    public var killTimeout: Duration = .seconds(10)
    public var user: String?
    public var group: String?
    /// argv run once by a barrier upgrade while every agent is halted, when the release
    /// declares none in its `release.json`; `{release}` expands to the new release.
    public var migration: [String]?
    public var migrationTimeout: Duration = .seconds(600)
    /// For agents that do not speak the protocol: ready when this succeeds.
    public var readiness: Readiness?
    /// A token an externally started process presents to register as this agent.
    public var registrationToken: String?
    /// Registration over TCP (where the kernel cannot vouch for the caller) is refused
    /// unless this holds the uid that owns the registered process. Empty: refused.
    public var tcpRegistrationUIDs: Set<UInt32> = []
    /// Whether batond stops registered instances (processes it did not start) when it
    /// stops. Off by default: another supervisor owns them.
    public var stopRegisteredOnExit = false
    /// The wait before supervision starts the current release again: the first, doubling
    /// up to the max (reset after a minute of work).
    public var restartBackoff: Duration = .seconds(1)
    public var restartBackoffMax: Duration = .seconds(60)
    /// A crash loop: this many abnormal exits of the current release within the window
    /// (0: never one). batond then rewinds to the previous release, or gives up on an
    /// irreversible one.
    public var crashLoopExits = 5
    public var crashLoopWindow: Duration = .seconds(300)
    /// Listening sockets batond opens once and passes to every instance (fds 3, 4, ...
    /// with `LISTEN_FDS`), kept open across instances and batond's own restarts.
    public var listen: [AgentSocket] = []

    public enum Readiness: Sendable, Equatable {
        case command([String])
        case http(String)
    }

    /// The ranges the file may set (config/batond.toml says why). A ready_timeout of 0
    /// would fail every handoff at once; the upper bounds keep every deadline batond
    /// computes from them far inside 64-bit nanoseconds.
    public static let readyTimeoutRange: ClosedRange<Duration> = .seconds(1) ... .seconds(24 * 3600)
    public static let stopTimeoutRange: ClosedRange<Duration> = .milliseconds(100) ... .seconds(3600)
    public static let killTimeoutRange: ClosedRange<Duration> = .milliseconds(100) ... .seconds(3600)
    public static let restartBackoffRange: ClosedRange<Duration> = .milliseconds(100) ... .seconds(3600)
    public static let crashLoopExitsRange: ClosedRange<Int> = 0 ... 1000
    public static let crashLoopWindowRange: ClosedRange<Duration> = .seconds(1) ... .seconds(24 * 3600)
    public static let migrationTimeoutRange: ClosedRange<Duration> = .seconds(1) ... .seconds(24 * 3600)

    public init(name: String, command: [String]) {
        self.name = name
        self.command = command
    }

    public var view: AgentView.Config {
        AgentView.Config(mode: mode, command: command, external: external, readyTimeoutMs: readyTimeout.milliseconds,
                         stopTimeoutMs: stopTimeout.milliseconds, killTimeoutMs: killTimeout.milliseconds)
    }
}


/// One listening socket of an agent (`listen` in its config): batond binds it once and
/// every instance gets it, the systemd way, named in `LISTEN_FDNAMES`.
public struct AgentSocket: Sendable, Equatable, CustomStringConvertible {
    /// A numeric TCP host (any address, not only loopback: agents serve traffic; port 0
    /// has the kernel pick one, kept for batond's whole life) or a Unix socket's path.
    public typealias Address = SocketAddress

    public var address: Address
    /// Its name in `LISTEN_FDNAMES`; the agent's name unless the entry gives one.
    public var name: String
    /// The listen(2) backlog: connections that arrive while no instance accepts (the
    /// handoff's gap) wait here. The kernel caps it at net.core.somaxconn.
    public var backlog = 4096
    /// A Unix socket's file mode, owner and group (names or numbers).
    public var mode: UInt32 = 0o666
    public var owner: String?
    public var group: String?

    public static let backlogRange: ClosedRange<Int> = 1 ... 65535
    /// sun_path's 108 bytes, less the NUL and the `.PID.tmp` batond binds under first.
    public static let maxPathBytes = BatondConfig.maxSocketPathBytes

    public init(address: Address, name: String) {
        self.address = address
        self.name = name
    }

    /// A `listen` entry's address: as `SocketAddress` parses it, a Unix path short enough
    /// for sun_path.
    public static func address(_ text: String) -> Address? {
        guard let address = Address(text) else { return nil }
        if case .unix(let path) = address, path.utf8.count > maxPathBytes { return nil }
        return address
    }

    /// A name systemd's `LISTEN_FDNAMES` can carry: 1 to 255 of letters, digits, `_`, `-`, `.`.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 255
            && name.utf8.allSatisfy { $0 < 128 && (isalnum(Int32($0)) != 0 || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".")) }
    }

    public var description: String { "\(name)=\(address)" }
}
