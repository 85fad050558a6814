import BatonClient
import BatonConfig
import Foundation
import Glibc

/// Readiness for agents that do not speak the protocol: a command that exits 0, or an
/// HTTP URL that answers 2xx or 3xx, tried every `interval` until it succeeds. The
/// weaker mode: such an agent works from the moment it starts, and is stopped by
/// SIGTERM, so batond cannot hold it back until the old one stopped.
enum ReadinessProbe {
    static let interval: Duration = .milliseconds(250)

    /// Tries the probe until it succeeds (true) or the task is cancelled (false). The
    /// command's output goes to `log`, checked against its cap before each attempt.
    static func wait(for readiness: AgentConfig.Readiness, directory: String, environment: [String: String], log: InstanceLog) async -> Bool {
        while !Task.isCancelled {
            log.rotateIfNeeded()
            if await attempt(readiness, directory: directory, environment: environment, log: log) { return true }
            try? await Task.sleep(for: interval)
        }
        return false
    }

    static func attempt(_ readiness: AgentConfig.Readiness, directory: String, environment: [String: String], log: InstanceLog) async -> Bool {
        switch readiness {
        case .command(let argv):
            let command = argv.map { $0.replacingOccurrences(of: "{release}", with: directory) }
            return await withCheckedContinuation { continuation in
                do {
                    // A probe is batond's own check, not an instance: nothing to record first.
                    let process = try Processes.spawn(argv: command, environment: environment, log: log,
                                                      directory: directory, credentials: nil).release()
                    process.watch { status in
                        process.reap()
                        continuation.resume(returning: status == .exited(0))
                    }
                } catch {
                    continuation.resume(returning: false)
                }
            }
        case .http(let url):
            return await withCheckedContinuation { continuation in
                let thread = Thread { continuation.resume(returning: httpGet(url)) }
                thread.start()
            }
        }
    }

    /// A GET with a 2 s deadline, through the one HTTP client: true on a 2xx or 3xx status.
    static func httpGet(_ url: String) -> Bool {
        guard url.lowercased().hasPrefix("http://") else { return false }
        let rest = url.dropFirst("http://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        guard let endpoint = BatonClient.Endpoint(url: "http://" + rest[..<slash]) else { return false }
        let path = slash == rest.endIndex ? "/" : String(rest[slash...])
        guard let response = try? HTTPConnection(endpoint).send(HTTPRequest("GET", path, timeout: .seconds(2))) else { return false }
        return (200..<400).contains(response.status)
    }
}
