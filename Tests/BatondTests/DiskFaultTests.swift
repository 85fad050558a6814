import BatonTestSupport
import Foundation
import Glibc
import Testing

/// A failing disk under a real batond (Tests/Faults/faultfs.c, through LD_PRELOAD): EIO
/// and ENOSPC on write, fsync and rename, on the ledger and on the release store. batond
/// answers with the one error shape, keeps serving reads and probes (`/readyz` says why),
/// changes nothing it did not record, and resumes by itself once the disk recovers.
/// A real full disk (a small tmpfs) is FullDiskTests.
@Suite("a failing disk", .serialized)
struct DiskFaultTests {
    struct LedgerCase: Sendable, CustomTestStringConvertible {
        var faults: [(DiskFaults.Call, Int32)]
        /// Faults in force after the first refusal, before the disk recovers (the probe
        /// write meets them): none keeps the first ones.
        var then: [(DiskFaults.Call, Int32)] = []
        var testDescription: String {
            let first = faults.map { "\($0.0) fails with \(String(cString: strerror($0.1)))" }.joined(separator: ", ")
            return then.isEmpty ? first : first + ", then " + then.map { "\($0.0) with \(String(cString: strerror($0.1)))" }.joined(separator: ", ")
        }
    }

    /// batond with `web` working at 1.0 (2.0 and 3.0 stored beside it), under the fault shim.
    func start(_ faults: DiskFaults, state: TemporaryDirectory) throws -> (BatondProcess, TestReleases) {
        let web = TestReleases(state: state)
        try web.add("1.0")
        try web.add("2.0")
        try web.add("3.0")
        try web.setCurrent("1.0")
        let daemon = try BatondProcess(state: state, configText: web.config(), environment: try faults.environment())
        try waitUntil(timeout: 30) { running(daemon) == "1.0" }
        return (daemon, web)
    }

    func running(_ daemon: BatondProcess) -> String? {
        let view = try? daemon.endpoint.get("/v1/agents/web", token: daemon.token).json()
        return (view?["running"] as? [String: Any])?["version"] as? String
    }


    /// What is being served while the disk fails: probes, reads, and the refusal of changes.
    func expectDegraded(_ daemon: BatondProcess, because reason: String) throws {
        #expect(try daemon.endpoint.get("/healthz").status == 200)
        let ready = try daemon.endpoint.get("/readyz")
        #expect(ready.status == 503 && ready.errorCode == "not_ready", "\(ready.text)")
        #expect(ready.text.contains("ledger cannot write") && ready.text.contains(reason), "\(ready.text)")
        #expect(try daemon.endpoint.get("/v1/status", token: daemon.token).status == 200)
        #expect(try daemon.endpoint.get("/v1/releases/web", token: daemon.token).status == 200)
        #expect(running(daemon) == "1.0")
    }

