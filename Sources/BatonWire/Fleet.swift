/// Fleet mode: the values batond keeps in etcd, as JSON (WireJSON: snake_case), and the
/// fleet's view in the API (`GET /v1/fleet`). The key layout under `<prefix>/<fleet>/`:
///
/// - `plan/desired`: the desired fleet version (`FleetPlan`), written by `PUT /v1/fleet`
///   through a transaction guarded by the revision the writer read;
/// - `plan/rollout`: where the coordinator has the rollout of that plan
///   (`FleetRolloutState`), written only through a transaction that compares the
///   coordinator's leader key. Hosts watch `plan/` alone, and read both at one revision;
/// - `coordinator`: the leader key (the coordinator's host name), under its lease;
/// - `hosts/<host>`: each host's status (`FleetHostStatus`), under the host's lease;
/// - `slots/<n>`: max-unavailable slots (value: the holder's host name), under its lease;
/// - `barrier/<plan id>/halted/<host>`: `FleetHalted`, under the host's lease;
/// - `barrier/<plan id>/migration`: the claim (the host name), created once, never under a
///   lease: the migration runs at most once even if its runner dies;
/// - `barrier/<plan id>/outcome`: `FleetMigrationOutcome`, written by the claimer.

/// Where the bytes of one agent's release come from: every host fetches the same URL and
/// verifies the same digest.
public struct FleetRelease: Codable, Sendable, Equatable {
    public var url: String
    /// Lower-case hex SHA-256 of the archive.
    public var sha256: String

    public init(url: String, sha256: String) { self.url = url; self.sha256 = sha256 }
}

/// One version of the fleet with its sources.
public struct FleetVersion: Codable, Sendable, Equatable {
    public var version: String
    /// agent name → release source.
    public var releases: [String: FleetRelease]

    public init(version: String, releases: [String: FleetRelease]) { self.version = version; self.releases = releases }
}

/// The desired fleet version (`<prefix>/<fleet>/plan/desired`).
public struct FleetPlan: Codable, Sendable, Equatable {
    /// `fleet-<n>`, one more than the plan it replaced: a new id is a new rollout.
    public var id: String
    public var version: String
    public var releases: [String: FleetRelease]
    /// A migrating upgrade: every host halts, the migration runs once, then every host
    /// starts the new version.
    public var barrier: Bool
    /// Hosts in the first wave (hosts labelled `canary` first, then by name); 0: none.
    public var canary: Int
    /// At most this many hosts are mid-handoff at once (slot keys); at least 1.
    public var maxUnavailable: Int
    /// How long the canary wave must run the new version without a failure or a rewind
    /// before the rollout goes on, in milliseconds.
    public var soakMs: Int64
    /// Failed hosts after the canary wave that are tolerated; one more pauses the rollout.
    public var failureThreshold: Int
    /// Hosts the barrier does not wait for (gone for good; the operator decides).
    public var exclude: [String]
    /// What the fleet ran before (`baton fleet rollback` sets it again).
    public var previous: FleetVersion?
    public var by: String
    public var at: Timestamp

    public init(id: String, version: String, releases: [String: FleetRelease], barrier: Bool = false, canary: Int = 0,
                maxUnavailable: Int = 1, soakMs: Int64 = 0, failureThreshold: Int = 0, exclude: [String] = [],
                previous: FleetVersion? = nil, by: String, at: Timestamp) {
        self.id = id; self.version = version; self.releases = releases; self.barrier = barrier; self.canary = canary
        self.maxUnavailable = maxUnavailable; self.soakMs = soakMs; self.failureThreshold = failureThreshold
        self.exclude = exclude; self.previous = previous; self.by = by; self.at = at
    }

    /// The sequence number in `id` (`fleet-7` → 7); 0 for none.
    public var number: Int { Int(id.dropFirst("fleet-".count)) ?? 0 }

    /// Who a host's machine rollout for this plan is asked by, in its ledger:
    /// `fleet fleet-7 (who set the plan)`.
    public var rolloutBy: String { "fleet \(id) (\(by))" }

