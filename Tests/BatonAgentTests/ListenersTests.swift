@testable import BatonAgent
import BatonTestSupport
import Foundation
import Glibc
import Synchronization
import Testing

/// Real listening sockets placed on consecutive descriptors, as batond places them at 3, 4,
/// ..., but high up (the test process's 3 is not ours), without close-on-exec (dup2 clears
/// it), as an exec leaves them.
final class PassedSockets {
    /// A distinct range per use: the tests run in parallel in one process.
    private static let nextBase = Atomic<Int32>(600)

    let first: Int32
    let count: Int32
    let directory = TemporaryDirectory("listeners")

    /// `fds` are moved (dup2, then closed) to `first`, `first + 1`, ...
    init(_ fds: [Int32]) throws {
        var base: Int32
        repeat {
            base = Self.nextBase.add(16, ordering: .relaxed).oldValue
            guard base + 16 < 1024 else { throw TestFailure("no free descriptor range") }
        } while (base..<(base + Int32(fds.count))).contains { fcntl($0, F_GETFD) >= 0 }
        for (offset, fd) in fds.enumerated() {
            guard dup2(fd, base + Int32(offset)) >= 0 else { throw TestFailure("dup2: \(errno)") }
            close(fd)
        }
        first = base
        count = Int32(fds.count)
    }

    deinit { for fd in first..<(first + count) { close(fd) } }

    func environment(pid: pid_t = getpid(), names: String?) -> [String: String] {
        var environment = ["LISTEN_PID": "\(pid)", "LISTEN_FDS": "\(count)"]
        environment["LISTEN_FDNAMES"] = names
        return environment
    }

    func parse(_ environment: [String: String]) throws -> BatonAgent.Listeners {
        try BatonAgent.Listeners(environment: environment, pid: getpid(), firstDescriptor: first)
    }

    func closeOnExec(_ offset: Int32) -> Bool { fcntl(first + offset, F_GETFD) & FD_CLOEXEC != 0 }
}

@Suite("Listening sockets passed the systemd way")
struct ListenersTests {
    func tcp() throws -> BatonAgent.Listener { try BatonAgent.Listener.bind("tcp://127.0.0.1:0") }

    @Test func eachSocketComesWithItsNameAndAddressInOrderAndIsMadeCloseOnExec() throws {
        let directory = TemporaryDirectory("listeners")
        let first = try tcp(), second = try tcp()
        let unix = try BatonAgent.Listener.bind("unix:\(directory.file("admin.sock"))")
        let sockets = try PassedSockets([first.fd, second.fd, unix.fd])
        #expect(!sockets.closeOnExec(0))

        let listeners = try sockets.parse(sockets.environment(names: "http:http:admin"))

        #expect(listeners.all.map(\.fd) == [sockets.first, sockets.first + 1, sockets.first + 2])
        #expect(listeners.all.map(\.name) == ["http", "http", "admin"])
        #expect(listeners.all.map(\.address) == [first.address, second.address, .unix(path: directory.file("admin.sock"))])
        guard case .tcp("127.0.0.1", let port) = listeners.all[0].address else {
            Issue.record("not a TCP address: \(String(describing: listeners.all[0].address))")
            return
        }
        #expect(port > 0)
        #expect(listeners.named("http").map(\.fd) == [sockets.first, sockets.first + 1])
        #expect(listeners.named("admin").map(\.fd) == [sockets.first + 2])
        #expect(listeners.named("web").isEmpty)
        #expect((0..<3).allSatisfy { sockets.closeOnExec($0) })
    }

    @Test func variablesMeantForAnotherProcessAreIgnoredAndItsDescriptorsLeftAlone() throws {
        let sockets = try PassedSockets([try tcp().fd])
        // A parent's variables, inherited: sd_listen_fds ignores them when LISTEN_PID is not this process.
        let listeners = try sockets.parse(sockets.environment(pid: getppid(), names: "http"))
        #expect(listeners.all.isEmpty)
        #expect(!sockets.closeOnExec(0))
    }

    @Test func noVariablesMeanNoSockets() throws {
        let sockets = try PassedSockets([try tcp().fd])
        #expect(try sockets.parse([:]).all.isEmpty)
        #expect(try sockets.parse(["LISTEN_PID": "\(getpid())"]).all.isEmpty)
        #expect(!sockets.closeOnExec(0))
    }

