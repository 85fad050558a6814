import BatonTestSupport
import Crypto
import Foundation
import Glibc
import Testing

/// An external agent fetches its own release (docs/agent-protocol.md, "Agents that fetch
/// their own release"): batond only records the desired version and shows it in the
/// instances' signal answers; the old instance's wrapper downloads the release, checks
/// its digest and starts it; the new process registers and reports ready, and the usual
/// handoff stops the old one.
@Suite("agents that fetch their own release")
struct SelfFetchTests {
    static let registrationToken = "registration-token-0123456789abcdef"
    static let tools = ["curl", "jq", "sha256sum"].allSatisfy { which($0) != nil }

    /// The agent and its wrapper in one: it registers itself as `$AGENT` at version `$1`,
    /// reports ready, works while it holds go, and on a desired version it has not
    /// started yet downloads it, checks its SHA-256 and starts it beside itself. Events go
    /// to `$EVENTS` as baton-testagent writes them (`<event> <instance> <version> <ns>`).
    static let script = #"""
        #!/bin/sh
        set -eu
        version=$1 id=unregistered
        api() { # METHOD PATH TOKEN [BODY]
            curl -sS --fail-with-body --max-time 60 --unix-socket "$BATON_SOCKET" -X "$1" \
                -H "Authorization: Bearer $3" -H 'Content-Type: application/json' ${4:+--data "$4"} "http://batond$2"
        }
        event() { echo "$1 $id $version $(date +%s%N)" >> "$EVENTS"; }
        registration=$(api POST "/v1/agents/$AGENT/instances" "$REGISTRATION_TOKEN" "{\"pid\":$$,\"version\":\"$version\"}")
        id=$(echo "$registration" | jq -r .instance)
        token=$(echo "$registration" | jq -r .token)
        event started
        answer=$(api POST "/v1/instances/$id/ready" "$token" '{}')
        event ready
        working=no started=
        while :; do
            signal=$(echo "$answer" | jq -r .signal)
            desired=$(echo "$answer" | jq -r '.desired.version // ""')
            case $signal in
            go) [ $working = yes ] || { working=yes; event go; } ;;
            stop)
                event stop-received
                event stopped
                api POST "/v1/instances/$id/stopped" "$token" '{}' >/dev/null
                event exit
                exit 0 ;;
            esac
            if [ -n "$desired" ] && [ "$desired" != "$started" ]; then
                started=$desired
                file="$WORKDIR/agent-$desired"
                curl -sS --fail --max-time 60 -o "$file.part" "$(echo "$answer" | jq -r .desired.url)"
                if echo "$(echo "$answer" | jq -r .desired.sha256)  $file.part" | sha256sum -c --status; then
                    mv "$file.part" "$file" && chmod +x "$file"
                    event fetched
                    "$file" "$desired" </dev/null >>"$file.out" 2>&1 &
                else
                    event bad-digest
                fi
            fi
            answer=$(api GET "/v1/instances/$id/signal?seen=$signal&seen_desired=$desired&wait=30" "$token")
        done
        """#

    /// Starts `script` at `version` as a process of this test's (posix_spawn: a shell's
    /// exit is then surely seen), and reaps it in the background.
    static func spawn(_ path: String, version: String, environment: [String: String]) throws -> pid_t {
        let words: [String] = ["/bin/sh", path, version]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        let env: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            env.forEach { free($0) }
        }
        var pid: pid_t = 0
        guard posix_spawn(&pid, "/bin/sh", nil, nil, argv, env) == 0 else { throw TestFailure("posix_spawn /bin/sh") }
        let child = pid
        Thread.detachNewThread {
            var status: Int32 = 0
            while waitpid(child, &status, 0) < 0 && errno == EINTR {}
        }
        return child
    }

    func start(_ state: TemporaryDirectory) throws -> BatondProcess {
        try BatondProcess(state: state, configText: """
            [agents.ext]
            external = true
            registration_token = "\(Self.registrationToken)"
            stop_timeout = "5s"
            kill_timeout = "2s"
            stop_registered_on_exit = true
            """)
    }

    @Test(.enabled(if: tools, "needs curl, jq and sha256sum"), .timeLimit(.minutes(3)))
    func theOldInstancesWrapperStartsTheNewOneAndTheHandoffFollows() throws {
        let state = TemporaryDirectory("selffetch")
        let server = try StaticHTTPServer()
        defer { server.close() }
        let release = Array(Self.script.utf8)
        let digest = SHA256.hash(data: release).map { String(format: "%02x", $0) }.joined()
        server.route("/agent-2.0", .bytes(release))
        let daemon = try start(state)
        defer { daemon.stop() }
        let events = AgentEventLog(path: state.file("events.log"))
        let script = state.file("agent-1.0")
        try Self.script.write(toFile: script, atomically: true, encoding: .utf8)
        let environment = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "BATON_SOCKET": daemon.socketPath,
                           "AGENT": "ext", "REGISTRATION_TOKEN": Self.registrationToken, "EVENTS": events.path,
                           "WORKDIR": state.path]
        _ = try Self.spawn(script, version: "1.0", environment: environment)
        try waitUntil(timeout: 30) { events.events.contains { $0.event == "go" && $0.version == "1.0" } }
        // batond started nothing and stores no release: the registered 1.0 works.
        var view = try daemon.endpoint.get("/v1/agents/ext", token: daemon.token).json()
        #expect((view["running"] as? [String: Any])?["version"] as? String == "1.0", "\(view)")
        #expect(view["desired"] is NSNull)

        let url = server.url("/agent-2.0")
        let answer = try daemon.endpoint.json("PUT", "/v1/agents/ext/desired", token: daemon.token,
                                              #"{"version":"2.0","url":"\#(url)","sha256":"\#(digest.uppercased())"}"#)
        #expect(answer.status == 202, "\(answer.text)")
        let recorded = try answer.json()
        #expect(recorded["version"] as? String == "2.0" && recorded["url"] as? String == url && recorded["sha256"] as? String == digest,
                "\(recorded)")

        // The old wrapper fetches 2.0 and starts it; it registers, reports ready, and
        // the handoff tells the old one stop, then the new one go.
        try waitUntil(timeout: 60) { events.events.contains { $0.event == "go" && $0.version == "2.0" } }
        let log = events.events
        #expect(overlaps(log).isEmpty, "two instances worked at once: \(log)")
        let oldStopped = try #require(log.first { $0.event == "stopped" && $0.version == "1.0" })
        let newReady = try #require(log.first { $0.event == "ready" && $0.version == "2.0" })
        let newGo = try #require(log.first { $0.event == "go" && $0.version == "2.0" })
        #expect(newReady.nanoseconds < oldStopped.nanoseconds && oldStopped.nanoseconds <= newGo.nanoseconds,
                "the new one was ready before the old one stopped, and got go after: \(log)")
        #expect(log.contains { $0.event == "fetched" && $0.version == "1.0" })
        #expect(server.requests.filter { $0.path == "/agent-2.0" }.count == 1)

        // The ledger: the handoff between the two registered instances committed to 2.0.
        let page = try daemon.endpoint.get("/v1/events?since=0", token: daemon.token).json()
        let records = page["records"] as? [[String: Any]] ?? []
        let desired = try #require(records.first { $0["kind"] as? String == "agent.desired" }?["data"] as? [String: Any])
        #expect(desired["url"] as? String == url && desired["sha256"] as? String == digest, "\(desired)")
        let began = try #require(records.first { $0["kind"] as? String == "handoff.began" }?["data"] as? [String: Any])
        #expect(began["from"] as? String == "1.0" && began["to"] as? String == "2.0", "\(began)")
        let ended = try #require(records.first { $0["kind"] as? String == "handoff.ended" }?["data"] as? [String: Any])
        #expect(ended["outcome"] as? String == "committed", "\(ended)")
        let spawned = records.filter { $0["kind"] as? String == "instance.spawned" }.compactMap { $0["data"] as? [String: Any] }
        #expect(spawned.count == 2 && spawned.allSatisfy { $0["registered"] as? Bool == true }, "batond started none: \(spawned)")
        try waitUntil(timeout: 20) {
            view = (try? daemon.endpoint.get("/v1/agents/ext", token: daemon.token).json()) ?? [:]
            return (view["instances"] as? [[String: Any]])?.map { $0["version"] as? String } == ["2.0"]
        }
        #expect((view["running"] as? [String: Any])?["version"] as? String == "2.0", "\(view)")
        // batond's stop tells the registered 2.0 stop (stop_registered_on_exit).
        #expect(daemon.stop() == 0)
        try waitUntil(timeout: 20) { events.events.contains { $0.event == "exit" && $0.version == "2.0" } }
    }

    /// The signal answers carry the desired version while it is not the instance's own,
    /// and a parked long-poll that passed `seen_desired` is answered when it changes (and
    /// at once when the caller has not seen the current one).
    @Test func theSignalCarriesTheDesiredVersionAndWakesOnIt() throws {
        let state = TemporaryDirectory("selffetch-signal")
        let daemon = try start(state)
        defer { daemon.stop() }
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["300"]
        try sleeper.run()
        defer { kill(sleeper.processIdentifier, SIGKILL) }
        let registration = try daemon.unix.json("POST", "/v1/agents/ext/instances", token: Self.registrationToken,
                                                #"{"pid":\#(sleeper.processIdentifier),"version":"1.0"}"#).json()
        let id = try #require(registration["instance"] as? String)
        let token = try #require(registration["token"] as? String)
        let ready = try daemon.unix.json("POST", "/v1/instances/\(id)/ready", token: token, "{}").json()
        #expect(ready["signal"] as? String == "go" && ready["desired"] is NSNull, "\(ready)")

        let endpoint = daemon.unix
        let parked = inBackground { try endpoint.get("/v1/instances/\(id)/signal?seen=go&seen_desired=&wait=60", token: token, timeout: 90) }
        try waitUntil(timeout: 20) {
            (try? daemon.endpoint.get("/metrics").text.contains("baton_http_parked_requests 1\n")) ?? false
        }
        let sha = String(repeating: "ab", count: 32)
        let put = try daemon.endpoint.json("PUT", "/v1/agents/ext/desired", token: daemon.token,
                                           #"{"version":"2.0","url":"http://127.0.0.1:9/x.tar.gz","sha256":"\#(sha)"}"#)
        #expect(put.status == 202, "\(put.text)")
        let woken = try parked.wait(timeout: 20).json()
        #expect(woken["signal"] as? String == "go", "\(woken)")
        let desired = try #require(woken["desired"] as? [String: Any], "\(woken)")
        #expect(desired["version"] as? String == "2.0" && desired["sha256"] as? String == sha
                && desired["url"] as? String == "http://127.0.0.1:9/x.tar.gz" && desired["set_by"] != nil, "\(desired)")
        // Seen: parked again (answered at its deadline, unchanged); not seen: at once.
        let seen = try endpoint.get("/v1/instances/\(id)/signal?seen=go&seen_desired=2.0&wait=1", token: token, timeout: 10).json()
        #expect(seen["signal"] as? String == "go")
        let started = ContinuousClock.now
        let unseen = try endpoint.get("/v1/instances/\(id)/signal?seen=go&seen_desired=&wait=30", token: token, timeout: 10).json()
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect((unseen["desired"] as? [String: Any])?["version"] as? String == "2.0", "\(unseen)")
        let agent = try daemon.endpoint.get("/v1/agents/ext", token: daemon.token).json()
        #expect((agent["desired"] as? [String: Any])?["url"] as? String == "http://127.0.0.1:9/x.tar.gz", "\(agent)")
        #expect((agent["config"] as? [String: Any])?["external"] as? Bool == true, "\(agent)")
        // Back to its own version: the answer carries none, and the parked poll hears it.
        let back = inBackground { try endpoint.get("/v1/instances/\(id)/signal?seen=go&seen_desired=2.0&wait=60", token: token, timeout: 90) }
        try waitUntil(timeout: 20) {
            (try? daemon.endpoint.get("/metrics").text.contains("baton_http_parked_requests 1\n")) ?? false
        }
        #expect(try daemon.endpoint.json("PUT", "/v1/agents/ext/desired", token: daemon.token, #"{"version":"1.0"}"#).status == 202)
        let none = try back.wait(timeout: 20).json()
        #expect(none["desired"] is NSNull, "\(none)")
    }

    /// What the desired route takes for an external agent, and refuses.
    @Test(arguments: [
        (#"{"version":"2.0","sha256":"abc"}"#, 422, "invalid_digest"),
        (#"{"version":"2.0","url":"ftp://example.com/x"}"#, 422, "invalid_url"),
        (#"{"version":"2.0","url":"http://example.com/x"}"#, 422, "invalid_digest"),
        (#"{"version":"../2.0"}"#, 422, "invalid_version"),
        (#"{"version":"2.0","sha":"x"}"#, 422, "invalid_body"),
    ])
    func theDesiredRouteChecksWhereToFetch(_ body: String, _ status: Int, _ code: String) throws {
        let daemon = try start(TemporaryDirectory("selffetch-route"))
        defer { daemon.stop() }
        let answer = try daemon.endpoint.json("PUT", "/v1/agents/ext/desired", token: daemon.token, body)
        #expect(answer.status == status, "\(answer.text)")
        #expect(answer.errorCode == code, "\(answer.text)")
        let view = try daemon.endpoint.get("/v1/agents/ext", token: daemon.token).json()
        #expect(view["desired"] is NSNull, "nothing recorded: \(view)")
    }

    /// An agent batond starts keeps its rules: a stored release, no url or sha256.
    @Test func anAgentBatondStartsTakesNoURL() throws {
        let state = TemporaryDirectory("selffetch-web")
        let web = TestReleases(state: state)
        try web.add("1.0")
        try web.add("2.0")
        let daemon = try BatondProcess(state: state, configText: web.config())
        defer { daemon.stop() }
        let answer = try daemon.endpoint.json("PUT", "/v1/agents/web/desired", token: daemon.token,
                                              #"{"version":"2.0","url":"http://example.com/x","sha256":"\#(String(repeating: "0", count: 64))"}"#)
        #expect(answer.status == 422 && answer.errorCode == "not_external", "\(answer.text)")
    }
}
