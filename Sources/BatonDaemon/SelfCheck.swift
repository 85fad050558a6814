import BatonConfig
import BatonCore
import BatonLedger
import Foundation
import Glibc

/// `batond --self-check`: whether this binary could take over the state directory as it
/// is, checked without disturbing the batond that owns it. A running batond runs it on a
/// new binary of itself before re-executing into it (`POST /v1/daemon/upgrade`).
///
/// It only reads: the config (already loaded and validated by the caller), the ledger
/// (snapshot and journal, without the lock: `Ledger.inspect`) and the layout of the
/// state directory. It never creates, writes, binds or locks anything.
public enum SelfCheck {
    /// The one-line verdict when fit; throws the reason (and the exit code) when not.
    public static func run(config: BatondConfig) throws(Daemon.Failure) -> String {
        let stateDir = config.stateDir
        try requireDirectory(stateDir, writable: true, what: "state directory")
        for sub in ["ledger", "releases", "logs", "daemon"] {
            try requireDirectory(stateDir + "/" + sub, writable: true, what: "state directory entry", optional: true)
        }
        if let group = config.operatorGroup, gid_t(group) == nil, getgrnam(group) == nil {
            throw Daemon.Failure(exit: .configError, description: "daemon.operator_group: no group named \"\(group)\"")
        }
        let inspection: Ledger.Inspection
        do {
            inspection = try Ledger.inspect(stateDirectory: stateDir)
        } catch {
            throw Daemon.Failure(exit: .ioError, description: "the ledger cannot be loaded: \(error)")
        }
        let unknown = inspection.state.agents.keys.filter { name in !config.agents.contains { $0.name == name } }
        var verdict = "batond \(BatonVersion.current): fit: \(config.file ?? "(built-in defaults)"), "
            + "\(config.agents.count) agent(s), ledger at seq \(inspection.state.lastSeq) "
            + "(\(inspection.journalRecords) journal record(s)), state in \(stateDir)"
        if let torn = inspection.tornTail { verdict += "; the journal's last line would be cut at start (\(torn))" }
        if !unknown.isEmpty { verdict += "; the ledger names agents the config does not: \(unknown.sorted().joined(separator: ", "))" }
        return verdict
    }

    private static func requireDirectory(_ path: String, writable: Bool, what: String, optional: Bool = false) throws(Daemon.Failure) {
        var info = stat()
        guard stat(path, &info) == 0 else {
            if optional && errno == ENOENT { return }
            throw Daemon.Failure(exit: .ioError, description: "\(what) \(path): \(String(cString: strerror(errno)))")
        }
        guard (info.st_mode & S_IFMT) == S_IFDIR else {
            throw Daemon.Failure(exit: .ioError, description: "\(what) \(path) is not a directory")
        }
        if writable && access(path, W_OK | X_OK) != 0 {
            throw Daemon.Failure(exit: .ioError, description: "\(what) \(path) is not writable by uid \(getuid()): \(String(cString: strerror(errno)))")
        }
    }
}
