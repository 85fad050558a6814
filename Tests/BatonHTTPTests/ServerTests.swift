import BatonHTTP
import BatonTestSupport
import BatonWire
import Foundation
import Logging
import Testing

/// The HTTP layer on its own, with routes made for the test, over real sockets.
@Suite("HTTP server")
final class ServerTests {
    struct Name: Codable, Sendable, ClosedJSONObject {
        static let fieldNames: Set<String> = ["name"]
        var name: String
    }

    let parked = Locked<[Pending]>([])
    let directory = TemporaryDirectory("http")
    var server: HTTPServer!
    var tcp: Listener!
    var unix: Listener!
    var endpoint: Endpoint!

    init() throws {
        let parked = self.parked
        var configuration = HTTPServer.Configuration()
        configuration.maxBodyBytes = 64 * 1024
        let router = Router([
            Route(.POST, "/echo", scope: RouteScope("open"), takesBody: true) { (request) throws(HTTPError) -> Reply in
                .respond(.json(try request.decodeJSON(Name.self)))
            },
            Route(.GET, "/items/{id}", scope: RouteScope("open")) { request in
                .respond(.json(["id": request.parameters["id"] ?? ""]))
            },
            Route(.GET, "/items/special", scope: RouteScope("open")) { _ in .respond(.json(["id": "literal"])) },
            Route(.GET, "/secret", scope: RouteScope("locked")) { _ in .respond(.json(["ok": true])) },
            Route(.GET, "/peer", scope: RouteScope("open")) { request in
                switch request.peer {
                case .tcp: return .respond(.json(["peer": "tcp"]))
                case .unix(let credentials): return .respond(.json(["peer": "unix", "uid": "\(credentials?.uid ?? 9999)", "pid": "\(credentials?.pid ?? 0)"]))
                }
            },
            Route(.GET, "/park", scope: RouteScope("open")) { request in
                let milliseconds = Int64(request.query("deadline_ms") ?? "60000") ?? 60000
                let pending = request.park(deadline: .milliseconds(milliseconds)) { .json(["answer": "deadline"]) }
                parked.update { $0 += [pending] }
                return .parked
            },
            Route(.GET, "/throws", scope: RouteScope("open")) { (_) throws(HTTPError) -> Reply in
                throw HTTPError(status: 409, code: "conflict", message: "busy")
            },
        ])
        server = HTTPServer(configuration: configuration, router: router, admission: { request in
            request.route.scope == RouteScope("locked") && request.header("Authorization") != "Bearer sesame"
                ? HTTPError(status: 401, code: "unauthorized", message: "no") : nil
        }, logger: Logger(label: "http-test"))
        tcp = try Listener.tcp(host: "127.0.0.1", port: 0)
        unix = try Listener.unix(path: directory.file("http.sock"))
        try server.serve(tcp)
        try server.serve(unix)
        guard case .tcp(let host, let port) = tcp.address else { throw TestFailure("not tcp") }
        endpoint = .tcp(host: host, port: port)
    }

    deinit {
        server.shutdown(grace: .seconds(1))
        tcp.close()
        unix.close()
    }

    @Test func pathParametersAndLiteralPrecedence() throws {
        #expect(try endpoint.get("/items/42").json()["id"] as? String == "42")
        #expect(try endpoint.get("/items/special").json()["id"] as? String == "literal")
    }

    @Test func unknownRouteAndWrongMethod() throws {
        let missing = try endpoint.get("/nope")
        #expect(missing.status == 404)
        #expect(missing.errorCode == "not_found")
        let wrong = try endpoint.request("PUT", "/items/1")
        #expect(wrong.status == 405)
        #expect(wrong.header("Allow") == "GET, HEAD")
    }

