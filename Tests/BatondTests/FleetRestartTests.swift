import BatonTestSupport
import Foundation
import Glibc
import Testing

/// batond killed and restarted while its host waits at the fleet's barrier: the machine
/// rollout it takes up waits at the barrier again and never decides alone. Checked from
/// the agents' own event files and the migration's own stamps.
@Suite("fleet restart at the barrier", .serialized,
       .enabled(if: EtcdCluster.isAvailable && which("python3") != nil, "needs etcd (scripts/install-deps.sh test) and python3"))
struct FleetRestartTests {
    /// The migration stamps `start`, waits for a gate file, stamps `end`.
    static func migration(log: String, gate: String) -> String {
        let stamp = { (word: String) in #"python3 -c 'import time; print("\#(word)", time.monotonic_ns())' >> '\#(log)'"# }
        return "\(stamp("start"))\nwhile [ ! -e '\(gate)' ]; do sleep 0.05; done\n\(stamp("end"))"
    }

    static func stamps(_ log: String) -> [(String, UInt64)] {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            let parts = line.split(separator: " ")
            guard parts.count == 2, let time = UInt64(parts[1]) else { return nil }
            return (String(parts[0]), time)
        }
    }

    /// The host that claimed the barrier's migration, read from etcd through its gateway.
    static func claimer(_ cluster: EtcdCluster, plan: String) throws -> String? {
        let key = Data("/baton/test/barrier/\(plan)/migration".utf8).base64EncodedString()
        let answer = try cluster.members[0].client.json("POST", "/v3/kv/range", #"{"key": "\#(key)"}"#).json()
        guard let kvs = answer["kvs"] as? [[String: Any]], let value = kvs.first?["value"] as? String,
              let bytes = Data(base64Encoded: value) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    @Test func aHostRestartedWhileHaltedWaitsForTheFleetThenStartsTheNewVersion() throws {
        let cluster = try EtcdCluster(size: 1)
        let fleet = try TestFleet(cluster: cluster, hosts: 2)
        let scratch = TemporaryDirectory("fleet-migration")
        let log = scratch.file("migration.log"), gate = scratch.file("gate")
        let release = try fleet.releases.add(agent: "web", version: "2.0", migration: Self.migration(log: log, gate: gate))
        let set = try fleet.set(#"{"version": "2.0", "barrier": true, "releases": {"web": {"url": "\#(release.url)", "sha256": "\#(release.sha256)"}}}"#)
        #expect(set.status == 200, "\(set.text)")
        // The migration runs on one host, held at the gate: kill -9 the other host's batond.
        try waitUntil(timeout: 60) { Self.stamps(log).contains { $0.0 == "start" } }
        let claimer = try #require(try Self.claimer(cluster, plan: "fleet-1"))
        let other = try #require(fleet.hosts.first { $0.name != claimer })
        try other.restart()
        // The restarted batond takes its rollout up and waits: nothing of it starts.
        try waitUntil(timeout: 30) { (try? other.fleet())?["connected"] as? Bool == true }
        #expect(other.running() == nil, "the restarted host started an agent while the fleet migrates")
        // The fleet proceeds once the migration ends: every host starts 2.0.
        FileManager.default.createFile(atPath: gate, contents: nil)
        try fleet.waitForPhase("done", timeout: 120)
        try waitUntil(timeout: 60) { fleet.hosts.allSatisfy { $0.running() == "2.0" } }
        let stamps = Self.stamps(log)
        #expect(stamps.filter { $0.0 == "start" }.count == 1, "the migration ran once: \(stamps)")
        let start = try #require(stamps.first { $0.0 == "start" }?.1), end = try #require(stamps.first { $0.0 == "end" }?.1)
        for host in fleet.hosts {
            for interval in workingIntervals(host.log()) where interval.from < end && interval.to > start {
                Issue.record("\(host.name): \(interval.instance) worked while the migration ran")
            }
            #expect(overlaps(host.log()).isEmpty, "\(host.name)")
        }
    }

    @Test func theClaimerRestartedMidMigrationNeverRunsItAgainAndTheFleetRestores() throws {
        let cluster = try EtcdCluster(size: 1)
        let fleet = try TestFleet(cluster: cluster, hosts: 2)
        let scratch = TemporaryDirectory("fleet-migration")
        let log = scratch.file("migration.log"), gate = scratch.file("gate")
        let release = try fleet.releases.add(agent: "web", version: "2.0", migration: Self.migration(log: log, gate: gate))
        let set = try fleet.set(#"{"version": "2.0", "barrier": true, "releases": {"web": {"url": "\#(release.url)", "sha256": "\#(release.sha256)"}}}"#)
        #expect(set.status == 200, "\(set.text)")
        try waitUntil(timeout: 60) { Self.stamps(log).contains { $0.0 == "start" } }
        let claimer = try #require(fleet.hosts.first { $0.name == (try? Self.claimer(cluster, plan: "fleet-1")) })
        try claimer.restart()
        // Its outcome is unknown: written as failed, and every host goes back to 1.0.
        let restored = try fleet.waitForPhase("restored", timeout: 120)
        let reason = (restored["rollout"] as? [String: Any])?["reason"] as? String ?? ""
        #expect(reason.contains("outcome is unknown"), "\(reason)")
        try waitUntil(timeout: 60) { fleet.hosts.allSatisfy { $0.running() == "1.0" } }
        FileManager.default.createFile(atPath: gate, contents: nil)
        #expect(Self.stamps(log).filter { $0.0 == "start" }.count == 1, "the migration never ran twice")
        for host in fleet.hosts {
            #expect(!host.log().contains { $0.version == "2.0" && $0.event == "go" }, "\(host.name) never ran 2.0")
        }
    }
}
