import BatonTestSupport
import Foundation
import Glibc
import Testing

/// examples/http-agent run without batond: under systemd's own socket activation tool,
/// which passes the socket exactly as batond does (descriptor 3, LISTEN_FDS, LISTEN_PID,
/// LISTEN_FDNAMES), so this is also the agent library reading real LISTEN_* variables.
@Suite("examples/http-agent")
struct HTTPAgentTests {
    /// `GET /` over a Unix socket; the whole answer (the agent closes after it).
    func get(_ path: String) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(fd) }
        var address = unixSocketAddress(path)
        var limit = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        // The tool creates the file at bind(2) and listens a moment later: refused until then.
        let deadline = ContinuousClock.now + .seconds(20)
        while withUnsafePointer(to: &address, {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }) != 0 {
            guard errno == ECONNREFUSED, ContinuousClock.now < deadline else {
                throw TestFailure("connect \(path): \(String(cString: strerror(errno)))")
            }
            usleep(1000)
        }
        let request = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        _ = send(fd, request, request.utf8.count, Int32(MSG_NOSIGNAL))
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(fd, &chunk, chunk.count, 0)
            guard n > 0 else { break }
            answer += chunk[0..<n]
        }
        return String(decoding: answer, as: UTF8.self)
    }

    @Test(.enabled(if: which("systemd-socket-activate") != nil, "needs systemd-socket-activate (systemd)"))
    func socketActivatedItServesOnThePassedSocketAndStopsOnSIGTERM() throws {
        let directory = TemporaryDirectory("http-agent")
        let path = directory.file("web.sock")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: which("systemd-socket-activate")!)
        process.arguments = ["-l", path, "--fdname=http", Products.path("http-agent"), "--standalone-version", "1.0"]
        let output = Pipe()
        process.standardError = output
        process.standardOutput = output
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        // The tool binds the socket first, then waits for a connection before it execs the agent.
        let deadline = ContinuousClock.now + .seconds(20)
        while access(path, F_OK) != 0 {
            guard ContinuousClock.now < deadline, process.isRunning else { throw TestFailure("no socket at \(path)") }
            usleep(1000)
        }

        // It execs in place: the agent's pid is the one LISTEN_PID names.
        let expected = "http-agent 1.0 (instance standalone, pid \(process.processIdentifier))\n"
        for _ in 0..<3 {
            let answer = try get(path)
            #expect(answer.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(answer)")
            #expect(answer.hasSuffix("\r\n\r\n" + expected), "\(answer)")
        }

        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        let log = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == 0, "\(log)")
        #expect(log.contains("serving on unix:\(path)"), "\(log)")
    }

    @Test func withNoSocketPassedAndNoBindItRefusesToStart() throws {
        let result = try run([Products.path("http-agent")], environment: ["PATH": "/usr/bin:/bin"])
        #expect(result.status == 64)
        #expect(result.output.contains("give --bind"), "\(result.output)")
    }
}
