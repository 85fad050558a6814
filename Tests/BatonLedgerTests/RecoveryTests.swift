import BatonCore
@testable import BatonLedger
import BatonTestSupport
import Foundation
import Logging
import Testing

/// Recovery at start: only a torn last write is cut (and kept aside); every other
/// damage refuses to open, leaving the journal as it was.
extension LedgerTests {
    /// A state directory whose journal holds `bytes`.
    func stateDirectory(journal bytes: [UInt8]) throws -> TemporaryDirectory {
        let state = TemporaryDirectory("ledger")
        try FileManager.default.createDirectory(atPath: state.file("ledger"), withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: state.file("ledger/journal.jsonl")))
        return state
    }

    /// The seqs of the journal's records, read as the next start reads them.
    func seqs(_ state: TemporaryDirectory) throws -> [UInt64] {
        var seqs: [UInt64] = []
        _ = try Ledger.replay(journal: state.file("ledger/journal.jsonl"), snapshot: state.file("ledger/snapshot.json"),
                              after: 0) { record, _ in seqs.append(record.seq) }
        return seqs
    }

    /// The `journal.jsonl.cut-*` files recovery left.
    func cutFiles(_ state: TemporaryDirectory) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: state.file("ledger")).filter { $0.hasPrefix("journal.jsonl.cut-") }
    }

    /// Expects opening a journal of `bytes` to refuse with `problem` on `line`, and to
    /// leave the journal byte for byte as it was.
    func expectRefusal(_ bytes: [UInt8], line: Int, _ problem: JournalProblem,
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        try expectRefusal(bytes, line: line, matching: { $0 == problem }, sourceLocation: sourceLocation)
    }

    func expectRefusal(_ bytes: [UInt8], line: Int, matching problem: (JournalProblem) -> Bool,
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let state = try stateDirectory(journal: bytes)
        #expect(sourceLocation: sourceLocation) {
            _ = try Ledger(stateDirectory: state.path, logger: logger)
        } throws: { error in
            guard case LedgerError.corrupt(let path, let refused, let found) = error else { return false }
            return path == state.file("ledger/journal.jsonl") && refused == line && problem(found)
        }
        #expect(try Files.readAll(state.file("ledger/journal.jsonl")) == bytes, "left as it was", sourceLocation: sourceLocation)
        #expect(try cutFiles(state).isEmpty, sourceLocation: sourceLocation)
    }

    // MARK: - What is cut

    @Test func truncatingTheLastRecordAtEveryOffsetKeepsAllEarlierOnes() throws {
        let (bytes, starts) = try journal(records: 4)
        let last = try #require(starts.last)
        for length in last..<bytes.count {
            let (ledger, state) = try open(journal: Array(bytes[..<length]))
            #expect(ledger.state.agents["web"]?.desired?.version == "1.2", "cut at \(length)")
            let appended = try append(ledger, [event(9)]).first?.seq
            ledger.close()
            let cuts = try cutFiles(state)
            if length == last {
                #expect(cuts.isEmpty)
                #expect(try seqs(state) == [1, 2, 3, 4])
                continue
            }
            // The torn record is kept aside byte for byte; a ledger.cut record above its
            // number (4) takes its place, and the next record follows that.
            #expect(cuts.count == 1, "cut at \(length)")
            let kept = try Files.readAll(state.file("ledger/\(cuts.first ?? "")"))
            #expect(kept?[...] == bytes[last..<length], "cut at \(length)")
            #expect(try seqs(state) == [1, 2, 3, 5, 6], "cut at \(length)")
            #expect(appended == 6, "cut at \(length)")
        }
    }

    @Test func aGroupCommitCutShortKeepsItsCompleteLines() throws {
        let state = TemporaryDirectory("ledger")
        let ledger = try Ledger(stateDirectory: state.path, logger: logger)
        try append(ledger, [event(0)])
        try append(ledger, [event(1), event(2), event(3), event(4)])
        ledger.close()
        let bytes = try #require(try Files.readAll(ledger.journalPath))
        let ends = bytes.indices.filter { bytes[$0] == UInt8(ascii: "\n") }.map { $0 + 1 }
        // The batch (records 2...5, one write) cut short anywhere: its complete lines stay.
        for length in ends[0]..<bytes.count {
            let complete = UInt64(ends.filter { $0 <= length }.count)
            let (reopened, state) = try open(journal: Array(bytes[..<length]))
            reopened.close()
            let cut: [UInt64] = ends.contains(length) ? [] : [complete + 2]
            #expect(try seqs(state) == Array(1...complete) + cut, "cut at \(length)")
        }
    }

    @Test func aFlippedByteInTheLastRecordIsCutAsideAndItsNumberNeverReused() throws {
        let (bytes, starts) = try journal(records: 3)
        let last = try #require(starts.last)
        for index in last..<(bytes.count - 1) {
            var damaged = bytes
            damaged[index] ^= 0x01
            let (ledger, state) = try open(journal: damaged)
            #expect(ledger.state.agents["web"]?.desired?.version == "1.1", "flip at \(index)")
            #expect(try append(ledger, [event(9)]).first?.seq == 5, "flip at \(index)")
            ledger.close()
            #expect(try seqs(state) == [1, 2, 4, 5], "flip at \(index)")
        }
    }

    @Test func theCutIsLoggedAndTheNextStartAcceptsItsJump() throws {
        let (bytes, starts) = try journal(records: 3)
        var damaged = bytes
        damaged[starts[2] + 40] ^= 0x01
        let warnings = Locked<[(message: Logger.Message, metadata: Logger.Metadata)]>([])
        let recording = Logger(label: "ledger-test") { _ in
            RecordingHandler { level, message, metadata in
                if level == .warning { warnings.update { $0 += [(message, metadata)] } }
            }
        }
        let (ledger, state) = try open(journal: damaged, logger: recording)
        let cuts = try cutFiles(state)
        #expect(cuts.count == 1)
        let cutFile = cuts.first ?? ""
        #expect(try Files.readAll(state.file("ledger/\(cutFile)"))?[...] == damaged[starts[2]...])
        #expect(warnings.get().count == 1)
        let logged = warnings.get().first?.metadata ?? [:]
        #expect(logged["cut_file"] == "\(state.file("ledger/\(cutFile)"))")
        #expect(logged["path"] == "\(ledger.journalPath)")
        #expect(logged["line"] == "3")
        #expect(logged["bytes"] == "\(damaged.count - starts[2])")
        let line = try #require(ledger.records(after: 2, limit: 1).lines.first)
        let record = try RecordCodec.decode(line[...])
        #expect(record.seq == 4)
        #expect(record.event == .ledgerCut(.init(file: cutFile, line: 3, bytes: UInt64(damaged.count - starts[2]),
                                                 reason: "checksum mismatch", follows: 2, highestCutSeq: 3)))
        #expect(try append(ledger, [event(9)]).first?.seq == 5)
        ledger.close()

        let reopened = try Ledger(stateDirectory: state.path, logger: logger)
        #expect(reopened.lastSeq == 5)
        reopened.close()
        // The jump from 2 to 4 is accepted only right after the record it names.
        let journal = try #require(try Files.readAll(state.file("ledger/journal.jsonl")))
        let withoutSecond = Array(journal[..<starts[1]]) + Array(journal[starts[2]...])
        try expectRefusal(withoutSecond, line: 2,
                          .outOfSequence("ledger.cut 4 says it follows 2, but the record before it is 1"))
    }

    // MARK: - What refuses

    @Test func aJournalWithCRLFLineEndingsRefusesAndIsLeftAsItWas() throws {
        let (bytes, _) = try journal(records: 17)
        let converted = bytes.flatMap { $0 == UInt8(ascii: "\n") ? [13, 10] : [$0] }
        try expectRefusal(converted, line: 1, .crlf)
        let state = try stateDirectory(journal: converted)
        #expect {
            _ = try Ledger(stateDirectory: state.path, logger: logger)
        } throws: { error in
            "\(error)".contains("journal.jsonl: line 1 ends in CRLF; was the file converted by an editor or copy tool?")
        }
        // Only the last line converted refuses too: no torn write ends in CR LF.
        try expectRefusal(bytes.dropLast() + [13, 10], line: 17, .crlf)
    }

    @Test func aFlippedByteInEachOfTheLastThreeRecordsRefuses() throws {
        let (bytes, starts) = try journal(records: 5)
        var damaged = bytes
        for start in starts.suffix(3) { damaged[start + 40] ^= 0x01 }
        try expectRefusal(damaged, line: 3, .damagedBeforeTheEnd("checksum mismatch"))
    }

    @Test func damageBeforeTheLastLineRefusesWhateverFollowsIt() throws {
        let (bytes, starts) = try journal(records: 3)
        var lastDamaged = bytes
        lastDamaged[starts[2] + 40] ^= 0x01
        // A damaged complete line, then the start of another.
        try expectRefusal(lastDamaged + Array(#"{"seq":4,"ti"#.utf8), line: 3, .damagedBeforeTheEnd("checksum mismatch"))
        // A lost end of line: two records run together, then a good one.
        var joined = bytes
        joined.remove(at: starts[1] - 1)
        try expectRefusal(joined, line: 1, .damagedBeforeTheEnd("checksum mismatch"))
        // An empty line between records.
        try expectRefusal(Array(bytes[..<starts[2]]) + [10] + Array(bytes[starts[2]...]), line: 3,
                          .damagedBeforeTheEnd("no checksum trailer"))
        // Junk lines after the last record.
        try expectRefusal(bytes + Array("junk\njunk\n".utf8), line: 4, .damagedBeforeTheEnd("no checksum trailer"))
        // A good checksum over something that is not a record is no torn write either.
        try expectRefusal(bytes + RecordCodec.seal(Array(#"{"seq":4"#.utf8)), line: 4) {
            if case .unreadable = $0 { true } else { false }
        }
    }

    /// docs/ledger.md's repair: join the lines to drop into one last line without an end
    /// of line; recovery then cuts them aside and numbers what follows above them.
    @Test func theDocumentedRepairCutsTheDroppedLinesWithoutReusingTheirNumbers() throws {
        let (bytes, starts) = try journal(records: 5)
        var damaged = bytes
        for start in starts.suffix(3) { damaged[start + 40] ^= 0x01 }
        let repaired = Array(damaged[..<starts[2]]) + damaged[starts[2]...].filter { $0 != UInt8(ascii: "\n") }
        let (ledger, state) = try open(journal: repaired)
        #expect(try append(ledger, [event(9)]).first?.seq == 7)
        ledger.close()
        #expect(try seqs(state) == [1, 2, 6, 7])
    }

    @Test func aJournalThatStartsPastItsSnapshotNamesTheMissingSnapshot() throws {
        let state = TemporaryDirectory("ledger")
        var options = Ledger.Options()
        options.snapshotEvery = 10
        let ledger = try Ledger(stateDirectory: state.path, options: options, logger: logger)
        for index in 0..<15 { try append(ledger, [event(index)]) }
        let olderSnapshot = try #require(try Files.readAll(ledger.snapshotPath))
        for index in 15..<25 { try append(ledger, [event(index)]) }
        ledger.close()
        #expect(ledger.snapshotSeq == 20)

        try Data(olderSnapshot).write(to: URL(fileURLWithPath: ledger.snapshotPath))
        #expect {
            _ = try Ledger(stateDirectory: state.path, options: options, logger: logger)
        } throws: { error in
            guard case LedgerError.missingSnapshot(_, _, 21, 10) = error else { return false }
            return "\(error)".contains("the journal starts at seq 21 but the snapshot (\(ledger.snapshotPath)) holds only 1...10, so 11...20 are missing")
        }
        try FileManager.default.removeItem(atPath: ledger.snapshotPath)
        #expect {
            _ = try Ledger(stateDirectory: state.path, options: options, logger: logger)
        } throws: { error in
            guard case LedgerError.missingSnapshot(_, _, 21, 0) = error else { return false }
            return "\(error)".contains("the journal starts at seq 21 but there is no snapshot (\(ledger.snapshotPath)) holding 1...20")
        }
    }

    // MARK: - Memory

    /// A 200 MB junk tail costs the same memory as a small one: the journal is read, and
    /// the cut bytes copied, 64 KiB at a time, and no line is kept past the longest record.
    @Test func aHugeJunkTailIsCutInBoundedMemory() throws {
        let (bytes, _) = try journal(records: 3)
        let junk = 200 << 20
        let state = try stateDirectory(journal: bytes)
        try appendJunk(to: state.file("ledger/journal.jsonl"), bytes: junk, newlineAt: nil)
        let peak = try peakGrowth { try Ledger(stateDirectory: state.path, logger: logger).close() }
        #expect(peak < 64 << 20, "peak RSS grew by \(peak >> 20) MiB")
        let cuts = try cutFiles(state)
        #expect(cuts.count == 1)
        let cutSize = try FileManager.default.attributesOfItem(atPath: state.file("ledger/\(cuts.first ?? "")"))[.size] as? Int
        #expect(cutSize == junk)
        #expect(try seqs(state) == [1, 2, 3, 5])
    }

    /// With an end of line inside it, the junk is damage before the last line: refused,
    /// in bounded memory too, and left alone.
    @Test func aHugeJunkTailWithLinesRefusesInBoundedMemory() throws {
        let (bytes, _) = try journal(records: 3)
        let junk = 200 << 20
        let state = try stateDirectory(journal: bytes)
        try appendJunk(to: state.file("ledger/journal.jsonl"), bytes: junk, newlineAt: junk / 2)
        let peak = try peakGrowth {
            #expect {
                _ = try Ledger(stateDirectory: state.path, logger: logger)
            } throws: { error in
                guard case LedgerError.corrupt(_, 4, .damagedBeforeTheEnd(let why)) = error else { return false }
                return why == "longer than any record (\(junk / 2 + 1) bytes)"
            }
        }
        #expect(peak < 64 << 20, "peak RSS grew by \(peak >> 20) MiB")
        let size = try FileManager.default.attributesOfItem(atPath: state.file("ledger/journal.jsonl"))[.size] as? Int
        #expect(size == bytes.count + junk)
        #expect(try cutFiles(state).isEmpty)
    }

    func appendJunk(to path: String, bytes: Int, newlineAt: Int?) throws {
        let file = try #require(FileHandle(forWritingAtPath: path))
        defer { try? file.close() }
        try file.seekToEnd()
        let chunk = 1 << 20
        for offset in stride(from: 0, to: bytes, by: chunk) {
            var block = [UInt8](repeating: UInt8(ascii: "x"), count: min(chunk, bytes - offset))
            if let newlineAt, (offset..<offset + block.count).contains(newlineAt) { block[newlineAt - offset] = 10 }
            try file.write(contentsOf: block)
        }
    }

    /// How much the process's peak RSS (VmHWM) grew while `body` ran, the peak being
    /// reset first where the kernel allows it.
    func peakGrowth(_ body: () throws -> Void) throws -> Int {
        func resident(_ field: String) throws -> Int {
            let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
            let line = status.split(separator: "\n").first { $0.hasPrefix(field + ":") } ?? ""
            return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) << 10
        }
        try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)
        let before = try resident("VmHWM")
        try body()
        return try resident("VmHWM") - before
    }
}

/// Hands every log message to `record`.
struct RecordingHandler: LogHandler {
    let record: @Sendable (Logger.Level, Logger.Message, Logger.Metadata) -> Void
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    init(_ record: @escaping @Sendable (Logger.Level, Logger.Message, Logger.Metadata) -> Void) {
        self.record = record
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        record(event.level, event.message, metadata.merging(event.metadata ?? [:]) { $1 })
    }
}
