import BatonAgent
import BatonTestSupport
import Foundation
import Glibc
import Testing

/// The acceptor against real sockets: it accepts only between start and pause or stop,
/// and on stop closes its own descriptor (never shutdown) and drains before returning.
@Suite("Accepting on shared listening sockets")
struct AcceptorTests {
    /// A connected client socket (the kernel completes the handshake from the backlog,
    /// whether or not anyone accepts).
    func connectClient(_ port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard ok == 0 else {
            let error = errno
            close(fd)
            throw TestFailure("connect: \(String(cString: strerror(error)))")
        }
        return fd
    }

    func listener() throws -> (BatonAgent.Listener, port: Int) {
        let listener = try BatonAgent.Listener.bind("tcp://127.0.0.1:0")
        guard case .tcp(_, let port) = listener.address else { throw TestFailure("no port") }
        return (listener, port)
    }

    /// Accepted connections, in order, each with the time the test saw it.
    final class Accepted: Sendable {
        let connections = Locked<[BatonAgent.Acceptor.Connection]>([])
        let arrived = DispatchSemaphore(value: 0)

        func add(_ connection: BatonAgent.Acceptor.Connection) {
            var now = connections.get()
            now.append(connection)
            connections.set(now)
            arrived.signal()
        }

        func next() throws {
            guard arrived.wait(timeout: .now() + 20) == .success else { throw TestFailure("no connection accepted") }
        }
    }

    @Test func aConnectionQueuedBeforeStartIsAcceptedOnlyAfterIt() throws {
        let (listener, port) = try listener()
        let accepted = Accepted()
        let acceptor = BatonAgent.Acceptor([listener]) { accepted.add($0) }
        let client = try connectClient(port)
        defer { close(client) }

        let startedAt = monotonicNanoseconds()
        try acceptor.start()
        try accepted.next()
        #expect(accepted.connections.get().count == 1)
        #expect(accepted.connections.get()[0].acceptedAt >= startedAt)
        #expect(accepted.connections.get()[0].listener == listener)

        // Paused: a new connection waits in the backlog until accepting starts again.
        acceptor.pause()
        let second = try connectClient(port)
        defer { close(second) }
        let restartedAt = monotonicNanoseconds()
        try acceptor.start()
        try accepted.next()
        #expect(accepted.connections.get()[1].acceptedAt >= restartedAt)
        acceptor.stop()
    }

    /// stop() closes this holder's descriptor and nothing more: another holder of the same
    /// socket (the successor, batond) still gets the connections that arrive afterwards.
    /// shutdown() would have made them refused.
    @Test func stopClosesOnlyItsOwnDescriptorSoAnotherHolderGoesOnAccepting() throws {
        let (listener, port) = try listener()
        let successor = dup(listener.fd)
        let acceptor = BatonAgent.Acceptor([listener]) { _ in }
        try acceptor.start()
        acceptor.stop()

        let client = try connectClient(port)
        defer { close(client) }
        let connection = accept(successor, nil, nil)
        #expect(connection >= 0, "the successor's accept: \(String(cString: strerror(errno)))")
        close(connection)
        // Once the successor lets go too, nobody listens: the acceptor did close its own.
        close(successor)
        #expect(throws: TestFailure.self) { close(try connectClient(port)) }
    }

    @Test func stopReturnsOnlyOnceEveryAcceptedConnectionIsAnswered() throws {
        let (listener, port) = try listener()
        let gate = DispatchGroup()
        gate.enter()
        let accepted = Accepted()
        let acceptor = BatonAgent.Acceptor([listener]) { connection in
            accepted.add(connection)
            gate.wait()
            _ = connection.send(Array("answer\n".utf8))
        }
        try acceptor.start()
        let client = try connectClient(port)
        defer { close(client) }
        try accepted.next()

        let stopped = Locked(false)
        let stopping = inBackground {
            acceptor.stop()
            stopped.set(true)
        }
        // The listener is closed at once (connecting is refused: it was the only holder),
        // the accepted connection not yet answered: stop() is still waiting for its handler.
        try waitUntil { (try? connectClient(port)).map { close($0) } == nil }
        #expect(!stopped.get())
        gate.leave()
        try stopping.wait()
        // Answered, then closed by the acceptor.
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = recv(client, &buffer, buffer.count, 0)
        #expect(n > 0 && String(decoding: buffer[0..<max(n, 0)], as: UTF8.self) == "answer\n")
        #expect(recv(client, &buffer, buffer.count, 0) == 0)
    }

    @Test func receiveReadsUpToTheTerminatorAcrossSeveralWrites() throws {
        let (listener, port) = try listener()
        let heads = Locked<[String]>([])
        let acceptor = BatonAgent.Acceptor([listener]) { connection in
            let head = connection.receive(until: Array("\r\n\r\n".utf8)).map { String(decoding: $0, as: UTF8.self) }
            heads.update { $0 += [head ?? "nil"] }
            _ = connection.send(Array("ok".utf8))
        }
        try acceptor.start()
        defer { acceptor.stop() }
        let client = try connectClient(port)
        defer { close(client) }
        for part in ["GET / HTTP/1.1\r", "\nHost: x\r\n\r", "\n"] {
            _ = send(client, part, part.utf8.count, Int32(MSG_NOSIGNAL))
            usleep(20_000)  // separate segments, so the terminator arrives split
        }
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(recv(client, &buffer, buffer.count, 0) == 2)
        #expect(heads.get() == ["GET / HTTP/1.1\r\nHost: x\r\n\r\n"])
    }
}

/// Waits for `condition` (checked every millisecond) for up to 20 s.
func waitUntil(_ condition: () -> Bool) throws {
    let deadline = ContinuousClock.now + .seconds(20)
    while !condition() {
        guard ContinuousClock.now < deadline else { throw TestFailure("condition never held") }
        usleep(1000)
    }
}
