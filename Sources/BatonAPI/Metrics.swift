import Foundation
import BatonCore
import BatonFleet
import BatonHTTP
import BatonLedger
import BatonSupervisor
import Synchronization

/// batond's Prometheus metrics (docs/operations.md lists every family). Counters of this
/// run live here and in `SupervisorStats` and start at 0 with each batond; what derives
/// from the ledger (versions, states, the last handoff) survives restarts. Gauges are read
/// when scraped.
public final class Metrics: Sendable {
    /// Requests are counted by route identity, method and status: the hot path hashes
    /// a pointer and two small integers, never a string.
    private struct Key: Hashable {
        let route: ObjectIdentifier?
        let method: UInt8
        let status: UInt16
    }

    private struct Requests {
        /// Each key's latencies; their count is the key's request count.
        var served: [Key: Histogram] = [:]
        var templates: [ObjectIdentifier: String] = [:]
    }

    private static let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"]
    static let requestBounds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
    private let requests = Mutex(Requests())
    private let streams = Mutex<(@Sendable () -> Int)?>(nil)

    public init() {}

    public func recordRequest(route: Route?, method: String, status: Int, duration: Duration) {
        // Unknown methods would otherwise mint unbounded label values.
        let methodIndex = UInt8(Self.methods.firstIndex(of: method) ?? Self.methods.count - 1)
        let key = Key(route: route.map(ObjectIdentifier.init), method: methodIndex, status: UInt16(clamping: status))
        let (seconds, attoseconds) = duration.components
        let value = Double(seconds) + Double(attoseconds) / 1e18
        requests.withLock { requests in
            requests.served[key, default: Histogram(bounds: Self.requestBounds)].observe(value)
            if let route, requests.templates[ObjectIdentifier(route)] == nil {
                requests.templates[ObjectIdentifier(route)] = route.template
            }
        }
    }

    /// Where `baton_http_event_streams` reads the number of open Server-Sent Events
    /// streams (0 until a source is installed).
    public func countStreams(with source: @escaping @Sendable () -> Int) {
        streams.withLock { $0 = source }
    }

    var openStreams: Int { streams.withLock { $0 }?() ?? 0 }

    struct Gauges {
        var startedAt: Timestamp
        var now: Timestamp
        var ledger: Ledger.Metrics
        var lastSeq: UInt64
        var ledgerWritable: Bool
        var parked: Int
        var listeners: [ListenerStats]
        /// Each configured agent's view, by name.
        var views: [AgentView]
        /// What the ledger knows of each agent (its last handoffs).
        var history: [String: AgentLedger]
        var supervisor: SupervisorStats.Snapshot
        /// Fleet mode's, when it is on.
        var fleet: FleetGauges? = nil
    }

    /// The text exposition format, version 0.0.4.
    func render(_ gauges: Gauges) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        /// One histogram's samples; `labels` is empty or `name="value",...`.
        func samples(_ name: String, _ labels: String, _ values: Histogram) {
            let prefix = labels.isEmpty ? "" : labels + ","
            for (bound, count) in values.cumulative {
                out += "\(name)_bucket{\(prefix)le=\"\(bound.isInfinite ? "+Inf" : format(bound))\"} \(count)\n"
            }
            let braces = labels.isEmpty ? "" : "{\(labels)}"
            out += "\(name)_sum\(braces) \(format(values.sum))\n\(name)_count\(braces) \(values.count)\n"
        }
        func histogram(_ name: String, _ help: String, _ values: Histogram) {
            family(name, "histogram", help)
            samples(name, "", values)
        }
        /// A family with one unlabelled sample.
        func single(_ name: String, _ type: String, _ help: String, _ value: String) {
            family(name, type, help)
            out += "\(name) \(value)\n"
        }
        /// A family with one sample per agent.
        func perAgent(_ name: String, _ type: String, _ help: String, _ value: (AgentView) -> String?) {
            family(name, type, help)
            for view in gauges.views {
                if let value = value(view) { out += "\(name){agent=\"\(escape(view.name))\"} \(value)\n" }
            }
        }
        let agents = gauges.views.map(\.name)

        // batond
        family("baton_build_info", "gauge", "batond's version; always 1.")
        out += "baton_build_info{version=\"\(escape(BatonVersion.current))\",swift=\"\(escape(swiftVersion))\"} 1\n"
        single("baton_start_time_seconds", "gauge", "When batond started, in seconds since the epoch.",
               format(gauges.startedAt.seconds))
        single("baton_uptime_seconds", "gauge", "Seconds since batond started.",
               format(Double(gauges.now.milliseconds - gauges.startedAt.milliseconds) / 1000))

