import BatonConfig
import BatonCore
import BatonEtcd
import Foundation

/// The fleet's keys in etcd, all under `<prefix>/<fleet>/` (the layout is described with
/// the values, in BatonWire's Fleet.swift, and in docs/fleet.md).
public struct FleetKeys: Sendable, Equatable {
    /// `<prefix>/<fleet>/`.
    public let root: String

    public init(root: String) { self.root = root }
    public init(_ settings: BatondConfig.FleetSettings) { self.root = settings.keyRoot }

    /// What hosts watch: the plan and the coordinator's rollout state.
    public var planFolder: String { root + "plan/" }
    public var plan: String { planFolder + "desired" }
    public var rollout: String { planFolder + "rollout" }
    public var coordinator: String { root + "coordinator" }
    public var hosts: String { root + "hosts/" }
    public func host(_ name: String) -> String { hosts + name }
    public var slots: String { root + "slots/" }
    public func slot(_ index: Int) -> String { slots + String(index) }
    public func barrier(_ plan: String) -> String { root + "barrier/\(plan)/" }
    public func halted(_ plan: String) -> String { barrier(plan) + "halted/" }
    public func halted(_ plan: String, host: String) -> String { halted(plan) + host }
    public func migration(_ plan: String) -> String { barrier(plan) + "migration" }
    public func outcome(_ plan: String) -> String { barrier(plan) + "outcome" }

    /// The last segment of `key` under `folder`, if it is directly there.
    func name(of key: String, in folder: String) -> String? {
        guard key.hasPrefix(folder) else { return nil }
        let rest = key.dropFirst(folder.count)
        return rest.isEmpty || rest.contains("/") ? nil : String(rest)
    }
}

/// Every fleet value, as one range of the fleet's prefix read them (one revision): what
/// the coordinator decides from and what `GET /v1/fleet` shows.
struct FleetContents {
    var revision: Int64
    var plan: FleetPlan?
    /// The revision the plan was last written at (0: there is none).
    var planRevision: Int64 = 0
    var state: FleetRolloutState?
    /// The leader key.
    var coordinator: EtcdKeyValue?
    /// Registered hosts, by name.
    var hosts: [FleetHostStatus] = []
    /// The plan's barrier keys.
    var halted: [String: FleetHalted] = [:]
    var migrationClaim: String?
    var migrationOutcome: FleetMigrationOutcome?
    /// Keys whose values this batond cannot read (written by a newer one, or by hand):
    /// never to be taken for absent ones.
    var unreadable: [String] = []

    init(_ range: EtcdRange, keys: FleetKeys) {
        revision = range.revision
        var unreadable: [String] = []
        func decode<T: Decodable>(_ type: T.Type, _ kv: EtcdKeyValue) -> T? {
            guard let value = try? WireJSON.decoder.decode(type, from: Data(kv.value)) else {
                unreadable.append(kv.key)
                return nil
            }
            return value
        }
        var values: [String: EtcdKeyValue] = [:]
        for kv in range.kvs { values[kv.key] = kv }
        if let kv = values[keys.plan] {
            plan = decode(FleetPlan.self, kv)
            planRevision = kv.modRevision
        }
        state = values[keys.rollout].flatMap { decode(FleetRolloutState.self, $0) }
        coordinator = values[keys.coordinator]
        for kv in range.kvs where keys.name(of: kv.key, in: keys.hosts) != nil {
            if let status = decode(FleetHostStatus.self, kv) { hosts.append(status) }
        }
        hosts.sort { $0.host < $1.host }
        if let plan {
            for kv in range.kvs {
                guard let host = keys.name(of: kv.key, in: keys.halted(plan.id)), let value = decode(FleetHalted.self, kv) else { continue }
                halted[host] = value
            }
            migrationClaim = values[keys.migration(plan.id)]?.string
            migrationOutcome = values[keys.outcome(plan.id)].flatMap { decode(FleetMigrationOutcome.self, $0) }
        }
        self.unreadable = unreadable
    }
}
