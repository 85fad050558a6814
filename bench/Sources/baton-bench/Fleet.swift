// baton-bench fleet [--hosts N] [--coordinators K] [--steady-seconds S] [--upgrade-ms U]
//                   [--jitter-ms J] [--fetch-ms F] [--failure-rate P]
//
// Issue 11's simulation: N hosts in this one process, each a `Fleet` (batond's own fleet
// member and coordinator, each with its own etcd client) over a model machine
// (FleetModel.swift), against a real 3-member etcd cluster on loopback (the tests'
// EtcdCluster). It measures, against baselines taken in the same run:
// - etcd's raw rate from one client (put, range of one key, range of the whole fleet);
// - etcd requests per host per minute at rest (lease TTL 10 s, heartbeat 30 s: the
//   defaults), over S seconds with no plan change;
// - for several plans (max-unavailable 25, 1, 5, 10; canary 5 with max-unavailable 10;
//   the barrier with a migration; P of upgrades failing), the time from the plan's write
//   to every host reporting done and to the rollout's `done`, against the serial minimum
//   (ceil(hosts / max-unavailable) × the mean upgrade), and the requests it took.
// A separate client watches the fleet's keys and times every step at the revision etcd
// shows it; it also checks that no more than max-unavailable hosts were mid-handoff at once.
import BatonConfig
import BatonCore
import BatonEtcd
import BatonFleet
import BatonTestSupport
import Foundation
import Glibc
import Logging
import Synchronization

struct FleetBenchOptions: Sendable {
    var hosts = 100
    var coordinators = 100
    var steadySeconds = 30
    var timings = ModelTimings()
    var failureRate = 0.05
}

/// Runs the fleet bench to its end; the exit status says whether it ran.
func benchFleet() -> Never {
    var options = FleetBenchOptions()
    options.hosts = Int(option("--hosts", default: "100")) ?? 100
    options.coordinators = Int(option("--coordinators", default: String(options.hosts))) ?? options.hosts
    options.steadySeconds = Int(option("--steady-seconds", default: "30")) ?? 30
    options.timings.upgradeMs = Int(option("--upgrade-ms", default: "200")) ?? 200
    options.timings.jitterMs = Int(option("--jitter-ms", default: "50")) ?? 50
    options.timings.fetchMs = Int(option("--fetch-ms", default: "50")) ?? 50
    options.failureRate = Double(option("--failure-rate", default: "0.05")) ?? 0.05
    guard options.hosts >= 1, options.hosts <= 999, (0...options.hosts).contains(options.coordinators) else {
        FileHandle.standardError.write(Data("baton-bench fleet: --hosts must be 1...999, --coordinators 0...hosts\n".utf8))
        exit(64)
    }
    // Each host holds a few connections (watches, idle ones): raise the descriptor limit.
    var limit = rlimit()
    if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
    let cluster: EtcdCluster
    do { cluster = try EtcdCluster(size: 3) } catch {
        FileHandle.standardError.write(Data("baton-bench fleet: \(error)\n".utf8))
        exit(74)
    }
    let endpoints = cluster.endpoints
    let outcome = ExitStatus()
    let finished = DispatchSemaphore(value: 0)
    Task.detached {
        var status: Int32 = 0
        do { try await FleetBench(options: options, endpoints: endpoints).run() } catch {
            FileHandle.standardError.write(Data("baton-bench fleet: \(error)\n".utf8))
            status = 1
        }
        outcome.value.withLock { $0 = status }
        finished.signal()
    }
    finished.wait()
    withExtendedLifetime(cluster) {}
    exit(outcome.value.withLock { $0 })
}

/// The simulation's exit status, handed from its task to the main thread.
final class ExitStatus: Sendable {
    let value = Mutex<Int32>(1)
}

/// A scenario: one plan, and what it is compared with.
struct FleetScenario {
    var name: String
    var canary = 0
    var maxUnavailable = 1
    var barrier = false
    var failureRate = 0.0
    var failureThreshold = 0
}