    @Test(.enabled(if: DiskFaults.isAvailable, "needs a C compiler for the fault shim"), .timeLimit(.minutes(2)),
          arguments: [
              LedgerCase(faults: [(.write, EIO)]),
              LedgerCase(faults: [(.sync, EIO)]),
              LedgerCase(faults: [(.sync, ENOSPC)]),
              LedgerCase(faults: [(.write, ENOSPC)], then: [(.rename, EIO)]),
          ])
    func aLedgerThatCannotWriteChangesNothingAndRecoversByItself(_ example: LedgerCase) throws {
        let state = TemporaryDirectory("disk-faults")
        let faults = DiskFaults(directory: state)
        let (daemon, web) = try start(faults, state: state)
        let ledger = daemon.state.file("ledger")
        try faults.set(example.faults.map { DiskFaults.Fault($0.0, $0.1, ledger) })

        // A change whose records meet the failing disk is not acknowledged while they are
        // not durable: its answer waits for the disk (or ends in 503 timeout at 60 s).
        let held = Locked<HTTPResponse?>(nil)
        let answered = DispatchSemaphore(value: 0)
        Thread { [endpoint = daemon.endpoint, token = daemon.token] in
            held.set(try? endpoint.request("PUT", "/v1/agents/web/desired", token: token, headers: ["Content-Type": "application/json"],
                                           body: Array(#"{"version":"2.0"}"#.utf8), timeout: 90))
            answered.signal()
        }.start()
        try waitUntil(timeout: 30) { (try? daemon.endpoint.get("/readyz").status) == 503 }
        #expect(faults.hits.contains { $0.hasPrefix(example.faults[0].0.rawValue + " ") }, "\(faults.hits)")
        let reason = String(cString: strerror(example.faults[0].1))
        try expectDegraded(daemon, because: reason)

        // A change asked for while the ledger is known to fail is refused at once, in the one
        // error shape, and leaves no record.
        let refused = try daemon.endpoint.json("PUT", "/v1/agents/web/desired", token: daemon.token, #"{"version":"3.0"}"#)
        #expect(refused.status == 503 && refused.errorCode == "ledger_unavailable", "\(refused.text)")

        // The probe write meets the later faults: still refused, still serving.
        if !example.then.isEmpty {
            let before = faults.hits.count
            try faults.set(example.then.map { DiskFaults.Fault($0.0, $0.1, ledger) })
            try waitUntil(timeout: 30) { faults.hits.dropFirst(before).contains { $0.hasPrefix(example.then[0].0.rawValue + " ") } }
            #expect(try daemon.endpoint.json("POST", "/v1/agents/web/rollback", token: daemon.token, "{}").status >= 400)
            try expectDegraded(daemon, because: reason)
        }
        // A probe write was tried and failed (2 s after the failure): the held answer is still held.
        try waitUntil(timeout: 30) { (daemon.metric("baton_ledger_recovery_attempts_total") ?? 0) >= 1 }
        #expect(held.get() == nil, "acknowledged before its records were durable: \(held.get()?.text ?? "")")
        #expect(!web.log().contains { ["2.0", "3.0"].contains($0.version) }, "an instance started without its record: \(web.log())")
        #expect(!web.log().contains { $0.version == "1.0" && $0.event == "stop-received" }, "\(web.log())")

        // The disk recovers: batond writes again by itself, acknowledges the held change, and
        // its handoff runs.
        try faults.clear()
        #expect(answered.wait(timeout: .now() + 30) == .success)
        #expect(held.get()?.status == 202, "\(held.get()?.text ?? "no answer")")
        try waitUntil(timeout: 30) { (try? daemon.endpoint.get("/readyz").status) == 200 }
        try waitUntil(timeout: 30) { running(daemon) == "2.0" && web.current == "2.0" }
        #expect(overlaps(web.log()).isEmpty, "\(web.log())")
        #expect(!web.log().contains { $0.version == "3.0" }, "\(web.log())")
        // The ledger: the acknowledged change once, the refused one not at all.
        let desired = try ReleasePushTests.records(daemon, kind: "agent.desired").compactMap { $0["version"] as? String }
        #expect(desired.filter { $0 == "2.0" }.count == 1 && !desired.contains("3.0"), "\(desired)")
        #expect(daemon.stop() == 0)
    }

    struct StoreCase: Sendable, CustomTestStringConvertible {
        var call: DiskFaults.Call
        var errno: Int32
        var status: Int
        var code: String
        /// What the message says of the cause.
        var says: String
        var testDescription: String { "\(call) fails with \(String(cString: strerror(errno)))" }
    }

    @Test(.enabled(if: DiskFaults.isAvailable, "needs a C compiler for the fault shim"), .timeLimit(.minutes(2)),
          arguments: [
              StoreCase(call: .write, errno: EIO, status: 503, code: "store_failed", says: "Input/output error"),
              StoreCase(call: .sync, errno: EIO, status: 503, code: "store_failed", says: "Input/output error"),
              StoreCase(call: .rename, errno: EIO, status: 503, code: "store_failed", says: "Input/output error"),
              StoreCase(call: .write, errno: ENOSPC, status: 507, code: "insufficient_storage", says: "the disk is full"),
              StoreCase(call: .sync, errno: ENOSPC, status: 507, code: "insufficient_storage", says: "the disk is full"),
          ])
    func aReleaseStoreThatCannotWriteKeepsNothingAndRecovers(_ example: StoreCase) throws {
        let state = TemporaryDirectory("disk-faults")
        let faults = DiskFaults(directory: state)
        let (daemon, web) = try start(faults, state: state)
        let directory = daemon.state.file("releases/web")
        let before = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        try faults.set([DiskFaults.Fault(example.call, example.errno, directory + "/")])

        func push() throws -> HTTPResponse { try ReleasePushTests.push(daemon, "2.1", ReleasePushTests.script) }
        let refused = try push()
        #expect(refused.status == example.status && refused.errorCode == example.code, "\(refused.text)")
        #expect(refused.text.contains(example.says) && refused.text.contains("nothing was kept"), "\(refused.text)")
        #expect(faults.hits.contains { $0.hasPrefix(example.call.rawValue + " ") }, "\(faults.hits)")
        // Nothing half-stored is left, nothing recorded, and everything else is served.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).sorted() == before)
        #expect(try ReleasePushTests.records(daemon, kind: "release.stored").isEmpty)
        let listed = try daemon.endpoint.get("/v1/releases/web", token: daemon.token)
        #expect(listed.status == 200)
        // By version: the text has timestamps, which may well contain "2.1".
        let versions = (try listed.json()["releases"] as? [[String: Any]] ?? []).map { $0["version"] as? String }
        #expect(!versions.contains("2.1"), "\(listed.text)")
        #expect(try daemon.endpoint.get("/readyz").status == 200)
        #expect(running(daemon) == "1.0" && web.current == "1.0")

        try faults.clear()
        #expect(try push().status == 201)
        #expect(try ReleasePushTests.records(daemon, kind: "release.stored").count == 1)
        #expect(daemon.stop() == 0)
    }

    @Test(.enabled(if: DiskFaults.isAvailable, "needs a C compiler for the fault shim"), .timeLimit(.minutes(2)),
          arguments: [
              StoreCase(call: .write, errno: EIO, status: 503, code: "store_failed", says: "Input/output error"),
              StoreCase(call: .rename, errno: EIO, status: 503, code: "store_failed", says: "Input/output error"),
              StoreCase(call: .sync, errno: ENOSPC, status: 507, code: "insufficient_storage", says: "No space left on device"),
          ])
    func aBatondBinaryThatCannotBeStoredIsRefusedInTheOneShape(_ example: StoreCase) throws {
        let state = TemporaryDirectory("disk-faults")
        let faults = DiskFaults(directory: state)
        let (daemon, _) = try start(faults, state: state)
        try faults.set([DiskFaults.Fault(example.call, example.errno, daemon.state.file("daemon/"))])
        let binary = try [UInt8](Data(contentsOf: URL(fileURLWithPath: Products.path("batond"))))
        let digest = ReleasePushTests.sha256(binary)
        let refused = try SelfUpgradeTests.put(binary, digest: digest, to: daemon.endpoint, token: daemon.token)
        #expect(refused.status == example.status && refused.errorCode == example.code, "\(refused.text)")
        #expect(refused.text.contains(example.says) && refused.text.contains("nothing was kept"), "\(refused.text)")
        try faults.clear()
        #expect(try SelfUpgradeTests.put(binary, digest: digest, to: daemon.endpoint, token: daemon.token).status == 201)
        #expect(daemon.stop() == 0)
    }

    @Test(.enabled(if: DiskFaults.isAvailable, "needs a C compiler for the fault shim"), .timeLimit(.minutes(2)))
    func aCurrentLinkThatCannotBeRenamedCatchesUpWithTheLedgerByItself() throws {
        let state = TemporaryDirectory("disk-faults")
        let faults = DiskFaults(directory: state)
        let (daemon, web) = try start(faults, state: state)
        let link = daemon.state.file("releases/web/")
        try faults.set([DiskFaults.Fault(.rename, EIO, link), DiskFaults.Fault(.symlink, EIO, link)])

        // The handoff commits (the ledger writes); only the link cannot follow yet.
        #expect(try daemon.endpoint.json("PUT", "/v1/agents/web/desired", token: daemon.token, #"{"version":"2.0"}"#).status == 202)
        try waitUntil(timeout: 30) { running(daemon) == "2.0" }
        try waitUntil(timeout: 30) { !faults.hits.isEmpty }
        #expect(web.current == "1.0")
        #expect(overlaps(web.log()).isEmpty, "\(web.log())")

        // The disk recovers: `current` follows the ledger without a restart.
        let tries = faults.hits.count
        try waitUntil(timeout: 30) { faults.hits.count > tries }
        try faults.clear()
        try waitUntil(timeout: 30) { web.current == "2.0" }
        #expect(daemon.stop() == 0)
    }
}
