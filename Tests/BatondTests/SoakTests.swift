import BatonTestSupport
import Crypto
import Foundation
import Glibc
import Synchronization
import Testing

/// The crash-point soak: three agents hand over all the time (parallel, sequential,
/// failing successors, pushed releases, rollbacks, a crash-looping release that batond
/// rewinds) while batond is killed with SIGKILL at random moments and started again on
/// the same state directory. After every restart, checked from outside: batond comes
/// back ready; every change the client saw acknowledged is in the ledger, and one whose
/// answer never came is there whole or not at all; every handoff in flight at the kill
/// ends as docs/ledger.md ("When batond comes back") says; never two instances of an
/// agent at work at once, by the agents' own event files. At the end: no agent was
/// without a working instance for longer than a handoff's gap plus the time batond was
/// down (and the agents' reconnect pause after it).
///
/// `BATON_SOAK_ITERATIONS` (default 10: the short soak of `make test`; `make soak` runs
/// 500) kill-and-restart cycles; `BATON_SOAK_SEED` repeats a run's schedule (the seed is
/// printed at the start and in the summary).
@Suite("crash-point soak", .serialized)
struct SoakTests {
    @Test func handoffsSurviveSIGKILLAtRandomMoments() throws {
        let environment = ProcessInfo.processInfo.environment
        let iterations = environment["BATON_SOAK_ITERATIONS"].flatMap(Int.init) ?? 10
        let seed = environment["BATON_SOAK_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 1...999_999_999)
        say("soak: \(iterations) iterations, seed \(seed) (BATON_SOAK_SEED=\(seed) repeats the schedule)")
        let soak = try Soak(seed: seed)
        defer { soak.finish() }
        let summary = try soak.run(iterations: iterations)
        say(summary.line)
        #expect(summary.kills == iterations)
        #expect(summary.acknowledged > 0, "the drivers saw no change acknowledged")
        #expect(summary.handoffs > 0, "no handoff ended")
        #expect(soak.problems.isEmpty, "seed \(seed):\n\(soak.problems.joined(separator: "\n"))")
    }
}

// MARK: - The schedule

/// An agent of the soak: its releases (version: switches of baton-testagent) and what
/// its driver may ask.
struct SoakAgent: Sendable {
    let name: String
    let mode: String
    let good: [String: [String]]
    /// Releases whose successor fails: its self-check, or it exits before ready.
    let failing: [String: [String]]
    /// Releases that pass the handoff and then crash after go, again at each restart.
    let crashing: [String: [String]]
    let extraConfig: String
    /// How long, beyond batond's outages, the agent may be without a working instance:
    /// a handoff's gap (parallel: the old one's stop to the successor's go; sequential:
    /// the successor's start and self-check; a crash: the restart backoff and start),
    /// generous for a debug build sharing 2 cores with the rest of the suite.
    let gapBudget: Double

    var releases: [String: [String]] { good.merging(failing) { a, _ in a }.merging(crashing) { a, _ in a } }

    static let all = [
        SoakAgent(name: "par", mode: "parallel",
                  good: ["1.0": ["--stop-takes", "0.1"], "2.0": ["--stop-takes", "0.1"], "3.0": []],
                  failing: ["bad-check": ["--ready-after", "0.3", "--fail-check"], "bad-exit": ["--exit-before-ready"]],
                  crashing: [:], extraConfig: "", gapBudget: 4),
        SoakAgent(name: "seq", mode: "sequential",
                  good: ["1.0": ["--ready-after", "0.2"], "2.0": ["--ready-after", "0.2"], "3.0": []],
                  failing: ["bad-check": ["--ready-after", "0.3", "--fail-check"], "bad-exit": ["--exit-before-ready"]],
                  crashing: [:], extraConfig: "", gapBudget: 10),
        SoakAgent(name: "loop", mode: "parallel",
                  good: ["1.0": [], "2.0": ["--stop-takes", "0.1"]],
                  failing: [:], crashing: ["crash": ["--crash-after", "0.3"]],
                  extraConfig: """
                  crash_loop_exits = 3
                  crash_loop_window = "30s"
                  restart_backoff = "100ms"
                  restart_backoff_max = "200ms"
                  """, gapBudget: 8),
    ]
}

/// A change the client asked for: acknowledged (a 2xx) or unanswered (the connection
/// broke first: batond was killed).
struct Change: Sendable {
    enum Kind: String, Sendable { case desired, unchanged, rollback, push }
    let kind: Kind
    let agent: String
    /// The version asked for (a rollback's: from its answer).
    var version: String?
    var handoff: String?
    var sha256: String?
    var body: [UInt8] = []
    let iteration: Int
    let answered: Bool
}

/// One kill: when, and when the next batond was ready (CLOCK_MONOTONIC ns).
struct Outage: Sendable {
    let killed: UInt64
    var ready: UInt64 = 0
    var seconds: Double { Double(ready - killed) / 1e9 }
    /// The agents' calls retry with a doubling pause (100 ms to 5 s, BatonAgent's
    /// RetryPolicy.standard): after an outage of d seconds the next try comes at most
    /// about 2d + 0.1 s later (never more than 5 s).
    var heardBy: UInt64 { ready + UInt64(min(5, 2 * seconds + 0.1) * 1e9) }
}

// MARK: - The soak

/// The drivers (one thread per agent), the killer (the test's thread) and the checks.
/// @unchecked Sendable: the drivers share it; every mutable field is behind `lock`
/// (`shared`) or is only touched by the test's thread (`daemon`, `killed`, the records read back).
final class Soak: @unchecked Sendable {
    let agents = SoakAgent.all
    let state = TemporaryDirectory("soak")
    let seed: UInt64
    var rng: SeededGenerator
    var config = ""

