import BatonConfig
import BatonCore
import BatonTestSupport
import Foundation
import Testing

@Suite("configuration")
struct ConfigTests {
    func parse(_ text: String) throws(ConfigError) -> BatondConfig {
        try BatondConfig.parse(text, file: "test.toml", workingDirectory: "/srv")
    }

    func error(_ text: String) -> ConfigError? {
        do { _ = try parse(text); return nil } catch { return error }
    }

    @Test func theBundledConfigsLoad() throws {
        for name in ["batond.toml", "dev.toml"] {
            let config = try BatondConfig.load(path: Products.packageRoot + "/config/" + name, workingDirectory: "/srv")
            #expect(!config.agents.isEmpty, "\(name) declares an agent")
        }
        let dev = try BatondConfig.load(path: Products.packageRoot + "/config/dev.toml", workingDirectory: "/repo")
        #expect(dev.stateDir == "/repo/.baton")
        #expect(dev.socketPath == "/repo/.baton/batond.sock")
        #expect(dev.listen == ListenAddress("127.0.0.1:7070"))
        #expect(dev.agents.map(\.name) == ["demo"])
    }

    @Test func defaultsWhenEmpty() throws {
        let config = try parse("")
        #expect(config.stateDir == "/var/lib/baton")
        #expect(config.socketPath == "/var/lib/baton/batond.sock")
        #expect(config.agentSocketPath == "/var/lib/baton/agent.sock")
        #expect(config.http.requestHeadTimeout == .seconds(10))
        #expect(config.http.requestBodyTimeout == .seconds(30))
        #expect(config.http.maxEventWaiters == 100)
        #expect(config.listen == nil)
        #expect(config.http.maxBodyBytes == 1 << 20)
        #expect(config.http.maxWait == .seconds(300))
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
            max_body_bytes = 4096
            max_wait = "2m"
            probes_open = false

            [ledger]
            snapshot_every = 100
            retain_records = 200

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
        #expect(config.http.maxBodyBytes == 4096)
        #expect(config.http.maxWait == .seconds(120))
        #expect(config.http.probesOpen == false)
        #expect(config.ledger.snapshotEvery == 100)
        #expect(config.ledger.retainRecords == 200)
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
        ("[agents.web]\nmode = \"parallel\"\n", "agents.web.command", 1),
        ("[agents.web]\ncommand = []\n", "agents.web.command", 2),
        ("[agents.web]\ncommand = [\"/x\"]\n\nmode = \"fast\"\n", "agents.web.mode", 4),
        ("[agents.Web]\ncommand = [\"/x\"]\n", "agents.Web", 1),
        ("[agents.web]\ncommand = [\"/x\"]\nenv = { BATON_TOKEN = \"x\" }\n", "agents.web.env.BATON_TOKEN", 3),
        ("[agents.web]\ncommand = [\"/x\"]\nreadiness = { command = [\"/a\"], http = \"http://x\" }\n", "agents.web.readiness", 3),
        ("[agents.web]\ncommand = [\"/x\"]\nregistration_token = \"short\"\n", "agents.web.registration_token", 3),
        ("[agents.web]\ncommand = [\"/x\"]\nready_timeout = \"-5s\"\n", "agents.web.ready_timeout", 3),
    ])
    func badValuesNameKeyAndLine(_ text: String, _ key: String, _ line: Int) throws {
        let failure = try #require(error(text))
        #expect(failure.key == key)
        #expect(failure.line == line)
        #expect(failure.description.hasPrefix("test.toml:\(line): \(key): "))
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
}
