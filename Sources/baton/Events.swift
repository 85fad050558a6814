import ArgumentParser
import BatonClient
import BatonCore
import Foundation

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The ledger's records: what batond decided and saw, in order.",
        discussion: """
            Without --since, the last --limit records. With --follow, then every new record as \
            it is appended (Server-Sent Events, or the JSON long-poll from a batond without \
            them), until interrupted; it reconnects when batond restarts. With --json, the \
            page as GET /v1/events answers it, or with --follow one record per line.
            """)

    @Flag(name: [.short, .long], help: "Keep printing new records as they are appended.")
    var follow = false

    @Option(help: ArgumentHelp("Start after this sequence number.", valueName: "SEQ"))
    var since: UInt64?

    @Option(help: ArgumentHelp("Only this agent's records.", valueName: "AGENT"))
    var agent: String?

    @Option(name: [.short, .long], help: "Without --since: how many of the last records (1 to 1000).")
    var limit: Int = 20

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        guard (1...1000).contains(limit) else { throw ValidationError("--limit must be 1 to 1000") }
    }

    func run() throws {
        try reporting {
            let client = try connection.client()
            var start = since ?? 0
            if since == nil {
                let last = try client.lastSeq()
                start = last > UInt64(limit) ? last - UInt64(limit) : 0
            }
            if follow {
                try followRecords(client, after: start)
                return
            }
            let reply = try client.events(since: start, agent: agent)
            let records = try Self.records(in: reply.response.body).filter(matches)
            if output.json {
                if agent == nil { return Terminal.printJSON(reply.response.body) }
                var page = try JSONSerialization.jsonObject(with: Data(reply.response.body)) as? [String: Any] ?? [:]
                page["records"] = records
                return Terminal.printJSON(Array(try JSONSerialization.data(withJSONObject: page, options: [.sortedKeys, .withoutEscapingSlashes])))
            }
            if records.isEmpty { return Terminal.print("no records after \(start)") }
            for record in records { Terminal.print(Self.line(record)) }
        }
    }

    /// Prints records from `after` on as they come, reconnecting while batond restarts.
    private func followRecords(_ client: BatonClient, after: UInt64) throws {
        var seq = after
        var lostSince: ContinuousClock.Instant?
        var serverSent = true
        while true {
            do {
                try streamRecords(client, seq: &seq, serverSent: &serverSent)
                lostSince = nil
            } catch let error as ClientError where error.isTransient {
                let now = ContinuousClock.now
                if let lostSince, now - lostSince > .seconds(30) { throw error }
                if lostSince == nil { lostSince = now }
                Thread.sleep(forTimeInterval: 0.5)
            }
        }
    }

    /// One connection's worth: Server-Sent Events while the stream lasts, or one long-poll.
    private func streamRecords(_ client: BatonClient, seq: inout UInt64, serverSent: inout Bool) throws {
        let stream = serverSent ? try client.eventStream(since: seq, agent: agent) : nil
        guard let stream, stream.header("Content-Type")?.hasPrefix("text/event-stream") == true else {
            // A batond without Server-Sent Events: JSON pages, long-polled.
            stream?.close()
            serverSent = false
            let page = try client.events(since: seq, wait: .seconds(30), agent: agent)
            for record in try Self.records(in: page.response.body) {
                if let number = record["seq"] as? NSNumber { seq = max(seq, number.uint64Value) }
                if matches(record) { try emit(record) }
            }
            return
        }
        var parser = ServerSentEventParser()
        // batond sends a keepalive every 15 s: a minute of silence is a dead connection.
        while let chunk = try stream.next(deadline: .now + .seconds(60)) {
            for event in parser.feed(chunk) {
                guard let record = try? JSONSerialization.jsonObject(with: Data(event.data.utf8)) as? [String: Any] else { continue }
                if let number = record["seq"] as? NSNumber { seq = max(seq, number.uint64Value) }
                if matches(record) { try emit(record) }
            }
        }
    }

    private func emit(_ record: [String: Any]) throws {
        if output.json {
            Terminal.printJSON(Array(try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys, .withoutEscapingSlashes])))
        } else {
            Terminal.print(Self.line(record))
        }
    }

    /// The filter of `--agent`, applied here too for a batond that ignores `agent=`.
    private func matches(_ record: [String: Any]) -> Bool {
        guard let agent else { return true }
        return (record["data"] as? [String: Any])?["agent"] as? String == agent
    }

    static func records(in body: [UInt8]) throws -> [[String: Any]] {
        guard let page = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
              let records = page["records"] as? [[String: Any]] else {
            throw ClientError.malformedBody("no records in the events page")
        }
        return records
    }

    /// `  42  22:42:07  handoff.phase  agent=web handoff=web-3 phase=spawning`.
    static func line(_ record: [String: Any]) -> String {
        let seq = (record["seq"] as? NSNumber)?.stringValue ?? "?"
        let time = (record["time"] as? String).flatMap { Timestamp(rfc3339: $0) }.map(Format.clock) ?? "?"
        let kind = record["kind"] as? String ?? "?"
        let data = record["data"] as? [String: Any] ?? [:]
        let fields = data.keys.sorted().compactMap { key -> String? in
            guard !["stderr_tail", "token_digest", "start_time"].contains(key), let value = data[key], !(value is NSNull) else { return nil }
            var text: String
            if let string = value as? String {
                text = string
            } else if let data = try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .fragmentsAllowed]) {
                text = String(decoding: data, as: UTF8.self)
            } else {
                text = "\(value)"
            }
            text = text.replacingOccurrences(of: "\n", with: " ")
            if text.count > 80 { text = String(text.prefix(77)) + "..." }
            return "\(key)=\(text)"
        }
        return "\(seq.padding(toLength: max(seq.count, 5), withPad: " ", startingAt: 0))  \(time)  "
            + "\(Terminal.paint(kind, .bold))  \(fields.joined(separator: " "))"
    }
}
