import BatonEtcd
import BatonTestSupport
import Foundation
import Glibc

/// One etcd member started by hand, under a temporary directory, with what EtcdCluster
/// does not do: https with client certificate auth (`tls`: a CA, a server and a client
/// certificate made with openssl), or JWT auth tokens signed with an RSA key (`jwt`).
final class LoneMember {
    let directory = TemporaryDirectory("etcd-lone")
    let url: String
    private let process = Process()

    init(tls: Bool = false, jwt: Bool = false) throws {
        let script = """
            set -e
            cd "$1"
            if [ "$2" = jwt ]; then
                openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out jwt.key 2>/dev/null
                openssl pkey -in jwt.key -pubout -out jwt.pub
            fi
            [ "$3" = tls ] || exit 0
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
        openssl.arguments = ["-c", script, "make-keys", directory.path, jwt ? "jwt" : "", tls ? "tls" : ""]
        try openssl.run()
        openssl.waitUntilExit()
        guard openssl.terminationStatus == 0 else { throw TestFailure("openssl could not make the keys") }

        let ports = try freePorts(2)
        url = "\(tls ? "https" : "http")://127.0.0.1:\(ports[0])"
        let peer = "http://127.0.0.1:\(ports[1])"
        process.executableURL = URL(fileURLWithPath: which("etcd")!)
        process.arguments = [
            "--name", "lone", "--data-dir", directory.file("data"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "lone=\(peer)",
            "--log-outputs", directory.file("etcd.log"), "--logger", "zap",
        ]
        if tls {
            process.arguments! += ["--cert-file", directory.file("server.crt"), "--key-file", directory.file("server.key"),
                                   "--trusted-ca-file", directory.file("ca.crt"), "--client-cert-auth"]
        }
        if jwt {
            process.arguments! += ["--auth-token", "jwt,pub-key=\(directory.file("jwt.pub")),priv-key=\(directory.file("jwt.key")),sign-method=RS256"]
        }
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
                    throw TestFailure("the member took no write: \(error)\n\(log)")
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }
}
