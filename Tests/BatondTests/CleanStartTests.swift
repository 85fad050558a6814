import BatonTestSupport
import Foundation
import Glibc
import Testing

/// An instance starts clean, as under systemd: a defined environment, and no descriptor
/// but its own three.
@Suite("a clean start")
struct CleanStartTests {
    @Test func anInstanceGetsTheDocumentedEnvironmentSignalsAndOnlyItsThreeDescriptors() throws {
        let state = TemporaryDirectory("clean-start")
        // A plain program (no shell, which would add PWD), ready by a probe: every variable
        // and descriptor it holds is batond's doing.
        try FileManager.default.createDirectory(atPath: state.file("releases/plain/1.0"), withIntermediateDirectories: true)
        #expect(symlink("1.0", state.file("releases/plain/current")) == 0)
        let daemon = try BatondProcess(state: state, configText: """
            [agents.plain]
            command = ["/bin/sleep", "300"]
            readiness = { command = ["/bin/true"] }
            inherit_env = ["KEEP_ME", "NOT_SET_ANYWHERE"]
            stop_timeout = "1s"

            [agents.plain.env]
            FROM_CONFIG = "1"
            """, environment: ["MAKEFLAGS": "-j9", "KEEP_ME": "yes", "SECRET_OF_THE_PARENT": "x"])
        var pid = 0
        try waitUntil(timeout: 30) {
            let view = try? daemon.endpoint.get("/v1/agents/plain", token: daemon.token).json()
            let first = (view?["instances"] as? [[String: Any]])?.first
            pid = first?["state"] as? String == "working" ? first?["pid"] as? Int ?? 0 : 0
            return pid > 0
        }

        let environ = try Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ"))
        var variables: [String: String] = [:]
        for entry in environ.split(separator: 0) {
            let text = String(decoding: entry, as: UTF8.self)
            guard let equals = text.firstIndex(of: "=") else { continue }
            variables[String(text[..<equals])] = String(text[text.index(after: equals)...])
        }
        #expect(Set(variables.keys) == ["PATH", "LANG", "HOME", "USER", "LOGNAME", "KEEP_ME", "FROM_CONFIG",
                                        "BATON_SOCKET", "BATON_URL", "BATON_AGENT", "BATON_INSTANCE", "BATON_TOKEN",
                                        "BATON_VERSION"], "\(variables.keys.sorted())")
        #expect(variables["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        #expect(variables["KEEP_ME"] == "yes")
        #expect(variables["FROM_CONFIG"] == "1")
        #expect(variables["USER"] == String(cString: getpwuid(getuid())!.pointee.pw_name))

        let descriptors = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")
        #expect(descriptors.sorted() == ["0", "1", "2"], "\(descriptors.sorted())")
        // SIGPIPE at its default, though batond itself ignores it; no signal blocked. (glibc
        // keeps its own real-time signals, 32 and 33, as they were.)
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8).split(separator: "\n")
        let ignored = status.first { $0.hasPrefix("SigIgn:\t") }.flatMap { UInt64($0.dropFirst(8), radix: 16) }
        #expect(ignored.map { $0 & (1 << (SIGPIPE - 1)) == 0 } == true, "\(status.filter { $0.hasPrefix("Sig") })")
        #expect(status.contains("SigBlk:\t0000000000000000"), "\(status.filter { $0.hasPrefix("Sig") })")
        daemon.stop()
    }
}
