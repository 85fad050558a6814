import Foundation
import Synchronization

/// One change a watch saw.
public struct EtcdEvent: Sendable, Equatable {
    public enum Kind: Sendable { case put, delete }
    public var kind: Kind
    /// For a delete: the key and its mod revision (the delete's) only.
    public var kv: EtcdKeyValue

    public init(kind: Kind, kv: EtcdKeyValue) {
        self.kind = kind
        self.kv = kv
    }
}

/// What a watch stream yields.
public enum EtcdWatchUpdate: Sendable, Equatable {
    /// Events in revision order. `revision` is the mod revision of the last one: the watcher
    /// has seen every change up to it. With no events, the watcher has seen every change up
    /// to `revision` and is connected: it comes when the watch is connected again after
    /// `.disconnected` (and for a progress notification from etcd).
    case events([EtcdEvent], revision: Int64)
    /// The stream broke (or could not be opened): said once per break, not per retry. The
    /// watch reconnects by itself, from the revision after the last one seen, and says so
    /// with an empty `.events`.
    case disconnected(EtcdError)
    /// The revisions asked for were compacted away (this is the compact revision): the
    /// stream finishes. Re-read, then watch again from the read's revision + 1.
    case compacted(Int64)
}

extension EtcdClient {
    /// Watches `key` (a prefix if `prefix`) from `revision` on (0: from now).
    ///
    /// POST /v3/watch with one `create_request`; the gateway answers with a chunked stream of
    /// one JSON object per line: first `created`, then batches of events, and `canceled` with
    /// `compact_revision` when the start revision was compacted. It sends `Grpc-Metadata-hasleader`
    /// so that a member without a leader ends the stream ("no leader") instead of going silent.
    /// When the stream breaks the watch says `.disconnected` once, then reconnects (to the next
    /// endpoint, after a backoff of 100 ms doubling to 2 s) from the last revision seen + 1, so
    /// that nothing is lost or seen twice. It finishes after `.compacted`, and when the task
    /// iterating it is cancelled (the transfer is aborted within about 100 ms).
    /// Each watch runs on a thread of its own.
    public func watch(_ key: String, prefix: Bool = false, from revision: Int64) -> AsyncStream<EtcdWatchUpdate> {
        let (stream, continuation) = AsyncStream.makeStream(of: EtcdWatchUpdate.self, bufferingPolicy: .unbounded)
        let watcher = Watcher(client: self, key: key, prefix: prefix, start: revision, continuation: continuation)
        continuation.onTermination = { _ in watcher.stopped.store(true, ordering: .relaxed) }
        let thread = Thread { watcher.run() }
        thread.start()
        return stream
    }
}

/// The state of one watch; `run` is its thread's whole life.
private final class Watcher: Sendable {
    let client: EtcdClient
    let key: String
    let prefix: Bool
    let start: Int64
    let continuation: AsyncStream<EtcdWatchUpdate>.Continuation
    /// Set when the stream's consumer is gone (cancelled, or the stream dropped).
    let stopped = Atomic<Bool>(false)

    static let firstBackoff: Duration = .milliseconds(100)
    static let maxBackoff: Duration = .seconds(2)

    init(client: EtcdClient, key: String, prefix: Bool, start: Int64, continuation: AsyncStream<EtcdWatchUpdate>.Continuation) {
        self.client = client
        self.key = key
        self.prefix = prefix
        self.start = start
        self.continuation = continuation
    }

    var isStopped: Bool { stopped.load(ordering: .relaxed) }

    func run() {
        defer { continuation.finish() }
        var next = start
        var endpoint = client.preferred.load(ordering: .relaxed)
        var backoff = Watcher.firstBackoff
        var reported = false
        while !isStopped {
            let endpoints = client.settings.endpoints
            guard !endpoints.isEmpty else {
                continuation.yield(.disconnected(.unreachable("no endpoint is configured")))
                return
            }
            endpoint %= endpoints.count
            let url = endpoints[endpoint]
            var session = Session(next: next, announce: reported)
            let failure: EtcdError
            do {
                let token = try client.currentToken()
                failure = connect(url, token: token, session: &session)
                if EtcdClient.refusesToken(failure) { client.forget(token: token) }
            } catch {
                failure = error
            }
            next = session.next
            if session.created {
                backoff = Watcher.firstBackoff
                reported = false
                client.preferred.store(endpoint, ordering: .relaxed)
            }
            if isStopped { return }
            if case .compacted(let revision) = failure {
                continuation.yield(.compacted(revision))
                return
            }
            if !reported {
                continuation.yield(.disconnected(failure))
                reported = true
            }
            endpoint += 1
            pause(backoff)
            backoff = min(backoff * 2, Watcher.maxBackoff)
        }
    }

    /// What one connection learnt.
    struct Session {
        /// The revision to start from on the next connection.
        var next: Int64
        /// Whether to say when the watch is created: it was said to be disconnected.
        var announce: Bool
        var created = false
        var lines = LineSplitter()
        /// Why the watcher ended the stream itself.
        var ending: EtcdError?
    }

