import BatonTestSupport
import Foundation
import Glibc
import Testing

/// The agents' listening sockets (`listen`): batond binds each once, hands the very same
/// socket to every instance the systemd way, and keeps it through its own kill -9,
/// restart and self-upgrade. Checked from the processes' own view (their environment
/// and descriptors, written by a wrapper before it execs the test agent), not batond's.
@Suite("agent sockets", .serialized)
struct AgentSocketTests {
    /// Writes `releases/web/VERSION/bin/agent`: a Python wrapper that records, in
    /// `<state>/fds-<pid>.json`, its pid, its LISTEN_* variables and every descriptor it
    /// holds (with what each is), then execs baton-testagent with `switches`.
    func addRelease(_ agents: TestReleases, _ version: String, _ switches: [String] = []) throws {
        let bin = "\(agents.state.path)/releases/web/\(version)/bin"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        let argv = ([Products.path("baton-testagent"), "--events", agents.events] + switches).map { "'\($0)'" }.joined(separator: ", ")
        let script = """
            #!/usr/bin/env python3
            import json, os
            fds = {}
            for name in os.listdir("/proc/self/fd"):
                try:
                    fds[name] = os.readlink("/proc/self/fd/" + name)
                except OSError:
                    pass  # the directory listing's own descriptor, closed by now
            fds = {fd: what for fd, what in fds.items() if not what.startswith("/proc/")}
            record = {"pid": os.getpid(), "fds": fds,
                      "env": {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")}}
            with open("\(agents.state.path)/fds-%d.json" % os.getpid(), "w") as out:
                json.dump(record, out)
            os.execv("\(Products.path("baton-testagent"))", [\(argv)])
            """
        try script.write(toFile: "\(bin)/agent", atomically: true, encoding: .utf8)
        chmod("\(bin)/agent", 0o755)
    }

    struct Seen {
        let pid: Int32
        let fds: [String: String]
        let env: [String: String]
    }

    /// What the instance with `pid` recorded at its start.
    func seen(_ agents: TestReleases, pid: Int32) throws -> Seen {
        let path = "\(agents.state.path)/fds-\(pid).json"
        try waitUntil(timeout: 30) { FileManager.default.fileExists(atPath: path) }
        let object = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        return Seen(pid: Int32(object["pid"] as? Int ?? 0), fds: object["fds"] as? [String: String] ?? [:],
                    env: object["env"] as? [String: String] ?? [:])
    }

    func config(_ agents: TestReleases, listen: String) -> String {
        agents.config() + "\nlisten = \(listen)\n"
    }

    func view(_ daemon: BatondProcess) throws -> [String: Any] {
        try daemon.endpoint.get("/v1/agents/web", token: daemon.token).json()
    }

    func sockets(_ daemon: BatondProcess) throws -> [[String: Any]] {
        try view(daemon)["sockets"] as? [[String: Any]] ?? []
    }

    func workingPid(_ daemon: BatondProcess) throws -> Int32? {
        let instances = try daemon.instances()
        return instances.first { $0["state"] as? String == "working" }.flatMap { ($0["pid"] as? Int).map(Int32.init) }
    }

    func waitForWorking(_ daemon: BatondProcess, version: String) throws -> Int32 {
        var pid: Int32?
        try waitUntil(timeout: 30) {
            let view = try? self.view(daemon)
            guard (view?["running"] as? [String: Any])?["version"] as? String == version else { return false }
            pid = try? self.workingPid(daemon)
            return pid != nil
        }
        return pid!
    }

    /// `tcp://HOST:PORT` -> the port.
    func portOf(_ address: String) -> Int? {
        address.split(separator: ":").last.flatMap { Int($0) }
    }

    /// A TCP connection to the port completes: something holds a listening socket there
    /// (the kernel queues it even when nobody accepts).
    func connects(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }

    // MARK: - Passing