    struct Shared {
        /// The batond the drivers talk to; nil while it is down or being checked.
        var endpoint: Endpoint?
        var open = false
        var parked = 0
        var stopping = false
        var iteration = 0
        var changes: [Change] = []
        /// Refusals by status (409 during a handoff or a rewind is normal).
        var refusals: [Int: Int] = [:]
        var problems: [String] = []
    }
    let shared = Mutex(Shared())
    let gate = NSCondition()

    var daemon: BatondProcess?
    /// The killed ones whose reapers still run: instances they left are still at work.
    var killed: [BatondProcess] = []
    var drivers: [Thread] = []
    var outages: [Outage] = []
    /// Every record read back, in order, and each one's checksum by seq: what a later
    /// batond must still serve, the same.
    var records: [[String: Any]] = []
    var checksums: [Int: String] = [:]
    var recordsByAgent: [String: [[String: Any]]] = [:]
    /// Records a snapshot took between the last read and a kill: never read back.
    var unread = 0
    /// Acknowledged handoffs checked through `GET /v1/handoffs/{id}`, their records unread.
    var checkedByState = 0
    var lastSeq = 0
    var checkedChanges = 0
    var checkedUnanswered = 0
    /// The handoffs in flight at a kill, by their last recorded phase.
    var inFlightPhases: [String: Int] = [:]

    var problems: [String] { shared.withLock { $0.problems } }

    func problem(_ text: String) {
        let iteration = shared.withLock { $0.iteration }
        shared.withLock { $0.problems.append("iteration \(iteration): \(text)") }
        say("soak: PROBLEM iteration \(iteration): \(text)")
    }

    init(seed: UInt64) throws {
        self.seed = seed
        rng = SeededGenerator(seed: seed)
        var text = """
            [ledger]
            # A snapshot every 2000 records keeps the replay short; the window never slides
            # while a batond runs, and the soak reads it just before each kill.
            snapshot_every = 2000
            retain_records = 1000000

            [releases]
            keep_releases = 0

            """
        for agent in agents {
            text += """

                [agents.\(agent.name)]
                command = ["{release}/bin/\(agent.name)"]
                mode = "\(agent.mode)"
                ready_timeout = "5s"
                stop_timeout = "2s"
                kill_timeout = "1s"
                \(agent.extraConfig)

                """
            for (version, switches) in agent.releases { try write(agent: agent.name, version: version, switches) }
            let link = state.file("releases/\(agent.name)/current")
            guard symlink("1.0", link) == 0 else { throw TestFailure("symlink \(link)") }
        }
        config = text
    }

    func events(_ agent: String) -> String { state.file("events-\(agent).log") }

    /// The release's executable, as a push would store it: `bin/<agent>`.
    func script(agent: String, _ switches: [String]) -> [UInt8] {
        let arguments = (["--events", events(agent)] + switches).map { "'\($0)'" }.joined(separator: " ")
        return Array("#!/bin/sh\nexec '\(Products.path("baton-testagent"))' \(arguments) \"$@\"\n".utf8)
    }

    func write(agent: String, version: String, _ switches: [String]) throws {
        let bin = state.file("releases/\(agent)/\(version)/bin")
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        try Data(script(agent: agent, switches)).write(to: URL(fileURLWithPath: "\(bin)/\(agent)"))
        chmod("\(bin)/\(agent)", 0o755)
    }

    // MARK: the killer

