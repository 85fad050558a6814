import ArgumentParser
import BatonClient
import BatonCore
import Foundation

struct Upgrade: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Hand an agent over to a version, following the handoff live.",
        discussion: """
            Prints one line per step as it happens (spawned, ready, old stopped, go), with the \
            time since the handoff began, then the outcome and the gap. Exits 0 only when the \
            handoff committed: 2 failed, 3 reverted, 7 cancelled (see baton --help). On a \
            failure it prints the reason and the end of the failed successor's output.
            """)

    @Argument(help: "The agent's name.")
    var agent: String

    @Argument(help: "The version to run: a release stored for the agent.")
    var version: String

    @Flag(help: "Stop the old instance before starting the new one (default: the agent's configured mode).")
    var sequential = false

    @Flag(help: "Print the handoff that began and exit; do not follow it.")
    var noWait = false

    @Flag(help: "Hand over even when the version already works (a restart by handoff).")
    var force = false

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        try reporting {
            let client = try connection.client(timeout: .seconds(70))
            let since = noWait ? 0 : try client.lastSeq()
            let reply = try client.setDesired(agent, DesiredRequest(version: version, mode: sequential ? .sequential : nil,
                                                                    force: force ? true : nil))
            switch reply.value {
            case .unchanged(let unchanged):
                if output.json { return Terminal.printJSON(reply.response.body) }
                Terminal.print(unchanged.message)
            case .recorded(let desired):
                if output.json { return Terminal.printJSON(reply.response.body) }
                Terminal.print("\(agent) is external: desired version \(desired.version) recorded; its instances fetch and start it")
            case .handoff(let handoff):
                try Follow.handoff(client, handoff, body: reply.response.body, since: since, wait: !noWait, json: output.json)
            }
        }
    }
}

struct Rollback: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Hand an agent back to its previous release, following the handoff live (exit codes as upgrade).")

    @Argument(help: "The agent's name.")
    var agent: String

    @Flag(help: "Roll back also from a release that declares itself irreversible.")
    var force = false

    @Flag(help: "Print the handoff that began and exit; do not follow it.")
    var noWait = false

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        try reporting {
            let client = try connection.client(timeout: .seconds(70))
            let since = noWait ? 0 : try client.lastSeq()
            let reply = try client.rollback(agent, force: force)
            try Follow.handoff(client, reply.value, body: reply.response.body, since: since, wait: !noWait, json: output.json)
        }
    }
}

/// Following a handoff through the ledger's event long-poll until it ends.
enum Follow {
    static func handoff(_ client: BatonClient, _ began: HandoffView, body: [UInt8], since: UInt64, wait: Bool, json: Bool) throws {
        guard wait else {
            if json { return Terminal.printJSON(body) }
            Terminal.print("handoff \(began.id) began: \(began.agent) \(began.from ?? "none") → \(began.to) (\(began.mode.rawValue)); "
                           + "follow it with: baton history \(began.agent)")
            return
        }
        if !json {
            Terminal.print("handoff \(began.id): \(began.agent) \(began.from ?? "none") → \(began.to) (\(began.mode.rawValue))")
        }
        var follower = HandoffFollower(handoff: began.id, agent: began.agent, startedAt: began.startedAt)
        var seq = since
        var end: Reply<HandoffView>?
        while end == nil {
            let page = try client.events(since: seq, wait: .seconds(30), agent: began.agent).value
            for record in page.records {
                seq = max(seq, record.seq)
                for line in follower.handle(record) where !json { Terminal.print(line) }
            }
            if follower.ended != nil || page.records.isEmpty || page.truncated {
                // The end as batond tells it (also when records were missed or none came).
                let reply = try client.handoff(began.id)
                if reply.value.outcome != nil { end = reply }
            }
        }
        let view = end!.value
        if json {
            Terminal.printJSON(end!.response.body)
        } else {
            Terminal.print(follower.outcomeLine(view))
        }
        guard let outcome = view.outcome, outcome != .committed else { return }
        if !json { explainFailure(client, view, follower: follower) }
        switch outcome {
        case .committed: return
        case .failed: throw CLIError.failed("", code: .failed)
        case .reverted: throw CLIError.failed("", code: .reverted)
        case .cancelled: throw CLIError.failed("", code: .cancelled)
        }
    }

    /// The reason, the end of the failed successor's output, and where its whole log is.
    static func explainFailure(_ client: BatonClient, _ view: HandoffView, follower: HandoffFollower) {
        var tail = follower.error?.stderrTail
        let instance = follower.error?.instance ?? follower.successor
        if tail == nil, let lastError = try? client.agent(view.agent).value.lastError, lastError.handoff == view.id {
            tail = lastError.stderrTail
        }
        if let tail, !tail.isEmpty {
            Terminal.print("output of the failed \(instance.map { "successor \($0)" } ?? "successor") (last lines):")
            for line in Format.tail(tail) { Terminal.print(line) }
        }
        if let instance, let stateDir = try? client.status().value.stateDir {
            Terminal.print("its log: \(Logs.instanceLog(stateDir: stateDir, instance: instance))")
        }
    }
}

