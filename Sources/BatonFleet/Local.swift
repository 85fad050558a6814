import BatonConfig
import BatonCore
import BatonReleases
import BatonSupervisor
import Foundation

/// How an upgrade this host made for the fleet ended.
public enum FleetUpgradeOutcome: Sendable, Equatable {
    case done
    /// The machine rules left the agents where they were (`error` says why).
    case failed(String)
    /// Barrier: back on the previous versions.
    case restored(String)
}

/// The fleet's barrier as a machine rollout meets it: once every agent here is halted,
/// the rollout calls it with whether this host has a migration and a way to run it, and
/// it answers once the fleet decided (ok: start the new version; not: the previous ones).
public typealias FleetBarrierHook = Rollouts.FleetBarrier

/// The machine under a fleet member: what the member reads and asks of it. batond's own
/// (`MachineHost`) drives the supervisor and the machine's rollouts; the fleet benchmark
/// drives a model of it through the same member code.
public protocol FleetLocal: Sendable {
    /// The agents as the fleet sees them.
    func agents() -> [FleetHostStatus.Agent]
    var machineVersion: String? { get }
    /// The agents this host starts itself (a plan moves these).
    var startedAgents: [String] { get }
    /// A release of `version` stored here: its digest, and its URL if it was fetched.
    func stored(agent: String, version: String) -> (url: String?, sha256: String)?
    /// The agents of `releases` this host runs itself (those it starts).
    func planned(_ releases: [String: FleetRelease]) -> [String]
    /// Stores every release of `releases` this host runs, fetching what is missing and
    /// verifying the digest; nil when all are stored, else why not.
    func fetch(version: String, releases: [String: FleetRelease], by: String) async -> String?
    /// A machine rollout to `version`, awaited to its end; `barrier`: under the fleet's barrier.
    func upgrade(version: String, by: String, barrier: FleetBarrierHook?) async -> FleetUpgradeOutcome
    /// How a machine rollout asked `by` ended, if one did; nil if none was asked (or it
    /// is still running: see `running(by:)`).
    func ended(by: String) -> FleetUpgradeOutcome?
    /// Whether a machine rollout asked `by` is in progress (taken up after a restart).
    func running(by: String) -> String?
    /// Waits for the machine rollout `id` to end.
    func awaitEnd(_ id: String) async -> FleetUpgradeOutcome
    /// A barrier rollout taken up after a restart waits at the fleet's barrier again,
    /// with this hook.
    func rejoinBarrier(_ id: String, _ hook: @escaping FleetBarrierHook) async
}

extension FleetLocal {
    public func rejoinBarrier(_ id: String, _ hook: @escaping FleetBarrierHook) async {}
}

/// batond's machine: its supervisor, rollouts and releases.
public struct MachineHost: FleetLocal {
    let supervisor: Supervisor
    let rollouts: Rollouts
    let configs: [AgentConfig]
    let views: @Sendable () -> [AgentView]

    /// `views`: the agents as the API shows them.
    public init(supervisor: Supervisor, rollouts: Rollouts, agents: [AgentConfig], views: @escaping @Sendable () -> [AgentView]) {
        self.supervisor = supervisor
        self.rollouts = rollouts
        self.configs = agents
        self.views = views
    }

    public func agents() -> [FleetHostStatus.Agent] {
        views().map {
            .init(name: $0.name, running: $0.running?.version, desired: $0.desired?.version, state: $0.state, rewound: $0.rewound != nil)
        }
    }

    public var machineVersion: String? { rollouts.view.version }

    public var startedAgents: [String] { configs.filter { !$0.external }.map(\.name) }

    public func stored(agent: String, version: String) -> (url: String?, sha256: String)? {
        guard let manifest = supervisor.releases.store.manifest(agent: agent, version: version) else { return nil }
        // A URL shown redacted (its query held a credential) is not one to give the fleet.
        let url = manifest.source == .fetch ? manifest.url.flatMap { $0.contains("?…") ? nil : $0 } : nil
        return (url, manifest.sha256)
    }

