import BatonTestSupport
import Foundation
import Glibc
import Testing

/// The real `baton` binary against a real batond running baton-testagent releases.
@Suite("baton CLI", .serialized)
struct CLITests {
    /// A batond with agent `web` running `current`, and the CLI's way to it.
    struct Fixture {
        let agents: TestReleases
        let daemon: BatondProcess

        init(_ releases: [String: [String]], current: String = "1.0", mode: String = "parallel", extraConfig: String = "") throws {
            let state = TemporaryDirectory("cli")
            agents = TestReleases(state: state)
            for (version, switches) in releases { try agents.add(version, switches) }
            try agents.setCurrent(current)
            daemon = try BatondProcess(state: state, configText: agents.config(mode: mode, ready: "10s", stop: "5s", kill: "2s") + extraConfig)
            try eventually {
                let view = try? daemon.endpoint.get("/v1/agents/web", token: daemon.token).json()
                return view?["state"] as? String == "running"
            }
        }

        /// `baton ARGS --socket <batond's socket>`.
        func baton(_ arguments: String..., environment: [String: String] = [:]) throws -> CLI.Result {
            try CLI.run(arguments + ["--socket", daemon.socketPath], environment: environment)
        }

        func running(_ arguments: String...) throws -> RunningCLI {
            try RunningCLI(arguments + ["--socket", daemon.socketPath])
        }

        var tcpURL: String {
            guard case .tcp(let host, let port) = daemon.endpoint else { return "" }
            return "http://\(host):\(port)"
        }
    }

    // MARK: - Reading

    @Test func statusAgentAndDaemonPrintTablesAndTheAPIsJSON() throws {
        let fixture = try Fixture(["1.0": []])
        var checks = SchemaChecks()

        let status = try fixture.baton("status")
        #expect(status.status == 0, "\(status)")
        #expect(status.stdout.contains("AGENT") && status.stdout.contains("RUNNING"), "\(status)")
        let row = try #require(status.stdout.split(separator: "\n").first { $0.hasPrefix("web ") }, "\(status)")
        #expect(row.contains("running") && row.contains("1.0") && row.contains("ok"), "\(row)")
        #expect(!status.stdout.contains("\u{1B}["), "no colour when stdout is not a terminal")
        checks.add("Status", try fixture.baton("status", "--json").stdout)

        let agent = try fixture.baton("agent", "web")
        #expect(agent.status == 0, "\(agent)")
        let pid = try #require(try fixture.daemon.instances().first?["pid"] as? Int)
        #expect(agent.stdout.contains("web.1") && agent.stdout.contains(String(pid)), "\(agent)")
        #expect(agent.stdout.contains("\(fixture.daemon.stateDir)/logs/web.current.log"), "\(agent)")
        checks.add("Agent", try fixture.baton("agent", "web", "--json").stdout)

        let daemon = try fixture.baton("daemon")
        #expect(daemon.status == 0, "\(daemon)")
        #expect(daemon.stdout.contains("pid:") && daemon.stdout.contains(fixture.daemon.stateDir), "\(daemon)")
        checks.add("Daemon", try fixture.baton("daemon", "--json").stdout)

        let version = try fixture.baton("version")
        #expect(version.status == 0 && version.stdout.contains("machine version"), "\(version)")
        checks.add("MachineVersion", try fixture.baton("version", "--json").stdout)

        let releases = try fixture.baton("releases", "web")
        #expect(releases.status == 0 && releases.stdout.contains("1.0") && releases.stdout.contains("current"), "\(releases)")
        checks.add("ReleaseList", try fixture.baton("releases", "web", "--json").stdout)

        let events = try fixture.baton("events")
        #expect(events.status == 0 && events.stdout.contains("daemon.started"), "\(events)")
        checks.add("EventPage", try fixture.baton("events", "--json", "--since", "0").stdout)
        try checks.validate()
    }

