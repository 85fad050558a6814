import BatonConfig
import BatonCore
import BatonTestSupport
import Foundation
import Testing

@Suite("configuration")
struct ConfigTests {
    /// Users and groups as the tests' machine would have them: these names only.
    static let accounts = Accounts(userID: { ["root": 0, "web": 1000][$0] }, groupExists: { ["web", "ops", "baton", "root"].contains($0) })

    func parse(_ text: String, accounts: Accounts = Self.accounts) throws(ConfigError) -> BatondConfig {
        try BatondConfig.parse(text, file: "test.toml", workingDirectory: "/srv", accounts: accounts)
    }

    func error(_ text: String, accounts: Accounts = Self.accounts) -> ConfigError? {
        do { _ = try parse(text, accounts: accounts); return nil } catch { return error }
    }

    /// `external = true`: no command needed, the rest of the table as for any agent.
    @Test func anExternalAgentNeedsNoCommand() throws {
        let config = try parse("[agents.web]\nexternal = true\nregistration_token = \"\(String(repeating: "t", count: 32))\"\nstop_timeout = \"5s\"\n")
        let web = try #require(config.agents.first)
        #expect(web.external && web.command.isEmpty)
        #expect(web.stopTimeout == .seconds(5) && web.registrationToken?.count == 32)
        #expect(web.view.external)
        let plain = try parse("[agents.web]\nexternal = false\ncommand = [\"/x\"]\n")
        #expect(plain.agents.first?.external == false)
    }

    @Test func theBundledConfigsLoad() throws {
        for name in ["batond.toml", "dev.toml"] {
            let config = try BatondConfig.load(path: Products.packageRoot + "/config/" + name, workingDirectory: "/srv", accounts: Self.accounts)
            #expect(!config.agents.isEmpty, "\(name) declares an agent")
        }
        let dev = try BatondConfig.load(path: Products.packageRoot + "/config/dev.toml", workingDirectory: "/repo", accounts: Self.accounts)
        #expect(dev.stateDir == "/repo/.baton")
        #expect(dev.socketPath == "/repo/.baton/batond.sock")
        #expect(dev.listen == ListenAddress("127.0.0.1:7070"))
        #expect(dev.agents.map(\.name) == ["demo", "web"])
    }

    @Test func defaultsWhenEmpty() throws {
        let config = try parse("")
        #expect(config.stateDir == "/var/lib/baton")
        #expect(config.socketPath == "/var/lib/baton/batond.sock")
        #expect(config.agentSocketPath == "/var/lib/baton/agent.sock")
        #expect(config.http.requestHeadTimeout == .seconds(10))
        #expect(config.http.requestBodyTimeout == .seconds(30))
        #expect(config.http.maxEventWaiters == 100)
        #expect(config.http.maxEventStreams == 500, "half of max_connections, below the default 2000")
        #expect(config.http.eventStreamKeepalive == .seconds(15))
        #expect(config.listen == nil)
        #expect(config.http.maxBodyBytes == 1 << 20)
        #expect(config.http.maxWait == .seconds(300))
        #expect(config.logs.maxBytes == 1 << 20)
        #expect(config.logs.checkInterval == .seconds(1))
        #expect(config.agents.isEmpty)
    }