/// Turns the ledger's records of one handoff into the lines a person follows: pure,
/// so the table of what prints for what is tested without a batond.
struct HandoffFollower {
    let handoff: String
    let agent: String
    let startedAt: Timestamp
    /// The new release's instance, once spawned.
    private(set) var successor: String?
    /// Sequential fallback: the previous release's new instance.
    private(set) var previous: String?
    /// Instances told to stop during the handoff (the old one).
    private(set) var stopping: Set<String> = []
    private(set) var error: AgentError?
    private(set) var ended: HandoffEnded?

    init(handoff: String, agent: String, startedAt: Timestamp) {
        self.handoff = handoff; self.agent = agent; self.startedAt = startedAt
    }

    mutating func handle(_ record: Record) -> [String] {
        let at = record.time
        switch record.event {
        case .instanceSpawned(let spawned) where spawned.handoff == handoff:
            if spawned.role == "previous" {
                previous = spawned.instance
                return [line(at, "respawned", "\(spawned.instance) (pid \(spawned.pid), \(spawned.version)): the previous release again")]
            }
            successor = spawned.instance
            return [line(at, "spawned", "\(spawned.instance) (pid \(spawned.pid), \(spawned.version))")]
        case .instanceReady(let ref) where ref.agent == agent && (ref.instance == successor || ref.instance == previous):
            return [line(at, "ready", ref.instance)]
        case .instanceSignal(let signal) where signal.agent == agent:
            switch signal.signal {
            case .stop where signal.instance != successor && signal.instance != previous:
                stopping.insert(signal.instance)
                return [line(at, "stopping", "\(signal.instance) (told stop)")]
            case .go where signal.instance == successor || signal.instance == previous:
                return [line(at, "go", signal.instance)]
            case .stop, .go, .wait:
                return []
            }
        case .instanceStopped(let ref) where stopping.contains(ref.instance):
            return [line(at, "old stopped", ref.instance)]
        case .instanceExited(let exited) where exited.agent == agent:
            if stopping.contains(exited.instance) { return [line(at, "old exited", exited.instance)] }
            if exited.instance == successor || exited.instance == previous {
                return [line(at, "exited", exited.instance)]
            }
            return []
        case .agentError(let failure) where failure.handoff == handoff:
            error = failure
            return [line(at, Terminal.paint("error", .red), failure.reason)]
        case .handoffPhase(let phase) where phase.handoff == handoff:
            switch phase.phase {
            case "stopping_first": return [line(at, "stopping", "the old instance first (sequential)")]
            case "aborting_successor": return [line(at, "aborting", "the successor failed; stopping it")]
            case "reverting_spawn": return [line(at, "reverting", "starting the previous release again")]
            default: return []  // spawning, waiting_ready, stopping_old, final: told by the records above
            }
        case .handoffEnded(let end) where end.handoff == handoff:
            ended = end
            if let gap = Format.gap(end.gapMs) { return [line(at, "gap", gap)] }
            return []
        default:
            return []
        }
    }

    /// `  +1.204s  ready       web.4`.
    func line(_ at: Timestamp, _ what: String, _ detail: String) -> String {
        let elapsed = String(format: "+%.3fs", Double(at.milliseconds - startedAt.milliseconds) / 1000)
        let padded = what.count < 11 ? what + String(repeating: " ", count: 11 - what.count) : what
        return "  \(elapsed)  \(padded) \(detail)"
    }

    /// The last line: the outcome, how long it took, the gap or the reason.
    func outcomeLine(_ view: HandoffView) -> String {
        let took = view.endedAt.map { Format.duration(milliseconds: $0.milliseconds - view.startedAt.milliseconds) } ?? "?"
        switch view.outcome {
        case .committed?:
            return Terminal.paint("committed", .green) + ": \(view.agent) runs \(view.to) (in \(took)"
                + (Format.gap(view.gapMs).map { ", gap \($0)" } ?? "") + ")"
        case .failed?:
            return Terminal.paint("failed", .red) + " after \(took): \(view.error ?? "no reason recorded"); "
                + "\(view.agent) stays on \(view.from ?? "nothing")"
        case .reverted?:
            return Terminal.paint("reverted", .red) + " after \(took): \(view.error ?? "no reason recorded"); "
                + "\(view.agent) runs \(view.from ?? "its previous release") again"
        case .cancelled?:
            return Terminal.paint("cancelled", .yellow) + " after \(took): batond stopped before the handoff ended"
        case nil:
            return "still running (\(view.phase))"
        }
    }
}
