import Synchronization

/// Where a streamed answer's body comes from (Server-Sent Events), a piece at a time,
/// for as long as its client stays. The server asks `next()` when the client can take
/// more and after every `HTTPServer.wakeStreams()`; it sends `keepalive` at every
/// keepalive tick (`Configuration.streamKeepalive`).
public protocol StreamSource: AnyObject, Sendable {
    /// The bytes that follow those given so far, or none for now. Called on the
    /// listener's thread, one call at a time.
    func next() -> [UInt8]
    /// Bytes that say nothing, so that proxies and clients keep an idle stream open.
    var keepalive: [UInt8] { get }
}

/// A long-lived answer: status 200, these headers, and a body without end written as
/// `source` has something to say (chunked). It holds no thread while it waits: its
/// connection is suspended until there is news, a keepalive, or the end.
public struct StreamedResponse: Sendable {
    public var headers: [(name: String, value: String)]
    public var source: any StreamSource

    public init(headers: [(name: String, value: String)], source: any StreamSource) {
        self.headers = headers
        self.source = source
    }
}

/// When an open stream's connection sleeps and what wakes it. No I/O: the owner
/// suspends or resumes the connection when told to, under the lock that holds this.
///
/// Invariant: a connection is resumed exactly once per suspension (`suspended` goes
/// true only in `rest`, false only in a poke that resumes it).
struct StreamWakeups {
    /// Why a stream ends. Final.
    enum Ending: Equatable {
        /// The server stops: end the body properly (the client reconnects and resumes).
        case finish
        /// The client left: drop the connection.
        case abort
    }

    /// The connection is suspended; the next poke resumes it. Goes false only then.
    private(set) var suspended = false
    /// Something may have been appended since the source was last asked.
    private(set) var news = false
    private(set) var keepaliveDue = false
    private(set) var ending: Ending?

    enum Poke { case news, keepalive, end(Ending) }

    /// Notes the poke; returns whether the connection must be resumed now.
    mutating func poke(_ poke: Poke) -> Bool {
        switch poke {
        case .news: news = true
        case .keepalive: keepaliveDue = true
        case .end(let why): if ending == nil { ending = why }
        }
        guard suspended else { return false }
        suspended = false
        return true
    }

    /// What the writer does next, once its bytes are all sent: clears the news and the
    /// keepalive it acts on.
    mutating func take() -> (ending: Ending?, keepalive: Bool) {
        defer { news = false; keepaliveDue = false }
        return (ending, keepaliveDue)
    }

    /// The writer found nothing to send: returns true when it must suspend the
    /// connection (no poke came since `take`), false to look again.
    mutating func rest() -> Bool {
        guard !news, !keepaliveDue, ending == nil else { return false }
        precondition(!suspended, "a stream rested twice without a resume")
        suspended = true
        return true
    }
}
