import BatonCore
@testable import BatonSupervisor
import BatonTestSupport
import Foundation
import Glibc
import Testing

/// The registration rule, over a made-up process table: who may register which pid.
@Suite("registration ownership rule")
struct OwnershipRuleTests {
    struct Process {
        var parent: Int32
        var session: Int32
        var uid: UInt32
        var effective: UInt32? = nil
    }

    /// 1 -> 100 (batond's parent) -> 200 (batond); 1 -> 300 (a shell, uid 1000) -> 301
    /// (its agent) -> 302 (the agent's child); 303 (a child of 300 that called setsid);
    /// 304 (a setuid-root child of 300); 305 (another child of 300); 400 (another user's process).
    static let table: [Int32: Process] = [
        1: Process(parent: 0, session: 1, uid: 0),
        100: Process(parent: 1, session: 100, uid: 0),
        200: Process(parent: 100, session: 100, uid: 0),
        300: Process(parent: 1, session: 300, uid: 1000),
        301: Process(parent: 300, session: 300, uid: 1000),
        302: Process(parent: 301, session: 300, uid: 1000),
        303: Process(parent: 300, session: 303, uid: 1000),
        304: Process(parent: 300, session: 300, uid: 1000, effective: 0),
        305: Process(parent: 300, session: 300, uid: 1000),
        400: Process(parent: 1, session: 400, uid: 1001),
    ]

    static let facts = ProcessFacts(
        parent: { table[$0]?.parent },
        session: { table[$0]?.session },
        uids: { pid in table[pid].map { ($0.uid, $0.effective ?? $0.uid) } })

    struct Case: Sendable, CustomTestStringConvertible {
        var pid: Int32
        var caller: RegistrationCaller
        var tcpUIDs: Set<UInt32> = []
        /// nil: accepted; "refused" or "missing".
        var expected: String?
        var testDescription: String { "pid \(pid) by \(caller), tcp uids \(tcpUIDs.sorted()) -> \(expected ?? "accepted")" }
    }

    static let cases: [Case] = [
        Case(pid: 301, caller: .unix(pid: 301, uid: 1000), expected: nil),
        Case(pid: 302, caller: .unix(pid: 300, uid: 1000), expected: nil),
        Case(pid: 302, caller: .unix(pid: 301, uid: 1000), expected: nil),
        Case(pid: 304, caller: .unix(pid: 300, uid: 0), expected: nil),
        Case(pid: 1, caller: .unix(pid: 1, uid: 0), expected: "refused"),
        Case(pid: 0, caller: .unix(pid: 300, uid: 0), expected: "refused"),
        Case(pid: -300, caller: .unix(pid: 300, uid: 1000), expected: "refused"),
        Case(pid: 200, caller: .unix(pid: 200, uid: 0), expected: "refused"),
        Case(pid: 100, caller: .unix(pid: 100, uid: 0), expected: "refused"),
        Case(pid: 999, caller: .unix(pid: 300, uid: 1000), expected: "missing"),
        Case(pid: 300, caller: .unix(pid: 302, uid: 1000), expected: nil),
        Case(pid: 301, caller: .unix(pid: 302, uid: 1000), expected: nil),
        Case(pid: 305, caller: .unix(pid: 301, uid: 1000), expected: "refused"),
        Case(pid: 301, caller: .unix(pid: 303, uid: 1000), expected: "refused"),
        Case(pid: 303, caller: .unix(pid: 300, uid: 1000), expected: "refused"),
        Case(pid: 304, caller: .unix(pid: 300, uid: 1000), expected: "refused"),
        Case(pid: 400, caller: .unix(pid: 300, uid: 1000), expected: "refused"),
        Case(pid: 400, caller: .unix(pid: 300, uid: 0), expected: "refused"),
        Case(pid: 301, caller: .unverified, expected: "refused"),
        Case(pid: 301, caller: .unverified, tcpUIDs: [1000], expected: nil),
        Case(pid: 304, caller: .unverified, tcpUIDs: [1000], expected: "refused"),
        Case(pid: 400, caller: .unverified, tcpUIDs: [1000], expected: "refused"),
        Case(pid: 200, caller: .unverified, tcpUIDs: [0], expected: "refused"),
    ]

    @Test(arguments: cases)
    func theRule(_ example: Case) {
        let refusal = OwnershipRule.refusal(pid: example.pid, caller: example.caller, daemon: 200,
                                            tcpUIDs: example.tcpUIDs, facts: Self.facts)
        switch (example.expected, refusal) {
        case (nil, nil), ("refused", .registrationRefused?), ("missing", .noSuchProcess?):
            break
        default:
            Issue.record("expected \(example.expected ?? "accepted"), got \(refusal.map { "\($0)" } ?? "accepted")")
        }
    }
}

/// Signals reach only the process batond knew: never one that took its pid afterwards.
@Suite("process handles", .serialized)
struct ProcessHandleTests {
    static let canSteerPids = getuid() == 0 && access("/proc/sys/kernel/ns_last_pid", W_OK) == 0

    /// A `sleep` child with default signal dispositions (the test runner may ignore
    /// SIGTERM, and children inherit that through exec).
    func sleeper() throws -> Int32 {
        let state = TemporaryDirectory("sleeper")
        return try Processes.spawn(argv: ["/bin/sleep", "300"], environment: [:], log: InstanceLog(path: state.file("log"), capBytes: 1 << 20),
                                   directory: nil, credentials: nil).release().pid
    }

