import BatonHTTP
import BatonTestSupport
import Foundation
import Glibc
import Logging
import Testing

/// Deadlines and limits of the HTTP layer, over real sockets: a slow client, a full
/// listener, a crowd of parked requests.
@Suite("HTTP capacity")
final class CapacityTests {
    let directory = TemporaryDirectory("capacity")
    let server: HTTPServer
    let tcp: Listener
    let unix: Listener
    let endpoint: Endpoint
    let parked = Locked<Int>(0)

    /// Limits small enough that a test fills them with a handful of sockets.
    init() throws {
        var configuration = HTTPServer.Configuration()
        configuration.requestHeadTimeout = .milliseconds(500)
        configuration.requestBodyTimeout = .milliseconds(500)
        let parked = self.parked
        let router = Router([
            Route(.GET, "/hello", scope: RouteScope("open")) { _ in .respond(.json(["hello": "world"])) },
            Route(.GET, "/operator", scope: RouteScope("operator")) { _ in .respond(.json(["ok": true])) },
            Route(.POST, "/echo", scope: RouteScope("open"), takesBody: true) { request in .respond(.json(["bytes": request.body.count])) },
            Route(.GET, "/park", scope: RouteScope("open")) { (request) throws(HTTPError) -> Reply in
                let most = Int(request.query("most") ?? "") ?? 1000
                let overflow: ParkLimit.Overflow = request.query("displace") == nil ? .refuse : .answerOldest
                _ = try request.park(deadline: .seconds(30), limit: ParkLimit(group: "park", most: most, overflow: overflow)) {
                    .json(["answer": "deadline"])
                }
                parked.update { $0 += 1 }
                return .parked
            },
        ])
        server = HTTPServer(configuration: configuration, router: router, logger: Logger(label: "capacity-test"))
        tcp = try Listener.tcp(host: "127.0.0.1", port: 0)
        unix = try Listener.unix(path: directory.file("capacity.sock"))
        try server.serve(tcp, policy: ListenerPolicy(maxConnections: 4))
        try server.serve(unix, policy: ListenerPolicy(maxConnections: 8, maxConnectionsPerPeer: 2, scopes: [RouteScope("open")]))
        guard case .tcp(let host, let port) = tcp.address else { throw TestFailure("not tcp") }
        endpoint = .tcp(host: host, port: port)
    }

    deinit {
        server.shutdown(grace: .seconds(1))
        tcp.close()
        unix.close()
    }

    /// A client that sends half a head and then a byte every 100 ms: libmicrohttpd's idle
    /// timeout (30 s, reset by each byte) never fires, the head deadline does.
    @Test func aHeadTrickledPastItsDeadlineIsClosed() throws {
        let connection = try RawConnection(endpoint, timeout: 5)
        try connection.send(Array("GET /hello HTTP/1.1\r\nHost: x\r\n".utf8))
        let started = Date()
        var closed = false
        while !closed && Date().timeIntervalSince(started) < 5 {
            usleep(100_000)
            closed = (try? connection.send(Array("X".utf8))) == nil || connection.isClosedByPeer(waiting: 0)
        }
        #expect(closed, "a trickled head held its connection for 5 s")
        #expect(Date().timeIntervalSince(started) < 2)
    }

    @Test func aBodyTrickledPastItsDeadlineIsClosed() throws {
        let connection = try RawConnection(endpoint, timeout: 5)
        try connection.send(Array("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n".utf8))
        let started = Date()
        var closed = false
        while !closed && Date().timeIntervalSince(started) < 5 {
            usleep(100_000)
            closed = (try? connection.send(Array(" ".utf8))) == nil || connection.isClosedByPeer(waiting: 0)
        }
        #expect(closed, "a trickled body held its connection for 5 s")
        #expect(Date().timeIntervalSince(started) < 2)
    }

    /// A full listener whose connections only wait for their heads lets a new client in,
    /// in place of the one that has waited longest.
    @Test func aNewClientTakesTheSlotOfTheOldestIdleConnection() throws {
        let idle = try (0..<4).map { _ in try RawConnection(endpoint, timeout: 5) }
        for connection in idle { try connection.send(Array("GET /hello HTTP/1.1\r\n".utf8)) }
        try eventually { self.server.listenerStats.first?.open == 4 }
        let answer = try endpoint.get("/hello", timeout: 2)
        #expect(answer.status == 200)
        #expect(idle[0].isClosedByPeer(waiting: 2), "the oldest idle connection made room")
    }

