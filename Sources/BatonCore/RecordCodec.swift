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
            return try decoder.decode(Envelope.self, from: Data(json)).record
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
        case .instanceStopped(let value): return try json(value)
        case .instanceExited(let value): return try json(value)
        case .agentError(let value): return try json(value)
        case .releaseCurrent(let value): return try json(value)
        case .unknown: throw EncodingError.invalidValue(event, .init(codingPath: [], debugDescription: "unknown kinds are never written"))
        }
    }

    /// The decoding side of a record line.
    private struct Envelope: Decodable {
        let record: Record

        enum CodingKeys: String, CodingKey { case seq, time, kind, v, data }

        init(from decoder: any Decoder) throws {
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
            case ("instance.stopped", 1): event = .instanceStopped(try data(InstanceRef.self))
            case ("instance.exited", 1): event = .instanceExited(try data(InstanceExited.self))
            case ("agent.error", 1): event = .agentError(try data(AgentError.self))
            case ("release.current", 1): event = .releaseCurrent(try data(ReleaseCurrent.self))
            default: event = .unknown(kind: kind, version: version)
            }
            record = Record(seq: seq, time: time, event: event)
        }
    }
}
