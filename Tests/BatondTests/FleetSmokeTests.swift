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

    /// `baton fleet`: set a plan and follow it to its end, then read the fleet, as an
    /// operator does on one host of it.
    @Test func theCLISetsAPlanAndFollowsIt() throws {
        let cluster = try EtcdCluster(size: 1)
        let fleet = try TestFleet(cluster: cluster, hosts: 2)
        let first = try fleet.releases.add(agent: "web", version: "1.0")
        let release = try fleet.releases.add(agent: "web", version: "2.0")
        let host = fleet.hosts[0]
        func baton(_ arguments: [String]) throws -> (status: Int32, output: String) {
            try run([Products.path("baton")] + arguments + ["--socket", host.daemon.socketPath])
        }
        // The version every host runs, as the fleet's first plan: nothing to do.
        let initial = try baton(["fleet", "set", "1.0", "--release", "web=\(first.url)", "--sha256", "web=\(first.sha256)", "--wait"])
        #expect(initial.status == 0, "\(initial.output)")
        let set = try baton(["fleet", "set", "2.0", "--release", "web=\(release.url)", "--sha256", "web=\(release.sha256)",
                             "--canary", "1", "--max-unavailable", "1", "--wait"])
        #expect(set.status == 0, "\(set.output)")
        #expect(set.output.contains("plan fleet-2: the fleet goes to 2.0"), "\(set.output)")
        #expect(set.output.contains("done: the fleet runs 2.0"), "\(set.output)")
        let status = try baton(["fleet", "status"])
        #expect(status.status == 0, "\(status.output)")
        #expect(status.output.contains("fleet test, host h00"), "\(status.output)")
        #expect(status.output.contains("plan fleet-2: 2.0 (max unavailable 1, canary 1, soak 0ms)"), "\(status.output)")
        #expect(status.output.contains("rollout: done"), "\(status.output)")
        for name in ["h00", "h01"] {
            #expect(status.output.contains("\(name)   web 2.0 running  fleet-2 done"), "\(status.output)")
        }
        let machine = try run([Products.path("baton"), "status", "--socket", host.daemon.socketPath])
        #expect(machine.output.contains("fleet test as h00: plan fleet-2 (2.0), rollout done, this host done"), "\(machine.output)")
        // Back to 1.0 (the release put there by hand on each host is taken as stored), then a refusal.
        let back = try baton(["fleet", "rollback", "--wait"])
        #expect(back.status == 0, "\(back.output)")
        #expect(fleet.hosts.allSatisfy { $0.running() == "1.0" })
        let stale = try baton(["fleet", "set", "3.0", "--release", "web=\(release.url)", "--sha256", "web=\(release.sha256)",
                               "--expect-revision", "1"])
        #expect(stale.status == 4, "\(stale.output)")
        #expect(stale.output.contains("not 1: read it again"), "\(stale.output)")
    }

    /// etcd gone: the host keeps its agent as it is and says so in `/v1/status`,
    /// `baton status` and `/metrics`.
    @Test func aHostThatCannotReachEtcdSaysSoAndKeepsItsAgents() throws {
        let cluster = try EtcdCluster(size: 1)
        let fleet = try TestFleet(cluster: cluster, hosts: 1)
        let host = fleet.hosts[0]
        let before = try host.daemon.endpoint.get("/v1/status", token: host.daemon.token).json()["fleet"] as? [String: Any]
        #expect(before?["connected"] as? Bool == true && before?["host"] as? String == "h00", "\(before ?? [:])")
        cluster.kill9(0)
        var status: [String: Any] = [:]
        try waitUntil(timeout: 30) {
            status = (try? host.daemon.endpoint.get("/v1/status", token: host.daemon.token).json()["fleet"] as? [String: Any]) ?? [:]
            return status["connected"] as? Bool == false
        }
        #expect((status["error"] as? String)?.isEmpty == false, "\(status)")
        #expect(metric(host, "baton_fleet_connected") == 0)
        let printed = try run([Products.path("baton"), "status", "--socket", host.daemon.socketPath])
        #expect(printed.output.contains("fleet test as h00: etcd unreachable"), "\(printed.output)")
        #expect(printed.output.contains("agents stay as they are"), "\(printed.output)")
        #expect(host.running() == "1.0")
        #expect(host.log().filter { $0.event == "stopped" || $0.event == "exit" }.isEmpty, "the agent was not touched")
    }

    func metric(_ host: FleetHost, _ name: String) -> Double? {
        guard let text = try? host.daemon.endpoint.get("/metrics").text else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.dropFirst(name.count + 1))
        }
        return nil
    }
}