    @Test func tcpNeedsTheTokenAndAWrongOneExits5() throws {
        let fixture = try Fixture(["1.0": []])
        let scratch = TemporaryDirectory("token")
        try "not-the-token\n".write(toFile: scratch.file("wrong"), atomically: true, encoding: .utf8)

        let good = try CLI.run(["status", "--url", fixture.tcpURL, "--token-file", fixture.daemon.stateDir + "/operator.token"])
        #expect(good.status == 0 && good.stdout.contains("web"), "\(good)")
        let fromEnvironment = try CLI.run(["status"], environment: ["BATON_URL": fixture.tcpURL,
                                                                   "BATON_TOKEN_FILE": fixture.daemon.stateDir + "/operator.token"])
        #expect(fromEnvironment.status == 0, "\(fromEnvironment)")

        let wrong = try CLI.run(["status", "--url", fixture.tcpURL, "--token-file", scratch.file("wrong")])
        #expect(wrong.status == 5, "\(wrong)")
        #expect(wrong.stderr.contains("refused the credentials") && wrong.stderr.contains("--token-file"), "\(wrong)")
        let missing = try CLI.run(["status", "--url", fixture.tcpURL])
        #expect(missing.status == 5 && missing.stderr.contains("401"), "\(missing)")
        #expect(wrong.stderr.split(separator: "\n").count == 1, "one line, no stack trace: \(wrong)")
    }

