import BatonCore
@testable import BatonLedger
import BatonTestSupport
import Foundation
import Logging
import Testing

@Suite("ledger")
struct LedgerTests {
    let logger = Logger(label: "ledger-test")

    func event(_ index: Int) -> LedgerEvent {
        .agentDesired(.init(agent: "web", version: "1.\(index)", mode: .parallel, by: "test"))
    }

    /// Appends and waits until durable, without Swift concurrency.
    @discardableResult
    func append(_ ledger: Ledger, _ events: [LedgerEvent]) throws -> [Record] {
        let done = DispatchSemaphore(value: 0)
        let result = Locked<Result<[Record], LedgerError>?>(nil)
        ledger.append(events) { result.set($0); done.signal() }
        done.wait()
        return try result.get()!.get()
    }

    /// A journal of `count` records, closed cleanly; returns its bytes and where each line starts.
    func journal(records count: Int) throws -> (bytes: [UInt8], lineStarts: [Int]) {
        let state = TemporaryDirectory("ledger")
        let ledger = try Ledger(stateDirectory: state.path, logger: logger)
        for index in 0..<count { try append(ledger, [event(index)]) }
        ledger.close()
        let bytes = try #require(try Files.readAll(ledger.journalPath))
        var starts = [0]
        for (index, byte) in bytes.enumerated() where byte == UInt8(ascii: "\n") && index + 1 < bytes.count { starts.append(index + 1) }
        return (bytes, starts)
    }

    func open(journal bytes: [UInt8], logger: Logger? = nil) throws -> (Ledger, TemporaryDirectory) {
        let state = try stateDirectory(journal: bytes)
        return (try Ledger(stateDirectory: state.path, logger: logger ?? self.logger), state)
    }

    @Test func appendsAreDurableAndSurviveAReopen() throws {
        let state = TemporaryDirectory("ledger")
        let ledger = try Ledger(stateDirectory: state.path, logger: logger)
        let records = try append(ledger, [event(0), event(1)])
        #expect(records.map(\.seq) == [1, 2])
        #expect(ledger.lastSeq == 2)
        let before = ledger.state
        ledger.close()
        let reopened = try Ledger(stateDirectory: state.path, logger: logger)
        defer { reopened.close() }
        #expect(reopened.state == before)
        #expect(try append(reopened, [event(2)]).first?.seq == 3)
    }