    /// One connection: reads the stream until it breaks or must end; returns why it ended.
    private func connect(_ url: String, token: String?, session: inout Session) -> EtcdError {
        var request = Wire.keyRange(key, prefix: prefix)
        if session.next > 0 { request["start_revision"] = String(session.next) }
        let post = Post(url: url + "/v3/watch", body: Wire.encode(["create_request": request]), headers: client.headers(token: token),
                        tls: client.settings.tls, connectTimeout: client.settings.connectTimeout, timeout: nil)
        client.sent.add(1, ordering: .relaxed)
        guard let connection = CurlConnection() else { return .unreachable("\(url): libcurl could not start a transfer") }
        let outcome = post.perform(connection: connection, onData: { bytes in
            for line in session.lines.append(bytes) {
                do throws(EtcdError) {
                    try self.handle(line, session: &session)
                } catch {
                    session.ending = error
                    return false
                }
            }
            return !self.isStopped
        }, isCancelled: { self.isStopped })
        // The gateway ends the stream with an error object and no newline after it.
        if session.ending == nil, let last = session.lines.rest() {
            do throws(EtcdError) { try handle(last, session: &session) } catch { session.ending = error }
        }
        if let ending = session.ending { return ending }
        switch outcome {
        case .answered(let status): return .unreachable("\(url): the watch stream ended (HTTP \(status))")
        case .failed(let reason, _): return .unreachable("\(url): \(reason)")
        case .timedOut: return .unreachable("\(url): timed out")
        case .cancelled: return .unreachable("\(url): cancelled")
        }
    }

    /// One line of the stream; throws what ends it.
    private func handle(_ line: [UInt8], session: inout Session) throws(EtcdError) {
        let object = try JSONObject(parsing: line)
        if let error = EtcdError.answered(status: 200, object) { throw error }
        guard let result = object.object("result") else { throw .badAnswer("a watch line without a result") }
        let compactRevision = try result.int64("compact_revision")
        if compactRevision > 0 { throw .compacted(compactRevision) }
        if result.bool("canceled") { throw .watchCanceled(result.string("cancel_reason") ?? "etcd canceled the watch") }
        if result.bool("created") {
            session.created = true
            // A watch from now starts after the revision it was created at.
            if session.next == 0 { session.next = try result.revision() + 1 }
            if session.announce { continuation.yield(.events([], revision: session.next - 1)) }
            return
        }
        let events = try result.objects("events").map { (event) throws(EtcdError) -> EtcdEvent in
            guard let kv = event.object("kv") else { throw .badAnswer("a watch event without a kv") }
            return EtcdEvent(kind: event.string("type") == "DELETE" ? .delete : .put, kv: try EtcdKeyValue(kv))
        }
        if let last = events.last {
            // Not the header's revision: when a watcher catches up in several batches,
            // each carries the store's current revision, beyond the events sent so far.
            session.next = last.kv.modRevision + 1
            continuation.yield(.events(events, revision: last.kv.modRevision))
        } else {
            // An empty result is a progress notification, which etcd sends only to a watcher
            // that has caught up: its header revision has been seen in full.
            let revision = try result.revision()
            guard revision >= session.next else { return }
            session.next = revision + 1
            continuation.yield(.events([], revision: revision))
        }
    }

    /// Sleeps `duration`, waking early when the watch is stopped.
    private func pause(_ duration: Duration) {
        let until = ContinuousClock.now + duration
        while !isStopped, ContinuousClock.now < until {
            Thread.sleep(forTimeInterval: 0.02)
        }
    }
}

extension EtcdError {
    /// A watch's `cancel_reason` as an error: "rpc error: code = Unauthenticated desc =
    /// etcdserver: invalid auth token" is `.failed(code: 16, message: "etcdserver: invalid auth token")`.
    static func watchCanceled(_ reason: String) -> EtcdError {
        let codes = ["InvalidArgument": GRPCCode.invalidArgument, "NotFound": GRPCCode.notFound, "PermissionDenied": 7,
                     "Unavailable": GRPCCode.unavailable, "Unauthenticated": GRPCCode.unauthenticated]
        let prefix = "rpc error: code = "
        guard reason.hasPrefix(prefix), let desc = reason.range(of: " desc = ") else { return .failed(code: 0, message: reason) }
        let name = String(reason[reason.index(reason.startIndex, offsetBy: prefix.count)..<desc.lowerBound])
        return .failed(code: codes[name] ?? 0, message: String(reason[desc.upperBound...]))
    }
}

/// Splits a byte stream into its newline-terminated lines (empty lines dropped).
struct LineSplitter {
    private var pending: [UInt8] = []

    mutating func append(_ bytes: UnsafeRawBufferPointer) -> [[UInt8]] {
        pending.append(contentsOf: bytes)
        guard let newline = pending.lastIndex(of: UInt8(ascii: "\n")) else { return [] }
        let lines = pending[..<newline].split(separator: UInt8(ascii: "\n")).map { Array($0) }
        pending.removeSubrange(...newline)
        return lines
    }

    /// What followed the last newline, if anything: the stream's last line, when it ended without one.
    mutating func rest() -> [UInt8]? {
        defer { pending = [] }
        return pending.isEmpty ? nil : pending
    }
}
