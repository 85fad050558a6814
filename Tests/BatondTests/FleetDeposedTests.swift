import BatonTestSupport
import Foundation
import Testing

/// A coordinator deposed between its decision and its write: etcd refuses the write,
/// because it compares the leader key the coordinator was elected with. A debug batond
/// pauses before each coordinator write (BATON_FLEET_WRITE_DELAY_MS), and the test takes
/// the leader key away during the pause, as the end of its lease would.
@Suite("fleet deposed coordinator", .serialized, .enabled(if: EtcdCluster.isAvailable, "etcd is not installed (scripts/install-deps.sh test)"))
struct FleetDeposedTests {
    @Test func aLateWriteOfADeposedCoordinatorIsRefused() throws {
        let cluster = try EtcdCluster(size: 1)
        let releases = try FleetReleaseServer()
        let old = try FleetHost(name: "h00", endpoints: cluster.endpoints, environment: ["BATON_FLEET_WRITE_DELAY_MS": "3000"])
        try waitUntil(timeout: 30) { (try? cluster.value(of: "/baton/test/coordinator")) == "h00" }
        let next = try FleetHost(name: "h01", endpoints: cluster.endpoints)
        try waitUntil(timeout: 30) { ((try? next.fleet())?["hosts"] as? [Any])?.count == 2 }

        // A plan: h00 decides a rollout state at once, and waits 3 s before writing it.
        let release = try releases.add(agent: "web", version: "2.0")
        let set = try next.daemon.endpoint.json("PUT", "/v1/fleet", token: next.daemon.token,
                                                #"{"version": "2.0", "releases": {"web": {"url": "\#(release.url)", "sha256": "\#(release.sha256)"}}}"#)
        #expect(set.status == 200, "\(set.text)")
        // Meanwhile its term ends (its key is gone, as with its lease), and h01 is elected.
        try cluster.delete("/baton/test/coordinator")
        try waitUntil(timeout: 30) { (try? cluster.value(of: "/baton/test/coordinator")) == "h01" }
        // h00's write comes late: etcd refuses it, and h00 knows it no longer leads.
        try waitUntil(timeout: 30) { (old.metric("baton_fleet_refused_writes_total") ?? 0) >= 1 }
        #expect(old.metric("baton_fleet_coordinator") == 0)
        // The rollout state was never h00's: h01 wrote it, and the rollout ends.
        try waitUntil(timeout: 60) {
            guard let state = try? cluster.value(of: "/baton/test/plan/rollout") else { return false }
            return state.contains(#""phase":"done""#)
        }
        let state = try #require(try cluster.value(of: "/baton/test/plan/rollout"))
        #expect(state.contains(#""coordinator":"h01""#), "\(state)")
        #expect(old.running() == "2.0" && next.running() == "2.0")
    }
}
