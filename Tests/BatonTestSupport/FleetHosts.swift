import Foundation
import Glibc

/// Releases of the test agent for fleet tests, served over HTTP as every host fetches
/// them: each a `tar.gz` of `bin/agent` (a script running baton-testagent with the
/// version's switches) and, when given, a `release.json` with a migration. The bytes
/// are the same for every host, so the events file is not in them: each host's agent
/// gets its own path in `TEST_AGENT_EVENTS` (its config's `env`).
public final class FleetReleaseServer {
    public let server: StaticHTTPServer
    let directory = TemporaryDirectory("fleet-releases")

    public init() throws { server = try StaticHTTPServer() }

    /// The agent's script: the same bytes for every version with the same switches.
    public static func script(_ switches: [String]) -> String {
        let arguments = switches.map { "'\($0)'" }.joined(separator: " ")
        return "#!/bin/sh\nexec '\(Products.path("baton-testagent"))' --events \"$TEST_AGENT_EVENTS\" \(arguments) \"$@\"\n"
    }

    /// Builds and serves `<agent>-<version>.tar.gz`; answers its URL and SHA-256 (hex).
    /// `migration`: a shell script body run once by a barrier upgrade to this version.
    @discardableResult
    public func add(agent: String, version: String, switches: [String] = [], migration: String? = nil) throws
        -> (url: String, sha256: String) {
        let tree = directory.file("\(agent)-\(version)")
        try FileManager.default.createDirectory(atPath: tree + "/bin", withIntermediateDirectories: true)
        try Self.script(switches).write(toFile: tree + "/bin/agent", atomically: true, encoding: .utf8)
        chmod(tree + "/bin/agent", 0o755)
        var members = ["bin"]
        if let migration {
            try "#!/bin/sh\n\(migration)\n".write(toFile: tree + "/bin/migrate", atomically: true, encoding: .utf8)
            chmod(tree + "/bin/migrate", 0o755)
            try #"{"migration": ["{release}/bin/migrate"]}"#.write(toFile: tree + "/release.json", atomically: true, encoding: .utf8)
            members.append("release.json")
        }
        let archive = directory.file("\(agent)-\(version).tar.gz")
        let tar = try run(["/bin/tar", "-czf", archive, "-C", tree] + members)
        guard tar.status == 0 else { throw TestFailure("tar: \(tar.output)") }
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: archive)))
        let digest = try run(["/usr/bin/sha256sum", archive])
        guard digest.status == 0, let hex = digest.output.split(separator: " ").first else { throw TestFailure("sha256sum: \(digest.output)") }
        let path = "/\(agent)/\(version).tar.gz"
        server.route(path, .bytes(bytes))
        return (server.url(path), String(hex))
    }
}

/// One host of a test fleet: a real batond with one test agent and a `[fleet]` section.
public final class FleetHost {
    public let name: String
    public private(set) var daemon: BatondProcess
    public let agent: String
    let config: String
    let environment: [String: String]
    /// The agent's own events file (`TEST_AGENT_EVENTS`).
    public let events: String

    /// `endpoints`: etcd's (or a proxy's in front of it). `initial`: the version installed
    /// by hand and running before the fleet moves anything.
    public init(name: String, endpoints: [String], agent: String = "web", initial: String = "1.0",
                labels: [String: String] = [:], coordinator: Bool = true, leaseTTL: String = "3s",
                requestTimeout: String = "2s", extraConfig: String = "", environment: [String: String] = [:]) throws {
        self.name = name
        self.agent = agent
        let state = TemporaryDirectory("fleet-\(name)")
        events = state.file("events-\(agent).log")
        let bin = "\(state.path)/releases/\(agent)/\(initial)/bin"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        try FleetReleaseServer.script([]).write(toFile: bin + "/agent", atomically: true, encoding: .utf8)
        chmod(bin + "/agent", 0o755)
        guard symlink(initial, "\(state.path)/releases/\(agent)/current") == 0 else { throw TestFailure("symlink current") }
        let quoted = endpoints.map { "\"\($0)\"" }.joined(separator: ", ")
        let labelLines = labels.sorted { $0.key < $1.key }.map { "\($0.key) = \"\($0.value)\"" }.joined(separator: "\n")
        let config = """
            [fleet]
            endpoints = [\(quoted)]
            name = "test"
            host = "\(name)"
            coordinator = \(coordinator)
            lease_ttl = "\(leaseTTL)"
            heartbeat = "5s"
            request_timeout = "\(requestTimeout)"
            \(extraConfig)

            [fleet.labels]
            \(labelLines)

            [agents.\(agent)]
            command = ["{release}/bin/agent"]
            ready_timeout = "10s"
            stop_timeout = "3s"
            kill_timeout = "1s"
            migration_timeout = "30s"

            [agents.\(agent).env]
            TEST_AGENT_EVENTS = "\(events)"
            """
        self.config = config
        self.environment = environment
        daemon = try BatondProcess(state: state, configText: config, environment: environment)
    }

