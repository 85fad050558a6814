import BatonTestSupport
import Foundation
import Testing

@Suite("batond lifecycle")
struct LifecycleTests {
    @Test func sigtermAnswersParkedWaitsAndExitsZero() throws {
        let daemon = try BatondProcess()
        let token = daemon.token
        let endpoint = daemon.endpoint
        let waiters = 3
        let answered = DispatchSemaphore(value: 0)
        let statuses = Locked<[Int]>([])
        // Each waiter holds its connection open on a long wait; the metrics gauge tells
        // when all are parked, so SIGTERM lands on parked requests, not racing ones.
        for _ in 0..<waiters {
            Thread {
                let status = (try? endpoint.get("/v1/events?since=1&wait=60", token: token, timeout: 30))?.status ?? -1
                statuses.update { $0.append(status) }
                answered.signal()
            }.start()
        }
        try waitUntil(timeout: 20) {
            (try? endpoint.get("/metrics").text.contains("baton_http_parked_requests \(waiters)\n")) ?? false
        }
        let started = Date()
        daemon.signal(SIGTERM)
        for _ in 0..<waiters {
            #expect(answered.wait(timeout: .now() + 20) == .success)
        }
        #expect(statuses.get() == Array(repeating: 200, count: waiters))
        #expect(daemon.waitForExit() == 0)
        #expect(Date().timeIntervalSince(started) < 15)
        #expect(try daemon.notify.wait(for: "STOPPING=1", timeout: 5).isEmpty == false)
        let journal = try String(contentsOfFile: daemon.state.file("ledger/journal.jsonl"), encoding: .utf8)
        #expect(journal.split(separator: "\n").last?.contains("\"kind\":\"daemon.stopped\"") == true)
        #expect(!FileManager.default.fileExists(atPath: daemon.socketPath), "the socket file is removed on a clean stop")
    }

    @Test func sigintStopsCleanlyToo() throws {
        let daemon = try BatondProcess()
        daemon.signal(SIGINT)
        #expect(daemon.waitForExit() == 0)
    }

    @Test func aSecondBatondOnTheSameStateDirRefuses() throws {
        let first = try BatondProcess()
        let second = try BatondProcess(state: first.state, tcp: false, waitReady: false)
        #expect(second.waitForExit() == 75)
        #expect(second.log.contains("in use by another batond"))
        #expect(second.log.contains("pid \(first.process.processIdentifier)"))
        // The first is untouched: still serving on its socket.
        #expect(try first.unix.get("/healthz").status == 200)
    }

    @Test func aDamagedJournalStopsBatondWithExit74NamingTheLine() throws {
        let state = TemporaryDirectory("batond")
        #expect(try BatondProcess(state: state, tcp: false).stop() == 0)
        let journal = state.file("ledger/journal.jsonl")
        let converted = Data(try Data(contentsOf: URL(fileURLWithPath: journal)).flatMap { $0 == 10 ? [13, 10] : [$0] })
        try converted.write(to: URL(fileURLWithPath: journal))
        let refused = try BatondProcess(state: state, tcp: false, waitReady: false)
        #expect(refused.waitForExit() == 74)
        #expect(refused.log.contains("\(journal): line 1 ends in CRLF; was the file converted by an editor or copy tool?"),
                "got: \(refused.log)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: journal)) == converted, "left as it was")
    }

    @Test func aStaleSocketFileIsReplacedButALiveOneIsNot() throws {
        let state = TemporaryDirectory("batond")
        // A stale socket: bound once, nobody listening now.
        let stale = try NotifySocket(path: state.file("batond.sock"))
        _ = stale
        let daemon = try BatondProcess(state: state, tcp: false)
        #expect(try daemon.unix.get("/healthz").status == 200)

        // A second daemon on another state dir but the same socket path must not steal it.
        let other = TemporaryDirectory("batond")
        let intruder = try BatondProcess(state: other, arguments: ["--socket", daemon.socketPath], tcp: false, waitReady: false)
        #expect(intruder.waitForExit() != 0)
        #expect(intruder.log.contains("another process is serving"))
        #expect(try daemon.unix.get("/healthz").status == 200)
    }

    @Test func readyAndStatusReachTheNotifySocket() throws {
        let state = TemporaryDirectory("batond")
        let daemon = try BatondProcess(state: state, waitReady: false)
        let messages = try daemon.notify.wait(for: "READY=1", timeout: 60)
        #expect(messages.joined(separator: "\n").contains("STATUS=serving on"))
        #expect(messages.joined(separator: "\n").contains("MAINPID=\(daemon.process.processIdentifier)"))
    }

    @Test func theWatchdogIsPingedWhenAsked() throws {
        let state = TemporaryDirectory("batond")
        let daemon = try BatondProcess(state: state, environment: ["WATCHDOG_USEC": "200000"])
        #expect(try daemon.notify.wait(for: "WATCHDOG=1", timeout: 10).isEmpty == false)
    }

