import BatonTestSupport
import Foundation
import Glibc
import Testing

/// batond's output is often a pipe (`batond | logger`, a terminal multiplexer, a test
/// harness). When its reader goes away, a write must fail with EPIPE, not kill batond
/// with SIGPIPE: the guard of the agents cannot die of its log.
@Suite("batond without its output's reader")
struct LostOutputTests {
    @Test(.timeLimit(.minutes(1)))
    func batondOutlivesTheReaderOfItsOutput() throws {
        let state = TemporaryDirectory("lost-output")
        let web = TestReleases(state: state)
        try web.add("1.0")
        try web.add("2.0")
        try web.setCurrent("1.0")
        let daemon = try BatondProcess(state: state, configText: web.config())
        try waitUntil(timeout: 30) { web.log().contains { $0.event == "go" && $0.version == "1.0" } }
        // The reader goes: the pipe's read end is closed, so batond's next log line meets EPIPE.
        daemon.output.fileHandleForReading.readabilityHandler = nil
        try daemon.output.fileHandleForReading.close()

        // A handoff logs at every step; batond must come through it.
        let began = try daemon.endpoint.json("PUT", "/v1/agents/web/desired", token: daemon.token, #"{"version":"2.0"}"#)
        #expect(began.status == 202, "\(began.text)")
        try waitUntil(timeout: 30) { web.log().contains { $0.event == "go" && $0.version == "2.0" } }
        #expect(daemon.process.isRunning, "batond died with its output's reader")
        #expect(try daemon.endpoint.get("/healthz").status == 200)
        daemon.signal(SIGTERM)
        #expect(daemon.waitForExit() == 0)
    }
}
