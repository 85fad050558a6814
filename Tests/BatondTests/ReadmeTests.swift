import BatonTestSupport
import Foundation
import Testing

/// The README's transcripts are run, not just read: every ```console block, in order,
/// against a real batond on `make run`'s config with the demo releases, from a working
/// directory whose `.baton` is that batond's state. A `$ ` line is a command (a trailing
/// `\` continues it); the lines after it, up to the next command, are what it prints.
/// In those, `...` stands for any text within a line, and a line of only `...` for any
/// number of lines. `127.0.0.1:7070` is replaced by the port batond got, `127.0.0.1:8080`
/// by the one the web agent's socket got.
@Suite("README transcripts")
struct ReadmeTests {
    struct Command {
        var text: String
        var expected: [String]
        var line: Int
    }

    /// The console blocks' commands, with the README line each starts on.
    static func commands(in readme: String) -> [Command] {
        var commands: [Command] = []
        var inConsole = false
        var continuing = false
        for (index, line) in readme.components(separatedBy: "\n").enumerated() {
            if line.hasPrefix("```") {
                inConsole = !inConsole && line == "```console"
                continuing = false
                continue
            }
            guard inConsole else { continue }
            if continuing, var last = commands.popLast() {
                last.text += "\n" + line
                commands.append(last)
                continuing = line.hasSuffix("\\")
            } else if line.hasPrefix("$ ") {
                commands.append(Command(text: String(line.dropFirst(2)), expected: [], line: index + 1))
                continuing = line.hasSuffix("\\")
            } else if var last = commands.popLast() {
                last.expected.append(line)
                commands.append(last)
            }
        }
        return commands
    }

    /// Whether `actual` is what `expected` shows, wildcards as above.
    static func matches(_ actual: [String], _ expected: [String]) -> Bool {
        guard let first = expected.first else { return actual.isEmpty }
        if first == "..." {
            return (0...actual.count).contains { matches(Array(actual[$0...]), Array(expected.dropFirst())) }
        }
        guard let line = actual.first, lineMatches(line, first) else { return false }
        return matches(Array(actual.dropFirst()), Array(expected.dropFirst()))
    }

    static func lineMatches(_ line: String, _ pattern: String) -> Bool {
        let pieces = pattern.components(separatedBy: "...")
        guard pieces.count > 1 else { return line == pattern }
        var rest = Substring(line)
        guard rest.hasPrefix(pieces[0]) else { return false }
        rest = rest.dropFirst(pieces[0].count)
        for piece in pieces.dropFirst().dropLast() where !piece.isEmpty {
            guard let range = rest.range(of: piece) else { return false }
            rest = rest[range.upperBound...]
        }
        return rest.hasSuffix(pieces.last!)
    }

    @Test func theMatcherHasItsWildcards() {
        #expect(Self.matches(["a 12 ms", "b"], ["a ... ms", "b"]))
        #expect(Self.matches(["x", "y", "z"], ["x", "...", "z"]))
        #expect(Self.matches(["x"], ["x", "..."]))
        #expect(!Self.matches(["a 12 s"], ["a ... ms"]))
        #expect(!Self.matches(["x", "y"], ["x"]))
        #expect(Self.commands(in: "```console\n$ a \\\n  b\nout\n```\n```sh\n$ not\n```").map(\.text) == ["a \\\n  b"])
    }

    @Test(.enabled(if: which("curl") != nil, "the README's transcripts use curl; `make test` installs it"))
    func everyTranscriptPrintsWhatTheReadmeShows() throws {
        let readme = try String(contentsOfFile: Products.packageRoot + "/README.md", encoding: .utf8)
        let commands = Self.commands(in: readme)
        #expect(commands.count >= 5, "the README has console transcripts")

        let state = TemporaryDirectory("readme")
        let setup = try run([Products.packageRoot + "/scripts/demo-releases.sh", state.path, Products.path("http-agent")])
        #expect(setup.status == 0, "\(setup.output)")
        // make run's own config; the flags put its state, socket and port in the test's
        // place, and the web agent's port 8080 becomes one the kernel picks.
        let config = try String(contentsOfFile: Products.packageRoot + "/config/dev.toml", encoding: .utf8)
            .replacingOccurrences(of: "tcp://127.0.0.1:8080", with: "tcp://127.0.0.1:0")
        let daemon = try BatondProcess(state: state, configText: config)
        defer { _ = daemon.stop() }
        var web = ""
        try waitUntil(timeout: 30) {
            let views = ["demo", "web"].compactMap { try? daemon.endpoint.get("/v1/agents/\($0)", token: daemon.token).json() }
            web = ((views.last?["sockets"] as? [[String: Any]])?.first?["address"] as? String ?? "").replacingOccurrences(of: "tcp://", with: "")
            return views.count == 2 && views.allSatisfy { ($0["running"] as? [String: Any])?["version"] as? String == "1.0" }
        }
        let work = TemporaryDirectory("readme-cwd")
        try FileManager.default.createSymbolicLink(atPath: work.file(".baton"), withDestinationPath: state.path)

        // One shell for the whole README, so variables carry from one command to the next;
        // a marker line before each command splits what each printed.
        let marker = "@@readme-command@@"
        var script = "cd \(work.path)\n"
        for command in commands {
            script += "echo \(marker)\n"
            script += command.text.replacingOccurrences(of: "127.0.0.1:7070", with: "\(daemon.endpoint)")
                .replacingOccurrences(of: "127.0.0.1:8080", with: web) + " 2>&1\n"
        }
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = Products.directory + ":" + (environment["PATH"] ?? "/usr/bin:/bin")
        environment["NO_COLOR"] = "1"
        let result = try run(["/bin/bash", "-c", script], environment: environment)
        let outputs = result.output.components(separatedBy: marker + "\n").dropFirst().map { text in
            var lines = text.components(separatedBy: "\n")
            if lines.last == "" { lines.removeLast() }
            return lines
        }
        #expect(outputs.count == commands.count, "every command ran: \(result.output)")
        for (command, output) in zip(commands, outputs) {
            #expect(Self.matches(output, command.expected),
                    "README.md:\(command.line): `\(command.text)` printed:\n\(output.joined(separator: "\n"))\nthe README shows:\n\(command.expected.joined(separator: "\n"))")
        }
    }
}
