import ArgumentParser
import BatonClient
import Glibc

/// The exit codes `baton --help` and docs/cli.md list.
enum Exit: Int32 {
    case ok = 0
    case error = 1
    case failed = 2
    case reverted = 3
    case refused = 4
    case unauthorised = 5
    case unreachable = 6
    case cancelled = 7
    case usage = 64
}

/// A failure a command reports: one line for a person (what happened, what to do) and an
/// exit code. Never a stack trace.
enum CLIError: Error {
    case failed(String, code: Exit)
    case usage(String)
}

/// Runs a command's body, turning every failure into its one line on stderr and its
/// exit code.
func reporting(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as ClientError {
        let (line, code) = describe(error)
        Terminal.error(line)
        throw ExitCode(code.rawValue)
    } catch CLIError.failed(let line, let code) {
        if !line.isEmpty { Terminal.error(line) }
        throw ExitCode(code.rawValue)
    } catch CLIError.usage(let line) {
        Terminal.error(line)
        throw ExitCode(Exit.usage.rawValue)
    }
}

/// The line and the exit code of a client error.
func describe(_ error: ClientError) -> (String, Exit) {
    switch error {
    case .notRunning(let endpoint, let reason):
        switch endpoint {
        case .unix(let path):
            return ("batond is not running: cannot connect to \(path) (\(reason)). Start it (systemctl start batond), "
                    + "or point baton at its socket with --socket or BATON_SOCKET.", .unreachable)
        case .tcp:
            return ("batond is not running: nothing answers at \(endpoint) (\(reason)). Start it, or check --url / BATON_URL.",
                    .unreachable)
        }
    case .permissionDenied(let endpoint, let reason):
        return ("no permission to use batond's socket \(endpoint) (\(reason)). Run as root or batond's user, join batond's "
                + "operator group (daemon.operator_group), or use --url with --token-file.", .unauthorised)
    case .unauthorized(let api):
        let hint = api.status == 401
            ? "Give the operator token with --token-file (or BATON_TOKEN_FILE): the file <state_dir>/operator.token."
            : "These credentials are not the operator's: use the operator token (<state_dir>/operator.token)."
        return ("batond refused the credentials: \(api.message) (\(api.status) \(api.code)). \(hint)", .unauthorised)
    case .api(let api):
        return ("batond refused: \(api.message) (\(api.status) \(api.code))", (400..<500).contains(api.status) ? .refused : .error)
    case .transport(let endpoint, let reason):
        return ("lost batond at \(endpoint): \(reason). Is it running? (baton status)", .unreachable)
    case .malformedBody(let what):
        return ("unexpected answer from batond: \(what)", .error)
    case .localFile(let what):
        return (what, .error)
    }
}

// MARK: - Terminal

/// Where output goes, and whether it may be coloured: only on a terminal, and never
/// under NO_COLOR (https://no-color.org).
enum Terminal {
    static let stdoutIsTTY = isatty(STDOUT_FILENO) == 1
    static let stderrIsTTY = isatty(STDERR_FILENO) == 1
    static let noColor = getenv("NO_COLOR").map { $0.pointee != 0 } ?? false

    enum Style: String {
        case bold = "1", dim = "2", red = "31", green = "32", yellow = "33"
    }

    /// `text` styled when stdout (or stderr) is a terminal that takes colour.
    static func paint(_ text: String, _ style: Style, stderr: Bool = false) -> String {
        guard !noColor, stderr ? stderrIsTTY : stdoutIsTTY else { return text }
        return "\u{1B}[\(style.rawValue)m\(text)\u{1B}[0m"
    }

    /// A line on stdout at once (a pipe sees each line as it happens).
    static func print(_ line: String) {
        write(STDOUT_FILENO, line + "\n")
    }

    static func error(_ line: String) {
        write(STDERR_FILENO, "\(paint("baton:", .red, stderr: true)) \(line)\n")
    }

    static func write(_ fd: Int32, _ text: String) {
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n > 0 { offset += n } else if n < 0 && errno == EINTR { continue } else { return }
        }
    }

    /// The body of an answer, as it came, on one line (`--json`).
    static func printJSON(_ body: [UInt8]) {
        var text = String(decoding: body, as: UTF8.self)
        while text.hasSuffix("\n") { text.removeLast() }
        print(text)
    }
}
