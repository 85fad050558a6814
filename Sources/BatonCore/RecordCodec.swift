import Foundation

/// Encodes records as checksummed JSON lines and decodes them back, telling a good
/// line from a torn or corrupt one. Pure: bytes in, bytes out.
public enum RecordCodec {
    public enum DecodeError: Error, Equatable, Sendable {
        /// The line lacks its checksum trailer: a torn write, or not a record at all.
        case torn
        /// The checksum does not match the bytes: corruption.
        case checksumMismatch
        /// Checksummed bytes that are not a record of this format.
        case malformed(String)
    }

    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }()

    private static let trailerHead = Array(#","crc":""#.utf8)

    /// The longest line a record can have, `\n` included. The largest field written is
    /// an instance's 4 KiB stderr tail (at most 24 KiB once escaped), so real records stay
    /// far below it; recovery treats a longer line as damage and never buffers more.
    public static let maxLineLength = 1 << 20

    /// Above this a number read from damaged bytes is junk, not a seq: 2^53, where JSON
    /// readers that use doubles stop counting exactly.
    public static let maxCredibleSeq: UInt64 = 1 << 53

    private static let recordHead = Array(#"{"seq":"#.utf8)

    /// How many bytes a record start (`{"seq":N,`) spans at most: a scanner reading by
    /// chunks keeps this many bytes of the previous chunk to find one split across them.
    public static let recordStartSpan = recordHead.count + 17

    /// The highest seq among the record starts (`{"seq":N,`) anywhere in `bytes`, read
    /// whatever else is damaged: recovery takes it from the bytes it cuts so that no
    /// number seen there is used again. Numbers above `maxCredibleSeq` are ignored.
    public static func highestSeq(in bytes: UnsafeRawBufferPointer) -> UInt64? {
        guard let base = bytes.baseAddress else { return nil }
        var highest: UInt64?
        var at = 0
        while at < bytes.count, let brace = memchr(base + at, Int32(UInt8(ascii: "{")), bytes.count - at) {
            let start = base.distance(to: UnsafeRawPointer(brace))
            at = start + 1
            guard start + recordHead.count < bytes.count,
                  recordHead.indices.allSatisfy({ bytes[start + $0] == recordHead[$0] }) else { continue }
            var value: UInt64 = 0
            var index = start + recordHead.count
            while index < bytes.count, (48...57).contains(bytes[index]), value <= maxCredibleSeq {
                value = value * 10 + UInt64(bytes[index] - 48)
                index += 1
            }
            guard index > start + recordHead.count, index < bytes.count, bytes[index] == UInt8(ascii: ","),
                  value <= maxCredibleSeq else { continue }
            highest = max(highest ?? 0, value)
        }
        return highest
    }

    /// The record as one line, ending in `\n`.
    public static func encode(_ record: Record) throws -> [UInt8] {
        var line = Array(#"{"seq":\#(record.seq),"time":"\#(record.time)","kind":"\#(record.event.kind)","v":\#(record.event.version),"data":"#.utf8)
        line += try encodeData(record.event)
        return seal(line)
    }

    /// Appends the checksum trailer to an unterminated JSON object prefix.
    public static func seal(_ prefix: [UInt8]) -> [UInt8] {
        var line = prefix
        line += trailerHead
        line += Array(hex(CRC32C.checksum(prefix)).utf8)
        line += Array("\"}\n".utf8)
        return line
    }

    /// Checks a line's trailer and checksum, returning the JSON object (without newline).
    public static func unseal(_ line: ArraySlice<UInt8>) throws(DecodeError) -> ArraySlice<UInt8> {
        var body = line
        if body.last == UInt8(ascii: "\n") { body = body.dropLast() }
        // Trailer: ,"crc":"xxxxxxxx"}  = trailerHead + 8 hex + "}
        let trailerLength = trailerHead.count + 8 + 2
        guard body.count > trailerLength else { throw .torn }
        let trailerStart = body.endIndex - trailerLength
        let trailer = body[trailerStart...]
        guard trailer.starts(with: trailerHead), trailer.suffix(2).elementsEqual(Array("\"}".utf8)) else { throw .torn }
        let hexDigits = trailer.dropFirst(trailerHead.count).prefix(8)
        // Lowercase only: one spelling per checksum, so any flipped bit is noticed.
        guard hexDigits.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }),
              let stored = UInt32(String(decoding: hexDigits, as: UTF8.self), radix: 16) else { throw .torn }
        let prefix = body[..<trailerStart]
        guard CRC32C.checksum(prefix) == stored else { throw .checksumMismatch }
        return body
    }

    public static func decode(_ line: ArraySlice<UInt8>) throws(DecodeError) -> Record {
        let json = try unseal(line)
        do {
            return try decoder.decode(Record.self, from: Data(json))
        } catch {
            throw .malformed(String(describing: error))
        }
    }

    static func hex(_ value: UInt32) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 8 - digits.count) + digits
    }

    private static func encodeData(_ event: LedgerEvent) throws -> [UInt8] {
        func json<T: Encodable>(_ value: T) throws -> [UInt8] { Array(try encoder.encode(value)) }
        switch event {
        case .daemonStarted(let value): return try json(value)
        case .daemonStopped(let value): return try json(value)
        case .agentDesired(let value): return try json(value)
        case .handoffBegan(let value): return try json(value)
        case .handoffPhase(let value): return try json(value)
        case .handoffEnded(let value): return try json(value)
        case .instanceSpawned(let value): return try json(value)
        case .instanceReady(let value): return try json(value)
        case .instanceSignal(let value): return try json(value)
        case .instanceStopped(let value): return try json(value)
        case .instanceExited(let value): return try json(value)
        case .agentError(let value): return try json(value)
        case .releaseCurrent(let value): return try json(value)
        case .releaseStored(let value): return try json(value)
        case .releaseDeleted(let value): return try json(value)
        case .releaseFetchFailed(let value): return try json(value)
        case .rolloutBegan(let value): return try json(value)
        case .rolloutStep(let value): return try json(value)
        case .rolloutEnded(let value): return try json(value)
        case .ledgerCut(let value): return try json(value)
        case .daemonUpgradeBegan(let value): return try json(value)
        case .daemonUpgraded(let value): return try json(value)
        case .daemonUpgradeFailed(let value): return try json(value)
        case .agentRewound(let value): return try json(value)
        case .agentFailed(let value): return try json(value)
        case .unknown: throw EncodingError.invalidValue(event, .init(codingPath: [], debugDescription: "unknown kinds are never written"))
        }
    }
}

