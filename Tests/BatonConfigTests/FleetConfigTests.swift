import BatonConfig
import Testing

/// `[fleet]`: fleet mode's settings, and every refusal naming the key and its line.
@Suite("fleet configuration")
struct FleetConfigTests {
    func parse(_ text: String) throws(ConfigError) -> BatondConfig {
        try BatondConfig.parse(text, file: "test.toml", workingDirectory: "/srv", accounts: ConfigTests.accounts)
    }

    @Test func withoutTheSectionBatondIsAMachineAlone() throws {
        #expect(try parse("").fleet == nil)
    }

    @Test func everyKeyIsRead() throws {
        let config = try parse("""
            [fleet]
            endpoints = ["http://10.0.0.1:2379", "https://etcd.example:2379/"]
            name = "prod-eu"
            host = "web-07"
            prefix = "/org/baton"
            coordinator = false
            lease_ttl = "15s"
            heartbeat = "1m"
            request_timeout = "2s"
            ca_file = "tls/ca.pem"
            cert_file = "/etc/baton/client.pem"
            key_file = "/etc/baton/client-key.pem"
            username = "baton"
            password_file = "etcd.password"

            [fleet.labels]
            zone = "eu-1"
            canary = "true"
            """)
        let fleet = try #require(config.fleet)
        #expect(fleet.endpoints == ["http://10.0.0.1:2379", "https://etcd.example:2379"])
        #expect(fleet.name == "prod-eu" && fleet.host == "web-07" && fleet.prefix == "/org/baton")
        #expect(fleet.keyRoot == "/org/baton/prod-eu/")
        #expect(!fleet.coordinator)
        #expect(fleet.leaseTTL == .seconds(15) && fleet.heartbeat == .seconds(60) && fleet.requestTimeout == .seconds(2))
        #expect(fleet.caFile == "/srv/tls/ca.pem", "relative paths resolve against the working directory")
        #expect(fleet.certFile == "/etc/baton/client.pem" && fleet.keyFile == "/etc/baton/client-key.pem")
        #expect(fleet.username == "baton" && fleet.passwordFile == "/srv/etcd.password")
        #expect(fleet.labels == ["zone": "eu-1", "canary": "true"])
    }

    @Test func defaults() throws {
        let fleet = try #require(try parse("[fleet]\nendpoints = [\"http://127.0.0.1:2379\"]\nhost = \"h1\"\n").fleet)
        #expect(fleet.name == "default" && fleet.prefix == "/baton" && fleet.coordinator)
        #expect(fleet.leaseTTL == .seconds(10) && fleet.heartbeat == .seconds(30) && fleet.requestTimeout == .seconds(5))
        #expect(fleet.labels.isEmpty && fleet.caFile == nil && fleet.username == nil)
    }

    @Test(arguments: [
        ("[fleet]\nhost = \"h\"\n", "fleet.endpoints", "is required"),
        ("[fleet]\nendpoints = []\n", "fleet.endpoints", "is required"),
        ("[fleet]\nendpoints = [\"127.0.0.1:2379\"]\n", "fleet.endpoints", "not an etcd client URL"),
        ("[fleet]\nendpoints = [\"ftp://10.0.0.1:2379\"]\n", "fleet.endpoints", "not an etcd client URL"),
        ("[fleet]\nendpoints = [\"http://user:pw@10.0.0.1:2379\"]\n", "fleet.endpoints", "not an etcd client URL"),
        ("[fleet]\nendpoints = [\"http://10.0.0.1:2379/v3\"]\n", "fleet.endpoints", "not an etcd client URL"),
        ("[fleet]\nendpoints = [\"http://e:2379\"]\nhost = \"a/b\"\n", "fleet.host", "not a valid name"),
        ("[fleet]\nendpoints = [\"http://e:2379\"]\nname = \"\"\n", "fleet.name", "not a valid name"),
        ("[fleet]\nendpoints = [\"http://e:2379\"]\nprefix = \"baton\"\n", "fleet.prefix", "must be a key path"),
        ("[fleet]\nendpoints = [\"http://e:2379\"]\nprefix = \"/baton/\"\n", "fleet.prefix", "must be a key path"),
        ("[fleet]\nendpoints = [\"http://e:2379\"]\nprefix = \"/a//b\"\n", "fleet.prefix", "must be a key path"),
        ("[fleet]\nendpoints = [\"http://e:2379\"]\nlease_ttl = \"1s\"\n", "fleet.lease_ttl", "between 2s and 5m"),
        ("[fleet]\nendpoints = [\"http://e:2379\"]\nlease_ttl = \"2500ms\"\n", "fleet.lease_ttl", "whole seconds"),
        ("[fleet]\nendpoints = [\"http://e:2379\"]\nheartbeat = \"2h\"\n", "fleet.heartbeat", "between"),
        ("[fleet]\nendpoints = [\"http://e:2379\"]\ncert_file = \"c.pem\"\n", "fleet.cert_file", "go together"),
        ("[fleet]\nendpoints = [\"http://e:2379\"]\nusername = \"u\"\n", "fleet.username", "go together"),
        ("[fleet]\nendpoints = [\"http://e:2379\"]\npassword = \"secret\"\n", "fleet.password", "unknown key"),
        ("[fleet]\nendpoints = [\"http://e:2379\"]\n[fleet.labels]\nzone = 3\n", "fleet.labels.zone", "must be a string"),
        ("[fleet]\nendpoints = [\"http://e:2379\"]\n[fleet.labels]\nzone = \"a b\"\n", "fleet.labels.zone", "must be a string"),
    ])
    func badValuesNameKeyAndLine(_ text: String, _ key: String, _ message: String) throws {
        do {
            _ = try parse(text)
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.key == key, "\(error)")
            #expect(error.line != nil, "\(error)")
            #expect(error.description.contains(message), "\(error)")
        }
    }
}
