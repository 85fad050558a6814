import ArgumentParser
import BatonConfig
import BatonCore
import BatonDaemon
import Foundation
import Logging

@main
struct Batond: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "batond",
        abstract: "Runs agents and hands each over to a new release with zero downtime.",
        discussion: """
            Exit codes: 0 clean stop, 1 failure, 64 usage, 74 ledger I/O error, \
            75 state directory in use by another batond, 78 invalid configuration. \
            --self-check exits 0 when this binary could take over the state directory, \
            else 74 or 78 with the reason on stderr.
            """)

    @Option(name: .long, help: "The TOML configuration file (default: /etc/baton/batond.toml when it exists).")
    var config: String?

    @Option(name: .long, help: "State directory (ledger, token, releases, logs); overrides daemon.state_dir.")
    var stateDir: String?

    @Option(name: .long, help: "Control socket path; overrides daemon.socket.")
    var socket: String?

    @Option(name: .long, help: "Loopback TCP listener HOST:PORT (port 0 picks one); overrides daemon.listen.")
    var listen: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String?

    @Flag(name: .long, help: "Validate the configuration and exit.")
    var checkConfig = false

    @Flag(name: .long, help: "Check that this binary could run on this config and state directory (read-only; beside a running batond too) and exit.")
    var selfCheck = false

    @Flag(name: .long, help: "Store this binary as <state_dir>/daemon/<sha256>/batond and, if daemon/current names nothing yet, point it there (the systemd unit starts batond through daemon/current); then exit.")
    var installSelf = false

    @Flag(name: .long, help: "Print the version and exit.")
    var version = false

    mutating func run() async throws {
        // A write to an output whose reader went away (`batond | logger`, a closed terminal)
        // fails with EPIPE instead of killing batond: the agents' guard must not die of its
        // log. Instances get every signal back to its default (CBatonSpawn).
        signal(SIGPIPE, SIG_IGN)
        if version {
            print("batond \(BatonVersion.current)")
            return
        }
        let settings: BatondConfig
        do {
            settings = try resolvedConfig()
        } catch {
            FileHandle.standardError.write(Data("batond: \(error)\n".utf8))
            throw ExitCode(Daemon.Exit.configError.rawValue)
        }
        if checkConfig {
            print("\(settings.file ?? "(built-in defaults)"): OK, \(settings.agents.count) agent(s), state in \(settings.stateDir)")
            return
        }
        if installSelf {
            do {
                print(try InstallSelf.run(stateDirectory: settings.stateDir))
            } catch {
                FileHandle.standardError.write(Data("batond: \(error.description)\n".utf8))
                throw ExitCode(error.exit.rawValue)
            }
            return
        }
        if selfCheck {
            do {
                print(try SelfCheck.run(config: settings))
            } catch {
                FileHandle.standardError.write(Data("batond: self-check failed: \(error.description)\n".utf8))
                throw ExitCode(error.exit.rawValue)
            }
            return
        }
        let level = Logger.Level(rawValue: settings.logLevel.rawValue) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "batond")
        do {
            try await Daemon(config: settings, logger: logger).run()
        } catch {
            logger.critical("\(error.description)")
            throw ExitCode(error.exit.rawValue)
        }
    }

    /// The file's settings with the command line's on top.
    func resolvedConfig() throws(ConfigError) -> BatondConfig {
        let workingDirectory = FileManager.default.currentDirectoryPath
        var settings: BatondConfig
        if let config {
            settings = try BatondConfig.load(path: config, workingDirectory: workingDirectory)
        } else if FileManager.default.fileExists(atPath: "/etc/baton/batond.toml") {
            settings = try BatondConfig.load(path: "/etc/baton/batond.toml", workingDirectory: workingDirectory)
        } else {
            settings = BatondConfig()
        }
        let source = "command line"
        if let stateDir { settings.stateDir = stateDir }
        if let socket { settings.socket = socket }
        if let listen {
            guard let address = ListenAddress(listen), address.isLoopback else {
                throw ConfigError(file: source, key: "--listen", message: "must be a loopback HOST:PORT, e.g. 127.0.0.1:7070, not \"\(listen)\"")
            }
            settings.listen = address
        }
        if let logLevel {
            guard let level = BatondConfig.LogLevel(rawValue: logLevel) else {
                throw ConfigError(file: source, key: "--log-level", message: "unknown level \"\(logLevel)\"")
            }
            settings.logLevel = level
        }
        settings.resolvePaths(against: workingDirectory)
        if socket != nil || stateDir != nil, let problem = settings.socketPathProblem {
            let key = problem.socket == .control && socket != nil ? "--socket" : "--state-dir"
            throw ConfigError(file: source, key: key, message: problem.message)
        }
        return settings
    }
}