    @Test func withoutNamesEverySocketIsUnknown() throws {
        let sockets = try PassedSockets([try tcp().fd, try tcp().fd])
        let listeners = try sockets.parse(sockets.environment(names: nil))
        #expect(listeners.all.map(\.name) == ["unknown", "unknown"])
    }

    @Test(arguments: ["http", "http:admin:more", ""])
    func namesThatDoNotMatchTheCountAreAnError(names: String) throws {
        let sockets = try PassedSockets([try tcp().fd, try tcp().fd])
        do {
            _ = try sockets.parse(sockets.environment(names: names))
            Issue.record("parsed \(names) for two descriptors")
        } catch let BatonAgentError.invalidEnvironment(name, reason) {
            #expect(name == "LISTEN_FDNAMES")
            #expect(reason.contains("for LISTEN_FDS=2"), "\(reason)")
        }
    }

    @Test(arguments: [("LISTEN_FDS", "two"), ("LISTEN_FDS", "0"), ("LISTEN_FDS", "-1"), ("LISTEN_PID", "me")])
    func malformedVariablesAreAnError(variable: String, value: String) throws {
        let sockets = try PassedSockets([try tcp().fd])
        var environment = sockets.environment(names: nil)
        environment[variable] = value
        do {
            _ = try sockets.parse(environment)
            Issue.record("parsed \(variable)=\(value)")
        } catch let BatonAgentError.invalidEnvironment(name, _) {
            #expect(name == variable)
        }
    }

    @Test func aDescriptorThatIsNotOpenIsAnError() throws {
        let sockets = try PassedSockets([try tcp().fd])
        // One more than was placed: the descriptor after the range is not open.
        var environment = sockets.environment(names: nil)
        environment["LISTEN_FDS"] = "2"
        #expect(throws: BatonAgentError.self) { try sockets.parse(environment) }
    }

    @Test func aDescriptorThatIsNotASocketHasNoAddress() throws {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        close(ends[1])
        let sockets = try PassedSockets([ends[0]])
        let listeners = try sockets.parse(sockets.environment(names: "fifo"))
        #expect(listeners.all.map(\.name) == ["fifo"])
        #expect(listeners.all[0].address == nil)
    }

    /// The process's own variables: read, then removed, as sd_listen_fds(unset=1) does, so
    /// that a child the agent starts does not take its parent's sockets for its own.
    @Test func takingThemFromTheEnvironmentRemovesTheVariables() throws {
        let sockets = try PassedSockets([try tcp().fd])
        setenv("LISTEN_PID", "\(getpid())", 1)
        setenv("LISTEN_FDS", "1", 1)
        setenv("LISTEN_FDNAMES", "http", 1)
        let listeners = try BatonAgent.Listeners.take(firstDescriptor: sockets.first)
        #expect(listeners.all.map(\.name) == ["http"])
        #expect(getenv("LISTEN_PID") == nil)
        #expect(getenv("LISTEN_FDS") == nil)
        #expect(getenv("LISTEN_FDNAMES") == nil)
    }

    @Test(arguments: [
        ("tcp://127.0.0.1:8080", BatonAgent.Listener.Address.tcp(host: "127.0.0.1", port: 8080)),
        ("tcp://[::1]:8080", .tcp(host: "::1", port: 8080)),
        ("tcp://0.0.0.0:0", .tcp(host: "0.0.0.0", port: 0)),
        ("unix:/run/web.sock", .unix(path: "/run/web.sock")),
    ])
    func addressesAreReadAndSpelledAsTheListenEntries(text: String, address: BatonAgent.Listener.Address) {
        #expect(BatonAgent.Listener.Address(text) == address)
        #expect(address.description == text)
    }

    @Test(arguments: ["tcp://::1:8080", "tcp://127.0.0.1", "tcp://127.0.0.1:65536", "tcp://:80", "unix:run/web.sock",
                      "http://127.0.0.1:80", "127.0.0.1:80"])
    func otherAddressesAreRefused(text: String) {
        #expect(BatonAgent.Listener.Address(text) == nil)
    }

    @Test func bindingItselfReadsBackThePortTheKernelChose() throws {
        let listener = try tcp()
        defer { close(listener.fd) }
        guard case .tcp("127.0.0.1", let port) = listener.address else {
            Issue.record("not a TCP address: \(String(describing: listener.address))")
            return
        }
        #expect(port > 0)
        #expect(listener.name == "tcp://127.0.0.1:0")
        #expect(fcntl(listener.fd, F_GETFD) & FD_CLOEXEC != 0)
    }
}