struct FleetBench {
    let options: FleetBenchOptions
    let endpoints: [String]
    let keys: FleetKeys
    let logger: Logger

    init(options: FleetBenchOptions, endpoints: [String]) {
        self.options = options
        self.endpoints = endpoints
        var probe = BatondConfig.FleetSettings(endpoints: endpoints, host: "probe")
        probe.name = "bench"
        self.keys = FleetKeys(probe)
        var logger = Logger(label: "baton-bench.fleet")
        logger.logLevel = .error
        self.logger = logger
    }

    func settings(host: String, coordinator: Bool) -> BatondConfig.FleetSettings {
        var settings = BatondConfig.FleetSettings(endpoints: endpoints, host: host)
        settings.name = "bench"
        settings.coordinator = coordinator
        // The defaults, spelled out: the steady-state figure is a real fleet's.
        settings.leaseTTL = .seconds(10)
        settings.heartbeat = .seconds(30)
        return settings
    }

    func run() async throws {
        let n = options.hosts
        print("fleet simulation: \(n) hosts (\(options.coordinators) may coordinate), 3 etcd members on loopback (\(etcdVersion()))")
        print("  \(ProcessInfo.processInfo.activeProcessorCount) cores, load average \(loadAverage())")
        let timings = options.timings
        print("  model machine: upgrade \(timings.upgradeMs) ± \(timings.jitterMs) ms, fetch \(timings.fetchMs) ms,"
              + " barrier halt \(timings.haltMs) ms, migration \(timings.migrationMs) ms")
        print("  lease TTL 10 s (renewed every 3.3 s), heartbeat 30 s: batond's defaults")

        // MARK: Baseline: etcd alone, from one client of the same code.
        let raw = EtcdClient(EtcdSettings(endpoints: endpoints))
        let value = Array(repeating: UInt8(ascii: "x"), count: 400)
        print("\n== etcd's own rate from one EtcdClient (2 s each)")
        let putSerial = try await rate(parallel: 1) { () async throws(EtcdError) in _ = try await raw.put("/baton-bench-raw/k", value: value) }
        let putParallel = try await rate(parallel: 16) { () async throws(EtcdError) in _ = try await raw.put("/baton-bench-raw/k", value: value) }
        let rangeSerial = try await rate(parallel: 1) { () async throws(EtcdError) in _ = try await raw.range("/baton-bench-raw/k") }
        let rangeParallel = try await rate(parallel: 16) { () async throws(EtcdError) in _ = try await raw.range("/baton-bench-raw/k") }
        print(String(format: "  put   (400 B): %7.0f/s one at a time, %7.0f/s 16 in flight", putSerial, putParallel))
        print(String(format: "  range (1 key): %7.0f/s one at a time, %7.0f/s 16 in flight", rangeSerial, rangeParallel))

        // MARK: The fleet
        let observer = FleetObserver(client: EtcdClient(EtcdSettings(endpoints: endpoints)), keys: keys, expected: n)
        let watching = try await observer.start()
        defer { watching.cancel() }
        var models: [ModelHost] = []
        let concurrency = ModelConcurrency()
        var fleets: [Fleet] = []
        for index in 0..<n {
            let name = String(format: "host-%03d", index)
            let model = ModelHost(name: name, version: "1.0.0", seed: UInt64(index + 1), timings: timings, hasMigration: index == n - 1,
                                  concurrency: concurrency)
            models.append(model)
            fleets.append(try Fleet(settings: settings(host: name, coordinator: index < options.coordinators), local: model, logger: logger))
        }
        let started = ContinuousClock.now
        await withTaskGroup(of: Void.self) { group in
            for fleet in fleets { group.addTask { await fleet.start() } }
        }
        try await until(.seconds(60), "every host registered and a coordinator elected") {
            observer.state.withLock { $0.hosts.count == n && ($0.leader != nil || options.coordinators == 0) }
        }
        let leader = observer.state.withLock { $0.leader ?? "none" }
        print("\n== \(n) hosts registered, coordinator \(leader) elected, in " + String(format: "%.2f s", seconds(ContinuousClock.now - started)))
        let rangeFleet = try await rate(parallel: 1) { () async throws(EtcdError) in _ = try await raw.range(keys.root, prefix: true) }
        let fleetBytes = try await raw.range(keys.root, prefix: true).kvs.reduce(0) { $0 + $1.key.utf8.count + $1.value.count }
        print(String(format: "  range of the whole fleet (%d keys, %d kB): %.0f/s one at a time", n + 1, fleetBytes / 1000, rangeFleet))

        // The operator: a Fleet that only writes plans (never started: its client counts apart).
        let operatorFleet = try Fleet(settings: settings(host: "operator", coordinator: false),
                                      local: ModelHost(name: "operator", version: "1.0.0", seed: 0, timings: timings, hasMigration: false,
                                                       concurrency: ModelConcurrency()),
                                      logger: logger)
        let scenarios = [
            FleetScenario(name: "canary 0, max-unavailable 25", maxUnavailable: 25),
            FleetScenario(name: "canary 0, max-unavailable 1", maxUnavailable: 1),
            FleetScenario(name: "canary 0, max-unavailable 5", maxUnavailable: 5),
            FleetScenario(name: "canary 0, max-unavailable 10", maxUnavailable: 10),
            FleetScenario(name: "canary 5, soak 0, max-unavailable 10", canary: 5, maxUnavailable: 10),
            FleetScenario(name: "barrier with a migration", barrier: true),
            FleetScenario(name: String(format: "%.0f%% of upgrades fail, threshold %d, max-unavailable 10", options.failureRate * 100, n / 10),
                          maxUnavailable: 10, failureRate: options.failureRate, failureThreshold: n / 10),
        ]
        var results: [FleetResult] = []
        let chosen = option("--scenarios", default: "").split(separator: ",").compactMap { Int($0) }
        var steadyDone = options.steadySeconds <= 0
        for (index, scenario) in scenarios.enumerated() where chosen.isEmpty || chosen.contains(index) {
            for model in models { model.timings.withLock { $0.failureRate = scenario.failureRate } }
            _ = concurrency.reset()
            var result = try await rollout(scenario, version: "1.\(index + 1).0", fleets: fleets, models: models,
                                           observer: observer, operatorFleet: operatorFleet)
            result.handoffs = concurrency.reset()
            if !scenario.barrier, result.handoffs > scenario.maxUnavailable, result.problem == nil {
                result.problem = "\(result.handoffs) hosts were mid-handoff at once, more than max-unavailable \(scenario.maxUnavailable)"
            }
            print("  model upgrades at once, at most: \(result.handoffs)" + (result.problem.map { "; PROBLEM: \($0)" } ?? ""))
            results.append(result)
            if !steadyDone {
                steadyDone = true
                try await steady(fleets: fleets)
            }
        }

        print("\n== summary: \(n) hosts, upgrade \(timings.upgradeMs) ± \(timings.jitterMs) ms")
        print("  plan                                              all hosts done  rollout done  serial minimum  ratio  upgrades at once  requests/host")
        for result in results {
            print(result.line)
        }
        await withTaskGroup(of: Void.self) { group in
            for fleet in fleets { group.addTask { await fleet.stop() } }
        }
        if let bad = results.first(where: { !$0.ok }) { throw BenchFailure("\(bad.scenario.name): \(bad.problem ?? "failed")") }
    }