    /// Whether a machine rollout asked `by` this is a step of a fleet's plan.
    public static func isRolloutBy(_ by: String) -> Bool { by.hasPrefix("fleet fleet-") }
}

/// Where the coordinator has the rollout of a plan (`<prefix>/<fleet>/plan/rollout`).
public struct FleetRolloutState: Codable, Sendable, Equatable {
    public enum Phase: String, Codable, Sendable, CaseIterable {
        /// The canary wave (`admitted`) upgrades.
        case canary
        /// The canary wave upgraded; the rollout waits out the soak (`soakUntil`).
        case soaking
        /// Every host may upgrade, at most `maxUnavailable` at once.
        case rolling
        /// Barrier: every host halts its agents and reports `halted/<host>`.
        case halting
        /// Barrier: every host is halted; one host claims the migration and runs it.
        case migrating
        /// Barrier: the migration succeeded (or there was none): every host starts the new version.
        case proceeding
        /// Barrier: the migration failed (or its outcome is unknown): every host starts its previous versions.
        case restoring
        /// A failure stopped the rollout (`reason`): no host begins it any more.
        case paused
        /// Final: every host reported the new version.
        case done
        /// Final (barrier): every host was told to start its previous versions.
        case restored

        public var isFinal: Bool { self == .done || self == .restored }
    }

    /// The plan's id and version.
    public var id: String
    public var version: String
    public var phase: Phase
    /// Canary: the hosts of the first wave. Barrier: the hosts it waits for (those
    /// registered when it began, and every host that registered since).
    public var admitted: [String]
    /// Every host may begin it (rolling, and the barrier's phases).
    public var all: Bool
    /// When the soak ends (soaking).
    public var soakUntil: Timestamp?
    /// Hosts whose upgrade failed or rewound, with why.
    public var failed: [String: String]
    /// Why the rollout paused, or why the barrier restored.
    public var reason: String?
    /// The host that wrote this state.
    public var coordinator: String
    public var updatedAt: Timestamp

    public init(id: String, version: String, phase: Phase, admitted: [String] = [], all: Bool = false,
                soakUntil: Timestamp? = nil, failed: [String: String] = [:], reason: String? = nil, coordinator: String,
                updatedAt: Timestamp) {
        self.id = id; self.version = version; self.phase = phase; self.admitted = admitted; self.all = all
        self.soakUntil = soakUntil; self.failed = failed; self.reason = reason; self.coordinator = coordinator
        self.updatedAt = updatedAt
    }

    /// Whether `host` may begin a plain upgrade (a machine rollout without the barrier) to
    /// this version now: in the canary wave if admitted, while rolling, and after the end,
    /// so a host that joins late (or comes back from a partition) converges; once the
    /// barrier proceeds, a host that was not halted with the others upgrades the plain way.
    /// The barrier's own steps are driven by `phase`, not by this.
    public func admits(_ host: String) -> Bool {
        switch phase {
        case .canary, .rolling: all || admitted.contains(host)
        case .done, .proceeding: true
        case .soaking, .halting, .migrating, .restoring, .paused, .restored: false
        }
    }
}

/// What one host says about itself (`<prefix>/<fleet>/hosts/<host>`).
public struct FleetHostStatus: Codable, Sendable, Equatable {
    public struct Agent: Codable, Sendable, Equatable {
        public var name: String
        /// The version its working instance runs; nil: none works.
        public var running: String?
        public var desired: String?
        public var state: AgentView.State
        /// Whether a crash-loop rewind verdict stands for it.
        public var rewound: Bool

        public init(name: String, running: String?, desired: String?, state: AgentView.State, rewound: Bool) {
            self.name = name; self.running = running; self.desired = desired; self.state = state; self.rewound = rewound
        }
    }

