import Glibc

/// Why the ledger could not open or write. `code` is stable; batond maps it to its
/// exit code and the API to 503.
public enum LedgerError: Error, Sendable, CustomStringConvertible {
    /// Another process holds the state directory's lock.
    case locked(directory: String, holder: String?)
    /// A system call failed.
    case io(operation: String, path: String, errno: Int32)
    /// The journal holds damage that is not a torn last write: refusing to guess.
    case corrupt(path: String, line: Int, problem: JournalProblem)
    /// The journal's first record follows a seq that no snapshot holds (snapshot.json
    /// deleted, or an older one restored): the records before it are missing.
    case missingSnapshot(journal: String, snapshot: String, journalStart: UInt64, snapshotSeq: UInt64)
    /// The snapshot is damaged; the journal after it cannot be replayed without it.
    case corruptSnapshot(path: String, detail: String)
    /// An earlier write or fsync failed; the ledger accepts no more records until restart
    /// (after a failed fsync the page cache can no longer be trusted).
    case failed(String)
    /// The ledger is closed.
    case closed

    public var code: String {
        switch self {
        case .locked: "state_dir_locked"
        case .io: "ledger_io"
        case .corrupt, .missingSnapshot, .corruptSnapshot: "ledger_corrupt"
        case .failed: "ledger_failed"
        case .closed: "ledger_closed"
        }
    }

    public var description: String {
        switch self {
        case .locked(let directory, let holder):
            "state directory \(directory) is in use by another batond\(holder.map { " (pid \($0))" } ?? "")"
        case .io(let operation, let path, let errno):
            "\(operation) \(path): \(String(cString: strerror(errno)))"
        case .corrupt(let path, let line, let problem):
            "\(path): line \(line) \(problem) Refusing to drop records that may have been acknowledged. \(problem.repair)"
        case .missingSnapshot(let journal, let snapshot, let start, let snapshotSeq):
            snapshotSeq == 0
                ? "\(journal): the journal starts at seq \(start) but there is no snapshot (\(snapshot)) holding 1...\(start - 1); restore the snapshot that goes with this journal"
                : "\(journal): the journal starts at seq \(start) but the snapshot (\(snapshot)) holds only 1...\(snapshotSeq), so \(snapshotSeq + 1)...\(start - 1) are missing; restore the snapshot that goes with this journal"
        case .corruptSnapshot(let path, let detail):
            "\(path): snapshot is damaged (\(detail))"
        case .failed(let reason):
            "ledger is not writable: \(reason)"
        case .closed:
            "ledger is closed"
        }
    }
}

/// Why a journal line refuses recovery. Only a torn last write is dropped (see
/// `Ledger.replay`); everything here may have been acknowledged.
public enum JournalProblem: Sendable, Equatable, CustomStringConvertible {
    /// The line is damaged (why) and more bytes follow it: not a torn last write.
    case damagedBeforeTheEnd(String)
    /// The line ends in CR LF: the file went through a tool that converts line endings.
    case crlf
    /// The checksum is good but the line is not a record this build reads.
    case unreadable(String)
    /// The seq does not follow the record before it (a record is missing or repeated).
    case outOfSequence(String)

    public var description: String {
        switch self {
        case .damagedBeforeTheEnd(let why):
            "is damaged (\(why)) and is not the last line, so it is not a torn last write."
        case .crlf:
            "ends in CRLF; was the file converted by an editor or copy tool?"
        case .unreadable(let detail):
            "has a good checksum but is not a record this build reads (\(detail))."
        case .outOfSequence(let detail):
            "is out of sequence (\(detail)): a record is missing or repeated."
        }
    }

    /// What an operator can do about it.
    public var repair: String {
        switch self {
        case .crlf:
            "With batond stopped and a copy of the file kept, convert it back (sed -i 's/\\r$//' FILE) and start again."
        case .damagedBeforeTheEnd, .unreadable, .outOfSequence:
            "Restore the file from a backup, or cut it by hand as docs/ledger.md (Recovery at start) says."
        }
    }
}
