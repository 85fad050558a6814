import BatonCore
@testable import BatonLedger
import BatonTestSupport
import Foundation
import Glibc
import Logging
import Synchronization
import Testing

/// A failed write or fdatasync: records are refused (never acknowledged), and the
/// ledger writes again by itself once a probe write succeeds, without a restart.
@Suite("ledger faults")
struct LedgerFaultTests {
    let logger = Logger(label: "ledger-fault-test")

    /// System calls that fail with `errno` while a fault is set, after writing
    /// `partialBytes` of the first failing write (a short write before ENOSPC).
    final class Faults: Sendable {
        enum Call: String, Sendable { case write, sync }
        struct Fault { var call: Call; var errno: Int32; var partialBytes: Int }

        let fault = Mutex<Fault?>(nil)
        /// Signalled at every failure injected.
        let injected = DispatchSemaphore(value: 0)

        var io: FileIO {
            FileIO(
                write: { [self] fd, bytes in
                    guard let fault = fault.withLock({ $0 }), fault.call == .write else { return FileIO.system.write(fd, bytes) }
                    if fault.partialBytes > 0, bytes.count > fault.partialBytes {
                        self.fault.withLock { $0?.partialBytes = 0 }
                        return FileIO.system.write(fd, UnsafeRawBufferPointer(rebasing: bytes[..<fault.partialBytes]))
                    }
                    errno = fault.errno
                    injected.signal()
                    return -1
                },
                sync: { [self] fd in
                    guard let fault = fault.withLock({ $0 }), fault.call == .sync else { return FileIO.system.sync(fd) }
                    errno = fault.errno
                    injected.signal()
                    return -1
                })
        }
    }

    func event(_ index: Int) -> LedgerEvent {
        .agentDesired(.init(agent: "web", version: "1.\(index)", mode: .parallel, by: "test"))
    }

    func append(_ ledger: Ledger, _ events: [LedgerEvent]) -> Result<[Record], LedgerError> {
        let done = DispatchSemaphore(value: 0)
        let result = Locked<Result<[Record], LedgerError>?>(nil)
        ledger.append(events) { result.set($0); done.signal() }
        done.wait()
        return result.get()!
    }

    struct Case: Sendable, CustomTestStringConvertible {
        var call: Faults.Call
        var errno: Int32
        var partialBytes = 0
        var testDescription: String { "\(call) fails with \(String(cString: strerror(errno)))\(partialBytes > 0 ? " after a short write" : "")" }
    }

    @Test(arguments: [
        Case(call: .write, errno: ENOSPC),
        Case(call: .write, errno: ENOSPC, partialBytes: 40),
        Case(call: .write, errno: EIO),
        Case(call: .sync, errno: EIO),
        Case(call: .sync, errno: ENOSPC),
    ])
    func aFailedWriteRefusesRecordsUntilAProbeWriteSucceeds(_ example: Case) throws {
        let state = TemporaryDirectory("ledger-faults")
        let faults = Faults()
        var options = Ledger.Options()
        options.io = faults.io
        options.retryInterval = .milliseconds(20)
        let ledger = try Ledger(stateDirectory: state.path, options: options, logger: logger)
        let recovered = DispatchSemaphore(value: 0)
        ledger.observeRecovery { recovered.signal() }
        for index in 0..<3 { _ = try append(ledger, [event(index)]).get() }

        faults.fault.withLock { $0 = .init(call: example.call, errno: example.errno, partialBytes: example.partialBytes) }
        guard case .failure(.failed) = append(ledger, [event(3), event(4)]) else {
            Issue.record("a failed \(example.call) was acknowledged")
            return
        }
        #expect(!ledger.isWritable)
        #expect(ledger.health.failure != nil)
        #expect(ledger.health.since != nil)
        guard case .failure = append(ledger, [event(5)]) else {
            Issue.record("a record was accepted after a failed \(example.call)")
            return
        }
        // The fault holds: the probe writes fail too, and the ledger stays failed.
        #expect(faults.injected.wait(timeout: .now() + 10) == .success)
        #expect(faults.injected.wait(timeout: .now() + 10) == .success)
        #expect(!ledger.isWritable)
        #expect(ledger.metrics.failures == 1)

        faults.fault.withLock { $0 = nil }
        #expect(recovered.wait(timeout: .now() + 10) == .success, "the ledger did not recover by itself")
        #expect(ledger.isWritable)
        #expect(ledger.health.failure == nil)
        #expect(ledger.metrics.recoveries == 1)
        #expect(ledger.metrics.recoveryAttempts >= 2)
        // Numbering goes on from the last acknowledged record.
        #expect(try append(ledger, [event(6)]).get().map(\.seq) == [4])
        ledger.close()

        // What a restart reads back: every acknowledged record, none of the refused ones.
        let reopened = try Ledger(stateDirectory: state.path, logger: logger)
        defer { reopened.close() }
        #expect(reopened.lastSeq == 4)
        #expect(reopened.state.agents["web"]?.desired?.version == "1.6")
        #expect(try FileManager.default.contentsOfDirectory(atPath: state.file("ledger")).filter { $0.contains(".cut-") }.isEmpty,
                "the probe replaced the journal the failed write may have torn: nothing to cut")
    }
}
