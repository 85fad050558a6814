import BatonTestSupport
import Foundation
import Glibc
import Testing

/// `PUT /v1/version` with real agents: one at a time stopping at the first failure, and
/// the barrier, checked from the agents' own event files: no agent works while the
/// migration runs, and a failed migration brings the old versions back.
@Suite("machine rollout", .serialized)
struct RolloutIntegrationTests {
    static let agents = ["a", "b", "c"]

    /// Three agents on 1.0, each with a 2.0; `migration`, when given, is `a`'s 2.0
    /// `release.json` migration (a shell script body).
    struct Machine {
        let state = TemporaryDirectory("batond")
        let releases: [String: TestReleases]
        let daemon: BatondProcess
        var migrationLog: String { state.file("migration.log") }
        var gate: String { state.file("migration.go") }

        init(migration: String? = nil, broken: String? = nil) throws {
            var releases: [String: TestReleases] = [:]
            var config = ""
            for name in RolloutIntegrationTests.agents {
                let agent = TestReleases(state: state, agent: name)
                try agent.add("1.0")
                try agent.add("2.0", name == broken ? ["--fail-check"] : [])
                try agent.setCurrent("1.0")
                releases[name] = agent
                config += agent.config(ready: "10s", stop: "3s", kill: "1s") + "\n\n"
            }
            if let migration {
                let directory = state.file("releases/a/2.0")
                try "#!/bin/sh\n\(migration)\n".write(toFile: directory + "/bin/migrate", atomically: true, encoding: .utf8)
                chmod(directory + "/bin/migrate", 0o755)
                try #"{"migration": ["{release}/bin/migrate"]}"#.write(toFile: directory + "/release.json", atomically: true, encoding: .utf8)
            }
            self.releases = releases
            daemon = try BatondProcess(state: state, configText: config)
            for name in RolloutIntegrationTests.agents { try waitWorking(name, "1.0") }
        }

        func agent(_ name: String) -> [String: Any] {
            (try? daemon.endpoint.get("/v1/agents/\(name)", token: daemon.token).json()) ?? [:]
        }

        func waitWorking(_ name: String, _ version: String) throws {
            do { try waitUntil(timeout: 30) {
                let view = agent(name)
                return (view["running"] as? [String: Any])?["version"] as? String == version
                    && (view["instances"] as? [[String: Any]])?.count == 1
            } } catch {
                Issue.record("\(name) did not come to run \(version) alone: \(agent(name)); machine: \((try? self.version()) ?? [:])")
                throw error
            }
        }

        func version() throws -> [String: Any] {
            try daemon.endpoint.get("/v1/version", token: daemon.token).json()
        }

        /// Waits for the rollout to end; returns the machine's view.
        func settled() throws -> [String: Any] {
            var view: [String: Any] = [:]
            try waitUntil(timeout: 60) {
                view = (try? version()) ?? [:]
                return view["pending"] is NSNull && !((view["history"] as? [Any]) ?? []).isEmpty
            }
            return view
        }

        /// A migration script line that appends `<word> <CLOCK_MONOTONIC ns>` to the log.
        static func stamp(_ word: String, _ log: String) -> String {
            #"python3 -c 'import time; print("\#(word)", time.monotonic_ns())' >> '\#(log)'"#
        }

