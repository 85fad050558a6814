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
        let member = try TLSMember()
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

/// One etcd member serving https with client certificate auth, under a temporary directory.
final class TLSMember {
    let directory = TemporaryDirectory("etcd-tls")
    let url: String
    private let process = Process()

    init() throws {
        let script = """
            set -e
            cd "$1"
            key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }
            key ca
            openssl req -x509 -new -key ca.key -out ca.crt -days 1 -subj /CN=baton-test-ca
            for name in server client; do
                key $name
                openssl req -new -key $name.key -out $name.csr -subj /CN=$name
            done
            # The gateway dials its own member with the server certificate: clientAuth too.
            printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' > server.ext
            printf 'extendedKeyUsage=clientAuth\\n' > client.ext
            for name in server client; do
                openssl x509 -req -in $name.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile $name.ext -out $name.crt 2>/dev/null
            done
            """
        let openssl = Process()
        openssl.executableURL = URL(fileURLWithPath: "/bin/bash")
        openssl.arguments = ["-c", script, "make-certificates", directory.path]
        try openssl.run()
        openssl.waitUntilExit()
        guard openssl.terminationStatus == 0 else { throw TestFailure("openssl could not make the certificates") }

        let ports = try freePorts(2)
        url = "https://127.0.0.1:\(ports[0])"
        let peer = "http://127.0.0.1:\(ports[1])"
        process.executableURL = URL(fileURLWithPath: which("etcd")!)
        process.arguments = [
            "--name", "tls", "--data-dir", directory.file("data"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "tls=\(peer)",
            "--cert-file", directory.file("server.crt"), "--key-file", directory.file("server.key"),
            "--trusted-ca-file", directory.file("ca.crt"), "--client-cert-auth",
            "--log-outputs", directory.file("etcd.log"), "--logger", "zap",
        ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// Waits until `client` can write (the member has elected itself).
    func waitUntilReady(_ client: EtcdClient) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            do {
                _ = try await client.put("fleet/ready", value: [])
                return
            } catch {
                guard ContinuousClock.now < deadline, process.isRunning else {
                    let log = (try? String(contentsOfFile: directory.file("etcd.log"), encoding: .utf8))?.suffix(2000) ?? ""
                    throw TestFailure("the TLS member took no write: \(error)\n\(log)")
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }
}