        // HTTP
        let snapshot = requests.withLock { $0 }
        let served = snapshot.served.map { key, latencies in
            (route: key.route.flatMap { snapshot.templates[$0] } ?? "unmatched", method: Self.methods[Int(key.method)],
             code: Int(key.status), latencies: latencies)
        }.sorted { ($0.route, $0.method, $0.code) < ($1.route, $1.method, $1.code) }
        func labels(_ entry: (route: String, method: String, code: Int, latencies: Histogram)) -> String {
            "route=\"\(escape(entry.route))\",method=\"\(entry.method)\",code=\"\(entry.code)\""
        }
        family("baton_http_requests_total", "counter",
               "HTTP requests answered since start, by route pattern (\"unmatched\" for none), method and status code.")
        for entry in served {
            out += "baton_http_requests_total{\(labels(entry))} \(entry.latencies.count)\n"
        }
        family("baton_http_request_duration_seconds", "histogram",
               "Time from a request's head received to its answer queued, by route pattern, method and status code; a long-poll's wait included.")
        for entry in served {
            samples("baton_http_request_duration_seconds", labels(entry), entry.latencies)
        }
        single("baton_http_parked_requests", "gauge", "Long-poll requests parked right now.", "\(gauges.parked)")
        single("baton_http_event_streams", "gauge", "Server-Sent Events streams open right now (GET /v1/events).", "\(openStreams)")
        family("baton_http_connections", "gauge", "Connections open right now, by listener.")
        for stats in gauges.listeners {
            out += "baton_http_connections{listener=\"\(escape(stats.listener))\"} \(stats.open)\n"
        }
        family("baton_http_connections_closed_total", "counter",
               "Connections batond closed before answering since start, by listener and reason (head_deadline, body_deadline, abandoned, evicted, refused, peer_cap).")
        for stats in gauges.listeners {
            for reason in ConnectionClosure.allCases {
                out += "baton_http_connections_closed_total{listener=\"\(escape(stats.listener))\",reason=\"\(reason.rawValue)\"} \(stats.closed[reason] ?? 0)\n"
            }
        }

        // The ledger
        single("baton_ledger_appends_total", "counter", "Records appended to the ledger since start.", "\(gauges.ledger.appends)")
        single("baton_ledger_fsync_batches_total", "counter", "Group-commit batches written since start (one fdatasync each).",
               "\(gauges.ledger.batches)")
        single("baton_ledger_last_seq", "gauge", "Sequence number of the newest ledger record (kept across restarts).", "\(gauges.lastSeq)")
        single("baton_ledger_writable", "gauge", "1 when the ledger accepts records, 0 after a failed write.",
               gauges.ledgerWritable ? "1" : "0")
        single("baton_ledger_failures_total", "counter",
               "Ledger writes or fsyncs that failed since start (records are refused until a probe write succeeds).",
               "\(gauges.ledger.failures)")
        single("baton_ledger_recovery_attempts_total", "counter", "Probe writes tried since start while the ledger could not write.",
               "\(gauges.ledger.recoveryAttempts)")
        single("baton_ledger_recoveries_total", "counter", "Probe writes that succeeded since start: the ledger wrote again without a restart.",
               "\(gauges.ledger.recoveries)")
        histogram("baton_ledger_append_seconds", "Time from an append queued to its records durable (batch wait, write and fdatasync).",
                  gauges.ledger.appendSeconds)
        histogram("baton_ledger_fsync_seconds", "Time of the fdatasync of one ledger batch.", gauges.ledger.fsyncSeconds)

        // Agents
        family("baton_agents", "gauge", "Agents declared in the configuration, by state (every state, 0 when none is in it).")
        var byState: [AgentView.State: Int] = [:]
        for view in gauges.views { byState[view.state, default: 0] += 1 }
        for state in AgentView.State.allCases {
            out += "baton_agents{state=\"\(state.rawValue)\"} \(byState[state] ?? 0)\n"
        }
        perAgent("baton_agent_instances", "gauge", "Live instances (processes) of each agent.") { "\($0.instances.count)" }
        family("baton_agent_running_info", "gauge", "1 for the version each agent's working instance runs.")
        for view in gauges.views {
            if let running = view.running?.version {
                out += "baton_agent_running_info{agent=\"\(escape(view.name))\",version=\"\(escape(running))\"} 1\n"
            }
        }
        family("baton_agent_socket_open", "gauge",
               "1 while batond holds an agent's listening socket (listen), 0 while it cannot bind it; by agent, name and address.")
        for view in gauges.views {
            for socket in view.sockets {
                out += "baton_agent_socket_open{agent=\"\(escape(view.name))\",name=\"\(escape(socket.name))\",address=\"\(escape(socket.address))\"} \(socket.open ? 1 : 0)\n"
            }
        }
        perAgent("baton_agent_degraded", "gauge",
                 "1 while an agent is not where it was asked to be (the desired version does not work, nothing works, a crash-loop verdict stands).") {
            $0.condition.status == .degraded ? "1" : "0"
        }
        perAgent("baton_agent_restarts_total", "counter",
                 "Restarts by supervision since start, after an unexpected exit or failed start.") {
            "\(gauges.supervisor.restarts[$0.name] ?? 0)"
        }
        perAgent("baton_agent_rewinds_total", "counter",
                 "Crash loops since start after which batond handed back to the previous release by itself.") {
            "\(gauges.supervisor.rewinds[$0.name] ?? 0)"
        }
        perAgent("baton_agent_effects_waiting", "gauge",
                 "Effects (signals, spawns, a current flip) decided but waiting for the ledger to write again.") {
            "\(gauges.supervisor.effectsWaiting[$0.name] ?? 0)"
        }