    func run(iterations: Int) throws -> Summary {
        let first = try start()
        daemon = first
        try waitUntil(timeout: 60) { agents.allSatisfy { working($0.name) } }
        startDrivers()
        for iteration in 1...iterations {
            shared.withLock { $0.iteration = iteration }
            open()
            usleep(UInt32(Double.random(in: 0.2...2.5, using: &rng) * 1e6))
            try killAndRestart(iteration: iteration)
            try check(iteration: iteration)
            if iteration % 25 == 0 {
                say("soak: iteration \(iteration) of \(iterations), records \(lastSeq), problems \(problems.count)")
            }
        }
        stopDrivers()
        return try finalCheck(iterations: iterations)
    }

    /// Each driver ends after the step it is in.
    func stopDrivers() {
        shared.withLock { $0.stopping = true }
        open()
        for driver in drivers { while !driver.isFinished { usleep(10_000) } }
        // Their closures hold the soak: let it go, and its state directory with it.
        drivers.removeAll()
    }

    /// The drivers may go on, against the batond now up.
    func open() {
        gate.lock()
        shared.withLock {
            $0.endpoint = daemon?.endpoint
            $0.open = true
        }
        gate.broadcast()
        gate.unlock()
    }

    func closeGate() {
        shared.withLock {
            $0.open = false
            $0.endpoint = nil
        }
    }

    /// A batond under baton-testreaper, as a service manager would run it: the instances
    /// it leaves when killed are reaped by its reaper (not by this process, which would
    /// then also reap every other test's orphans; nor left to a pid 1 that may not).
    func start() throws -> BatondProcess {
        try BatondProcess(state: state, configText: config, wrapper: [Products.path("baton-testreaper")])
    }

    /// SIGKILL, then (after up to 0.3 s) the next batond on the same state directory.
    func killAndRestart(iteration: Int) throws {
        guard let old = daemon else { return }
        // What the ledger holds so far, read while it is in the window: a snapshot may
        // take it off the journal before the next batond could serve it.
        try refresh(old, full: false)
        guard let batond = ProcessProbe(old.process.processIdentifier).children.first(where: { $0.command == "batond" })
        else { throw TestFailure("iteration \(iteration): batond is not running under its reaper\n\(old.log)") }
        batond.kill()
        var outage = Outage(killed: monotonicNanoseconds())
        closeGate()
        // Kept until its reaper ends: dropped while it runs, it would kill what it reaps,
        // the instances the next batond adopts.
        killed.removeAll { !$0.process.isRunning }
        killed.append(old)
        guard batond.waitForExit(timeout: 30) else { throw TestFailure("batond did not die") }
        usleep(UInt32(Double.random(in: 0...0.3, using: &rng) * 1e6))
        // Every driver is parked before the next batond serves: none talks to it before
        // the checks are done.
        try waitUntil(timeout: 60) { shared.withLock { $0.parked } == agents.count }
        let next: BatondProcess
        do {
            next = try start()
        } catch {
            throw TestFailure("iteration \(iteration): the ledger did not replay: \(error)")
        }
        outage.ready = monotonicNanoseconds()
        outages.append(outage)
        daemon = next
    }

    /// Waits at the gate (counted as parked) while it is closed.
    func pass() -> Endpoint? {
        gate.lock()
        defer { gate.unlock() }
        shared.withLock { $0.parked += 1 }
        while !shared.withLock({ $0.open || $0.stopping }) { gate.wait() }
        return shared.withLock {
            $0.parked -= 1
            return $0.stopping ? nil : $0.endpoint
        }
    }

    // MARK: the drivers

    func startDrivers() {
        for (index, agent) in agents.enumerated() {
            let seed = seed &+ UInt64(index + 1) &* 0x1000_0001
            let thread = Thread { [self] in
                var generator = SeededGenerator(seed: seed)
                while let endpoint = pass() {
                    step(agent, endpoint, &generator)
                }
            }
            thread.name = "soak-\(agent.name)"
            drivers.append(thread)
            thread.start()
        }
    }

    func record(_ change: Change) { shared.withLock { $0.changes.append(change) } }