    // MARK: - Steady state

    func steady(fleets: [Fleet]) async throws {
        // Let the rollout's last status writes settle before counting.
        try await Task.sleep(for: .seconds(2))
        let window = options.steadySeconds
        print("\n== steady state: \(window) s with no plan change")
        let before = fleets.map(\.metrics.etcdRequests)
        let cpu = CPUTimes.now()
        let start = ContinuousClock.now
        try await Task.sleep(for: .seconds(window))
        let elapsed = seconds(ContinuousClock.now - start)
        let used = CPUTimes.now() - cpu
        let after = fleets.map(\.metrics.etcdRequests)
        let deltas = zip(after, before).map { $0 - $1 }
        let leader = fleets.firstIndex { $0.metrics.coordinator }
        let total = deltas.reduce(0, +)
        let others = deltas.enumerated().filter { $0.offset != leader }.map(\.element)
        let perMinute = Double(total) / Double(fleets.count) / (elapsed / 60)
        print(String(format: "  etcd requests per host per minute: %.1f (all hosts, coordinator included: %d requests in %.1f s, %.1f/s)",
                     perMinute, total, elapsed, Double(total) / elapsed))
        if let leader {
            let otherRate = Double(others.reduce(0, +)) / Double(max(1, others.count)) / (elapsed / 60)
            print(String(format: "  a host that does not coordinate: %.1f/min; the coordinator", otherRate)
                  + " (\(fleets[leader].settings.host)): " + String(format: "%.1f/min", Double(deltas[leader]) / (elapsed / 60)))
            print("  expected for a host: a keepalive every 3.3 s (18/min) + a heartbeat every 30 s (2/min) = 20/min")
        }
        print(String(format: "  CPU: baton-bench %.1f%%, the 3 etcd members %.1f%% (of one core)",
                     100 * used.bench / elapsed, 100 * used.etcd / elapsed))
    }