    @Test func everyInstanceGetsTheSameSocketsTheSystemdWayAndNothingElse() throws {
        let state = TemporaryDirectory("sockets")
        let agents = TestReleases(state: state)
        try addRelease(agents, "1.0")
        try addRelease(agents, "2.0")
        try agents.setCurrent("1.0")
        let path = state.file("web.sock")
        let daemon = try BatondProcess(state: state, configText: config(agents, listen: """
            ["tcp://127.0.0.1:0", { address = "unix:\(path)", name = "admin", mode = "0600", backlog = 128 }]
            """))
        let first = try seen(agents, pid: try waitForWorking(daemon, version: "1.0"))
        #expect(try daemon.handOff(to: "2.0")["outcome"] as? String == "committed")
        let second = try seen(agents, pid: try waitForWorking(daemon, version: "2.0"))

        for instance in [first, second] {
            #expect(instance.env["LISTEN_PID"] == "\(instance.pid)", "LISTEN_PID names the instance itself: \(instance.env)")
            #expect(instance.env["LISTEN_FDS"] == "2")
            #expect(instance.env["LISTEN_FDNAMES"] == "web:admin")
            #expect(Set(instance.fds.keys) == ["0", "1", "2", "3", "4"], "nothing else of batond's reaches the agent: \(instance.fds)")
            #expect(instance.fds["3"]?.hasPrefix("socket:") == true && instance.fds["4"]?.hasPrefix("socket:") == true)
        }
        #expect(first.fds["3"] == second.fds["3"] && first.fds["4"] == second.fds["4"], "the very same sockets: \(first.fds) \(second.fds)")

        let shown = try sockets(daemon)
        #expect(shown.map { $0["name"] as? String } == ["web", "admin"])
        #expect(shown.allSatisfy { $0["open"] as? Bool == true }, "\(shown)")
        #expect(shown.last?["address"] as? String == "unix:\(path)")
        let port = try #require(portOf(shown.first?["address"] as? String ?? ""))
        #expect(port != 0 && connects(port), "the kernel's port is shown and bound")
        var info = stat()
        #expect(lstat(path, &info) == 0 && info.st_mode & 0o777 == 0o600)
    }

