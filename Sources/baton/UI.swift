import ArgumentParser
import BatonClient
import BatonCore

struct UI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ui",
        abstract: "Print a one-time link that logs a browser in to batond's status page (valid 60 s, once).",
        discussion: """
            The link carries a one-time code, never the operator token: opening it sets a \
            session cookie and shows the page. batond needs a TCP listener (daemon.listen).
            """)

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        try reporting {
            let client = try connection.client()
            let link = try client.uiLink()
            if output.json { return Terminal.printJSON(link.response.body) }
            guard let base = try client.endpoint.baseURL ?? Self.tcpListener(client.status().value.listeners) else {
                throw CLIError.failed("batond has no TCP listener for a browser: set daemon.listen in its config", code: .error)
            }
            Terminal.print(base + link.value.path)
        }
    }

    /// `http://HOST:PORT` of the first TCP listener in `/v1/status`'s list (`127.0.0.1:7070`;
    /// Unix sockets are `unix:PATH`).
    static func tcpListener(_ listeners: [String]) -> String? {
        guard let tcp = listeners.first(where: { !$0.hasPrefix("unix:") }), let colon = tcp.lastIndex(of: ":") else { return nil }
        let host = tcp[..<colon], port = tcp[tcp.index(after: colon)...]
        return host.contains(":") ? "http://[\(host)]:\(port)" : "http://\(host):\(port)"
    }
}