    @Test func everyKeyIsRead() throws {
        let config = try parse("""
            [daemon]
            state_dir = "state"
            socket = "/run/b.sock"
            agent_socket = "agents.sock"
            listen = "127.0.0.1:0"
            log_level = "debug"
            operator_group = "ops"

            [http]
            max_connections = 50
            connection_timeout = "5s"
            request_head_timeout = "500ms"
            request_body_timeout = "1m"
            agent_max_connections = 64
            agent_connections_per_peer = 4
            max_event_waiters = 20
            max_event_streams = 30
            event_stream_keepalive = "250ms"
            max_body_bytes = 4096
            max_wait = "2m"
            probes_open = false

            [ledger]
            snapshot_every = 100
            retain_records = 200

            [logs]
            max_bytes = 65536
            check_interval = "250ms"

            [agents.web]
            command = ["{release}/bin/web", "--port", "80"]
            env = { MODE = "prod" }
            mode = "sequential"
            ready_timeout = "1500ms"
            stop_timeout = 20
            kill_timeout = "1h"
            user = "web"
            group = "web"
            readiness = { http = "http://127.0.0.1:8080/ready" }
            registration_token = "0123456789abcdef0123456789abcdef"

            [agents.cron]
            command = ["/usr/bin/cron-agent"]
            readiness = { command = ["/bin/true"] }
            """)
        #expect(config.stateDir == "/srv/state")
        #expect(config.socket == "/run/b.sock")
        #expect(config.agentSocketPath == "/srv/agents.sock")
        #expect(config.listen?.port == 0)
        #expect(config.logLevel == .debug)
        #expect(config.operatorGroup == "ops")
        #expect(config.http.maxConnections == 50)
        #expect(config.http.connectionTimeout == .seconds(5))
        #expect(config.http.requestHeadTimeout == .milliseconds(500))
        #expect(config.http.requestBodyTimeout == .seconds(60))
        #expect(config.http.agentMaxConnections == 64)
        #expect(config.http.agentConnectionsPerPeer == 4)
        #expect(config.http.maxEventWaiters == 20)
        #expect(config.http.maxEventStreams == 30)
        #expect(config.http.eventStreamKeepalive == .milliseconds(250))
        #expect(config.http.maxBodyBytes == 4096)
        #expect(config.http.maxWait == .seconds(120))
        #expect(config.http.probesOpen == false)
        #expect(config.ledger.snapshotEvery == 100)
        #expect(config.ledger.retainRecords == 200)
        #expect(config.logs.maxBytes == 65536)
        #expect(config.logs.checkInterval == .milliseconds(250))
        #expect(config.agents.map(\.name) == ["cron", "web"])
        let web = try #require(config.agents.last)
        #expect(web.command == ["{release}/bin/web", "--port", "80"])
        #expect(web.env == ["MODE": "prod"])
        #expect(web.mode == .sequential)
        #expect(web.readyTimeout == .milliseconds(1500))
        #expect(web.stopTimeout == .seconds(20))
        #expect(web.killTimeout == .seconds(3600))
        #expect(web.user == "web")
        #expect(web.readiness == .http("http://127.0.0.1:8080/ready"))
        #expect(config.agents.first?.readiness == .command(["/bin/true"]))
    }