/// A record's JSON (`seq`, `time`, `kind`, `v`, `data`; any `crc` is not looked at):
/// how `RecordCodec` decodes a checked line, and how clients read the records that
/// `GET /v1/events` serves.
extension Record: Decodable {
    enum CodingKeys: String, CodingKey { case seq, time, kind, v, data }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let seq = try c.decode(UInt64.self, forKey: .seq)
        let time = try c.decode(Timestamp.self, forKey: .time)
        let kind = try c.decode(String.self, forKey: .kind)
        let version = try c.decode(Int.self, forKey: .v)
        func data<T: Decodable>(_ type: T.Type) throws -> T { try c.decode(type, forKey: .data) }
        let event: LedgerEvent
        switch (kind, version) {
        case ("daemon.started", 1): event = .daemonStarted(try data(DaemonStarted.self))
        case ("daemon.stopped", 1): event = .daemonStopped(try data(DaemonStopped.self))
        case ("agent.desired", 1): event = .agentDesired(try data(AgentDesired.self))
        case ("handoff.began", 1): event = .handoffBegan(try data(HandoffBegan.self))
        case ("handoff.phase", 1): event = .handoffPhase(try data(HandoffPhase.self))
        case ("handoff.ended", 1): event = .handoffEnded(try data(HandoffEnded.self))
        case ("instance.spawned", 1): event = .instanceSpawned(try data(InstanceSpawned.self))
        case ("instance.ready", 1): event = .instanceReady(try data(InstanceRef.self))
        case ("instance.signal", 1): event = .instanceSignal(try data(InstanceSignal.self))
        case ("instance.stopped", 1): event = .instanceStopped(try data(InstanceRef.self))
        case ("instance.exited", 1): event = .instanceExited(try data(InstanceExited.self))
        case ("agent.error", 1): event = .agentError(try data(AgentError.self))
        case ("release.current", 1): event = .releaseCurrent(try data(ReleaseCurrent.self))
        case ("release.stored", 1): event = .releaseStored(try data(ReleaseStored.self))
        case ("release.deleted", 1): event = .releaseDeleted(try data(ReleaseDeleted.self))
        case ("release.fetch_failed", 1): event = .releaseFetchFailed(try data(ReleaseFetchFailed.self))
        case ("rollout.began", 1): event = .rolloutBegan(try data(RolloutBegan.self))
        case ("rollout.step", 1): event = .rolloutStep(try data(RolloutStep.self))
        case ("rollout.ended", 1): event = .rolloutEnded(try data(RolloutEnded.self))
        case ("ledger.cut", 1): event = .ledgerCut(try data(LedgerCut.self))
        case ("daemon.upgrade_began", 1): event = .daemonUpgradeBegan(try data(DaemonUpgradeBegan.self))
        case ("daemon.upgraded", 1): event = .daemonUpgraded(try data(DaemonUpgraded.self))
        case ("daemon.upgrade_failed", 1): event = .daemonUpgradeFailed(try data(DaemonUpgradeFailed.self))
        case ("agent.rewound", 1): event = .agentRewound(try data(AgentRewound.self))
        case ("agent.failed", 1): event = .agentFailed(try data(AgentFailed.self))
        default: event = .unknown(kind: kind, version: version)
        }
        self.init(seq: seq, time: time, event: event)
    }
}
