import BatonTestSupport
import Foundation
import Glibc
import Testing

/// Registration proves that the caller owns the process: no credential lets anyone make
/// batond signal a process it does not own.
@Suite("registration ownership")
struct RegistrationOwnershipTests {
    static let registrationToken = "registration-token-0123456789abcdef"

    /// batond with agent `web` (batond's own child, working) and agent `ext` for
    /// registered processes.
    /// `wrapper` runs batond through another command (without TCP then).
    /// `webWorks`: whether the web agent starts (its instance parks a signal long-poll).
    func start(ext extra: String = "", wrapper: [String] = [], webWorks: Bool = true) throws -> (BatondProcess, TestReleases) {
        let state = TemporaryDirectory("registration")
        let web = TestReleases(state: state)
        try web.add("1.0")
        if webWorks { try web.setCurrent("1.0") }
        let daemon = try BatondProcess(state: state, configText: web.config() + """

            [agents.ext]
            command = ["/bin/false"]
            registration_token = "\(Self.registrationToken)"
            stop_timeout = "1s"
            kill_timeout = "1s"
            \(extra)
            """, tcp: wrapper.isEmpty, wrapper: wrapper)
        return (daemon, web)
    }

    func register(_ endpoint: Endpoint, pid: Int32) throws -> HTTPResponse {
        try endpoint.json("POST", "/v1/agents/ext/instances", token: Self.registrationToken, #"{"pid":\#(pid),"version":"1.0"}"#)
    }

    /// A child of this test process, in its session.
    func child() throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sleep")
        process.arguments = ["300"]
        try process.run()
        return process
    }

