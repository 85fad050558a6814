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
    func batondThatDoesNotKnowThem(agentSocket: String) throws -> BatondProcess {
        let state = TemporaryDirectory("away-new")
        let agents = TestReleases(state: state)
        try agents.add("1.0")
        try agents.setCurrent("1.0")
        let config = "[daemon]\nagent_socket = \"\(agentSocket)\"\n\n" + agents.config()
        return try BatondProcess(state: state, configText: config)
    }

    /// Stops `daemon` and whatever it started, whatever its stop does to its instances.
    func stopAll(_ daemon: BatondProcess) {
        let started = ProcessProbe(daemon.process.processIdentifier).descendants
        daemon.stop()
        for process in started { process.kill() }
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
        let fresh = try batondThatDoesNotKnowThem(agentSocket: daemon.agentSocketPath)
        defer { stopAll(fresh) }
        try waitUntil(timeout: 20) { agents.log().contains { $0.event == "exit" } }
        try waitUntil(timeout: 10) { !agent.isAlive }
        let events = agents.log()
        let disowned = try #require(events.first { $0.event == "disowned" }, "\(events)")
        #expect(!events.contains { $0.event == "work" && $0.nanoseconds > disowned.nanoseconds },
                "worked on after learning batond does not know it: \(events)")
        #expect(events.last?.event == "exit")
    }

    /// Since instances outlive a batond killed with SIGKILL, the test harness kills them
    /// with it when a test lets go of a running batond (e.g. one that failed halfway).
    @Test func aBatondATestLetsGoOfTakesItsInstancesWithIt() throws {
        let state = TemporaryDirectory("away-drop")
        let agents = TestReleases(state: state)
        try agents.add("1.0")
        try agents.setCurrent("1.0")
        var daemon: BatondProcess? = try BatondProcess(state: state, configText: agents.config())
        let agent = try workingInstance(try #require(daemon))
        defer { agent.kill() }
        daemon = nil
        try waitUntil(timeout: 5) { !agent.isAlive }
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

        let fresh = try batondThatDoesNotKnowThem(agentSocket: daemon.agentSocketPath)
        defer { stopAll(fresh) }
        try waitUntil(timeout: 20) { !agent.isAlive }
        // Its work stopped with it.
        try waitUntil(timeout: 5) { workers.allSatisfy { !$0.isAlive } }
    }
}