    // MARK: - One rollout

    func rollout(_ scenario: FleetScenario, version: String, fleets: [Fleet], models: [ModelHost], observer: FleetObserver,
                 operatorFleet: Fleet) async throws -> FleetResult {
        let n = fleets.count
        print("\n== \(scenario.name): 1.x → \(version)")
        let mean = Double(options.timings.upgradeMs) / 1000
        let minimum: Double
        if scenario.barrier {
            let t = options.timings
            minimum = Double(t.haltMs + t.migrationMs + t.upgradeMs) / 1000
        } else if scenario.canary > 0 {
            let wave = min(scenario.canary, n)
            minimum = (ceil(Double(wave) / Double(scenario.maxUnavailable)) + ceil(Double(n - wave) / Double(scenario.maxUnavailable))) * mean
        } else {
            minimum = ceil(Double(n) / Double(scenario.maxUnavailable)) * mean
        }
        let before = fleets.map(\.metrics.etcdRequests)
        let cpu = CPUTimes.now()
        let start = ContinuousClock.now
        let request = FleetSetRequest(version: version,
                                      releases: [ModelHost.agent: .init(url: "https://releases.example/app/\(version).tar.gz",
                                                                        sha256: String(repeating: "ab", count: 32))],
                                      barrier: scenario.barrier, canary: scenario.canary, maxUnavailable: scenario.maxUnavailable,
                                      failureThreshold: scenario.failureThreshold)
        let view: FleetView
        do { view = try await operatorFleet.set(request, by: "baton-bench") } catch { throw BenchFailure("the plan was refused: \(error)") }
        guard let id = view.plan?.id else { throw BenchFailure("the plan written is not in the view") }
        let timeout = max(60, 20 * minimum)
        do {
            try await until(.seconds(Int64(timeout)), "the rollout of \(id) ended") {
                observer.state.withLock { $0.plans[id]?.end != nil && $0.plans[id]?.hostsSettled != nil }
            }
        } catch {
            let summary = observer.state.withLock { state in
                let phases = Dictionary(grouping: state.hosts.values) { $0.rollout?.id == id ? $0.rollout!.phase.rawValue : "other plan" }
                return "rollout \(state.plans[id]?.lastPhase?.rawValue ?? "none"); hosts: "
                    + phases.map { "\($0.key) \($0.value.count)" }.sorted().joined(separator: ", ")
            }
            throw BenchFailure("\(scenario.name): \(error); \(summary)")
        }
        let elapsed = seconds(ContinuousClock.now - start)
        let used = CPUTimes.now() - cpu
        let after = fleets.map(\.metrics.etcdRequests)
        let deltas = zip(after, before).map { $0 - $1 }
        let leader = fleets.firstIndex { $0.metrics.coordinator }
        let plan = observer.state.withLock { $0.plans[id]! }
        let onVersion = models.filter { $0.version == version }.count
        var result = FleetResult(scenario: scenario, minimum: minimum, plan: plan, hosts: n, onVersion: onVersion,
                                 requests: deltas.reduce(0, +), leaderRequests: leader.map { deltas[$0] })
        if scenario.failureRate == 0 && onVersion != n { result.problem = "\(n - onVersion) hosts are not on \(version)" }
        if !scenario.barrier, plan.maxSlots > scenario.maxUnavailable {
            result.problem = "\(plan.maxSlots) slot keys were held at once, more than max-unavailable \(scenario.maxUnavailable)"
        }
        if scenario.failureRate == 0, plan.endPhase != .done { result.problem = "the rollout ended \(plan.endPhase?.rawValue ?? "?")" }
        for line in result.details { print("  " + line) }
        print(String(format: "  CPU over the rollout (%.1f s): baton-bench %.0f%%, etcd members %.0f%% (of one core)",
                     elapsed, 100 * used.bench / elapsed, 100 * used.etcd / elapsed))
        return result
    }

