import BatonCore
import Foundation
import Glibc
import TOMLKit

extension BatondConfig {
    /// Reads and validates `path`. Relative paths inside the file are resolved against
    /// `workingDirectory` (the directory batond was started in).
    public static func load(path: String, workingDirectory: String = FileManager.default.currentDirectoryPath,
                            accounts: Accounts = .system) throws(ConfigError) -> BatondConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(file: path, message: "cannot read the file")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError(file: path, message: "the file is not UTF-8")
        }
        return try parse(text, file: path, workingDirectory: workingDirectory, accounts: accounts)
    }

    /// Parses a TOML text; `file` names it in errors. Users and groups are looked up in
    /// `accounts`, so a name that does not exist stops batond at start, not at each spawn.
    public static func parse(_ text: String, file: String, workingDirectory: String,
                             accounts: Accounts = .system) throws(ConfigError) -> BatondConfig {
        if let problem = TOMLGuard.problem(in: text) {
            throw ConfigError(file: file, line: problem.line, column: problem.column, message: problem.message)
        }
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(file: file, line: error.source.begin.line, column: error.source.begin.column,
                              message: error.description)
        } catch {
            throw ConfigError(file: file, message: "\(error)")
        }
        let reader = Reader(file: file, lines: KeyLines(text), accounts: accounts)
        var config = try reader.read(table)
        config.file = file
        config.resolvePaths(against: workingDirectory)
        if let problem = config.socketPathProblem {
            let key = switch problem.socket {
            case .control: config.socket == nil ? "state_dir" : "socket"
            case .agent: config.agentSocket == nil ? "state_dir" : "agent_socket"
            }
            throw reader.error(["daemon", key], problem.message)
        }
        return config
    }

    /// Makes relative paths absolute: agents get them in their environment and batond may
    /// change directory.
    public mutating func resolvePaths(against directory: String) {
        func absolute(_ path: String) -> String {
            let joined = path.hasPrefix("/") ? path : (directory.hasSuffix("/") ? directory : directory + "/") + path
            return URL(fileURLWithPath: joined).standardizedFileURL.path
        }
        stateDir = absolute(stateDir)
        socket = socket.map(absolute)
        agentSocket = agentSocket.map(absolute)
        file = file.map(absolute)
        if var settings = fleet {
            settings.caFile = settings.caFile.map(absolute)
            settings.certFile = settings.certFile.map(absolute)
            settings.keyFile = settings.keyFile.map(absolute)
            settings.passwordFile = settings.passwordFile.map(absolute)
            fleet = settings
        }
    }

    /// The longest control socket path batond can bind: `sun_path` holds 108 bytes with
    /// the NUL, and the listener binds `<path>.<pid>.tmp` first (a pid has at most 7
    /// digits on Linux, PID_MAX_LIMIT 2^22), then renames it over the path.
    public static let maxSocketPathBytes = 107 - ".4194304.tmp".utf8.count

    public enum Socket: Sendable { case control, agent }

    /// Why `socketPath` or `agentSocketPath` cannot be bound, if one cannot.
    public var socketPathProblem: (socket: Socket, message: String)? {
        for (socket, name, path) in [(Socket.control, "control", socketPath), (.agent, "agent", agentSocketPath)] {
            let length = path.utf8.count
            guard length > Self.maxSocketPathBytes else { continue }
            return (socket, "the \(name) socket path \(path) is \(length) bytes; a Unix socket path may have at most "
                + "\(Self.maxSocketPathBytes) (sockaddr_un's 108, less the NUL and the \".PID.tmp\" batond binds first)")
        }
        return nil
    }
}

/// Looks users and groups up by name, to refuse names that do not exist when the file
/// is read. The system's databases by default; tests pass their own.
public struct Accounts: Sendable {
    /// The uid of a user name, nil when there is no such user.
    public var userID: @Sendable (String) -> UInt32?
    public var groupExists: @Sendable (String) -> Bool

    public init(userID: @escaping @Sendable (String) -> UInt32?, groupExists: @escaping @Sendable (String) -> Bool) {
        self.userID = userID
        self.groupExists = groupExists
    }

    public func userExists(_ name: String) -> Bool { userID(name) != nil }

    public static let system = Accounts(userID: { getpwnam($0)?.pointee.pw_uid }, groupExists: { getgrnam($0) != nil })
}

/// Walks the TOML tree, converting and validating each key; every error carries the
/// key's path and line.
private struct Reader {
    let file: String
    let lines: KeyLines
    let accounts: Accounts

    func error(_ path: [String], _ message: String) -> ConfigError {
        ConfigError(file: file, key: KeyLines.spelled(path), line: lines.line(of: path), message: message)
    }

