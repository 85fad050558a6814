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

    /// An idle fleet costs etcd little: the coordinator waits for a change (or its 5 s
    /// look) instead of reading the fleet again and again. A cancelled wake-up timer
    /// once woke each next wait at once: thousands of reads a second.
    @Test func anIdleFleetAsksLittleOfEtcd() throws {
        let cluster = try EtcdCluster(size: 1)
        let fleet = try TestFleet(cluster: cluster, hosts: 1)
        let host = fleet.hosts[0]
        try waitUntil(timeout: 30) { metric(host, "baton_fleet_coordinator") == 1 }
        let before = try #require(metric(host, "baton_fleet_etcd_requests_total"))
        let contact = try #require(metric(host, "baton_fleet_last_contact_timestamp_seconds"))
        // Until etcd answered 3 s later (a keepalive a second, a third of the 3 s lease),
        // with nothing changing: a handful of requests.
        try waitUntil(timeout: 30) { (metric(host, "baton_fleet_last_contact_timestamp_seconds") ?? 0) >= contact + 3 }
        let after = try #require(metric(host, "baton_fleet_etcd_requests_total"))
        #expect(after - before < 30, "\(after - before) requests to etcd in 3 s while nothing changed")
    }

    func metric(_ host: FleetHost, _ name: String) -> Double? {
        guard let text = try? host.daemon.endpoint.get("/metrics").text else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.dropFirst(name.count + 1))
        }
        return nil
    }
}
