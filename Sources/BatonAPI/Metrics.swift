import Foundation
import BatonCore
import BatonHTTP
import BatonLedger
import BatonSupervisor
import Synchronization

/// batond's Prometheus metrics. Counters live here; gauges are read when scraped.
public final class Metrics: Sendable {
    /// Requests are counted by route identity, method and status: the hot path hashes
    /// a pointer and two small integers, never a string.
    private struct Key: Hashable {
        let route: ObjectIdentifier?
        let method: UInt8
        let status: UInt16
    }

    private struct Requests {
        var counts: [Key: UInt64] = [:]
        var templates: [ObjectIdentifier: String] = [:]
    }

    private static let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"]
    private let requests = Mutex(Requests())

    public init() {}

    public func recordRequest(route: Route?, method: String, status: Int) {
        // Unknown methods would otherwise mint unbounded label values.
        let methodIndex = UInt8(Self.methods.firstIndex(of: method) ?? Self.methods.count - 1)
        let key = Key(route: route.map(ObjectIdentifier.init), method: methodIndex, status: UInt16(clamping: status))
        requests.withLock { requests in
            requests.counts[key, default: 0] += 1
            if let route, requests.templates[ObjectIdentifier(route)] == nil {
                requests.templates[ObjectIdentifier(route)] = route.template
            }
        }
    }

    struct Gauges {
        var startedAt: Timestamp
        var now: Timestamp
        var ledger: Ledger.Metrics
        var lastSeq: UInt64
        var ledgerWritable: Bool
        var parked: Int
        var listeners: [ListenerStats]
        var agents: Int
        var instances: [String: Int]
        /// Each agent's view: its running version and its condition.
        var views: [AgentView] = []
        var supervisor: SupervisorStats.Snapshot
    }

