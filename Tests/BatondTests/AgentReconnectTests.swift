import BatonTestSupport
import Foundation
import Testing

/// Agents while batond is away (docs/agent-protocol.md, "While batond is away"): killed
/// with SIGKILL, batond leaves its instances running; they keep working under the
/// signal they hold and keep asking. A batond that does not know them (here one on an
/// empty state directory, serving the same agent socket) answers 401, and they stop
/// working and exit. The evidence is the agents' own: their event or work files and
/// their processes.
@Suite("agents while batond is away")
struct AgentReconnectTests {
    /// The pid of the instance of `web` that holds go.
    func workingInstance(_ daemon: BatondProcess) throws -> ProcessProbe {
        var pid: Int32?
        try waitUntil(timeout: 30) {
            let view = try? daemon.endpoint.get("/v1/agents/web", token: daemon.token).json()
            let instances = view?["instances"] as? [[String: Any]] ?? []
            pid = instances.first { $0["state"] as? String == "working" }.flatMap { ($0["pid"] as? Int).map(Int32.init) }
            return pid != nil
        }
        return ProcessProbe(try #require(pid))
    }

    /// A batond that knows nothing of the instances before it: a state directory of its
    /// own, with an agent `web` of its own (a test agent), serving `agentSocket`.
    func batondThatDoesNotKnowThem(agentSocket: String) throws -> (BatondProcess, TestReleases) {
        let state = TemporaryDirectory("away-new")
        let agents = TestReleases(state: state)
        try agents.add("1.0")
        try agents.setCurrent("1.0")
        let config = "[daemon]\nagent_socket = \"\(agentSocket)\"\n\n" + agents.config()
        return (try BatondProcess(state: state, configText: config), agents)
    }

    /// Stops `daemon` and whatever it started, whatever its stop does to its instances.
    func stopAll(_ daemon: BatondProcess) {
        let view = try? daemon.endpoint.get("/v1/agents/web", token: daemon.token).json()
        let started = (view?["instances"] as? [[String: Any]] ?? []).compactMap { ($0["pid"] as? Int).map { ProcessProbe(Int32($0)) } }
        daemon.stop()
        for instance in started { instance.kill() }
    }

    func kill9(_ daemon: BatondProcess) {
        daemon.signal(SIGKILL)
        _ = daemon.waitForExit()
    }

    @Test func theTestAgentWorksOnWhileBatondIsDownAndStopsWhenABatondDoesNotKnowIt() throws {
        let state = TemporaryDirectory("away")
        let agents = TestReleases(state: state)
        try agents.add("1.0", ["--work-every", "0.05"])
        try agents.setCurrent("1.0")
        let daemon = try BatondProcess(state: state, configText: agents.config())
        let agent = try workingInstance(daemon)
        defer { agent.kill() }
        try waitUntil(timeout: 10) { agents.log().contains { $0.event == "work" } }

        kill9(daemon)
        let killed = monotonicNanoseconds()
        // A second and more of work after batond died, the long-poll failing all along.
        try waitUntil(timeout: 15) {
            agents.log().contains { $0.event == "work" && $0.nanoseconds > killed + 1_000_000_000 }
        }
        #expect(agent.isAlive)
        #expect(!agents.log().contains { ["disowned", "exit", "stop-received"].contains($0.event) }, "\(agents.log())")

        // The same agent socket, served by a batond for which its token means nothing.
        let (fresh, _) = try batondThatDoesNotKnowThem(agentSocket: daemon.agentSocketPath)
        defer { stopAll(fresh) }
        try waitUntil(timeout: 20) { agents.log().contains { $0.event == "exit" } }
        try waitUntil(timeout: 10) { !agent.isAlive }
        let events = agents.log()
        let disowned = try #require(events.first { $0.event == "disowned" }, "\(events)")
        #expect(!events.contains { $0.event == "work" && $0.nanoseconds > disowned.nanoseconds },
                "worked on after learning batond does not know it: \(events)")
        #expect(events.last?.event == "exit")
    }

    @Test(.enabled(if: which("curl") != nil && which("bash") != nil, "needs curl and bash"))
    func theShellAgentWorksOnWhileBatondIsDownAndStopsWhenABatondDoesNotKnowIt() throws {
        let state = TemporaryDirectory("away-shell")
        let agents = TestReleases(state: state)
        let work = state.file("work-web.log")
        let bin = state.file("releases/web/1.0/bin")
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        try """
            #!/bin/sh
            SHELL_AGENT_OUT='\(work)' exec bash '\(Products.packageRoot)/examples/shell-agent'

            """.write(toFile: bin + "/agent", atomically: true, encoding: .utf8)
        chmod(bin + "/agent", 0o755)
        try agents.setCurrent("1.0")
        let daemon = try BatondProcess(state: state, configText: agents.config())
        let agent = try workingInstance(daemon)
        defer { agent.kill() }
        func lines() -> Int {
            ((try? String(contentsOfFile: work, encoding: .utf8)) ?? "").split(separator: "\n").count
        }
        try waitUntil(timeout: 10) { lines() >= 1 }
        // The worker: the agent's child subshell (its other child is the long-poll's curl).
        let workers = agent.children.filter { $0.command == "bash" }
        #expect(workers.count == 1, "\(agent.children.map { "\($0) \($0.command ?? "?")" })")
        defer { for worker in workers { worker.kill() } }

        kill9(daemon)
        let before = lines()
        // The worker writes a line a second: two more after batond died.
        try waitUntil(timeout: 15) { lines() >= before + 2 }
        #expect(agent.isAlive)

        let (fresh, _) = try batondThatDoesNotKnowThem(agentSocket: daemon.agentSocketPath)
        defer { stopAll(fresh) }
        try waitUntil(timeout: 20) { !agent.isAlive }
        // Its work stopped with it.
        try waitUntil(timeout: 5) { workers.allSatisfy { !$0.isAlive } }
    }
}
