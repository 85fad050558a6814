@testable import BatonCore
import Foundation
import Testing

@Suite("record codec")
struct RecordCodecTests {
    static let events: [LedgerEvent] = [
        .daemonStarted(.init(pid: 42, version: "0.1.0", config: "/etc/baton/batond.toml", listeners: ["unix:/run/baton/batond.sock"])),
        .daemonStopped(.init(pid: 42, reason: "signal")),
        .agentDesired(.init(agent: "web", version: "2.0", mode: .sequential, by: "uid 0")),
        // An external agent's: where it fetches the release, and its digest.
        .agentDesired(.init(agent: "ext", version: "2.0", mode: .parallel, by: "uid 0",
                            url: "https://releases.example/ext-2.0.tar.gz", sha256: String(repeating: "d", count: 64))),
        .handoffBegan(.init(handoff: "h-1", agent: "web", from: "1.0", to: "2.0", mode: .parallel)),
        .handoffPhase(.init(handoff: "h-1", agent: "web", phase: "waiting_ready")),
        .handoffEnded(.init(handoff: "h-1", agent: "web", outcome: .committed, gapMs: 0.4, error: nil)),
        .instanceSpawned(.init(agent: "web", instance: "web.3", version: "2.0", pid: 999, startTime: 123456, handoff: "h-1")),
        // Every field a restarted batond needs to re-adopt the instance survives the trip.
        .instanceSpawned(.init(agent: "web", instance: "web.4", version: "2.0", pid: 1000, startTime: 123457, handoff: "h-1",
                               role: "successor", tokenDigest: String(repeating: "ab", count: 32), registered: false)),
        .instanceReady(.init(agent: "web", instance: "web.3")),
        .instanceSignal(.init(agent: "web", instance: "web.3", signal: .go, handoff: "web-2")),
        .instanceStopped(.init(agent: "web", instance: "web.2")),
        .instanceExited(.init(agent: "web", instance: "web.2", exitCode: 0, signal: nil)),
        .agentError(.init(agent: "web", reason: "exited before ready", stderrTail: "panic: \"quoted\"\nline two\u{1}", handoff: "h-2", instance: "web.4")),
        .releaseCurrent(.init(agent: "web", version: "2.0", previous: "1.0")),
        .releaseStored(.init(agent: "web", version: "2.0", sha256: String(repeating: "c", count: 64), size: 1 << 33,
                             source: "fetch", url: "https://releases.example/web-2.0.tar.zst", by: "operator (token)",
                             signedBy: "ci", irreversible: true, found: nil)),
        .releaseDeleted(.init(agent: "web", version: "1.0", by: "batond", reason: .collected)),
        .releaseFetchFailed(.init(agent: "web", version: "3.0", url: "https://releases.example/web-3.0.tar.gz",
                                  by: "uid 0", error: "GET answered 404")),
        .rolloutBegan(.init(rollout: "machine-1", version: "2.0", barrier: true, migration: ["{release}/bin/migrate", "--to", "2"],
                            agents: [.init(agent: "db", from: "1.0"), .init(agent: "web", from: nil)], by: "operator (token)")),
        .rolloutStep(.init(rollout: "machine-1", phase: .migrating)),
        .rolloutStep(.init(rollout: "machine-1", agent: "db", status: .failed, error: "not ready within 10s")),
        .rolloutStep(.init(rollout: "machine-1", migrationSucceeded: false, migration: "exited 3: no such table")),
        .rolloutEnded(.init(rollout: "machine-1", outcome: .restored, error: "the migration failed")),
        .ledgerCut(.init(file: "journal.jsonl.cut-20261130T021939.123Z", line: 3, bytes: 57, reason: "no end of line",
                         follows: 2, highestCutSeq: 3)),
        .daemonUpgradeBegan(.init(from: String(repeating: "a", count: 64), fromVersion: "0.1.0",
                                  to: String(repeating: "b", count: 64), pid: 42, by: "operator (token)")),
        .daemonUpgraded(.init(from: String(repeating: "a", count: 64), fromVersion: "0.1.0",
                              to: String(repeating: "b", count: 64), toVersion: "0.2.0", pid: 42)),
        .daemonUpgradeFailed(.init(from: String(repeating: "a", count: 64), to: String(repeating: "b", count: 64),
                                   stage: .confirm, reason: "died before confirming")),
        .agentRewound(.init(agent: "web", from: "2.0", to: "1.0", reason: "2.0 crash-looped: 5 abnormal exits within 5m; rewound to 1.0",
                            exits: 5, windowMs: 300_000)),
        .agentFailed(.init(agent: "web", version: "2.0", reason: "2.0 crash-looped; it is irreversible")),
    ]

