import BatonClient
import BatonCore
import BatonTestSupport
import Foundation
import Glibc
import Synchronization
import Testing

/// BatonClient on its own: parsing, and against a real batond.
@Suite("BatonClient")
struct ClientTests {
    @Test(arguments: [
        ("http://127.0.0.1:7070", BatonClient.Endpoint?.some(.tcp(host: "127.0.0.1", port: 7070))),
        ("http://[::1]:7070/", .tcp(host: "::1", port: 7070)),
        ("http://localhost", .tcp(host: "localhost", port: 80)),
        ("https://127.0.0.1:7070", nil),
        ("http://127.0.0.1:7070/v1", nil),
        ("http://user@127.0.0.1:7070", nil),
        ("http://127.0.0.1:0", nil),
    ])
    func endpointsParse(_ url: String, _ expected: BatonClient.Endpoint?) {
        #expect(BatonClient.Endpoint(url: url) == expected)
    }

    @Test func serverSentEventsAreCutAtBlankLinesWhateverTheChunks() {
        let stream = ": keepalive\n\nid: 7\nevent: handoff.began\ndata: {\"seq\":7}\n\nid: 8\r\ndata: a\r\ndata: b\r\n\r\n"
        for size in [1, 2, 5, 1000] {
            var parser = ServerSentEventParser()
            var events: [ServerSentEvent] = []
            let bytes = Array(stream.utf8)
            for start in stride(from: 0, to: bytes.count, by: size) {
                events += parser.feed(bytes[start..<min(start + size, bytes.count)])
            }
            #expect(events == [ServerSentEvent(id: "7", event: "handoff.began", data: "{\"seq\":7}"),
                               ServerSentEvent(id: "8", event: nil, data: "a\nb")], "chunks of \(size)")
        }
    }

    /// The error a call ends in; nil when it succeeded.
    func failure(_ body: () throws -> Void) -> ClientError? {
        do {
            try body()
            return nil
        } catch {
            return error as? ClientError
        }
    }

    @Test func failuresAreToldApart() throws {
        let scratch = TemporaryDirectory("client")
        let path = scratch.file("none.sock")
        #expect(failure { _ = try BatonClient(endpoint: .unix(path: path)).status() }
                == .notRunning(.unix(path: path), reason: "No such file or directory"))
        #expect(failure { _ = try BatonClient(endpoint: .tcp(host: "127.0.0.1", port: 1)).status() }
                == .notRunning(.tcp(host: "127.0.0.1", port: 1), reason: "Connection refused"))

        let daemon = try BatondProcess(configText: "[agents.demo]\ncommand = [\"{release}/bin/demo\"]\n")
        guard case .tcp(let host, let port) = daemon.endpoint else { throw TestFailure("no TCP listener") }
        let wrongToken = failure { _ = try BatonClient(endpoint: .tcp(host: host, port: port), token: "wrong").status() }
        guard case .unauthorized(let api)? = wrongToken else {
            Issue.record("a wrong token: \(String(describing: wrongToken))")
            return
        }
        #expect(api.status == 401 && api.code == "unauthorized")
        let unknown = failure { _ = try BatonClient(endpoint: .unix(path: daemon.socketPath)).agent("nobody") }
        guard case .api(let notFound)? = unknown else {
            Issue.record("an unknown agent: \(String(describing: unknown))")
            return
        }
        #expect(notFound.status == 404 && notFound.code == "agent_not_found" && !notFound.message.isEmpty)
    }

    @Test func oneConnectionServesManyRequestsAndComesBackAfterBatondClosedIt() throws {
        let daemon = try BatondProcess(configText: "[agents.demo]\ncommand = [\"{release}/bin/demo\"]\n")
        let connection = HTTPConnection(.unix(path: daemon.socketPath))
        for _ in 0..<3 {
            let response = try connection.send(HTTPRequest("GET", "/healthz"))
            #expect(response.status == 200)
            #expect(connection.isOpen, "kept alive")
        }
        // batond restarts on the same socket: the kept connection is dead, the next
        // request goes out again on a new one.
        #expect(daemon.stop() == 0)
        let again = try BatondProcess(state: daemon.state, configText: "[agents.demo]\ncommand = [\"{release}/bin/demo\"]\n")
        #expect(try connection.send(HTTPRequest("GET", "/healthz")).status == 200)
        again.stop()
    }

    @Test func anUploadStreamsFromDiskWithProgressAndARefusalArrivesMidUpload() throws {
        let state = TemporaryDirectory("upload")
        let daemon = try BatondProcess(state: state, configText: "[agents.demo]\ncommand = [\"{release}/bin/demo\"]\n")
        let client = BatonClient(endpoint: .unix(path: daemon.socketPath))
        let file = state.file("release")
        try ("#!/bin/sh\n" + String(repeating: "# padding\n", count: 300_000)).write(toFile: file, atomically: true, encoding: .utf8)
        let digest = try run(["/usr/bin/sha256sum", file]).output.prefix(64)
        let seen = Mutex<[Int64]>([])
        let reply = try client.pushRelease("demo", "1.0", file: file, sha256: String(digest)) { sent, total in
            seen.withLock { $0.append(sent) }
            #expect(total == 3_000_010)
        }
        #expect(reply.response.status == 201 && reply.value.sha256 == String(digest))
        let progress = seen.withLock { $0 }
        #expect(progress.count > 2 && progress.last == 3_000_010 && progress == progress.sorted(), "\(progress)")

        // A digest that does not match: batond refuses after the body; the error shape comes back.
        let refused = failure { _ = try client.pushRelease("demo", "2.0", file: file, sha256: String(repeating: "0", count: 64)) }
        #expect(refused?.apiError?.status == 422, "\(String(describing: refused))")
    }
}
