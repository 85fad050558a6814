import BatonTestSupport
import Foundation
import Glibc
import Testing

/// The `baton` binary built next to batond.
enum CLI {
    static var path: String { Products.path("baton") }

    struct Result: CustomStringConvertible {
        let status: Int32
        let stdout: String
        let stderr: String
        var description: String { "exit \(status)\n--- stdout ---\n\(stdout)--- stderr ---\n\(stderr)" }
    }

    /// Runs `baton ARGS` to its end. `environment` adds to (or, with "", removes from) the
    /// test's own, without any BATON_* of the machine.
    static func run(_ arguments: [String], environment: [String: String] = [:], timeout: Double = 120) throws -> Result {
        let scratch = TemporaryDirectory("baton-cli-out")
        let out = scratch.file("stdout"), err = scratch.file("stderr")
        for file in [out, err] { _ = FileManager.default.createFile(atPath: file, contents: nil) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.environment = Self.environment(environment)
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: err))
        try process.run()
        let done = DispatchSemaphore(value: 0)
        Thread { process.waitUntilExit(); done.signal() }.start()
        guard done.wait(timeout: .now() + timeout) == .success else {
            kill(process.processIdentifier, SIGKILL)
            throw TestFailure("baton \(arguments.joined(separator: " ")) did not end within \(timeout) s")
        }
        return Result(status: process.terminationStatus,
                      stdout: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
                      stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
    }

    static func environment(_ extra: [String: String]) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("BATON_") }
        for (key, value) in extra {
            environment[key] = value.isEmpty ? nil : value
        }
        return environment
    }
}

/// A `baton` that runs on while the test reads its output line by line, as it comes.
/// Killed when released.
final class RunningCLI {
    let process = Process()
    private let pipe = Pipe()
    private let output = Lines()
    private var read = 0

    /// What the reader thread collects (it must not hold the `RunningCLI`, whose release
    /// kills the process that ends the thread). @unchecked Sendable: state under `lock`.
    private final class Lines: @unchecked Sendable {
        let lock = NSCondition()
        var lines: [String] = []
        var partial = ""
        var ended = false
    }

    init(_ arguments: [String], environment: [String: String] = [:]) throws {
        process.executableURL = URL(fileURLWithPath: CLI.path)
        process.arguments = arguments
        process.environment = CLI.environment(environment)
        process.standardOutput = pipe
        process.standardError = FileHandle.standardError
        try process.run()
        let handle = pipe.fileHandleForReading
        Thread { [output] in
            while true {
                let data = handle.availableData
                output.lock.lock()
                if data.isEmpty {
                    if !output.partial.isEmpty { output.lines.append(output.partial) }
                    output.ended = true
                    output.lock.broadcast()
                    output.lock.unlock()
                    return
                }
                output.partial += String(decoding: data, as: UTF8.self)
                while let newline = output.partial.firstIndex(of: "\n") {
                    output.lines.append(String(output.partial[..<newline]))
                    output.partial = String(output.partial[output.partial.index(after: newline)...])
                }
                output.lock.broadcast()
                output.lock.unlock()
            }
        }.start()
    }

    /// The next line of stdout, waiting up to `timeout`; nil at the end of the output.
    func nextLine(timeout: Double = 60) throws -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        output.lock.lock()
        defer { output.lock.unlock() }
        while read >= output.lines.count {
            if output.ended { return nil }
            guard output.lock.wait(until: deadline) else {
                throw TestFailure("no line from baton within \(timeout) s; so far: \(output.lines)")
            }
        }
        read += 1
        return output.lines[read - 1]
    }

    /// Reads lines until one contains `text`; returns it.
    func line(containing text: String, timeout: Double = 60) throws -> String {
        while let line = try nextLine(timeout: timeout) {
            if line.contains(text) { return line }
        }
        throw TestFailure("baton's output ended without a line containing \"\(text)\"")
    }

    var isRunning: Bool { process.isRunning }

    func waitForExit(timeout: Double = 60) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning {
            guard Date() < deadline else { throw TestFailure("baton did not exit within \(timeout) s") }
            usleep(20_000)
        }
        return process.terminationStatus
    }

    deinit {
        // SIGKILL: the test runner's threads block SIGTERM, and children inherit the mask.
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// JSON bodies checked against api/openapi.yaml's schemas by scripts/check-json.py, the
/// JSON Schema validator the contract test uses.
struct SchemaChecks {
    private var lines: [String] = []

    mutating func add(_ schema: String, _ json: String) {
        let oneLine = json.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!oneLine.isEmpty && !oneLine.contains("\n"), "--json printed one document on one line: \(json)")
        lines.append("\(schema)\t\(oneLine)")
    }

    func validate() throws {
        guard let python = which("python3") else {
            Issue.record("python3 is not installed; `make test` installs it")
            return
        }
        let scratch = TemporaryDirectory("schema-checks")
        let file = scratch.file("checks.tsv")
        try lines.joined(separator: "\n").write(toFile: file, atomically: true, encoding: .utf8)
        let result = try run([python, Products.packageRoot + "/scripts/check-json.py", Products.packageRoot + "/api/openapi.yaml", file])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("\(lines.count) valid, 0 invalid"), "\(result.output)")
    }
}

/// Polls `condition` every 50 ms up to `timeout` (for state that has no signal to await,
/// such as a log file filling).
func eventually(timeout: Double = 30, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return }
        usleep(50_000)
    }
    throw TestFailure("condition not met within \(timeout) s")
}
