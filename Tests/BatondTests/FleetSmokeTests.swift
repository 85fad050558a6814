import BatonTestSupport
import Foundation
import Testing

/// The fleet end to end on a small scale: three hosts on a real etcd cluster follow a
/// plan to a version fetched from a URL, checked from the agents' own event files.
@Suite("fleet smoke", .serialized, .enabled(if: EtcdCluster.isAvailable, "etcd is not installed (scripts/install-deps.sh test)"))
struct FleetSmokeTests {
    @Test func threeHostsFollowAPlan() throws {
        let cluster = try EtcdCluster(size: 1)
        let fleet = try TestFleet(cluster: cluster, hosts: 3)
        let release = try fleet.releases.add(agent: "web", version: "2.0")
        let set = try fleet.set(#"{"version": "2.0", "releases": {"web": {"url": "\#(release.url)", "sha256": "\#(release.sha256)"}}, "canary": 1, "max_unavailable": 1}"#)
        #expect(set.status == 200, "\(String(decoding: set.body, as: UTF8.self))")
        let done = try fleet.waitForPhase("done", timeout: 120)
        for host in fleet.hosts {
            #expect(host.running() == "2.0", "\(host.name)")
            #expect(host.rolloutPhase(in: done) == "done", "\(host.name)")
            #expect(overlaps(host.log()).isEmpty, "\(host.name): two instances worked at once")
        }
    }
}
