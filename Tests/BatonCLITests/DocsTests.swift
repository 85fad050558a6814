import BatonTestSupport
import Foundation
import Testing

/// docs/cli.md against what `baton --help` says: every subcommand has its section and
/// every option of its help is documented; the exit codes of `baton --help` are the
/// docs' table.
@Suite("baton docs")
struct DocsTests {
    static var docs: String {
        (try? String(contentsOfFile: Products.packageRoot + "/docs/cli.md", encoding: .utf8)) ?? ""
    }

    /// The subcommands a help text lists, in order.
    static func subcommands(in help: String) -> [String] {
        var names: [String] = []
        var inSection = false
        for line in help.split(separator: "\n", omittingEmptySubsequences: false) {
            if line == "SUBCOMMANDS:" { inSection = true; continue }
            if inSection {
                if line.isEmpty || !line.hasPrefix("  ") { if !names.isEmpty { break } else { continue } }
                if line.hasPrefix("   ") { continue }  // a wrapped abstract
                if let name = line.split(separator: " ").first { names.append(String(name)) }
            }
        }
        return names
    }

    /// Every command path: `status`, `daemon upgrade`...
    static func commands() throws -> [[String]] {
        var commands: [[String]] = []
        for name in subcommands(in: try CLI.run(["--help"]).stdout) {
            commands.append([name])
            for nested in subcommands(in: try CLI.run([name, "--help"]).stdout) {
                commands.append([name, nested])
            }
        }
        return commands
    }

    @Test func everySubcommandAndOptionOfTheHelpIsInDocsCliMd() throws {
        let docs = Self.docs
        let commands = try Self.commands()
        #expect(commands.count >= 15, "\(commands)")
        for command in commands {
            let help = try CLI.run(command + ["--help"])
            #expect(help.status == 0, "\(help)")
            // `baton daemon show` is documented as `baton daemon` (its default).
            let heading = "### baton \(command.last == "show" ? command.dropLast().joined(separator: " ") : command.joined(separator: " "))"
            let hasSection = docs.contains(heading)
            #expect(hasSection, "docs/cli.md has no section \(heading)")
            let options = help.stdout.split(whereSeparator: { " \n,[]=".contains($0) })
                .filter { $0.hasPrefix("--") && $0.count > 2 }
                .map { "--" + String($0.dropFirst(2).prefix { $0.isLetter || $0.isNumber || $0 == "-" }) }
            for option in Set(options) where !["--help", "--version"].contains(option) {
                let documented = docs.contains("`\(option)")
                #expect(documented, "baton \(command.joined(separator: " ")): \(option) is not in docs/cli.md")
            }
        }
    }

    @Test func theExitCodesOfTheHelpAreTheDocsTable() throws {
        let help = try CLI.run(["--help"]).stdout
        let codes = help.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ", maxSplits: 1)
            guard fields.count == 2, line.hasPrefix("  "), Int(fields[0]) != nil else { return nil }
            return String(fields[0])
        }
        #expect(codes == ["0", "1", "2", "3", "4", "5", "6", "7", "64"], "\(help)")
        for code in codes {
            let documented = Self.docs.contains("| \(code) |")
            #expect(documented, "exit code \(code) is not in docs/cli.md's table")
        }
        #expect(help.contains("--generate-completion-script"))
        let completion = Self.docs.contains("--generate-completion-script")
        #expect(completion)
    }
}
