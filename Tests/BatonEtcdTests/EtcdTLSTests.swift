import BatonEtcd
import BatonTestSupport
import Foundation
import Glibc
import Testing

/// EtcdClient over https to a member that asks for client certificates
/// (`--client-cert-auth`): a CA, a server and a client certificate made with openssl.
@Suite("EtcdClient over TLS", .serialized, .timeLimit(.minutes(1)),
       .enabled(if: EtcdCluster.isAvailable && which("openssl") != nil, "needs etcd and openssl"))
struct EtcdTLSTests {
    @Test func withTheCAAndAClientCertificateItWorksAndWithoutEitherItFailsClearly() async throws {
        let member = try LoneMember(tls: true)
        let settings = EtcdSettings(endpoints: [member.url], caFile: member.directory.file("ca.crt"),
                                    certFile: member.directory.file("client.crt"), keyFile: member.directory.file("client.key"))
        let client = EtcdClient(settings)
        try await member.waitUntilReady(client)
        let revision = try await client.put("fleet/tls", value: Array("yes".utf8))
        #expect(try await client.range("fleet/tls").kvs.map(\.string) == ["yes"])
        var updates = client.watch("fleet/tls", from: revision).makeAsyncIterator()
        guard case .events(let events, _)? = await updates.next() else { Issue.record("no events over TLS"); return }
        #expect(events.map(\.kv.string) == ["yes"])

        var noCertificate = settings
        noCertificate.certFile = nil
        noCertificate.keyFile = nil
        var noCA = settings
        noCA.caFile = nil
        for settings in [noCertificate, noCA] {
            let error = await #expect(throws: EtcdError.self) { try await EtcdClient(settings).range("fleet/tls") }
            guard case .unreachable(let text)? = error else { Issue.record("\(String(describing: error))"); continue }
            #expect(text.hasPrefix(member.url + ": "), "\(text)")
        }
    }
}
