import BatonTestSupport
import Foundation
import Testing

/// `/metrics` of a real batond moving with real handoffs, and the example alert rules
/// (config/alerts.yml) checked by promtool.
@Suite("metrics")
struct MetricsTests {
    static let promtool = which("promtool")
    static let noPromtool: Comment = "promtool is not installed; `make test` installs it (scripts/install-deps.sh test)"
    let handoffs = HandoffIntegrationTests()

    /// The value of the sample `series` (name and labels exactly as exposed), if present.
    func sample(_ text: String, _ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    @Test func handoffsMoveTheirFamiliesAndLedgerDerivedOnesSurviveARestart() throws {
        let started = Date().timeIntervalSince1970
        let (daemon, agents) = try handoffs.start(["1.0": [], "2.0": [], "3.0": ["--fail-check"]])
        var metrics = try daemon.endpoint.get("/metrics").text
        // Before any handoff: every series an alert reads is there, at 0.
        #expect(sample(metrics, #"baton_handoffs_total{agent="web",mode="parallel",outcome="failed"}"#) == 0, "\(metrics)")
        #expect(sample(metrics, #"baton_agent_restarts_total{agent="web"}"#) == 0)
        #expect(sample(metrics, #"baton_agent_rewinds_total{agent="web"}"#) == 0)
        #expect(sample(metrics, #"baton_handoff_duration_seconds_count{mode="parallel"}"#) == 0)
        #expect(sample(metrics, #"baton_handoff_last_success_timestamp_seconds{agent="web"}"#) == nil, "no handoff yet")

        #expect(try daemon.handOff(to: "2.0")["outcome"] as? String == "committed")
        #expect(try daemon.handOff(to: "3.0")["outcome"] as? String == "failed")
        _ = try daemon.endpoint.get("/v1/agents/web", token: daemon.token)
        metrics = try daemon.endpoint.get("/metrics").text

        #expect(sample(metrics, #"baton_handoffs_total{agent="web",mode="parallel",outcome="committed"}"#) == 1, "\(metrics)")
        #expect(sample(metrics, #"baton_handoffs_total{agent="web",mode="parallel",outcome="failed"}"#) == 1)
        #expect(sample(metrics, #"baton_handoffs_total{agent="web",mode="sequential",outcome="committed"}"#) == 0)
        #expect(sample(metrics, #"baton_handoff_duration_seconds_count{mode="parallel"}"#) == 2)
        #expect(sample(metrics, #"baton_handoff_duration_seconds_bucket{mode="parallel",le="+Inf"}"#) == 2)
        #expect((sample(metrics, #"baton_handoff_duration_seconds_sum{mode="parallel"}"#) ?? 0) > 0)
        #expect(sample(metrics, #"baton_handoff_gap_seconds_count{mode="parallel"}"#) == 1, "only the committed one has a gap")
        #expect(sample(metrics, #"baton_handoff_gap_seconds_count{mode="sequential"}"#) == 0)
        let lastSuccess = try #require(sample(metrics, #"baton_handoff_last_success_timestamp_seconds{agent="web"}"#))
        #expect(lastSuccess >= started.rounded(.down) && lastSuccess <= Date().timeIntervalSince1970, "\(lastSuccess)")
        #expect(sample(metrics, #"baton_handoff_last_outcome{agent="web",outcome="failed"}"#) == 1)
        #expect(sample(metrics, #"baton_handoff_last_outcome{agent="web",outcome="committed"}"#) == 0)
        // Every state has its sample; web runs (degraded, but running).
        for state in ["stopped", "starting", "running", "handing_off", "backoff", "rewound", "failed"] {
            #expect(sample(metrics, #"baton_agents{state="\#(state)"}"#) == (state == "running" ? 1 : 0), "\(state)")
        }
        // Requests are counted by route pattern, never by raw path, with their latency.
        let desired = #"route="/v1/agents/{name}/desired",method="PUT",code="202""#
        #expect(sample(metrics, "baton_http_requests_total{\(desired)}") == 2)
        #expect(sample(metrics, "baton_http_request_duration_seconds_count{\(desired)}") == 2)
        #expect(sample(metrics, "baton_http_request_duration_seconds_bucket{\(desired),le=\"60\"}") == 2)
        #expect(sample(metrics, #"baton_http_requests_total{route="/v1/agents/{name}",method="GET",code="200"}"#).map { $0 >= 1 } == true)
        #expect(!metrics.contains(#"route="/v1/agents/web"#), "a raw path became a label value")
        // Every append waited for an fsync; every batch had one.
        #expect((sample(metrics, "baton_ledger_append_seconds_count") ?? 0) >= 6, "began, steps, ended of two handoffs")
        #expect(sample(metrics, "baton_ledger_fsync_seconds_count") == sample(metrics, "baton_ledger_fsync_batches_total"))
        #expect(sample(metrics, "baton_http_event_streams") == 0)
        if let promtool = Self.promtool {
            let file = daemon.state.file("metrics-after-handoffs.txt")
            try metrics.write(toFile: file, atomically: true, encoding: .utf8)
            let check = try run(["/bin/sh", "-c", "\(promtool) check metrics < \(file)"])
            #expect(check.status == 0, "promtool: \(check.output)")
        }

        // A new batond on the same state: this run's counters start again at 0, what
        // derives from the ledger is as it was.
        #expect(daemon.stop() == 0)
        let again = try BatondProcess(state: daemon.state, configText: agents.config())
        defer { _ = again.stop() }
        try handoffs.waitForAgent(again, state: "running", version: "2.0")
        metrics = try again.endpoint.get("/metrics").text
        #expect(sample(metrics, #"baton_handoffs_total{agent="web",mode="parallel",outcome="committed"}"#) == 0, "\(metrics)")
        #expect(sample(metrics, #"baton_handoff_last_success_timestamp_seconds{agent="web"}"#) == lastSuccess)
        #expect(sample(metrics, #"baton_handoff_last_outcome{agent="web",outcome="failed"}"#) == 1)
        #expect(sample(metrics, #"baton_agent_degraded{agent="web"}"#) == 1)
        #expect(sample(metrics, #"baton_agent_running_info{agent="web",version="2.0"}"#) == 1)
    }

    /// docs/operations.md lists every family batond serves, with its type, and no other.
    /// In fleet mode (on a real etcd, with a plan) when etcd is installed, so that the
    /// fleet's families are served too; without etcd they are left out of the comparison.
    @Test func theOperationsGuideListsEveryFamilyWithItsType() throws {
        let cluster = EtcdCluster.isAvailable ? try EtcdCluster(size: 1) : nil
        let fleet = cluster.map { "[fleet]\nendpoints = [\"\($0.endpoints[0])\"]\nhost = \"metrics\"\n\n" } ?? ""
        let daemon = try BatondProcess(configText: fleet + """
            [agents.demo]
            command = ["{release}/bin/demo"]
            """)
        defer { _ = daemon.stop() }
        if cluster != nil {
            let plan = #"{"version": "2.0", "releases": {"demo": {"url": "http://127.0.0.1:9/d.tgz", "sha256": "\#(String(repeating: "0", count: 64))"}}}"#
            #expect(try daemon.endpoint.json("PUT", "/v1/fleet", token: daemon.token, plan).status == 200)
            try waitUntil(timeout: 30) { (try? daemon.endpoint.get("/metrics").text.contains("baton_fleet_plan_info{")) == true }
        }
        let metrics = try daemon.endpoint.get("/metrics").text
        var served: [String: String] = [:]
        for line in metrics.split(separator: "\n") where line.hasPrefix("# TYPE ") {
            let parts = line.split(separator: " ")
            served[String(parts[2])] = String(parts[3])
        }
        #expect(served.count >= 30, "\(served)")
        let guide = try String(contentsOfFile: Products.packageRoot + "/docs/operations.md", encoding: .utf8)
        var documented: [String: String] = [:]
        for line in guide.split(separator: "\n") where line.hasPrefix("| `baton_") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            documented[cells[0].trimmingCharacters(in: CharacterSet(charactersIn: "`"))] = cells[1]
        }
        if cluster == nil { documented = documented.filter { !$0.key.hasPrefix("baton_fleet_") } }
        #expect(documented == served)
    }

