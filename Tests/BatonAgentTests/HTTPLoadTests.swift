import BatonAgent
import BatonTestSupport
import Foundation
import Glibc
import Testing

/// The integration tests' load generator and connection-log check, against a server made
/// of an acceptor (and against nobody).
@Suite("HTTP load and the connection log check")
struct HTTPLoadTests {
    @Test func answersAreCountedWithTheirBodiesAndARefusalIsAFailureOfItsKind() throws {
        let listener = try BatonAgent.Listener.bind("tcp://127.0.0.1:0")
        let acceptor = BatonAgent.Acceptor([listener]) { connection in
            guard connection.receive(until: Array("\r\n\r\n".utf8)) != nil else { return }
            _ = connection.send(Array("HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nweb.1 2\n".utf8))
        }
        try acceptor.start()
        let load = try HTTPLoad(address: "\(listener.address!)")
        load.start(connections: 2)
        try waitUntil { load.counts.ok >= 20 }
        // Nobody listens any more: every request from here on is refused.
        acceptor.stop()
        try waitUntil { load.counts.failures.count >= 5 }
        let result = load.stop()

        #expect(result.ok >= 20)
        #expect(result.bodies == ["web.1 2\n"])
        // A request queued in the backlog as the listener closed is reset; every one after is
        // refused. (Two threads record in no set order: a reset may be counted after a refusal.)
        #expect(result.failures.allSatisfy { [.refused, .reset].contains($0.kind) }, "\(result.failures.prefix(3))")
        #expect(result.failures.filter { $0.kind == .reset }.count <= 2, "at most one in flight per thread: \(result.failures.prefix(5))")
        #expect(result.failures.contains { $0.kind == .refused })
        #expect(result.failures.allSatisfy { $0.nanoseconds > 0 && $0.nanoseconds <= monotonicNanoseconds() })
    }

    @Test func anAnswerThatIsNotA200IsABadAnswer() throws {
        let listener = try BatonAgent.Listener.bind("tcp://127.0.0.1:0")
        let acceptor = BatonAgent.Acceptor([listener]) { connection in
            guard connection.receive(until: Array("\r\n\r\n".utf8)) != nil else { return }
            _ = connection.send(Array("HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8))
        }
        try acceptor.start()
        defer { acceptor.stop() }
        let load = try HTTPLoad(address: "tcp://\(listener.address!.description.dropFirst("tcp://".count))")
        load.start(connections: 1)
        try waitUntil { !load.counts.failures.isEmpty }
        let result = load.stop()
        #expect(result.ok == 0)
        #expect(result.failures.first?.kind == .badAnswer)
    }

    @Test func anAcceptOutsideItsInstancesGoWindowIsReported() {
        func line(_ event: String, _ instance: String, _ at: UInt64) -> AgentEvent {
            AgentEvent(event: event, instance: instance, version: instance == "web.1" ? "1.0" : "2.0", nanoseconds: at)
        }
        let handoff = [
            line("go", "web.1", 10), line("accept", "web.1", 11), line("ready", "web.2", 12),
            line("accept", "web.1", 13), line("stopped", "web.1", 20), line("go", "web.2", 21),
            line("accept", "web.2", 22), line("exit", "web.1", 23),
        ]
        #expect(acceptsOutsideGoWindows(handoff).isEmpty)

        let early = line("accept", "web.2", 15)  // before its own go: the old one still served
        let late = line("accept", "web.1", 24)  // after its stopped
        #expect(acceptsOutsideGoWindows(handoff + [early, late]) == [early, late])
        // Lines are put in time order first: several processes append to one file.
        #expect(acceptsOutsideGoWindows((handoff + [late]).reversed()) == [late])
    }
}