    // MARK: - Helpers

    /// Calls per second of `operation`, `parallel` at a time, for 2 s.
    func rate(parallel: Int, _ operation: @escaping @Sendable () async throws(EtcdError) -> Void) async throws -> Double {
        let start = ContinuousClock.now
        let deadline = start + .seconds(2)
        let count = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<parallel {
                group.addTask {
                    var done = 0
                    while ContinuousClock.now < deadline {
                        try await operation()
                        done += 1
                    }
                    return done
                }
            }
            return try await group.reduce(0, +)
        }
        return Double(count) / seconds(ContinuousClock.now - start)
    }

    /// Polls an in-process condition (the observer's state, written from its watch).
    func until(_ timeout: Duration, _ what: String, _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while !condition() {
            guard ContinuousClock.now < deadline else { throw BenchFailure("not within \(timeout): \(what)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    func etcdVersion() -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: which("etcd") ?? "/usr/bin/etcd")
        process.arguments = ["--version"]
        let pipe = Pipe()
        process.standardOutput = pipe
        guard (try? process.run()) != nil else { return "etcd ?" }
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return text.split(separator: "\n").first.map { $0.replacingOccurrences(of: "etcd Version: ", with: "etcd ") } ?? "etcd ?"
    }

    func loadAverage() -> String {
        ((try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? "?").split(separator: " ").prefix(3).joined(separator: " ")
    }
}

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

/// What one rollout measured.
struct FleetResult {
    var scenario: FleetScenario
    var minimum: Double
    var plan: FleetObserver.Plan
    var hosts: Int
    var onVersion: Int
    var requests: Int
    var leaderRequests: Int?
    var problem: String?
    /// The most model upgrades that ran at once.
    var handoffs = 0

    var ok: Bool { problem == nil }

    func since(_ instant: ContinuousClock.Instant?) -> Double? {
        guard let seen = plan.seen, let instant else { return nil }
        return seconds(instant - seen)
    }

    func format(_ value: Double?) -> String { value.map { String(format: "%.2f s", $0) } ?? "—" }

    var details: [String] {
        var lines = [
            "plan written → every host done: \(format(since(plan.hostsDone)))"
                + (plan.hostsDone == nil ? " (\(hosts - onVersion) hosts failed; every host settled: \(format(since(plan.hostsSettled))))" : ""),
            "plan written → rollout \(plan.endPhase?.rawValue ?? "?"): \(format(since(plan.end)))"
                + String(format: "; serial minimum %.2f s", minimum),
            "phases: " + plan.phases.map { "\($0.phase.rawValue) at \(format(since($0.at)))" }.joined(separator: ", "),
        ]
        if let first = since(plan.firstHandingOver) { lines.append("first host handing over at \(format(first))") }
        let writes = plan.writes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        lines.append("hosts showing handing_over at once, at most: \(plan.maxHandingOver); slot keys held at most: \(plan.maxSlots); writes seen: \(writes)")
        if !plan.slotGaps.isEmpty {
            lines.append("a slot key free before the next host takes it: " + spread(plan.slotGaps)
                         + "; held: " + spread(plan.slotHolds) + " (\(plan.slotHolds.count) takes)")
        }
        let perHost = Double(requests) / Double(hosts)
        var text = String(format: "etcd requests: %d (%.1f per host)", requests, perHost)
        if let leaderRequests {
            text += String(format: "; the coordinator %d, the others %.1f per host", leaderRequests,
                           Double(requests - leaderRequests) / Double(max(1, hosts - 1)))
        }
        lines.append(text)
        return lines
    }

    /// "median X ms, p90 Y ms, max Z ms".
    func spread(_ values: [Double]) -> String {
        let sorted = values.sorted()
        func at(_ q: Double) -> Double { sorted[min(sorted.count - 1, Int(q * Double(sorted.count)))] * 1000 }
        return String(format: "median %.0f ms, p90 %.0f ms, max %.0f ms", at(0.5), at(0.9), sorted.last! * 1000)
    }

    var line: String {
        let ratio = since(plan.end).map { String(format: "%.2fx", $0 / minimum) } ?? "—"
        func pad(_ text: String, _ width: Int) -> String { String(repeating: " ", count: max(0, width - text.count)) + text }
        return "  " + scenario.name.padding(toLength: 50, withPad: " ", startingAt: 0) + pad(format(since(plan.hostsDone)), 15)
            + pad(format(since(plan.end)), 14) + pad(String(format: "%.2f s", minimum), 16) + pad(ratio, 7)
            + pad(String(handoffs), 18) + pad(String(format: "%.1f", Double(requests) / Double(hosts)), 15)
    }
}

/// Watches the fleet's keys from its own client and times each step as etcd shows it.
final class FleetObserver: Sendable {
    struct Plan: Sendable {
        var seen: ContinuousClock.Instant?
        var hostsDone: ContinuousClock.Instant?
        var hostsSettled: ContinuousClock.Instant?
        var firstHandingOver: ContinuousClock.Instant?
        var end: ContinuousClock.Instant?
        var endPhase: FleetRolloutState.Phase?
        var lastPhase: FleetRolloutState.Phase?
        var phases: [(phase: FleetRolloutState.Phase, at: ContinuousClock.Instant)] = []
        var maxHandingOver = 0
        var maxSlots = 0
        /// Seconds from a slot key's delete to its next put, and from a put to its delete.
        var slotGaps: [Double] = []
        var slotHolds: [Double] = []
        /// Puts and deletes seen under each folder while this plan was the current one.
        var writes: [String: Int] = [:]
    }

    struct State: Sendable {
        var hosts: [String: FleetHostStatus] = [:]
        var slots: Set<String> = []
        /// Per slot key: when it was last deleted, or put.
        var slotFreed: [String: ContinuousClock.Instant] = [:]
        var slotTaken: [String: ContinuousClock.Instant] = [:]
        var leader: String?
        var current: String?
        var plans: [String: Plan] = [:]
    }

    let client: EtcdClient
    let keys: FleetKeys
    let expected: Int
    let state = Mutex(State())

    init(client: EtcdClient, keys: FleetKeys, expected: Int) {
        self.client = client
        self.keys = keys
        self.expected = expected
    }

    func start() async throws -> Task<Void, Never> {
        let read = try await client.range(keys.root, prefix: true)
        state.withLock { state in
            for kv in read.kvs { apply(EtcdEvent(kind: .put, kv: kv), at: .now, to: &state) }
        }
        return Task { [client, keys] in
            for await update in client.watch(keys.root, prefix: true, from: read.revision + 1) {
                guard case .events(let events, _) = update else { continue }
                let now = ContinuousClock.now
                self.state.withLock { state in
                    for event in events { self.apply(event, at: now, to: &state) }
                }
            }
        }
    }

    private func apply(_ event: EtcdEvent, at now: ContinuousClock.Instant, to state: inout State) {
        let key = event.kv.key
        let put = event.kind == .put
        let folder = key.dropFirst(keys.root.count).split(separator: "/").first.map(String.init) ?? ""
        if let current = state.current { state.plans[current, default: Plan()].writes[folder, default: 0] += 1 }
        if key == keys.plan, put, let plan = try? WireJSON.decoder.decode(FleetPlan.self, from: Data(event.kv.value)) {
            if state.current != plan.id { state.slotFreed = [:] }
            state.current = plan.id
            if state.plans[plan.id]?.seen == nil { state.plans[plan.id, default: Plan()].seen = now }
        } else if key == keys.rollout, put, let rollout = try? WireJSON.decoder.decode(FleetRolloutState.self, from: Data(event.kv.value)) {
            var plan = state.plans[rollout.id, default: Plan()]
            if plan.lastPhase != rollout.phase { plan.phases.append((rollout.phase, now)) }
            plan.lastPhase = rollout.phase
            if rollout.phase.isFinal || rollout.phase == .paused, plan.end == nil {
                plan.end = now
                plan.endPhase = rollout.phase
            }
            state.plans[rollout.id] = plan
        } else if key == keys.coordinator {
            state.leader = put ? event.kv.string : nil
        } else if key.hasPrefix(keys.hosts) {
            let name = String(key.dropFirst(keys.hosts.count))
            if put, let status = try? WireJSON.decoder.decode(FleetHostStatus.self, from: Data(event.kv.value)) {
                state.hosts[name] = status
            } else if !put {
                state.hosts[name] = nil
            }
        } else if key.hasPrefix(keys.slots) {
            if put, !state.slots.contains(key) {
                state.slots.insert(key)
                if let current = state.current, let freed = state.slotFreed[key] {
                    state.plans[current, default: Plan()].slotGaps.append(seconds(now - freed))
                }
                state.slotTaken[key] = now
            } else if !put {
                state.slots.remove(key)
                state.slotFreed[key] = now
                if let current = state.current, let taken = state.slotTaken.removeValue(forKey: key) {
                    state.plans[current, default: Plan()].slotHolds.append(seconds(now - taken))
                }
            }
        }
        guard let current = state.current else { return }
        var plan = state.plans[current, default: Plan()]
        var done = 0, settled = 0, handingOver = 0
        for host in state.hosts.values {
            guard let rollout = host.rollout, rollout.id == current else { continue }
            if rollout.phase == .done { done += 1 }
            if rollout.phase.isFinal { settled += 1 }
            if rollout.phase == .handingOver { handingOver += 1 }
        }
        if done == expected, plan.hostsDone == nil { plan.hostsDone = now }
        if settled == expected, plan.hostsSettled == nil { plan.hostsSettled = now }
        if handingOver > 0, plan.firstHandingOver == nil { plan.firstHandingOver = now }
        plan.maxHandingOver = max(plan.maxHandingOver, handingOver)
        plan.maxSlots = max(plan.maxSlots, state.slots.count)
        state.plans[current] = plan
    }
}

/// CPU seconds used by this process and by its child processes that still run (the etcd members).
struct CPUTimes {
    var bench: Double
    var etcd: Double

    static func now() -> CPUTimes {
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        let bench = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        var etcd = 0.0
        let me = getpid()
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where Int32(entry) != nil {
            guard let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            // After "pid (comm) ": state ppid … utime is the 14th field, stime the 15th.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 13, Int32(fields[1]) == me, stat.contains("(etcd)") else { continue }
            etcd += ((Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)) / ticks
        }
        return CPUTimes(bench: bench, etcd: etcd)
    }

    static func - (a: CPUTimes, b: CPUTimes) -> CPUTimes { CPUTimes(bench: a.bench - b.bench, etcd: a.etcd - b.etcd) }
}
