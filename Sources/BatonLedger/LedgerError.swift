import Glibc

/// Why the ledger could not open or write. `code` is stable; batond maps it to its
/// exit code and the API to 503.
public enum LedgerError: Error, Sendable, CustomStringConvertible {
    /// Another process holds the state directory's lock.
    case locked(directory: String, holder: String?)
    /// A system call failed.
    case io(operation: String, path: String, errno: Int32)
    /// A record that is not the journal's last one is damaged: refusing to guess.
    case corrupt(path: String, line: Int, detail: String)
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
        case .corrupt, .corruptSnapshot: "ledger_corrupt"
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
        case .corrupt(let path, let line, let detail):
            "\(path): record on line \(line) is damaged and is not the last one (\(detail)); refusing to drop acknowledged records. Restore the file or move it aside."
        case .corruptSnapshot(let path, let detail):
            "\(path): snapshot is damaged (\(detail))"
        case .failed(let reason):
            "ledger is not writable: \(reason)"
        case .closed:
            "ledger is closed"
        }
    }
}
