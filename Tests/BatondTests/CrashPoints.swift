import BatonTestSupport
import Foundation
import Glibc
import Testing

/// batond's debug build kills itself with SIGKILL at the crash point `BATON_CRASH_POINT`
/// names (`desired-recorded`, `go-before-commit`): what comes back is checked from outside.
enum CrashPoints {
    /// The crash points exist only in debug builds, as the tests' batond is by default.
    static let work: Bool = {
        #if DEBUG
        true
        #else
        false
        #endif
    }()

    /// A batond that dies at `point`, started once `agents`' release 1.0 works. Its
    /// agents outlive it.
    static func start(_ point: String, _ agents: TestReleases, state: TemporaryDirectory, config: String) throws -> BatondProcess {
        let daemon = try BatondProcess(state: state, configText: config, environment: ["BATON_CRASH_POINT": point],
                                       agentsOutlive: true)
        try waitUntil(timeout: 30) { agents.log().contains { $0.event == "go" && $0.version == "1.0" } }
        return daemon
    }

    /// Expects `daemon` to have reached its crash point: it died of SIGKILL.
    static func expectKilled(_ daemon: BatondProcess, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(daemon.waitForExit(timeout: 60) != nil, "batond did not reach its crash point\n\(daemon.log)",
                sourceLocation: sourceLocation)
        #expect(daemon.process.terminationReason == .uncaughtSignal && daemon.process.terminationStatus == SIGKILL,
                "batond ended otherwise: \(daemon.process.terminationReason) \(daemon.process.terminationStatus)\n\(daemon.log)",
                sourceLocation: sourceLocation)
    }
}