    /// A process that is not this test's: its parent exited, so it was handed to init.
    func stranger(_ state: TemporaryDirectory) throws -> Int32 {
        let file = state.file("stranger.pid")
        // posix_spawn and waitpid, not Foundation's Process: it was seen not to notice this
        // shell's exit while another Process child of the test ran.
        let words: [String] = ["/bin/sh", "-c", "sleep 300 >/dev/null 2>&1 </dev/null & echo $! > '\(file)'"]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var shell: pid_t = 0
        guard posix_spawn(&shell, "/bin/sh", nil, nil, argv, environ) == 0 else { throw TestFailure("posix_spawn /bin/sh") }
        var status: Int32 = 0
        while waitpid(shell, &status, 0) < 0 && errno == EINTR {}
        guard let text = try? String(contentsOfFile: file, encoding: .utf8),
              let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw TestFailure("could not start a stranger")
        }
        return pid
    }

    /// Whether this test's child still runs (not exited, not a zombie).
    func isRunning(_ pid: Int32) -> Bool {
        var status: Int32 = 0
        return waitpid(pid, &status, WNOHANG) == 0
    }

    @Test func onlyTheProcessItsAncestorsOrDescendantsMayRegisterIt() throws {
        let (daemon, _) = try start()
        let mine = try child()
        defer { kill(mine.processIdentifier, SIGKILL) }
        let strangerPid = try stranger(daemon.state)
        defer { kill(strangerPid, SIGKILL) }

        let refused = try register(daemon.unix, pid: strangerPid)
        #expect(refused.status == 403, "\(refused.text)")
        #expect(refused.errorCode == "registration_refused")
        for pid in [daemon.process.processIdentifier, 1] {
            let answer = try register(daemon.unix, pid: pid)
            #expect(answer.status == 403, "pid \(pid): \(answer.text)")
            #expect(answer.errorCode == "registration_refused")
        }

        let first = try register(daemon.unix, pid: mine.processIdentifier)
        #expect(first.status == 201, "\(first.text)")
        let again = try register(daemon.unix, pid: mine.processIdentifier)
        #expect(again.status == 409, "\(again.text)")
        #expect(again.errorCode == "already_registered")
        daemon.stop()
    }

    @Test func anotherAgentsInstanceIsNeverRegistered() throws {
        let (daemon, _) = try start()
        var pid = 0
        try waitUntil(timeout: 30) {
            let view = try? daemon.endpoint.get("/v1/agents/web", token: daemon.token).json()
            pid = (view?["instances"] as? [[String: Any]])?.first?["pid"] as? Int ?? 0
            return pid > 0
        }
        let answer = try register(daemon.unix, pid: Int32(pid))
        #expect(answer.status == 409, "\(answer.text)")
        #expect(answer.errorCode == "already_registered")
        daemon.stop()
    }

    @Test func overTCPOnlyForConfiguredUIDs() throws {
        let mine = try child()
        defer { kill(mine.processIdentifier, SIGKILL) }
        let (closed, _) = try start()
        let refused = try register(closed.endpoint, pid: mine.processIdentifier)
        #expect(refused.status == 403, "\(refused.text)")
        #expect(refused.errorCode == "registration_refused")
        closed.stop()

        let (open, _) = try start(ext: #"tcp_registration_uids = ["\#(getuid())"]"#)
        let accepted = try register(open.endpoint, pid: mine.processIdentifier)
        #expect(accepted.status == 201, "\(accepted.text)")
        open.stop()

        let (other, _) = try start(ext: #"tcp_registration_uids = ["\#(getuid() + 1)"]"#)
        let wrongUID = try register(other.endpoint, pid: mine.processIdentifier)
        #expect(wrongUID.status == 403, "\(wrongUID.text)")
        other.stop()
    }

    @Test func registeredProcessesOutliveBatondUnlessTheConfigSaysOtherwise() throws {
        let kept = try child()
        defer { kill(kept.processIdentifier, SIGKILL) }
        let (daemon, _) = try start()
        #expect(try register(daemon.unix, pid: kept.processIdentifier).status == 201)
        #expect(daemon.stop() == 0)
        #expect(isRunning(kept.processIdentifier), "batond stopped a process another supervisor owns")

        let stopped = try child()
        defer { kill(stopped.processIdentifier, SIGKILL) }
        let (owner, _) = try start(ext: "stop_registered_on_exit = true")
        #expect(try register(owner.unix, pid: stopped.processIdentifier).status == 201)
        #expect(owner.stop() == 0)
        #expect(!isRunning(stopped.processIdentifier), "stop_registered_on_exit = true stops it")
    }

    /// Let go of at batond's stop, a registered instance is not told stop either: its
    /// long-poll ends without a signal (batond is going), and it works on under its own.
    @Test func aRegisteredInstanceLetGoIsNotToldStop() throws {
        let kept = try child()
        defer { kill(kept.processIdentifier, SIGKILL) }
        // No other instance runs: the one parked long-poll is the registered one's.
        let (daemon, _) = try start(webWorks: false)
        let answer = try register(daemon.unix, pid: kept.processIdentifier).json()
        let id = try #require(answer["instance"] as? String)
        let token = try #require(answer["token"] as? String)
        let endpoint = daemon.unix
        let poll = inBackground { try endpoint.get("/v1/instances/\(id)/signal?seen=wait&wait=60", token: token, timeout: 90) }
        try waitUntil(timeout: 20) {
            (try? daemon.endpoint.get("/metrics").text.contains("baton_http_parked_requests 1\n")) ?? false
        }
        #expect(daemon.stop() == 0)
        let answered = try? poll.wait(timeout: 30)
        #expect(!(answered?.text.contains(#""signal":"stop""#) ?? false), "told stop: \(answered?.text ?? "-")")
        #expect(isRunning(kept.processIdentifier))
    }

    /// It failed its own check: it never gets go, and batond makes sure it does not run
    /// on (SIGTERM, then SIGKILL after kill_timeout), as for an instance it started.
    @Test func aRegisteredInstanceThatReportsFailureIsTerminated() throws {
        let failing = try child()
        defer { kill(failing.processIdentifier, SIGKILL) }
        let (daemon, _) = try start()
        defer { daemon.stop() }
        let registered = try register(daemon.unix, pid: failing.processIdentifier)
        #expect(registered.status == 201, "\(registered.text)")
        let answer = try registered.json()
        let id = try #require(answer["instance"] as? String)
        let token = try #require(answer["token"] as? String)
        let report = try daemon.unix.json("POST", "/v1/instances/\(id)/failed", token: token, #"{"reason":"self-check failed"}"#)
        #expect(report.status == 200, "\(report.text)")
        try waitUntil(timeout: 10) { !self.isRunning(failing.processIdentifier) }
        let agent = try daemon.endpoint.get("/v1/agents/ext", token: daemon.token).json()
        #expect((agent["last_error"] as? [String: Any])?["reason"] as? String == "reported failure: self-check failed", "\(agent)")
    }

    static let canUnshare = getuid() == 0 && which("unshare") != nil && which("nsenter") != nil && which("curl") != nil

    /// In a container the session's leader is often outside batond's PID namespace, and
    /// getsid answers 0 for the caller and the process alike. That is one session, not none
    /// (CI runs so, and every registration was refused there).
    @Test(.enabled(if: canUnshare, "needs root, unshare, nsenter and curl"))
    func aSessionLedFromOutsideBatondsPIDNamespaceStillCounts() throws {
        let (daemon, _) = try start(wrapper: ["/usr/bin/env", "unshare", "--pid", "--fork", "--mount-proc"])
        // batond is `unshare`'s only child: the namespace's pid 1.
        let unshare = daemon.process.processIdentifier
        let children = try String(contentsOfFile: "/proc/\(unshare)/task/\(unshare)/children", encoding: .utf8)
        let batond = try #require(children.split(separator: " ").first.flatMap { Int32($0) })
        defer {
            kill(batond, SIGTERM)
            _ = daemon.waitForExit()
        }
        // A shell entered into batond's namespaces registers itself: `exec` keeps its pid for curl.
        let body = #"{\"pid\":$$,\"version\":\"1.0\"}"#
        let script = "exec curl -s -o /dev/null -w '%{http_code}' --unix-socket '\(daemon.socketPath)' "
            + "-H 'Authorization: Bearer \(Self.registrationToken)' -H 'Content-Type: application/json' "
            + "-d \"\(body)\" http://batond/v1/agents/ext/instances"
        let answer = try run(["/usr/bin/env", "nsenter", "--target", "\(batond)", "--pid", "--mount", "--", "/bin/sh", "-c", script])
        #expect(answer.output == "201", "\(answer.output)\n\(daemon.log)")
    }
}
