import BatonTestSupport
import Foundation
import Glibc
import Testing

/// baton-testagent's HTTP responder and connection log through a real batond: with
/// `listen`, on the sockets batond passes; with `--bind`, on a port it binds itself.
@Suite("baton-testagent over HTTP", .serialized)
struct TestAgentHTTPTests {
    func port(_ daemon: BatondProcess) throws -> Int {
        let view = try daemon.endpoint.get("/v1/agents/web", token: daemon.token).json()
        let address = (view["sockets"] as? [[String: Any]])?.first?["address"] as? String ?? ""
        return try #require(address.split(separator: ":").last.flatMap { Int($0) })
    }

    /// The instance that answers a request holds go; its body names it.
    func waitForAnswer(from body: String, _ load: HTTPLoad) throws {
        try waitUntil(timeout: 30) { load.counts.bodies.contains(body) }
    }

    @Test func everyRequestIsAnsweredByTheInstanceHoldingGoAndEveryConnectionIsLogged() throws {
        let state = TemporaryDirectory("testagent-http")
        let agents = TestReleases(state: state)
        for version in ["1.0", "2.0"] { try agents.add(version, ["--http", "--ready-after", "0.2"]) }
        try agents.setCurrent("1.0")
        let daemon = try BatondProcess(state: state, configText: agents.config() + "\nlisten = [\"tcp://127.0.0.1:0\"]\n")
        defer { _ = daemon.stop() }
        let load = try HTTPLoad(address: "127.0.0.1:\(try port(daemon))")
        load.start(connections: 4)
        try waitForAnswer(from: "web.1 1.0\n", load)

        // Three handoffs under load: 1.0 -> 2.0 -> 1.0 -> 2.0.
        for (version, instance) in [("2.0", "web.2"), ("1.0", "web.3"), ("2.0", "web.4")] {
            #expect(try daemon.handOff(to: version)["outcome"] as? String == "committed")
            try waitForAnswer(from: "\(instance) \(version)\n", load)
        }
        let result = load.stop()

        #expect(result.failures.isEmpty, "socket hand-over refuses nothing: \(result.failures.prefix(5))")
        #expect(result.bodies == ["web.1 1.0\n", "web.2 2.0\n", "web.3 1.0\n", "web.4 2.0\n"])
        let events = agents.log()
        #expect(acceptsOutsideGoWindows(events).isEmpty, "\(acceptsOutsideGoWindows(events).prefix(5))")
        // Each answered request came on a connection the agents logged (more may have been
        // accepted as the load stopped).
        #expect(events.filter { $0.event == "accept" }.count >= result.ok)
        #expect(overlaps(events).isEmpty)
        // The old instances drained and reported stopped after their last accept.
        for instance in ["web.1", "web.2", "web.3"] {
            let mine = events.filter { $0.instance == instance }
            let stopped = try #require(mine.first { $0.event == "stopped" }?.nanoseconds)
            let lastAccept = try #require(mine.last { $0.event == "accept" }?.nanoseconds)
            #expect(lastAccept < stopped)
        }
    }

    /// Without `listen`, `--bind` binds after go and closes on stop, so a successor can
    /// bind the same port; requests that arrive in between may be refused (that is the
    /// gap socket hand-over removes), never answered by two versions at once.
    @Test func withBindItBindsThePortItselfAfterGoAndLetsItGoOnStop() throws {
        let state = TemporaryDirectory("testagent-bind")
        let agents = TestReleases(state: state)
        let port = try freePort()
        for version in ["1.0", "2.0"] { try agents.add(version, ["--bind", "tcp://127.0.0.1:\(port)"]) }
        try agents.setCurrent("1.0")
        let daemon = try BatondProcess(state: state, configText: agents.config())
        defer { _ = daemon.stop() }
        let load = try HTTPLoad(address: "127.0.0.1:\(port)")
        load.start(connections: 2)
        try waitForAnswer(from: "web.1 1.0\n", load)
        #expect(try daemon.handOff(to: "2.0")["outcome"] as? String == "committed")
        try waitForAnswer(from: "web.2 2.0\n", load)
        let result = load.stop()

        #expect(result.bodies == ["web.1 1.0\n", "web.2 2.0\n"])
        #expect(result.failures.allSatisfy { [.refused, .reset].contains($0.kind) }, "\(result.failures.prefix(5))")
        let events = agents.log()
        #expect(acceptsOutsideGoWindows(events).isEmpty, "\(acceptsOutsideGoWindows(events).prefix(5))")
        #expect(events.contains { $0.event == "accept" && $0.instance == "web.2" })
    }
}
