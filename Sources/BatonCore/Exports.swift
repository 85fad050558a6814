// The API's JSON bodies live in BatonWire, a Foundation-only target the agent library and
// the CLI use without the rest of the core; the ledger's records and views are built of
// them, so everything that imports the core sees them too.
@_exported import BatonWire

extension AgentView {
    /// The view of a configured agent, from what the ledger knows of it.
    public init(name: String, ledger: AgentLedger?, config: Config) {
        self.init(
            name: name, desired: ledger?.desired, running: ledger?.running, state: .stopped,
            instances: (ledger?.instances.values.sorted { $0.id < $1.id } ?? []).map {
                Instance(id: $0.id, pid: $0.pid, version: $0.version, state: $0.state.rawValue, startedAt: $0.startedAt)
            },
            lastError: ledger?.lastError, rewound: ledger?.rewound, failed: ledger?.failed,
            condition: Condition(status: .ok), config: config)
    }
}
