import BatonTestSupport
import Foundation
import Glibc
import Testing

/// examples/http-agent as its README runs it: under batond with `listen`, upgraded under
/// continuous requests.
@Suite("examples/http-agent under batond", .serialized)
struct HTTPAgentExampleTests {
    /// `releases/web/VERSION/bin/http-agent`, running the built example.
    func addRelease(_ state: TemporaryDirectory, _ version: String) throws {
        let bin = "\(state.path)/releases/web/\(version)/bin"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        try "#!/bin/sh\nexec '\(Products.path("http-agent"))' \"$@\"\n".write(toFile: "\(bin)/http-agent", atomically: true, encoding: .utf8)
        chmod("\(bin)/http-agent", 0o755)
    }

    @Test func anUpgradeUnderLoadRefusesNothingAndTheAnsweringVersionChanges() throws {
        let state = TemporaryDirectory("http-agent")
        for version in ["1.0", "2.0"] { try addRelease(state, version) }
        let releases = TestReleases(state: state)
        try releases.setCurrent("1.0")
        let config = """
            [agents.web]
            command = ["{release}/bin/http-agent", "--startup-delay", "0.3"]
            ready_timeout = "10s"
            stop_timeout = "5s"
            kill_timeout = "2s"
            listen = ["tcp://127.0.0.1:0"]
            """
        let daemon = try BatondProcess(state: state, configText: config)
        defer { _ = daemon.stop() }
        let view = try daemon.endpoint.get("/v1/agents/web", token: daemon.token).json()
        let address = try #require((view["sockets"] as? [[String: Any]])?.first?["address"] as? String)
        let load = try HTTPLoad(address: address)
        load.start(connections: 4)
        try waitUntil(timeout: 30) { load.counts.bodies.contains { $0.hasPrefix("web 1.0 (instance web.1, pid ") } }

        #expect(try daemon.handOff(to: "2.0")["outcome"] as? String == "committed")
        try waitUntil(timeout: 30) { load.counts.bodies.contains { $0.hasPrefix("web 2.0 (instance web.2, pid ") } }
        let result = load.stop()

        #expect(result.failures.isEmpty, "\(result.failures.prefix(5))")
        #expect(result.bodies.count == 2, "one body per instance: \(result.bodies)")
        #expect(result.ok > 0)
    }
}