    public func planned(_ releases: [String: FleetRelease]) -> [String] {
        configs.filter { !$0.external && releases[$0.name] != nil }.map(\.name)
    }

    public func fetch(version: String, releases: [String: FleetRelease], by: String) async -> String? {
        for agent in planned(releases) {
            guard let release = releases[agent] else { continue }
            guard let digest = Hex.decode(release.sha256), digest.count == 32 else {
                return "\(agent): the plan's sha256 is not 64 hex digits"
            }
            if let reason = await fetch(FetchRequestInput(agent: agent, version: version, url: release.url, sha256: digest, by: by)) {
                return "\(agent) \(version): \(reason)"
            }
        }
        return nil
    }

    private struct FetchRequestInput { var agent, version, url: String; var sha256: [UInt8]; var by: String }

    /// One release: stored already (the same bytes), or fetched now and awaited. A
    /// release put in place by hand has no digest to compare: it is taken as it is (the
    /// operator put it there), as a machine rollout would.
    private func fetch(_ input: FetchRequestInput) async -> String? {
        let releases = supervisor.releases
        if releases.store.exists(agent: input.agent, version: input.version),
           releases.store.manifest(agent: input.agent, version: input.version) == nil {
            return nil
        }
        let request = Releases.FetchRequest(agent: input.agent, version: input.version, url: input.url, sha256: input.sha256,
                                            signature: nil, irreversible: false, by: input.by)
        do throws(ReleaseRefusal) {
            if case .stored = try await releases.fetch(request) { return nil }
        } catch .busy {
            // Another fetch of it runs (an operator's, or ours before a restart): await it.
        } catch {
            return error.description
        }
        while true {
            do throws(ReleaseRefusal) {
                let view = try releases.view(agent: input.agent, version: input.version)
                switch view.state {
                case .stored: return nil
                case .failed: return view.fetch?.error ?? "the fetch failed"
                case .fetching: break
                }
            } catch .notFound {
                // Between the claim's end and the store: look again.
            } catch {
                return error.description
            }
            try? await Task.sleep(for: .milliseconds(200))
        }
    }

    public func upgrade(version: String, by: String, barrier: FleetBarrierHook?) async -> FleetUpgradeOutcome {
        var attempts = 0
        while true {
            attempts += 1
            do throws(RolloutRefusal) {
                let begun = try await rollouts.begin(version: version, barrier: barrier != nil, by: by, fleetBarrier: barrier)
                guard let id = begun.pending?.id else { return .failed("the rollout ended at once") }
                return await awaitEnd(id)
            } catch .inProgress(let id, _) where attempts < 3 && id.hasPrefix("machine-") {
                // An operator's rollout runs here: the fleet's waits for its end.
                _ = await awaitEnd(id)
            } catch {
                return .failed(error.description)
            }
        }
    }

    public func ended(by: String) -> FleetUpgradeOutcome? {
        rollouts.view.history.last { $0.by == by }.map(Self.outcome)
    }

    public func running(by: String) -> String? {
        guard let pending = rollouts.view.pending, pending.by == by else { return nil }
        return pending.id
    }

    public func rejoinBarrier(_ id: String, _ hook: @escaping FleetBarrierHook) async {
        await rollouts.rejoinFleetBarrier(id, hook)
    }

    public func awaitEnd(_ id: String) async -> FleetUpgradeOutcome {
        guard let summary = await rollouts.awaitEnd(id) else { return .failed("the machine rollout \(id) was not found") }
        return Self.outcome(summary)
    }

    static func outcome(_ summary: RolloutSummary) -> FleetUpgradeOutcome {
        switch summary.outcome {
        case .done: .done
        case .restored: .restored(summary.error ?? "the migration failed")
        default: .failed(summary.error ?? "the rollout \(summary.outcome.rawValue)")
        }
    }
}
