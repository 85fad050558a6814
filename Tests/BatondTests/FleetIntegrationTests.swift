import BatonTestSupport
import Foundation
import Glibc
import Testing

/// Fleet mode's acceptance (issue 11) on a real three-member etcd cluster and several
/// real batonds, each a host with one test agent, checked from the agents' own event
/// files (CLOCK_MONOTONIC, one time line for every process on this machine): canary and
/// max-unavailable, a canary that fails, the fleet barrier with a migration, and faults
/// (etcd's leader killed, the coordinator killed or paused past its lease, a deposed
/// coordinator's late write, a host cut off from etcd or frozen past its lease).
@Suite("fleet acceptance", .serialized, .enabled(if: EtcdCluster.isAvailable, "etcd is not installed (scripts/install-deps.sh test)"))
struct FleetIntegrationTests {
    // MARK: - Canary and max-unavailable

    @Test func tenHostsWithACanaryOfTwoAndMaxUnavailableThree() throws {
        let cluster = try EtcdCluster(size: 3)
        // The wave is the hosts labelled canary first: h03 and h07, not h00 and h01.
        let fleet = try TestFleet(cluster: cluster, hosts: 10, labels: { [3, 7].contains($0) ? ["canary": "true"] : [:] })
        // A self-check that takes a while, so that handoffs last long enough to overlap.
        let release = try fleet.releases.add(agent: "web", version: "2.0", switches: ["--ready-after", "0.5"])
        let began = Date()
        try expectSet(fleet, plan("2.0", release, #""canary": 2, "max_unavailable": 3"#))
        let done = try fleet.waitForPhase("done", timeout: 180)
        print("fleet acceptance: 10 hosts (canary 2, max-unavailable 3) done in \(seconds(since: began)) s")
        let rollout = try #require(done["rollout"] as? [String: Any])
        #expect(rollout["admitted"] as? [String] == ["h03", "h07"], "\(rollout)")
        #expect((rollout["failed"] as? [String: Any] ?? [:]).isEmpty, "\(rollout)")

        var intervals: [(host: String, from: UInt64, to: UInt64)] = []
        for host in fleet.hosts {
            #expect(host.running() == "2.0", "\(host.name)")
            #expect(host.rolloutPhase(in: done) == "done", "\(host.name)")
            let events = host.log()
            #expect(overlaps(events).isEmpty, "\(host.name): two instances worked at once: \(events)")
            let mine = handoffs(events)
            #expect(mine.count == 1, "\(host.name) handed over once: \(events)")
            intervals += mine.map { (host.name, $0.from, $0.to) }
        }
        let most = maxConcurrent(intervals.map { ($0.from, $0.to) })
        print("fleet acceptance: at most \(most) of 10 hosts were mid-handoff at once (max-unavailable 3)")
        #expect(most <= 3, "more than max-unavailable hosts handed over at once: \(intervals)")
        // Not vacuous: the slots were used (eight hosts were admitted at once).
        #expect(most >= 2, "\(intervals)")

        // The canary wave upgraded before any other host began.
        let canaryGo = fleet.hosts.filter { ["h03", "h07"].contains($0.name) }.compactMap { host in
            host.log().last { $0.event == "go" && $0.version == "2.0" }?.nanoseconds
        }
        #expect(canaryGo.count == 2)
        let othersBegan = fleet.hosts.filter { !["h03", "h07"].contains($0.name) }.compactMap { host in
            host.log().first { $0.version == "2.0" }?.nanoseconds
        }
        #expect(othersBegan.count == 8)
        if let lastCanary = canaryGo.max(), let firstOther = othersBegan.min() {
            #expect(lastCanary < firstOther, "a host outside the wave began at \(firstOther), before the wave's go at \(lastCanary)")
        }
    }

    @Test func aCanaryThatFailsItsSelfCheckPausesTheRolloutAndNoOtherHostStartsIt() throws {
        let cluster = try EtcdCluster(size: 3)
        let fleet = try TestFleet(cluster: cluster, hosts: 4)
        let release = try fleet.releases.add(agent: "web", version: "2.0", switches: ["--fail-check"])
        try expectSet(fleet, plan("2.0", release, #""canary": 2, "max_unavailable": 2"#))
        let paused = try fleet.waitForPhase("paused", timeout: 120)
        let rollout = try #require(paused["rollout"] as? [String: Any])
        let wave = try #require(rollout["admitted"] as? [String])
        #expect(wave == ["h00", "h01"], "\(rollout)")
        let reason = rollout["reason"] as? String ?? ""
        #expect(reason.contains("canary") && wave.contains { reason.contains($0) }, "the reason names the host: \(rollout)")
        let failed = rollout["failed"] as? [String: Any] ?? [:]
        #expect(!failed.isEmpty && Set(failed.keys).isSubset(of: wave), "\(rollout)")
        // The pause comes with the first failure: the other wave host's upgrade, if it had
        // begun, runs to its end (and fails too); if not, it begins nothing.
        var view = paused
        try waitUntil(timeout: 60) {
            view = (try? fleet.hosts[0].fleet(timeout: 5)) ?? view
            return fleet.hosts.filter { wave.contains($0.name) }.allSatisfy { ["failed", "waiting"].contains($0.rolloutPhase(in: view)) }
        }

        for host in fleet.hosts {
            let events = host.log()
            #expect(host.running() == "1.0", "\(host.name)")
            #expect(overlaps(events).isEmpty, "\(host.name): \(events)")
            // The 1.0 instance never stopped: the failed successor never got go.
            #expect(!events.contains { $0.version == "1.0" && ["stop-received", "stopped", "exit"].contains($0.event) }, "\(host.name): \(events)")
            #expect(!events.contains { $0.version == "2.0" && $0.event == "go" }, "\(host.name): \(events)")
            if failed[host.name] != nil {
                #expect(host.rolloutPhase(in: view) == "failed", "\(host.name): \(view)")
            } else if !wave.contains(host.name) {
                // Never started: no instance of 2.0 at all in its events file.
                #expect(!events.contains { $0.version == "2.0" }, "\(host.name) started the failed release: \(events)")
                #expect(host.rolloutPhase(in: view) == "waiting", "\(host.name): \(view)")
            }
        }
    }

    // MARK: - The fleet barrier

    @Test(.enabled(if: which("python3") != nil, "the migration stamps CLOCK_MONOTONIC with python3"))
    func theBarrierRunsTheMigrationOnceWhileNoAgentAnywhereWorks() throws {
        let cluster = try EtcdCluster(size: 3)
        let fleet = try TestFleet(cluster: cluster, hosts: 3)
        let directory = TemporaryDirectory("fleet-migration")
        let log = directory.file("migration.log")
        let migration = """
            \(RolloutIntegrationTests.Machine.stamp("begin", log))
            sleep 1
            echo migrated
            \(RolloutIntegrationTests.Machine.stamp("end", log))
            """
        let release = try fleet.releases.add(agent: "web", version: "2.0", migration: migration)
        try expectSet(fleet, plan("2.0", release, #""barrier": true"#))
        let done = try fleet.waitForPhase("done", timeout: 120)

        let stamps = migrationStamps(log)
        #expect(stamps.filter { $0.word == "begin" }.count == 1, "the migration ran exactly once: \(stamps)")
        let begin = try #require(stamps.first { $0.word == "begin" }?.time)
        let end = try #require(stamps.first { $0.word == "end" }?.time)
        for host in fleet.hosts {
            #expect(host.running() == "2.0", "\(host.name)")
            #expect(host.rolloutPhase(in: done) == "done", "\(host.name)")
            let events = host.log()
            #expect(overlaps(events).isEmpty, "\(host.name): \(events)")
            for interval in workingIntervals(events) {
                #expect(interval.to <= begin || interval.from >= end,
                        "\(host.name) \(interval.instance) worked during the migration (\(interval.from)...\(interval.to), migration \(begin)...\(end))")
            }
            #expect(events.contains { $0.version == "2.0" && $0.event == "go" }, "\(host.name): \(events)")
        }
    }

    @Test func aFailingMigrationBringsEveryHostBackAndNoHostEverRunsTheNewVersion() throws {
        let cluster = try EtcdCluster(size: 3)
        let fleet = try TestFleet(cluster: cluster, hosts: 3)
        let release = try fleet.releases.add(agent: "web", version: "2.0", migration: "echo 'no such table: users' >&2; exit 1")
        try expectSet(fleet, plan("2.0", release, #""barrier": true"#))
        let restored = try fleet.waitForPhase("restored", timeout: 120)
        let rollout = try #require(restored["rollout"] as? [String: Any])
        #expect((rollout["reason"] as? String)?.contains("the migration failed") == true, "\(rollout)")
        for host in fleet.hosts {
            try waitUntil(timeout: 30) { host.running() == "1.0" }
            let events = host.log()
            #expect(!events.contains { $0.version == "2.0" }, "\(host.name) ran 2.0: \(events)")
            #expect(overlaps(events).isEmpty, "\(host.name): \(events)")
            // Halted, then a new 1.0 instance works.
            #expect(Set(events.filter { $0.event == "go" }.map(\.instance)).count == 2, "\(host.name): \(events)")
        }
    }

    // MARK: - Faults

    @Test func theRolloutGoesOnAfterEtcdsLeaderIsKilled() throws {
        let cluster = try EtcdCluster(size: 3)
        let fleet = try TestFleet(cluster: cluster, hosts: 4)
        let release = try fleet.releases.add(agent: "web", version: "2.0", switches: ["--ready-after", "1"])
        try expectSet(fleet, plan("2.0", release, #""max_unavailable": 1"#))
        // Mid-rollout: one host done, the others not yet.
        var view: [String: Any] = [:]
        try waitUntil(timeout: 60) {
            view = (try? fleet.hosts[0].fleet(timeout: 5)) ?? view
            return fleet.hosts.contains { $0.rolloutPhase(in: view) == "done" }
        }
        let leader = try #require(cluster.leader())
        cluster.kill9(leader)
        #expect(fleet.hosts.filter { $0.rolloutPhase(in: view) == "done" }.count < fleet.hosts.count, "killed mid-rollout: \(view)")
        try cluster.waitUntilWritable()
        let done = try fleet.waitForPhase("done", timeout: 120)
        #expect(cluster.leader().map { $0 != leader } == true)
        for host in fleet.hosts {
            #expect(host.running() == "2.0", "\(host.name)")
            #expect(host.rolloutPhase(in: done) == "done", "\(host.name)")
            #expect(overlaps(host.log()).isEmpty, "\(host.name)")
        }
    }

    @Test func anotherHostTakesOverWhenTheCoordinatorsBatondIsKilled() throws {
        let cluster = try EtcdCluster(size: 3)
        let fleet = try TestFleet(cluster: cluster, hosts: 4)
        let release = try fleet.releases.add(agent: "web", version: "2.0", switches: ["--ready-after", "1"])
        try expectSet(fleet, plan("2.0", release, #""max_unavailable": 1"#))
        var view: [String: Any] = [:]
        try waitUntil(timeout: 60) {
            view = (try? fleet.hosts[0].fleet(timeout: 5)) ?? view
            return view["coordinator"] is String && fleet.hosts.contains { $0.rolloutPhase(in: view) == "done" }
        }
        let old = try #require(view["coordinator"] as? String)
        let victim = try #require(fleet.hosts.first { $0.name == old })
        let live = try #require(fleet.hosts.firstIndex { $0.name != old })
        // Frozen first, so that it starts no instance between the listing and the kill;
        // its agents outlive it (as in production) and are the test's to end.
        victim.daemon.signal(SIGSTOP)
        let orphans = ProcessProbe(victim.daemon.process.processIdentifier).descendants
        defer { for orphan in orphans { orphan.kill() } }
        victim.daemon.signal(SIGKILL)
        _ = victim.daemon.waitForExit()
        let killed = Date()
        #expect(fleet.hosts.filter { $0.rolloutPhase(in: view) == "done" }.count < fleet.hosts.count, "killed mid-rollout: \(view)")

        try waitUntil(timeout: 60) {
            let coordinator = (try? fleet.hosts[live].fleet(timeout: 5))?["coordinator"] as? String
            return coordinator != nil && coordinator != old
        }
        print("fleet acceptance: a new coordinator \(seconds(since: killed)) s after kill -9 of the old one's batond (lease_ttl 3s)")
        let done = try fleet.waitForPhase("done", timeout: 120, through: live)
        #expect(done["coordinator"] as? String != old)
        let rollout = try #require(done["rollout"] as? [String: Any])
        #expect(rollout["coordinator"] as? String != old, "\(rollout)")
        for host in fleet.hosts where host.name != old {
            #expect(host.running() == "2.0", "\(host.name)")
            #expect(host.rolloutPhase(in: done) == "done", "\(host.name)")
            #expect(overlaps(host.log()).isEmpty, "\(host.name)")
        }
        // The dead host's agent: still one instance at a time, whatever it was doing.
        #expect(overlaps(victim.log()).isEmpty, "\(old): \(victim.log())")
        #expect(!(done["hosts"] as? [[String: Any]] ?? []).contains { $0["host"] as? String == old }, "its lease ended")
    }

    /// The coordinator paused (SIGSTOP) past its lease: another is elected, and a plan set
    /// meanwhile gives the old one something to write when it wakes. Every write the
    /// coordinator makes is guarded by its leader key; the rollout key's whole history
    /// shows it never wrote again after the takeover, and it stepped down. (Waking, it
    /// reads the fleet, leader key included, before it decides, so it sends no late write
    /// at all here: the next test makes it send one.)
    @Test func aCoordinatorPausedPastItsLeaseNeverWritesAgain() throws {
        let cluster = try EtcdCluster(size: 3)
        let fleet = try TestFleet(cluster: cluster, hosts: 3)
        let etcd = EtcdKeys(cluster: cluster)
        let first = try fleet.releases.add(agent: "web", version: "2.0")
        let second = try fleet.releases.add(agent: "web", version: "3.0")
        try expectSet(fleet, plan("2.0", first, #""max_unavailable": 3"#))
        let done = try fleet.waitForPhase("done", timeout: 120)
        let old = try #require(done["coordinator"] as? String)
        let paused = try #require(fleet.hosts.first { $0.name == old })
        let other = try #require(fleet.hosts.firstIndex { $0.name != old })
        // Its term: the create revision of its leader key; it wrote the rollout under it.
        let term = try #require(etcd.read(etcd.coordinator)?.createRevision)
        #expect(try etcd.rollout()?["coordinator"] as? String == old)

        paused.daemon.signal(SIGSTOP)
        var resumed = false
        defer { if !resumed { paused.daemon.signal(SIGCONT) } }
        try waitUntil(timeout: 60) {
            let holder = try? etcd.read(etcd.coordinator)?.string
            return holder != nil && holder != old
        }
        let takeover = try #require(etcd.read(etcd.coordinator)?.createRevision)
        try expectSet(fleet, plan("3.0", second, #""max_unavailable": 3"#), through: other)
        try waitUntil(timeout: 60) { (try? etcd.rollout())?["id"] as? String == "fleet-2" }

        // The write a late coordinator sends (Coordinator.swift's guard: its leader key's
        // create revision and value) is refused by etcd now.
        let late = try etcd.guardedPut(term: term, holder: old, key: etcd.rolloutKey, value: #"{"id":"fleet-2","phase":"done"}"#)
        #expect(late == false, "etcd took a write guarded by the old term")

        paused.daemon.signal(SIGCONT)
        resumed = true
        // It steps down (it reads the leader key before every write), joins again and
        // converges on the new plan.
        try waitUntil(timeout: 60) { paused.metric("baton_fleet_coordinator") == 0 }
        try fleet.waitForPhase("done", timeout: 120, through: other)
        try waitUntil(timeout: 60) { paused.running() == "3.0" }
        let refused = paused.metric("baton_fleet_refused_writes_total") ?? -1
        print("fleet acceptance: the paused coordinator's refused writes after it woke: \(refused)")

        // The rollout key's history since the takeover: no version written by the old coordinator.
        let history = try etcd.history(etcd.rolloutKey, since: takeover)
        #expect(!history.isEmpty)
        for version in history {
            let state = try JSONSerialization.jsonObject(with: version.value) as? [String: Any]
            #expect(state?["coordinator"] as? String != old, "written by the deposed coordinator at \(version.modRevision): \(state ?? [:])")
        }
        #expect(try etcd.read(etcd.coordinator)?.string != old)
        for host in fleet.hosts {
            #expect(overlaps(host.log()).isEmpty, "\(host.name)")
        }
    }

    /// The late write itself. A paused coordinator reads the leader key before each write
    /// and steps down on waking (above), so to make it send a write after its deposition
    /// the test freezes its traffic (its own proxies) right after etcd answered the read it
    /// decides from, and before that answer reaches it: its lease ends, another host is
    /// elected and writes; then the old one gets its read (which says it leads), decides,
    /// and writes. etcd refuses the write (the leader key's create revision is another's),
    /// and the old coordinator counts it and steps down.
    @Test func aDeposedCoordinatorsLateWriteIsRefused() throws {
        let cluster = try EtcdCluster(size: 3)
        // h00 and h01 never coordinate; h02, behind the proxies, does (the only candidate
        // when it joins); h03 joins after it, as its successor.
        let fleet = try TestFleet(cluster: cluster, hosts: 2, coordinator: { _ in false })
        let etcd = EtcdKeys(cluster: cluster)
        let proxies = try cluster.endpoints.map { try TCPProxy(to: $0) }
        defer { for proxy in proxies { proxy.release(); proxy.stop() } }
        // A request timeout longer than the stall: its read is answered late, not abandoned.
        let old = try FleetHost(name: "h02", endpoints: proxies.map(\.url), requestTimeout: "60s")
        fleet.add(old)
        try waitFor("h02 coordinates", old, timeout: 60) { (try? etcd.read(etcd.coordinator))??.string == "h02" }
        let successor = try FleetHost(name: "h03", endpoints: cluster.endpoints)
        fleet.add(successor)
        try waitFor("four hosts registered on 1.0", old, timeout: 60) { old.running() == "1.0" && successor.running() == "1.0" && fleet.registered() == 4 }
        let release = try fleet.releases.add(agent: "web", version: "2.0")

        // The read the coordinator decides from is the range of the whole fleet's prefix;
        // the one to hold is the first that has the plan in it.
        let request = "\"\(EtcdKeys.base64("/baton/test/"))\"", answer = EtcdKeys.base64("/baton/test/plan/desired")
        for proxy in proxies { proxy.stall(request: request, answer: answer) }
        try expectSet(fleet, plan("2.0", release, #""max_unavailable": 2"#))
        try waitFor("the stall went off", old, timeout: 30) { proxies.contains(where: \.isStalled) }
        // Its lease ends; h03 is elected and writes the plan's first rollout state.
        try waitFor("h03 coordinates", old, timeout: 60) { (try? etcd.read(etcd.coordinator))??.string == "h03" }
        let takeover = try #require(etcd.read(etcd.coordinator)?.createRevision)
        try waitFor("h03 wrote the rollout state", old, timeout: 60) { (try? etcd.rollout())??["coordinator"] as? String == "h03" }
        #expect(old.metric("baton_fleet_refused_writes_total") == 0)

        for proxy in proxies { proxy.release() }
        try waitFor("h02 counted a refused write", old, timeout: 60) { (old.metric("baton_fleet_refused_writes_total") ?? 0) >= 1 }
        try waitFor("h02 stepped down", old, timeout: 60) { old.metric("baton_fleet_coordinator") == 0 }
        try fleet.waitForPhase("done", timeout: 120)
        try waitFor("h02 converged on 2.0", old, timeout: 60) { old.running() == "2.0" }

        let history = try etcd.history(etcd.rolloutKey, since: takeover)
        #expect(!history.isEmpty)
        for version in history {
            let state = try JSONSerialization.jsonObject(with: version.value) as? [String: Any]
            #expect(state?["coordinator"] as? String != "h02", "written by the deposed coordinator at \(version.modRevision): \(state ?? [:])")
        }
        for host in fleet.hosts {
            #expect(host.running() == "2.0", "\(host.name)")
            #expect(overlaps(host.log()).isEmpty, "\(host.name)")
        }
    }

    /// One host cut off from etcd (its own proxies in front of the cluster): it keeps its
    /// agent working on 1.0 and says it is not connected; the others move on; healed, it
    /// registers again and converges.
    @Test func aHostCutOffFromEtcdKeepsWorkingThenRejoinsAndConverges() throws {
        let cluster = try EtcdCluster(size: 3)
        let fleet = try TestFleet(cluster: cluster, hosts: 2)
        let proxies = try cluster.endpoints.map { try TCPProxy(to: $0) }
        defer { for proxy in proxies { proxy.stop() } }
        let cut = try FleetHost(name: "h02", endpoints: proxies.map(\.url))
        fleet.add(cut)
        try waitUntil(timeout: 60) { cut.running() == "1.0" && fleet.registered() == 3 }
        let release = try fleet.releases.add(agent: "web", version: "2.0")

        for proxy in proxies { proxy.partition() }
        try waitUntil(timeout: 30) { fleet.registered() == 2 }
        try expectSet(fleet, plan("2.0", release, #""max_unavailable": 1"#))
        let done = try fleet.waitForPhase("done", timeout: 120)
        for host in fleet.hosts where host !== cut {
            #expect(host.running() == "2.0", "\(host.name)")
            #expect(host.rolloutPhase(in: done) == "done", "\(host.name)")
        }
        // Cut off: on 1.0, working, and it says so.
        let own = try cut.fleet()
        #expect(own["connected"] as? Bool == false, "\(own)")
        #expect(cut.running() == "1.0")
        let healedAt = monotonicNanoseconds()
        #expect(!cut.log().contains { ["stop-received", "stopped", "term", "exit"].contains($0.event) },
                "its agent never stopped while it was cut off: \(cut.log())")

        for proxy in proxies { proxy.heal() }
        let healed = Date()
        try waitUntil(timeout: 60) { cut.running() == "2.0" }
        print("fleet acceptance: the cut-off host ran 2.0 \(seconds(since: healed)) s after the partition healed")
        var view: [String: Any] = [:]
        try waitUntil(timeout: 60) {
            view = (try? fleet.hosts[0].fleet(timeout: 5)) ?? view
            return cut.rolloutPhase(in: view) == "done"
        }
        #expect((try? cut.fleet())?["connected"] as? Bool == true)
        let events = cut.log()
        #expect(overlaps(events).isEmpty, "\(events)")
        #expect(!events.contains { $0.version == "1.0" && $0.nanoseconds < healedAt && ["stop-received", "stopped", "term", "exit"].contains($0.event) })
    }

    /// A host frozen (SIGSTOP: a paused VM, a stalled process) past its lease while nothing
    /// changes in the plan: its connections stay up, only its lease ended. When it wakes it
    /// registers again by itself, without waiting for the next plan.
    @Test func aHostFrozenPastItsLeaseRegistersAgainWhenItWakes() throws {
        let cluster = try EtcdCluster(size: 3)
        let fleet = try TestFleet(cluster: cluster, hosts: 3)
        let frozen = fleet.hosts[2]
        frozen.daemon.signal(SIGSTOP)
        var resumed = false
        defer { if !resumed { frozen.daemon.signal(SIGCONT) } }
        try waitUntil(timeout: 30) { fleet.registered() == 2 }
        frozen.daemon.signal(SIGCONT)
        resumed = true
        do {
            try waitUntil(timeout: 30) { fleet.registered() == 3 }
        } catch {
            throw TestFailure("\(frozen.name) did not register again: \((try? fleet.hosts[0].fleet()) ?? [:])")
        }
        #expect(frozen.running() == "1.0")
        #expect(!frozen.log().contains { ["stop-received", "stopped", "term", "exit"].contains($0.event) })
    }

    /// A batond registers under one lease: its plan follower and its campaign both need the
    /// lease at start, and must not grant one each (the spare one holds whatever was put
    /// under it, a coordinator key or the host's own status, until it ends).
    @Test func aHostRegistersUnderOneLease() throws {
        let cluster = try EtcdCluster(size: 1)
        let etcd = EtcdKeys(cluster: cluster)
        // A long TTL: a spare lease would still be there when the test looks.
        let host = try FleetHost(name: "h00", endpoints: cluster.endpoints, leaseTTL: "60s")
        try waitUntil(timeout: 60) { (try? etcd.read("/baton/test/hosts/h00")) != nil && (try? etcd.read(etcd.coordinator)) != nil }
        let leases = try etcd.call("/v3/lease/leases", [:])["leases"] as? [[String: Any]] ?? []
        #expect(leases.count == 1, "leases granted: \(leases); \(host.daemon.log.components(separatedBy: "\n").filter { $0.contains("joined the fleet") })")
    }

    // MARK: - Helpers

    func plan(_ version: String, _ release: (url: String, sha256: String), _ rules: String) -> String {
        #"{"version": "\#(version)", "releases": {"web": {"url": "\#(release.url)", "sha256": "\#(release.sha256)"}}, \#(rules)}"#
    }

    func expectSet(_ fleet: TestFleet, _ body: String, through host: Int = 0) throws {
        let answer = try fleet.set(body, through: host)
        guard answer.status == 200 else { throw TestFailure("PUT /v1/fleet: \(answer.status) \(answer.text)") }
    }
}

// MARK: - Reading the agents' records

/// One host's handoffs from its agent's events: each instance after the first is a
/// successor; its handoff lasts from its first event to the later of the old instance's
/// `stopped` (or `exit`) and its own `go` (a successor that never got go: to its last event).
func handoffs(_ events: [AgentEvent]) -> [(from: UInt64, to: UInt64)] {
    var order: [String] = []
    for event in events.sorted(by: { $0.nanoseconds < $1.nanoseconds }) where !order.contains(event.instance) {
        order.append(event.instance)
    }
    return zip(order, order.dropFirst()).map { old, new in
        let successor = events.filter { $0.instance == new }
        let from = successor.map(\.nanoseconds).min() ?? 0
        let stopped = events.first { $0.instance == old && ["stopped", "exit"].contains($0.event) }?.nanoseconds
        let go = successor.first { $0.event == "go" }?.nanoseconds
        if stopped == nil && go == nil { return (from, successor.map(\.nanoseconds).max() ?? from) }
        return (from, max(stopped ?? 0, go ?? 0))
    }
}

/// The most intervals open at one moment (one that ends when another begins does not count twice).
func maxConcurrent(_ intervals: [(from: UInt64, to: UInt64)]) -> Int {
    var points: [(time: UInt64, change: Int)] = []
    for interval in intervals {
        points.append((interval.from, 1))
        points.append((interval.to, -1))
    }
    points.sort { a, b in a.time != b.time ? a.time < b.time : a.change < b.change }
    var open = 0, most = 0
    for (_, change) in points {
        open += change
        most = max(most, open)
    }
    return most
}

/// `<word> <ns>` lines of a migration's stamps file, in order.
func migrationStamps(_ path: String) -> [(word: String, time: UInt64)] {
    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    return text.split(separator: "\n").compactMap { line in
        let parts = line.split(separator: " ")
        guard parts.count == 2, let time = UInt64(parts[1]) else { return nil }
        return (String(parts[0]), time)
    }
}

/// `waitUntil`, failing with what was awaited and the end of `host`'s batond log.
func waitFor(_ what: String, _ host: FleetHost, timeout: Double, _ condition: () -> Bool) throws {
    do { try waitUntil(timeout: timeout, condition) } catch {
        throw TestFailure("\(what): not within \(timeout)s; \(host.name)'s batond:\n\(host.daemon.log.suffix(6000))")
    }
}

/// Seconds since `start`, to one decimal (figures printed for the record, never asserted).
func seconds(since start: Date) -> String { String(format: "%.1f", Date().timeIntervalSince(start)) }

// MARK: - etcd, read by the test itself

/// The test's own look at the fleet's keys (`/baton/test/`) through etcd's JSON gateway,
/// independent of batond.
struct EtcdKeys {
    let cluster: EtcdCluster
    let coordinator = "/baton/test/coordinator"
    let rolloutKey = "/baton/test/plan/rollout"

    struct Value {
        let value: Data
        let createRevision: Int64
        let modRevision: Int64
        var string: String { String(decoding: value, as: UTF8.self) }
    }

    /// One call to any running member that answers.
    func call(_ path: String, _ body: [String: Any]) throws -> [String: Any] {
        let text = String(decoding: try JSONSerialization.data(withJSONObject: body), as: UTF8.self)
        var last: (any Error)?
        for member in cluster.running {
            do {
                let answer = try member.client.json("POST", path, text)
                if answer.status == 200 { return try answer.json() }
                last = TestFailure("\(path): \(answer.status) \(answer.text)")
            } catch { last = error }
        }
        throw last ?? TestFailure("no etcd member runs")
    }

    /// `key` now, or as it was at `revision`.
    func read(_ key: String, at revision: Int64? = nil) throws -> Value? {
        var body: [String: Any] = ["key": Self.base64(key)]
        if let revision { body["revision"] = String(revision) }
        guard let kv = (try call("/v3/kv/range", body)["kvs"] as? [[String: Any]])?.first else { return nil }
        return Value(value: Data(base64Encoded: kv["value"] as? String ?? "") ?? Data(),
                     createRevision: Int64(kv["create_revision"] as? String ?? "") ?? 0,
                     modRevision: Int64(kv["mod_revision"] as? String ?? "") ?? 0)
    }

    func rollout() throws -> [String: Any]? {
        try read(rolloutKey).flatMap { try JSONSerialization.jsonObject(with: $0.value) as? [String: Any] }
    }

    /// Every version of `key` written at `since` or later, newest first (read back one
    /// write at a time: the version before the one written at revision m is the key at m − 1).
    func history(_ key: String, since: Int64) throws -> [Value] {
        var versions: [Value] = []
        var at: Int64?
        while let value = try read(key, at: at), value.modRevision >= since {
            versions.append(value)
            at = value.modRevision - 1
        }
        return versions
    }

    /// A put guarded as the coordinator guards its writes: its leader key must still have
    /// `term` as create revision and `holder` as value. Whether etcd applied it.
    func guardedPut(term: Int64, holder: String, key: String, value: String) throws -> Bool {
        let answer = try call("/v3/kv/txn", [
            "compare": [
                ["key": Self.base64(coordinator), "target": "CREATE", "result": "EQUAL", "create_revision": String(term)],
                ["key": Self.base64(coordinator), "target": "VALUE", "result": "EQUAL", "value": Self.base64(holder)],
            ],
            "success": [["request_put": ["key": Self.base64(key), "value": Self.base64(value)]]],
        ])
        return answer["succeeded"] as? Bool ?? false
    }

    static func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }
}
