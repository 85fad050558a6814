import BatonCore

// batond writes this page from the ledger's own lines; a client reads its records as
// the core's `Record`s, which is why it lives here and not in BatonWire.

/// `GET /v1/events` as JSON: a page of ledger records.
public struct EventPage: Decodable, Sendable, Equatable {
    public var lastSeq: UInt64
    public var oldestSeq: UInt64
    public var records: [Record]
    public var truncated: Bool
}
