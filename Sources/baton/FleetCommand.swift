import ArgumentParser
import BatonClient
import BatonCore
import Foundation

struct FleetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet",
        abstract: "The fleet (fleet mode): every host's agents and versions, and the fleet's version kept in etcd.",
        subcommands: [Show.self, SetPlan.self, RollbackPlan.self, Exclude.self],
        defaultSubcommand: Show.self)

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "status", abstract: "Every host with its agents, the plan and the rollout (the default).")

        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var output: OutputOptions

        func run() throws {
            try reporting {
                let reply = try connection.client(timeout: .seconds(70)).fleet()
                if output.json { return Terminal.printJSON(reply.response.body) }
                FleetCommand.describe(reply.value)
            }
        }
    }

    struct Follow: ParsableArguments {
        @Flag(help: "Follow the rollout until it ends or pauses (exit 0: done, 2: paused, 3: restored).")
        var wait = false
    }

    struct SetPlan: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set",
            abstract: "Set the fleet's version: every host fetches VERSION's releases and upgrades, by the rollout's rules.",
            discussion: """
                Each agent's release source is a URL and its SHA-256, the same for every host. \
                Each comes from --release/--sha256, else from --url-template, else from the \
                release of VERSION stored on this machine (pushed or fetched here first).
                """)

        @Argument(help: "The version.")
        var version: String

        @Option(name: .customLong("agent"), help: "An agent the plan moves (repeat). Default: those named by --release, else every agent this batond starts.")
        var agents: [String] = []

        @Option(name: .customLong("release"), help: "AGENT=URL: where hosts fetch AGENT's release (repeat).")
        var releases: [String] = []

        @Option(name: .customLong("sha256"), help: "AGENT=HEX: the release's SHA-256 (repeat).")
        var digests: [String] = []

        @Option(help: "A URL with {agent} and {version}, e.g. https://releases.example/{agent}/{version}.tar.gz.")
        var urlTemplate: String?

        @Flag(help: "A migrating upgrade: every host halts, the migration runs once, then every host starts VERSION.")
        var barrier = false

        @Option(help: "Hosts in the first wave (labelled canary first, then by name); 0: no canary wave.")
        var canary = 0

        @Option(help: "At most this many hosts mid-upgrade at once.")
        var maxUnavailable = 1

        @Option(help: "How long the canary wave runs VERSION before the rest begin, e.g. 30s, 5m.")
        var soak = "0s"

        @Option(help: "Failed hosts tolerated after the canary wave before the rollout pauses.")
        var failureThreshold = 0

        @Option(name: .customLong("exclude"), help: "A host the barrier does not wait for (repeat).")
        var excluded: [String] = []

        @Option(help: "Refuse unless the plan is still the one at this revision (plan_revision in `baton fleet status --json`).")
        var expectRevision: Int64?

        @OptionGroup var follow: Follow
        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var output: OutputOptions

        func run() throws {
            try reporting {
                guard let soakMs = FleetCommand.milliseconds(soak) else {
                    throw CLIError.usage("--soak must be a duration such as 30s, 5m, 500ms, not \(soak)")
                }
                var sources: [String: FleetSetRequest.Source] = [:]
                for (agent, url) in try FleetCommand.pairs(releases, option: "--release") { sources[agent, default: .init()].url = url }
                for (agent, hex) in try FleetCommand.pairs(digests, option: "--sha256") { sources[agent, default: .init()].sha256 = hex }
                let request = FleetSetRequest(version: version, releases: sources.isEmpty ? nil : sources, urlTemplate: urlTemplate,
                                              agents: agents.isEmpty ? nil : agents, barrier: barrier ? true : nil, canary: canary,
                                              maxUnavailable: maxUnavailable, soakMs: soakMs, failureThreshold: failureThreshold,
                                              exclude: excluded.isEmpty ? nil : excluded, expectRevision: expectRevision)
                let client = try connection.client(timeout: .seconds(70))
                let reply = try client.setFleet(request)
                try FleetCommand.after(reply, client: client, follow: follow.wait, json: output.json)
            }
        }
    }

    struct RollbackPlan: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rollback", abstract: "Set the fleet's previous version again, as a new plan (no canary, no barrier).")

        @Option(help: "At most this many hosts mid-upgrade at once (default: the plan's).")
        var maxUnavailable: Int?

        @Option(help: "Refuse unless the plan is still the one at this revision.")
        var expectRevision: Int64?

        @OptionGroup var follow: Follow
        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var output: OutputOptions

        func run() throws {
            try reporting {
                let client = try connection.client(timeout: .seconds(70))
                let reply = try client.rollbackFleet(FleetRollbackRequest(maxUnavailable: maxUnavailable, expectRevision: expectRevision))
                try FleetCommand.after(reply, client: client, follow: follow.wait, json: output.json)
            }
        }
    }

    struct Exclude: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "exclude", abstract: "Hosts the plan's barrier no longer waits for (gone for good).")

        @Argument(help: "Host names.")
        var hosts: [String]

        @OptionGroup var connection: ConnectionOptions
        @OptionGroup var output: OutputOptions

        func run() throws {
            try reporting {
                let reply = try connection.client(timeout: .seconds(70)).excludeFromFleet(FleetExcludeRequest(hosts: hosts))
                if output.json { return Terminal.printJSON(reply.response.body) }
                Terminal.print("plan \(reply.value.plan?.id ?? "?") excludes \(reply.value.plan?.exclude.joined(separator: ", ") ?? "")")
            }
        }
    }

    // MARK: - Helpers

    /// After a plan was written: print it, or follow the rollout to its end.
    static func after(_ reply: Reply<FleetView>, client: BatonClient, follow: Bool, json: Bool) throws {
        guard let plan = reply.value.plan else { return }
        if !follow {
            if json { return Terminal.printJSON(reply.response.body) }
            return Terminal.print("plan \(plan.id): the fleet goes to \(plan.version); follow it with baton fleet status")
        }
        if !json { Terminal.print("plan \(plan.id): the fleet goes to \(plan.version)") }
        var shown = ""
        while true {
            let now = try client.fleet()
            guard now.value.plan?.id == plan.id else {
                throw CLIError.failed("another plan replaced \(plan.id): \(now.value.plan?.id ?? "none")", code: .failed)
            }
            let state = now.value.rollout.flatMap { $0.id == plan.id ? $0 : nil }
            let line = state.map { state in
                let done = now.value.hosts.filter { $0.rollout?.id == plan.id && $0.rollout?.phase == .done }.count
                return "  \(state.phase.rawValue): \(done)/\(now.value.hosts.count) hosts on \(plan.version)"
                    + (state.reason.map { " (\($0))" } ?? "")
            } ?? "  waiting for the coordinator"
            if !json && line != shown { Terminal.print(line); shown = line }
            switch state?.phase {
            case .done?:
                if json { Terminal.printJSON(now.response.body) } else { Terminal.print(Terminal.paint("done", .green) + ": the fleet runs \(plan.version)") }
                return
            case .paused?:
                if json { Terminal.printJSON(now.response.body) }
                throw CLIError.failed("paused: \(state?.reason ?? "a host failed")", code: .failed)
            case .restored?:
                if json { Terminal.printJSON(now.response.body) }
                throw CLIError.failed("restored: \(state?.reason ?? "the migration failed"); the hosts run their previous versions", code: .reverted)
            default:
                Thread.sleep(forTimeInterval: 1)
            }
        }
    }

    static func describe(_ fleet: FleetView) {
        let contact = fleet.connected ? "etcd connected" : Terminal.paint("etcd unreachable", .red) + ": \(fleet.error ?? "")"
            + (fleet.lastContact.map { " (last contact \(Format.ago($0)))" } ?? "")
        Terminal.print("fleet \(fleet.fleet), host \(fleet.host), coordinator \(fleet.coordinator ?? "none"); \(contact)")
        if !fleet.fresh { Terminal.print("(as last read: the hosts below are only this one)") }
        if let plan = fleet.plan {
            var rules = ["max unavailable \(plan.maxUnavailable)"]
            if plan.barrier { rules.insert("barrier", at: 0) }
            if plan.canary > 0 { rules.append("canary \(plan.canary), soak \(Format.duration(milliseconds: plan.soakMs))") }
            if plan.failureThreshold > 0 { rules.append("failure threshold \(plan.failureThreshold)") }
            if !plan.exclude.isEmpty { rules.append("excluding \(plan.exclude.joined(separator: ", "))") }
            Terminal.print("plan \(plan.id): \(plan.version) (\(rules.joined(separator: ", "))), by \(plan.by) at \(Format.clock(plan.at))")
        } else {
            Terminal.print("no plan: the fleet has no version yet (baton fleet set VERSION)")
        }
        if let rollout = fleet.rollout, rollout.id == fleet.plan?.id {
            Terminal.print("rollout: \(rollout.phase.rawValue)" + (rollout.reason.map { ": \($0)" } ?? ""))
            for (host, why) in rollout.failed.sorted(by: { $0.key < $1.key }) { Terminal.print("  failed \(host): \(why)") }
        }
        var table = Table("HOST", "AGENTS", "ROLLOUT", "HEARTBEAT", "LABELS")
        for host in fleet.hosts {
            let agents = host.agents.map { "\($0.name) \($0.running ?? "-") \($0.state.rawValue)" }.joined(separator: ", ")
            let rollout = host.rollout.map { "\($0.id) \($0.phase.rawValue)" + ($0.error.map { ": \($0)" } ?? "") } ?? "-"
            table.add(host.host, agents, rollout, Format.ago(host.updatedAt),
                      host.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","))
        }
        table.print()
    }

    static func pairs(_ values: [String], option: String) throws -> [(String, String)] {
        try values.map { value in
            guard let equals = value.firstIndex(of: "="), equals != value.startIndex else {
                throw CLIError.usage("\(option) takes AGENT=VALUE, not \(value)")
            }
            return (String(value[..<equals]), String(value[value.index(after: equals)...]))
        }
    }

    /// `500ms`, `30s`, `5m`, `1h`, or a number of seconds.
    static func milliseconds(_ text: String) -> Int64? {
        if let seconds = Int64(text) { return seconds * 1000 }
        for (unit, scale) in [("ms", Int64(1)), ("s", 1000), ("m", 60_000), ("h", 3_600_000)] where text.hasSuffix(unit) {
            if let number = Int64(text.dropLast(unit.count)), number >= 0 { return number * scale }
        }
        return nil
    }
}
