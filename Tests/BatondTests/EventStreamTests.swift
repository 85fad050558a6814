import BatonTestSupport
import Foundation
import Testing

/// `GET /v1/events` as Server-Sent Events, and its agent filter, against the real
/// batond. The records come from desired versions of external agents (each `PUT
/// desired` appends one `agent.desired` record and starts nothing).
@Suite("event streams")
struct EventStreamTests {
    static func config(keepalive: String = "300ms", http: String = "") -> String {
        """
        [http]
        event_stream_keepalive = "\(keepalive)"
        \(http)

        [agents.ext]
        external = true

        [agents.other]
        external = true
        """
    }

    static func lastSeq(_ daemon: BatondProcess) throws -> Int {
        let status = try daemon.endpoint.get("/v1/status", token: daemon.token).json()
        return try #require((status["ledger"] as? [String: Any])?["last_seq"] as? Int)
    }

    static func desire(_ daemon: BatondProcess, _ agent: String, _ version: String) throws {
        try desire(daemon.endpoint, daemon.token, agent, version)
    }

    static func desire(_ endpoint: Endpoint, _ token: String, _ agent: String, _ version: String) throws {
        let answer = try endpoint.json("PUT", "/v1/agents/\(agent)/desired", token: token, #"{"version":"\#(version)"}"#)
        guard answer.status == 202 else { throw TestFailure("PUT desired \(agent) \(version): \(answer.status) \(answer.text)") }
    }

    /// The seqs the JSON route gives after `since` (and about `agent`).
    static func seqs(_ daemon: BatondProcess, after since: Int, agent: String? = nil) throws -> [Int] {
        let query = "since=\(since)" + (agent.map { "&agent=\($0)" } ?? "")
        let page = try daemon.endpoint.get("/v1/events?\(query)", token: daemon.token).json()
        return (page["records"] as? [[String: Any]] ?? []).compactMap { $0["seq"] as? Int }
    }

    /// Events until the one with seq `last`.
    static func events(_ stream: EventStreamClient, through last: Int) throws -> [EventStreamClient.Event] {
        var events: [EventStreamClient.Event] = []
        while events.last?.seq ?? 0 < last { events.append(try stream.nextEvent()) }
        return events
    }

    @Test func aLiveEventArrivesAsItIsAppended() throws {
        let daemon = try BatondProcess(configText: Self.config())
        defer { daemon.stop() }
        let since = try Self.lastSeq(daemon)
        let stream = try EventStreamClient(daemon.endpoint, "/v1/events?since=\(since)", token: daemon.token)
        #expect(stream.status == 200)
        #expect(stream.headers["content-type"] == "text/event-stream")
        #expect(stream.headers["transfer-encoding"] == "chunked")
        try Self.desire(daemon, "ext", "2.0")
        let event = try stream.nextEvent()
        #expect(event.seq == since + 1, "\(event)")
        #expect(event.event == "agent.desired")
        let record = try event.json()
        #expect(record["seq"] as? Int == since + 1 && record["kind"] as? String == "agent.desired", "\(record)")
        #expect((record["data"] as? [String: Any])?["version"] as? String == "2.0")
        #expect((record["crc"] as? String)?.count == 8, "the record as the journal has it")
    }

    /// A quiet ledger still sends a comment line every keepalive interval.
    @Test func aKeepaliveComesWhenNothingHappens() throws {
        let daemon = try BatondProcess(configText: Self.config())
        defer { daemon.stop() }
        let stream = try EventStreamClient(daemon.endpoint, "/v1/events?since=\(try Self.lastSeq(daemon))", token: daemon.token,
                                           timeout: 5)
        let first = try stream.next()
        #expect(first.comment == "keepalive", "\(first)")
        let started = Date()
        let second = try stream.next()
        #expect(second.comment == "keepalive", "\(second)")
        #expect(Date().timeIntervalSince(started) >= 0.2, "keepalives come every 300 ms, not in a rush")
    }

    /// Records appended in a burst from several clients while the stream is being
    /// written: each once, in order, the same as the JSON route gives.
    @Test func aBurstArrivesWholeAndInOrder() throws {
        let daemon = try BatondProcess(configText: Self.config())
        defer { daemon.stop() }
        let since = try Self.lastSeq(daemon)
        let stream = try EventStreamClient(daemon.endpoint, "/v1/events?since=\(since)", token: daemon.token)
        let (endpoint, token) = (daemon.endpoint, daemon.token)
        let writers = (0..<4).map { writer in
            inBackground {
                for index in 1...50 { try Self.desire(endpoint, token, writer % 2 == 0 ? "ext" : "other", "\(writer).\(index)") }
            }
        }
        for writer in writers { try writer.wait() }
        let last = try Self.lastSeq(daemon)
        let streamed = try Self.events(stream, through: last).compactMap(\.seq)
        #expect(streamed == Array((since + 1)...last))
        #expect(streamed == (try Self.seqs(daemon, after: since)))
    }

    /// `agent=` keeps only that agent's records, on the stream and on the JSON route,
    /// and a parked JSON request waits for one of them.
    @Test func theAgentFilterKeepsOneAgentsRecords() throws {
        let daemon = try BatondProcess(configText: Self.config())
        defer { daemon.stop() }
        let since = try Self.lastSeq(daemon)
        let stream = try EventStreamClient(daemon.endpoint, "/v1/events?since=\(since)&agent=ext", token: daemon.token)
        let (endpoint, token) = (daemon.endpoint, daemon.token)
        let parked = inBackground { try endpoint.get("/v1/events?since=\(since)&agent=ext&wait=30", token: token, timeout: 40) }
        // Parked before the first record comes, so that it has to wait through it.
        try waitUntil(timeout: 10) { ((try? daemon.endpoint.get("/metrics").text) ?? "").contains("baton_http_parked_requests 1") }
        try Self.desire(daemon, "other", "1.0")
        try Self.desire(daemon, "ext", "2.0")
        let event = try stream.nextEvent()
        #expect(event.seq == since + 2, "\(event)")
        #expect((try event.json()["data"] as? [String: Any])?["agent"] as? String == "ext")
        let page = try parked.wait().json()
        let records = page["records"] as? [[String: Any]] ?? []
        #expect(records.map { $0["seq"] as? Int } == [since + 2], "\(page)")
        #expect(page["last_seq"] as? Int == since + 2)
        #expect(try Self.seqs(daemon, after: since, agent: "other") == [since + 1])
        let bad = try daemon.endpoint.get("/v1/events?agent=No%20Agent", token: daemon.token)
        #expect(bad.status == 400 && bad.errorCode == "invalid_parameter")
    }

    /// Stopped and started again, batond serves a client that comes back with the id of
    /// the last event it saw exactly the records after it: the rest of the first run's,
    /// its stop, its start, and what was appended since.
    @Test func aStreamResumesFromLastEventIDAcrossARestart() throws {
        let state = TemporaryDirectory("sse-restart")
        let first = try BatondProcess(state: state, configText: Self.config())
        try Self.desire(first, "ext", "1.0")
        try Self.desire(first, "ext", "1.1")
        let stream = try EventStreamClient(first.endpoint, "/v1/events?since=0", token: first.token)
        // The client saw the first two records only; the rest were in flight when it lost them.
        let seen = try stream.events(2)
        #expect(seen.map(\.seq) == [1, 2])
        #expect(first.stop() == 0)
        // The stream was ended properly by the stop (the client reads its end), not cut.
        #expect(throws: TestFailure.self) { while true { _ = try stream.next() } }
        #expect(stream.ended)

        let second = try BatondProcess(state: state, configText: Self.config())
        defer { second.stop() }
        try Self.desire(second, "ext", "2.0")
        try Self.desire(second, "other", "2.0")
        let last = try Self.lastSeq(second)
        let resumed = try EventStreamClient(second.endpoint, "/v1/events", token: second.token,
                                            headers: ["Last-Event-ID": "2"])
        let events = try Self.events(resumed, through: last)
        #expect(events.compactMap(\.seq) == Array(3...last), "\(events)")
        #expect(events.compactMap(\.seq) == (try Self.seqs(second, after: 2)))
        #expect(events.contains { $0.event == "daemon.stopped" } && events.contains { $0.event == "daemon.started" })
        // `since` works the same, and the header wins over it.
        let bySince = try EventStreamClient(second.endpoint, "/v1/events?since=\(last - 1)", token: second.token)
        #expect(try bySince.nextEvent().seq == last)
        let both = try EventStreamClient(second.endpoint, "/v1/events?since=0", token: second.token,
                                         headers: ["Last-Event-ID": "\(last - 1)"])
        #expect(try both.nextEvent().seq == last)
        let bad = try EventStreamClient(second.endpoint, "/v1/events", token: second.token, headers: ["Last-Event-ID": "soon"])
        #expect(bad.status == 400 && bad.errorCode == "invalid_parameter")
    }

    /// Records asked for that are no longer kept (a snapshot, then a restart): the first
    /// event says so, then the oldest kept record follows.
    @Test func aStreamSaysWhenRecordsAreGone() throws {
        let state = TemporaryDirectory("sse-truncated")
        let config = Self.config() + "\n\n[ledger]\nsnapshot_every = 10\n"
        let first = try BatondProcess(state: state, configText: config)
        for index in 1...12 { try Self.desire(first, "ext", "1.\(index)") }
        first.stop()
        let second = try BatondProcess(state: state, configText: config)
        defer { second.stop() }
        let page = try second.endpoint.get("/v1/events?since=0", token: second.token).json()
        let oldest = try #require(page["oldest_seq"] as? Int)
        #expect(oldest > 1, "\(page)")
        let stream = try EventStreamClient(second.endpoint, "/v1/events?since=0", token: second.token)
        let truncated = try stream.nextEvent()
        #expect(truncated.event == "truncated" && truncated.id == nil, "\(truncated)")
        #expect(try truncated.json()["oldest_seq"] as? Int == oldest)
        #expect(try truncated.json()["after"] as? Int == 0)
        #expect(try stream.nextEvent().seq == oldest)
    }

    /// Past `max_event_streams` a stream is refused at once in the one error shape; a
    /// client that goes away frees its stream (well before any keepalive would write to it).
    @Test func theStreamLimitRefusesAndALeavingClientFreesItsStream() throws {
        let daemon = try BatondProcess(configText: Self.config(keepalive: "1h", http: "max_event_streams = 2"))
        defer { daemon.stop() }
        let streams = try (0..<2).map { _ in try EventStreamClient(daemon.endpoint, "/v1/events?since=0", token: daemon.token) }
        #expect(streams.allSatisfy { $0.status == 200 })
        let refused = try EventStreamClient(daemon.endpoint, "/v1/events?since=0", token: daemon.token)
        #expect(refused.status == 503 && refused.errorCode == "too_many_streams", "\(String(decoding: refused.body, as: UTF8.self))")
        #expect(refused.headers["retry-after"] == "1")
        // The JSON route is not a stream: it still answers.
        #expect(try daemon.endpoint.get("/v1/events?since=0", token: daemon.token).status == 200)
        #expect(try daemon.endpoint.get("/metrics").text.contains("baton_http_event_streams 2\n"))
        streams[0].close()
        // Freed by the sweep (a second at most), though its connection slept and nothing was written to it.
        try waitUntil(timeout: 5) { (try? daemon.endpoint.get("/metrics").text)?.contains("baton_http_event_streams 1\n") == true }
        var again: EventStreamClient?
        try waitUntil(timeout: 5) {
            again = try? EventStreamClient(daemon.endpoint, "/v1/events?since=0", token: daemon.token)
            return again?.status == 200
        }
        #expect(try again?.nextEvent().seq == 1)
        // The other stream was not disturbed.
        #expect(try streams[1].nextEvent().seq == 1)
    }

    @Test(.enabled(if: which("curl") != nil, "needs curl"))
    func curlFollowsTheStream() throws {
        let daemon = try BatondProcess(configText: Self.config())
        defer { daemon.stop() }
        guard case .tcp(let host, let port) = daemon.endpoint else { throw TestFailure("no TCP listener") }
        // curl -N prints events as they come; --max-time ends it (exit 28), after the keepalives.
        let result = try run(["/bin/sh", "-c", "curl -sN --max-time 1 -H 'Accept: text/event-stream' "
                                  + "-H 'Authorization: Bearer \(daemon.token)' 'http://\(host):\(port)/v1/events?since=0'; echo exit=$?"])
        #expect(result.output.hasPrefix("id: 1\nevent: daemon.started\ndata: {\"seq\":1,"), "\(result.output)")
        #expect(result.output.contains("\n\n: keepalive\n\n"), "\(result.output)")
        #expect(result.output.hasSuffix("exit=28\n"), "\(result.output)")
    }
}