    @Test func jsonBodies() throws {
        let ok = try endpoint.request("POST", "/echo", headers: ["Content-Type": "application/json"], body: Array(#"{"name":"x"}"#.utf8))
        #expect(ok.status == 200)
        #expect(try ok.json()["name"] as? String == "x")

        let malformed = try endpoint.request("POST", "/echo", headers: ["Content-Type": "application/json"], body: Array("{nope".utf8))
        #expect(malformed.status == 400)
        #expect(malformed.errorCode == "malformed_json")

        let wrongShape = try endpoint.request("POST", "/echo", headers: ["Content-Type": "application/json"], body: Array(#"{"other":1}"#.utf8))
        #expect(wrongShape.status == 422)
        #expect(wrongShape.errorCode == "invalid_body")

        let empty = try endpoint.request("POST", "/echo", headers: ["Content-Type": "application/json"])
        #expect(empty.status == 400)

        let text = try endpoint.request("POST", "/echo", headers: ["Content-Type": "text/plain"], body: Array("hi".utf8))
        #expect(text.status == 415)
        #expect(text.errorCode == "unsupported_media_type")
    }

    /// A field the body's type does not know is refused (422), not ignored; a key twice in
    /// one object is refused (400), not settled by whichever copy the parser keeps.
    @Test(arguments: [
        (#"{"name":"x","admin":true}"#, 422, "invalid_body", "unknown field \"admin\""),
        (#"{"name":"x","name":"y"}"#, 400, "malformed_json", "\"name\" appears twice"),
        (#"{"name":"x","\u006eame":"y"}"#, 400, "malformed_json", "\"name\" appears twice"),
        (#"{"name":"x","n":[{"a":1,"b":{"a":2,"a":3}}]}"#, 400, "malformed_json", "\"a\" appears twice"),
        // Not duplicates: the same key in two objects, and keys' look-alikes inside strings.
        (#"{"name":"x","list":[{"a":1},{"a":2}]}"#, 422, "invalid_body", "unknown field \"list\""),
        (#"{"name":"{\"name\":[1,\",","x":"}"}"#, 422, "invalid_body", "unknown field \"x\""),
        (#"["name"]"#, 422, "invalid_body", "must be a JSON object"),
        (#""x""#, 422, "invalid_body", "must be a JSON object"),
    ])
    func closedBodies(_ body: String, _ status: Int, _ code: String, _ message: String) throws {
        let response = try endpoint.request("POST", "/echo", headers: ["Content-Type": "application/json"], body: Array(body.utf8))
        #expect(response.status == status)
        #expect(response.errorCode == code)
        let error = try response.json()["error"] as? [String: Any]
        #expect((error?["message"] as? String)?.contains(message) == true, "\(response.text)")
    }

    /// A body sent to a route that takes none is refused: from Content-Length before it is
    /// read, or once a chunked one turns out not to be empty. An empty one is fine.
    @Test func aBodyOnARouteThatTakesNoneIsRefused() throws {
        let sized = try RawConnection(endpoint).request("GET", "/items/1", headers: ["Content-Type": "application/json"],
                                                         body: Array("{}".utf8))
        #expect(sized.status == 400)
        #expect(sized.errorCode == "body_not_allowed")

        let chunked = try RawConnection(endpoint)
        try chunked.send(Array("GET /items/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n".utf8))
        let answer = try chunked.readResponse()
        #expect(answer.status == 400)
        #expect(answer.errorCode == "body_not_allowed")

        let empty = try RawConnection(endpoint)
        try empty.send(Array("GET /items/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".utf8))
        #expect(try empty.readResponse().status == 200)
        #expect(try endpoint.request("GET", "/items/1", headers: ["Content-Length": "0"]).status == 200)
    }

    @Test func anOversizedBodyIsRefusedFromItsHeadAlone() throws {
        let connection = try RawConnection(endpoint)
        let response = try connection.request("POST", "/echo", headers: ["Content-Type": "application/json", "Content-Length": "\(2 << 20)"],
                                              body: [], sendBody: false)
        #expect(response.status == 413)
        #expect(response.errorCode == "payload_too_large")
        #expect(connection.isClosedByPeer(), "the unread body is not kept: the connection closes")
    }

    @Test func anOversizedChunkedBodyIsRefused() throws {
        let connection = try RawConnection(endpoint)
        var head = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        let chunk = String(repeating: "a", count: 16 * 1024)
        for _ in 0..<5 { head += String(chunk.utf8.count, radix: 16) + "\r\n" + chunk + "\r\n" }
        head += "0\r\n\r\n"
        try connection.send(Array(head.utf8))
        let response = try connection.readResponse()
        #expect(response.status == 413)
    }

    @Test func admissionRunsBeforeTheHandler() throws {
        #expect(try endpoint.get("/secret").status == 401)
        #expect(try endpoint.request("GET", "/secret", headers: ["Authorization": "Bearer sesame"]).status == 200)
    }

    @Test func handlerErrorsUseTheErrorShape() throws {
        let response = try endpoint.get("/throws")
        #expect(response.status == 409)
        #expect(response.errorCode == "conflict")
    }

    /// The server writes the error shape by hand; clients read it as BatonWire's `ErrorBody`.
    @Test func theErrorShapeIsTheOneClientsDecode() throws {
        let error = HTTPError(status: 422, code: "bad_thing", message: "a \"quoted\" line\nand another")
        let body = try WireJSON.decoder.decode(ErrorBody.self, from: Data(error.response.body))
        #expect(body == ErrorBody(code: "bad_thing", message: "a \"quoted\" line\nand another"))
    }

    @Test func keepAliveServesSeveralRequestsOnOneConnection() throws {
        let connection = try RawConnection(endpoint)
        for id in 1...3 {
            let response = try connection.request("GET", "/items/\(id)")
            #expect(response.status == 200)
            #expect(response.header("Connection")?.lowercased() != "close")
        }
    }

    @Test func unixPeersCarryTheirCredentials() throws {
        let response = try Endpoint.unix(path: directory.file("http.sock")).get("/peer").json()
        #expect(response["peer"] as? String == "unix")
        #expect(response["uid"] as? String == "\(getuid())")
        #expect(response["pid"] as? String == "\(getpid())")
        #expect(try endpoint.get("/peer").json()["peer"] as? String == "tcp")
    }

    @Test func aParkedRequestIsAnsweredFromAnotherThread() throws {
        let answer = inBackground { [endpoint] in try endpoint!.get("/park") }
        let pending = try waitForParked()
        #expect(server.parkedCount == 1)
        #expect(pending.answer(.json(["answer": "woken"])))
        #expect(!pending.answer(.json(["answer": "twice"])), "a request is answered once")
        #expect(try answer.wait().json()["answer"] as? String == "woken")
        #expect(server.parkedCount == 0)
    }

    @Test func aParkedRequestIsAnsweredAtItsDeadline() throws {
        let answer = inBackground { [endpoint] in try endpoint!.get("/park?deadline_ms=50") }
        _ = try waitForParked()
        #expect(try answer.wait().json()["answer"] as? String == "deadline")
    }

    @Test func shutdownAnswersEveryParkedRequest() throws {
        let answers = (0..<3).map { _ in inBackground { [endpoint] in try endpoint!.get("/park") } }
        let deadline = Date().addingTimeInterval(10)
        while server.parkedCount < 3 && Date() < deadline { usleep(5000) }
        #expect(server.parkedCount == 3)
        server.shutdown(grace: .seconds(5))
        for answer in answers {
            #expect(try answer.wait().json()["answer"] as? String == "deadline")
        }
    }

    /// The first request the /park route parked (polled: parking has no event to wait on).
    func waitForParked() throws -> Pending {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let first = parked.get().first { return first }
            usleep(2000)
        }
        throw TestFailure("nothing parked")
    }
}

/// Requests must not outlive their answer: a reference cycle here leaks memory on
/// every request of a long-running daemon.
@Suite("HTTP server memory")
struct ServerMemoryTests {
    final class Weak: @unchecked Sendable {
        // @unchecked: written by the server's thread before the answer is sent, read by
        // the test after it arrives.
        weak var exchange: AnyObject?
    }

    @Test func anAnsweredRequestIsReleased() throws {
        let probe = Weak()
        let router = Router([
            Route(.GET, "/probe", scope: RouteScope("open")) { request in
                probe.exchange = request.exchangeObject
                return .respond(.json(["ok": true]))
            },
        ])
        let server = HTTPServer(router: router, logger: Logger(label: "memory-test"))
        let listener = try Listener.tcp(host: "127.0.0.1", port: 0)
        defer {
            server.shutdown(grace: .seconds(1))
            listener.close()
        }
        try server.serve(listener)
        guard case .tcp(let host, let port) = listener.address else { throw TestFailure("not tcp") }
        let connection = try RawConnection(.tcp(host: host, port: port))
        #expect(try connection.request("GET", "/probe").status == 200)
        // The completion callback runs just after the answer is sent: give it a moment.
        let deadline = Date().addingTimeInterval(5)
        while probe.exchange != nil && Date() < deadline { usleep(1000) }
        #expect(probe.exchange == nil, "the exchange outlived its request")
    }
}