    @Test func aDaemonThatIsNotRunningExits6WithOnePlainLine() throws {
        let scratch = TemporaryDirectory("down")
        let missing = try CLI.run(["status", "--socket", scratch.file("batond.sock")])
        #expect(missing.status == 6, "\(missing)")
        #expect(missing.stderr.contains("batond is not running") && missing.stderr.contains("systemctl start batond"), "\(missing)")
        #expect(missing.stderr.split(separator: "\n").count == 1, "\(missing)")
        #expect(missing.stdout.isEmpty)

        // A socket file nobody listens on (batond killed): refused, the same advice.
        let path = scratch.file("stale.sock")
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: Array(path.utf8))
            raw[path.utf8.count] = 0
        }
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        close(fd)
        let stale = try CLI.run(["status", "--socket", path])
        #expect(stale.status == 6 && stale.stderr.contains("batond is not running"), "\(stale)")

        let tcp = try CLI.run(["upgrade", "web", "2.0", "--url", "http://127.0.0.1:1"])
        #expect(tcp.status == 6 && tcp.stderr.contains("nothing answers"), "\(tcp)")
    }

    @Test(.enabled(if: getuid() == 0 && which("setpriv") != nil, "needs root to run baton as another user (setpriv)"))
    func aSocketWithoutPermissionExits5WithItsOwnMessage() throws {
        let fixture = try Fixture(["1.0": []])
        // The state directory is 0700 and the socket 0660, both root's: nobody may connect.
        let result = try run(["/usr/bin/env", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              CLI.path, "status", "--socket", fixture.daemon.socketPath])
        #expect(result.status == 5, "\(result.output)")
        #expect(result.output.contains("no permission to use batond's socket") && result.output.contains("operator group"),
                "\(result.output)")
    }

    @Test func usageErrorsExit64() throws {
        let both = try CLI.run(["status", "--socket", "/x", "--url", "http://127.0.0.1:7070"])
        #expect(both.status == 64, "\(both)")
        let missing = try CLI.run(["upgrade", "web"])
        #expect(missing.status == 64, "\(missing)")
    }

    // MARK: - Handoffs

    @Test func upgradePrintsEachPhaseAsItHappensAndExits0OnCommit() throws {
        // The successor takes 1.5 s to be ready; the old instance then takes 2 s to stop:
        // lines that arrive live come while each of those is still going on.
        let fixture = try Fixture(["1.0": ["--stop-takes", "2"], "2.0": ["--ready-after", "1.5"]])
        let upgrade = try fixture.running("upgrade", "web", "2.0")
        #expect(try upgrade.line(containing: "handoff web-1").contains("1.0 → 2.0"))
        let spawned = try upgrade.line(containing: "spawned")
        #expect(spawned.contains("web.2"), "\(spawned)")
        #expect(!fixture.agents.log().contains { $0.event == "ready" && $0.version == "2.0" },
                "the spawned line came before the successor was ready")
        _ = try upgrade.line(containing: "ready")
        #expect(upgrade.isRunning, "the ready line came before the handoff ended")
        #expect(!fixture.agents.log().contains { $0.event == "stopped" && $0.version == "1.0" },
                "the ready line came while the old instance still worked")
        _ = try upgrade.line(containing: "stopping")
        _ = try upgrade.line(containing: "old stopped")
        _ = try upgrade.line(containing: "go")
        let outcome = try upgrade.line(containing: "committed")
        #expect(outcome.contains("web runs 2.0") && outcome.contains("gap"), "\(outcome)")
        #expect(try upgrade.waitForExit() == 0)

        // The same version again: nothing to hand over, still a success.
        let again = try fixture.baton("upgrade", "web", "2.0")
        #expect(again.status == 0 && again.stdout.contains("already runs 2.0"), "\(again)")

        let history = try fixture.baton("history", "web")
        #expect(history.status == 0, "\(history)")
        let row = try #require(history.stdout.split(separator: "\n").first { $0.hasPrefix("web-1 ") }, "\(history)")
        #expect(row.contains("1.0") && row.contains("2.0") && row.contains("committed") && row.contains("parallel"), "\(row)")
        var checks = SchemaChecks()
        checks.add("HandoffList", try fixture.baton("history", "--json").stdout)
        try checks.validate()
    }

    @Test func aSuccessorThatFailsItsSelfCheckExits2WithTheReasonAndItsOutput() throws {
        let fixture = try Fixture(["1.0": [], "3.0": ["--fail-check"]])
        let result = try fixture.baton("upgrade", "web", "3.0")
        #expect(result.status == 2, "\(result)")
        #expect(result.stdout.contains("failed") && result.stdout.contains("self-check failed (--fail-check)"), "\(result)")
        #expect(result.stdout.contains("web stays on 1.0"), "\(result)")
        #expect(result.stdout.contains("output of the failed successor web.2"), "\(result)")
        #expect(result.stdout.contains("\(fixture.daemon.stateDir)/logs/web.2.log"), "\(result)")

        var checks = SchemaChecks()
        let json = try fixture.baton("upgrade", "web", "3.0", "--json")
        #expect(json.status == 2, "\(json)")
        checks.add("Handoff", json.stdout)
        try checks.validate()
    }

    @Test func aSequentialHandoffThatFallsBackExits3() throws {
        let fixture = try Fixture(["1.0": [], "2.0": ["--exit-before-ready"]], mode: "sequential")
        let result = try fixture.baton("upgrade", "web", "2.0")
        #expect(result.status == 3, "\(result)")
        #expect(result.stdout.contains("reverted") && result.stdout.contains("web runs 1.0 again"), "\(result)")
        #expect(result.stdout.contains("boom: exiting before ready"), "the failed successor's stderr: \(result)")
    }

    @Test func aRefusalExits4WithBatondsReason() throws {
        let fixture = try Fixture(["1.0": []])
        let result = try fixture.baton("upgrade", "web", "9.9")
        #expect(result.status == 4, "\(result)")
        #expect(result.stderr.contains("release_not_found"), "\(result)")
        let rollback = try fixture.baton("rollback", "web")
        #expect(rollback.status == 4 && rollback.stderr.contains("no_previous_release"), "\(rollback)")
    }

    /// A binary whose `--self-check` refuses: stored, never run; batond stays as it was.
    @Test func aDaemonUpgradeWhoseSelfCheckRefusesExits2AndChangesNothing() throws {
        let fixture = try Fixture(["1.0": []])
        let before = try fixture.daemon.endpoint.get("/v1/daemon", token: fixture.daemon.token).json()
        let binary = fixture.daemon.state.file("batond-broken")
        try "#!/bin/sh\necho \"not fit for $*\" >&2\nexit 1\n".write(toFile: binary, atomically: true, encoding: .utf8)
        let result = try fixture.baton("daemon", "upgrade", binary)
        #expect(result.status == 2, "\(result)")
        #expect(result.stdout.contains("stored batond"), "\(result)")
        #expect(result.stderr.contains("not fit for") && result.stderr.split(separator: "\n").count <= 3, "\(result)")
        let after = try fixture.daemon.endpoint.get("/v1/daemon", token: fixture.daemon.token).json()
        #expect(after["pid"] as? Int == before["pid"] as? Int && after["sha256"] as? String == before["sha256"] as? String)
        #expect((after["last_upgrade"] as? [String: Any])?["outcome"] as? String == "failed", "\(after)")
    }

    @Test func rollbackAndNoWait() throws {
        let fixture = try Fixture(["1.0": [], "2.0": []])
        let began = try fixture.baton("upgrade", "web", "2.0", "--no-wait", "--json")
        #expect(began.status == 0, "\(began)")
        var checks = SchemaChecks()
        checks.add("Handoff", began.stdout)
        try eventually {
            (try? fixture.daemon.endpoint.get("/v1/handoffs/web-1", token: fixture.daemon.token).json()["outcome"] as? String) == "committed"
        }
        let rollback = try fixture.baton("rollback", "web")
        #expect(rollback.status == 0, "\(rollback)")
        #expect(rollback.stdout.contains("2.0 → 1.0") && rollback.stdout.contains("committed"), "\(rollback)")
        try checks.validate()
    }

    // MARK: - Following

    @Test func eventsFollowReceivesALiveEvent() throws {
        let fixture = try Fixture(["1.0": [], "2.0": []])
        let follow = try fixture.running("events", "--follow", "--agent", "web")
        // The last records first (as tail -f), then the live ones.
        _ = try follow.line(containing: "instance.spawned")
        let socket = fixture.daemon.socketPath
        let began = inBackground { try CLI.run(["upgrade", "web", "2.0", "--no-wait", "--socket", socket]) }
        let line = try follow.line(containing: "handoff.began")
        #expect(line.contains("handoff=web-1") && line.contains("to=2.0"), "\(line)")
        _ = try follow.line(containing: "handoff.ended")
        #expect(try began.wait().status == 0)
        #expect(follow.isRunning)
    }

    @Test func logsPrintsAndFollowsTheWorkingInstance() throws {
        let fixture = try Fixture(["1.0": ["--log-every", "0.1"], "2.0": ["--log-every", "0.1"]])
        try eventually { ((try? fixture.baton("logs", "web").stdout) ?? "").contains("web.1") }
        let follow = try fixture.running("logs", "web", "-f", "-n", "1")
        _ = try follow.line(containing: "web.1")
        #expect(try fixture.baton("upgrade", "web", "2.0").status == 0)
        // After the handoff, the link moves to the successor's log and -f with it.
        _ = try follow.line(containing: "web.2.log")
        _ = try follow.line(containing: "web.2")
    }

    @Test func uiPrintsAOneTimeLinkThatLogsInOnce() throws {
        let fixture = try Fixture(["1.0": []])
        let result = try fixture.baton("ui")
        #expect(result.status == 0, "\(result)")
        let link = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(link.hasPrefix(fixture.tcpURL + "/ui/login?code="), "\(link)")
        #expect(!link.contains(fixture.daemon.token), "the link never carries the operator token")
        let path = String(link.dropFirst(fixture.tcpURL.count))
        let first = try fixture.daemon.endpoint.get(path)
        #expect(first.status == 303 && first.header("Set-Cookie") != nil, "\(first.status) \(first.text)")
        #expect(try fixture.daemon.endpoint.get(path).status != 303, "the code is spent by the first visit")

        var checks = SchemaChecks()
        checks.add("UILink", try fixture.baton("ui", "--json").stdout)
        try checks.validate()
    }

    // MARK: - Releases and the machine's version

    @Test(.enabled(if: which("openssl") != nil, "needs openssl to make an Ed25519 key"))
    func pushSignsWithAnOpenSSLKey() throws {
        let keys = TemporaryDirectory("keys")
        let pem = keys.file("key.pem")
        #expect(try run(["/usr/bin/env", "openssl", "genpkey", "-algorithm", "ed25519", "-out", pem]).status == 0)
        let der = keys.file("public.der")
        #expect(try run(["/usr/bin/env", "openssl", "pkey", "-in", pem, "-pubout", "-outform", "DER", "-out", der]).status == 0)
        let publicKey = try #require(FileManager.default.contents(atPath: der)).suffix(32).base64EncodedString()
        let fixture = try Fixture(["1.0": []], extraConfig: "\n[releases]\nrequire_signature = true\n[releases.trusted_keys]\nci = \"\(publicKey)\"\n")
        let file = keys.file("agent")
        try "#!/bin/sh\nexec sleep 1000\n".write(toFile: file, atomically: true, encoding: .utf8)

        let unsigned = try fixture.baton("push", "web", "2.0", file)
        #expect(unsigned.status == 4 && unsigned.stderr.contains("signature_required"), "\(unsigned)")
        let signed = try fixture.baton("push", "web", "2.0", file, "--sign", pem)
        #expect(signed.status == 0 && signed.stdout.contains("signed by ci"), "\(signed)")
    }

    @Test func pushFetchAndMachineVersion() throws {
        let fixture = try Fixture(["1.0": []])
        let scratch = TemporaryDirectory("push")
        // An archive with bin/agent, as the agent's command wants it.
        try FileManager.default.createDirectory(atPath: scratch.file("tree/bin"), withIntermediateDirectories: true)
        let script = "#!/bin/sh\nexec '\(Products.path("baton-testagent"))' \"$@\"\n"
        try script.write(toFile: scratch.file("tree/bin/agent"), atomically: true, encoding: .utf8)
        chmod(scratch.file("tree/bin/agent"), 0o755)
        let archive = scratch.file("web-4.0.tar.gz")
        #expect(try run(["/bin/tar", "-czf", archive, "-C", scratch.file("tree"), "bin"]).status == 0)
        var checks = SchemaChecks()

        let push = try fixture.baton("push", "web", "4.0", archive)
        #expect(push.status == 0 && push.stdout.contains("stored: web 4.0"), "\(push)")
        #expect(!push.stderr.contains("["), "no progress bar when stderr is not a terminal: \(push)")
        let again = try fixture.baton("push", "web", "4.0", archive, "--json")
        #expect(again.status == 0 && again.stdout.contains("\"version\":\"4.0\""), "\(again)")
        checks.add("Release", again.stdout)
        let conflict = try fixture.baton("push", "web", "1.0", scratch.file("tree/bin/agent"))
        #expect(conflict.status == 4, "\(conflict)")

        let server = try StaticHTTPServer()
        defer { server.close() }
        server.route("/web-5.0", .file(archive))
        let digest = try run(["/usr/bin/sha256sum", archive]).output.prefix(64)
        let fetch = try fixture.baton("fetch", "web", "5.0", "--from", server.url("/web-5.0"), "--sha256", String(digest), "--json")
        #expect(fetch.status == 0, "\(fetch)")
        checks.add("Release", fetch.stdout)
        let bad = try fixture.baton("fetch", "web", "6.0", "--from", server.url("/web-5.0"), "--sha256", String(repeating: "0", count: 64))
        #expect(bad.status == 2 && bad.stderr.contains("failed"), "\(bad)")

        let set = try fixture.baton("version", "set", "4.0")
        #expect(set.status == 0, "\(set)")
        #expect(set.stdout.contains("web: ") && set.stdout.contains("done"), "\(set)")
        checks.add("MachineVersion", try fixture.baton("version", "--json").stdout)
        try checks.validate()
    }
}
