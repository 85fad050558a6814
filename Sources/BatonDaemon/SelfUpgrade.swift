import BatonAPI
import BatonCore
import BatonHTTP
import BatonLedger
import BatonSupervisor
import Foundation
import Glibc
import Logging
import ServiceLifecycle
import Synchronization

/// The binary this process runs: its version and the SHA-256 of its bytes, taken once
/// at start. A binary run from the store (`daemon/<digest>/batond`, as the service
/// manager runs it through `daemon/current`) is named by its digest already.
struct RunningBinary: Sendable {
    let path: String
    let digest: String
    let version: String

    static func identify(store: DaemonBinaries) throws(DaemonBinaries.StoreError) -> RunningBinary {
        let path = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "/proc/self/exe"
        let parts = path.split(separator: "/")
        if path.hasPrefix(store.root + "/"), parts.count >= 2, parts.last.map(String.init) == DaemonBinaries.binaryName,
           case let name = String(parts[parts.count - 2]), DaemonBinaries.isDigest(name), store.binary(digest: name) == path {
            return RunningBinary(path: path, digest: name, version: BatonVersion.current)
        }
        return RunningBinary(path: path, digest: try DaemonBinaries.digest(ofFile: "/proc/self/exe"), version: BatonVersion.current)
    }
}

/// batond upgrading itself in place. `POST /v1/daemon/upgrade` hands a job to `run`,
/// which runs the new binary's `--self-check`, records `daemon.upgrade_began`, answers
/// 202 and re-executes: same pid, so the agents stay its children and are never
/// signalled, stopped or reaped on the way; the listening sockets cross the exec.
///
/// The new image boots the way a restart does, and `settle` then confirms
/// (`daemon.upgraded`, `daemon/current` flipped), or, in a batond that is not that new
/// image (the service manager restarted the previous binary through `current`), records
/// the attempt failed. One attempt at a time; nothing is ever retried by itself.
final class SelfUpgrader: DaemonControl {
    /// Set for the new image only: the digest it was exec'd as.
    static let markerVariable = "BATON_UPGRADING"
    static let checkTimeout: Duration = .seconds(30)

    struct Job: Sendable {
        let binary: String
        let digest: String
        let by: String
        let answer: @Sendable (Response) -> Void
    }

    /// Hands the listeners over and execs `binary`; returns only when the exec failed,
    /// with the reason, after serving again.
    typealias Reexec = @Sendable (_ binary: String, _ digest: String) -> String

    let ledger: Ledger
    let binaries: DaemonBinaries
    let running: RunningBinary
    let startedAt: Timestamp
    let arguments: [String]
    let logger: Logger
    private let busy = Atomic<Bool>(false)
    private let jobs: AsyncStream<Job>
    private let submit: AsyncStream<Job>.Continuation
    private let reexec = Mutex<Reexec?>(nil)

    init(ledger: Ledger, binaries: DaemonBinaries, running: RunningBinary, startedAt: Timestamp,
         arguments: [String], logger: Logger) {
        self.ledger = ledger
        self.binaries = binaries
        self.running = running
        self.startedAt = startedAt
        self.arguments = arguments
        self.logger = logger
        (jobs, submit) = AsyncStream.makeStream(of: Job.self)
    }

    /// Installed once batond serves.
    func install(_ reexec: @escaping Reexec) { self.reexec.withLock { $0 = reexec } }

    var view: DaemonView {
        DaemonView(version: running.version, sha256: running.digest, pid: getpid(), startedAt: startedAt,
                   current: binaries.current, lastUpgrade: ledger.state.daemon.upgrades?.last)
    }

    func upgrade(to digest: String, force: Bool, by: String, answer: @escaping @Sendable (Response) -> Void) throws(HTTPError) {
        guard let binary = binaries.binary(digest: digest) else {
            throw HTTPError(status: 404, code: "binary_not_found",
                            message: "no stored batond binary has the digest \(digest); PUT it to /v1/daemon/binary first")
        }
        if !force, ledger.state.daemon.upgrades?.diedBeforeConfirming.contains(digest) == true {
            throw HTTPError(status: 409, code: "binary_died_before",
                            message: "batond \(digest) died after an earlier upgrade before it confirmed; "
                                + "send \"force\": true to try it again")
        }
        guard !busy.exchange(true, ordering: .sequentiallyConsistent) else {
            throw HTTPError(status: 409, code: "upgrade_in_progress", message: "an upgrade of batond is under way already")
        }
        submit.yield(Job(binary: binary, digest: digest, by: by, answer: answer))
    }

    // MARK: - The attempt

    func run() async {
        for await job in jobs {
            await perform(job)
            busy.store(false, ordering: .sequentiallyConsistent)
        }
    }

    func stop() { submit.finish() }

