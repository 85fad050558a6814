import BatonCore
import Foundation
import TOMLKit

extension BatondConfig {
    /// Reads and validates `path`. Relative paths inside the file are resolved against
    /// `workingDirectory` (the directory batond was started in).
    public static func load(path: String, workingDirectory: String = FileManager.default.currentDirectoryPath) throws(ConfigError) -> BatondConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(file: path, message: "cannot read the file")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError(file: path, message: "the file is not UTF-8")
        }
        return try parse(text, file: path, workingDirectory: workingDirectory)
    }

    /// Parses a TOML text; `file` names it in errors.
    public static func parse(_ text: String, file: String, workingDirectory: String) throws(ConfigError) -> BatondConfig {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(file: file, line: error.source.begin.line, column: error.source.begin.column,
                              message: error.description)
        } catch {
            throw ConfigError(file: file, message: "\(error)")
        }
        var reader = Reader(file: file, lines: KeyLines(text))
        var config = try reader.read(table)
        config.file = file
        config.resolvePaths(against: workingDirectory)
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
    }
}

/// Walks the TOML tree, converting and validating each key; every error carries the
/// key's dotted path and line.
private struct Reader {
    let file: String
    let lines: KeyLines

    func error(_ key: String, _ message: String) -> ConfigError {
        ConfigError(file: file, key: key, line: lines.line(of: key), message: message)
    }

