import BatonTestSupport
import Foundation
import Testing

/// Every non-probe route refuses a missing or malformed credential, over TCP, where only
/// bearer tokens count. The table is the spec's own list of routes; AuthMatrixTests
/// crosses every route with every kind of caller.
@Suite("batond auth", .serialized)
struct AuthTests {
    struct Call: Sendable, CustomTestStringConvertible {
        let method: String
        let path: String
        let body: String?
        var testDescription: String { "\(method) \(path)" }

        /// The spec's path template this call exercises.
        var template: String {
            String(path.split(separator: "?")[0])
                .replacingOccurrences(of: "/agents/demo", with: "/agents/{name}")
                .replacingOccurrences(of: "/instances/demo.1", with: "/instances/{id}")
                .replacingOccurrences(of: "/handoffs/demo-1", with: "/handoffs/{id}")
                .replacingOccurrences(of: "/releases/demo/1.0", with: "/releases/{agent}/{version}")
                .replacingOccurrences(of: "/releases/demo", with: "/releases/{agent}")
        }
    }

    static let operatorCalls = [
        Call(method: "GET", path: "/v1/status", body: nil),
        Call(method: "GET", path: "/v1/agents", body: nil),
        Call(method: "GET", path: "/v1/agents/demo", body: nil),
        Call(method: "GET", path: "/v1/events?since=0", body: nil),
        Call(method: "PUT", path: "/v1/agents/demo/desired", body: #"{"version":"1.0"}"#),
        Call(method: "POST", path: "/v1/agents/demo/rollback", body: "{}"),
        Call(method: "GET", path: "/v1/handoffs/demo-1", body: nil),
        Call(method: "GET", path: "/v1/handoffs?agent=demo", body: nil),
        Call(method: "POST", path: "/v1/agents/demo/instances", body: #"{"pid":999999999,"version":"1.0"}"#),
        Call(method: "GET", path: "/v1/daemon", body: nil),
        Call(method: "PUT", path: "/v1/daemon/binary", body: "not a binary"),
        Call(method: "POST", path: "/v1/daemon/upgrade", body: #"{"digest":"\#(String(repeating: "0", count: 64))"}"#),
        Call(method: "GET", path: "/v1/version", body: nil),
        Call(method: "PUT", path: "/v1/version", body: #"{"version":"1.0"}"#),
        Call(method: "GET", path: "/v1/releases/demo", body: nil),
        Call(method: "GET", path: "/v1/releases/demo/1.0", body: nil),
        Call(method: "PUT", path: "/v1/releases/demo/1.0?sha256=\(String(repeating: "0", count: 64))", body: "#!/bin/sh\n"),
        Call(method: "POST", path: "/v1/releases/demo/1.0",
             body: #"{"url":"http://127.0.0.1:9/x","sha256":"\#(String(repeating: "0", count: 64))"}"#),
        Call(method: "DELETE", path: "/v1/releases/demo/1.0", body: nil),
        Call(method: "POST", path: "/v1/ui/links", body: nil),
        Call(method: "GET", path: "/v1/fleet", body: nil),
        Call(method: "PUT", path: "/v1/fleet", body: #"{"version":"2.0"}"#),
        Call(method: "POST", path: "/v1/fleet/rollback", body: "{}"),
        Call(method: "POST", path: "/v1/fleet/exclude", body: #"{"hosts":["h1"]}"#),
    ]
    static let instanceCalls = [
        Call(method: "POST", path: "/v1/instances/demo.1/ready", body: "{}"),
        Call(method: "POST", path: "/v1/instances/demo.1/failed", body: #"{"reason":"x"}"#),
        Call(method: "POST", path: "/v1/instances/demo.1/stopped", body: "{}"),
        Call(method: "GET", path: "/v1/instances/demo.1/signal", body: nil),
    ]
    static let guarded = operatorCalls + instanceCalls
    static let probeRoutes = ["/healthz", "/readyz", "/metrics"]
    /// The status page and its login: answered to anyone, with a page saying how to log in.
    static let pageCalls = [
        Call(method: "GET", path: "/", body: nil),
        Call(method: "GET", path: "/ui/login?code=\(String(repeating: "0", count: 64))", body: nil),
    ]

    let daemon: BatondProcess

    init() throws {
        daemon = try BatondProcess(configText: "[agents.demo]\ncommand = [\"/bin/true\"]\n")
    }

    func send(_ call: Call, token: String?, authorization: String? = nil) throws -> HTTPResponse {
        var headers: [String: String] = [:]
        if call.body != nil { headers["Content-Type"] = "application/json" }
        if let authorization { headers["Authorization"] = authorization }
        return try daemon.endpoint.request(call.method, call.path, token: token, headers: headers, body: call.body.map { Array($0.utf8) })
    }

    @Test func theTableCoversEverySpecRoute() throws {
        let spec = try OpenAPISpec.load()
        let covered = Set((Self.guarded + Self.pageCalls).map { "\($0.method) \($0.template)" } + Self.probeRoutes.map { "GET \($0)" })
        #expect(Set(spec.operations.map { "\($0.method) \($0.path)" }) == covered)
    }

    @Test(arguments: guarded)
    func missingTokenIs401(_ call: Call) throws {
        let response = try send(call, token: nil)
        #expect(response.status == 401)
        #expect(response.errorCode == "unauthorized")
        #expect(response.header("WWW-Authenticate")?.hasPrefix("Bearer") == true)
    }

    @Test(arguments: guarded)
    func malformedAuthorizationIsRefused(_ call: Call) throws {
        #expect(try send(call, token: nil, authorization: "Basic \(daemon.token)").status == 401)
    }

    @Test(arguments: operatorCalls)
    func theOperatorTokenIsAccepted(_ call: Call) throws {
        let status = try send(call, token: daemon.token).status
        #expect(![401, 403].contains(status), "\(call): \(status)")
    }

    @Test(arguments: instanceCalls)
    func theOperatorIsNotAnInstance(_ call: Call) throws {
        let response = try send(call, token: daemon.token)
        #expect(response.status == 403)
        #expect(response.errorCode == "forbidden")
    }

    @Test(arguments: pageCalls)
    func pagesAnswerWithoutACredentialWithHowToLogIn(_ call: Call) throws {
        for token in [nil, String(daemon.token.reversed())] {
            let response = try send(call, token: token)
            #expect(response.status == 401)
            #expect(response.header("Content-Type")?.hasPrefix("text/html") == true)
            #expect(response.text.contains("baton ui"))
        }
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

    @Test(.enabled(if: AuthMatrixTests.canActAsAnotherUser, "needs root, setpriv and curl to act as another user"))
    func membersAreOperatorsAndOthersCannotConnect() throws {
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
