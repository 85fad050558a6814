import Foundation
import Glibc
import Synchronization

extension BatonAgent {
    /// Accepts connections on an instance's listening sockets while it holds `go`, and
    /// keeps the rules of shared sockets (see ``Listeners``): ``start()`` on `go`,
    /// ``pause()`` on `wait`, ``stop()`` on `stop` (or SIGTERM) before reporting stopped.
    ///
    /// ```swift
    /// let acceptor = BatonAgent.Acceptor(try BatonAgent.Listeners.passed().all) { connection in
    ///     // one thread per connection; the descriptor is closed when this returns
    /// }
    /// var signal = try baton.ready()
    /// while signal != .stop {
    ///     if signal == .go { try acceptor.start() }
    ///     if signal == .wait { acceptor.pause() }
    ///     signal = try baton.waitForSignal(seen: signal)
    /// }
    /// acceptor.stop()          // no more accepts; descriptors closed; accepted ones answered
    /// try baton.stopped()
    /// ```
    ///
    /// One thread polls every listener and a wake pipe, and accepts only when a
    /// listener is readable: the sockets stay in blocking mode (their `O_NONBLOCK` flag
    /// is every holder's), and ``pause()`` and ``stop()`` wake it through the pipe,
    /// since closing a descriptor does not wake a thread blocked on it. Because only
    /// the instance holding `go` accepts, a readable listener has a connection for it.
    ///
    /// Invariant: no `accept(2)` runs before ``start()`` or after ``pause()`` or
    /// ``stop()`` has returned; after ``stop()`` has returned, every accepted connection's
    /// handler has returned and its descriptor is closed, and so is every listener's.
    public final class Acceptor: Sendable {
        /// An accepted connection, given to the handler on a thread of its own. Closed
        /// when the handler returns.
        public struct Connection: Sendable {
            /// The connected socket, blocking, with the acceptor's `timeout` on each read and write.
            public let fd: Int32
            /// The listener it came from.
            public let listener: Listener
            /// CLOCK_MONOTONIC, in nanoseconds, right after `accept(2)` returned.
            public let acceptedAt: UInt64

            /// Reads until `terminator` has arrived (e.g. the blank line ending an HTTP
            /// request head, `\r\n\r\n`) and returns everything read so far; nil when the
            /// peer closes, fails, or times out first, or after `limit` bytes.
            public func receive(until terminator: [UInt8], limit: Int = 64 * 1024) -> [UInt8]? {
                var received: [UInt8] = []
                var chunk = [UInt8](repeating: 0, count: 4096)
                while received.count < limit {
                    let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                    if n < 0 && errno == EINTR { continue }
                    guard n > 0 else { return nil }
                    let searchFrom = max(0, received.count - terminator.count + 1)
                    received += chunk[0..<n]
                    if received[searchFrom...].firstRange(of: terminator) != nil { return received }
                }
                return nil
            }

            /// Writes all of `bytes`; false when the peer is gone or the write times out.
            public func send(_ bytes: [UInt8]) -> Bool {
                var offset = 0
                while offset < bytes.count {
                    // MSG_NOSIGNAL: a peer that went away is an error here, not SIGPIPE.
                    let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
                    if n < 0 && errno == EINTR { continue }
                    guard n > 0 else { return false }
                    offset += n
                }
                return true
            }
        }

        private enum Phase {
            /// Not accepting; the listeners are open. Next: accepting (start), closed (stop).
            case idle
            /// The accept thread runs. Next: idle (pause), closed (stop).
            case accepting(AcceptLoop)
            /// The listeners are closed. Final.
            case closed
        }

        private struct State {
            var phase = Phase.idle
            var listeners: [Listener]
            /// Bound at the first start when no listener was given.
            var bindAddress: String?
        }

        private let timeout: Duration
        private let handler: @Sendable (Connection) -> Void
        private let state: Mutex<State>
        private let handlers = DispatchGroup()

        /// - Parameters:
        ///   - listeners: the sockets to accept on (usually ``Listeners/passed()``'s);
        ///     ``stop()`` closes them.
        ///   - address: when `listeners` is empty, the first ``start()`` binds this
        ///     (``Listener/bind(_:backlog:)``): for an agent run without socket hand-over,
        ///     which must not bind the port before `go` (the old instance holds it).
        ///   - timeout: how long each read or write on an accepted connection may wait, so
        ///     that an idle peer cannot hold up the drain for ever.
        ///   - handler: called once per accepted connection, on a thread of its own.
        public init(
            _ listeners: [Listener], orBind address: String? = nil, timeout: Duration = .seconds(10),
            handler: @escaping @Sendable (Connection) -> Void
        ) {
            state = Mutex(State(listeners: listeners, bindAddress: listeners.isEmpty ? address : nil))
            self.timeout = timeout
            self.handler = handler
        }

