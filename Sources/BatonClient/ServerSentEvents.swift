/// One event of a `text/event-stream` body.
public struct ServerSentEvent: Sendable, Equatable {
    public var id: String?
    /// The `event:` field; nil means `message`.
    public var event: String?
    /// The `data:` lines joined with `\n`.
    public var data: String

    public init(id: String?, event: String?, data: String) { self.id = id; self.event = event; self.data = data }
}

/// Cuts a `text/event-stream` body into events as its bytes arrive, as the HTML
/// standard's parser does: fields by line (CRLF, LF or CR), `:` comments (keepalives)
/// skipped, an event dispatched at the blank line after it.
public struct ServerSentEventParser: Sendable {
    private var pending: [UInt8] = []
    private var id: String?
    private var event: String?
    private var data: [String] = []
    private var sawCR = false

    public init() {}

    /// The events that the bytes complete.
    public mutating func feed(_ bytes: some Sequence<UInt8>) -> [ServerSentEvent] {
        var events: [ServerSentEvent] = []
        for byte in bytes {
            if sawCR {
                sawCR = false
                if byte == 10 { continue }  // the LF of a CRLF
            }
            if byte == 10 || byte == 13 {
                sawCR = byte == 13
                if let event = line(String(decoding: pending, as: UTF8.self)) { events.append(event) }
                pending.removeAll(keepingCapacity: true)
            } else {
                pending.append(byte)
            }
        }
        return events
    }

    private mutating func line(_ text: String) -> ServerSentEvent? {
        if text.isEmpty {
            defer { event = nil; data = [] }
            guard !data.isEmpty else { return nil }
            return ServerSentEvent(id: id, event: event, data: data.joined(separator: "\n"))
        }
        if text.hasPrefix(":") { return nil }
        let name: Substring
        var value: Substring = ""
        if let colon = text.firstIndex(of: ":") {
            name = text[..<colon]
            value = text[text.index(after: colon)...]
            if value.hasPrefix(" ") { value = value.dropFirst() }
        } else {
            name = Substring(text)
        }
        switch name {
        case "id": id = String(value)
        case "event": event = String(value)
        case "data": data.append(String(value))
        default: break  // `retry` and unknown fields: nothing to do here
        }
        return nil
    }
}