    /// kill -9 of batond (its agents keep running), and a new batond on the same state.
    public func restart() throws {
        daemon.signal(SIGKILL)
        _ = daemon.waitForExit()
        daemon = try BatondProcess(state: daemon.state, configText: config, environment: environment)
    }

    public func log() -> [AgentEvent] { AgentEventLog(path: events).events }

    /// One unlabelled sample of this batond's `/metrics`.
    public func metric(_ name: String) -> Double? { daemon.metric(name) }

    /// `GET /v1/fleet` through this host.
    public func fleet(timeout: Double = 30) throws -> [String: Any] {
        try daemon.endpoint.get("/v1/fleet", token: daemon.token, timeout: timeout).json()
    }

    /// The version this host's agent works on now (from batond's view).
    public func running() -> String? {
        let view = try? daemon.endpoint.get("/v1/agents/\(agent)", token: daemon.token).json()
        return (view?["running"] as? [String: Any])?["version"] as? String
    }

    /// This host's part in the fleet's rollout, as it reports it.
    public func rolloutPhase(in fleet: [String: Any]) -> String? {
        let hosts = fleet["hosts"] as? [[String: Any]] ?? []
        let mine = hosts.first { $0["host"] as? String == name }
        return (mine?["rollout"] as? [String: Any])?["phase"] as? String
    }
}

/// A fleet of `FleetHost`s on one etcd cluster, and the releases they fetch.
public final class TestFleet {
    public let cluster: EtcdCluster
    public let releases: FleetReleaseServer
    public private(set) var hosts: [FleetHost] = []

    public init(cluster: EtcdCluster, hosts count: Int, agent: String = "web", labels: (Int) -> [String: String] = { _ in [:] },
                coordinator: (Int) -> Bool = { _ in true }) throws {
        self.cluster = cluster
        releases = try FleetReleaseServer()
        for index in 0..<count {
            hosts.append(try FleetHost(name: String(format: "h%02d", index), endpoints: cluster.endpoints, agent: agent,
                                       labels: labels(index), coordinator: coordinator(index)))
        }
        try waitUntil(timeout: 60) { hosts.allSatisfy { $0.running() == "1.0" } }
        try waitUntil(timeout: 60) { registered() == count }
    }

    public func add(_ host: FleetHost) { hosts.append(host) }

    /// Hosts registered, as the first host reads the fleet.
    public func registered(through host: Int = 0) -> Int {
        ((try? hosts[host].fleet())?["hosts"] as? [Any])?.count ?? -1
    }

    /// `PUT /v1/fleet` through `host`.
    public func set(_ body: String, through host: Int = 0) throws -> HTTPResponse {
        let daemon = hosts[host].daemon
        return try daemon.endpoint.request("PUT", "/v1/fleet", token: daemon.token, headers: ["Content-Type": "application/json"],
                                           body: Array(body.utf8), timeout: 70)
    }

    /// The rollout's state as `host` reads it.
    public func rollout(through host: Int = 0) -> [String: Any]? {
        (try? hosts[host].fleet())?["rollout"] as? [String: Any]
    }

    /// Waits until the rollout reaches `phase` (as any live host reads it); returns the fleet.
    @discardableResult
    public func waitForPhase(_ phase: String, timeout: Double = 120, through host: Int = 0) throws -> [String: Any] {
        var last: [String: Any] = [:]
        do {
            try waitUntil(timeout: timeout) {
                last = (try? hosts[host].fleet(timeout: 5)) ?? last
                return (last["rollout"] as? [String: Any])?["phase"] as? String == phase
            }
        } catch {
            throw TestFailure("the rollout did not reach \(phase): \(last)")
        }
        return last
    }
}
