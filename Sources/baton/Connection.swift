import ArgumentParser
import BatonClient
import Foundation
import Glibc

/// Where batond is and how to prove being its operator: the options every command takes.
struct ConnectionOptions: ParsableArguments {
    @Option(name: .customLong("socket"), help: ArgumentHelp(
        "batond's Unix socket (env BATON_SOCKET; default /run/baton/batond.sock, else /var/lib/baton/batond.sock).",
        valueName: "PATH"))
    var socket: String?

    @Option(name: .customLong("url"), help: ArgumentHelp(
        "batond's loopback TCP listener, http://HOST:PORT, instead of the socket (env BATON_URL).", valueName: "URL"))
    var url: String?

    @Option(name: .customLong("token-file"), help: ArgumentHelp(
        "A file holding the operator token (env BATON_TOKEN_FILE); needed over TCP, e.g. <state_dir>/operator.token.",
        valueName: "FILE"))
    var tokenFile: String?

    /// The system's socket paths, in the order they are tried: the one of the shipped
    /// config and systemd's batond.socket, then batond's built-in `<state_dir>/batond.sock`.
    static let defaultSockets = ["/run/baton/batond.sock", "/var/lib/baton/batond.sock"]

    func validate() throws {
        if socket != nil && url != nil { throw ValidationError("give --socket or --url, not both") }
        if let url, BatonClient.Endpoint(url: url) == nil { throw ValidationError("--url must be http://HOST:PORT, not \(url)") }
    }

    var endpoint: BatonClient.Endpoint {
        get throws {
            let environment = ProcessInfo.processInfo.environment
            if let socket { return .unix(path: socket) }
            if let url { return BatonClient.Endpoint(url: url)! }
            if let path = environment["BATON_SOCKET"], !path.isEmpty { return .unix(path: path) }
            if let url = environment["BATON_URL"], !url.isEmpty {
                guard let endpoint = BatonClient.Endpoint(url: url) else { throw CLIError.usage("BATON_URL must be http://HOST:PORT, not \(url)") }
                return endpoint
            }
            let path = Self.defaultSockets.first { access($0, F_OK) == 0 } ?? Self.defaultSockets[0]
            return .unix(path: path)
        }
    }

    func client(timeout: Duration = .seconds(30)) throws -> BatonClient {
        let endpoint = try self.endpoint
        var token: String?
        if let path = tokenFile ?? ProcessInfo.processInfo.environment["BATON_TOKEN_FILE"].flatMap({ $0.isEmpty ? nil : $0 }) {
            do {
                token = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            } catch {
                throw CLIError.failed("cannot read the token file \(path): \(Self.reason(error)); it is <state_dir>/operator.token, readable by batond's user", code: .error)
            }
        }
        return BatonClient(endpoint: endpoint, token: token, timeout: timeout)
    }

    static func reason(_ error: any Error) -> String {
        let nsError = error as NSError
        if let underlying = nsError.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(underlying.code)))
        }
        return nsError.localizedDescription
    }
}

/// `--json`: the API's own bodies instead of tables.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print the API's JSON (as api/openapi.yaml describes it) instead of a table.")
    var json = false
}