        /// The sockets it accepts on (empty before a first start that binds).
        public var listeners: [Listener] { state.withLock { $0.listeners } }

        /// Starts accepting (on `go`). Does nothing while accepting or once stopped.
        /// - Throws: ``BatonAgentError/socket(_:)`` when the address to bind cannot be
        ///   bound, or the wake pipe cannot be made.
        public func start() throws {
            try state.withLock { state in
                guard case .idle = state.phase else { return }
                if let address = state.bindAddress {
                    state.listeners = [try Listener.bind(address)]
                    state.bindAddress = nil
                }
                let loop = try AcceptLoop()
                state.phase = .accepting(loop)
                let listeners = state.listeners
                Thread.detachNewThread { [self] in
                    loop.run(listeners) { connection in dispatch(connection) }
                }
            }
        }

        /// Stops accepting and keeps the listeners (on `wait` after `go`). Returns once no
        /// accept can happen any more; connections already accepted go on being handled.
        public func pause() {
            state.withLock { state in
                guard case .accepting(let loop) = state.phase else { return }
                loop.end()
                state.phase = .idle
            }
        }

        /// Stops accepting, closes the listeners (never `shutdown(2)`: the successor
        /// holds the same sockets), and returns once every accepted connection's handler
        /// has returned: then report stopped. Connections not yet accepted wait in the
        /// backlog for the successor. Calling it again waits the same way.
        public func stop() {
            state.withLock { state in
                switch state.phase {
                case .accepting(let loop):
                    loop.end()
                    fallthrough
                case .idle:
                    for listener in state.listeners { close(listener.fd) }
                    state.phase = .closed
                case .closed:
                    break
                }
            }
            // Outside the lock: a handler may ask for `listeners`.
            handlers.wait()
        }

        private func dispatch(_ connection: Connection) {
            var limit = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: Int(timeout.components.attoseconds / 1_000_000_000_000))
            setsockopt(connection.fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(connection.fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            handlers.enter()
            Thread.detachNewThread { [self] in
                handler(connection)
                close(connection.fd)
                handlers.leave()
            }
        }
    }
}

/// One run of the accept thread, from ``BatonAgent/Acceptor/start()`` to
/// ``BatonAgent/Acceptor/pause()`` or ``BatonAgent/Acceptor/stop()``.
private final class AcceptLoop: Sendable {
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let ended = DispatchSemaphore(value: 0)

    init() throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw SocketCalls.failure("pipe for the accept thread") }
        wakeRead = fds[0]
        wakeWrite = fds[1]
        // (pipe2 and accept4, which would set it at once, are not in Swift's Glibc module.)
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    }

    /// Polls the listeners and the wake pipe, accepting what arrives, until woken.
    func run(_ listeners: [BatonAgent.Listener], _ accepted: (BatonAgent.Acceptor.Connection) -> Void) {
        defer { ended.signal() }
        var polled = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            + listeners.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
        while true {
            let ready = poll(&polled, nfds_t(polled.count), -1)
            if ready < 0 {
                if errno == EINTR { continue }
                return
            }
            if polled[0].revents != 0 { return }
            for index in polled.indices.dropFirst() where polled[index].revents != 0 {
                guard polled[index].revents & Int16(POLLIN) != 0 else {
                    // Not a listening socket any more (closed, or not one at all): never
                    // poll it again, or the loop would spin.
                    polled[index].fd = -1
                    continue
                }
                let fd = accept(polled[index].fd, nil, nil)
                let at = monotonicNanoseconds()
                if fd >= 0 {
                    _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                    accepted(.init(fd: fd, listener: listeners[index - 1], acceptedAt: at))
                } else if [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(errno) {
                    // Out of descriptors or memory: the connection stays queued; try again
                    // shortly rather than spin.
                    usleep(10_000)
                }
                // Any other error (ECONNABORTED, EINTR...) concerns one connection: go on.
            }
        }
    }

    /// Wakes the thread and waits until it has left the loop.
    func end() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
        ended.wait()
        close(wakeRead)
        close(wakeWrite)
    }
}
