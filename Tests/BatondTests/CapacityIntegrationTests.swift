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
}
