import Foundation
import Glibc

/// A real etcd cluster on loopback for the fleet's tests: `size` members of Debian's
/// etcd-server run by hand (not the package's service), each with its own client and
/// peer port and its data directory under one temporary directory, removed with it
/// (each member preallocates ~120 MB of WAL). Members are killed when the cluster goes.
public final class EtcdCluster {
    public struct Member {
        public let name: String
        /// Where clients and the v3 JSON gateway are: `http://127.0.0.1:PORT`.
        public let clientURL: String
        public let client: Endpoint
        let peerURL: String
        let process: Process
    }

    public let directory = TemporaryDirectory("etcd")
    public private(set) var members: [Member] = []

    /// Whether etcd is installed (`make test` installs it: scripts/install-deps.sh).
    public static var isAvailable: Bool { which("etcd") != nil }

    /// Starts `size` members and waits until the cluster has a leader and takes writes.
    public init(size: Int = 3, timeout: Double = 30) throws {
        guard let etcd = which("etcd") else { throw TestFailure("etcd is not installed (apt-get install etcd-server)") }
        // etcd cannot report a port it picked: take free ones from the kernel first.
        let ports = try freePorts(2 * size)
        let names = (0..<size).map { "m\($0)" }
        let peers = names.indices.map { "http://127.0.0.1:\(ports[2 * $0 + 1])" }
        let initial = zip(names, peers).map { "\($0)=\($1)" }.joined(separator: ",")
        // One token for the whole cluster: the cluster's id is derived from it.
        let token = "baton-test-\(UUID().uuidString.prefix(8))"
        for (index, name) in names.enumerated() {
            let client = "http://127.0.0.1:\(ports[2 * index])"
            let process = Process()
            process.executableURL = URL(fileURLWithPath: etcd)
            process.arguments = [
                "--name", name, "--data-dir", directory.file(name),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peers[index], "--initial-advertise-peer-urls", peers[index],
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", token,
                "--log-outputs", directory.file("\(name).log"), "--logger", "zap",
            ]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            members.append(Member(name: name, clientURL: client, client: .tcp(host: "127.0.0.1", port: ports[2 * index]),
                                  peerURL: peers[index], process: process))
        }
        try waitUntilWritable(timeout: timeout)
    }

    deinit {
        for member in members where member.process.isRunning {
            kill(member.process.processIdentifier, SIGKILL)
            member.process.waitUntilExit()
        }
    }

    /// The client URLs, for a batond's `[fleet]` endpoints.
    public var endpoints: [String] { members.map(\.clientURL) }

    /// The members that run.
    public var running: [Member] { members.filter(\.process.isRunning) }

    /// The index of the member that leads now, as the members themselves say
    /// (`/v3/maintenance/status`), or nil while there is none.
    public func leader() -> Int? {
        for (index, member) in members.enumerated() where member.process.isRunning {
            guard let status = try? member.client.json("POST", "/v3/maintenance/status", "{}").json(),
                  let header = status["header"] as? [String: Any],
                  let id = header["member_id"] as? String, let leader = status["leader"] as? String else { continue }
            if id == leader { return index }
        }
        return nil
    }

    /// A key's value as text, read through the first running member's gateway; nil when absent.
    public func value(of key: String) throws -> String? {
        guard let member = running.first else { throw TestFailure("no etcd member runs") }
        let encoded = Data(key.utf8).base64EncodedString()
        let answer = try member.client.json("POST", "/v3/kv/range", #"{"key": "\#(encoded)"}"#).json()
        guard let kvs = answer["kvs"] as? [[String: Any]], let value = kvs.first?["value"] as? String,
              let bytes = Data(base64Encoded: value) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Deletes a key through the first running member's gateway.
    public func delete(_ key: String) throws {
        guard let member = running.first else { throw TestFailure("no etcd member runs") }
        let answer = try member.client.json("POST", "/v3/kv/deleterange", #"{"key": "\#(Data(key.utf8).base64EncodedString())"}"#)
        guard answer.status == 200 else { throw TestFailure("deleterange \(key): \(answer.status) \(answer.text)") }
    }

    /// SIGKILL of one member (its data directory stays, as after a crash).
    public func kill9(_ index: Int) {
        let process = members[index].process
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Waits until a put through some running member succeeds (a leader is elected and
    /// a quorum answers).
    public func waitUntilWritable(timeout: Double = 30) throws {
        let key = Data("baton-test/health".utf8).base64EncodedString()
        do {
            try waitUntil(timeout: timeout) {
                self.running.contains { member in
                    (try? member.client.json("POST", "/v3/kv/put", #"{"key":"\#(key)","value":"\#(key)"}"#).status) == 200
                }
            }
        } catch {
            let logs = members.map { member in
                let state = member.process.isRunning ? "running" : "exited \(member.process.terminationStatus)"
                let log = (try? String(contentsOfFile: directory.file("\(member.name).log"), encoding: .utf8))?.suffix(2000) ?? "(no log)"
                return "\(member.name) \(member.clientURL) \(state):\n\(log)"
            }
            throw TestFailure("the etcd cluster took no write within \(timeout)s; its logs:\n\(logs.joined(separator: "\n---\n"))")
        }
    }
}