    /// One thing a client does. A request that gets no answer is recorded as
    /// unanswered; the driver then goes back to the gate.
    func step(_ agent: SoakAgent, _ endpoint: Endpoint, _ rng: inout SeededGenerator) {
        let iteration = shared.withLock { $0.iteration }
        let roll = Double.random(in: 0..<1, using: &rng)
        let token = (try? String(contentsOfFile: state.file("operator.token"), encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        let pushes = !agent.failing.isEmpty
        do {
            if roll < 0.45 {
                var mode: String?
                if Double.random(in: 0..<1, using: &rng) < 0.2 { mode = agent.mode == "parallel" ? "sequential" : "parallel" }
                try desire(agent, endpoint, token, agent.good.keys.sorted().randomElement(using: &rng)!, mode: mode, iteration)
            } else if roll < 0.6 {
                let bad = (agent.failing.isEmpty ? agent.crashing : agent.failing).keys.sorted().randomElement(using: &rng)!
                try desire(agent, endpoint, token, bad, mode: nil, iteration)
            } else if roll < 0.7 {
                try rollback(agent, endpoint, token, iteration)
            } else if roll < 0.85 && pushes {
                let version = "p\(iteration)-\(UInt32.random(in: 0...UInt32.max, using: &rng))"
                if try push(agent, endpoint, token, version, iteration), Bool.random(using: &rng) {
                    try desire(agent, endpoint, token, version, mode: nil, iteration)
                }
            } else {
                usleep(UInt32(Double.random(in: 0.05...0.3, using: &rng) * 1e6))
            }
        } catch {
            // batond went away mid-step (recorded where it mattered): back to the gate.
        }
    }

    /// Sends a change; nil when no answer came (recorded as unanswered).
    func send(_ change: Change, _ endpoint: Endpoint, _ token: String, _ method: String, _ path: String,
              headers: [String: String], body: [UInt8]) throws -> HTTPResponse {
        do {
            return try endpoint.request(method, path, token: token, headers: headers, body: body, timeout: 60)
        } catch {
            record(Change(kind: change.kind, agent: change.agent, version: change.version, sha256: change.sha256,
                          body: change.body, iteration: change.iteration, answered: false))
            throw error
        }
    }

    func refused(_ answer: HTTPResponse, _ what: String) {
        shared.withLock { $0.refusals[answer.status, default: 0] += 1 }
        if answer.status >= 500 && answer.status != 503 { problem("\(what): \(answer.status) \(answer.text)") }
    }

    func desire(_ agent: SoakAgent, _ endpoint: Endpoint, _ token: String, _ version: String, mode: String?, _ iteration: Int) throws {
        var body = #"{"version":"\#(version)""#
        if let mode { body += #","mode":"\#(mode)""# }
        body += "}"
        let change = Change(kind: .desired, agent: agent.name, version: version, iteration: iteration, answered: true)
        let answer = try send(change, endpoint, token, "PUT", "/v1/agents/\(agent.name)/desired",
                              headers: ["Content-Type": "application/json"], body: Array(body.utf8))
        switch answer.status {
        case 202:
            let id = try answer.json()["id"] as? String
            record(Change(kind: .desired, agent: agent.name, version: version, handoff: id, iteration: iteration, answered: true))
            try awaitEnd(id ?? "", endpoint, token)
            if agent.crashing[version] != nil { try awaitRewind(agent, endpoint, token) }
        case 200:
            record(Change(kind: .unchanged, agent: agent.name, version: version, iteration: iteration, answered: true))
        default:
            refused(answer, "PUT desired \(agent.name) \(version)")
        }
    }

    func rollback(_ agent: SoakAgent, _ endpoint: Endpoint, _ token: String, _ iteration: Int) throws {
        let change = Change(kind: .rollback, agent: agent.name, iteration: iteration, answered: true)
        let answer = try send(change, endpoint, token, "POST", "/v1/agents/\(agent.name)/rollback",
                              headers: ["Content-Type": "application/json"], body: Array("{}".utf8))
        guard answer.status == 202 else { return refused(answer, "rollback \(agent.name)") }
        let view = try answer.json()
        record(Change(kind: .rollback, agent: agent.name, version: view["to"] as? String, handoff: view["id"] as? String,
                      iteration: iteration, answered: true))
        try awaitEnd(view["id"] as? String ?? "", endpoint, token)
    }

    /// Pushes a good release as `version`; whether it was stored.
    func push(_ agent: SoakAgent, _ endpoint: Endpoint, _ token: String, _ version: String, _ iteration: Int) throws -> Bool {
        let body = script(agent: agent.name, ["--stop-takes", "0.1"])
        let digest = SHA256.hash(data: body).map { String(format: "%02x", $0) }.joined()
        let change = Change(kind: .push, agent: agent.name, version: version, sha256: digest, body: body, iteration: iteration,
                            answered: true)
        let answer = try send(change, endpoint, token, "PUT", "/v1/releases/\(agent.name)/\(version)?sha256=\(digest)",
                              headers: ["Content-Type": "application/octet-stream"], body: body)
        guard answer.status == 201 || answer.status == 200 else {
            refused(answer, "push \(agent.name) \(version)")
            return false
        }
        record(change)
        return true
    }

    /// Follows a handoff until it ends (or batond goes away: the error is thrown).
    func awaitEnd(_ id: String, _ endpoint: Endpoint, _ token: String) throws {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let view = try endpoint.get("/v1/handoffs/\(id)?wait=5", token: token, timeout: 20).json()
            if view["outcome"] is String { return }
        }
        problem("handoff \(id) did not end within 60 s")
    }

    /// After a crash-looping release committed: until batond rewound it.
    func awaitRewind(_ agent: SoakAgent, _ endpoint: Endpoint, _ token: String) throws {
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            let view = try endpoint.get("/v1/agents/\(agent.name)", token: token).json()
            let running = (view["running"] as? [String: Any])?["version"] as? String
            if view["state"] as? String == "rewound" || (running != nil && agent.crashing[running!] == nil) { return }
            usleep(100_000)
        }
    }

    // MARK: the checks

    func working(_ agent: String) -> Bool {
        guard let daemon, let view = try? daemon.endpoint.get("/v1/agents/\(agent)", token: daemon.token).json() else { return false }
        return (view["instances"] as? [[String: Any]] ?? []).contains { $0["state"] as? String == "working" }
    }

    /// The ledger's records after `since`, read back through `GET /v1/events`, pages of 1000.
    /// Records before the window (`oldest_seq`) are in a snapshot only: after a restart
    /// the window starts at the last snapshot.
    func readLedger(_ daemon: BatondProcess, since start: Int) throws -> [[String: Any]] {
        var records: [[String: Any]] = []
        var since = start
        while true {
            let page = try daemon.endpoint.get("/v1/events?since=\(since)&limit=1000", token: daemon.token, timeout: 60).json()
            if let last = page["last_seq"] as? Int, last < lastSeq {
                problem("the ledger ends at \(last), but records up to \(lastSeq) were served before")
            }
            let batch = page["records"] as? [[String: Any]] ?? []
            guard let last = batch.last?["seq"] as? Int else { break }
            records += batch
            since = last
        }
        return records
    }

    func data(_ record: [String: Any]) -> [String: Any] { record["data"] as? [String: Any] ?? [:] }
    func kind(_ record: [String: Any]) -> String { record["kind"] as? String ?? "" }
    func seq(_ record: [String: Any]) -> Int { record["seq"] as? Int ?? 0 }

    /// Reads what the ledger added (`full`: all of it again) and holds it against what
    /// earlier batonds served: the same bytes (by checksum) where both are, numbered
    /// 1, 2, 3... with nothing missing (only a `ledger.cut` may skip).
    func refresh(_ daemon: BatondProcess, full: Bool) throws {
        var previous = full ? 0 : lastSeq
        let read = try readLedger(daemon, since: previous)
        for (index, record) in read.enumerated() {
            let number = seq(record)
            if number > previous + 1 && index == 0 && (full || number > lastSeq) {
                // Before the window: a snapshot holds them. Those never read are the few a
                // snapshot took between the last read and the kill.
                if number > lastSeq + 1 { unread += number - 1 - lastSeq }
            } else if number != previous + 1 && kind(record) != "ledger.cut" {
                problem("the ledger jumps from seq \(previous) to \(number)")
            }
            previous = number
            let crc = "\(record["crc"] ?? "")"
            if let known = checksums[number] {
                if known != crc { problem("record \(number) changed across a restart: crc \(known) then \(crc)") }
            } else {
                checksums[number] = crc
                records.append(record)
                recordsByAgent[data(record)["agent"] as? String ?? "", default: []].append(record)
            }
        }
        if full && previous < lastSeq { problem("the ledger ends at \(previous), but records up to \(lastSeq) were served before") }
        lastSeq = max(lastSeq, previous)
    }

    func check(iteration: Int) throws {
        guard let daemon else { return }
        let readyz = try daemon.endpoint.get("/readyz")
        if readyz.status != 200 { problem("/readyz \(readyz.status) after the restart: \(readyz.text)") }

        // Every record read before is still there (all of them read again now and then).
        try refresh(daemon, full: iteration % 25 == 0)
        let started = records.last { kind($0) == "daemon.started" }.map(seq) ?? 0

        // The handoffs in flight at the kill end as the table says.
        try checkInFlight(restartedAt: started, daemon)

        // Changes answered before the kill, and those whose answer never came.
        try refresh(daemon, full: false)
        let changes = shared.withLock { state -> [Change] in
            defer { state.changes.removeAll() }
            return state.changes
        }
        for change in changes { try checkChange(change, daemon) }

        // Never two at work, by the agents' own event files.
        for agent in agents {
            let pairs = overlaps(AgentEventLog(path: events(agent.name)).events)
            if !pairs.isEmpty { problem("\(agent.name): two instances worked at once: \(pairs)") }
        }
    }

    /// The outcomes docs/ledger.md's table allows for a handoff whose last recorded phase
    /// was `phase` when batond died.
    static func allowed(after phase: String) -> Set<String> {
        switch phase {
        case "began", "spawning", "waiting_ready", "stopping_old": ["committed", "cancelled"]
        case "stopping_first": ["committed", "failed", "reverted", "cancelled"]
        case "aborting_successor": ["failed"]
        case "reverting_spawn", "reverting_ready": ["reverted", "failed"]
        case "committed", "failed", "reverted", "cancelled": [phase]
        default: []
        }
    }

    func checkInFlight(restartedAt started: Int, _ daemon: BatondProcess) throws {
        var inFlight: [String: (agent: String, to: String, phase: String)] = [:]
        for record in records {
            guard seq(record) < started else { break }
            let fields = data(record)
            guard let id = fields["handoff"] as? String else { continue }
            switch kind(record) {
            case "handoff.began": inFlight[id] = (fields["agent"] as? String ?? "", fields["to"] as? String ?? "", "began")
            case "handoff.phase": inFlight[id]?.phase = fields["phase"] as? String ?? "?"
            case "handoff.ended": inFlight[id] = nil
            default: break
            }
        }
        for (id, handoff) in inFlight.sorted(by: { $0.key < $1.key }) {
            var view: [String: Any] = [:]
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline {
                view = try daemon.endpoint.get("/v1/handoffs/\(id)?wait=5", token: daemon.token, timeout: 20).json()
                if view["outcome"] is String { break }
            }
            inFlightPhases[handoff.phase, default: 0] += 1
            guard let outcome = view["outcome"] as? String else {
                problem("handoff \(id), in flight at the kill (\(handoff.phase)), did not end: \(view)")
                continue
            }
            guard let agent = agents.first(where: { $0.name == handoff.agent }) else { continue }
            if !Self.allowed(after: handoff.phase).contains(outcome) {
                problem("handoff \(id) (\(handoff.agent) to \(handoff.to)) killed in \(handoff.phase) ended \(outcome); the table allows \(Self.allowed(after: handoff.phase).sorted())")
            }
            if outcome == "committed" && agent.failing[handoff.to] != nil {
                problem("handoff \(id) to the failing release \(handoff.to) committed")
            }
            if outcome == "cancelled" && !(view["error"] is NSNull) && view["error"] != nil {
                problem("handoff \(id) cancelled by batond's death blames the release: \(view["error"] ?? "")")
            }
        }
    }

    /// An acknowledged change is in the ledger; an unanswered one is whole or absent.
    func checkChange(_ change: Change, _ daemon: BatondProcess) throws {
        let about = recordsByAgent[change.agent] ?? []
        func began(_ id: String?) -> [String: Any]? {
            about.first { kind($0) == "handoff.began" && data($0)["handoff"] as? String == id }
        }
        if change.answered { checkedChanges += 1 } else { checkedUnanswered += 1 }
        let what = "\(change.answered ? "acknowledged" : "unanswered") \(change.kind.rawValue) \(change.agent) \(change.version ?? "")"
        switch change.kind {
        case .desired, .rollback:
            guard change.answered else { return }  // whole or absent: `checkDesiredWhole`, over the whole ledger
            guard let record = began(change.handoff) else {
                // Its records may be in a snapshot only, unread: the state has it.
                let view = try daemon.endpoint.get("/v1/handoffs/\(change.handoff ?? "")", token: daemon.token)
                if view.status == 200, (try? view.json()["to"] as? String) == change.version {
                    checkedByState += 1
                    return
                }
                return problem("\(what): no handoff.began \(change.handoff ?? "?") in the ledger (\(view.status) \(view.text))")
            }
            let desired = about.last { kind($0) == "agent.desired" && seq($0) < seq(record) }
            if data(record)["to"] as? String != change.version || desired.flatMap({ data($0)["version"] as? String }) != change.version {
                problem("\(what): handoff \(change.handoff ?? "?") or its agent.desired is not for \(change.version ?? "?"): \(record)")
            }
        case .unchanged:
            if !about.contains(where: { kind($0) == "agent.desired" && data($0)["version"] as? String == change.version })
                && !about.contains(where: { kind($0) == "handoff.began" && data($0)["to"] as? String == change.version }) {
                problem("\(what): the version was never desired nor handed over to")
            }
        case .push:
            let stored = about.filter { kind($0) == "release.stored" && data($0)["version"] as? String == change.version }
            let view = try daemon.endpoint.get("/v1/releases/\(change.agent)/\(change.version ?? "")", token: daemon.token)
            let file = FileManager.default.contents(atPath: state.file("releases/\(change.agent)/\(change.version ?? "")/bin/\(change.agent)"))
            let whole = stored.count == 1 && data(stored[0])["sha256"] as? String == change.sha256 && view.status == 200
                && file == Data(change.body)
            // Recorded as stored, then killed before the rename: the next batond records it
            // deleted (`missing`), and it is not there.
            let deleted = about.contains { kind($0) == "release.deleted" && data($0)["version"] as? String == change.version }
            let absent = (stored.isEmpty || deleted) && view.status == 404 && file == nil
            if change.answered ? !whole : !(whole || absent) {
                problem("\(what): records \(stored.count), GET \(view.status), file \(file == nil ? "absent" : "present")")
            }
            let leftovers = ((try? FileManager.default.contentsOfDirectory(atPath: state.file("releases/\(change.agent)"))) ?? [])
                .filter { name in [".upload-", ".unpack-", ".deleted-", ".current."].contains { name.hasPrefix($0) } }
            if !leftovers.isEmpty { problem("releases/\(change.agent) holds leftovers after the restart: \(leftovers)") }
        }
    }

    /// An operator's desired version is never half done: its `agent.desired` is followed
    /// by the handoff to it (before the agent's next desired version), unless that version
    /// already worked.
    func checkDesiredWhole() {
        // What works: the current release, 1.0 at the start.
        var running = Dictionary(uniqueKeysWithValues: agents.map { ($0.name, "1.0") })
        var pending: [String: (version: String, seq: Int)] = [:]
        var previous = 0
        for record in records {
            // Records a snapshot took unread: what they held is unknown.
            if seq(record) > previous + 1 && kind(record) != "ledger.cut" { pending = [:] }
            previous = seq(record)
            let fields = data(record)
            guard let agent = fields["agent"] as? String else { continue }
            switch kind(record) {
            case "agent.desired":
                if let open = pending[agent] { problem("\(agent): agent.desired \(open.version) at seq \(open.seq) was never handed over to") }
                let version = fields["version"] as? String ?? ""
                pending[agent] = running[agent] == version ? nil : (version, seq(record))
            case "handoff.began":
                if let open = pending[agent], fields["to"] as? String == open.version { pending[agent] = nil }
            case "release.current":
                running[agent] = fields["version"] as? String
            default:
                break
            }
        }
        for (agent, open) in pending where running[agent] != open.version {
            problem("\(agent): agent.desired \(open.version) at seq \(open.seq) was never handed over to")
        }
    }

    // MARK: the end

    struct Summary {
        var line = ""
        var kills = 0
        var handoffs = 0
        var acknowledged = 0
    }

    func finalCheck(iterations: Int) throws -> Summary {
        guard let daemon else { throw TestFailure("no batond") }
        // Every agent works again once the last handoffs settled.
        try? waitUntil(timeout: 60) { agents.allSatisfy { working($0.name) } }
        for agent in agents where !working(agent.name) { problem("\(agent.name): no instance works at the end") }
        try refresh(daemon, full: true)
        let changes = shared.withLock { state -> [Change] in
            defer { state.changes.removeAll() }
            return state.changes
        }
        for change in changes { try checkChange(change, daemon) }
        checkDesiredWhole()

        // The longest time each agent was without a working instance, net of the outages.
        var worst = (agent: "", gap: 0.0, down: 0.0, excess: 0.0)
        var figures: [String] = []
        for agent in agents {
            let log = AgentEventLog(path: events(agent.name)).events
            if !overlaps(log).isEmpty { problem("\(agent.name): two instances worked at once: \(overlaps(log))") }
            var agentWorst = (gap: 0.0, down: 0.0, excess: 0.0)
            for gap in gaps(workingIntervals(log)) {
                let down = outages.reduce(0.0) { $0 + overlap(gap, ($1.killed, $1.heardBy)) }
                let outage = outages.reduce(0.0) { $0 + overlap(gap, ($1.killed, $1.ready)) }
                let seconds = Double(gap.to - gap.from) / 1e9
                let excess = seconds - down
                if excess > agentWorst.excess { agentWorst.excess = excess }
                if seconds > agentWorst.gap { agentWorst = (seconds, outage, max(agentWorst.excess, excess)) }
                if excess > agent.gapBudget {
                    problem(String(format: "%@ was without a working instance for %.2f s, %.2f s beyond batond's outages (budget %.1f s)",
                                   agent.name, seconds, excess, agent.gapBudget))
                }
            }
            figures.append(String(format: "%@ %.2f s (down %.2f s, beyond %.2f s)", agent.name, agentWorst.gap, agentWorst.down, agentWorst.excess))
            if agentWorst.gap > worst.gap { worst = (agent.name, agentWorst.gap, agentWorst.down, agentWorst.excess) }
        }

        let ended = records.filter { kind($0) == "handoff.ended" }
        let outcomes = Dictionary(grouping: ended) { data($0)["outcome"] as? String ?? "?" }.mapValues(\.count)
        let refusals = shared.withLock { $0.refusals }
        let downs = outages.map(\.seconds)
        var summary = Summary(kills: outages.count, handoffs: ended.count, acknowledged: checkedChanges)
        summary.line = "soak summary: seed \(seed), iterations \(iterations), kills \(outages.count), "
            + "handoffs ended \(ended.count) \(outcomes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")), "
            + "in flight at a kill \(inFlightPhases.values.reduce(0, +)) (\(inFlightPhases.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))), rewinds \(records.filter { kind($0) == "agent.rewound" }.count), "
            + "acknowledged changes checked \(checkedChanges) (\(checkedByState) by state), unanswered checked \(checkedUnanswered), "
            + "records \(lastSeq) (\(unread) taken by a snapshot unread), "
            + String(format: "batond down %.2f s mean, %.2f s max; ", downs.reduce(0, +) / Double(max(1, downs.count)), downs.max() ?? 0)
            + String(format: "max without a working instance %.2f s (%@; batond down %.2f s of it); ", worst.gap, worst.agent, worst.down)
            + "per agent: \(figures.joined(separator: "; ")); "
            + "refusals \(refusals.sorted { $0.key < $1.key }.map { "\($0.key)×\($0.value)" }.joined(separator: " ")); "
            + "lost \(problems.filter { $0.contains("acknowledged") || $0.contains("changed across") || $0.contains("jumps") || $0.contains("ends at") }.count), "
            + "problems \(problems.count)"
        return summary
    }

