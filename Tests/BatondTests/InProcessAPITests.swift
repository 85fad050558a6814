import BatonAPI
import BatonConfig
import BatonCore
import BatonHTTP
import BatonLedger
import BatonSupervisor
import BatonTestSupport
import Foundation
import Logging
import Testing

/// The API's parts wired in this process over a real socket, where the test itself can
/// append ledger records (batond has no mutating route yet).
@Suite("API in process")
struct InProcessAPITests {
    let state = TemporaryDirectory("api")
    let ledger: Ledger
    let api: API
    let server: HTTPServer
    let listener: Listener
    let endpoint: Endpoint
    let token = "test-token-0123456789abcdef"

    init() throws {
        let logger = Logger(label: "test")
        ledger = try Ledger(stateDirectory: state.path, logger: logger)
        var config = BatondConfig()
        config.stateDir = state.path
        let supervisor = Supervisor(config: config, ledger: ledger, socketPath: state.file("none.sock"), url: nil, logger: logger)
        api = API(context: .init(config: config, startedAt: .now(), listeners: []), ledger: ledger, supervisor: supervisor,
                  rollouts: Rollouts(supervisor: supervisor, ledger: ledger, agents: [], logDirectory: state.path, logger: logger),
                  auth: OperatorAuth(token: token, operatorGID: nil, probesOpen: true),
                  daemon: FixedDaemon(binaries: DaemonBinaries(stateDirectory: state.path)), logger: logger)
        server = api.makeServer(configuration: .init())
        listener = try Listener.tcp(host: "127.0.0.1", port: 0)
        try server.serve(listener)
        guard case .tcp(let host, let port) = listener.address else { throw TestFailure("not tcp") }
        endpoint = .tcp(host: host, port: port)
    }

    func close() {
        server.shutdown(grace: .seconds(1))
        listener.close()
        ledger.close()
    }

    @Test func theRoutesAreTheSpecsPaths() throws {
        defer { close() }
        let routes = Set(api.router.routes.map { "\($0.method.rawValue) \($0.template)" })
        let spec = Set(try OpenAPISpec.load().operations.map { "\($0.method) \($0.path)" })
        #expect(routes == spec)
    }

    /// Every route has one of the five scopes, and the right one: the probes, the status
    /// page, the instance protocol and registration by name, every other route the operator's.
    @Test func everyRouteHasItsScope() throws {
        defer { close() }
        let probes: Set<String> = ["GET /healthz", "GET /readyz", "GET /metrics"]
        let pages: Set<String> = ["GET /", "GET /ui/login"]
        let registration: Set<String> = ["POST /v1/agents/{name}/instances"]
        for route in api.router.routes {
            let name = "\(route.method.rawValue) \(route.template)"
            let expected: RouteScope = probes.contains(name) ? .probe
                : pages.contains(name) ? .page
                : registration.contains(name) ? .registration
                : route.template.hasPrefix("/v1/instances/") ? .instance : .operator
            #expect(route.scope == expected, "\(name) is tagged \(route.scope), not \(expected)")
        }
    }

    /// A route tagged with a scope auth does not know is nobody's, not the operator's.
    @Test func aRouteWithAnUnknownScopeIsRefusedEvenToTheOperator() throws {
        defer { close() }
        let auth = OperatorAuth(token: token, operatorGID: nil, probesOpen: true)
        let typo = HTTPServer(configuration: .init(),
                              router: Router([Route(.GET, "/typo", scope: RouteScope("opertor")) { _ in .respond(.json(["ok": true])) }]),
                              admission: { auth.admit(&$0) }, logger: Logger(label: "test"))
        let listener = try Listener.tcp(host: "127.0.0.1", port: 0)
        try typo.serve(listener)
        defer { typo.shutdown(grace: .zero); listener.close() }
        guard case .tcp(let host, let port) = listener.address else { throw TestFailure("not tcp") }
        let answer = try Endpoint.tcp(host: host, port: port).get("/typo", token: token)
        #expect(answer.status == 500 && answer.text.contains("no known auth scope"), "\(answer.text)")
    }

    @Test func aParkedWaitIsAnsweredWhenARecordIsAppended() throws {
        defer { close() }
        let answer = inBackground { [endpoint, token, since = ledger.lastSeq] in
            try endpoint.get("/v1/events?since=\(since)&wait=30", token: token)
        }
        try waitUntil(timeout: 10) { server.parkedCount == 1 }
        let record = try appendNow(.agentDesired(.init(agent: "web", version: "2.0", mode: .parallel, by: "test")))
        let response = try answer.wait()
        #expect(response.status == 200)
        let records = try #require(try response.json()["records"] as? [[String: Any]])
        #expect(records.count == 1)
        #expect(records.first?["seq"] as? Int == Int(record.seq))
        #expect(records.first?["kind"] as? String == "agent.desired")
        #expect(server.parkedCount == 0)
    }

    @Test func eventsAnswerAtOnceWhenNewerRecordsExist() throws {
        defer { close() }
        try appendNow(.daemonStarted(.init(pid: 1, version: "t", config: nil, listeners: [])))
        try appendNow(.daemonStopped(.init(pid: 1, reason: "t")))
        let response = try endpoint.get("/v1/events?since=1&wait=30&limit=5", token: token)
        let records = try #require(try response.json()["records"] as? [[String: Any]])
        #expect(records.map { $0["seq"] as? Int } == [2])
    }

    @Test func shutdownAnswersParkedWaits() throws {
        let answer = inBackground { [endpoint, token] in try endpoint.get("/v1/events?since=5&wait=30", token: token) }
        try waitUntil(timeout: 10) { server.parkedCount == 1 }
        close()
        let response = try answer.wait()
        #expect(response.status == 200)
        #expect((try response.json()["records"] as? [Any])?.isEmpty == true)
    }
}

extension InProcessAPITests {
    /// Appends and waits until the record is durable.
    @discardableResult
    func appendNow(_ event: LedgerEvent) throws -> Record {
        let done = DispatchSemaphore(value: 0)
        let result = Locked<Result<[Record], LedgerError>?>(nil)
        ledger.append([event]) { outcome in
            result.set(outcome)
            done.signal()
        }
        done.wait()
        return try result.get()!.get()[0]
    }
}

/// batond itself as the daemon routes see it, in a test that runs no batond: the view
/// is fixed and no upgrade ever starts.
struct FixedDaemon: DaemonControl {
    let binaries: DaemonBinaries

    var view: DaemonView {
        DaemonView(version: "test", sha256: String(repeating: "0", count: 64), pid: getpid(), startedAt: .now(),
                   current: nil, lastUpgrade: nil)
    }

    func upgrade(to digest: String, force: Bool, by: String,
                 answer: @escaping @Sendable (Response) -> Void) throws(HTTPError) {
        throw HTTPError(status: 409, code: "upgrade_in_progress", message: "no upgrade in a test without batond")
    }
}