/// The example agents against a stand-in for batond (ScriptedBatond), run directly.
@Suite("agents against a stand-in batond")
struct AgentStandInTests {
    /// The shell example's reconnect loop: its pauses grow from 100 ms, its long-poll
    /// resumes with its `seen` cursor, and a 401 ends its work.
    @Test(.enabled(if: which("curl") != nil && which("bash") != nil, "needs curl and bash"))
    func itsPausesGrowItsLongPollResumesAndA401EndsItsWork() throws {
        let directory = TemporaryDirectory("shell-away")
        let socket = directory.file("agent.sock")
        let release = DispatchSemaphore(value: 0)
        let go = #"{"instance":"web.1","signal":"go","handoff":null}"#
        let busy = #"{"error":{"code":"shutting_down","message":"stopping"}}"#
        let server = try ScriptedBatond(path: socket) { count, _ -> ScriptedBatond.Reply in
            switch count {
            case 1...5: return .answer(503, busy)  // the ready report, retried
            case 6: return .answer(200, go)
            case 7: return .cut  // the long-poll, cut by batond's death
            case 8, 9: return .answer(503, busy)
            default:
                release.wait()  // until the test has looked at the worker
                return .answer(401, #"{"error":{"code":"unauthorized","message":"the token is not valid"}}"#)
            }
        }
        defer { server.close() }
        let out = directory.file("work.log")
        let agent = try Child(
            ["/bin/bash", Products.packageRoot + "/examples/shell-agent"],
            environment: [
                "PATH=/usr/local/bin:/usr/bin:/bin", "BATON_SOCKET=\(socket)", "BATON_AGENT=web", "BATON_INSTANCE=web.1",
                "BATON_TOKEN=secret", "BATON_VERSION=1.0", "SHELL_AGENT_OUT=\(out)", "TMPDIR=\(directory.path)",
            ],
            output: directory.file("stdout"), errors: directory.file("stderr"))

        try server.waitForRequests(10, timeout: 30)
        let arrivals = server.arrivals
        // The ready report's retries: pauses of 100, 200, 400, 800 ms, each jittered down
        // to half at most. Only the least is checked: how much longer a pause took (curl's
        // start on a loaded machine) says nothing of the agent.
        for (index, step) in [0.1, 0.2, 0.4, 0.8].enumerated() {
            let gap = Double(arrivals[index + 1].nanoseconds - arrivals[index].nanoseconds) / 1e9
            #expect(gap >= step / 2, "pause \(index + 1): \(gap) s for a step of \(step) s")
        }
        let polls = arrivals[6...].map { $0.text }
        #expect(polls.allSatisfy { $0.hasPrefix("GET /v1/instances/web.1/signal?seen=go&wait=60 HTTP/1.1\r\n") }, "\(polls)")
        // Working all along: its worker is there while batond answers 401.
        let workers = ProcessProbe(agent.pid).children.filter { $0.command == "bash" }
        #expect(workers.count == 1)
        defer { for worker in workers { worker.kill() } }
        try waitUntil(timeout: 5) { ((try? String(contentsOfFile: out, encoding: .utf8)) ?? "").contains("web.1 1.0 working 1") }

        release.signal()
        #expect(agent.waitForEnd(timeout: 10) == "exit 1")
        #expect(workers.allSatisfy { !$0.isAlive }, "its work ended with it")
        let errors = (try? String(contentsOfFile: directory.file("stderr"), encoding: .utf8)) ?? ""
        #expect(errors.contains("batond does not know this instance (HTTP 401"), "\(errors)")
        #expect(!errors.contains("secret"))
    }

    /// An agent that finished its work after `stop` and keeps retrying its stopped
    /// report while batond is away still exits 0 at once on SIGTERM.
    @Test(.enabled(if: which("curl") != nil && which("bash") != nil, "needs curl and bash"), arguments: ["testagent", "shell"])
    func sigtermEndsAStoppedReportThatBatondDoesNotAnswer(agent kind: String) throws {
        let directory = TemporaryDirectory("stopped-away")
        let socket = directory.file("agent.sock")
        let server = try ScriptedBatond(path: socket) { _, request -> ScriptedBatond.Reply in
            if request.hasPrefix("POST /v1/instances/web.1/ready ") {
                return .answer(200, #"{"instance":"web.1","signal":"go","handoff":null}"#)
            }
            if request.hasPrefix("GET /v1/instances/web.1/signal") {
                return .answer(200, #"{"instance":"web.1","signal":"stop","handoff":null}"#)
            }
            return .cut  // the stopped report: batond went away
        }
        defer { server.close() }
        let command = kind == "shell"
            ? ["/bin/bash", Products.packageRoot + "/examples/shell-agent"]
            : [Products.path("baton-testagent")]
        let agent = try Child(
            command,
            environment: [
                "PATH=/usr/local/bin:/usr/bin:/bin", "BATON_SOCKET=\(socket)", "BATON_AGENT=web", "BATON_INSTANCE=web.1",
                "BATON_TOKEN=secret", "BATON_VERSION=1.0", "SHELL_AGENT_OUT=\(directory.file("work.log"))",
                "TMPDIR=\(directory.path)",
            ],
            output: directory.file("stdout"), errors: directory.file("stderr"))
        // Retrying the report: a second attempt came.
        try waitUntil(timeout: 20) { server.requests.filter { $0.hasPrefix("POST /v1/instances/web.1/stopped ") }.count >= 2 }
        agent.signal(SIGTERM)
        let ended = agent.waitForEnd(timeout: 5)
        #expect(ended == "exit 0", "\(kind) ended: \(ended ?? "not"); stderr: \((try? String(contentsOfFile: directory.file("stderr"), encoding: .utf8)) ?? "")")
    }
}

/// A child of this test started with posix_spawn, not Foundation's Process (which may
/// miss a shell's exit), with every signal at its default and none blocked, as batond
/// starts instances (a SIGTERM ignored on entry could not be trapped by a shell). Once
/// reaped, its pid is never signalled again (it may be another process's by then).
private final class Child {
    let pid: pid_t
    /// How it ended, once reaped: `exit N` or `signal N`.
    private(set) var ended: String?

    init(_ words: [String], environment: [String], output: String, errors: String) throws {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var all = sigset_t()
        sigfillset(&all)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, errors, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, words[0], &actions, &attributes, argv, envp) == 0 else { throw TestFailure("posix_spawn \(words[0])") }
        self.pid = pid
    }

    func signal(_ number: Int32) {
        if ended == nil { kill(pid, number) }
    }

    /// Waits up to `timeout` for it to end; nil if it still runs.
    @discardableResult
    func waitForEnd(timeout: Double) -> String? {
        try? waitUntil(timeout: timeout) {
            var status: Int32 = 0
            if ended == nil, waitpid(pid, &status, WNOHANG) == pid {
                ended = (status & 0x7f) == 0 ? "exit \((status >> 8) & 0xff)" : "signal \(status & 0x7f)"
            }
            return ended != nil
        }
        return ended
    }

    deinit {
        signal(SIGKILL)
        waitForEnd(timeout: 5)
    }
}