    /// Each bad value names the key and the line it is on.
    @Test(arguments: [
        ("[daemon]\nlog_level = \"loud\"\n", "daemon.log_level", 2),
        ("[daemon]\nlisten = \"0.0.0.0:80\"\n", "daemon.listen", 2),
        ("[daemon]\nlisten = \"nonsense\"\n", "daemon.listen", 2),
        ("[daemon]\nstate_dir = 5\n", "daemon.state_dir", 2),
        ("[daemon]\nstat_dir = \"/x\"\n", "daemon.stat_dir", 2),
        ("[htp]\n", "htp", 1),
        ("\n[http]\nmax_body_bytes = 10\n", "http.max_body_bytes", 3),
        ("[http]\nmax_wait = \"forever\"\n", "http.max_wait", 2),
        ("[http]\nrequest_head_timeout = \"50ms\"\n", "http.request_head_timeout", 2),
        ("[http]\nrequest_body_timeout = \"2h\"\n", "http.request_body_timeout", 2),
        ("[http]\nagent_connections_per_peer = 0\n", "http.agent_connections_per_peer", 2),
        ("[http]\nmax_connections = 10\nmax_event_waiters = 10\n", "http.max_event_waiters", 3),
        ("[http]\nmax_connections = 10\nmax_event_streams = 10\n", "http.max_event_streams", 3),
        ("[http]\nevent_stream_keepalive = \"10ms\"\n", "http.event_stream_keepalive", 2),
        ("[agents.web]\nmode = \"parallel\"\n", "agents.web.command", 1),
        ("[agents.web]\ncommand = []\n", "agents.web.command", 2),
        ("[agents.web]\ncommand = [\"/x\"]\n\nmode = \"fast\"\n", "agents.web.mode", 4),
        ("[agents.Web]\ncommand = [\"/x\"]\n", "agents.Web", 1),
        ("[agents.web]\ncommand = [\"/x\"]\nenv = { BATON_TOKEN = \"x\" }\n", "agents.web.env.BATON_TOKEN", 3),
        ("[agents.web]\ncommand = [\"/x\"]\nreadiness = { command = [\"/a\"], http = \"http://x\" }\n", "agents.web.readiness", 3),
        ("[agents.web]\ncommand = [\"/x\"]\nregistration_token = \"short\"\n", "agents.web.registration_token", 3),
        ("[agents.web]\ncommand = [\"/x\"]\nready_timeout = \"-5s\"\n", "agents.web.ready_timeout", 3),
        ("\n\n[agents.\"a/../b\"]\ncommand = [\"/x\"]\n", "agents.\"a/../b\"", 3),
        ("[agents.\"unit.db\"]\ncommand = [\"/x\"]\nmode = \"fast\"\n[agents.unit]\ncommand = [\"/y\"]\n", "agents.\"unit.db\".mode", 3),
        ("[agents]\nweb.command = [\"/x\"]\nweb.mode = \"fast\"\n", "agents.web.mode", 3),
        // An external agent starts elsewhere: what only a process batond starts uses is refused.
        ("[agents.web]\nexternal = true\ncommand = [\"/x\"]\n", "agents.web.command", 3),
        ("[agents.web]\nexternal = true\n\nreadiness = { http = \"http://x\" }\n", "agents.web.readiness", 4),
        ("[agents.web]\nexternal = true\nuser = \"web\"\n", "agents.web.user", 3),
        ("[agents.web]\nexternal = true\ninherit_env = [\"TZ\"]\n", "agents.web.inherit_env", 3),
        ("[agents.web]\nexternal = true\n[agents.web.env]\nA = \"1\"\n", "agents.web.env", 3),
        ("[agents.web]\nexternal = \"yes\"\n", "agents.web.external", 2),
    ])
    func badValuesNameKeyAndLine(_ text: String, _ key: String, _ line: Int) throws {
        // The same lines whether the file ends its lines with LF or, as TOML allows, CRLF.
        for text in [text, text.replacingOccurrences(of: "\n", with: "\r\n")] {
            let failure = try #require(error(text))
            #expect(failure.key == key)
            #expect(failure.line == line, "\(text.contains("\r\n") ? "CRLF" : "LF"): \(failure)")
            #expect(failure.description.hasPrefix("test.toml:\(line): \(key): "))
        }
    }

