import BatonCore
import Glibc
import Logging

// MARK: - Replay

extension Ledger {
    /// What the journal holds past the snapshot.
    struct Replay {
        /// Good records with `seq` above the snapshot's.
        var records = 0
        /// The seq of the last good record (the snapshot's when there is none).
        var lastSeq: UInt64
        /// Where the good records end: the journal's length unless there is a torn tail.
        var validLength = 0
        var tornTail: TornTail?
    }

    /// The journal's last line, damaged as a write that never completed leaves it.
    struct TornTail {
        var line: Int
        var offset: Int
        var reason: String
    }

    /// Reads the journal by chunks, handing each good record with `seq` above `after`
    /// (the snapshot's) to `each`, with its line.
    ///
    /// A torn tail is what one group commit whose write never completed can leave, and
    /// only that: damage in the journal's last line, nothing after it. Either the last
    /// line has no `\n` (a write cut short: complete good lines, then part of one), or
    /// it is complete but its checksum or trailer fails (pages of one write reaching the
    /// disk out of order). Any other damage throws, naming the line: a damaged line with
    /// anything after it, even more damage; a line ending in CRLF; a line with a good
    /// checksum that is not a record; a seq that does not follow the one before it
    /// (except a `ledger.cut` record's announced jump); a journal that starts past the
    /// snapshot.
    static func replay(journal: String, snapshot: String, after: UInt64,
                       _ each: (Record, [UInt8]) -> Void = { _, _ in }) throws(LedgerError) -> Replay {
        var replay = Replay(lastSeq: after)
        let fd = Glibc.open(journal, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return replay }
            throw .io(operation: "open", path: journal, errno: errno)
        }
        defer { Glibc.close(fd) }
        var reader = LineReader(fd: fd, path: journal, maxLength: RecordCodec.maxLineLength)
        var sawRecord = false
        while let line = try reader.next() {
            if let torn = replay.tornTail {
                throw .corrupt(path: journal, line: torn.line, problem: .damagedBeforeTheEnd(torn.reason))
            }
            let record: Record
            switch try decode(line, journal: journal) {
            case .record(let decoded):
                record = decoded
            case .torn(let reason):
                replay.tornTail = TornTail(line: line.number, offset: line.offset, reason: reason)
                continue
            }
            let first = !sawRecord
            sawRecord = true
            if record.seq <= after { continue }
            // The seq the record says it follows: the one before it, or a cut's announced jump.
            var follows = record.seq - 1
            if case .ledgerCut(let cut) = record.event, cut.follows < record.seq { follows = cut.follows }
            guard follows == replay.lastSeq else {
                if first && follows > after {
                    throw .missingSnapshot(journal: journal, snapshot: snapshot, journalStart: follows + 1, snapshotSeq: after)
                }
                throw .corrupt(path: journal, line: line.number, problem: .outOfSequence(
                    follows == record.seq - 1 ? "seq \(record.seq) after \(replay.lastSeq)"
                        : "ledger.cut \(record.seq) says it follows \(follows), but the record before it is \(replay.lastSeq)"))
            }
            replay.lastSeq = record.seq
            replay.records += 1
            each(record, line.bytes)
        }
        replay.validLength = replay.tornTail?.offset ?? reader.offset
        return replay
    }

    enum Line {
        case record(Record)
        /// Damaged as a torn write leaves a line, for this reason.
        case torn(String)
    }

    /// The line's record, or the damage a torn write can leave; throws for damage that
    /// no torn write makes.
    static func decode(_ line: LineReader.Line, journal: String) throws(LedgerError) -> Line {
        guard line.terminated else { return .torn("no end of line") }
        guard line.length <= RecordCodec.maxLineLength else { return .torn("longer than any record (\(line.length) bytes)") }
        if line.bytes.suffix(2).elementsEqual("\r\n".utf8) {
            throw .corrupt(path: journal, line: line.number, problem: .crlf)
        }
        do {
            return .record(try RecordCodec.decode(line.bytes[...]))
        } catch {
            switch error {
            case .torn: return .torn("no checksum trailer")
            case .checksumMismatch: return .torn("checksum mismatch")
            case .malformed(let detail): throw .corrupt(path: journal, line: line.number, problem: .unreadable(detail))
            }
        }
    }
}

/// Reads a file one line at a time, 64 KiB per read, keeping at most `maxLength` bytes
/// of a line: memory stays bounded whatever the file holds.
struct LineReader {
    struct Line {
        var number: Int
        /// Where the line starts in the file.
        var offset: Int
        /// The line with its `\n`; only its first `maxLength` bytes when it is longer.
        var bytes: [UInt8]
        /// The line's length in the file, `\n` included.
        var length: Int
        var terminated: Bool
    }

    let fd: Int32
    let path: String
    let maxLength: Int
    /// The offset of the next line.
    private(set) var offset = 0
    private var number = 0
    private var buffer = [UInt8](repeating: 0, count: Files.chunkSize)
    private var start = 0
    private var end = 0

