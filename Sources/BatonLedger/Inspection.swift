import BatonCore
import Glibc

// MARK: - Reading a ledger without owning it

extension Ledger {
    /// What a read-only look at a ledger found.
    public struct Inspection: Sendable {
        public var state: LedgerState
        /// Records replayed from the journal past the snapshot.
        public var journalRecords: Int
        /// Why the journal's last line would be cut at the next start, if it would: a
        /// torn last write, or a write the running batond has not finished yet.
        public var tornTail: String?
    }

    /// Loads the snapshot and replays the journal of `stateDirectory` without taking the
    /// lock and without writing, cutting or creating anything: a running batond may own
    /// the directory (`batond --self-check` runs beside it). Damage that a start would
    /// refuse throws, as it would there; a torn tail is reported, not cut.
    ///
    /// The owner may restart the journal after a snapshot between the two reads; the
    /// journal then starts past the snapshot read, and the pair is read once more.
    public static func inspect(stateDirectory: String) throws(LedgerError) -> Inspection {
        let directory = stateDirectory + "/ledger"
        let journal = directory + "/journal.jsonl"
        let snapshot = directory + "/snapshot.json"
        var attempt = 0
        while true {
            attempt += 1
            do throws(LedgerError) {
                var state = LedgerState()
                if let bytes = try Files.readAll(snapshot) {
                    state = try decodeSnapshot(bytes[...], path: snapshot)
                }
                let replay = try replay(journal: journal, snapshot: snapshot, after: state.lastSeq) { record, _ in
                    state.apply(record)
                }
                return Inspection(state: state, journalRecords: replay.records,
                                  tornTail: replay.tornTail.map { "line \($0.line): \($0.reason)" })
            } catch {
                if case .missingSnapshot = error, attempt < 3 { continue }
                throw error
            }
        }
    }
}