    @Test func everyKnownKindIsCovered() {
        #expect(Set(Self.events.map(\.kind)) == Set(LedgerEvent.knownKinds))
    }

    @Test(arguments: events)
    func roundTrip(_ event: LedgerEvent) throws {
        let record = Record(seq: 7, time: Timestamp(milliseconds: 1_795_560_776_824), event: event)
        let line = try RecordCodec.encode(record)
        #expect(line.last == UInt8(ascii: "\n"))
        #expect(line.dropLast().contains(UInt8(ascii: "\n")) == false, "one record, one line")
        #expect(try RecordCodec.decode(line[...]) == record)
        // Each line is a JSON object of its own.
        let object = try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any]
        #expect(object?["kind"] as? String == event.kind)
        #expect(object?["v"] as? Int == 1)
    }

    @Test func theChecksumCoversTheLineBeforeTheTrailer() throws {
        let line = try RecordCodec.encode(Record(seq: 1, time: Timestamp(milliseconds: 0), event: Self.events[1]))
        let text = String(decoding: line, as: UTF8.self)
        let marker = try #require(text.range(of: #","crc":""#))
        let prefix = Array(text[..<marker.lowerBound].utf8)
        let stored = String(text[marker.upperBound...].prefix(8))
        #expect(stored == RecordCodec.hex(CRC32C.checksum(prefix)))
    }

    @Test func everyFlippedByteIsDetected() throws {
        let line = try RecordCodec.encode(Record(seq: 3, time: .now(), event: Self.events[2]))
        for index in 0..<(line.count - 1) {
            var damaged = line
            damaged[index] ^= 0x20
            #expect(throws: RecordCodec.DecodeError.self, "byte \(index)") { try RecordCodec.decode(damaged[...]) }
        }
    }

    @Test func everyTruncationIsDetected() throws {
        let line = try RecordCodec.encode(Record(seq: 3, time: .now(), event: Self.events[0]))
        for length in 0..<(line.count - 1) {
            #expect(throws: RecordCodec.DecodeError.self, "length \(length)") { try RecordCodec.decode(line[..<length]) }
        }
    }

    @Test func unknownKindsAreKeptNotRejected() throws {
        let prefix = Array(#"{"seq":9,"time":"2026-01-01T00:00:00.000Z","kind":"future.thing","v":3,"data":{"x":1}"#.utf8)
        let record = try RecordCodec.decode(RecordCodec.seal(prefix)[...])
        #expect(record.event == .unknown(kind: "future.thing", version: 3))
        #expect(record.seq == 9)
    }

    @Test func crc32cKnownAnswer() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
    }
}

@Suite("timestamps")
struct TimestampTests {
    @Test(arguments: [
        (Int64(0), "1970-01-01T00:00:00.000Z"),
        (Int64(1_795_560_776_824), "2026-11-24T22:52:56.824Z"),
        (Int64(951_782_400_001), "2000-02-29T00:00:00.001Z"),
        (Int64(-1), "1969-12-31T23:59:59.999Z"),
    ])
    func formatsAndParses(_ milliseconds: Int64, _ text: String) {
        #expect(Timestamp(milliseconds: milliseconds).description == text)
        #expect(Timestamp(rfc3339: text)?.milliseconds == milliseconds)
    }

    @Test(arguments: ["", "2026-11-24", "2026-13-01T00:00:00Z", "2026-11-24T22:52:56.824+01:00", "2026-11-24T25:00:00Z"])
    func rejectsOtherForms(_ text: String) {
        #expect(Timestamp(rfc3339: text) == nil)
    }

    @Test func parsesWithoutFraction() {
        #expect(Timestamp(rfc3339: "1970-01-01T00:00:01Z")?.milliseconds == 1000)
    }
}

@Suite("names")
struct NamesTests {
    @Test(arguments: ["web", "machine-0", "unit-mysql-0", "a", "a.b_c-d", String(repeating: "a", count: 63)])
    func validAgents(_ name: String) { #expect(Names.isValidAgent(name)) }

    @Test(arguments: ["", "Web", "-x", ".hidden", "a/b", "../etc", "a b", String(repeating: "a", count: 64), "ünï"])
    func invalidAgents(_ name: String) { #expect(!Names.isValidAgent(name)) }

    @Test(arguments: ["1.0", "2.0.0-rc.1", "v3+build.5", "A_1"])
    func validVersions(_ version: String) { #expect(Names.isValidVersion(version)) }

    @Test(arguments: ["", "current", "previous", "..", "1..2", "a/b", ".1", "-1", "1 0"])
    func invalidVersions(_ version: String) { #expect(!Names.isValidVersion(version)) }
}
