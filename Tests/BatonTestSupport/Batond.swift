import Foundation
import Glibc

/// A real batond process on a temporary state directory, started with a TCP listener on
/// port 0 and a NOTIFY_SOCKET, and known to be serving once READY=1 arrives.
public final class BatondProcess {
    public let state: TemporaryDirectory
    public let process = Process()
    public let notify: NotifySocket
    public private(set) var endpoint: Endpoint = .tcp(host: "127.0.0.1", port: 0)
    public let output = Pipe()
    private let collected = Collected()

    /// What batond printed. @unchecked Sendable: `data` is only touched under `lock`.
    private final class Collected: @unchecked Sendable {
        let lock = NSCondition()
        var data = Data()
        /// The pipe's end of file: batond exited (its agents write to their own logs).
        var ended = false
    }

    public var stateDir: String { state.path }
    public var socketPath: String { state.file("batond.sock") }
    public var unix: Endpoint { .unix(path: socketPath) }
    /// The socket instances are given (`BATON_SOCKET`).
    public var agentSocketPath: String { state.file("agent.sock") }
    /// `instances` of `GET /v1/agents/AGENT`: id, pid, version, state, started_at.
    public func instances(of agent: String = "web") throws -> [[String: Any]] {
        try endpoint.get("/v1/agents/\(agent)", token: token).json()["instances"] as? [[String: Any]] ?? []
    }

    /// One sample of batond's `/metrics`: `series` is the family with its labels, as
    /// printed (`baton_ledger_writable`, `baton_agent_restarts_total{agent="web"}`).
    public func metric(_ series: String) -> Double? {
        guard let text = try? endpoint.get("/metrics").text else { return nil }
        return text.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.dropFirst(series.count + 1)) }
    }

    public var token: String {
        ((try? String(contentsOfFile: state.file("operator.token"), encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Starts batond and waits for READY=1. `arguments` come after the defaults.
    public init(state: TemporaryDirectory = TemporaryDirectory("batond"), arguments: [String] = [],
                configText: String? = nil, tcp: Bool = true, waitReady: Bool = true,
                environment extra: [String: String] = [:], wrapper: [String] = [], executable: String? = nil,
                agentsOutlive: Bool = false) throws {
        self.state = state
        notify = try NotifySocket(path: state.file("notify-\(UUID().uuidString.prefix(8)).sock"))
        var args = ["--state-dir", state.path, "--socket", state.file("batond.sock"), "--log-level", "debug"]
        if tcp { args += ["--listen", "127.0.0.1:0"] }
        if var configText {
            // A test's agents stop with its batond (so no test leaves processes behind),
            // unless the test is about agents outliving batond, the default.
            if !agentsOutlive && !configText.contains("[daemon]") {
                configText += "\n\n[daemon]\nstop_agents_on_exit = true\n"
            }
            let path = state.file("batond.toml")
            try configText.write(toFile: path, atomically: true, encoding: .utf8)
            args += ["--config", path]
        }
        // `wrapper` runs batond through another command (e.g. `unshare --pid --fork`);
        // `executable` is another batond binary (e.g. `<state>/daemon/current/batond`).
        let batond = executable ?? Products.path("batond")
        process.executableURL = URL(fileURLWithPath: wrapper.first ?? batond)
        process.arguments = (wrapper.isEmpty ? [] : Array(wrapper.dropFirst()) + [batond]) + args + arguments
        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = notify.path
        environment.merge(extra) { _, new in new }
        process.environment = environment
        process.standardOutput = output
        process.standardError = output
        output.fileHandleForReading.readabilityHandler = { [collected] handle in
            let data = handle.availableData
            collected.lock.lock()
            collected.data.append(data)
            if data.isEmpty {
                collected.ended = true
                collected.lock.broadcast()
            }
            collected.lock.unlock()
        }
        try process.run()
        if waitReady { try waitUntilReady() }
    }

    public func waitUntilReady(timeout: Double = 60) throws {
        do {
            _ = try notify.wait(for: "READY=1", timeout: timeout)
        } catch {
            throw TestFailure("batond did not become ready: \(error)\n--- output ---\n\(log)")
        }
        if let text = try? String(contentsOfFile: state.file("batond.addr"), encoding: .utf8), let endpoint = Endpoint(address: text) {
            self.endpoint = endpoint
        }
    }

    /// Everything batond printed so far.
    public var log: String {
        collected.lock.lock()
        defer { collected.lock.unlock() }
        return String(decoding: collected.data, as: UTF8.self)
    }

    public func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    /// Waits for exit and returns the status (or nil after `timeout`).
    public func waitForExit(timeout: Double = 30) -> Int32? {
        let done = DispatchSemaphore(value: 0)
        let waiter = Thread { [process] in
            process.waitUntilExit()
            done.signal()
        }
        waiter.start()
        guard done.wait(timeout: .now() + timeout) == .success else { return nil }
        // Everything it printed is read before anyone looks at `log`.
        collected.lock.lock()
        let deadline = Date().addingTimeInterval(5)
        while !collected.ended && collected.lock.wait(until: deadline) {}
        collected.lock.unlock()
        return process.terminationStatus
    }

    /// SIGTERM and wait; returns the exit status.
    @discardableResult
    public func stop() -> Int32? {
        guard process.isRunning else { return process.terminationStatus }
        signal(SIGTERM)
        return waitForExit()
    }

    deinit {
        if process.isRunning {
            // Its instances outlive a batond killed with SIGKILL (they keep working and
            // retrying while it is away): a test that ends early must not leave them behind.
            for instance in ProcessProbe(process.processIdentifier).descendants { instance.kill() }
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        output.fileHandleForReading.readabilityHandler = nil
    }
}