    private func perform(_ job: Job) async {
        let check = await Self.selfCheck(job.binary, arguments: arguments)
        guard check.passed else {
            let reason = "--self-check " + check.reason
            logger.warning("the new batond refused its self-check; nothing changes",
                           metadata: ["to": "\(job.digest)", "reason": "\(reason)"])
            do {
                try await ledger.append(.daemonUpgradeFailed(.init(from: running.digest, to: job.digest, stage: .selfCheck, reason: reason)))
            } catch {
                job.answer(Self.unrecorded(error).response)
                return
            }
            job.answer(HTTPError(status: 422, code: "self_check_failed", message: reason).response)
            return
        }
        guard !Task.isCancelled, let reexec = reexec.withLock({ $0 }) else {
            job.answer(HTTPError.shuttingDown.response)
            return
        }
        do {
            try await ledger.append(.daemonUpgradeBegan(.init(from: running.digest, fromVersion: running.version, to: job.digest,
                                                              pid: getpid(), by: job.by)))
        } catch {
            job.answer(Self.unrecorded(error).response)
            return
        }
        logger.notice("re-executing into a new batond", metadata: ["from": "\(running.digest)", "to": "\(job.digest)"])
        var accepted = Response.json(status: 202, ledger.state.daemon.upgrades?.last)
        // The client need not hold a connection that the handover would close anyway.
        accepted.headers.append(("Connection", "close"))
        job.answer(accepted)
        let failure = reexec(job.binary, job.digest)
        logger.error("the re-exec failed; this batond serves on", metadata: ["to": "\(job.digest)", "error": "\(failure)"])
        do {
            try await ledger.append(.daemonUpgradeFailed(.init(from: running.digest, to: job.digest, stage: .exec, reason: failure)))
        } catch {
            logger.error("cannot record the failed re-exec", metadata: ["error": "\(error)"])
        }
    }

    /// Runs `binary --self-check` with batond's own arguments, on a thread of its own
    /// (it blocks), without NOTIFY_SOCKET: the check is no service.
    static func selfCheck(_ binary: String, arguments: [String]) async -> DaemonBinaries.CheckResult {
        var environment = ProcessInfo.processInfo.environment
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", markerVariable, Listener.handedOverVariable] {
            environment[name] = nil
        }
        return await withCheckedContinuation { [environment] continuation in
            let thread = Thread {
                continuation.resume(returning: DaemonBinaries.runCheck(binary: binary, arguments: arguments + ["--self-check"],
                                                                       environment: environment, timeout: checkTimeout))
            }
            thread.name = "baton.self-check"
            thread.start()
        }
    }

    static func unrecorded(_ error: LedgerError) -> HTTPError {
        HTTPError(status: 503, code: "ledger_unavailable",
                  message: "the ledger cannot record the upgrade (\(error)); nothing changed", headers: ["Retry-After": "1"])
    }

    // MARK: - At start

    /// Ends an attempt a previous image left open: confirms it when this process is
    /// that attempt's new image (exec'd with the marker, running its digest), else
    /// records it failed. Also finishes a `current` flip that a crash cut short.
    func settle() async throws(LedgerError) {
        let marker = getenv(Self.markerVariable).map { String(cString: $0) }
        unsetenv(Self.markerVariable)
        guard let last = ledger.state.daemon.upgrades?.last else { return }
        switch last.outcome {
        case .inProgress where marker == last.to && running.digest == last.to:
            try await ledger.append(.daemonUpgraded(.init(from: last.from, fromVersion: last.fromVersion ?? "unknown", to: last.to,
                                                          toVersion: running.version, pid: getpid())))
            logger.notice("batond upgraded in place", metadata: ["from": "\(last.from)", "to": "\(last.to)",
                                                                 "version": "\(running.version)"])
            flipCurrent(to: last.to)
        case .inProgress:
            let reason = "batond started again (binary \(running.digest), pid \(getpid())) before \(last.to) confirmed: "
                + "the new binary died or was stopped after the exec"
            try await ledger.append(.daemonUpgradeFailed(.init(from: last.from, to: last.to, stage: .confirm, reason: reason)))
            logger.error("the last upgrade of batond failed; this binary runs on and will not try it again by itself",
                         metadata: ["to": "\(last.to)"])
        case .upgraded where running.digest == last.to && binaries.current != last.to:
            flipCurrent(to: last.to)
        case .upgraded, .failed:
            break
        }
    }

    private func flipCurrent(to digest: String) {
        do {
            try binaries.setCurrent(digest)
        } catch {
            // The ledger says upgraded; the next start through `current` would run the
            // previous binary, which settles nothing. Say so loudly.
            logger.error("cannot point daemon/current at the new binary; a restart would run the previous one",
                         metadata: ["to": "\(digest)", "error": "\(error)"])
        }
    }
}

/// Runs the upgrade jobs until batond stops.
struct UpgradeService: Service {
    let upgrader: SelfUpgrader

    func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await upgrader.run() }
            try? await gracefulShutdown()
            upgrader.stop()
        }
    }
}

// MARK: - Seeding the store

/// `batond --install-self`: stores this binary under its digest and, when `current`
/// names nothing yet, points it there, so that the service manager can start batond
/// through `daemon/current/batond`. Never moves an existing `current` (upgrades do).
public enum InstallSelf {
    public static func run(stateDirectory: String) throws(Daemon.Failure) -> String {
        let store = DaemonBinaries(stateDirectory: stateDirectory)
        do {
            try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true)
        } catch {
            throw Daemon.Failure(exit: .ioError, description: "cannot create \(stateDirectory): \(error)")
        }
        do {
            let stored = try store.store(copyOf: "/proc/self/exe")
            let path = "\(store.root)/\(stored.digest)/\(DaemonBinaries.binaryName)"
            if let current = store.current {
                return "\(stored.existed ? "already stored" : "stored") \(path); daemon/current stays at \(current)"
                    + (current == stored.digest ? "" : " (POST /v1/daemon/upgrade moves it)")
            }
            try store.setCurrent(stored.digest)
            return "\(stored.existed ? "already stored" : "stored") \(path); daemon/current -> \(stored.digest)"
        } catch {
            throw Daemon.Failure(exit: .ioError, description: "--install-self: \(error)")
        }
    }
}
