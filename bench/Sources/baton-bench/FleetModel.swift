// The machine under each simulated fleet member (`baton-bench fleet`): one agent, "app",
// whose upgrade takes a configurable time. The fleet member and coordinator above it are
// batond's own (BatonFleet), over batond's etcd client: only the machine is a model.
import BatonConfig
import BatonCore
import BatonFleet
import Synchronization

struct ModelTimings: Sendable {
    /// An upgrade (a machine rollout's handoff) takes `upgradeMs` ± `jitterMs`, uniformly.
    var upgradeMs = 200
    var jitterMs = 50
    /// Fetching a release (once per version; again: instant).
    var fetchMs = 50
    /// Barrier: stopping the agent, and the migration on the one host that runs it.
    var haltMs = 50
    var migrationMs = 500
    /// The share of upgrades that fail (the agent stays on its version).
    var failureRate = 0.0
}

/// A host's machine: what `MachineHost` is to batond, without processes, a ledger or files.
final class ModelHost: FleetLocal {
    static let agent = "app"

    struct State {
        var version: String?
        var desired: String?
        var handingOff = false
        var fetched: Set<String> = []
        var ended: [String: FleetUpgradeOutcome] = [:]
        var running: String?
        var machineVersion: String?
        var random: SplitMix64
    }

    let name: String
    let timings: Mutex<ModelTimings>
    let concurrency: ModelConcurrency
    let hasMigration: Bool
    private let state: Mutex<State>

    init(name: String, version: String, seed: UInt64, timings: ModelTimings, hasMigration: Bool, concurrency: ModelConcurrency) {
        self.name = name
        self.concurrency = concurrency
        self.timings = Mutex(timings)
        self.hasMigration = hasMigration
        self.state = Mutex(State(version: version, desired: version, machineVersion: version, random: SplitMix64(seed: seed)))
    }

    var version: String? { state.withLock { $0.version } }

    func agents() -> [FleetHostStatus.Agent] {
        state.withLock {
            [.init(name: Self.agent, running: $0.version, desired: $0.desired, state: $0.handingOff ? .handingOff : .running, rewound: false)]
        }
    }

    var machineVersion: String? { state.withLock { $0.machineVersion } }
    var startedAgents: [String] { [Self.agent] }
    func stored(agent: String, version: String) -> (url: String?, sha256: String)? { nil }
    func planned(_ releases: [String: FleetRelease]) -> [String] { releases[Self.agent] == nil ? [] : [Self.agent] }

    func fetch(version: String, releases: [String: FleetRelease], by: String) async -> String? {
        if state.withLock({ $0.fetched.contains(version) }) { return nil }
        await pause(milliseconds: timings.withLock { $0.fetchMs })
        state.withLock { _ = $0.fetched.insert(version) }
        return nil
    }

    func upgrade(version: String, by: String, barrier: FleetBarrierHook?) async -> FleetUpgradeOutcome {
        let timings = timings.withLock { $0 }
        let (previous, took, fails) = state.withLock { state in
            state.running = by
            state.desired = version
            state.handingOff = true
            let jitter = timings.jitterMs > 0 ? Int(state.random.next() % UInt64(2 * timings.jitterMs + 1)) - timings.jitterMs : 0
            let fails = timings.failureRate > 0 && Double(state.random.next() % 1_000_000) / 1_000_000 < timings.failureRate
            return (state.version, max(0, timings.upgradeMs + jitter), fails)
        }
        var outcome = FleetUpgradeOutcome.done
        concurrency.began()
        defer { concurrency.ended() }
        if let barrier {
            await pause(milliseconds: timings.haltMs)
            state.withLock { $0.version = nil }
            let decision = await barrier(hasMigration) {
                await self.pause(milliseconds: timings.migrationMs)
                return (true, "the model's migration")
            }
            await pause(milliseconds: took)
            if !decision.ok { outcome = .restored(decision.detail) }
        } else {
            await pause(milliseconds: took)
            if fails { outcome = .failed("the model's upgrade failed") }
        }
        state.withLock { state in
            state.version = outcome == .done ? version : previous
            state.desired = state.version
            if outcome == .done { state.machineVersion = version }
            state.handingOff = false
            state.running = nil
            state.ended[by] = outcome
        }
        return outcome
    }

    func ended(by: String) -> FleetUpgradeOutcome? { state.withLock { $0.ended[by] } }
    func running(by: String) -> String? { state.withLock { $0.running == by ? "model \(by)" : nil } }
    /// Only a batond restarted mid-rollout asks this; the model never restarts.
    func awaitEnd(_ id: String) async -> FleetUpgradeOutcome { .failed("the model does not restart") }

    private func pause(milliseconds: Int) async {
        if milliseconds > 0 { try? await Task.sleep(for: .milliseconds(milliseconds)) }
    }
}

/// How many model upgrades (handoffs) run at once, and the most seen: what max-unavailable bounds.
final class ModelConcurrency: Sendable {
    private let counts = Mutex((now: 0, most: 0))
    func began() { counts.withLock { $0.now += 1; $0.most = max($0.most, $0.now) } }
    func ended() { counts.withLock { $0.now -= 1 } }
    /// The most since the last reset, and starts counting again.
    func reset() -> Int { counts.withLock { let most = $0.most; $0.most = $0.now; return most } }
}

/// A small seeded generator: each host's jitter and failures repeat from run to run.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