    /// The text exposition format, version 0.0.4.
    func render(_ gauges: Gauges) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        func histogram(_ name: String, _ help: String, _ values: Histogram) {
            family(name, "histogram", help)
            for (bound, count) in values.cumulative {
                out += "\(name)_bucket{le=\"\(bound.isInfinite ? "+Inf" : format(bound))\"} \(count)\n"
            }
            out += "\(name)_sum \(format(values.sum))\n\(name)_count \(values.count)\n"
        }
        /// A family with one unlabelled sample.
        func single(_ name: String, _ type: String, _ help: String, _ value: String) {
            family(name, type, help)
            out += "\(name) \(value)\n"
        }
        family("baton_build_info", "gauge", "batond's version; always 1.")
        out += "baton_build_info{version=\"\(escape(BatonVersion.current))\",swift=\"\(escape(swiftVersion))\"} 1\n"
        single("baton_start_time_seconds", "gauge", "When batond started, in seconds since the epoch.",
               format(gauges.startedAt.seconds))
        single("baton_uptime_seconds", "gauge", "Seconds since batond started.",
               format(Double(gauges.now.milliseconds - gauges.startedAt.milliseconds) / 1000))
        family("baton_http_requests_total", "counter", "HTTP requests answered, by route template, method and status code.")
        let snapshot = requests.withLock { $0 }
        let counts = snapshot.counts.map { key, count in
            (route: key.route.flatMap { snapshot.templates[$0] } ?? "unmatched", method: Self.methods[Int(key.method)],
             code: Int(key.status), count: count)
        }.sorted { ($0.route, $0.method, $0.code) < ($1.route, $1.method, $1.code) }
        for entry in counts {
            out += "baton_http_requests_total{route=\"\(escape(entry.route))\",method=\"\(entry.method)\",code=\"\(entry.code)\"} \(entry.count)\n"
        }
        single("baton_http_parked_requests", "gauge", "Long-poll requests parked right now.", "\(gauges.parked)")
        family("baton_http_connections", "gauge", "Connections open right now, by listener.")
        for stats in gauges.listeners {
            out += "baton_http_connections{listener=\"\(escape(stats.listener))\"} \(stats.open)\n"
        }
        family("baton_http_connections_closed_total", "counter",
               "Connections batond closed before answering, by listener and reason (head_deadline, body_deadline, abandoned, evicted, refused, peer_cap).")
        for stats in gauges.listeners {
            for reason in ConnectionClosure.allCases {
                out += "baton_http_connections_closed_total{listener=\"\(escape(stats.listener))\",reason=\"\(reason.rawValue)\"} \(stats.closed[reason] ?? 0)\n"
            }
        }
        single("baton_ledger_appends_total", "counter", "Records appended to the ledger since start.", "\(gauges.ledger.appends)")
        single("baton_ledger_fsync_batches_total", "counter", "Group-commit batches written (one fdatasync each).",
               "\(gauges.ledger.batches)")
        single("baton_ledger_last_seq", "gauge", "Sequence number of the newest ledger record.", "\(gauges.lastSeq)")
        single("baton_ledger_writable", "gauge", "1 when the ledger accepts records, 0 after a failed write.",
               gauges.ledgerWritable ? "1" : "0")
        single("baton_ledger_failures_total", "counter", "Ledger writes or fsyncs that failed (records are refused until a probe write succeeds).",
               "\(gauges.ledger.failures)")
        single("baton_ledger_recovery_attempts_total", "counter", "Probe writes tried while the ledger could not write.",
               "\(gauges.ledger.recoveryAttempts)")
        single("baton_ledger_recoveries_total", "counter", "Probe writes that succeeded: the ledger wrote again without a restart.",
               "\(gauges.ledger.recoveries)")
        histogram("baton_ledger_fsync_seconds", "Time to write and fdatasync one ledger batch.", gauges.ledger.fsyncSeconds)
        single("baton_agents", "gauge", "Agents declared in the configuration.", "\(gauges.agents)")
        family("baton_agent_instances", "gauge", "Live instances (processes) of each agent.")
        for (agent, count) in gauges.instances.sorted(by: { $0.key < $1.key }) {
            out += "baton_agent_instances{agent=\"\(escape(agent))\"} \(count)\n"
        }
        family("baton_agent_running_info", "gauge", "1 for the version each agent's working instance runs.")
        for view in gauges.views {
            if let running = view.running?.version {
                out += "baton_agent_running_info{agent=\"\(escape(view.name))\",version=\"\(escape(running))\"} 1\n"
            }
        }
        family("baton_agent_degraded", "gauge",
               "1 while an agent is not where it was asked to be (the desired version does not work, nothing works, a crash-loop verdict stands).")
        for view in gauges.views {
            out += "baton_agent_degraded{agent=\"\(escape(view.name))\"} \(view.condition.status == .degraded ? 1 : 0)\n"
        }
        family("baton_handoffs_total", "counter", "Handoffs ended since start, by agent and outcome.")
        for (agent, outcomes) in gauges.supervisor.handoffs.sorted(by: { $0.key < $1.key }) {
            for (outcome, count) in outcomes.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
                out += "baton_handoffs_total{agent=\"\(escape(agent))\",outcome=\"\(outcome.rawValue)\"} \(count)\n"
            }
        }
        family("baton_agent_restarts_total", "counter", "Restarts by supervision after an unexpected exit or failed start.")
        for (agent, count) in gauges.supervisor.restarts.sorted(by: { $0.key < $1.key }) {
            out += "baton_agent_restarts_total{agent=\"\(escape(agent))\"} \(count)\n"
        }
        family("baton_agent_effects_waiting", "gauge", "Effects (signals, spawns, a current flip) decided but waiting for the ledger to write again.")
        for agent in gauges.instances.keys.sorted() {
            out += "baton_agent_effects_waiting{agent=\"\(escape(agent))\"} \(gauges.supervisor.effectsWaiting[agent] ?? 0)\n"
        }
        histogram("baton_handoff_gap_seconds", "Gap of committed handoffs: old instance gone to successor told go.",
                  gauges.supervisor.gapSeconds)
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

