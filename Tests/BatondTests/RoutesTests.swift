import BatonTestSupport
import Foundation
import Testing

/// The real batond binary on a temporary state directory: every route answers per the spec.
@Suite("batond routes", .serialized)
struct RoutesTests {
    let daemon: BatondProcess

    init() throws {
        daemon = try BatondProcess(configText: """
            [agents.demo]
            command = ["{release}/bin/demo", "--flag"]
            mode = "sequential"
            ready_timeout = "5s"
            """)
    }

    @Test func healthzAnswersWithoutAuth() throws {
        let response = try daemon.endpoint.get("/healthz")
        #expect(response.status == 200)
        #expect(response.header("Content-Type") == "application/json")
        #expect(try response.json()["status"] as? String == "ok")
    }

    @Test func readyzReportsTheLedger() throws {
        let response = try daemon.endpoint.get("/readyz")
        #expect(response.status == 200)
        let body = try response.json()
        #expect(body["status"] as? String == "ready")
        #expect((body["checks"] as? [String: Any])?["ledger"] as? String == "ok")
    }

    @Test func metricsUseThePrometheusTextFormat() throws {
        _ = try daemon.endpoint.get("/healthz")
        let response = try daemon.endpoint.get("/metrics")
        #expect(response.status == 200)
        #expect(response.header("Content-Type")?.hasPrefix("text/plain; version=0.0.4") == true)
        let text = response.text
        for family in ["baton_build_info{", "baton_uptime_seconds ", "baton_http_requests_total{route=\"/healthz\",method=\"GET\",code=\"200\"}",
                       "baton_ledger_appends_total ", "baton_ledger_fsync_seconds_bucket{le=\"+Inf\"}", "baton_http_parked_requests "] {
            #expect(text.contains(family), "missing \(family)")
        }
    }

    @Test func promtoolAcceptsTheMetrics() throws {
        guard let promtool = which("promtool") else {
            Issue.record("promtool is not installed; `make test` installs it (scripts/install-deps.sh)")
            return
        }
        _ = try daemon.endpoint.get("/v1/agents/nope", token: daemon.token)
        let metrics = try daemon.endpoint.get("/metrics").text
        let file = daemon.state.file("metrics.txt")
        try metrics.write(toFile: file, atomically: true, encoding: .utf8)
        let result = try run(["/bin/sh", "-c", "\(promtool) check metrics < \(file)"])
        #expect(result.status == 0, "promtool: \(result.output)")
    }

    @Test func statusDescribesTheDaemon() throws {
        let response = try daemon.endpoint.get("/v1/status", token: daemon.token)
        #expect(response.status == 200)
        let body = try response.json()
        #expect(body["version"] as? String == "0.1.0")
        #expect(body["pid"] as? Int == Int(daemon.process.processIdentifier))
        #expect(body["state_dir"] as? String == daemon.stateDir)
        #expect((body["started_at"] as? String)?.hasSuffix("Z") == true)
        let ledger = try #require(body["ledger"] as? [String: Any])
        #expect((ledger["last_seq"] as? Int ?? 0) >= 1)
        #expect(ledger["writable"] as? Bool == true)
        let listeners = try #require(body["listeners"] as? [String])
        #expect(listeners.contains("unix:\(daemon.socketPath)"))
        let agents = try #require(body["agents"] as? [[String: Any]])
        #expect(agents.map { $0["name"] as? String } == ["demo"])
    }

    @Test func agentsListAndOne() throws {
        let list = try daemon.endpoint.get("/v1/agents", token: daemon.token)
        #expect(list.status == 200)
        let agents = try #require(try list.json()["agents"] as? [[String: Any]])
        #expect(agents.count == 1)

        let one = try daemon.endpoint.get("/v1/agents/demo", token: daemon.token)
        #expect(one.status == 200)
        let agent = try one.json()
        #expect(agent["name"] as? String == "demo")
        #expect(agent["state"] as? String == "stopped")
        for key in ["desired", "running", "last_error"] {
            #expect(agent.keys.contains(key) && agent[key] is NSNull, "\(key) must be present and null")
        }
        let config = try #require(agent["config"] as? [String: Any])
        #expect(config["mode"] as? String == "sequential")
        #expect(config["command"] as? [String] == ["{release}/bin/demo", "--flag"])
        #expect(config["ready_timeout_ms"] as? Int == 5000)
    }