        func stamps() -> [String: UInt64] {
            let text = (try? String(contentsOfFile: migrationLog, encoding: .utf8)) ?? ""
            var stamps: [String: UInt64] = [:]
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: " ")
                if parts.count == 2, let time = UInt64(parts[1]) { stamps[String(parts[0])] = time }
            }
            return stamps
        }
    }

    @Test(.enabled(if: which("python3") != nil, "the migration stamps CLOCK_MONOTONIC with python3"))
    func theBarrierHaltsEveryAgentWhileTheMigrationRunsThenStartsTheNewVersion() throws {
        let machine = try Machine(migration: "")
        let log = machine.migrationLog, gate = machine.gate
        // The migration records when it ran, and holds until the test lets it end.
        try """
        #!/bin/sh
        \(Machine.stamp("begin", log))
        while [ ! -e '\(gate)' ]; do sleep 0.05; done
        echo migrated
        \(Machine.stamp("end", log))
        """.write(toFile: machine.state.file("releases/a/2.0/bin/migrate"), atomically: true, encoding: .utf8)
        chmod(machine.state.file("releases/a/2.0/bin/migrate"), 0o755)

        let begun = try machine.daemon.endpoint.json("PUT", "/v1/version", token: machine.daemon.token, #"{"version":"2.0","barrier":true}"#)
        #expect(begun.status == 202, "\(begun.text)")
        do { try waitUntil(timeout: 30) { machine.stamps()["begin"] != nil } } catch {
            Issue.record("the migration did not begin: \((try? machine.version()) ?? [:])")
            throw error
        }

        // While it runs: not ready, and an operator may not start an agent.
        let ready = try machine.daemon.endpoint.get("/readyz")
        #expect(ready.status == 503 && ready.text.contains("barrier"), "\(ready.text)")
        #expect(try machine.version()["pending"] as? [String: Any] != nil)
        let meddling = try machine.daemon.endpoint.json("PUT", "/v1/agents/b/desired", token: machine.daemon.token, #"{"version":"1.0"}"#)
        #expect(meddling.status == 409 && meddling.errorCode == "rollout_in_progress", "\(meddling.text)")

        #expect(FileManager.default.createFile(atPath: gate, contents: nil))
        let view = try machine.settled()
        #expect(view["version"] as? String == "2.0", "\(view)")
        #expect((view["history"] as? [[String: Any]])?.last?["outcome"] as? String == "done")
        #expect(try machine.daemon.endpoint.get("/readyz").status == 200)

        let stamps = machine.stamps()
        let begin = try #require(stamps["begin"]), end = try #require(stamps["end"])
        for name in Self.agents {
            try machine.waitWorking(name, "2.0")
            let events = try #require(machine.releases[name]).log()
            let intervals = workingIntervals(events)
            // From the agents' own records: nobody worked while the migration ran.
            for interval in intervals {
                #expect(interval.to <= begin || interval.from >= end,
                        "\(name) \(interval.instance) worked during the migration (\(interval.from)...\(interval.to), migration \(begin)...\(end))")
            }
            #expect(overlaps(events).isEmpty, "\(name): two instances worked at once")
            #expect(intervals.last.map { iv in events.contains { $0.instance == iv.instance && $0.version == "2.0" } } == true)
        }
        let output = try String(contentsOfFile: machine.state.file("logs/machine-1.a.migration.log"), encoding: .utf8)
        #expect(output.contains("migrated"))
    }

    /// batond killed while the migration runs: the migration dies with it, and the next
    /// batond counts it as failed (its outcome is unknown; it never runs twice) and brings
    /// the previous versions back.
    @Test(.enabled(if: which("python3") != nil, "the migration stamps CLOCK_MONOTONIC with python3"))
    func killedDuringTheMigrationTheNextBatondRestoresAndNeverRunsItTwice() throws {
        let machine = try Machine(migration: "")
        let log = machine.migrationLog, gate = machine.gate
        let script = machine.state.file("releases/a/2.0/bin/migrate")
        try """
        #!/bin/sh
        echo $$ > '\(machine.state.file("migration.pid"))'
        \(Machine.stamp("begin", log))
        while [ ! -e '\(gate)' ]; do sleep 0.05; done
        \(Machine.stamp("end", log))
        """.write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        #expect(try machine.daemon.endpoint.json("PUT", "/v1/version", token: machine.daemon.token,
                                                 #"{"version":"2.0","barrier":true}"#).status == 202)
        try waitUntil(timeout: 30) { machine.stamps()["begin"] != nil }
        let pid = try #require(Int32(try String(contentsOfFile: machine.state.file("migration.pid"), encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)))
        machine.daemon.signal(SIGKILL)
        _ = machine.daemon.waitForExit()
        try waitUntil(timeout: 10) { kill(pid, 0) != 0 }

        let restarted = try BatondProcess(state: machine.state, configText: try String(contentsOfFile: machine.state.file("batond.toml"),
                                                                                       encoding: .utf8))
        var view: [String: Any] = [:]
        try waitUntil(timeout: 60) {
            view = (try? restarted.endpoint.get("/v1/version", token: restarted.token).json()) ?? [:]
            return view["pending"] is NSNull
        }
        let last = try #require((view["history"] as? [[String: Any]])?.last)
        #expect(last["outcome"] as? String == "restored", "\(view)")
        #expect((last["error"] as? String)?.contains("outcome is unknown") == true, "\(last)")
        for name in Self.agents {
            try waitUntil(timeout: 30) {
                let agent = (try? restarted.endpoint.get("/v1/agents/\(name)", token: restarted.token).json()) ?? [:]
                return (agent["running"] as? [String: Any])?["version"] as? String == "1.0"
            }
            #expect(try #require(machine.releases[name]).log().allSatisfy { $0.version == "1.0" })
        }
        #expect(machine.stamps()["end"] == nil, "the migration never finished, and never ran again")
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(text.components(separatedBy: "begin").count == 2, "it began once: \(text)")
    }

    @Test func aFailedMigrationBringsThePreviousVersionsBack() throws {
        let machine = try Machine(migration: "echo 'no such table: users' >&2; exit 3")
        let begun = try machine.daemon.endpoint.json("PUT", "/v1/version", token: machine.daemon.token, #"{"version":"2.0","barrier":true}"#)
        #expect(begun.status == 202, "\(begun.text)")
        let view = try machine.settled()
        #expect(view["version"] is NSNull, "the machine never got to 2.0")
        let last = try #require((view["history"] as? [[String: Any]])?.last)
        #expect(last["outcome"] as? String == "restored")
        #expect((last["error"] as? String)?.contains("no such table") == true, "\(last)")
        for name in Self.agents {
            try machine.waitWorking(name, "1.0")
            let events = try #require(machine.releases[name]).log()
            #expect(!events.contains { $0.version == "2.0" }, "\(name): 2.0 never started")
            #expect(overlaps(events).isEmpty)
            // Halted, then a new instance of 1.0 works: two 1.0 instances got go, one after the other.
            #expect(Set(events.filter { $0.event == "go" }.map(\.instance)).count == 2, "\(name): \(events)")
        }
        let journal = try String(contentsOfFile: machine.state.file("ledger/journal.jsonl"), encoding: .utf8)
        #expect(journal.contains("\"migration_succeeded\":false"))
    }

    @Test func withoutTheBarrierAgentsGoOneAtATimeAndTheFirstFailureStopsTheRest() throws {
        let machine = try Machine(broken: "b")
        let begun = try machine.daemon.endpoint.json("PUT", "/v1/version", token: machine.daemon.token, #"{"version":"2.0"}"#)
        #expect(begun.status == 202, "\(begun.text)")
        let view = try machine.settled()
        let last = try #require((view["history"] as? [[String: Any]])?.last)
        #expect(last["outcome"] as? String == "failed")
        #expect((last["error"] as? String)?.contains("still on their versions: c") == true, "\(last)")
        try machine.waitWorking("a", "2.0")
        try machine.waitWorking("b", "1.0")
        try machine.waitWorking("c", "1.0")
        #expect(try #require(machine.releases["c"]).log().allSatisfy { $0.version == "1.0" }, "c was never touched")
        // One at a time: b's 2.0 started only after a's handoff committed.
        let aGo = try #require(machine.releases["a"]).log().last { $0.event == "go" && $0.version == "2.0" }
        let bStart = try #require(machine.releases["b"]).log().first { $0.event == "started" && $0.version == "2.0" }
        #expect(try #require(aGo).nanoseconds < #require(bStart).nanoseconds)
    }
}
