import ArgumentParser
import BatonClient
import Foundation
import Glibc

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The output of the agent's working instance (like journalctl -u), read from batond's log files.",
        discussion: """
            Reads <state_dir>/logs/AGENT.current.log, the link batond keeps to the log of the \
            instance that holds go (state_dir from batond's status), so it runs on batond's \
            machine as a user who may read the logs (batond's user or root: they are 0640). \
            With --follow it keeps printing, and moves on to the next instance's log when a \
            handoff or a restart changes the working instance.
            """)

    @Argument(help: "The agent's name.")
    var agent: String

    @Flag(name: [.short, .long], help: "Keep printing the output as it is written.")
    var follow = false

    @Option(name: [.customShort("n"), .long], help: "How many of the last lines to print first (0: the whole file).")
    var lines: Int = 50

    @OptionGroup var connection: ConnectionOptions

    func validate() throws {
        guard lines >= 0 else { throw ValidationError("--lines must be 0 or more") }
    }

    static func currentLog(stateDir: String, agent: String) -> String { "\(stateDir)/logs/\(agent).current.log" }
    static func instanceLog(stateDir: String, instance: String) -> String { "\(stateDir)/logs/\(instance).log" }

    func run() throws {
        try reporting {
            let client = try connection.client()
            let stateDir = try client.status().value.stateDir
            let link = Self.currentLog(stateDir: stateDir, agent: agent)
            var path = link
            if access(link, F_OK) != 0 {
                // No instance got go yet: the newest instance's log, if any.
                let agentView = try client.agent(agent).value
                guard let newest = agentView.instances.last else {
                    throw CLIError.failed("\(agent) has no log yet: no instance of it ran (\(link) is missing)", code: .error)
                }
                path = Self.instanceLog(stateDir: stateDir, instance: newest.id)
            }
            var log = try LogFile(path: path)
            log.printTail(lines: lines)
            guard follow else { return }
            var target = Self.resolve(link)
            while true {
                usleep(200_000)
                log.printNew()
                if let now = Self.resolve(link), now != target {
                    target = now
                    log = try LogFile(path: link)
                    Terminal.print(Terminal.paint("-- \((now as NSString).lastPathComponent) --", .dim))
                    log.printNew()
                }
            }
        }
    }

    static func resolve(_ link: String) -> String? { try? FileManager.default.destinationOfSymbolicLink(atPath: link) }
}

/// An open log file, read from where the last read ended.
final class LogFile {
    let path: String
    private let fd: Int32
    private var offset: off_t = 0

    init(path: String) throws {
        self.path = path
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            let hint = code == EACCES ? ". Logs belong to batond's user (0640): run as that user or root" : ""
            throw CLIError.failed("cannot read \(path): \(String(cString: strerror(code)))\(hint)", code: .error)
        }
    }

    deinit { close(fd) }

    /// The last `lines` lines (all with 0), and the position moves to the end.
    func printTail(lines: Int) {
        var info = stat()
        fstat(fd, &info)
        let size = info.st_size
        var start: off_t = 0
        if lines > 0 {
            // Back from the end in blocks until enough line ends are seen.
            var count = 0
            var position = size
            var block = [UInt8](repeating: 0, count: 64 * 1024)
            scan: while position > 0 {
                let length = Int(min(off_t(block.count), position))
                position -= off_t(length)
                let n = pread(fd, &block, length, position)
                guard n > 0 else { break }
                for index in stride(from: n - 1, through: 0, by: -1) where block[index] == 10 {
                    // The file's own last newline ends the last line; it does not start one.
                    if position + off_t(index) == size - 1 { continue }
                    count += 1
                    if count == lines {
                        start = position + off_t(index) + 1
                        break scan
                    }
                }
            }
        }
        offset = start
        printNew()
    }

    /// What was written since the last read. A file that shrank was rotated: from its start.
    func printNew() {
        var info = stat()
        if fstat(fd, &info) == 0, info.st_size < offset { offset = 0 }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = pread(fd, &buffer, buffer.count, offset)
            guard n > 0 else { return }
            offset += off_t(n)
            Terminal.write(STDOUT_FILENO, String(decoding: buffer[0..<n], as: UTF8.self))
        }
    }
}
