import BatonCore
import Synchronization

/// The status page's way in for a browser, which cannot send the operator token:
/// one-time login codes, and the sessions they turn into.
///
/// Invariant: neither a code nor a session id is the operator token or derived from it;
/// both are 256 random bits, in memory only (a restart of batond ends every session: the
/// person asks a new link), and each expires. A code is spent by its first use; a
/// session only ever admits GET routes of the operator scope (`OperatorAuth`).
/// Lookups go through a dictionary: with 256 random bits an id cannot be guessed a
/// byte at a time, so the timing of a hash lookup gives nothing away.
public final class UISessions: Sendable {
    /// How long a login code can be spent.
    public static let codeLifetime: Duration = .seconds(60)
    /// How long a browser stays logged in.
    public static let sessionLifetime: Duration = .seconds(12 * 3600)
    /// Codes, and sessions, held at most: past it the one closest to expiring goes,
    /// so a script asking links in a loop cannot grow batond's memory.
    static let most = 1024

    private struct State {
        var codes: [String: Timestamp] = [:]
        var sessions: [String: Timestamp] = [:]
    }

    private let state = Mutex(State())
    private let now: @Sendable () -> Timestamp

    public init(now: @escaping @Sendable () -> Timestamp = { .now() }) {
        self.now = now
    }

    /// A new one-time login code and when it expires.
    public func issueCode() -> (code: String, expiresAt: Timestamp) {
        let code = OperatorToken.randomHex(bytes: 32)
        let expiresAt = Self.after(now(), Self.codeLifetime)
        state.withLock { Self.insert(code, expiring: expiresAt, into: &$0.codes, now: now()) }
        return (code, expiresAt)
    }

    /// Spends `code`: a new session id and when it expires, or nil when the code is
    /// unknown, spent already or expired.
    public func spend(_ code: String) -> (session: String, expiresAt: Timestamp)? {
        let at = now()
        return state.withLock { state in
            guard let expiry = state.codes.removeValue(forKey: code), at < expiry else { return nil }
            let session = OperatorToken.randomHex(bytes: 32)
            let expiresAt = Self.after(at, Self.sessionLifetime)
            Self.insert(session, expiring: expiresAt, into: &state.sessions, now: at)
            return (session, expiresAt)
        }
    }

    /// Whether `session` is a live session.
    public func isValid(session: String) -> Bool {
        let at = now()
        return state.withLock { state in
            guard let expiry = state.sessions[session] else { return false }
            if at < expiry { return true }
            state.sessions[session] = nil
            return false
        }
    }

    public var counts: (codes: Int, sessions: Int) {
        state.withLock { ($0.codes.count, $0.sessions.count) }
    }

    private static func insert(_ id: String, expiring expiry: Timestamp, into table: inout [String: Timestamp], now: Timestamp) {
        if table.count >= most {
            table = table.filter { now < $0.value }
        }
        if table.count >= most, let soonest = table.min(by: { $0.value < $1.value }) {
            table[soonest.key] = nil
        }
        table[id] = expiry
    }

    static func after(_ instant: Timestamp, _ duration: Duration) -> Timestamp {
        Timestamp(milliseconds: instant.milliseconds + duration.milliseconds)
    }

    /// The value of the `baton_session` cookie in a `Cookie` header.
    static func cookie(in header: String) -> String? {
        for pair in header.split(separator: ";") {
            let pair = pair.drop { $0 == " " || $0 == "\t" }
            if pair.hasPrefix(cookieName + "=") {
                let value = pair.dropFirst(cookieName.count + 1)
                return value.isEmpty ? nil : String(value)
            }
        }
        return nil
    }

    static let cookieName = "baton_session"
}