    /// How a child ended, reaping it.
    func end(_ pid: Int32, with signal: Int32) -> Int32 {
        kill(pid, signal)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return status & 0x7f
    }

    /// Starts a process that gets `pid`, by telling the kernel which pid to hand out next.
    func sleeper(reusing pid: Int32) throws -> Int32? {
        for _ in 0..<50 {
            try "\(pid - 1)".write(toFile: "/proc/sys/kernel/ns_last_pid", atomically: false, encoding: .utf8)
            let candidate = try sleeper()
            if candidate == pid { return candidate }
            _ = end(candidate, with: SIGKILL)
        }
        return nil
    }

    @Test(.enabled(if: canSteerPids, "needs root to write /proc/sys/kernel/ns_last_pid"))
    func aRegisteredProcessIsSignalledThroughItsPidfdOnly() throws {
        let pid = try sleeper()
        let handle = try #require(ProcessHandle.foreign(pid: pid))
        #expect(end(pid, with: SIGTERM) == SIGTERM)

        let reused = try #require(try sleeper(reusing: pid), "the kernel did not hand out pid \(pid) again")
        handle.send(SIGKILL)
        // Had the SIGKILL reached it, it would die of it whatever comes next.
        #expect(end(reused, with: SIGTERM) == SIGTERM, "the process that reused pid \(pid) got batond's SIGKILL")
    }

    @Test func aChildStaysAZombieUntilItsRunnerReapsIt() throws {
        let state = TemporaryDirectory("handles")
        let child = try Processes.spawn(argv: ["/bin/sh", "-c", "exit 3"], environment: [:], log: InstanceLog(path: state.file("child.log"), capBytes: 1 << 20),
                                        directory: nil, credentials: nil).release()
        let exited = DispatchSemaphore(value: 0)
        let status = Locked<BatonSupervisor.ExitStatus?>(nil)
        child.watch { status.set($0); exited.signal() }
        #expect(exited.wait(timeout: .now() + 30) == .success)
        #expect(status.get() == .exited(3))
        // Exited, not reaped: its pid (and the group it leads) cannot be handed out again,
        // so a signal sent now cannot reach anyone else.
        let stat = try String(contentsOfFile: "/proc/\(child.pid)/stat", encoding: .utf8)
        #expect(stat.split(separator: ")").last?.trimmingCharacters(in: .whitespaces).first == "Z", "\(stat)")
        child.reap()
        #expect(kill(child.pid, 0) != 0 && errno == ESRCH)
    }

    /// Re-adoption: a process is adopted only when it is still the one the ledger recorded,
    /// pid and start time; a stranger that took the pid since is not.
    @Test(.enabled(if: canSteerPids, "needs root to write /proc/sys/kernel/ns_last_pid"))
    func aReusedPidIsNeverAdopted() throws {
        // Another test's process may take the freed pid first (tests run in parallel):
        // then the scenario starts again with a new pid.
        for _ in 0..<5 {
            let pid = try sleeper()
            let recordedStart = try #require(ProcessHandle.foreign(pid: pid)).startTime
            #expect(ProcessHandle.adopted(pid: pid, startTime: recordedStart, leadsGroup: true) != nil, "the recorded process itself")
            #expect(ProcessHandle.adopted(pid: pid, startTime: recordedStart + 1, leadsGroup: true) == nil, "another start time")
            _ = end(pid, with: SIGKILL)
            // Start times count clock ticks (10 ms): a stranger started within the same tick
            // would look the same. A real reuse comes after a whole turn of the pid space;
            // here, let one tick pass (no event marks it).
            usleep(30_000)

            guard let stranger = try sleeper(reusing: pid) else { continue }
            #expect(ProcessHandle.adopted(pid: stranger, startTime: recordedStart, leadsGroup: true) == nil,
                    "the process that reused pid \(pid) was adopted")
            _ = end(stranger, with: SIGKILL)
            return
        }
        Issue.record("the kernel did not hand out a freed pid again in 5 tries")
    }

    /// No effect without a record: a spawned child runs nothing of the agent until batond
    /// lets it (once its record is durable); given up, or orphaned by batond's death, it
    /// ends without running anything.
    @Test func aHeldChildRunsNothingUntilReleased() throws {
        let state = TemporaryDirectory("held")
        let marker = state.file("ran")
        func held() throws -> HeldProcess {
            try Processes.spawn(argv: ["/bin/sh", "-c", "touch '\(marker)'"], environment: [:],
                                log: InstanceLog(path: state.file("log"), capBytes: 1 << 20), directory: nil, credentials: nil)
        }
        var abandoned: HeldProcess? = try held()
        let pid = try #require(abandoned?.pid)
        // Forked, not exec'd: still this test's image, not /bin/sh.
        let image = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")
        #expect(image != "/bin/sh" && image != "/usr/bin/sh" && !image.hasSuffix("dash"), "\(image)")
        #expect(abandoned?.startTime == ProcessHandle.foreign(pid: pid)?.startTime)
        abandoned = nil  // given up: reaped, never ran
        #expect(kill(pid, 0) != 0 && errno == ESRCH)
        #expect(access(marker, F_OK) != 0, "a child given up ran the agent's command")

        let child = try held().release()
        let exited = DispatchSemaphore(value: 0)
        child.watch { _ in exited.signal() }
        #expect(exited.wait(timeout: .now() + 30) == .success)
        child.reap()
        #expect(access(marker, F_OK) == 0, "a released child runs")
    }
}