    @Test func unknownAgentIs404AndBadNameIs400() throws {
        let missing = try daemon.endpoint.get("/v1/agents/ghost", token: daemon.token)
        #expect(missing.status == 404)
        #expect(missing.errorCode == "agent_not_found")
        let bad = try daemon.endpoint.get("/v1/agents/Bad%20Name", token: daemon.token)
        #expect(bad.status == 400)
        #expect(bad.errorCode == "invalid_name")
    }

    @Test func unknownRouteIs404WithTheErrorShape() throws {
        let response = try daemon.endpoint.get("/v1/nothing-here", token: daemon.token)
        #expect(response.status == 404)
        let error = try #require(try response.json()["error"] as? [String: Any])
        #expect(error["code"] as? String == "not_found")
        #expect((error["message"] as? String)?.isEmpty == false)
    }

    @Test func wrongMethodIs405WithAllow() throws {
        let response = try daemon.endpoint.request("DELETE", "/v1/status", token: daemon.token)
        #expect(response.status == 405)
        #expect(response.errorCode == "method_not_allowed")
        #expect(response.header("Allow") == "GET, HEAD")
    }

    @Test func headIsServedForGetRoutes() throws {
        let response = try RawConnection(daemon.endpoint).request("HEAD", "/healthz")
        #expect(response.status == 200)
        #expect(response.body.isEmpty)
    }

    @Test func eventsReturnTheDaemonStart() throws {
        let response = try daemon.endpoint.get("/v1/events?since=0", token: daemon.token)
        #expect(response.status == 200)
        let page = try response.json()
        let records = try #require(page["records"] as? [[String: Any]])
        let first = try #require(records.first)
        #expect(first["seq"] as? Int == 1)
        #expect(first["kind"] as? String == "daemon.started")
        #expect((first["crc"] as? String)?.count == 8)
        #expect(page["truncated"] as? Bool == false)
        #expect(page["last_seq"] as? Int == 1)
    }

    @Test(arguments: ["since=abc", "since=-1", "limit=0", "limit=1001", "wait=-2", "wait=soon"])
    func eventsRejectBadParameters(_ query: String) throws {
        let response = try daemon.endpoint.get("/v1/events?\(query)", token: daemon.token)
        #expect(response.status == 400)
        #expect(response.errorCode == "invalid_parameter")
    }

    @Test func eventsWaitEndsAtItsDeadlineWithAnEmptyPage() throws {
        let started = Date()
        let response = try daemon.endpoint.get("/v1/events?since=1&wait=0.5", token: daemon.token)
        #expect(response.status == 200)
        #expect(Date().timeIntervalSince(started) >= 0.45)
        #expect((try response.json()["records"] as? [Any])?.isEmpty == true)
    }

    @Test func aBodyPastTheLimitIs413BeforeItIsSent() throws {
        let connection = try RawConnection(daemon.endpoint)
        // Claim 2 MiB and send none of it: the answer must come from the head alone.
        let response = try connection.request("GET", "/v1/status", headers: ["Authorization": "Bearer \(daemon.token)",
                                                                              "Content-Length": "\(2 << 20)"],
                                              body: [], sendBody: false)
        #expect(response.status == 413)
        #expect(response.errorCode == "payload_too_large")
    }

    @Test func theUnixSocketAuthorisesTheCallersUid() throws {
        let response = try daemon.unix.get("/v1/status")
        #expect(response.status == 200)
        var info = stat()
        #expect(stat(daemon.socketPath, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o660)
    }
}
