import BatonCore
import Foundation
import Glibc
import Logging
import Synchronization

/// The version ledger: an append-only journal of checksummed records plus an atomic
/// snapshot, in `<state_dir>/ledger/`. One process at a time (`StateLock`).
///
/// Invariant: a record's completion (and so any API answer that depends on it) runs
/// only after the record is on disk (written and fdatasync'd). Concurrent appends are
/// written as one batch with one fdatasync (group commit).
public final class Ledger: Sendable {
    public struct Options: Sendable {
        /// Write a snapshot and restart the journal after this many journal records.
        public var snapshotEvery = 10_000
        /// How many recent records stay in memory for `/v1/events`.
        public var retainRecords = 10_000
        /// After a failed write or fsync, how often the writer tries to write again
        /// (a fresh snapshot and journal: the probe write).
        public var retryInterval: Duration = .seconds(2)
        /// The system calls that make records durable; tests inject failures here.
        public var io: FileIO = .system
        public init() {}
    }

    public struct Metrics: Sendable {
        public var appends: UInt64 = 0
        public var batches: UInt64 = 0
        /// The fdatasync of each batch (its write excluded).
        public var fsyncSeconds = Histogram(bounds: Self.latencyBounds)
        /// Each successful append, from queued to durable: waiting for the batch before, the write, the fdatasync.
        public var appendSeconds = Histogram(bounds: Self.latencyBounds)
        static let latencyBounds = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
        /// Writes or fsyncs that failed (each makes the ledger refuse records until it recovers).
        public var failures: UInt64 = 0
        /// Probe writes tried while failed, and those that succeeded.
        public var recoveryAttempts: UInt64 = 0
        public var recoveries: UInt64 = 0
    }

    /// Whether the ledger writes, and if not, why and since when.
    public struct Health: Sendable, Equatable {
        public var failure: String?
        public var since: Timestamp?
        public var lastAttempt: Timestamp?
        public var retryInterval: Duration
    }

    public typealias Completion = @Sendable (Result<[Record], LedgerError>) -> Void

    public let directory: String
    public let journalPath: String
    public let snapshotPath: String
    let options: Options
    let logger: Logger
    private let lock: StateLock

    /// What the writer thread owns: the open journal and the count of its records.
    private struct Writer {
        var fd: Int32
        var journalRecords: Int
        var snapshotSeq: UInt64
    }

    /// One `append`: its records, who waits for them, and when it was queued (uptime ns).
    private struct Entry {
        var events: [LedgerEvent]
        var completion: Completion
        var queuedAt: UInt64
    }

    private struct Queue {
        var pending: [Entry] = []
        var closing = false
        var failure: LedgerError?
        var failedSince: Timestamp?
        var lastAttempt: Timestamp?
    }

    /// Published state: read by any thread, replaced by the writer after each batch.
    private struct Published {
        var state: LedgerState
        var recent: [RetainedRecord]
        var journalRecords: Int
        var snapshotSeq: UInt64
        var metrics = Metrics()
    }

    private let queue = Mutex(Queue())
    private let published: Mutex<Published>
    private let writer: Mutex<Writer>
    private let wake = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let observers = Mutex<[@Sendable (UInt64) -> Void]>([])
    private let recoveryObservers = Mutex<[@Sendable () -> Void]>([])

    // MARK: - Opening and recovery