    /// A listener full of requests in progress closes a new connection at once: it is not
    /// left waiting in the listen backlog.
    @Test func aListenerFullOfBusyConnectionsRefusesAtOnce() throws {
        let waits = (0..<4).map { _ in inBackground { [endpoint] in try endpoint.get("/park", timeout: 30) } }
        try eventually { self.parked.get() == 4 }
        let started = Date()
        let connection = try RawConnection(endpoint, timeout: 3)
        #expect(connection.isClosedByPeer(waiting: 3), "a connection over the limit was not closed")
        #expect(Date().timeIntervalSince(started) < 1)
        server.shutdown(grace: .seconds(1))
        for wait in waits { _ = try? wait.wait() }
    }

    @Test func parkedRequestsPastTheirCapAreRefusedAtOnce() throws {
        let waits = (0..<2).map { _ in inBackground { [unix = directory.file("capacity.sock")] in
            try Endpoint.unix(path: unix).get("/park?most=2", timeout: 30)
        } }
        try eventually { self.parked.get() == 2 }
        let started = Date()
        let refused = try endpoint.get("/park?most=2", timeout: 3)
        #expect(refused.status == 503)
        #expect(refused.errorCode == "too_many_waiters")
        #expect(refused.header("Retry-After") == "1")
        #expect(Date().timeIntervalSince(started) < 1)
        #expect(server.parkedCount == 2)
        server.shutdown(grace: .seconds(1))
        for wait in waits { _ = try? wait.wait() }
    }

    @Test func aDisplacingCapAnswersTheOldestWaiter() throws {
        let first = inBackground { [endpoint] in try endpoint.get("/park?most=1&displace=1", timeout: 30) }
        try eventually { self.parked.get() == 1 }
        let second = inBackground { [endpoint] in try endpoint.get("/park?most=1&displace=1", timeout: 30) }
        #expect(try first.wait(timeout: 3).json()["answer"] as? String == "deadline")
        try eventually { self.parked.get() == 2 }
        #expect(server.parkedCount == 1)
        server.shutdown(grace: .seconds(1))
        _ = try? second.wait()
    }

    /// On a Unix socket with a per-peer cap, a peer's connection past the cap is closed at
    /// once; others' are not affected (here: the same peer again once one closes).
    @Test func aPeerPastItsCapIsClosedAtOnce() throws {
        let path = directory.file("capacity.sock")
        let held = try (0..<2).map { _ in try RawConnection(.unix(path: path), timeout: 5) }
        try eventually { self.server.listenerStats.last?.open == 2 }
        let extra = try RawConnection(.unix(path: path), timeout: 3)
        #expect(extra.isClosedByPeer(waiting: 3))
        #expect(try held[0].request("GET", "/hello").status == 200, "the peer's first connections still work")
    }

    @Test func aListenerServesOnlyItsScopes() throws {
        let path = directory.file("capacity.sock")
        #expect(try Endpoint.unix(path: path).get("/operator").status == 404)
        #expect(try endpoint.get("/operator").status == 200)
    }
}

/// Polls a condition of the server that has no event to wait on.
private func eventually(_ condition: () -> Bool) throws {
    let deadline = Date().addingTimeInterval(5)
    while !condition() {
        guard Date() < deadline else { throw TestFailure("condition not met within 5 s") }
        usleep(10_000)
    }
}

/// A listener that keeps slots for requests answered at once: parked requests and open
/// streams may hold only `maxConnections - reserved` of its connections.
@Suite("HTTP reserved slots")
final class ReservedSlotsTests {
    let server: HTTPServer
    let tcp: Listener
    let endpoint: Endpoint
    let parked = Locked<Int>(0)

    /// 6 slots, 2 reserved: 4 may be held.
    init() throws {
        let parked = self.parked
        let router = Router([
            Route(.GET, "/hello", scope: RouteScope("open")) { _ in .respond(.json(["hello": "world"])) },
            Route(.GET, "/park", scope: RouteScope("open")) { (request) throws(HTTPError) -> Reply in
                // `/park?client=C&most=N`: client C's polls, the oldest answered past N
                // (as an instance's signal polls); without a client, one group that refuses.
                let limit = request.query("client").map {
                    ParkLimit(group: $0, most: Int(request.query("most") ?? "") ?? 1, overflow: .answerOldest)
                } ?? ParkLimit(group: "park", most: 1000, overflow: .refuse)
                _ = try request.park(deadline: .seconds(30), limit: limit) {
                    .json(["answer": "deadline"])
                }
                parked.update { $0 += 1 }
                return .parked
            },
            Route(.GET, "/stream", scope: RouteScope("open")) { _ in
                .stream(StreamedResponse(headers: [("Content-Type", "text/event-stream")], source: Silence()))
            },
        ])
        server = HTTPServer(router: router, logger: Logger(label: "reserved-slots-test"))
        tcp = try Listener.tcp(host: "127.0.0.1", port: 0)
        try server.serve(tcp, policy: ListenerPolicy(maxConnections: 6, reserved: 2))
        guard case .tcp(let host, let port) = tcp.address else { throw TestFailure("not tcp") }
        endpoint = .tcp(host: host, port: port)
    }

