import BatonTestSupport
import Foundation
import Glibc
import Testing

/// Floods against the real batond: slow heads on every listener and a crowd of parked
/// long-polls must not keep agents, operators or probes out, and past a limit batond
/// answers at once.
@Suite("capacity")
struct CapacityIntegrationTests {
    /// Small limits, so that a flood of a few dozen sockets fills them.
    static let limits = """
        [http]
        max_connections = 50
        max_event_waiters = 5
        agent_connections_per_peer = 8
        request_head_timeout = "1s"

        """

    func start() throws -> (BatondProcess, TestReleases) {
        let state = TemporaryDirectory("capacity")
        let agents = TestReleases(state: state)
        try agents.add("1.0")
        try agents.add("2.0")
        try agents.setCurrent("1.0")
        let daemon = try BatondProcess(state: state, configText: Self.limits + agents.config(ready: "10s"))
        try HandoffIntegrationTests().waitForAgent(daemon, state: "running", version: "1.0")
        return (daemon, agents)
    }

    /// Slow heads fill the TCP listener and the control socket past their limit and the
    /// agent socket past the flooder's per-peer cap; meanwhile a handoff commits in its
    /// usual time (the successor's `ready` and the old one's `stopped` get in) and
    /// /healthz answers every time.
    @Test func aHandoffCommitsWhileEveryListenerIsFlooded() throws {
        let (daemon, agents) = try start()
        let floods = try [
            SlowHeads(daemon.endpoint, count: 60),
            SlowHeads(daemon.unix, count: 60),
            SlowHeads(.unix(path: daemon.agentSocketPath), count: 20),
        ]
        #expect(floods[2].closedByPeer(within: 2) >= 12, "the flooder's connections past its cap on the agent socket are closed")
        for _ in 0..<5 {
            #expect(try daemon.endpoint.get("/healthz", timeout: 2).status == 200)
        }
        let started = Date()
        let handoff = try daemon.handOff(to: "2.0")
        let took = Date().timeIntervalSince(started)
        #expect(handoff["outcome"] as? String == "committed", "\(handoff)")
        #expect(took < 5, "the handoff took \(took) s under the flood")
        #expect(agents.current == "2.0")
        #expect(try daemon.unix.get("/healthz", timeout: 2).status == 200)
        let metrics = try daemon.endpoint.get("/metrics").text
        #expect(metrics.contains(#"baton_http_connections_closed_total{listener="unix:\#(daemon.agentSocketPath)",reason="peer_cap"} 12"#),
                "\(metrics)")
        withExtendedLifetime(floods) {}
        daemon.stop()
    }

    /// The agent socket (the instances' `BATON_SOCKET`, checked by the instance protocol
    /// tests) serves the instances' routes only.
    @Test func theAgentSocketServesOnlyTheAgentsRoutes() throws {
        let daemon = try BatondProcess(configText: Self.limits)
        let agentSocket = Endpoint.unix(path: daemon.agentSocketPath)
        #expect(try agentSocket.get("/v1/status", token: daemon.token).status == 404)
        #expect(try agentSocket.get("/healthz").status == 404)
        let instanceRoute = try agentSocket.get("/v1/instances/web.1/signal").status
        #expect([401, 403].contains(instanceRoute), "an instance route is served, and wants the instance: \(instanceRoute)")
        let listeners = try daemon.endpoint.get("/v1/status", token: daemon.token).json()["listeners"] as? [String] ?? []
        #expect(listeners.contains("unix:\(daemon.agentSocketPath)"), "\(listeners)")
        daemon.stop()
    }

    @Test func parkedEventPollsPastTheCapAreRefusedAtOnce() throws {
        // No agent: the only parked requests are the test's.
        let daemon = try BatondProcess(configText: Self.limits)
        let token = daemon.token
        let waits = (0..<5).map { _ in inBackground { [endpoint = daemon.endpoint] in
            try endpoint.get("/v1/events?since=999999999&wait=60", token: token, timeout: 70)
        } }
        try waitUntil(timeout: 10) {
            (try? daemon.endpoint.get("/metrics").text)?.contains("\nbaton_http_parked_requests 5\n") == true
        }
        let started = Date()
        let refused = try daemon.endpoint.get("/v1/events?since=999999999&wait=60", token: token, timeout: 5)
        #expect(refused.status == 503)
        #expect(refused.errorCode == "too_many_waiters")
        #expect(refused.header("Retry-After") == "1")
        #expect(Date().timeIntervalSince(started) < 1)
        #expect(try daemon.endpoint.get("/healthz", timeout: 2).status == 200)
        daemon.stop()
        for wait in waits { _ = try? wait.wait() }
    }

    /// A client that sends a byte of its head every 200 ms is closed at the head
    /// deadline (1 s here), on TCP and on the control socket.
    @Test func aTrickledHeadIsClosedAtTheDeadline() throws {
        let (daemon, _) = try start()
        for endpoint in [daemon.endpoint, daemon.unix] {
            let connection = try RawConnection(endpoint, timeout: 5)
            try connection.send(Array("GET /healthz HTTP/1.1\r\n".utf8))
            let started = Date()
            var closed = false
            while !closed && Date().timeIntervalSince(started) < 6 {
                closed = (try? connection.send(Array("X".utf8))) == nil || connection.isClosedByPeer(waiting: 0.2)
            }
            let took = Date().timeIntervalSince(started)
            #expect(closed, "\(endpoint): a trickled head kept its connection for 6 s")
            #expect(took < 3, "\(endpoint): closed after \(took) s")
        }
        let metrics = try daemon.endpoint.get("/metrics").text
        #expect(metrics.contains(#"listener="unix:\#(daemon.socketPath)",reason="head_deadline"} 1"#), "\(metrics)")
        daemon.stop()
    }

    // MARK: - Parked polls, streams, floods and bodies at once

    /// `count` agents whose every instance holds two signal long-polls parked on the agent
    /// socket (curl, as a shell agent would) and never reports ready: instances checking
    /// themselves for a long time. A refused poll is asked again after a pause that
    /// doubles from 0.1 s to 5 s, as the BatonAgent library does.
    static func pollers(_ count: Int, state: TemporaryDirectory) throws -> String {
        var config = ""
        for index in 0..<count {
            let bin = "\(state.path)/releases/poller\(index)/1/bin"
            try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
            let script = """
                #!/bin/sh
                poll() {
                    pause=0.1
                    while :; do
                        if curl -sf -o /dev/null --max-time 90 --unix-socket "$BATON_SOCKET" \
                            -H "Authorization: Bearer $BATON_TOKEN" \
                            "http://batond/v1/instances/$BATON_INSTANCE/signal?seen=wait&wait=60"; then
                            pause=0.1
                        else
                            sleep $pause
                            pause=$(awk "BEGIN { p = $pause * 2; print (p > 5 ? 5 : p) }")
                        fi
                    done
                }
                trap 'kill 0; exit 0' TERM
                poll & poll & wait

                """
            try script.write(toFile: "\(bin)/agent", atomically: true, encoding: .utf8)
            chmod("\(bin)/agent", 0o755)
            symlink("1", "\(state.path)/releases/poller\(index)/current")
            config += """

                [agents.poller\(index)]
                command = ["{release}/bin/agent"]
                ready_timeout = "24h"
                stop_timeout = "1s"
                kill_timeout = "1s"

                """
        }
        return config
    }

    /// The `instance.signal` records of agent `web` after `since` whose instance never
    /// wrote the matching line (`go`, `stop-received`) in its own events file.
    func missedSignals(_ daemon: BatondProcess, _ agents: TestReleases, since: Int) throws -> [String] {
        let page = try daemon.endpoint.get("/v1/events?since=\(since)&agent=web&limit=1000", token: daemon.token).json()
        let signals = (page["records"] as? [[String: Any]] ?? []).filter { $0["kind"] as? String == "instance.signal" }
        #expect(!signals.isEmpty, "the handoffs signalled the agents")
        var missed: [String] = []
        try? waitUntil(timeout: 30) {
            let heard = Set(agents.log().map { "\($0.event) \($0.instance)" })
            missed = signals.compactMap { record in
                let data = record["data"] as? [String: Any] ?? [:]
                let instance = data["instance"] as? String ?? "?"
                let expected = switch data["signal"] as? String {
                case "go": "go"
                case "stop": "stop-received"
                default: String?.none
                }
                guard let expected, !heard.contains("\(expected) \(instance)") else { return nil }
                return "\(expected) \(instance)"
            }
            return missed.isEmpty
        }
        return missed
    }

    func parked(_ daemon: BatondProcess) -> Int {
        let metrics = (try? daemon.endpoint.get("/metrics").text) ?? ""
        return metrics.split(separator: "\n").first { $0.hasPrefix("baton_http_parked_requests ") }
            .flatMap { Int($0.split(separator: " ").last ?? "") } ?? -1
    }

    /// More parked signal polls than the agent socket has slots (40 instances x 2 on 60):
    /// they take at most the slots less the reserve (60 - 7); past that, an instance's
    /// first poll takes the slot of another's second, and second polls are answered 503
    /// and asked again. The reserve lets the agents' reports in, and every instance keeps
    /// a poll parked: a handoff commits and every signal reaches its agent. (Before the
    /// reserve, the polls filled the listener with parked connections and every new one
    /// was closed at once: the agent's first instance never got its `ready` in.)
    @Test func aHandoffCommitsWhileParkedPollsOutnumberTheAgentSocket() throws {
        let state = TemporaryDirectory("capacity-polls")
        let agents = TestReleases(state: state)
        try agents.add("1.0")
        try agents.add("2.0")
        try agents.setCurrent("1.0")
        let config = """
            [http]
            agent_max_connections = 60

            """ + agents.config(ready: "30s") + (try Self.pollers(40, state: state))
        let daemon = try BatondProcess(state: state, configText: config)
        try HandoffIntegrationTests().waitForAgent(daemon, state: "running", version: "1.0")
        try waitUntil(timeout: 60) { self.parked(daemon) >= 53 }
        let since = try daemon.endpoint.get("/v1/status", token: daemon.token).json()["ledger"].flatMap { ($0 as? [String: Any])?["last_seq"] as? Int } ?? 0
        let handoff = try daemon.handOff(to: "2.0")
        #expect(handoff["outcome"] as? String == "committed", "\(handoff)")
        let missed = try missedSignals(daemon, agents, since: since)
        #expect(missed.isEmpty, "\(missed)\n\(agents.log().map { "\($0.event) \($0.instance)" })")
        let metrics = try daemon.endpoint.get("/metrics").text
        #expect(metrics.contains(#"baton_http_requests_total{route="/v1/instances/{id}/signal",method="GET",code="503"}"#),
                "the polls past the agent socket's slots less its reserve were answered 503")
        #expect(overlaps(agents.log()).isEmpty)
        daemon.stop()
    }

    /// Scaled down from `make bench` (bench/starve.py), every load at once: 200 parked
    /// signal polls of 100 instances on the agent socket, 100 event streams on the control
    /// socket, the TCP listener kept full of slow heads, 2 MiB bodies in a loop on the
    /// control socket, and /v1/status asked in a loop over TCP. Meanwhile two handoffs
    /// commit, every signal reaches its agent, and the probes and operators are answered.
    /// No assertion on speed: generous timeouts only.
    @Test func everyScopeIsServedUnderEveryLoadAtOnce() throws {
        let state = TemporaryDirectory("capacity-all")
        let agents = TestReleases(state: state)
        try agents.add("1.0")
        try agents.add("2.0")
        try agents.setCurrent("1.0")
        let config = """
            [http]
            max_connections = 200
            max_event_streams = 150
            agent_max_connections = 300
            request_head_timeout = "2s"

            """ + agents.config(ready: "60s") + (try Self.pollers(100, state: state))
        let daemon = try BatondProcess(state: state, configText: config)
        try HandoffIntegrationTests().waitForAgent(daemon, state: "running", version: "1.0")
        try waitUntil(timeout: 120) { self.parked(daemon) >= 200 }
        let since = try daemon.endpoint.get("/v1/status", token: daemon.token).json()["ledger"].flatMap { ($0 as? [String: Any])?["last_seq"] as? Int } ?? 0

        let token = daemon.token
        let streams = try (0..<100).map { _ in
            try EventStreamClient(daemon.unix, "/v1/events?since=\(since)", token: token)
        }
        #expect(streams.allSatisfy { $0.status == 200 })
        let running = Locked(true)
        // The TCP listener full of slow heads, reopened as batond closes them.
        let slowloris = inBackground { [endpoint = daemon.endpoint] () -> Int in
            var rounds = 0
            while running.get() {
                let heads = try SlowHeads(endpoint, count: 220)
                _ = heads.closedByPeer(within: 3)
                rounds += 1
            }
            return rounds
        }
        let bodies = inBackground { [unix = daemon.unix] () -> [String] in
            var answers: [String] = []
            var chunked = false
            while running.get() {
                let connection = try RawConnection(unix, timeout: 30)
                var head = "PUT /v1/agents/web/desired HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\nContent-Type: application/json\r\n"
                head += chunked ? "Transfer-Encoding: chunked\r\n\r\n" : "Content-Length: \(2 << 20)\r\n\r\n"
                try connection.send(Array(head.utf8))
                if chunked {
                    let piece = Array("10000\r\n".utf8) + [UInt8](repeating: 0x20, count: 0x10000) + Array("\r\n".utf8)
                    for _ in 0..<32 { try? connection.send(piece) }
                    try? connection.send(Array("0\r\n\r\n".utf8))
                }
                let answer = try connection.readResponse(method: "PUT")
                answers.append("\(answer.status) \(answer.errorCode ?? "no error shape")")
                chunked.toggle()
            }
            return answers
        }
        let status = inBackground { [endpoint = daemon.endpoint] () -> [Int] in
            var codes: [Int] = []
            while running.get() { codes.append(try endpoint.get("/v1/status", token: token, timeout: 30).status) }
            return codes
        }

        for version in ["2.0", "1.0"] {
            #expect(try daemon.endpoint.get("/healthz", timeout: 30).status == 200)
            #expect(try daemon.unix.get("/v1/agents/web", token: token, timeout: 30).status == 200)
            let handoff = try daemon.handOff(to: version)
            #expect(handoff["outcome"] as? String == "committed", "\(handoff)")
        }
        let missed = try missedSignals(daemon, agents, since: since)
        #expect(missed.isEmpty, "\(missed)")
        #expect(parked(daemon) >= 200, "the pollers' polls stayed parked")
        #expect(try daemon.endpoint.get("/healthz", timeout: 30).status == 200)

        running.set(false)
        #expect(try slowloris.wait(timeout: 60) >= 1)
        let answered = try bodies.wait(timeout: 60)
        #expect(!answered.isEmpty)
        #expect(answered.allSatisfy { $0 == "413 payload_too_large" }, "\(Set(answered))")
        let codes = try status.wait(timeout: 60)
        #expect(!codes.isEmpty && codes.allSatisfy { $0 == 200 }, "\(Set(codes))")
        let metrics = try daemon.endpoint.get("/metrics").text
        #expect(metrics.contains(#"baton_http_connections_closed_total{listener="\#(daemon.endpoint)",reason="evicted"}"#),
                "the slow heads filled the TCP listener")
        for stream in streams { stream.close() }
        #expect(overlaps(agents.log()).isEmpty)
        daemon.stop()
    }
}