    /// Locks `stateDirectory`, loads the snapshot, replays the journal and starts the
    /// writer. A torn last write is cut out and kept aside (`Ledger.cut`); any other
    /// damage throws (`Ledger.replay` says which is which).
    public init(stateDirectory: String, options: Options = .init(), logger: Logger) throws(LedgerError) {
        self.options = options
        self.logger = logger
        try Files.makeDirectory(stateDirectory)
        lock = try StateLock(directory: stateDirectory)
        directory = stateDirectory + "/ledger"
        journalPath = directory + "/journal.jsonl"
        snapshotPath = directory + "/snapshot.json"
        try Files.makeDirectory(directory)
        try Files.syncDirectory(stateDirectory)

        var state = LedgerState()
        var snapshotSeq: UInt64 = 0
        if let bytes = try Files.readAll(snapshotPath) {
            state = try Self.decodeSnapshot(bytes[...], path: snapshotPath)
            snapshotSeq = state.lastSeq
        }
        var recent: [RetainedRecord] = []
        func keep(_ record: Record, _ line: [UInt8]) {
            state.apply(record)
            recent.append(RetainedRecord(record, line: line))
            if recent.count > 2 * options.retainRecords { recent.removeFirst(recent.count - options.retainRecords) }
        }
        let replay = try Self.replay(journal: journalPath, snapshot: snapshotPath, after: snapshotSeq, keep)
        var journalRecords = replay.records
        if let torn = replay.tornTail {
            let cut = try Self.cut(torn, journal: journalPath, directory: directory, validLength: replay.validLength,
                                   lastSeq: replay.lastSeq, logger: logger)
            keep(cut.record, cut.line)
            journalRecords += 1
        }

        let fd = try Files.open(journalPath, O_WRONLY | O_APPEND | O_CREAT)
        try Files.syncDirectory(directory)
        writer = Mutex(Writer(fd: fd, journalRecords: journalRecords, snapshotSeq: snapshotSeq))
        published = Mutex(Published(state: state, recent: Array(recent.suffix(options.retainRecords)),
                                    journalRecords: journalRecords, snapshotSeq: snapshotSeq))
        let thread = Thread { [self] in self.runWriter() }
        thread.name = "baton.ledger"
        thread.start()
    }

    // MARK: - Reading

    public var state: LedgerState { published.withLock { $0.state } }
    public var lastSeq: UInt64 { published.withLock { $0.state.lastSeq } }
    public var metrics: Metrics { published.withLock { $0.metrics } }
    public var snapshotSeq: UInt64 { published.withLock { $0.snapshotSeq } }
    public var journalRecords: Int { published.withLock { $0.journalRecords } }

    /// Whether appends are accepted (no failed write or fsync, not closed).
    public var isWritable: Bool { queue.withLock { $0.failure == nil && !$0.closing } }

    public var health: Health {
        queue.withLock { queue in
            Health(failure: queue.failure?.description, since: queue.failedSince, lastAttempt: queue.lastAttempt,
                   retryInterval: options.retryInterval)
        }
    }

    /// The records with `seq > after` (those about `agent` only, when given), up to
    /// `limit`, from the in-memory window.
    public func records(after: UInt64, limit: Int, agent: String? = nil) -> RecordWindow {
        published.withLock { published in
            let recent = published.recent
            let oldest = recent.first?.seq ?? (published.state.lastSeq + 1)
            // Seqs ascend: a binary search, since a thousand streams read at each commit.
            var low = recent.startIndex, high = recent.endIndex
            while low < high {
                let middle = (low + high) / 2
                if recent[middle].seq > after { high = middle } else { low = middle + 1 }
            }
            var records: [RetainedRecord] = []
            var scanned = after
            for record in recent[low...] {
                guard records.count < limit else { break }
                scanned = record.seq
                if agent == nil || record.agent == agent { records.append(record) }
            }
            return RecordWindow(records: records, scanned: scanned, lastSeq: published.state.lastSeq, oldestSeq: oldest)
        }
    }

    /// Calls `observer` with the newest seq after every durable batch (on the writer thread).
    public func observeCommits(_ observer: @escaping @Sendable (UInt64) -> Void) {
        observers.withLock { $0.append(observer) }
    }

    /// Calls `observer` each time the ledger writes again after a failure (on the writer thread).
    public func observeRecovery(_ observer: @escaping @Sendable () -> Void) {
        recoveryObservers.withLock { $0.append(observer) }
    }

    // MARK: - Appending

