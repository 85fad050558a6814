import BatonEtcd
import BatonTestSupport
import Foundation
import Testing

/// EtcdClient against real etcd clusters on loopback (single members where a quorum does
/// not matter; three where members die).
@Suite("EtcdClient", .serialized, .timeLimit(.minutes(2)),
       .enabled(if: EtcdCluster.isAvailable, "needs etcd (apt-get install etcd-server; make test installs it)"))
struct EtcdClientTests {
    func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    @Test func putRangePrefixAndDelete() async throws {
        let cluster = try EtcdCluster(size: 1)
        let client = EtcdClient(EtcdSettings(endpoints: cluster.endpoints))
        let first = try await client.put("fleet/a/1", value: bytes("one"))
        let second = try await client.put("fleet/a/2", value: bytes("two"))
        _ = try await client.put("fleet/b", value: bytes("other"))
        #expect(second > first)

        let one = try await client.range("fleet/a/1")
        #expect(one.kvs.map(\.string) == ["one"])
        #expect(one.kvs.first?.createRevision == first && one.kvs.first?.modRevision == first && one.kvs.first?.version == 1)
        #expect(one.revision >= second)
        let prefix = try await client.range("fleet/a/", prefix: true)
        #expect(prefix.kvs.map(\.key) == ["fleet/a/1", "fleet/a/2"])
        #expect(try await client.range("fleet/none").kvs.isEmpty)

        let deleted = try await client.delete("fleet/a/", prefix: true)
        #expect(deleted > second)
        #expect(try await client.range("fleet/", prefix: true).kvs.map(\.key) == ["fleet/b"])
    }

    @Test func createIfAbsentSucceedsOnceThenReturnsTheFailureBranchRange() async throws {
        let cluster = try EtcdCluster(size: 1)
        let client = EtcdClient(EtcdSettings(endpoints: cluster.endpoints))
        func claim(_ holder: String) async throws -> EtcdTxnResult {
            try await client.txn([.createRevision("fleet/migration", equals: 0)],
                                 success: [.put("fleet/migration", value: bytes(holder))],
                                 failure: [.range("fleet/migration")])
        }
        let first = try await claim("host-1")
        #expect(first.succeeded && first.ranges.isEmpty)
        let second = try await claim("host-2")
        #expect(!second.succeeded)
        #expect(second.revision == first.revision)
        #expect(second.ranges.map { $0.map(\.string) } == [["host-1"]])
        #expect(try await client.range("fleet/migration").kvs.map(\.string) == ["host-1"])
    }

    @Test func aModRevisionGuardedWriteIsRefusedAfterAnotherWrite() async throws {
        let cluster = try EtcdCluster(size: 1)
        let client = EtcdClient(EtcdSettings(endpoints: cluster.endpoints))
        let read = try await client.put("fleet/state", value: bytes("v1"))
        _ = try await client.put("fleet/state", value: bytes("v2 by another"))
        let guarded = try await client.txn([.modRevision("fleet/state", equals: read)],
                                           success: [.put("fleet/state", value: bytes("v3"))],
                                           failure: [.range("fleet/state"), .range("fleet/", prefix: true)])
        #expect(!guarded.succeeded)
        #expect(guarded.ranges.map { $0.map(\.string) } == [["v2 by another"], ["v2 by another"]])
        let now = try await client.range("fleet/state")
        let valueGuard = try await client.txn([.value("fleet/state", equals: bytes("v2 by another")),
                                               .modRevision("fleet/state", equals: now.kvs[0].modRevision)],
                                              success: [.put("fleet/state", value: bytes("v3")), .range("fleet/state")])
        #expect(valueGuard.succeeded)
        #expect(valueGuard.ranges.map { $0.map(\.string) } == [["v3"]])
    }