    func read(_ root: TOMLTable) throws(ConfigError) -> BatondConfig {
        var config = BatondConfig()
        try only(root, [], allowed: ["daemon", "http", "ledger", "logs", "releases", "fleet", "agents"])
        if let daemon = try table(root, "daemon", path: []) {
            let path = ["daemon"]
            try only(daemon, path, allowed: ["state_dir", "socket", "agent_socket", "listen", "log_level", "operator_group",
                                             "stop_agents_on_exit"])
            if let value = try string(daemon, "state_dir", path: path) {
                guard !value.isEmpty else { throw error(path + ["state_dir"], "must not be empty") }
                config.stateDir = value
            }
            if let value = try string(daemon, "socket", path: path) {
                guard !value.isEmpty else { throw error(path + ["socket"], "must not be empty") }
                config.socket = value
            }
            if let value = try string(daemon, "agent_socket", path: path) {
                guard !value.isEmpty else { throw error(path + ["agent_socket"], "must not be empty") }
                config.agentSocket = value
            }
            if let value = try string(daemon, "listen", path: path) {
                config.listen = try listenAddress(value, path: path + ["listen"])
            }
            if let value = try string(daemon, "log_level", path: path) {
                guard let level = BatondConfig.LogLevel(rawValue: value) else {
                    throw error(path + ["log_level"], "must be one of \(BatondConfig.LogLevel.allCases.map(\.rawValue).joined(separator: ", ")), not \"\(value)\"")
                }
                config.logLevel = level
            }
            config.operatorGroup = try group(daemon, "operator_group", path: path)
            if let stop = try bool(daemon, "stop_agents_on_exit", path: path) { config.stopAgentsOnExit = stop }
        }
        var streamsGiven = false
        if let http = try table(root, "http", path: []) {
            let path = ["http"]
            try only(http, path, allowed: ["max_connections", "connection_timeout", "request_head_timeout",
                                           "request_body_timeout", "agent_max_connections", "agent_connections_per_peer",
                                           "max_event_waiters", "max_event_streams", "event_stream_keepalive",
                                           "max_body_bytes", "max_wait", "probes_open"])
            if let value = try int(http, "max_connections", path: path, range: 1...1_000_000) { config.http.maxConnections = value }
            if let value = try duration(http, "connection_timeout", path: path, range: .seconds(1) ... .seconds(3600)) {
                config.http.connectionTimeout = value
            }
            if let value = try duration(http, "request_head_timeout", path: path, range: .milliseconds(100) ... .seconds(300)) {
                config.http.requestHeadTimeout = value
            }
            if let value = try duration(http, "request_body_timeout", path: path, range: .seconds(1) ... .seconds(3600)) {
                config.http.requestBodyTimeout = value
            }
            if let value = try int(http, "agent_max_connections", path: path, range: 1...1_000_000) { config.http.agentMaxConnections = value }
            if let value = try int(http, "agent_connections_per_peer", path: path, range: 1...1_000_000) {
                config.http.agentConnectionsPerPeer = value
            }
            if let value = try int(http, "max_event_waiters", path: path, range: 0...1_000_000) {
                guard value < config.http.maxConnections else {
                    throw error(path + ["max_event_waiters"], "must be below http.max_connections (\(config.http.maxConnections)): parked long-polls must leave room for other requests")
                }
                config.http.maxEventWaiters = value
            } else {
                config.http.maxEventWaiters = min(config.http.maxEventWaiters, config.http.maxConnections / 2)
            }
            if let value = try int(http, "max_event_streams", path: path, range: 0...1_000_000) {
                guard value < config.http.maxConnections else {
                    throw error(path + ["max_event_streams"], "must be below http.max_connections (\(config.http.maxConnections)): open streams must leave room for other requests")
                }
                config.http.maxEventStreams = value
                streamsGiven = true
            }
            if let value = try duration(http, "event_stream_keepalive", path: path, range: .milliseconds(100) ... .seconds(3600)) {
                config.http.eventStreamKeepalive = value
            }
            if let value = try int(http, "max_body_bytes", path: path, range: 1024...(64 << 20)) { config.http.maxBodyBytes = value }
            if let value = try duration(http, "max_wait", path: path, range: .seconds(1) ... .seconds(3600)) { config.http.maxWait = value }
            if let value = try bool(http, "probes_open", path: path) { config.http.probesOpen = value }
        }
        // Below the listener's limit unless set: streams must leave room for other requests.
        if !streamsGiven { config.http.maxEventStreams = min(config.http.maxEventStreams, config.http.maxConnections / 2) }
        if let ledger = try table(root, "ledger", path: []) {
            let path = ["ledger"]
            try only(ledger, path, allowed: ["snapshot_every", "retain_records"])
            if let value = try int(ledger, "snapshot_every", path: path, range: 10...10_000_000) { config.ledger.snapshotEvery = value }
            if let value = try int(ledger, "retain_records", path: path, range: 100...1_000_000) { config.ledger.retainRecords = value }
        }
        if let logs = try table(root, "logs", path: []) {
            let path = ["logs"]
            try only(logs, path, allowed: ["max_bytes", "check_interval"])
            if let value = try int(logs, "max_bytes", path: path, range: 4096...(1 << 30)) { config.logs.maxBytes = value }
            if let value = try duration(logs, "check_interval", path: path, range: .milliseconds(100) ... .seconds(3600)) {
                config.logs.checkInterval = value
            }
        }
        if let releases = try table(root, "releases", path: []) {
            config.releases = try readReleases(releases)
        }
        if let fleet = try table(root, "fleet", path: []) {
            config.fleet = try readFleet(fleet)
        }
        if let agents = try table(root, "agents", path: []) {
            for name in agents.keys.sorted() {
                let path = ["agents", name]
                guard Names.isValidAgent(name) else {
                    throw error(path, "invalid agent name: use 1 to 63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
                }
                guard let agent = try table(agents, name, path: ["agents"]) else { continue }
                let read = try readAgent(agent, name: name, path: path)
                for socket in read.listen where !isPortZero(socket.address) {
                    if let other = config.agents.first(where: { $0.listen.contains { $0.address == socket.address } }) {
                        throw error(path + ["listen"], "\(socket.address) is agent \(other.name)'s already")
                    }
                }
                config.agents.append(read)
            }
        }
        return config
    }

    func readReleases(_ table: TOMLTable) throws(ConfigError) -> BatondConfig.ReleaseSettings {
        let path = ["releases"]
        var settings = BatondConfig.ReleaseSettings()
        try only(table, path, allowed: ["keep_releases", "require_signature", "trusted_keys", "max_bytes", "max_unpacked_bytes",
                                        "max_files", "free_space_margin", "fetch_timeout", "fetch_stall_timeout"])
        if let value = try int(table, "keep_releases", path: path, range: 0...10_000) { settings.keepReleases = value }
        if let value = try bool(table, "require_signature", path: path) { settings.requireSignature = value }
        if let value = try int(table, "max_bytes", path: path, range: 1...(1 << 50)) { settings.maxBytes = Int64(value) }
        if let value = try int(table, "max_unpacked_bytes", path: path, range: 1...(1 << 50)) { settings.maxUnpackedBytes = Int64(value) }
        if let value = try int(table, "max_files", path: path, range: 1...100_000_000) { settings.maxFiles = value }
        if let value = try int(table, "free_space_margin", path: path, range: 0...(1 << 50)) { settings.freeSpaceMargin = Int64(value) }
        if let value = try duration(table, "fetch_timeout", path: path, range: .seconds(1) ... .seconds(24 * 3600)) {
            settings.fetchTimeout = value
        }
        if let value = try duration(table, "fetch_stall_timeout", path: path, range: .milliseconds(100) ... .seconds(3600)) {
            settings.fetchStallTimeout = value
        }
        if let keys = try self.table(table, "trusted_keys", path: path) {
            for name in keys.keys.sorted() {
                let key = path + ["trusted_keys", name]
                guard Names.isValidAgent(name) else {
                    throw error(key, "invalid key name: use 1 to 63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
                }
                guard let text = keys[name]?.string else { throw error(key, "must be a string: the base64 of a 32-byte Ed25519 public key") }
                guard let bytes = Data(base64Encoded: text), bytes.count == 32 else {
                    throw error(key, "must be the base64 of a 32-byte Ed25519 public key (e.g. `openssl pkey -pubout -outform DER | tail -c 32 | base64`)")
                }
                settings.trustedKeys[name] = Array(bytes)
            }
        }
        if settings.requireSignature && settings.trustedKeys.isEmpty {
            throw error(path + ["require_signature"], "is true, but [releases.trusted_keys] names no key: every push and fetch would be refused")
        }
        return settings
    }

    func readFleet(_ table: TOMLTable) throws(ConfigError) -> BatondConfig.FleetSettings {
        let path = ["fleet"]
        typealias Fleet = BatondConfig.FleetSettings
        try only(table, path, allowed: ["endpoints", "name", "host", "labels", "prefix", "coordinator", "lease_ttl", "heartbeat",
                                        "ca_file", "cert_file", "key_file", "username", "password_file", "request_timeout"])
        guard let endpoints = try strings(table, "endpoints", path: path), !endpoints.isEmpty else {
            throw error(path + ["endpoints"], "is required: etcd's client URLs, e.g. [\"http://127.0.0.1:2379\"]")
        }
        for endpoint in endpoints {
            guard let url = URL(string: endpoint), url.scheme == "http" || url.scheme == "https", url.host != nil,
                  url.user == nil, url.path.isEmpty || url.path == "/", url.query == nil else {
                throw error(path + ["endpoints"], "\(endpoint) is not an etcd client URL such as \"http://10.0.0.1:2379\" "
                    + "(http or https, a host and a port, nothing else)")
            }
        }
        func name(_ key: String) throws(ConfigError) -> String? {
            guard let value = try string(table, key, path: path) else { return nil }
            guard Fleet.isValidName(value) else {
                throw error(path + [key], "\"\(value)\" is not a valid name: use 1 to 63 of letters, digits, '.', '_', '-', starting with a letter or digit")
            }
            return value
        }
        let host: String
        if let given = try name("host") {
            host = given
        } else {
            var buffer = [CChar](repeating: 0, count: 256)
            gethostname(&buffer, buffer.count)
            let system = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            guard Fleet.isValidName(system) else {
                throw error(path + ["host"], "is not set, and this machine's host name \"\(system)\" is not a valid fleet host name: set one")
            }
            host = system
        }
        var fleet = Fleet(endpoints: endpoints.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }, host: host)
        if let value = try name("name") { fleet.name = value }
        if let labels = try self.table(table, "labels", path: path) {
            for key in labels.keys.sorted() {
                guard Fleet.isValidName(key) else { throw error(path + ["labels", key], "is not a valid label name") }
                guard let value = labels[key]?.string, Fleet.isValidName(value) else {
                    throw error(path + ["labels", key], "must be a string of 1 to 63 letters, digits, '.', '_', '-'")
                }
                fleet.labels[key] = value
            }
        }
        if let prefix = try string(table, "prefix", path: path) {
            let segments = prefix.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
            guard prefix.hasPrefix("/"), !prefix.hasSuffix("/"), !segments.isEmpty,
                  segments.allSatisfy({ Fleet.isValidName(String($0)) }) else {
                throw error(path + ["prefix"], "\"\(prefix)\" must be a key path such as \"/baton\" (segments of letters, digits, '.', '_', '-'; no trailing '/')")
            }
            fleet.prefix = prefix
        }
        if let value = try bool(table, "coordinator", path: path) { fleet.coordinator = value }
        if let value = try duration(table, "lease_ttl", path: path, range: Fleet.leaseTTLRange) {
            guard value.milliseconds % 1000 == 0 else { throw error(path + ["lease_ttl"], "must be whole seconds (etcd's leases count in seconds)") }
            fleet.leaseTTL = value
        }
        if let value = try duration(table, "heartbeat", path: path, range: Fleet.heartbeatRange) { fleet.heartbeat = value }
        if let value = try duration(table, "request_timeout", path: path, range: Fleet.requestTimeoutRange) { fleet.requestTimeout = value }
        for key in ["ca_file", "cert_file", "key_file", "password_file"] {
            guard let file = try string(table, key, path: path) else { continue }
            guard !file.isEmpty else { throw error(path + [key], "must name a file") }
            switch key {
            case "ca_file": fleet.caFile = file
            case "cert_file": fleet.certFile = file
            case "key_file": fleet.keyFile = file
            default: fleet.passwordFile = file
            }
        }
        if (fleet.certFile == nil) != (fleet.keyFile == nil) {
            throw error(path + [fleet.certFile == nil ? "key_file" : "cert_file"], "cert_file and key_file go together")
        }
        fleet.username = try string(table, "username", path: path)
        if (fleet.username == nil) != (fleet.passwordFile == nil) {
            throw error(path + [fleet.username == nil ? "password_file" : "username"], "username and password_file go together")
        }
        return fleet
    }

    func readAgent(_ table: TOMLTable, name: String, path: [String]) throws(ConfigError) -> AgentConfig {
        try only(table, path, allowed: ["command", "external", "env", "mode", "ready_timeout", "stop_timeout", "kill_timeout",
                                        "user", "group", "readiness", "registration_token",
                                        "tcp_registration_uids", "stop_registered_on_exit", "inherit_env",
                                        "migration", "migration_timeout",
                                        "restart_backoff", "restart_backoff_max", "crash_loop_exits", "crash_loop_window", "listen"])
        if try bool(table, "external", path: path) == true {
            // What only a process batond starts would use is a mistake here, not a default.
            for key in Self.spawnOnlyKeys where table.keys.contains(key) {
                throw error(path + [key], "is for agents batond starts; this one is external (its instances start elsewhere and register)")
            }
            var agent = AgentConfig(name: name, command: [])
            agent.external = true
            return try readCommon(table, into: agent, path: path)
        }
        guard let command = try strings(table, "command", path: path) else {
            throw error(path + ["command"], "is required: the agent's argv, e.g. [\"{release}/bin/\(name)\"] (or external = true)")
        }
        guard let program = command.first, !program.isEmpty else {
            throw error(path + ["command"], "must name a program")
        }
        return try readCommon(table, into: AgentConfig(name: name, command: command), path: path)
    }

    /// The keys about starting a process: refused with `external = true`.
    static let spawnOnlyKeys = ["command", "env", "inherit_env", "user", "group", "readiness", "listen"]

    private func readCommon(_ table: TOMLTable, into agent: AgentConfig, path: [String]) throws(ConfigError) -> AgentConfig {
        var agent = agent
        if let env = try self.table(table, "env", path: path) {
            for key in env.keys {
                let variable = path + ["env", key]
                guard let value = env[key]?.string else { throw error(variable, "must be a string") }
                guard !key.isEmpty, !key.contains("="), !key.hasPrefix("BATON_") else {
                    throw error(variable, "is not a usable variable name (BATON_* are set by batond)")
                }
                agent.env[key] = value
            }
        }
        if let names = try strings(table, "inherit_env", path: path) {
            for name in names {
                guard !name.isEmpty, !name.contains("="), !name.hasPrefix("BATON_") else {
                    throw error(path + ["inherit_env"], "\"\(name)\" is not a usable variable name (BATON_* are set by batond)")
                }
            }
            agent.inheritEnv = names
        }
        if let mode = try string(table, "mode", path: path) {
            guard let value = HandoffMode(rawValue: mode) else {
                throw error(path + ["mode"], "must be \"parallel\" or \"sequential\", not \"\(mode)\"")
            }
            agent.mode = value
        }
        if let value = try duration(table, "ready_timeout", path: path, range: AgentConfig.readyTimeoutRange) { agent.readyTimeout = value }
        if let value = try duration(table, "stop_timeout", path: path, range: AgentConfig.stopTimeoutRange) { agent.stopTimeout = value }
        if let value = try duration(table, "kill_timeout", path: path, range: AgentConfig.killTimeoutRange) { agent.killTimeout = value }
        if let value = try duration(table, "restart_backoff", path: path, range: AgentConfig.restartBackoffRange) {
            agent.restartBackoff = value
            agent.restartBackoffMax = max(agent.restartBackoffMax, value)
        }
        if let value = try duration(table, "restart_backoff_max", path: path, range: AgentConfig.restartBackoffRange) {
            guard value >= agent.restartBackoff else {
                throw error(path + ["restart_backoff_max"], "must not be below restart_backoff (\(agent.restartBackoff.spelled))")
            }
            agent.restartBackoffMax = value
        }
        if let value = try int(table, "crash_loop_exits", path: path, range: AgentConfig.crashLoopExitsRange) { agent.crashLoopExits = value }
        if let value = try duration(table, "crash_loop_window", path: path, range: AgentConfig.crashLoopWindowRange) {
            agent.crashLoopWindow = value
        }
        if let user = try string(table, "user", path: path) {
            guard uid_t(user) != nil || (!user.isEmpty && accounts.userExists(user)) else {
                throw error(path + ["user"], "no user named \"\(user)\" on this machine")
            }
            agent.user = user
        }
        agent.group = try group(table, "group", path: path)
        if let token = try string(table, "registration_token", path: path) {
            guard token.utf8.count >= 32 else {
                throw error(path + ["registration_token"], "must be at least 32 characters")
            }
            agent.registrationToken = token
        }
        if let users = try strings(table, "tcp_registration_uids", path: path) {
            for user in users {
                guard let uid = UInt32(user) ?? (user.isEmpty ? nil : accounts.userID(user)) else {
                    throw error(path + ["tcp_registration_uids"], "no user named \"\(user)\" on this machine")
                }
                agent.tcpRegistrationUIDs.insert(uid)
            }
        }
        if let stop = try bool(table, "stop_registered_on_exit", path: path) { agent.stopRegisteredOnExit = stop }
        if let migration = try strings(table, "migration", path: path) {
            guard let program = migration.first, !program.isEmpty else { throw error(path + ["migration"], "must name a program") }
            agent.migration = migration
        }
        if let value = try duration(table, "migration_timeout", path: path, range: AgentConfig.migrationTimeoutRange) {
            agent.migrationTimeout = value
        }
        agent.listen = try sockets(table, agent: agent.name, path: path)
        if let readiness = try self.table(table, "readiness", path: path) {
            let key = path + ["readiness"]
            try only(readiness, key, allowed: ["command", "http"])
            let command = try strings(readiness, "command", path: key)
            let url = try string(readiness, "http", path: key)
            switch (command, url) {
            case (let command?, nil):
                guard !command.isEmpty else { throw error(key + ["command"], "must name a program") }
                agent.readiness = .command(command)
            case (nil, let url?):
                guard url.hasPrefix("http://") else { throw error(key + ["http"], "must be an http:// URL") }
                agent.readiness = .http(url)
            default:
                throw error(key, "needs exactly one of command or http")
            }
        }
        return agent
    }

    /// `listen = ["tcp://127.0.0.1:8080", { address = "unix:/run/web.sock", name = "admin", mode = "0660" }]`.
    private func sockets(_ table: TOMLTable, agent: String, path: [String]) throws(ConfigError) -> [AgentSocket] {
        guard let value = table["listen"] else { return [] }
        let key = path + ["listen"]
        guard let array = value.array else { throw error(key, "must be an array of addresses (\"tcp://HOST:PORT\", \"unix:/PATH\") or tables") }
        var sockets: [AgentSocket] = []
        for (index, element) in array.enumerated() {
            let entry = "entry \(index + 1)"
            func address(_ text: String) throws(ConfigError) -> AgentSocket.Address {
                guard let address = AgentSocket.address(text) else {
                    throw error(key, "\(entry): \"\(text)\" is not \"tcp://HOST:PORT\" (a numeric host), \"tcp://[V6]:PORT\" "
                                + "or \"unix:/absolute/path\" (at most \(AgentSocket.maxPathBytes) bytes)")
                }
                return address
            }
            var socket: AgentSocket
            if let text = element.string {
                socket = AgentSocket(address: try address(text), name: agent)
            } else if let fields = element.table {
                for field in fields.keys.sorted() where !["address", "name", "backlog", "mode", "owner", "group"].contains(field) {
                    throw error(key, "\(entry): unknown key \(field) (known: address, backlog, group, mode, name, owner)")
                }
                guard let text = fields["address"]?.string else { throw error(key, "\(entry): needs address, a string") }
                socket = AgentSocket(address: try address(text), name: agent)
                if let name = fields["name"] {
                    guard let name = name.string, AgentSocket.isValidName(name) else {
                        throw error(key, "\(entry): name must be 1 to 255 letters, digits, _, - or . (LISTEN_FDNAMES cannot carry others)")
                    }
                    socket.name = name
                }
                if let backlog = fields["backlog"] {
                    guard let number = backlog.int, AgentSocket.backlogRange.contains(number) else {
                        throw error(key, "\(entry): backlog must be an integer between \(AgentSocket.backlogRange.lowerBound) and \(AgentSocket.backlogRange.upperBound)")
                    }
                    socket.backlog = number
                }
                let unixOnly = ["mode", "owner", "group"].filter { fields.keys.contains($0) }
                if !unixOnly.isEmpty, case .tcp = socket.address {
                    throw error(key, "\(entry): \(unixOnly.joined(separator: ", ")) only apply to unix: sockets")
                }
                if let mode = fields["mode"] {
                    guard let text = mode.string, text.count >= 3, text.count <= 4, let bits = UInt32(text, radix: 8), bits <= 0o777 else {
                        throw error(key, "\(entry): mode must be an octal string such as \"0660\"")
                    }
                    socket.mode = bits
                }
                if let owner = fields["owner"] {
                    guard let user = owner.string, uid_t(user) != nil || (!user.isEmpty && accounts.userExists(user)) else {
                        throw error(key, "\(entry): owner: no such user on this machine")
                    }
                    socket.owner = user
                }
                if let group = fields["group"] {
                    guard let name = group.string, gid_t(name) != nil || (!name.isEmpty && accounts.groupExists(name)) else {
                        throw error(key, "\(entry): group: no such group on this machine")
                    }
                    socket.group = name
                }
            } else {
                throw error(key, "\(entry): must be an address string or a table with address")
            }
            if let earlier = sockets.first(where: { $0.address == socket.address }), !isPortZero(socket.address) {
                throw error(key, "\(entry): \(socket.address) is listed twice (also as \(earlier.name))")
            }
            sockets.append(socket)
        }
        return sockets
    }

    private func isPortZero(_ address: AgentSocket.Address) -> Bool {
        if case .tcp(_, 0) = address { return true }
        return false
    }

    // MARK: - Typed access

    func only(_ table: TOMLTable, _ path: [String], allowed: Set<String>) throws(ConfigError) {
        for key in table.keys.sorted() where !allowed.contains(key) {
            throw error(path + [key], "unknown key (known here: \(allowed.sorted().joined(separator: ", ")))")
        }
    }

    func table(_ table: TOMLTable, _ key: String, path: [String]) throws(ConfigError) -> TOMLTable? {
        guard let value = table[key] else { return nil }
        guard let result = value.table else { throw error(path + [key], "must be a table") }
        return result
    }

    func string(_ table: TOMLTable, _ key: String, path: [String]) throws(ConfigError) -> String? {
        guard let value = table[key] else { return nil }
        guard let result = value.string else { throw error(path + [key], "must be a string") }
        return result
    }

    func bool(_ table: TOMLTable, _ key: String, path: [String]) throws(ConfigError) -> Bool? {
        guard let value = table[key] else { return nil }
        guard let result = value.bool else { throw error(path + [key], "must be true or false") }
        return result
    }

    func int(_ table: TOMLTable, _ key: String, path: [String], range: ClosedRange<Int>) throws(ConfigError) -> Int? {
        guard let value = table[key] else { return nil }
        guard let result = value.int else { throw error(path + [key], "must be an integer") }
        guard range.contains(result) else {
            throw error(path + [key], "must be between \(range.lowerBound) and \(range.upperBound), not \(result)")
        }
        return result
    }

    func strings(_ table: TOMLTable, _ key: String, path: [String]) throws(ConfigError) -> [String]? {
        guard let value = table[key] else { return nil }
        guard let array = value.array else { throw error(path + [key], "must be an array of strings") }
        var result: [String] = []
        for element in array {
            guard let text = element.string else { throw error(path + [key], "must be an array of strings") }
            result.append(text)
        }
        return result
    }

    /// A group name or a numeric gid; a name must exist.
    func group(_ table: TOMLTable, _ key: String, path: [String]) throws(ConfigError) -> String? {
        guard let group = try string(table, key, path: path) else { return nil }
        guard gid_t(group) != nil || (!group.isEmpty && accounts.groupExists(group)) else {
            throw error(path + [key], "no group named \"\(group)\" on this machine")
        }
        return group
    }

    /// Durations: a string with a unit (`"500ms"`, `"30s"`, `"5m"`, `"1h"`) or an integer
    /// of seconds, within `range`.
    func duration(_ table: TOMLTable, _ key: String, path: [String], range: ClosedRange<Duration>) throws(ConfigError) -> Duration? {
        guard let value = table[key] else { return nil }
        let given: String
        let duration: Duration?
        if let seconds = value.int {
            given = "\(seconds)"
            // Duration counts in 128 bits: any Int of seconds fits, so this cannot trap.
            duration = .seconds(seconds)
        } else if let text = value.string {
            given = "\"\(text)\""
            switch Self.parseDuration(text) {
            case .duration(let parsed): duration = parsed
            case .tooLarge: duration = nil
            case .malformed:
                throw error(path + [key], "must be a duration such as \"500ms\", \"30s\", \"5m\" or an integer of seconds, not \(given)")
            }
        } else {
            throw error(path + [key], "must be a duration such as \"500ms\", \"30s\", \"5m\" or an integer of seconds")
        }
        guard let duration, range.contains(duration) else {
            throw error(path + [key], "must be between \(range.lowerBound.spelled) and \(range.upperBound.spelled), not \(given)")
        }
        return duration
    }

    enum DurationText: Equatable {
        case duration(Duration)
        /// Well formed, but more milliseconds than 64 bits hold: beyond every range.
        case tooLarge
        case malformed
    }

    /// Whole numbers with one unit. Checked arithmetic: a huge number is `tooLarge`, never a trap.
    static func parseDuration(_ text: String) -> DurationText {
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
        for (unit, scale) in units where text.hasSuffix(unit) {
            let number = text.utf8.dropLast(unit.utf8.count)
            guard !number.isEmpty, number.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else { continue }
            guard let value = Int64(String(decoding: number, as: UTF8.self)) else { return .tooLarge }
            let (milliseconds, overflow) = value.multipliedReportingOverflow(by: scale)
            return overflow ? .tooLarge : .duration(.milliseconds(milliseconds))
        }
        return .malformed
    }

    func listenAddress(_ text: String, path: [String]) throws(ConfigError) -> ListenAddress {
        guard let address = ListenAddress(text) else {
            throw error(path, "must be HOST:PORT, e.g. \"127.0.0.1:7070\", not \"\(text)\"")
        }
        guard address.isLoopback else {
            throw error(path, "must be a loopback address (127.0.0.0/8 or ::1): the API is local to the machine")
        }
        return address
    }
}

/// Finds what toml++ (under TOMLKit) asserts on instead of failing: an abort in debug
/// builds, undefined behaviour where NDEBUG turns the assert into an assumption. batond
/// refuses it first; valid TOML never has either. Found by `make fuzz`
/// (Tests/Fuzz/crashes/config):
/// - a table header (`[` or `[[` starting a line, outside every value and string) whose
///   first key does not start with a bare key character or a quote (`[.a]`, `[ =]`, `[#]`);
/// - a `}` where an array's value or `]` is due (`[}`);
/// - a value that is a date and `T` with no digit after it (`1979-05-27T!`).
enum TOMLGuard {
    static func problem(in text: String) -> (line: Int, column: Int, message: String)? {
        let bytes = Array(text.utf8)
        var index = 0
        var line = 1
        var lineStart = 0
        /// The open arrays and inline tables, innermost last.
        var open: [UInt8] = []
        var atStatement = true
        /// The last byte outside strings, comments and whitespace.
        var last: UInt8 = 0
        // toml++ skips a UTF-8 byte order mark.
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { index = 3; lineStart = 3 }
        func at(_ offset: Int) -> UInt8? { index + offset < bytes.count ? bytes[index + offset] : nil }
        func isKeyStart(_ byte: UInt8?) -> Bool {
            guard let byte else { return false }
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "_"), UInt8(ascii: "-"), UInt8(ascii: "\""), UInt8(ascii: "'"): return true
            default: return false
            }
        }
        /// Skips a string starting at `index` (its quote), escapes and multi-line forms included.
        func skipString(_ quote: UInt8) {
            let multiline = at(1) == quote && at(2) == quote
            index += multiline ? 3 : 1
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\\") && quote == UInt8(ascii: "\"") { index += 2; continue }
                if byte == UInt8(ascii: "\n") {
                    guard multiline else { return }
                    line += 1
                    lineStart = index + 1
                }
                if byte == quote && (!multiline || (at(1) == quote && at(2) == quote)) {
                    index += multiline ? 3 : 1
                    // Up to two more quotes belong to the string.
                    while multiline && at(0) == quote && at(1) != quote { index += 1 }
                    while multiline && at(0) == quote && at(1) == quote && at(2) != quote { index += 2 }
                    return
                }
                index += 1
            }
        }
        while index < bytes.count {
            let byte = bytes[index]
            if atStatement && open.isEmpty && byte == UInt8(ascii: "[") {
                var next = index + 1
                if next < bytes.count && bytes[next] == UInt8(ascii: "[") { next += 1 }
                while next < bytes.count && (bytes[next] == UInt8(ascii: " ") || bytes[next] == UInt8(ascii: "\t")) { next += 1 }
                guard next < bytes.count, isKeyStart(bytes[next]) else {
                    return (line, next - lineStart + 1, "a table header must start with a key: a letter, digit, _, - or a quote")
                }
                // The rest of the header: keys (quoted ones skipped as strings), dots, `]`.
                index = next
                atStatement = false
                while index < bytes.count && bytes[index] != UInt8(ascii: "\n") && bytes[index] != UInt8(ascii: "#") {
                    if bytes[index] == UInt8(ascii: "\"") || bytes[index] == UInt8(ascii: "'") { skipString(bytes[index]) } else { index += 1 }
                }
                continue
            }
            switch byte {
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"):
                index += 1
                continue
            case UInt8(ascii: "\n"):
                line += 1
                lineStart = index + 1
                atStatement = true
                index += 1
                continue
            case UInt8(ascii: "#"):
                while index < bytes.count && bytes[index] != UInt8(ascii: "\n") { index += 1 }
                continue
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                skipString(byte)
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                open.append(byte)
                index += 1
            case UInt8(ascii: "0")...UInt8(ascii: "9")
                where last == UInt8(ascii: "=") || last == UInt8(ascii: "[") || (last == UInt8(ascii: ",") && open.last == UInt8(ascii: "[")):
                let digits = [0, 1, 2, 3, 5, 6, 8, 9].allSatisfy { at($0).map { (48...57).contains($0) } ?? false }
                if digits && at(4) == UInt8(ascii: "-") && at(7) == UInt8(ascii: "-")
                    && (at(10) == UInt8(ascii: "T") || at(10) == UInt8(ascii: "t"))
                    && !(at(11).map { (48...57).contains($0) } ?? false) {
                    return (line, index - lineStart + 12, "a date's T must be followed by a time")
                }
                index += 1
            case UInt8(ascii: "}") where open.last == UInt8(ascii: "["):
                return (line, index - lineStart + 1, "an array's values end with ], not }")
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                _ = open.popLast()
                index += 1
            default:
                index += 1
            }
            atStatement = false
            last = byte
        }
        return nil
    }
}
