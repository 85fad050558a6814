import Glibc

/// Named points where a debug build of batond kills itself with SIGKILL, as `kill -9`
/// would, when `BATON_CRASH_POINT=<name>` is set: tests stop batond exactly between two
/// steps and check what a restarted batond makes of its ledger. Release builds ignore
/// the variable. Every point is listed here, and only here.
public enum CrashPoint: String, Sendable, CaseIterable {
    /// A handoff's successor was told go ahead of its records (the old instance's stop or
    /// exit, the go, the commit), and heard it (it asks again with `seen=go`); none of
    /// those records is durable yet. See docs/ledger.md, "Go before the commit record".
    case goBeforeCommit = "go-before-commit"
    /// An operator's desired version (`PUT /v1/agents/{name}/desired`, a rollback) was
    /// just made durable, before its answer. See docs/ledger.md, "When batond comes back".
    case desiredRecorded = "desired-recorded"

    public static let variable = "BATON_CRASH_POINT"

    /// The point the environment names, in a debug build.
    public static let armed: CrashPoint? = {
        #if DEBUG
        guard let name = getenv(variable) else { return nil }
        return CrashPoint(rawValue: String(cString: name))
        #else
        return nil
        #endif
    }()

    /// Whether the environment names this point: one that is reached only once something
    /// else happened (the successor heard go) asks this before it waits for that.
    public var isArmed: Bool { Self.armed == self }

    /// Dies here, if the environment names this point.
    public func reached() {
        guard isArmed else { return }
        kill(getpid(), SIGKILL)
    }
}