    mutating func read(_ root: TOMLTable) throws(ConfigError) -> BatondConfig {
        var config = BatondConfig()
        try only(root, "", allowed: ["daemon", "http", "ledger", "agents"])
        if let daemon = try table(root, "daemon", path: "daemon") {
            try only(daemon, "daemon", allowed: ["state_dir", "socket", "agent_socket", "listen", "log_level", "operator_group"])
            if let value = try string(daemon, "state_dir", path: "daemon") {
                guard !value.isEmpty else { throw error("daemon.state_dir", "must not be empty") }
                config.stateDir = value
            }
            if let value = try string(daemon, "socket", path: "daemon") {
                guard !value.isEmpty else { throw error("daemon.socket", "must not be empty") }
                config.socket = value
            }
            if let value = try string(daemon, "agent_socket", path: "daemon") {
                guard !value.isEmpty else { throw error("daemon.agent_socket", "must not be empty") }
                config.agentSocket = value
            }
            if let value = try string(daemon, "listen", path: "daemon") {
                config.listen = try listenAddress(value, key: "daemon.listen")
            }
            if let value = try string(daemon, "log_level", path: "daemon") {
                guard let level = BatondConfig.LogLevel(rawValue: value) else {
                    throw error("daemon.log_level", "must be one of \(BatondConfig.LogLevel.allCases.map(\.rawValue).joined(separator: ", ")), not \"\(value)\"")
                }
                config.logLevel = level
            }
            config.operatorGroup = try string(daemon, "operator_group", path: "daemon")
        }
        if let http = try table(root, "http", path: "http") {
            try only(http, "http", allowed: ["max_connections", "connection_timeout", "request_head_timeout",
                                             "request_body_timeout", "agent_max_connections", "agent_connections_per_peer",
                                             "max_event_waiters", "max_body_bytes", "max_wait", "probes_open"])
            if let value = try int(http, "max_connections", path: "http", range: 1...1_000_000) { config.http.maxConnections = value }
            if let value = try duration(http, "connection_timeout", path: "http") { config.http.connectionTimeout = value }
            if let value = try duration(http, "request_head_timeout", path: "http", within: .milliseconds(100) ... .seconds(300)) {
                config.http.requestHeadTimeout = value
            }
            if let value = try duration(http, "request_body_timeout", path: "http", within: .seconds(1) ... .seconds(3600)) {
                config.http.requestBodyTimeout = value
            }
            if let value = try int(http, "agent_max_connections", path: "http", range: 1...1_000_000) { config.http.agentMaxConnections = value }
            if let value = try int(http, "agent_connections_per_peer", path: "http", range: 1...1_000_000) {
                config.http.agentConnectionsPerPeer = value
            }
            if let value = try int(http, "max_event_waiters", path: "http", range: 0...1_000_000) {
                guard value < config.http.maxConnections else {
                    throw error("http.max_event_waiters", "must be below http.max_connections (\(config.http.maxConnections)): parked long-polls must leave room for other requests")
                }
                config.http.maxEventWaiters = value
            } else {
                config.http.maxEventWaiters = min(config.http.maxEventWaiters, config.http.maxConnections / 2)
            }
            if let value = try int(http, "max_body_bytes", path: "http", range: 1024...(64 << 20)) { config.http.maxBodyBytes = value }
            if let value = try duration(http, "max_wait", path: "http") { config.http.maxWait = value }
            if let value = try bool(http, "probes_open", path: "http") { config.http.probesOpen = value }
        }
        if let ledger = try table(root, "ledger", path: "ledger") {
            try only(ledger, "ledger", allowed: ["snapshot_every", "retain_records"])
            if let value = try int(ledger, "snapshot_every", path: "ledger", range: 10...10_000_000) { config.ledger.snapshotEvery = value }
            if let value = try int(ledger, "retain_records", path: "ledger", range: 100...1_000_000) { config.ledger.retainRecords = value }
        }
        if let agents = try table(root, "agents", path: "agents") {
            for name in agents.keys.sorted() {
                let path = "agents.\(name)"
                guard Names.isValidAgent(name) else {
                    throw error(path, "invalid agent name: use 1 to 63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
                }
                guard let agent = try table(agents, name, path: "agents") else { continue }
                config.agents.append(try readAgent(agent, name: name, path: path))
            }
        }
        return config
    }

    func readAgent(_ table: TOMLTable, name: String, path: String) throws(ConfigError) -> AgentConfig {
        try only(table, path, allowed: ["command", "env", "mode", "ready_timeout", "stop_timeout", "kill_timeout",
                                        "user", "group", "readiness", "registration_token"])
        guard let command = try strings(table, "command", path: path) else {
            throw error("\(path).command", "is required: the agent's argv, e.g. [\"{release}/bin/\(name)\"]")
        }
        guard let program = command.first, !program.isEmpty else {
            throw error("\(path).command", "must name a program")
        }
        var agent = AgentConfig(name: name, command: command)
        if let env = try self.table(table, "env", path: path) {
            for key in env.keys {
                guard let value = env[key]?.string else { throw error("\(path).env.\(key)", "must be a string") }
                guard !key.isEmpty, !key.contains("="), !key.hasPrefix("BATON_") else {
                    throw error("\(path).env.\(key)", "is not a usable variable name (BATON_* are set by batond)")
                }
                agent.env[key] = value
            }
        }
        if let mode = try string(table, "mode", path: path) {
            guard let value = HandoffMode(rawValue: mode) else {
                throw error("\(path).mode", "must be \"parallel\" or \"sequential\", not \"\(mode)\"")
            }
            agent.mode = value
        }
        if let value = try duration(table, "ready_timeout", path: path) { agent.readyTimeout = value }
        if let value = try duration(table, "stop_timeout", path: path) { agent.stopTimeout = value }
        if let value = try duration(table, "kill_timeout", path: path) { agent.killTimeout = value }
        agent.user = try string(table, "user", path: path)
        agent.group = try string(table, "group", path: path)
        if let token = try string(table, "registration_token", path: path) {
            guard token.utf8.count >= 32 else {
                throw error("\(path).registration_token", "must be at least 32 characters")
            }
            agent.registrationToken = token
        }
        if let readiness = try self.table(table, "readiness", path: path) {
            let key = "\(path).readiness"
            try only(readiness, key, allowed: ["command", "http"])
            let command = try strings(readiness, "command", path: key)
            let url = try string(readiness, "http", path: key)
            switch (command, url) {
            case (let command?, nil):
                guard !command.isEmpty else { throw error("\(key).command", "must name a program") }
                agent.readiness = .command(command)
            case (nil, let url?):
                guard url.hasPrefix("http://") else { throw error("\(key).http", "must be an http:// URL") }
                agent.readiness = .http(url)
            default:
                throw error(key, "needs exactly one of command or http")
            }
        }
        return agent
    }

    // MARK: - Typed access

    func only(_ table: TOMLTable, _ path: String, allowed: Set<String>) throws(ConfigError) {
        for key in table.keys.sorted() where !allowed.contains(key) {
            let full = path.isEmpty ? key : "\(path).\(key)"
            throw error(full, "unknown key (known here: \(allowed.sorted().joined(separator: ", ")))")
        }
    }

    func table(_ table: TOMLTable, _ key: String, path: String) throws(ConfigError) -> TOMLTable? {
        guard let value = table[key] else { return nil }
        guard let result = value.table else { throw error(join(path, key), "must be a table") }
        return result
    }

    func string(_ table: TOMLTable, _ key: String, path: String) throws(ConfigError) -> String? {
        guard let value = table[key] else { return nil }
        guard let result = value.string else { throw error(join(path, key), "must be a string") }
        return result
    }

    func bool(_ table: TOMLTable, _ key: String, path: String) throws(ConfigError) -> Bool? {
        guard let value = table[key] else { return nil }
        guard let result = value.bool else { throw error(join(path, key), "must be true or false") }
        return result
    }

    func int(_ table: TOMLTable, _ key: String, path: String, range: ClosedRange<Int>) throws(ConfigError) -> Int? {
        guard let value = table[key] else { return nil }
        guard let result = value.int else { throw error(join(path, key), "must be an integer") }
        guard range.contains(result) else {
            throw error(join(path, key), "must be between \(range.lowerBound) and \(range.upperBound), not \(result)")
        }
        return result
    }

    func strings(_ table: TOMLTable, _ key: String, path: String) throws(ConfigError) -> [String]? {
        guard let value = table[key] else { return nil }
        guard let array = value.array else { throw error(join(path, key), "must be an array of strings") }
        var result: [String] = []
        for element in array {
            guard let text = element.string else { throw error(join(path, key), "must be an array of strings") }
            result.append(text)
        }
        return result
    }

    /// Durations: a string with a unit (`"500ms"`, `"30s"`, `"5m"`, `"1h"`) or an integer of seconds.
    func duration(_ table: TOMLTable, _ key: String, path: String) throws(ConfigError) -> Duration? {
        guard let value = table[key] else { return nil }
        let full = join(path, key)
        if let seconds = value.int {
            guard seconds >= 0 else { throw error(full, "must not be negative") }
            return .seconds(seconds)
        }
        guard let text = value.string, let duration = Self.parseDuration(text) else {
            throw error(full, "must be a duration such as \"500ms\", \"30s\", \"5m\" or an integer of seconds")
        }
        return duration
    }

    /// A duration that must lie `within` a range (named in the error with its units).
    func duration(_ table: TOMLTable, _ key: String, path: String, within range: ClosedRange<Duration>) throws(ConfigError) -> Duration? {
        guard let value = try duration(table, key, path: path) else { return nil }
        guard range.contains(value) else {
            throw error(join(path, key), "must be between \(range.lowerBound.milliseconds) ms and \(range.upperBound.milliseconds) ms")
        }
        return value
    }

    static func parseDuration(_ text: String) -> Duration? {
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
        for (unit, scale) in units where text.hasSuffix(unit) {
            let number = text.dropLast(unit.count)
            guard !number.isEmpty, number.allSatisfy(\.isNumber), let value = Int64(number) else { continue }
            return .milliseconds(value * scale)
        }
        return nil
    }

    func listenAddress(_ text: String, key: String) throws(ConfigError) -> ListenAddress {
        guard let address = ListenAddress(text) else {
            throw error(key, "must be HOST:PORT, e.g. \"127.0.0.1:7070\", not \"\(text)\"")
        }
        guard address.isLoopback else {
            throw error(key, "must be a loopback address (127.0.0.0/8 or ::1): the API is local to the machine")
        }
        return address
    }

    private func join(_ path: String, _ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }
}