    @Test func checkConfigAcceptsTheBundledConfigs() throws {
        for name in ["batond.toml", "dev.toml"] {
            let result = try run([Products.path("batond"), "--check-config", "--config", Products.packageRoot + "/config/" + name])
            #expect(result.status == 0, "\(name): \(result.output)")
            #expect(result.output.contains("OK"))
        }
    }

    @Test func checkConfigNamesFileKeyAndLine() throws {
        let state = TemporaryDirectory("batond")
        let path = state.file("bad.toml")
        try """
            [daemon]
            state_dir = "/tmp/x"

            [agents.web]
            command = ["/bin/web"]
            mode = "fast"
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let result = try run([Products.path("batond"), "--check-config", "--config", path])
        #expect(result.status == 78)
        #expect(result.output.contains("\(path):6: agents.web.mode:"), "got: \(result.output)")
    }

    /// Values that used to trap `--check-config` (overflow, exit 132), pass it and crash
    /// or loop at boot, or get the wrong line: all refused with exit 78 and FILE:LINE: KEY.
    @Test(arguments: [
        ("[agents.web]\ncommand = [\"/bin/web\"]\nready_timeout = \"99999999999999h\"\n", 3, "agents.web.ready_timeout"),
        ("[agents.web]\ncommand = [\"/bin/web\"]\nready_timeout = 9223372036854775807\n", 3, "agents.web.ready_timeout"),
        ("[agents.web]\ncommand = [\"/bin/web\"]\nstop_timeout = \"9999999h\"\n", 3, "agents.web.stop_timeout"),
        ("[agents.web]\ncommand = [\"/bin/web\"]\nready_timeout = \"0s\"\n", 3, "agents.web.ready_timeout"),
        ("[agents.web]\ncommand = [\"/bin/web\"]\nuser = \"baton-no-such-user\"\n", 3, "agents.web.user"),
        ("[daemon]\nsocket = \"/tmp/\(String(repeating: "s", count: 100))\"\n", 2, "daemon.socket"),
        ("[daemon]\r\nstate_dir = \"/tmp/x\"\r\n\r\n[agents.web]\r\ncommand = [\"/bin/web\"]\r\nmode = \"fast\"\r\n", 6, "agents.web.mode"),
    ])
    func checkConfigRefusesWithExit78(_ text: String, _ line: Int, _ key: String) throws {
        let state = TemporaryDirectory("batond")
        let path = state.file("bad.toml")
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        let result = try run([Products.path("batond"), "--check-config", "--config", path])
        #expect(result.status == 78, "got: \(result.output)")
        #expect(result.output.contains("\(path):\(line): \(key):"), "got: \(result.output)")
    }

    @Test func aTooLongSocketOnTheCommandLineIsRefused() throws {
        let result = try run([Products.path("batond"), "--check-config", "--socket", "/tmp/" + String(repeating: "s", count: 100)])
        #expect(result.status == 78)
        #expect(result.output.contains("command line: --socket: the control socket path"), "got: \(result.output)")
    }

    /// A duration that passed the check before crashed batond at boot, after it had spawned
    /// the agent. Now batond refuses to start at all.
    @Test func batondRefusesToStartOnADurationOutOfRange() throws {
        let daemon = try BatondProcess(configText: "[agents.web]\ncommand = [\"/bin/web\"]\nready_timeout = 9223372036854775807\n",
                                       waitReady: false)
        #expect(daemon.waitForExit() == 78, "\(daemon.log)")
        #expect(daemon.log.contains("batond.toml:3: agents.web.ready_timeout: must be between 1s and 24h"), "\(daemon.log)")
    }

    @Test func socketActivationUsesTheInheritedSockets() throws {
        guard let activate = which("systemd-socket-activate") else {
            Issue.record("systemd-socket-activate is not installed; `make test` installs systemd")
            return
        }
        let state = TemporaryDirectory("batond")
        let socketPath = state.file("activated.sock")
        let port = try freePort()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: activate)
        process.arguments = ["-l", "127.0.0.1:\(port)", "-l", socketPath, "--",
                             Products.path("batond"), "--state-dir", state.path, "--log-level", "debug"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        defer {
            if process.isRunning { kill(process.processIdentifier, SIGTERM) }
            process.waitUntilExit()
        }
        // systemd-socket-activate listens before it starts batond; the first connection starts it.
        try waitUntil(timeout: 10) { FileManager.default.fileExists(atPath: socketPath) }
        let endpoint = Endpoint.tcp(host: "127.0.0.1", port: port)
        let health = try endpoint.get("/healthz", timeout: 60)
        #expect(health.status == 200)
        let token = try String(contentsOfFile: state.file("operator.token"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let status = try endpoint.get("/v1/status", token: token)
        let listeners = try #require(try status.json()["listeners"] as? [String])
        #expect(listeners.contains("unix:\(socketPath)"))
        #expect(listeners.contains("127.0.0.1:\(port)"))
        #expect(try Endpoint.unix(path: socketPath).get("/v1/status").status == 200)
        #expect(!FileManager.default.fileExists(atPath: state.file("batond.sock")), "no socket of its own when activated")
    }
}