    /// The stretches, after the first go, when no instance worked.
    func gaps(_ intervals: [(instance: String, from: UInt64, to: UInt64)]) -> [(from: UInt64, to: UInt64)] {
        var found: [(UInt64, UInt64)] = []
        guard var covered = intervals.first?.to else { return [] }
        for interval in intervals.dropFirst() {
            if interval.from > covered { found.append((covered, interval.from)) }
            covered = max(covered, interval.to)
        }
        return found
    }

    func overlap(_ a: (from: UInt64, to: UInt64), _ b: (UInt64, UInt64)) -> Double {
        let from = max(a.from, b.0), to = min(a.to, b.1)
        return to > from ? Double(to - from) / 1e9 : 0
    }

    /// Stops the last batond and its agents (`stop_agents_on_exit`), then anything the
    /// ledger names that still runs; the killed batonds' reapers end once theirs are gone.
    func finish() {
        if !problems.isEmpty {
            // What a report needs: the ledger, batond's output and the agents' event files.
            let keep = NSTemporaryDirectory() + "baton-soak-\(seed)"
            try? FileManager.default.removeItem(atPath: keep)
            try? FileManager.default.createDirectory(atPath: keep, withIntermediateDirectories: true)
            for name in ["ledger/journal.jsonl"] + agents.map({ "events-\($0.name).log" }) {
                try? FileManager.default.copyItem(atPath: state.file(name), toPath: "\(keep)/\((name as NSString).lastPathComponent)")
            }
            try? daemon?.log.write(toFile: "\(keep)/batond.log", atomically: true, encoding: .utf8)
            say("soak: the ledger and the event files are kept in \(keep)")
        }
        stopDrivers()
        daemon?.stop()
        for record in records where kind(record) == "instance.spawned" {
            guard let pid = data(record)["pid"] as? Int else { continue }
            let probe = ProcessProbe(Int32(pid))
            if probe.isAlive && probe.command?.hasPrefix("baton-testagen") == true { probe.kill() }
        }
        for reaper in killed where reaper.waitForExit() == nil {
            Issue.record("a killed batond's reaper did not end: these still run: \(ProcessProbe(reaper.process.processIdentifier).descendants)")
        }
        killed.removeAll()
    }
}

/// A line on standard output at once (print's buffer reaches a pipe only at exit).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
