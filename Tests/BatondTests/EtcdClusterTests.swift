import BatonTestSupport
import Foundation
import Testing

/// The fleet's tests run against a real 3-member etcd cluster on loopback. These check
/// the cluster the tests start, through etcd's v3 JSON gateway, and the facts the fleet
/// relies on: a write through one member is read through another, create-if-absent
/// (a txn comparing the key's create revision with 0) succeeds once, and the cluster
/// takes writes again after its leader is killed.
@Suite("etcd cluster for the fleet's tests", .serialized, .enabled(if: EtcdCluster.isAvailable, "needs etcd (apt-get install etcd-server; make test installs it)"))
struct EtcdClusterTests {
    func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

    @Test func aWriteThroughOneMemberIsReadThroughAnotherAndCreateIfAbsentSucceedsOnce() throws {
        let cluster = try EtcdCluster()
        let key = base64("baton/test/slot"), value = base64("host-1")
        #expect(try cluster.members[0].client.json("POST", "/v3/kv/put", #"{"key":"\#(key)","value":"\#(value)"}"#).status == 200)
        let range = try cluster.members[2].client.json("POST", "/v3/kv/range", #"{"key":"\#(key)"}"#).json()
        let kvs = range["kvs"] as? [[String: Any]]
        #expect(kvs?.first?["value"] as? String == value, "\(range)")

        let other = base64("baton/test/claim")
        let claim = #"{"compare":[{"key":"\#(other)","target":"CREATE","create_revision":"0"}],"success":[{"request_put":{"key":"\#(other)","value":"\#(value)"}}]}"#
        let first = try cluster.members[1].client.json("POST", "/v3/kv/txn", claim).json()
        let second = try cluster.members[2].client.json("POST", "/v3/kv/txn", claim).json()
        #expect(first["succeeded"] as? Bool == true, "\(first)")
        #expect(second["succeeded"] == nil, "absent when false: \(second)")
    }

    @Test func afterItsLeaderIsKilledTheClusterTakesWritesAgain() throws {
        let cluster = try EtcdCluster()
        let leader = try #require(cluster.leader())
        cluster.kill9(leader)
        try cluster.waitUntilWritable(timeout: 30)
        let next = try #require(cluster.leader())
        #expect(next != leader)
    }
}