    /// `listen`: addresses, or tables with a name, backlog and a Unix socket's mode and owner.
    @Test func listeningSocketsAreRead() throws {
        let config = try parse("""
            [agents.web]
            command = ["/x"]
            listen = ["tcp://0.0.0.0:8080", "tcp://[::1]:0", "tcp://[::1]:0",
                      { address = "unix:/run/web.sock", name = "admin", backlog = 128, mode = "0660", owner = "web", group = "ops" }]
            """)
        let sockets = try #require(config.agents.first?.listen)
        #expect(sockets.map(\.address) == [.tcp(host: "0.0.0.0", port: 8080), .tcp(host: "::1", port: 0), .tcp(host: "::1", port: 0),
                                          .unix(path: "/run/web.sock")])
        #expect(sockets.map(\.name) == ["web", "web", "web", "admin"], "named after the agent unless named")
        #expect(sockets.map(\.backlog) == [4096, 4096, 4096, 128])
        #expect(sockets[3].mode == 0o660 && sockets[3].owner == "web" && sockets[3].group == "ops")
        #expect(sockets[0].mode == 0o666)
        #expect(try parse("[agents.web]\ncommand = [\"/x\"]\n").agents.first?.listen == [])
    }

    @Test(arguments: [
        (#"listen = "tcp://127.0.0.1:80""#, "must be an array"),
        (#"listen = ["127.0.0.1:80"]"#, #"entry 1: "127.0.0.1:80" is not "tcp://HOST:PORT""#),
        (#"listen = ["tcp://localhost:80"]"#, "(a numeric host)"),
        (#"listen = ["tcp://127.0.0.1:65536"]"#, "is not"),
        (#"listen = ["unix:relative.sock"]"#, "unix:/absolute/path"),
        (#"listen = ["tcp://127.0.0.1:80", "tcp://127.0.0.1:80"]"#, "entry 2: tcp://127.0.0.1:80 is listed twice"),
        (#"listen = [{ address = "tcp://127.0.0.1:80", mode = "0600" }]"#, "mode only apply to unix: sockets"),
        (#"listen = [{ address = "unix:/run/a.sock", mode = "rw" }]"#, "mode must be an octal string"),
        (#"listen = [{ address = "unix:/run/a.sock", owner = "nobody-here" }]"#, "owner: no such user"),
        (#"listen = [{ address = "unix:/run/a.sock", name = "a:b" }]"#, "name must be 1 to 255 letters"),
        (#"listen = [{ address = "unix:/run/a.sock", backlog = 0 }]"#, "backlog must be an integer between 1 and 65535"),
        (#"listen = [{ address = "unix:/run/a.sock", port = 1 }]"#, "unknown key port"),
        (#"listen = [{ name = "x" }]"#, "needs address"),
        (#"listen = [8080]"#, "must be an address string or a table"),
    ])
    func badListeningSocketsAreRefusedWithTheKeyAndLine(_ line: String, _ message: String) throws {
        let failure = try #require(error("[agents.web]\ncommand = [\"/x\"]\n\(line)\n"))
        #expect(failure.description.hasPrefix("test.toml:3: agents.web.listen: "), "\(failure)")
        #expect(failure.description.contains(message), "\(failure)")
    }

    @Test func twoAgentsCannotListenOnOneAddress() throws {
        let failure = try #require(error("""
            [agents.a]
            command = ["/x"]
            listen = ["tcp://127.0.0.1:80"]
            [agents.b]
            command = ["/x"]
            listen = [{ address = "tcp://127.0.0.1:80" }]
            """))
        #expect(failure.description == "test.toml:6: agents.b.listen: tcp://127.0.0.1:80 is agent a's already", "\(failure)")
        let external = try #require(error("[agents.a]\nexternal = true\nlisten = [\"tcp://127.0.0.1:80\"]\n"))
        #expect(external.description.contains("agents.a.listen: is for agents batond starts"), "\(external)")
    }

    /// Every duration has a range; values past it, however large, are refused with the
    /// key and line (they used to trap on overflow, or pass and trap later in batond).
    @Test(arguments: [
        ("ready_timeout = \"99999999999999h\"", "agents.web.ready_timeout", "between 1s and 24h"),
        ("ready_timeout = \"99999999999999999999999ms\"", "agents.web.ready_timeout", "between 1s and 24h"),
        ("ready_timeout = 9223372036854775807", "agents.web.ready_timeout", "between 1s and 24h, not 9223372036854775807"),
        ("ready_timeout = \"0s\"", "agents.web.ready_timeout", "between 1s and 24h, not \"0s\""),
        ("ready_timeout = \"25h\"", "agents.web.ready_timeout", "between 1s and 24h"),
        ("stop_timeout = 9223372036854775807", "agents.web.stop_timeout", "between 100ms and 1h"),
        ("stop_timeout = \"99ms\"", "agents.web.stop_timeout", "between 100ms and 1h"),
        ("kill_timeout = \"2562047788015215h\"", "agents.web.kill_timeout", "between 100ms and 1h"),
        ("kill_timeout = 0", "agents.web.kill_timeout", "between 100ms and 1h"),
        ("restart_backoff = \"99ms\"", "agents.web.restart_backoff", "between 100ms and 1h"),
        ("restart_backoff_max = \"2h\"", "agents.web.restart_backoff_max", "between 100ms and 1h"),
        ("crash_loop_window = \"0s\"", "agents.web.crash_loop_window", "between 1s and 24h"),
        ("crash_loop_window = 9223372036854775807", "agents.web.crash_loop_window", "between 1s and 24h"),
        ("crash_loop_exits = -1", "agents.web.crash_loop_exits", "between 0 and 1000, not -1"),
        ("crash_loop_exits = \"5\"", "agents.web.crash_loop_exits", "an integer"),
    ])
    func agentDurationsHaveRanges(_ line: String, _ key: String, _ message: String) throws {
        let failure = try #require(error("[agents.web]\ncommand = [\"/x\"]\n\(line)\n"))
        #expect(failure.description.hasPrefix("test.toml:3: \(key): must be \(message)"), "\(failure)")
    }

    @Test(arguments: [
        ("connection_timeout = \"0s\"", "http.connection_timeout", "between 1s and 1h"),
        ("connection_timeout = \"500ms\"", "http.connection_timeout", "between 1s and 1h"),
        ("connection_timeout = 9223372036854775807", "http.connection_timeout", "between 1s and 1h"),
        ("max_wait = \"0s\"", "http.max_wait", "between 1s and 1h"),
        ("max_wait = \"9999999999999999m\"", "http.max_wait", "between 1s and 1h"),
        ("max_connections = 0", "http.max_connections", "between 1 and 1000000"),
        ("max_body_bytes = 9223372036854775807", "http.max_body_bytes", "between 1024 and 67108864"),
    ])
    func httpLimitsHaveRanges(_ line: String, _ key: String, _ message: String) throws {
        let failure = try #require(error("[http]\n\(line)\n"))
        #expect(failure.description.hasPrefix("test.toml:2: \(key): must be \(message)"), "\(failure)")
    }

    @Test(arguments: [("snapshot_every = 9", "ledger.snapshot_every"), ("retain_records = 1000001", "ledger.retain_records")])
    func ledgerCountsHaveRanges(_ line: String, _ key: String) throws {
        let failure = try #require(error("[ledger]\n\(line)\n"))
        #expect(failure.description.hasPrefix("test.toml:2: \(key): must be between "), "\(failure)")
    }

    @Test(arguments: [("max_bytes = 4095", "logs.max_bytes"), ("max_bytes = 1073741825", "logs.max_bytes"),
                      ("check_interval = \"99ms\"", "logs.check_interval"), ("check_interval = \"2h\"", "logs.check_interval")])
    func logLimitsHaveRanges(_ line: String, _ key: String) throws {
        let failure = try #require(error("[logs]\n\(line)\n"))
        #expect(failure.description.hasPrefix("test.toml:2: \(key): must be between "), "\(failure)")
    }

    @Test func releaseSettingsAndTrustedKeysAreRead() throws {
        let key = String(repeating: "A", count: 43) + "="
        let config = try parse("""
            [releases]
            keep_releases = 3
            require_signature = true
            max_bytes = 1000
            max_unpacked_bytes = 2000
            max_files = 10
            free_space_margin = 0
            fetch_timeout = "2m"
            fetch_stall_timeout = "500ms"
            [releases.trusted_keys]
            ci = "\(key)"
            """)
        #expect(config.releases.keepReleases == 3 && config.releases.requireSignature)
        #expect(config.releases.maxBytes == 1000 && config.releases.maxUnpackedBytes == 2000 && config.releases.maxFiles == 10)
        #expect(config.releases.freeSpaceMargin == 0)
        #expect(config.releases.fetchTimeout == .seconds(120) && config.releases.fetchStallTimeout == .milliseconds(500))
        #expect(config.releases.trustedKeys["ci"] == [UInt8](repeating: 0, count: 32))
    }

    @Test(arguments: [
        ("[releases]\nrequire_signature = true\n", "test.toml:2: releases.require_signature: is true, but [releases.trusted_keys] names no key"),
        ("[releases.trusted_keys]\nci = \"c2hvcnQ=\"\n", "test.toml:2: releases.trusted_keys.ci: must be the base64 of a 32-byte Ed25519 public key"),
        ("[releases]\nkeep_releases = -1\n", "test.toml:2: releases.keep_releases: must be between 0 and 10000"),
        ("[releases]\nkeep = 3\n", "test.toml:2: releases.keep: unknown key"),
    ])
    func releaseSettingsAreChecked(_ text: String, _ message: String) throws {
        let failure = try #require(error(text))
        #expect(failure.description.hasPrefix(message), "\(failure)")
    }

    @Test func theRangesBoundsAreAccepted() throws {
        let config = try parse("""
            [http]
            connection_timeout = "1h"
            max_wait = 1
            [agents.web]
            command = ["/x"]
            ready_timeout = "24h"
            stop_timeout = "100ms"
            kill_timeout = 3600
            """)
        #expect(config.http.connectionTimeout == .seconds(3600))
        #expect(config.agents.first?.readyTimeout == .seconds(86400))
        #expect(config.agents.first?.stopTimeout == .milliseconds(100))
    }

    /// Users and groups are looked up when the file is read (the system's databases
    /// here): a name that does not exist is refused at once, not at every spawn.
    @Test(arguments: [
        ("[agents.web]\ncommand = [\"/x\"]\nuser = \"baton-no-such-user\"\n", "agents.web.user", 3),
        ("[agents.web]\ncommand = [\"/x\"]\n\ngroup = \"baton-no-such-group\"\n", "agents.web.group", 4),
        ("[daemon]\noperator_group = \"baton-no-such-group\"\n", "daemon.operator_group", 2),
        ("[agents.web]\ncommand = [\"/x\"]\ntcp_registration_uids = [\"0\", \"baton-no-such-user\"]\n", "agents.web.tcp_registration_uids", 3),
    ])
    func unknownUsersAndGroupsAreRefused(_ text: String, _ key: String, _ line: Int) throws {
        let failure = try #require(error(text, accounts: .system))
        #expect(failure.description.hasPrefix("test.toml:\(line): \(key): no "), "\(failure)")
    }

    /// Restarts back off 1 s doubling to 60 s, and 5 abnormal exits within 5 min are a
    /// crash loop, unless the agent's table says otherwise.
    @Test func backoffAndCrashLoopKnobs() throws {
        let plain = try #require(try parse("[agents.a]\ncommand = [\"/x\"]\n").agents.first)
        #expect(plain.restartBackoff == .seconds(1) && plain.restartBackoffMax == .seconds(60))
        #expect(plain.crashLoopExits == 5 && plain.crashLoopWindow == .seconds(300))
        let set = try #require(try parse("""
            [agents.a]
            command = ["/x"]
            restart_backoff = "100ms"
            restart_backoff_max = "2s"
            crash_loop_exits = 0
            crash_loop_window = "30s"
            """).agents.first)
        #expect(set.restartBackoff == .milliseconds(100) && set.restartBackoffMax == .seconds(2))
        #expect(set.crashLoopExits == 0 && set.crashLoopWindow == .seconds(30))
        // A first wait above the default max raises the max; a max below the first is refused.
        let raised = try #require(try parse("[agents.a]\ncommand = [\"/x\"]\nrestart_backoff = \"2m\"\n").agents.first)
        #expect(raised.restartBackoffMax == .seconds(120))
        let failure = error("[agents.a]\ncommand = [\"/x\"]\nrestart_backoff = \"5s\"\nrestart_backoff_max = \"2s\"\n")
        #expect(failure?.description == "test.toml:4: agents.a.restart_backoff_max: must not be below restart_backoff (5s)",
                "\(String(describing: failure))")
    }

    @Test func registeredInstancesAreLeftAloneAndTCPRegistrationIsOffByDefault() throws {
        let plain = try #require(try parse("[agents.a]\ncommand = [\"/x\"]\n").agents.first)
        #expect(plain.tcpRegistrationUIDs.isEmpty)
        #expect(!plain.stopRegisteredOnExit)
        let set = try #require(try parse("""
            [agents.a]
            command = ["/x"]
            tcp_registration_uids = ["web", "4242"]
            stop_registered_on_exit = true
            """).agents.first)
        #expect(set.tcpRegistrationUIDs == [1000, 4242])
        #expect(set.stopRegisteredOnExit)
    }

    @Test func inheritedVariablesAreNamedAndNeverBatonsOwn() throws {
        let agent = try #require(try parse("[agents.a]\ncommand = [\"/x\"]\ninherit_env = [\"HTTP_PROXY\", \"TZ\"]\n").agents.first)
        #expect(agent.inheritEnv == ["HTTP_PROXY", "TZ"])
        for bad in ["BATON_TOKEN", "A=B", ""] {
            let failure = error("[agents.a]\ncommand = [\"/x\"]\ninherit_env = [\"\(bad)\"]\n")
            #expect(failure?.description.hasPrefix("test.toml:3: agents.a.inherit_env: ") == true, "\(String(describing: failure))")
        }
    }

    @Test func existingAndNumericUsersAndGroupsAreAccepted() throws {
        let config = try parse("[agents.a]\ncommand = [\"/x\"]\nuser = \"root\"\ngroup = \"root\"\n[agents.b]\ncommand = [\"/x\"]\nuser = \"64000\"\ngroup = \"64000\"\n",
                               accounts: .system)
        #expect(config.agents.map(\.user) == ["root", "64000"])
    }

    /// The socket is bound as `<path>.<pid>.tmp` first: the path must leave room for that
    /// in sockaddr_un's 108 bytes, whether it is set or derived from state_dir.
    @Test func aSocketPathTooLongForSockaddrUnIsRefused() throws {
        let longest = "/" + String(repeating: "s", count: BatondConfig.maxSocketPathBytes - 1)
        #expect(try parse("[daemon]\nsocket = \"\(longest)\"\n").socketPath == longest)
        let socket = try #require(error("[daemon]\n\nsocket = \"\(longest)s\"\n"))
        #expect(socket.description.hasPrefix("test.toml:3: daemon.socket: the control socket path \(longest)s is 96 bytes"), "\(socket)")
        // Derived: <state_dir>/batond.sock, 12 bytes more than the directory.
        let directory = "/" + String(repeating: "d", count: BatondConfig.maxSocketPathBytes - 12)
        let state = try #require(error("[daemon]\nstate_dir = \"\(directory)\"\n"))
        #expect(state.description.hasPrefix("test.toml:2: daemon.state_dir: the control socket path \(directory)/batond.sock is 96 bytes"), "\(state)")
        // Relative paths count once resolved against the working directory (/srv/ here).
        let relative = try #require(error("[daemon]\nsocket = \"\(String(repeating: "r", count: BatondConfig.maxSocketPathBytes - 4))\"\n"))
        #expect(relative.key == "daemon.socket")
    }

    @Test func syntaxErrorsCarryLineAndColumn() throws {
        let failure = try #require(error("[daemon]\nstate_dir = \"unterminated\n"))
        #expect(failure.line == 2)
        #expect(failure.column != nil)
        #expect(failure.description.hasPrefix("test.toml:2:"))
    }

    @Test func anUnreadableFileIsNamed() {
        #expect {
            _ = try BatondConfig.load(path: "/nonexistent/batond.toml")
        } throws: { error in
            (error as? ConfigError)?.description.hasPrefix("/nonexistent/batond.toml: ") == true
        }
    }

    /// toml++ asserts (an abort in debug builds) on a table header whose key starts with
    /// anything but a bare key character or a quote; batond refuses the file with its line
    /// instead. Found by `make fuzz` (Tests/Fuzz/crashes/config).
    @Test(arguments: ["[.a]", "[ =]", "[#]", "[\u{1e}nal]", "[[é]]", "[\u{7f}]", "\u{FEFF}[= 1]", "a = 1\n\n  [ .web]"])
    func aTableHeaderWithoutAKeyIsRefused(_ header: String) {
        let failure = error(header + "\n")
        #expect(failure?.message.hasPrefix("a table header must start with a key") == true, "\(String(describing: failure))")
        #expect(failure?.line == (header.hasPrefix("a = 1") ? 3 : 1))
    }

    /// toml++ asserts on a date whose `T` has no time after it; refused with its line.
    @Test(arguments: ["listen = 1979-05-27T!07", "command = [1979-05-27t]", "command = [1, 1979-05-27T]"])
    func aDateWithoutItsTimeIsRefused(_ text: String) {
        let failure = error("[agents.web]\n" + text + "\n")
        #expect(failure?.message == "a date's T must be followed by a time", "\(String(describing: failure))")
        #expect(failure?.line == 2)
    }

    /// toml++ asserts on a `}` where an array's next value is due; refused with its line.
    @Test(arguments: ["command = [}", "command = [\"/x\", }]", "command = [\n  # c\n  }\n]", "env = { A = [ { B = 1 } }"])
    func aBraceClosingAnArrayIsRefused(_ text: String) {
        let failure = error("[agents.web]\n" + text + "\n")
        #expect(failure?.message == "an array's values end with ], not }", "\(String(describing: failure))")
    }

    /// Brackets inside values, strings and comments are not table headers.
    @Test func bracketsInValuesAreNotTableHeaders() throws {
        let config = try parse("""
            # [ not a header
            [agents.web]
            command = [
              "/x", "[ =]",
              '''[#]''',
            ]
            env = { A = "[.a]" }

            [ "agents" . "db" ]
            command = ["/y"]
            """)
        #expect(config.agents.map(\.name).sorted() == ["db", "web"])
    }
}