    @Test func aDamagedRecordFollowedByGoodOnesRefusesToOpen() throws {
        let (bytes, starts) = try journal(records: 3)
        var damaged = bytes
        damaged[starts[1] + 10] ^= 0x01
        #expect {
            _ = try open(journal: damaged)
        } throws: { error in
            guard case LedgerError.corrupt(_, let line, _) = error else { return false }
            return line == 2
        }
    }

    @Test func aGapInTheSequenceRefusesToOpen() throws {
        let (bytes, starts) = try journal(records: 3)
        let withoutSecond = Array(bytes[..<starts[1]]) + Array(bytes[starts[2]...])
        #expect(throws: LedgerError.self) { _ = try open(journal: withoutSecond) }
    }

    @Test func concurrentAppendsShareOneFsync() throws {
        let state = TemporaryDirectory("ledger")
        let ledger = try Ledger(stateDirectory: state.path, logger: logger)
        defer { ledger.close() }
        let count = 64
        let done = DispatchGroup()
        let seqs = Locked<[UInt64]>([])
        for index in 0..<count {
            done.enter()
            ledger.append([event(index)]) { result in
                if case .success(let records) = result { seqs.update { $0 += records.map(\.seq) } }
                done.leave()
            }
        }
        done.wait()
        #expect(seqs.get().sorted() == (1...UInt64(count)).map { $0 })
        let metrics = ledger.metrics
        #expect(metrics.appends == UInt64(count))
        #expect(metrics.batches < UInt64(count), "appends queued during an fsync go into one batch")
        #expect(metrics.fsyncSeconds.count == metrics.batches)
    }

    @Test func completionRunsOnlyAfterTheRecordIsOnDisk() throws {
        let state = TemporaryDirectory("ledger")
        let ledger = try Ledger(stateDirectory: state.path, logger: logger)
        defer { ledger.close() }
        let done = DispatchSemaphore(value: 0)
        let seenOnDisk = Locked(false)
        ledger.append([event(0)]) { _ in
            let bytes = (try? Files.readAll(ledger.journalPath)).flatMap { $0 } ?? []
            seenOnDisk.set(String(decoding: bytes, as: UTF8.self).contains("\"seq\":1,"))
            done.signal()
        }
        done.wait()
        #expect(seenOnDisk.get())
    }

    @Test func snapshotsRestartTheJournalAndRebuildTheSameState() throws {
        let state = TemporaryDirectory("ledger")
        var options = Ledger.Options()
        options.snapshotEvery = 10
        let ledger = try Ledger(stateDirectory: state.path, options: options, logger: logger)
        for index in 0..<25 { try append(ledger, [event(index)]) }
        #expect(ledger.snapshotSeq == 20)
        #expect(ledger.journalRecords == 5)
        let before = ledger.state
        ledger.close()
        let lines = try String(contentsOfFile: state.file("ledger/journal.jsonl"), encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 5)
        let reopened = try Ledger(stateDirectory: state.path, options: options, logger: logger)
        defer { reopened.close() }
        #expect(reopened.state == before)
        #expect(reopened.lastSeq == 25)
        #expect(try append(reopened, [event(99)]).first?.seq == 26)
    }

    @Test func aCrashBetweenSnapshotAndJournalRestartIsHarmless() throws {
        let (bytes, _) = try journal(records: 6)
        // Snapshot at seq 4 while the journal still holds 1...6, as after a crash there.
        let state = TemporaryDirectory("ledger")
        try FileManager.default.createDirectory(atPath: state.file("ledger"), withIntermediateDirectories: true)
        var folded = LedgerState()
        _ = try Ledger.replay(journal: writeTemp(bytes), snapshot: "", after: 0) { record, _ in if record.seq <= 4 { folded.apply(record) } }
        try Data(try Ledger.encodeSnapshot(folded)).write(to: URL(fileURLWithPath: state.file("ledger/snapshot.json")))
        try Data(bytes).write(to: URL(fileURLWithPath: state.file("ledger/journal.jsonl")))
        let ledger = try Ledger(stateDirectory: state.path, logger: logger)
        defer { ledger.close() }
        #expect(ledger.lastSeq == 6)
        #expect(ledger.state.agents["web"]?.desired?.version == "1.5")
    }

    @Test func aDamagedSnapshotRefusesToOpen() throws {
        let state = TemporaryDirectory("ledger")
        try FileManager.default.createDirectory(atPath: state.file("ledger"), withIntermediateDirectories: true)
        var bytes = try Ledger.encodeSnapshot(LedgerState())
        bytes[5] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: state.file("ledger/snapshot.json")))
        #expect(throws: LedgerError.self) { _ = try Ledger(stateDirectory: state.path, logger: logger) }
    }

    @Test func oneProcessPerStateDirectory() throws {
        let state = TemporaryDirectory("ledger")
        let ledger = try Ledger(stateDirectory: state.path, logger: logger)
        defer { ledger.close() }
        #expect {
            _ = try Ledger(stateDirectory: state.path, logger: logger)
        } throws: { error in
            guard case LedgerError.locked(_, let holder) = error else { return false }
            return holder == "\(getpid())"
        }
    }

    @Test func appendsAfterCloseFail() throws {
        let state = TemporaryDirectory("ledger")
        let ledger = try Ledger(stateDirectory: state.path, logger: logger)
        ledger.close()
        #expect(throws: LedgerError.self) { try append(ledger, [event(0)]) }
        #expect(!ledger.isWritable)
    }

    @Test func theEventsWindowServesRawLines() throws {
        let state = TemporaryDirectory("ledger")
        var options = Ledger.Options()
        options.retainRecords = 3
        let ledger = try Ledger(stateDirectory: state.path, options: options, logger: logger)
        defer { ledger.close() }
        for index in 0..<5 { try append(ledger, [event(index)]) }
        let window = ledger.records(after: 0, limit: 10)
        #expect(window.oldestSeq == 3)
        #expect(window.lastSeq == 5)
        #expect(window.lines.count == 3)
        #expect(try RecordCodec.decode(window.lines[0][...]).seq == 3)
        #expect(ledger.records(after: 4, limit: 10).lines.count == 1)
        #expect(ledger.records(after: 3, limit: 1).lines.count == 1)
        #expect(ledger.records(after: 5, limit: 10).lines.isEmpty)
    }

    @Test func observersHearEveryCommit() throws {
        let state = TemporaryDirectory("ledger")
        let ledger = try Ledger(stateDirectory: state.path, logger: logger)
        defer { ledger.close() }
        let heard = Locked<[UInt64]>([])
        ledger.observeCommits { seq in heard.update { $0.append(seq) } }
        try append(ledger, [event(0)])
        try append(ledger, [event(1), event(2)])
        #expect(heard.get() == [1, 3])
    }

    func writeTemp(_ bytes: [UInt8]) throws -> String {
        let path = NSTemporaryDirectory() + "/journal-\(UUID().uuidString)"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }
}