    /// Where this host is in the fleet's rollout `id`.
    public struct Rollout: Codable, Sendable, Equatable {
        public enum Phase: String, Codable, Sendable, CaseIterable {
            /// Not admitted yet (or paused): nothing begun.
            case waiting
            /// Fetching the plan's releases.
            case fetching
            /// Waiting for a max-unavailable slot.
            case waitingSlot = "waiting_slot"
            /// Its agents are being handed over (a machine rollout runs).
            case handingOver = "handing_over"
            /// Barrier: halting its agents, then halted (waiting for the fleet).
            case halting
            case halted
            /// Barrier: this host runs the fleet's migration.
            case migrating
            /// Barrier: starting the new (proceeding) or previous (restoring) versions.
            case starting
            case restoring
            /// Final for this host: on the new version.
            case done
            /// Final for this host: the upgrade failed (`error`); its agents are as the
            /// machine rules left them (on their previous versions).
            case failed
            /// Final (barrier): back on the previous versions.
            case restored

            public var isFinal: Bool { self == .done || self == .failed || self == .restored }
        }

        public var id: String
        public var version: String
        public var phase: Phase
        public var error: String?

        public init(id: String, version: String, phase: Phase, error: String? = nil) {
            self.id = id; self.version = version; self.phase = phase; self.error = error
        }
    }

    public var host: String
    public var labels: [String: String]
    public var batondVersion: String
    /// The machine's version (the last completed machine rollout's).
    public var machineVersion: String?
    public var agents: [Agent]
    public var rollout: Rollout?
    /// When this status was written (at least every `heartbeat` interval).
    public var updatedAt: Timestamp

    public init(host: String, labels: [String: String], batondVersion: String, machineVersion: String?, agents: [Agent],
                rollout: Rollout?, updatedAt: Timestamp) {
        self.host = host; self.labels = labels; self.batondVersion = batondVersion; self.machineVersion = machineVersion
        self.agents = agents; self.rollout = rollout; self.updatedAt = updatedAt
    }
}

/// A halted host at the barrier (`barrier/<id>/halted/<host>`).
public struct FleetHalted: Codable, Sendable, Equatable {
    /// Whether this host has a migration to run for the plan's version.
    public var migration: Bool
    public init(migration: Bool) { self.migration = migration }
}

/// The migration's end (`barrier/<id>/outcome`), written by the host that claimed it.
public struct FleetMigrationOutcome: Codable, Sendable, Equatable {
    public var host: String
    public var ok: Bool
    public var detail: String
    public init(host: String, ok: Bool, detail: String) { self.host = host; self.ok = ok; self.detail = detail }
}

// MARK: - The API

/// This host in its fleet, as `/v1/status` shows it (from what this batond last saw:
/// no request to etcd).
public struct FleetSummary: Codable, Sendable, Equatable {
    public var fleet: String
    public var host: String
    /// Whether etcd answered this batond's last request; while it does not, the agents
    /// stay as they are and nothing of the fleet's plan is begun.
    public var connected: Bool
    public var lastContact: Timestamp?
    public var error: String?
    public var coordinator: Bool
    public var planId: String?
    public var planVersion: String?
    public var rolloutPhase: FleetRolloutState.Phase?
    /// Where this host is in the fleet's rollout.
    public var hostPhase: FleetHostStatus.Rollout.Phase?

    public init(fleet: String, host: String, connected: Bool, lastContact: Timestamp?, error: String?, coordinator: Bool,
                planId: String?, planVersion: String?, rolloutPhase: FleetRolloutState.Phase?,
                hostPhase: FleetHostStatus.Rollout.Phase?) {
        self.fleet = fleet; self.host = host; self.connected = connected; self.lastContact = lastContact; self.error = error
        self.coordinator = coordinator; self.planId = planId; self.planVersion = planVersion; self.rolloutPhase = rolloutPhase
        self.hostPhase = hostPhase
    }
}

/// `GET /v1/fleet`: the fleet as this batond sees it.
public struct FleetView: Codable, Sendable, Equatable {
    public var fleet: String
    /// This host's name in the fleet.
    public var host: String
    /// Whether etcd answered this batond's last request.
    public var connected: Bool
    /// Why it did not.
    public var error: String?
    /// The last time etcd answered.
    public var lastContact: Timestamp?
    /// Whether the plan, the rollout and the hosts below were read now (false: as last
    /// read, etcd cannot be reached).
    public var fresh: Bool
    /// The revision they were read at (the plan's `expect_revision` guard takes it).
    public var revision: Int64
    /// The revision the plan was last written at (0: there is none).
    public var planRevision: Int64
    /// The host that coordinates the fleet now.
    public var coordinator: String?
    public var plan: FleetPlan?
    public var rollout: FleetRolloutState?
    /// Every registered host (those whose lease lives), by name.
    public var hosts: [FleetHostStatus]