    @Test(.enabled(if: MetricsTests.promtool != nil, MetricsTests.noPromtool))
    func theAlertRulesAreValidAndEachFiresOnItsSeries() throws {
        let promtool = try #require(Self.promtool)
        let check = try run([promtool, "check", "rules", Products.packageRoot + "/config/alerts.yml"])
        #expect(check.status == 0, "\(check.output)")
        #expect(check.output.contains("SUCCESS: 9 rules found"), "\(check.output)")
        // config/alerts.test.yml: each alert fires on its series, and not while they are healthy.
        let test = try run([promtool, "test", "rules", Products.packageRoot + "/config/alerts.test.yml"])
        #expect(test.status == 0, "\(test.output)")
        let rules = try String(contentsOfFile: Products.packageRoot + "/config/alerts.yml", encoding: .utf8)
        let tests = try String(contentsOfFile: Products.packageRoot + "/config/alerts.test.yml", encoding: .utf8)
        let alerts = rules.split(separator: "\n").compactMap { line -> String? in
            let text = line.trimmingCharacters(in: .whitespaces)
            return text.hasPrefix("- alert: ") ? String(text.dropFirst("- alert: ".count)) : nil
        }
        #expect(alerts.count == 9)
        for alert in alerts {
            #expect(tests.contains("alertname: \(alert)\n        exp_alerts:\n          - exp_labels"), "no test makes \(alert) fire")
        }
    }
}