    @Test func aLeasedKeyGoesAfterItsTTLWithoutKeepAliveAndStaysWithIt() async throws {
        let cluster = try EtcdCluster(size: 1)
        let client = EtcdClient(EtcdSettings(endpoints: cluster.endpoints))
        // The whole suite in parallel on 2 cores starves Swift's cooperative threads for
        // seconds at a time: a lease may end between its grant and the put under it (then
        // both are made again), and the kept lease's keepalives come from a thread of their
        // own, straight to the gateway (a keeper task once ran 3 times in 18 s).
        let gateway = cluster.members[0].client
        let stop = Locked(false)
        let answers = Locked<[String]>([])
        let keptID = Locked<Int64>(0)
        let keeper = Thread {
            while !stop.get() {
                if keptID.get() != 0 {
                    let answer = (try? gateway.json("POST", "/v3/lease/keepalive", #"{"ID": "\#(keptID.get())"}"#).text) ?? "no answer"
                    answers.update { $0 += [answer] }
                }
                usleep(300_000)
            }
        }
        keeper.start()
        defer { stop.set(true) }
        func leased(_ key: String, keep: Bool) async throws -> EtcdLease {
            for _ in 0..<5 {
                let lease = try await client.grant(ttl: 3)
                #expect(lease.ttl == 3)
                if keep { keptID.set(lease.id) }
                do {
                    _ = try await client.put(key, value: bytes("up"), lease: lease.id)
                    return lease
                } catch .leaseNotFound {
                    continue
                }
            }
            throw TestFailure("no lease lived from its grant to the put under it, 5 times")
        }
        let kept = try await leased("fleet/hosts/kept", keep: true)
        let dropped = try await leased("fleet/hosts/dropped", keep: false)
        #expect(kept.id != dropped.id)
        #expect(try await client.range("fleet/hosts/kept").kvs.first?.lease == kept.id)
        #expect(try await client.keepAlive(kept.id) == 3)
        // Both with the same TTL: when the dropped one has gone, the kept one would have gone
        // too without its keepalives. Both keys read at one revision: the moment the dropped
        // one is gone, the kept one is there.
        var both: [[String]] = []
        try await eventually {
            both = try await client.txn([], success: [.range("fleet/hosts/dropped"), .range("fleet/hosts/kept")]).ranges.map { $0.map(\.string) }
            return both.first?.isEmpty == true
        }
        #expect(both == [[], ["up"]], "\(both); keepalive answers: \(answers.get())")
        await #expect(throws: EtcdError.leaseNotFound) { try await client.keepAlive(dropped.id) }
        await #expect(throws: EtcdError.leaseNotFound) { try await client.put("fleet/hosts/late", value: [], lease: dropped.id) }

        // A revoked lease takes its keys at once (a fresh one: on a loaded machine the kept
        // one may lapse once its keeper stopped).
        let revoked = try await client.grant(ttl: 60)
        _ = try await client.put("fleet/hosts/revoked", value: bytes("up"), lease: revoked.id)
        try await client.revoke(revoked.id)
        #expect(try await client.range("fleet/hosts/revoked").kvs.isEmpty)
        await #expect(throws: EtcdError.leaseNotFound) { try await client.keepAlive(revoked.id) }
        await #expect(throws: EtcdError.leaseNotFound) { try await client.revoke(revoked.id) }
    }

    @Test func aWatchSeesPutsAndDeletesInOrderFromItsStartRevision() async throws {
        let cluster = try EtcdCluster(size: 1)
        let client = EtcdClient(EtcdSettings(endpoints: cluster.endpoints))
        let start = try await client.put("fleet/hosts/a", value: bytes("1"))
        _ = try await client.delete("fleet/hosts/a")
        _ = try await client.put("fleet/elsewhere", value: bytes("not watched"))
        var updates = client.watch("fleet/hosts/", prefix: true, from: start).makeAsyncIterator()
        var events = try await collect(2, from: &updates) { _ in }
        _ = try await client.put("fleet/hosts/b", value: bytes("2"))
        _ = try await client.put("fleet/hosts/b", value: bytes("3"))
        events += try await collect(2, from: &updates) { _ in }
        #expect(events.map(\.kind) == [.put, .delete, .put, .put])
        #expect(events.map(\.kv.key) == ["fleet/hosts/a", "fleet/hosts/a", "fleet/hosts/b", "fleet/hosts/b"])
        #expect(events.map(\.kv.string) == ["1", "", "2", "3"])
        #expect(events.first?.kv.modRevision == start)
        #expect(zip(events, events.dropFirst()).allSatisfy { $0.kv.modRevision < $1.kv.modRevision })
    }

    @Test func aWatchResumesWithoutLossOrDuplicateWhenItsMemberIsKilled() async throws {
        let cluster = try EtcdCluster(size: 3)
        // The member watched through is a follower: killing it costs no election.
        let leader = try #require(cluster.leader())
        let followers = cluster.members.indices.filter { $0 != leader }
        let order = [followers[0], leader, followers[1]]
        let client = EtcdClient(EtcdSettings(endpoints: order.map { cluster.members[$0].clientURL }))
        let start = try await client.put("fleet/plan", value: bytes("v0"))
        var updates = client.watch("fleet/plan", from: start).makeAsyncIterator()
        // A watch from now that has seen nothing yet resumes after the revision it was created at.
        var fromNow = client.watch("fleet/plan", from: 0).makeAsyncIterator()
        var events = try await collect(1, from: &updates) { _ in }
        try await eventually { try watchers(cluster, member: followers[0]) == 2 }
        cluster.kill9(followers[0])
        var others: [EtcdWatchUpdate] = []
        for version in 1...5 { _ = try await client.put("fleet/plan", value: bytes("v\(version)")) }
        events += try await collect(5, from: &updates) { others.append($0) }
        #expect(events.map(\.kv.string) == (0...5).map { "v\($0)" })
        #expect(zip(events, events.dropFirst()).allSatisfy { $0.kv.modRevision + 1 == $1.kv.modRevision })
        // Said once: the break, then the reconnection, at the revision seen before it.
        #expect(others.count == 2, "\(others)")
        if case .disconnected(.unreachable(let text)) = others.first {
            #expect(text.hasPrefix(cluster.members[followers[0]].clientURL), "\(text)")
        } else {
            Issue.record("not a disconnection first: \(others)")
        }
        #expect(others.last == .events([], revision: start))
        #expect(try await collect(5, from: &fromNow) { _ in }.map(\.kv.string) == (1...5).map { "v\($0)" })
    }

    @Test func aWatchFromACompactedRevisionFinishesWithCompacted() async throws {
        let cluster = try EtcdCluster(size: 1)
        let client = EtcdClient(EtcdSettings(endpoints: cluster.endpoints))
        let old = try await client.put("fleet/plan", value: bytes("v1"))
        let compactedTo = try await client.put("fleet/plan", value: bytes("v2"))
        let compaction = try cluster.members[0].client.json("POST", "/v3/kv/compaction", #"{"revision":"\#(compactedTo)","physical":true}"#)
        #expect(compaction.status == 200)
        var updates = client.watch("fleet/plan", from: old).makeAsyncIterator()
        #expect(await updates.next() == .compacted(compactedTo))
        #expect(await updates.next() == nil)
        // From the compact revision on, the watch works.
        var fresh = client.watch("fleet/plan", from: compactedTo).makeAsyncIterator()
        #expect(try await collect(1, from: &fresh) { _ in }.map(\.kv.string) == ["v2"])
    }

    @Test func cancellingTheWatchingTaskClosesTheWatch() async throws {
        let cluster = try EtcdCluster(size: 1)
        let client = EtcdClient(EtcdSettings(endpoints: cluster.endpoints))
        let start = try await client.put("fleet/plan", value: bytes("v1"))
        let (seen, seenContinuation) = AsyncStream.makeStream(of: Void.self)
        let watching = Task {
            var count = 0
            for await update in client.watch("fleet/plan", from: start) {
                if case .events = update { seenContinuation.yield() }
                count += 1
            }
            return count
        }
        for await _ in seen { break }
        #expect(try watchers(cluster) == 1)
        watching.cancel()
        #expect(await watching.value == 1)
        try await eventually { try watchers(cluster) == 0 }
    }

    @Test func aDeadFirstEndpointIsSkippedAndTheOneThatAnsweredIsRemembered() async throws {
        let cluster = try EtcdCluster(size: 1)
        let dead = "http://127.0.0.1:\(try freePort())"
        let client = EtcdClient(EtcdSettings(endpoints: [dead] + cluster.endpoints))
        _ = try await client.put("fleet/a", value: bytes("1"))
        #expect(client.requests == 2)
        #expect(try await client.range("fleet/a").kvs.map(\.string) == ["1"])
        #expect(client.requests == 3)

        let nowhere = EtcdClient(EtcdSettings(endpoints: [dead, "http://127.0.0.1:\(try freePort())"]))
        let error = await #expect(throws: EtcdError.self) { try await nowhere.range("fleet/a") }
        guard case .unreachable(let text) = error else { Issue.record("\(String(describing: error))"); return }
        #expect(text.contains(dead))
    }

    @Test func withQuorumLostCallsFailInBoundedTimeAndDoNotHang() async throws {
        let cluster = try EtcdCluster(size: 3)
        let client = EtcdClient(EtcdSettings(endpoints: cluster.endpoints, requestTimeout: .seconds(3)))
        let start = try await client.put("fleet/a", value: bytes("1"))
        var updates = client.watch("fleet/a", from: start).makeAsyncIterator()
        #expect(try await collect(1, from: &updates) { _ in }.map(\.kv.string) == ["1"])
        cluster.kill9(1)
        cluster.kill9(2)
        // The watch asked for a leader: its member ends it when it has none, and says why.
        #expect(await updates.next() == .disconnected(.failed(code: 14, message: "etcdserver: no leader")))
        // The suite's time limit is the bound: each call ends in its request timeout at most.
        for _ in 0..<2 {
            await #expect(throws: EtcdError.self) { try await client.put("fleet/a", value: bytes("2")) }
            await #expect(throws: EtcdError.self) { try await client.range("fleet/a") }
        }
        // Once the member has noticed (election timeout), it says so at once.
        try await eventually {
            do {
                _ = try await client.range("fleet/a")
                return false
            } catch {
                return error as? EtcdError == .failed(code: 14, message: "etcdserver: no leader")
            }
        }
    }

    @Test func authWithTheRightPasswordWorksAndAWrongOneFailsClearly() async throws {
        let cluster = try EtcdCluster(size: 1)
        let member = cluster.members[0].client
        let password = "s3cret-pw-7f2a", wrong = "wrong-pw-91bc"
        for (path, body) in [("/v3/auth/user/add", #"{"name":"root","password":"\#(password)"}"#),
                             ("/v3/auth/user/grant", #"{"user":"root","role":"root"}"#), ("/v3/auth/enable", "{}")] {
            #expect(try member.json("POST", path, body).status == 200)
        }
        let client = EtcdClient(EtcdSettings(endpoints: cluster.endpoints, username: "root", password: password))
        _ = try await client.put("fleet/a", value: bytes("1"))
        #expect(try await client.range("fleet/a").kvs.map(\.string) == ["1"])

        let intruder = EtcdClient(EtcdSettings(endpoints: cluster.endpoints, username: "root", password: wrong))
        let error = try #require(await #expect(throws: EtcdError.self) { try await intruder.range("fleet/a") })
        #expect(error == .failed(code: 3, message: "authenticating as root: etcdserver: authentication failed, invalid user ID or password"))
        #expect(!"\(error)".contains(wrong) && !"\(error)".contains(password))
        let anonymous = EtcdClient(EtcdSettings(endpoints: cluster.endpoints))
        await #expect(throws: EtcdError.failed(code: 3, message: "etcdserver: user name is empty")) { try await anonymous.range("fleet/a") }

        // Turning auth off and on again drops every token: the client authenticates again, once.
        let token = try #require(try member.json("POST", "/v3/auth/authenticate", #"{"name":"root","password":"\#(password)"}"#).json()["token"] as? String)
        let disabled = try member.request("POST", "/v3/auth/disable", headers: ["Authorization": token, "Content-Type": "application/json"], body: bytes("{}"))
        #expect(disabled.status == 200)
        #expect(try member.json("POST", "/v3/auth/enable", "{}").status == 200)
        let before = client.requests
        #expect(try await client.range("fleet/a").kvs.map(\.string) == ["1"])
        #expect(client.requests - before == 3, "refused, authenticate, again")
    }

    @Test(.enabled(if: which("openssl") != nil, "needs openssl"))
    func aJWTTokenMadeStaleByAChangeOfUsersIsReplaced() async throws {
        let member = try LoneMember(jwt: true)
        let password = "s3cret-pw-7f2a"
        let client = EtcdClient(EtcdSettings(endpoints: [member.url], username: "root", password: password))
        try await member.waitUntilReady(EtcdClient(EtcdSettings(endpoints: [member.url])))
        let admin = try #require(Endpoint(address: String(member.url.dropFirst("http://".count))))
        for (path, body) in [("/v3/auth/user/add", #"{"name":"root","password":"\#(password)"}"#),
                             ("/v3/auth/user/grant", #"{"user":"root","role":"root"}"#), ("/v3/auth/enable", "{}")] {
            #expect(try admin.json("POST", path, body).status == 200)
        }
        _ = try await client.put("fleet/a", value: bytes("1"))

        // A JWT carries the auth store's revision it was made at: once users or roles
        // change, etcd refuses it ("revision of auth store is old") until the client
        // authenticates again.
        func addUser(_ name: String) throws {
            let token = try #require(try admin.json("POST", "/v3/auth/authenticate", #"{"name":"root","password":"\#(password)"}"#).json()["token"] as? String)
            let added = try admin.request("POST", "/v3/auth/user/add", headers: ["Authorization": token, "Content-Type": "application/json"],
                                          body: bytes(#"{"name":"\#(name)","password":"\#(name)"}"#))
            #expect(added.status == 200)
        }
        try addUser("other")
        let before = client.requests
        let start = try await client.put("fleet/a", value: bytes("2"))
        #expect(client.requests - before == 3, "refused, authenticate, again")
        #expect(try await client.range("fleet/a").kvs.map(\.string) == ["2"])

        // A watch refused so reconnects with a new token.
        try addUser("third")
        var updates = client.watch("fleet/a", from: start).makeAsyncIterator()
        var others: [EtcdWatchUpdate] = []
        #expect(try await collect(1, from: &updates) { others.append($0) }.map(\.kv.string) == ["2"])
        #expect(others == [.disconnected(.failed(code: 3, message: "etcdserver: revision of auth store is old")), .events([], revision: start - 1)])
    }

    // MARK: - Helpers

    /// The next `count` events of a watch; `other` hears of the updates on the way that
    /// bring none (`.disconnected`, empty `.events`).
    func collect(_ count: Int, from updates: inout AsyncStream<EtcdWatchUpdate>.Iterator,
                 other: (EtcdWatchUpdate) -> Void) async throws -> [EtcdEvent] {
        var events: [EtcdEvent] = []
        while events.count < count {
            let update = await updates.next()
            switch update {
            case .events(let batch, let revision)?:
                if batch.isEmpty { other(.events([], revision: revision)) }
                #expect(batch.isEmpty || batch.last?.kv.modRevision == revision)
                events += batch
            case .disconnected?: other(update!)
            case .compacted(let revision)?: throw TestFailure("the watch was compacted at \(revision)")
            case nil: throw TestFailure("the watch ended after \(events.count) events")
            }
        }
        #expect(events.count == count, "no more events than written")
        return events
    }

    /// Polls `condition` every 50 ms until it holds.
    func eventually(_ condition: () async throws -> Bool) async throws {
        while try await !condition() { try await Task.sleep(for: .milliseconds(50)) }
    }

    /// How many watchers a member has, from its metrics.
    func watchers(_ cluster: EtcdCluster, member: Int = 0) throws -> Int {
        let metrics = try cluster.members[member].client.get("/metrics").text
        let line = metrics.split(separator: "\n").first { $0.hasPrefix("etcd_debugging_mvcc_watcher_total ") }
        guard let line, let value = Double(line.split(separator: " ")[1]) else { throw TestFailure("no watcher gauge in the metrics") }
        return Int(value)
    }
}
