import BatonConfig

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