        // Handoffs
        family("baton_handoffs_total", "counter", "Handoffs ended since start, by agent, mode and outcome.")
        for agent in agents {
            let counts = gauges.supervisor.handoffs[agent] ?? [:]
            for mode in HandoffMode.allCases {
                for outcome in HandoffOutcome.allCases {
                    let count = counts[.init(mode: mode, outcome: outcome)] ?? 0
                    out += "baton_handoffs_total{agent=\"\(escape(agent))\",mode=\"\(mode.rawValue)\",outcome=\"\(outcome.rawValue)\"} \(count)\n"
                }
            }
        }
        family("baton_handoff_duration_seconds", "histogram", "Handoffs ended since start, began to outcome (any outcome), by mode.")
        for mode in HandoffMode.allCases {
            samples("baton_handoff_duration_seconds", "mode=\"\(mode.rawValue)\"",
                    gauges.supervisor.durationSeconds[mode] ?? Histogram(bounds: SupervisorStats.Snapshot.durationBounds))
        }
        family("baton_handoff_gap_seconds", "histogram",
               "Gap of handoffs committed since start, old instance gone to successor told go, by mode.")
        for mode in HandoffMode.allCases {
            samples("baton_handoff_gap_seconds", "mode=\"\(mode.rawValue)\"",
                    gauges.supervisor.gapSeconds[mode] ?? Histogram(bounds: SupervisorStats.Snapshot.gapBounds))
        }
        perAgent("baton_handoff_last_success_timestamp_seconds", "gauge",
                 "When each agent's last committed handoff ended, in seconds since the epoch (from the ledger; absent before the first).") {
            gauges.history[$0.name]?.running.map { format($0.since.seconds) }
        }
        family("baton_handoff_last_outcome", "gauge",
               "1 for the outcome of each agent's last ended handoff, 0 for the others (from the ledger; absent before the first).")
        for agent in agents {
            guard let last = gauges.history[agent]?.history.last?.outcome else { continue }
            for outcome in HandoffOutcome.allCases {
                out += "baton_handoff_last_outcome{agent=\"\(escape(agent))\",outcome=\"\(outcome.rawValue)\"} \(outcome == last ? 1 : 0)\n"
            }
        }

        // The fleet (only in fleet mode)
        if let fleet = gauges.fleet {
            single("baton_fleet_connected", "gauge", "1 while etcd answers this batond, 0 while it cannot be reached (agents stay as they are).",
                   fleet.connected ? "1" : "0")
            if let last = fleet.lastContact {
                single("baton_fleet_last_contact_timestamp_seconds", "gauge", "When etcd last answered, in seconds since the epoch.",
                       format(last.seconds))
            }
            single("baton_fleet_coordinator", "gauge", "1 while this host is the fleet's elected coordinator.", fleet.coordinator ? "1" : "0")
            if let hosts = fleet.hosts {
                single("baton_fleet_hosts", "gauge", "Hosts registered in the fleet, as this host last read them.", "\(hosts)")
            }
            if let id = fleet.planID, let version = fleet.planVersion {
                family("baton_fleet_plan_info", "gauge", "1 for the fleet's plan (its id and version) as this host last read it.")
                out += "baton_fleet_plan_info{plan=\"\(escape(id))\",version=\"\(escape(version))\"} 1\n"
            }
            family("baton_fleet_rollout_phase", "gauge", "1 for the phase the coordinator has the fleet's rollout in, 0 for the others.")
            for phase in FleetRolloutState.Phase.allCases {
                out += "baton_fleet_rollout_phase{phase=\"\(phase.rawValue)\"} \(fleet.rolloutPhase == phase ? 1 : 0)\n"
            }
            family("baton_fleet_host_phase", "gauge", "1 for where this host is in the fleet's rollout, 0 for the others.")
            for phase in FleetHostStatus.Rollout.Phase.allCases {
                out += "baton_fleet_host_phase{phase=\"\(phase.rawValue)\"} \(fleet.hostPhase == phase ? 1 : 0)\n"
            }
            single("baton_fleet_etcd_requests_total", "counter", "Requests this batond sent to etcd (each call, and each watch (re)connect).",
                   "\(fleet.etcdRequests)")
            single("baton_fleet_refused_writes_total", "counter",
                   "Coordinator writes etcd refused because this host no longer held the leader key.", "\(fleet.refusedWrites)")
        }
        return out
    }

    private func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }

    private func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }

    private var swiftVersion: String {
        #if swift(>=6.3)
        "6.3"
        #elseif swift(>=6.2)
        "6.2"
        #else
        "6"
        #endif
    }
}