    public init(fleet: String, host: String, connected: Bool, error: String?, lastContact: Timestamp?, fresh: Bool,
                revision: Int64, planRevision: Int64, coordinator: String?, plan: FleetPlan?, rollout: FleetRolloutState?,
                hosts: [FleetHostStatus]) {
        self.fleet = fleet; self.host = host; self.connected = connected; self.error = error; self.lastContact = lastContact
        self.fresh = fresh; self.revision = revision; self.planRevision = planRevision; self.coordinator = coordinator
        self.plan = plan; self.rollout = rollout; self.hosts = hosts
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(fleet, forKey: .fleet)
        try c.encode(host, forKey: .host)
        try c.encode(connected, forKey: .connected)
        try c.encode(error, forKey: .error)
        try c.encode(lastContact, forKey: .lastContact)
        try c.encode(fresh, forKey: .fresh)
        try c.encode(revision, forKey: .revision)
        try c.encode(planRevision, forKey: .planRevision)
        try c.encode(coordinator, forKey: .coordinator)
        try c.encode(plan, forKey: .plan)
        try c.encode(rollout, forKey: .rollout)
        try c.encode(hosts, forKey: .hosts)
    }
}

/// `PUT /v1/fleet`: a new desired fleet version.
public struct FleetSetRequest: Codable, Sendable, Equatable {
    public struct Source: Codable, Sendable, Equatable {
        public var url: String?
        public var sha256: String?
        public init(url: String? = nil, sha256: String? = nil) { self.url = url; self.sha256 = sha256 }
    }

    public var version: String
    /// Per agent, where its release is and its digest. What is left out is completed from
    /// `url_template` and from the release of that version stored on this machine.
    public var releases: [String: Source]?
    /// `{agent}` and `{version}` expand: e.g. `https://releases.example/{agent}/{version}.tar.gz`.
    public var urlTemplate: String?
    /// The agents the plan moves; default: every agent named in `releases`, else every
    /// agent this batond starts.
    public var agents: [String]?
    public var barrier: Bool?
    public var canary: Int?
    public var maxUnavailable: Int?
    public var soakMs: Int64?
    public var failureThreshold: Int?
    public var exclude: [String]?
    /// Refuse unless the plan is still the one written at this revision (`plan_revision`
    /// in `GET /v1/fleet`; 0: there must be none).
    public var expectRevision: Int64?

    public init(version: String, releases: [String: Source]? = nil, urlTemplate: String? = nil, agents: [String]? = nil,
                barrier: Bool? = nil, canary: Int? = nil, maxUnavailable: Int? = nil, soakMs: Int64? = nil,
                failureThreshold: Int? = nil, exclude: [String]? = nil, expectRevision: Int64? = nil) {
        self.version = version; self.releases = releases; self.urlTemplate = urlTemplate; self.agents = agents
        self.barrier = barrier; self.canary = canary; self.maxUnavailable = maxUnavailable; self.soakMs = soakMs
        self.failureThreshold = failureThreshold; self.exclude = exclude; self.expectRevision = expectRevision
    }
}

/// `POST /v1/fleet/rollback`: the plan's previous version again, as a new plan.
public struct FleetRollbackRequest: Codable, Sendable, Equatable {
    public var maxUnavailable: Int?
    public var expectRevision: Int64?
    public init(maxUnavailable: Int? = nil, expectRevision: Int64? = nil) {
        self.maxUnavailable = maxUnavailable; self.expectRevision = expectRevision
    }
}

/// `POST /v1/fleet/exclude`: hosts the plan's barrier no longer waits for (same plan).
public struct FleetExcludeRequest: Codable, Sendable, Equatable {
    public var hosts: [String]
    public init(hosts: [String]) { self.hosts = hosts }
}