    deinit {
        server.shutdown(grace: .seconds(1))
        tcp.close()
    }

    /// Six long-polls on six slots: four park, two are refused at once, and a short
    /// request still gets a slot. (Without the reserve all six parked and the listener,
    /// full of busy connections, closed the short request's connection unanswered.)
    @Test func longPollsCannotTakeTheReservedSlots() throws {
        let answered = Locked<[HTTPResponse]>([])
        let waits = (0..<6).map { _ in inBackground { [endpoint] in
            let answer = try rawGet(endpoint, "/park")
            answered.update { $0 += [answer] }
            return answer
        } }
        try waitUntil(timeout: 30) { self.parked.get() + answered.get().count >= 6 }
        #expect(parked.get() == 4)
        let refused = answered.get()
        #expect(refused.count == 2)
        for answer in refused {
            #expect(answer.status == 503)
            #expect(answer.errorCode == "too_many_waiters")
            #expect(answer.header("Retry-After") == "1")
        }
        #expect(try endpoint.get("/hello", timeout: 3).status == 200, "a short request found a reserved slot")
        server.shutdown(grace: .seconds(1))
        for wait in waits { _ = try? wait.wait() }
    }

    /// A long-poll that replaces its group's oldest (a displacing limit) is taken even
    /// when every slot that may be held is: the one it replaces is answered.
    @Test func aDisplacingLongPollIsTakenAtTheLimit() throws {
        let first = inBackground { [endpoint] in try rawGet(endpoint, "/park?client=a") }
        try waitUntil(timeout: 30) { self.parked.get() == 1 }
        let others = (0..<3).map { _ in inBackground { [endpoint] in try rawGet(endpoint, "/park") } }
        try waitUntil(timeout: 30) { self.parked.get() == 4 }
        let displacing = inBackground { [endpoint] in try rawGet(endpoint, "/park?client=a") }
        #expect(try first.wait(timeout: 30).json()["answer"] as? String == "deadline")
        try waitUntil(timeout: 30) { self.parked.get() == 5 }
        #expect(server.parkedCount == 4)
        server.shutdown(grace: .seconds(1))
        for wait in others + [displacing] { _ = try? wait.wait() }
    }

    /// Every slot that may be held is taken, two clients holding two polls each: a third
    /// client's first poll takes the slot of the oldest of them, its second is refused.
    @Test func aClientWithoutAPollTakesASpareOne() throws {
        let answered = Locked(0)
        let get = { [endpoint] (path: String) in inBackground {
            let answer = try rawGet(endpoint, path)
            answered.update { $0 += 1 }
            return answer
        } }
        let first = ["a", "a", "b", "b"].map { get("/park?client=\($0)&most=2") }
        try waitUntil(timeout: 30) { self.parked.get() == 4 }
        let c1 = get("/park?client=c&most=2")
        // Answered well before the parked requests' own 30 s deadline.
        try waitUntil(timeout: 20) { answered.get() == 1 && self.parked.get() == 5 }
        let c2 = try rawGet(endpoint, "/park?client=c&most=2")
        #expect(c2.status == 503, "c holds one already: its second finds no slot")
        #expect(c2.errorCode == "too_many_waiters")
        #expect(server.parkedCount == 4, "a or b gave up its oldest and kept one")
        server.shutdown(grace: .seconds(1))
        for wait in first + [c1] { _ = try? wait.wait() }
    }

    /// Open streams count against the same slots: the fifth is refused at once.
    @Test func streamsCannotTakeTheReservedSlots() throws {
        let streams = try (0..<4).map { _ in try RawConnection(endpoint, timeout: 5) }
        for stream in streams { try stream.send(Array("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n".utf8)) }
        try waitUntil(timeout: 30) { self.server.streamCount == 4 }
        let refused = try endpoint.get("/stream", timeout: 3)
        #expect(refused.status == 503)
        #expect(refused.errorCode == "too_many_streams")
        #expect(try endpoint.get("/hello", timeout: 3).status == 200)
        withExtendedLifetime(streams) {}
    }
}

/// One request on a connection of its own, as sent: no client-side retries.
private func rawGet(_ endpoint: Endpoint, _ path: String) throws -> HTTPResponse {
    try RawConnection(endpoint, timeout: 60).request("GET", path)
}

/// A stream that never has anything to say.
private final class Silence: StreamSource {
    func next() -> [UInt8] { [] }
    var keepalive: [UInt8] { [] }
}