    init(fd: Int32, path: String, maxLength: Int) {
        self.fd = fd
        self.path = path
        self.maxLength = maxLength
    }

    mutating func next() throws(LedgerError) -> Line? {
        var line = Line(number: number + 1, offset: offset, bytes: [], length: 0, terminated: false)
        while !line.terminated {
            if start == end {
                end = try Files.read(fd, into: &buffer, count: buffer.count, path: path)
                start = 0
                if end == 0 { break }
            }
            let newline = buffer.withUnsafeBytes { raw in
                memchr(raw.baseAddress! + start, Int32(UInt8(ascii: "\n")), end - start)
                    .map { raw.baseAddress!.distance(to: UnsafeRawPointer($0)) }
            }
            let stop = newline.map { $0 + 1 } ?? end
            line.bytes += buffer[start..<min(stop, start + max(0, maxLength - line.bytes.count))]
            line.length += stop - start
            line.terminated = newline != nil
            start = stop
        }
        guard line.length > 0 else { return nil }
        number += 1
        offset += line.length
        return line
    }
}

// MARK: - Cutting a torn tail

extension Ledger {
    /// Cuts the torn tail out of the journal without destroying it: its bytes are copied
    /// to `journal.jsonl.cut-<time>` (fsync'd, with the directory) first; then the journal
    /// is replaced atomically (temporary file, fsync, rename, directory fsync) by its good
    /// records followed by a `ledger.cut` record whose seq is above every seq seen, the
    /// cut bytes' included. A crash at any step leaves either the old journal (recovery
    /// runs again) or the new one, never a journal that lost the number it reached.
    static func cut(_ torn: TornTail, journal: String, directory: String, validLength: Int, lastSeq: UInt64,
                    logger: Logger) throws(LedgerError) -> (record: Record, line: [UInt8]) {
        let fd = try Files.open(journal, O_RDONLY)
        defer { Glibc.close(fd) }
        let (cutPath, cutFd) = try createCutFile(journal: journal)
        var highest: UInt64?
        var bytes = 0
        do throws(LedgerError) {
            // A record start split across two chunks is whole in `carry` + the next chunk.
            var carry: [UInt8] = []
            try Files.copy(fd, path: journal, from: validLength, to: cutFd, path: cutPath) { chunk in
                let window = carry + chunk
                if let seq = window.withUnsafeBytes({ RecordCodec.highestSeq(in: $0) }) { highest = max(highest ?? 0, seq) }
                carry = Array(window.suffix(RecordCodec.recordStartSpan))
                bytes += chunk.count
            }
            guard fsync(cutFd) == 0 else { throw .io(operation: "fsync", path: cutPath, errno: errno) }
        } catch {
            Glibc.close(cutFd)
            throw error
        }
        Glibc.close(cutFd)
        try Files.syncDirectory(directory)

        let event = LedgerCut(file: String(cutPath.split(separator: "/").last!), line: torn.line, bytes: UInt64(bytes),
                              reason: torn.reason, follows: lastSeq, highestCutSeq: highest)
        // The cut bytes are taken to have held at least the next record, whether or not
        // its number can still be read there.
        let record = Record(seq: max(lastSeq + 1, highest ?? 0) + 1, time: .now(), event: .ledgerCut(event))
        let line: [UInt8]
        do { line = try RecordCodec.encode(record) } catch {
            throw .failed("encoding the ledger.cut record: \(error)")
        }
        let fresh = journal + ".tmp"
        let freshFd = try Files.open(fresh, O_WRONLY | O_CREAT | O_TRUNC)
        do throws(LedgerError) {
            try Files.copy(fd, path: journal, from: 0, length: validLength, to: freshFd, path: fresh)
            try Files.writeAll(freshFd, line, path: fresh)
            guard fsync(freshFd) == 0 else { throw .io(operation: "fsync", path: fresh, errno: errno) }
        } catch {
            Glibc.close(freshFd)
            unlink(fresh)
            throw error
        }
        Glibc.close(freshFd)
        guard rename(fresh, journal) == 0 else { throw .io(operation: "rename", path: fresh, errno: errno) }
        try Files.syncDirectory(directory)
        logger.warning("cut a torn last write out of the journal; its bytes are kept aside",
                       metadata: ["path": "\(journal)", "line": "\(torn.line)", "reason": "\(torn.reason)",
                                  "bytes": "\(bytes)", "cut_file": "\(cutPath)", "seq": "\(record.seq)"])
        return (record, line)
    }

    /// Creates `journal.jsonl.cut-<UTC time>`, never overwriting one left by an earlier
    /// recovery.
    private static func createCutFile(journal: String) throws(LedgerError) -> (String, Int32) {
        let time = Timestamp.now().description.filter { $0 != "-" && $0 != ":" }
        var attempt = 0
        while true {
            let path = journal + ".cut-" + time + (attempt == 0 ? "" : "-\(attempt)")
            let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o640)
            if fd >= 0 { return (path, fd) }
            guard errno == EEXIST else { throw .io(operation: "open", path: path, errno: errno) }
            attempt += 1
        }
    }
}
