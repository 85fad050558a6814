import Foundation

/// A Server-Sent Events client for tests, over a raw connection: sends
/// `GET path` with `Accept: text/event-stream`, reads the head, then takes the chunked
/// body apart into events (and comments, such as keepalives).
public final class EventStreamClient {
    /// One event, or one comment line (`comment` set, the rest empty).
    public struct Event: Sendable, CustomStringConvertible {
        public var id: String?
        public var event: String?
        public var data: String = ""
        public var comment: String?

        public var seq: Int? { id.flatMap { Int($0) } }

        /// The data as a JSON object (a ledger record).
        public func json() throws -> [String: Any] {
            guard let object = try JSONSerialization.jsonObject(with: Data(data.utf8)) as? [String: Any] else {
                throw TestFailure("event data is not a JSON object: \(data)")
            }
            return object
        }

        public var description: String {
            comment.map { ":\($0)" } ?? "id=\(id ?? "-") event=\(event ?? "-") data=\(data.prefix(80))"
        }
    }

    public let connection: RawConnection
    public let status: Int
    public let headers: [String: String]
    /// The error answer's body, when the status is not 200.
    public private(set) var body: [UInt8] = []
    private var chunked: [UInt8] = []
    private var text: [UInt8] = []
    private var pending = Event()
    public private(set) var ended = false

    /// Opens the stream; `timeout` bounds every read. `headers` are added (e.g. `Last-Event-ID`).
    public init(_ endpoint: Endpoint, _ path: String, token: String?, headers: [String: String] = [:], timeout: Double = 30) throws {
        connection = try RawConnection(endpoint, timeout: timeout)
        var head = "GET \(path) HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n"
        if let token { head += "Authorization: Bearer \(token)\r\n" }
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) { head += "\(name): \(value)\r\n" }
        try connection.send(Array((head + "\r\n").utf8))
        (status, self.headers) = try connection.readHead()
        if status != 200 {
            let length = Int(self.headers["content-length"] ?? "0") ?? 0
            while body.count < length { body += try connection.readSome() }
        }
    }

    /// The `error.code` of an error answer.
    public var errorCode: String? {
        ((try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any]).flatMap { ($0["error"] as? [String: Any])?["code"] as? String }
    }

    /// The next event or comment; throws at the timeout or when the stream ends.
    public func next() throws -> Event {
        while true {
            if let event = parseEvent() { return event }
            guard !ended else { throw TestFailure("the stream ended") }
            chunked += try connection.readSome()
            dechunk()
        }
    }

    /// The next event that is not a comment.
    public func nextEvent() throws -> Event {
        while true {
            let event = try next()
            if event.comment == nil { return event }
        }
    }

    /// Events (comments skipped) until `count` of them arrived.
    public func events(_ count: Int) throws -> [Event] {
        try (0..<count).map { _ in try nextEvent() }
    }

    /// Closes the connection, as a client that goes away.
    public func close() { connection.closeNow() }

    /// Moves whole chunks' data from `chunked` to `text`.
    private func dechunk() {
        while let lineEnd = find([13, 10], in: chunked) {
            let sizeText = String(decoding: chunked[..<lineEnd], as: UTF8.self).split(separator: ";").first ?? ""
            guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else { return }
            if size == 0 {
                ended = true
                return
            }
            let start = lineEnd + 2
            guard chunked.count >= start + size + 2 else { return }
            text += chunked[start..<(start + size)]
            chunked.removeFirst(start + size + 2)
        }
    }

    /// One event (or comment) from `text`, if a whole one is there.
    private func parseEvent() -> Event? {
        while let lineEnd = text.firstIndex(of: 10) {
            let line = String(decoding: text[..<lineEnd], as: UTF8.self)
            text.removeFirst(lineEnd + 1)
            if line.isEmpty {
                defer { pending = Event() }
                if pending.id != nil || pending.event != nil || !pending.data.isEmpty { return pending }
                continue
            }
            if line.hasPrefix(":") { return Event(comment: String(line.dropFirst()).trimmingCharacters(in: .whitespaces)) }
            let (field, value) = line.firstIndex(of: ":").map {
                (String(line[..<$0]), String(line[line.index(after: $0)...]).replacingOccurrences(of: "^ ", with: "", options: .regularExpression))
            } ?? (line, "")
            switch field {
            case "id": pending.id = value
            case "event": pending.event = value
            case "data": pending.data += pending.data.isEmpty ? value : "\n" + value
            default: break
            }
        }
        return nil
    }

    private func find(_ needle: [UInt8], in bytes: [UInt8]) -> Int? {
        guard bytes.count >= needle.count else { return nil }
        for index in 0...(bytes.count - needle.count) where bytes[index..<(index + needle.count)].elementsEqual(needle) {
            return index
        }
        return nil
    }
}
