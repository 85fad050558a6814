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

    /// Two hosts on 1.0 and a barrier plan to 2.0 whose migration runs, held at its gate.
    struct HeldBarrier {
        let cluster: EtcdCluster
        let fleet: TestFleet
        let scratch = TemporaryDirectory("fleet-migration")
        var log: String { scratch.file("migration.log") }
        var gate: String { scratch.file("gate") }

        init() throws {
            cluster = try EtcdCluster(size: 1)
            fleet = try TestFleet(cluster: cluster, hosts: 2)
            let release = try fleet.releases.add(agent: "web", version: "2.0", migration: FleetRestartTests.migration(log: log, gate: gate))
            let set = try fleet.set(#"{"version": "2.0", "barrier": true, "releases": {"web": {"url": "\#(release.url)", "sha256": "\#(release.sha256)"}}}"#)
            guard set.status == 200 else { throw TestFailure("PUT /v1/fleet: \(set.status) \(set.text)") }
            try waitUntil(timeout: 60) { [log] in FleetRestartTests.stamps(log).contains { $0.0 == "start" } }
        }

        /// The host that claimed the migration.
        func claimer() throws -> FleetHost {
            let name = try cluster.value(of: "/baton/test/barrier/fleet-1/migration")
            return try #require(fleet.hosts.first { $0.name == name })
        }
    }

    @Test func aHostRestartedWhileHaltedWaitsForTheFleetThenStartsTheNewVersion() throws {
        let held = try HeldBarrier()
        let (fleet, log) = (held.fleet, held.log)
        // The migration runs on one host, held at the gate: kill -9 the other host's batond.
        let claimer = try held.claimer()
        let other = try #require(fleet.hosts.first { $0.name != claimer.name })
        try other.restart()
        // The restarted batond takes its rollout up and waits: nothing of it starts.
        try waitUntil(timeout: 30) { (try? other.fleet())?["connected"] as? Bool == true }
        #expect(other.running() == nil, "the restarted host started an agent while the fleet migrates")
        // The fleet proceeds once the migration ends: every host starts 2.0.
        #expect(FileManager.default.createFile(atPath: held.gate, contents: nil))
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
        let held = try HeldBarrier()
        let (fleet, log) = (held.fleet, held.log)
        let claimer = try held.claimer()
        try claimer.restart()
        // Its outcome is unknown: written as failed, and every host goes back to 1.0.
        let restored = try fleet.waitForPhase("restored", timeout: 120)
        let reason = (restored["rollout"] as? [String: Any])?["reason"] as? String ?? ""
        #expect(reason.contains("outcome is unknown"), "\(reason)")
        try waitUntil(timeout: 60) { fleet.hosts.allSatisfy { $0.running() == "1.0" } }
        #expect(FileManager.default.createFile(atPath: held.gate, contents: nil))
        #expect(Self.stamps(log).filter { $0.0 == "start" }.count == 1, "the migration never ran twice")
        for host in fleet.hosts {
            #expect(!host.log().contains { $0.version == "2.0" && $0.event == "go" }, "\(host.name) never ran 2.0")
        }
    }
}
