import BatonTestSupport
import Foundation
import Testing

/// Every non-probe route refuses a missing or wrong token, over TCP, where only bearer
/// tokens count. The table is the spec's own list of operator routes.
@Suite("batond auth", .serialized)
struct AuthTests {
    static let operatorRoutes = ["/v1/status", "/v1/agents", "/v1/agents/demo", "/v1/events?since=0"]
    static let probeRoutes = ["/healthz", "/readyz", "/metrics"]

    let daemon: BatondProcess

    init() throws {
        daemon = try BatondProcess(configText: "[agents.demo]\ncommand = [\"/bin/true\"]\n")
    }

    @Test func theTableCoversEverySpecRoute() throws {
        let spec = try OpenAPISpec.load()
        let covered = Set((Self.operatorRoutes + Self.probeRoutes).map { path in
            String(path.split(separator: "?")[0]).replacingOccurrences(of: "/demo", with: "/{name}")
        })
        #expect(Set(spec.operations.map(\.path)) == covered)
    }

    @Test(arguments: operatorRoutes)
    func missingTokenIs401(_ path: String) throws {
        let response = try daemon.endpoint.get(path)
        #expect(response.status == 401)
        #expect(response.errorCode == "unauthorized")
        #expect(response.header("WWW-Authenticate")?.hasPrefix("Bearer") == true)
    }

    @Test(arguments: operatorRoutes)
    func wrongTokenIsRefused(_ path: String) throws {
        let wrong = String(daemon.token.reversed())
        let response = try daemon.endpoint.get(path, token: wrong)
        #expect([401, 403].contains(response.status))
        #expect(response.errorCode == "unauthorized")
    }

    @Test(arguments: operatorRoutes)
    func malformedAuthorizationIsRefused(_ path: String) throws {
        let response = try daemon.endpoint.request("GET", path, headers: ["Authorization": "Basic \(daemon.token)"])
        #expect(response.status == 401)
    }

    @Test(arguments: operatorRoutes)
    func theRightTokenIsAccepted(_ path: String) throws {
        #expect(try daemon.endpoint.get(path, token: daemon.token).status == 200)
    }

    @Test(arguments: probeRoutes)
    func probesNeedNothing(_ path: String) throws {
        #expect(try daemon.endpoint.get(path).status == 200)
    }

    @Test func theTokenFileIsPrivateAndTheTokenIsNeverLogged() throws {
        var info = stat()
        #expect(stat(daemon.state.file("operator.token"), &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
        #expect(daemon.token.count == 64)
        _ = try daemon.endpoint.get("/v1/status", token: daemon.token)
        _ = try daemon.endpoint.get("/v1/status", token: "not-the-token")
        daemon.stop()
        #expect(!daemon.log.contains(daemon.token))
        #expect(!daemon.log.contains("not-the-token"))
    }
}

@Suite("batond closed probes")
struct ClosedProbesTests {
    @Test func probesCanBeClosedByConfiguration() throws {
        let daemon = try BatondProcess(configText: "[http]\nprobes_open = false\n")
        for path in AuthTests.probeRoutes {
            #expect(try daemon.endpoint.get(path).status == 401, "\(path)")
            #expect(try daemon.endpoint.get(path, token: daemon.token).status == 200, "\(path)")
        }
    }
}

/// The operator group on the Unix socket: its members (primary or supplementary)
/// are operators; everyone else cannot even connect (the socket is 0660, that group).
@Suite("batond operator group")
struct OperatorGroupTests {
    static let group: gid_t = 4242

    func curl(as groups: [String], _ socket: String) throws -> (status: Int32, output: String) {
        guard let setpriv = which("setpriv"), let curl = which("curl") else { throw TestFailure("setpriv or curl missing") }
        return try run([setpriv, "--reuid", "65534"] + groups + ["--", curl, "-s", "-o", "/dev/null", "-w", "%{http_code}",
                        "--unix-socket", socket, "http://localhost/v1/status"])
    }

    @Test func membersAreOperatorsAndOthersCannotConnect() throws {
        guard getuid() == 0, which("setpriv") != nil, which("curl") != nil else {
            Issue.record("needs root, setpriv and curl to act as another user")
            return
        }
        let state = TemporaryDirectory("batond")
        chmod(state.path, 0o711)
        let daemon = try BatondProcess(state: state, configText: "[daemon]\noperator_group = \"\(Self.group)\"\n")
        var info = stat()
        #expect(stat(daemon.socketPath, &info) == 0)
        #expect(info.st_gid == Self.group)

        let supplementary = try curl(as: ["--regid", "65534", "--groups", "\(Self.group)"], daemon.socketPath)
        #expect(supplementary.output == "200", "\(supplementary)")
        let primary = try curl(as: ["--regid", "\(Self.group)", "--clear-groups"], daemon.socketPath)
        #expect(primary.output == "200", "\(primary)")
        let stranger = try curl(as: ["--regid", "65534", "--clear-groups"], daemon.socketPath)
        #expect(stranger.status == 7, "connecting must be refused: \(stranger)")
    }
}
