import ArgumentParser
import BatonClient
import BatonCore
import Foundation

struct Push: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Store a release of an agent: one executable, or a tar archive (plain, gzip, xz, zstd).",
        discussion: "Streams FILE to batond with its SHA-256; a progress bar shows on a terminal only.")

    @Argument(help: "The agent's name.")
    var agent: String

    @Argument(help: "The release's version, e.g. 2.0.")
    var version: String

    @Argument(help: "The executable or the archive.")
    var file: String

    @Option(help: ArgumentHelp("Sign it with this Ed25519 private key (PEM, or base64 of the seed).", valueName: "KEYFILE"))
    var sign: String?

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        try reporting {
            let client = try connection.client(timeout: .seconds(60))
            let digest = try Upload.sha256(of: file)
            let signature = try sign.map { try Upload.sign(sha256: digest, keyFile: $0) }
            let reply = try client.pushRelease(agent, version, file: file, sha256: digest, signature: signature,
                                               progress: Upload.progressBar("push \(agent) \(version)"))
            if output.json { return Terminal.printJSON(reply.response.body) }
            let release = reply.value
            Terminal.print((reply.response.status == 200 ? "already stored: " : "stored: ")
                           + "\(agent) \(version), \(release.size.map(Format.bytes) ?? "?"), sha256 \(digest.prefix(12))"
                           + (release.signedBy.map { ", signed by \($0)" } ?? "")
                           + "; hand over with: baton upgrade \(agent) \(version)")
        }
    }
}

struct Fetch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Have batond download a release from a URL and check it against its SHA-256.",
        discussion: "Follows the download until the release is stored (exit 0) or the fetch failed (exit 2).")

    @Argument(help: "The agent's name.")
    var agent: String

    @Argument(help: "The release's version.")
    var version: String

    // Not --url: that names batond's own listener, as for every command.
    @Option(name: .customLong("from"), help: ArgumentHelp("Where batond downloads it from (http or https).", valueName: "URL"))
    var url: String

    @Option(help: ArgumentHelp("The SHA-256 the download must have (64 hex digits).", valueName: "HEX"))
    var sha256: String

    @Option(help: ArgumentHelp("Base64 of its Ed25519 signature (else batond looks for URL.sig).", valueName: "BASE64"))
    var signature: String?

    @Flag(help: "Exit once batond began the download; do not follow it.")
    var noWait = false

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        guard Hex.isSHA256(sha256.lowercased()) else { throw ValidationError("--sha256 must be 64 hex digits") }
    }

    func run() throws {
        try reporting {
            let client = try connection.client()
            var reply = try client.fetchRelease(agent, version, FetchRequest(url: url, sha256: sha256.lowercased(), signature: signature))
            var shown = ""
            while !noWait, reply.value.state == .fetching {
                if !output.json, let fetch = reply.value.fetch {
                    let line = "\(fetch.phase.rawValue) \(Format.bytes(fetch.receivedBytes))"
                        + (fetch.totalBytes.map { " of \(Format.bytes($0))" } ?? "")
                    if line != shown, Terminal.stdoutIsTTY || fetch.phase != .downloading || shown.isEmpty {
                        Terminal.print(line)
                        shown = line
                    }
                }
                Thread.sleep(forTimeInterval: 0.25)
                reply = try client.release(agent, version)
            }
            if output.json { Terminal.printJSON(reply.response.body) }
            let release = reply.value
            switch release.state {
            case .stored:
                if !output.json {
                    Terminal.print("stored: \(agent) \(version), \(release.size.map(Format.bytes) ?? "?")"
                                   + (release.signedBy.map { ", signed by \($0)" } ?? "")
                                   + "; hand over with: baton upgrade \(agent) \(version)")
                }
            case .fetching:
                if !output.json { Terminal.print("fetching \(agent) \(version) from \(release.fetch?.url ?? url); see baton releases \(agent)") }
            case .failed:
                throw CLIError.failed("the fetch of \(agent) \(version) failed: \(release.fetch?.error ?? "no reason recorded")", code: .failed)
            }
        }
    }
}

struct ReleasesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "releases", abstract: "An agent's stored releases, oldest first, and fetches in progress.")

    @Argument(help: "The agent's name.")
    var agent: String

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        try reporting {
            let reply = try connection.client().releases(agent)
            if output.json { return Terminal.printJSON(reply.response.body) }
            let list = reply.value
            Terminal.print("\(agent): current \(list.current ?? "-"), previous \(list.previous ?? "-"), keeps \(list.keepReleases)")
            guard !list.releases.isEmpty else { return Terminal.print("no releases stored") }
            var table = Table("VERSION", "STATE", "SIZE", "SOURCE", "SHA256", "SIGNED BY", "STORED", "NOTES")
            for release in list.releases {
                var notes: [String] = []
                if release.current { notes.append("current") }
                if release.previous { notes.append("previous") }
                if release.irreversible { notes.append("irreversible") }
                if let inUse = release.inUse, !release.current, !release.previous { notes.append("in use: \(inUse)") }
                if let error = release.fetch?.error { notes.append(error) }
                table.add(release.version, release.state.rawValue, release.size.map(Format.bytes), release.source.rawValue,
                          release.sha256.map { String($0.prefix(12)) }, release.signedBy, release.storedAt.map(Format.clock),
                          notes.joined(separator: ", "))
            }
            table.print()
        }
    }
}