    /// Appends `events` as consecutive records; `completion` runs once they are durable
    /// (or failed), on the writer thread.
    public func append(_ events: [LedgerEvent], completion: @escaping Completion) {
        let refused: LedgerError? = queue.withLock { queue in
            if let failure = queue.failure { return failure }
            if queue.closing { return .closed }
            queue.pending.append(Entry(events: events, completion: completion, queuedAt: DispatchTime.now().uptimeNanoseconds))
            return nil
        }
        if let refused { completion(.failure(refused)) } else { wake.signal() }
    }

    @discardableResult
    public func append(_ event: LedgerEvent) async throws(LedgerError) -> Record {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<[Record], LedgerError>, Never>) in
            append([event]) { continuation.resume(returning: $0) }
        }
        return try result.get()[0]
    }

    /// Writes what is queued, stops the writer and releases the journal. Appends after
    /// this fail with `.closed`.
    public func close() {
        let alreadyClosing = queue.withLock { queue -> Bool in
            defer { queue.closing = true }
            return queue.closing
        }
        guard !alreadyClosing else { return }
        wake.signal()
        finished.wait()
        lock.release()
    }

    /// Runs `body` while no write is in flight and none can start: batond re-executes
    /// itself inside it, so the journal never ends in half a batch because of the exec.
    /// Records appended meanwhile wait (and, if the exec succeeds, were never
    /// acknowledged). The writer goes on when `body` returns.
    public func withWritesHeld<T: Sendable>(_ body: () -> T) -> T {
        writer.withLock { _ in body() }
    }

    // MARK: - The writer thread

    private func runWriter() {
        while true {
            if queue.withLock({ $0.failure != nil && !$0.closing }) {
                // Failed: nothing is queued (appends are refused); probe on every interval.
                let (seconds, attoseconds) = options.retryInterval.components
                let interval = DispatchTimeInterval.nanoseconds(Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000))
                if wake.wait(timeout: .now() + interval) == .timedOut {
                    recoverFromFailure()
                    continue
                }
            } else {
                wake.wait()
            }
            let (batch, closing) = queue.withLock { queue in
                defer { queue.pending.removeAll(keepingCapacity: true) }
                return (queue.pending, queue.closing)
            }
            if !batch.isEmpty { commit(batch) }
            if closing && queue.withLock({ $0.pending.isEmpty }) { break }
        }
        writer.withLock { writer in
            _ = Glibc.close(writer.fd)
            writer.fd = -1
        }
        finished.signal()
    }

    private func commit(_ batch: [Entry]) {
        var nextSeq = published.withLock { $0.state.lastSeq } + 1
        let now = Timestamp.now()
        var bytes: [UInt8] = []
        var records: [[Record]] = []
        var lines: [RetainedRecord] = []
        for entry in batch {
            var group: [Record] = []
            for event in entry.events {
                let record = Record(seq: nextSeq, time: now, event: event)
                guard let line = try? RecordCodec.encode(record) else { continue }
                nextSeq += 1
                bytes += line
                group.append(record)
                lines.append(RetainedRecord(record, line: line))
            }
            records.append(group)
        }
        var syncStarted: UInt64 = 0
        let written: Result<Void, LedgerError> = writer.withLock { writer in
            do throws(LedgerError) {
                try Files.writeAll(writer.fd, bytes, path: journalPath, io: options.io)
                syncStarted = DispatchTime.now().uptimeNanoseconds
                try Files.sync(writer.fd, path: journalPath, io: options.io)
                writer.journalRecords += lines.count
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        let durable = DispatchTime.now().uptimeNanoseconds
        if case .failure(let error) = written {
            // After a failed write or fsync the kernel may have dropped the dirty pages and
            // the journal may end in part of this batch: nothing more goes to this journal.
            // Records are refused until a probe write replaces it (`recoverFromFailure`).
            logger.critical("ledger write failed; refusing records until a probe write succeeds",
                            metadata: ["error": "\(error)", "retry_every": "\(options.retryInterval)"])
            let failure = LedgerError.failed(error.description)
            // Failed first, so whoever hears of the failure finds the ledger refusing.
            fail(failure)
            for entry in batch { entry.completion(.failure(failure)) }
            return
        }
        let lastSeq = published.withLock { published in
            for group in records { for record in group { published.state.apply(record) } }
            published.recent += lines
            if published.recent.count > options.retainRecords {
                published.recent.removeFirst(published.recent.count - options.retainRecords)
            }
            published.journalRecords += lines.count
            published.metrics.appends += UInt64(lines.count)
            published.metrics.batches += 1
            published.metrics.fsyncSeconds.observe(Double(durable - syncStarted) / 1e9)
            for entry in batch { published.metrics.appendSeconds.observe(Double(durable - entry.queuedAt) / 1e9) }
            return published.state.lastSeq
        }
        for observer in observers.withLock({ $0 }) { observer(lastSeq) }
        for (entry, group) in zip(batch, records) { entry.completion(.success(group)) }
        if writer.withLock({ $0.journalRecords }) >= options.snapshotEvery {
            do throws(LedgerError) {
                try snapshot()
            } catch {
                logger.error("snapshot failed; the journal keeps growing", metadata: ["error": "\(error)"])
            }
        }
    }

    // MARK: - Snapshots

    /// Writes the state atomically, then restarts the journal. A crash between the two
    /// steps is harmless: replay skips journal records the snapshot already holds. A
    /// failure before the journal is swapped leaves everything as it was (the journal
    /// keeps growing); a failure after it fails the ledger, since new records could
    /// otherwise go to a file whose name is not durable.
    private func snapshot() throws(LedgerError) {
        let state = published.withLock { $0.state }
        let bytes = try Self.encodeSnapshot(state)
        try Files.replace(snapshotPath, with: bytes, directory: directory, io: options.io)
        let fresh = journalPath + ".tmp"
        let fd = try Files.open(fresh, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC)
        do throws(LedgerError) {
            try Files.sync(fd, path: fresh, io: options.io)
        } catch {
            _ = Glibc.close(fd)
            unlink(fresh)
            throw error
        }
        let swapped: LedgerError? = writer.withLock { writer in
            guard rename(fresh, journalPath) == 0 else {
                let error = LedgerError.io(operation: "rename", path: fresh, errno: errno)
                _ = Glibc.close(fd)
                unlink(fresh)
                return error
            }
            _ = Glibc.close(writer.fd)
            writer.fd = fd
            writer.journalRecords = 0
            writer.snapshotSeq = state.lastSeq
            do throws(LedgerError) {
                try Files.syncDirectory(directory)
                return nil
            } catch {
                return LedgerError.failed("the restarted journal's name is not durable: \(error)")
            }
        }
        if let swapped {
            if case .failed = swapped { fail(swapped) }
            throw swapped
        }
        published.withLock {
            $0.journalRecords = 0
            $0.snapshotSeq = state.lastSeq
        }
        logger.info("ledger snapshot written", metadata: ["seq": "\(state.lastSeq)"])
    }

    /// The probe write: a snapshot of the acknowledged state (temp file, fsync, rename,
    /// fsync of the directory) and a fresh journal, replacing the one a failed write may
    /// have left with part of a batch. Only records that were acknowledged are in memory,
    /// so the new pair holds exactly those. On success records are accepted again.
    private func recoverFromFailure() {
        let now = Timestamp.now()
        queue.withLock { $0.lastAttempt = now }
        published.withLock { $0.metrics.recoveryAttempts += 1 }
        do throws(LedgerError) {
            try snapshot()
        } catch {
            logger.debug("ledger probe write failed", metadata: ["error": "\(error)"])
            return
        }
        let since = queue.withLock { queue -> Timestamp? in
            defer {
                queue.failure = nil
                queue.failedSince = nil
            }
            return queue.failedSince
        }
        published.withLock { $0.metrics.recoveries += 1 }
        logger.notice("ledger writes again", metadata: ["failed_since": "\(since.map { "\($0)" } ?? "-")"])
        for observer in recoveryObservers.withLock({ $0 }) { observer() }
    }

    /// Refuses every further record, failing what is queued.
    private func fail(_ failure: LedgerError) {
        published.withLock { $0.metrics.failures += 1 }
        let queued = queue.withLock { queue in
            if queue.failure == nil { queue.failedSince = .now() }
            queue.failure = failure
            defer { queue.pending.removeAll() }
            return queue.pending
        }
        for entry in queued { entry.completion(.failure(failure)) }
    }

    static let snapshotFormat = 1

    /// `snapshot.json`'s bytes for `state`: one sealed line. Public, with `decodeSnapshot`,
    /// for the parser fuzzer (Tests/Fuzz), which decodes snapshots as a start does.
    public static func encodeSnapshot(_ state: LedgerState) throws(LedgerError) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let stateBytes: Data
        do { stateBytes = try encoder.encode(state) } catch {
            throw .failed("snapshot encoding: \(error)")
        }
        var prefix = Array(#"{"format":\#(snapshotFormat),"seq":\#(state.lastSeq),"state":"#.utf8)
        prefix += stateBytes
        return RecordCodec.seal(prefix)
    }

    /// The state in `snapshot.json`'s bytes; any damage throws `corruptSnapshot` naming `path`.
    public static func decodeSnapshot(_ bytes: ArraySlice<UInt8>, path: String) throws(LedgerError) -> LedgerState {
        struct Snapshot: Decodable {
            var format: Int
            var seq: UInt64
            var state: LedgerState
        }
        let json: ArraySlice<UInt8>
        do { json = try RecordCodec.unseal(bytes) } catch {
            throw .corruptSnapshot(path: path, detail: "\(error)")
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        do {
            let snapshot = try decoder.decode(Snapshot.self, from: Data(json))
            guard snapshot.format == snapshotFormat else {
                throw LedgerError.corruptSnapshot(path: path, detail: "unknown format \(snapshot.format)")
            }
            guard snapshot.seq == snapshot.state.lastSeq else {
                throw LedgerError.corruptSnapshot(path: path, detail: "seq \(snapshot.seq) disagrees with its state")
            }
            return snapshot.state
        } catch let error as LedgerError {
            throw error
        } catch {
            throw .corruptSnapshot(path: path, detail: "\(error)")
        }
    }
}

/// A recent record as `GET /v1/events` serves it: its line as written, and what the
/// route filters and names it by.
public struct RetainedRecord: Sendable {
    public let seq: UInt64
    public let kind: String
    public let agent: String?
    /// The record's line, ending in `\n`.
    public let line: [UInt8]

    /// The record as one JSON object, without the line's end.
    public var json: ArraySlice<UInt8> { line.last == UInt8(ascii: "\n") ? line.dropLast() : line[...] }

    init(_ record: Record, line: [UInt8]) {
        seq = record.seq
        kind = record.event.kind
        agent = record.event.agent
        self.line = line
    }
}

/// Part of the in-memory window of recent records.
public struct RecordWindow: Sendable {
    public var records: [RetainedRecord]
    /// The newest seq this read looked at (the window's newest when it reached the end):
    /// the next read starts after it, past records a filter left out.
    public var scanned: UInt64
    /// The newest record's seq.
    public var lastSeq: UInt64
    /// The oldest record still in the window (`lastSeq + 1` when it is empty).
    public var oldestSeq: UInt64

    public var lines: [[UInt8]] { records.map(\.line) }

    /// Whether records after `since` have left the window while it still holds some: a
    /// reader that asked for them missed them (the events page's `truncated`, the
    /// stream's `truncated` event).
    public func missed(after since: UInt64) -> Bool {
        since + 1 < oldestSeq && lastSeq >= oldestSeq
    }
}