    @Test func aBindThatFailsKeepsTheAgentFromStartingUntilTheAddressIsFree() throws {
        // The test holds the port; batond cannot bind it.
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, length) == 0 && listen(holder, 1) == 0 && getsockname(holder, $0, &length) == 0 }
        }
        let port = Int(UInt16(bigEndian: address.sin_port))
        let state = TemporaryDirectory("sockets")
        let agents = TestReleases(state: state)
        try addRelease(agents, "1.0")
        try agents.setCurrent("1.0")
        let daemon = try BatondProcess(state: state, configText: config(agents, listen: #"["tcp://127.0.0.1:\#(port)"]"#)
            .replacingOccurrences(of: "[agents.web]", with: "[agents.web]\nrestart_backoff = \"200ms\""))
        try waitUntil(timeout: 30) {
            (try? self.sockets(daemon).first?["error"] as? String)?.contains("Address already in use") == true
        }
        #expect(try daemon.instances().isEmpty, "no instance starts without its socket")
        #expect(!agents.log().contains { $0.event == "started" })
        let sample = #"baton_agent_socket_open{agent="web",name="web",address="tcp://127.0.0.1:\#(port)"}"#
        #expect(try daemon.endpoint.get("/metrics").text.contains(sample + " 0"))
        close(holder)
        let pid = try waitForWorking(daemon, version: "1.0")
        #expect(try seen(agents, pid: pid).env["LISTEN_FDS"] == "1")
        #expect(try sockets(daemon).first?["open"] as? Bool == true)
        #expect(try daemon.endpoint.get("/metrics").text.contains(sample + " 1"))
    }

    // MARK: - Across batond's own restarts

    @Test func afterKill9TheSocketStaysBoundAndTheNextBatondTakesItBackFromTheInstance() throws {
        let state = TemporaryDirectory("sockets")
        let agents = TestReleases(state: state)
        try addRelease(agents, "1.0")
        try addRelease(agents, "2.0")
        try agents.setCurrent("1.0")
        let text = config(agents, listen: #"["tcp://127.0.0.1:0"]"#)
        let first = try BatondProcess(state: state, configText: text, agentsOutlive: true)
        let before = try seen(agents, pid: try waitForWorking(first, version: "1.0"))
        let port = try #require(portOf(try sockets(first).first?["address"] as? String ?? ""))
        first.signal(SIGKILL)
        #expect(first.waitForExit() != nil)
        #expect(connects(port), "while batond is down the instance still holds the socket: no connection refused")

        let second = try BatondProcess(state: state, configText: text)
        defer { _ = second.stop() }
        #expect(try sockets(second).first?["address"] as? String == "tcp://127.0.0.1:\(port)", "the same port")
        #expect(second.log.contains("socket taken back from a live instance"), "\(second.log)")
        #expect(try second.handOff(to: "2.0")["outcome"] as? String == "committed")
        let after = try seen(agents, pid: try waitForWorking(second, version: "2.0"))
        #expect(after.fds["3"] == before.fds["3"], "the successor got the very socket the first batond bound")
    }

    @Test func aKeptUnixSocketGetsTheModeTheConfigSaysNow() throws {
        let state = TemporaryDirectory("sockets")
        let agents = TestReleases(state: state)
        try addRelease(agents, "1.0")
        try agents.setCurrent("1.0")
        let path = state.file("web.sock")
        func text(_ mode: String) -> String { config(agents, listen: #"[{ address = "unix:\#(path)", mode = "\#(mode)" }]"#) }
        let first = try BatondProcess(state: state, configText: text("0600"), agentsOutlive: true)
        let pid = try waitForWorking(first, version: "1.0")
        var info = stat()
        #expect(lstat(path, &info) == 0 && info.st_mode & 0o777 == 0o600)
        let inode = info.st_ino
        first.signal(SIGKILL)
        #expect(first.waitForExit() != nil)

        let second = try BatondProcess(state: state, configText: text("0660"))
        defer { _ = second.stop() }
        #expect(try waitForWorking(second, version: "1.0") == pid, "adopted, not restarted")
        #expect(second.log.contains("socket taken back from a live instance"), "\(second.log)")
        #expect(lstat(path, &info) == 0 && info.st_mode & 0o777 == 0o660 && info.st_ino == inode, "the same socket file, its mode as configured now")
    }

    /// systemd's file descriptor store, played by the test: batond hands each socket over
    /// (FDSTORE=1) as it binds it; with batond *and* its instance killed, only the store
    /// holds the socket, and the next batond, started with it the way systemd passes
    /// stored descriptors (LISTEN_FDS, LISTEN_FDNAMES), passes that same socket on.
    @Test func aSocketInSystemdsStoreOutlivesBatondAndItsInstances() throws {
        let state = TemporaryDirectory("sockets")
        let agents = TestReleases(state: state)
        try addRelease(agents, "1.0")
        try agents.setCurrent("1.0")
        let text = config(agents, listen: #"["tcp://127.0.0.1:0"]"#)
        let first = try BatondProcess(state: state, configText: text, agentsOutlive: true)
        let instance = try seen(agents, pid: try waitForWorking(first, version: "1.0"))
        let port = try #require(portOf(try sockets(first).first?["address"] as? String ?? ""))
        let stored = try #require(first.notify.storedDescriptors(timeout: 10).first { $0.name == "agent.web.0" })
        #expect("socket:[\(socketInode(stored.fd))]" == instance.fds["3"], "the store got the instance's very socket")
        first.signal(SIGKILL)
        #expect(first.waitForExit() != nil)
        kill(instance.pid, SIGKILL)
        try waitUntil(timeout: 10) { !ProcessProbe(instance.pid).isAlive }
        #expect(connects(port), "held by the store alone, the port stays bound")

        // As systemd starts the service again: the stored descriptor at 3, named.
        let launcher = state.file("as-systemd.py")
        try """
            import ctypes, os, sys
            libc = ctypes.CDLL(None, use_errno=True)
            pidfd = os.pidfd_open(int(sys.argv[1]))
            fd = libc.syscall(438, pidfd, int(sys.argv[2]), 0)  # pidfd_getfd
            if fd < 0: sys.exit("pidfd_getfd: %s" % os.strerror(ctypes.get_errno()))
            os.dup2(fd, 3)
            os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES=sys.argv[3], LISTEN_PID=str(os.getpid()))
            os.execv(sys.argv[4], sys.argv[4:])
            """.write(toFile: launcher, atomically: true, encoding: .utf8)
        let second = try BatondProcess(state: state, configText: text, wrapper: [which("python3") ?? "/usr/bin/python3", launcher, "\(getpid())", "\(stored.fd)", "agent.web.0"])
        defer { _ = second.stop() }
        let next = try seen(agents, pid: try waitForWorking(second, version: "1.0"))
        #expect(next.fds["3"] == instance.fds["3"], "the new instance got the stored socket, never bound again")
        #expect(!second.log.contains("listening socket bound"), "\(second.log)")
        #expect(!second.notify.messages.contains { $0.contains("FDSTORE") }, "kept as it is: \(second.notify.messages)")
        #expect(second.stop() == 0)

        // The address changed while the socket was kept: the kept one is dropped from the
        // store (it would hold the old port forever) and the new one kept in its place.
        let newPort = try freePort()
        let moved = text.replacingOccurrences(of: "tcp://127.0.0.1:0", with: "tcp://127.0.0.1:\(newPort)")
        let third = try BatondProcess(state: state, configText: moved, wrapper: [which("python3") ?? "/usr/bin/python3", launcher,
                                                                             "\(getpid())", "\(stored.fd)", "agent.web.0"])
        defer { _ = third.stop() }
        _ = try waitForWorking(third, version: "1.0")
        let removal = third.notify.messages.firstIndex { $0.contains("FDSTOREREMOVE=1") && $0.contains("FDNAME=agent.web.0") }
        let kept = try #require(third.notify.storedDescriptors(timeout: 10).last { $0.name == "agent.web.0" })
        #expect(removal != nil, "\(third.notify.messages)")
        #expect(boundPort(kept.fd) == newPort, "the new socket is kept under the name")
    }

    @Test func theSocketsCrossASelfUpgrade() throws {
        let state = TemporaryDirectory("sockets")
        _ = try SelfUpgradeTests.installSelf(state)
        let agents = TestReleases(state: state)
        try addRelease(agents, "1.0")
        try addRelease(agents, "2.0")
        try agents.setCurrent("1.0")
        let daemon = try BatondProcess(state: state, configText: config(agents, listen: #"["tcp://127.0.0.1:0"]"#),
                                       executable: state.file("daemon/current/batond"))
        defer { _ = daemon.stop() }
        let before = try seen(agents, pid: try waitForWorking(daemon, version: "1.0"))
        let address = try sockets(daemon).first?["address"] as? String
        var copy = try Array(Data(contentsOf: URL(fileURLWithPath: Products.path("batond"))))
        copy += Array("\nbaton socket test \(UUID())\n".utf8)
        let digest = try SelfUpgradeTests.sha256(copy)
        #expect(try SelfUpgradeTests.put(copy, digest: digest, to: daemon.unix, token: daemon.token).status == 201)
        let accepted = try daemon.endpoint.json("POST", "/v1/daemon/upgrade", token: daemon.token, #"{"digest":"\#(digest)"}"#)
        #expect(accepted.status == 202, "\(accepted.text)")
        _ = try daemon.notify.wait(for: "RELOADING=1", timeout: 30)
        _ = try daemon.notify.wait(for: "READY=1", timeout: 60)
        #expect(try daemon.endpoint.get("/v1/daemon", token: daemon.token).json()["sha256"] as? String == digest)
        #expect(try sockets(daemon).first?["address"] as? String == address)
        #expect(!daemon.log.contains("socket taken back from a live instance"), "it crossed the exec: \(daemon.log)")
        #expect(try daemon.handOff(to: "2.0")["outcome"] as? String == "committed")
        let after = try seen(agents, pid: try waitForWorking(daemon, version: "2.0"))
        #expect(after.fds["3"] == before.fds["3"], "the new image passes the socket the old one bound")
    }

    func socketInode(_ fd: Int32) -> UInt64 {
        var info = stat()
        return fstat(fd, &info) == 0 ? UInt64(info.st_ino) : 0
    }

    func boundPort(_ fd: Int32) -> Int? {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return ok == 0 ? Int(UInt16(bigEndian: address.sin_port)) : nil
    }
}
