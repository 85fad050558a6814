// baton-bench: figures that `make bench` (scripts/bench.sh) prints.
//
//   baton-bench ledger --writers N --seconds S --dir DIR
//
// N threads each append a record and wait until it is durable, again and again, for
// S seconds, on a ledger in DIR. Prints appends_per_second=… and the batch figures.
//
//   baton-bench unpack --size-mb N --dir DIR
//
// Unpacks a release of about N MB with the release store's unpacker and with `tar -x`
// (Unpack.swift).
//
//   baton-bench fleet [--hosts N] …
//
// N simulated hosts converge on new versions through batond's fleet code against a real
// 3-member etcd cluster on loopback (Fleet.swift).
import BatonCore
import BatonLedger
import Foundation
import Logging

func option(_ name: String, default value: String) -> String {
    let arguments = CommandLine.arguments
    guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count else { return value }
    return arguments[index + 1]
}

if CommandLine.arguments.count > 1, CommandLine.arguments[1] == "unpack" { unpackBench() }
if CommandLine.arguments.count > 1, CommandLine.arguments[1] == "fleet" { benchFleet() }
if CommandLine.arguments.count > 1, CommandLine.arguments[1] == "download" {
    do { try benchDownload() } catch {
        FileHandle.standardError.write(Data("baton-bench: \(error)\n".utf8))
        exit(74)
    }
    exit(0)
}
guard CommandLine.arguments.count > 1, CommandLine.arguments[1] == "ledger" else {
    FileHandle.standardError.write(Data("usage: baton-bench ledger --writers N --seconds S --dir DIR\n       baton-bench download --mb M --runs R --dir DIR\n       baton-bench unpack --size-mb N --dir DIR\n       baton-bench fleet [--hosts N] [--coordinators K] [--steady-seconds S]\n".utf8))
    exit(64)
}
let writers = Int(option("--writers", default: "1")) ?? 1
let seconds = Double(option("--seconds", default: "5")) ?? 5
let directory = option("--dir", default: NSTemporaryDirectory() + "/baton-bench-\(getpid())")

var logger = Logger(label: "baton-bench")
logger.logLevel = .warning
let ledger: Ledger
do {
    var options = Ledger.Options()
    options.snapshotEvery = 1_000_000
    ledger = try Ledger(stateDirectory: directory, options: options, logger: logger)
} catch {
    FileHandle.standardError.write(Data("baton-bench: \(error)\n".utf8))
    exit(74)
}

final class Counter: @unchecked Sendable {
    // @unchecked: `count` is only touched under `lock`.
    let lock = NSLock()
    var count = 0
    var failures = 0
}
let counter = Counter()
let deadline = Date().addingTimeInterval(seconds)
let finished = DispatchGroup()
let started = Date()
for writer in 0..<writers {
    finished.enter()
    Thread {
        let durable = DispatchSemaphore(value: 0)
        var mine = 0, failed = 0
        while Date() < deadline {
            let event = LedgerEvent.agentDesired(.init(agent: "bench-\(writer)", version: "1.\(mine)", mode: .parallel, by: "baton-bench"))
            let outcome = Locked()
            ledger.append([event]) { result in
                if case .failure = result { outcome.failed = true }
                durable.signal()
            }
            durable.wait()
            if outcome.failed { failed += 1 } else { mine += 1 }
        }
        counter.lock.lock()
        counter.count += mine
        counter.failures += failed
        counter.lock.unlock()
        finished.leave()
    }.start()
}

final class Locked: @unchecked Sendable {
    // @unchecked: written by the ledger's writer thread before the semaphore is
    // signalled, read by the appender after it waits on it.
    var failed = false
}

finished.wait()
let elapsed = Date().timeIntervalSince(started)
let metrics = ledger.metrics
ledger.close()
let rate = Double(counter.count) / elapsed
print("writers=\(writers) seconds=\(String(format: "%.2f", elapsed)) appends=\(counter.count) failures=\(counter.failures)")
print("batches=\(metrics.batches) records_per_batch=\(String(format: "%.1f", Double(metrics.appends) / Double(max(1, metrics.batches))))"
      + " fsync_mean_ms=\(String(format: "%.3f", metrics.fsyncSeconds.sum / Double(max(1, metrics.fsyncSeconds.count)) * 1000))")
print("appends_per_second=\(Int(rate))")
