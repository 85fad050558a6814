// baton-testagent: an agent with misbehaviour switches, for tests and demos.
//
// It speaks the agent protocol through BatonAgent and can be told to be slow, to fail
// its self-check, to crash, to ignore stop or SIGTERM. With --events FILE it appends
// one line per event, `<event> <instance> <version> <monotonic_ns>`, so that a test
// can put the lines of several instances on one time line (CLOCK_MONOTONIC is
// system-wide on Linux).
//
// With --http it serves HTTP/1.1 on the listening sockets batond passes it (LISTEN_FDS),
// only while it holds go: every request is answered `200` with `<instance> <version>`,
// and every accepted connection is an `accept` event, timed right after accept(2)
// returned. On stop it stops accepting, closes its descriptors, answers what it
// accepted, and only then records `stopped`. --bind ADDRESS makes it bind a socket
// itself after go instead, as agents without socket hand-over do.
//
// Exit codes: 0 stopped cleanly (stop signal or SIGTERM), 1 protocol or environment
// error, 2 --exit-before-ready, 3 --fail-check, 64 bad command line, 70 --crash-after.

import ArgumentParser
import BatonAgent
import Foundation
import Glibc
import Synchronization

// MARK: command line

/// The switches. Seconds are decimals (`0.5`); `--name value` and `--name=value` both
/// work. Only parsed: `Main` runs the agent (`run()` is never called).
struct Options: ParsableCommand, Sendable {
    static let configuration = CommandConfiguration(
        commandName: "baton-testagent",
        abstract: "An agent with misbehaviour switches, for tests and demos (docs/agent-protocol.md).",
        discussion: """
            Environment: BATON_SOCKET or BATON_URL, BATON_AGENT, BATON_INSTANCE, BATON_TOKEN, \
            BATON_VERSION (set by batond); LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES when batond \
            passes listening sockets (the agent's `listen`).

            Exit codes: 0 stopped cleanly, 1 environment or protocol error (batond not \
            knowing this instance included), 2 --exit-before-ready, 3 --fail-check, 64 bad \
            command line, 70 --crash-after.
            """)

    @Option(help: ArgumentHelp("Sleep S seconds before reporting ready (the \"self-check\").", valueName: "S"))
    var readyAfter: Double = 0

    @Flag(help: "Never report ready; sleep, still handling SIGTERM.")
    var neverReady = false

    @Flag(help: "Report failed (\"self-check failed (--fail-check)\") after --ready-after, then exit 3 (also on a SIGTERM meanwhile).")
    var failCheck = false

    @Option(help: ArgumentHelp("S seconds after go, exit 70 without reporting.", valueName: "S"))
    var crashAfter: Double?

    @Flag(help: "Print \"boom: exiting before ready\" to stderr and exit 2 at once.")
    var exitBeforeReady = false

    @Flag(help: "On stop: record it, keep working, never report stopped.")
    var ignoreStop = false

    @Flag(help: "Ignore SIGTERM entirely.")
    var ignoreTerm = false

    @Option(help: ArgumentHelp(
        "After stop (or SIGTERM): keep working S seconds, then report stopped and exit 0 (a SIGTERM meanwhile does not shorten them).",
        valueName: "S"))
    var stopTakes: Double = 0

    @Option(name: .customLong("events"), help: ArgumentHelp(
        "Append `<event> <instance> <version> <monotonic_ns>` lines; events: started ready go work accept stop-received stopped term disowned exit.",
        valueName: "FILE"))
    var eventsPath: String?

    @Option(help: ArgumentHelp("Print a line every S seconds while working.", valueName: "S"))
    var logEvery: Double?

    @Option(help: ArgumentHelp("Record a `work` event every S seconds while working.", valueName: "S"))
    var workEvery: Double?

    @Flag(help: ArgumentHelp(
        "Serve HTTP/1.1 on every passed listening socket while holding go: each request gets 200 `<instance> <version>`; each accepted connection is an `accept` event."))
    var http = false

    @Option(help: ArgumentHelp(
        "With no sockets passed: bind ADDRESS (tcp://HOST:PORT) itself after go, serve as --http does, close it on stop. Implies --http.",
        valueName: "ADDRESS"))
    var bind: String?

    /// Whether it serves HTTP at all.
    var serves: Bool { http || bind != nil }

    func validate() throws {
        for (name, value) in [("--ready-after", readyAfter), ("--stop-takes", stopTakes), ("--crash-after", crashAfter ?? 0)] {
            guard value.isFinite, value >= 0 else { throw ValidationError("\(name): not a number of seconds: \(value)") }
        }
        for (name, value) in [("--log-every", logEvery), ("--work-every", workEvery)] {
            if let value, !(value.isFinite && value > 0) { throw ValidationError("\(name) must be a number of seconds above 0") }
        }
        if let bind, BatonAgent.Listener.Address(bind) == nil {
            throw ValidationError("--bind: not tcp://HOST:PORT or unix:/PATH: \(bind)")
        }
    }
}

// MARK: output

/// Unbuffered output: each line is one write(2), so nothing is lost at _exit and lines
/// from several threads never interleave.
enum Output {
    static func out(_ line: String) { write(line: line, to: STDOUT_FILENO) }
    static func err(_ line: String) { write(line: line, to: STDERR_FILENO) }

    static func write(line: String, to fd: Int32) {
        let bytes = Array((line + "\n").utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n > 0 {
                offset += n
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                return
            }
        }
    }
}

func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

func sleep(seconds: Double) {
    guard seconds > 0 else { return }
    var request = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - seconds.rounded(.down)) * 1e9))
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 && errno == EINTR {
        request = remaining
    }
}

func parkForever() -> Never {
    while true { sleep(seconds: 3600) }
}

/// The --events file: opened O_APPEND, one write(2) a line, so lines from several
/// processes never tear or overwrite each other.
final class EventLog: Sendable {
    private let fd: Int32  // -1: no file
    private let suffix: String

    init(path: String?, instance: String, version: String) {
        suffix = " \(instance) \(version)"
        guard let path else {
            fd = -1
            return
        }
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0 {
            Output.err("baton-testagent: cannot open --events file \(path): \(String(cString: strerror(errno)))")
            _exit(1)
        }
    }

    /// Appends `<event> <instance> <version> <at>`; `at` is now unless given.
    func record(_ event: String, at nanoseconds: UInt64 = monotonicNanoseconds()) {
        guard fd >= 0 else { return }
        let line = Array("\(event)\(suffix) \(nanoseconds)\n".utf8)
        _ = line.withUnsafeBytes { Glibc.write(fd, $0.baseAddress!, $0.count) }
    }
}

/// One request on an accepted connection: `200` with `body`, `Connection: close` (the
/// acceptor closes it when this returns).
func answer(_ connection: BatonAgent.Acceptor.Connection, body: String) {
    guard connection.receive(until: Array("\r\n\r\n".utf8)) != nil else { return }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
    _ = connection.send(Array((head + body).utf8))
}

// MARK: the agent

/// The agent's state, shared by the main thread (the signal loop), the SIGTERM thread
/// and the timer threads; every access goes through `state`.
final class TestAgent: Sendable {
    struct State {
        var reportedReady = false
        var working = false
        var everWorked = false
        var stopReceived = false
        /// The stop path (report stopped, exit) has begun, by the stop signal or SIGTERM.
        var stopping = false
        /// The work is over (`stopped` recorded): a stop signal now is only the echo of
        /// the report, not news.
        var finishedWork = false
        /// The self-check failed (--fail-check): a SIGTERM now just ends it, exit 3.
        var failing = false
        /// An exit has begun; nothing else may start.
        var exiting = false
    }

    let options: Options
    let baton: BatonAgent
    let events: EventLog
    let state = Mutex(State())
    /// With --http or --bind: accepts while working. Its stop, on the stop path, is final:
    /// a start that comes later does nothing.
    let acceptor: BatonAgent.Acceptor?

    init(options: Options, baton: BatonAgent, listeners: [BatonAgent.Listener]) {
        self.options = options
        self.baton = baton
        let events = EventLog(path: options.eventsPath, instance: baton.instance, version: baton.version)
        self.events = events
        let body = "\(baton.instance) \(baton.version)\n"
        acceptor = options.serves
            ? BatonAgent.Acceptor(listeners, orBind: options.bind) { connection in
                events.record("accept", at: connection.acceptedAt)
                answer(connection, body: body)
            }
            : nil
        if options.serves && listeners.isEmpty && options.bind == nil {
            Output.err("baton-testagent: --http, but no socket was passed (LISTEN_FDS) and no --bind: serving nothing")
        }
    }

    var name: String { "testagent \(baton.instance)" }

    /// Exits once: the first caller records `exit` and ends the process; a later one
    /// (another thread racing it) waits for the end.
    func finish(_ code: Int32) -> Never {
        let first = state.withLock { state in
            defer { state.exiting = true }
            return !state.exiting
        }
        guard first else { parkForever() }
        events.record("exit")
        Output.out("\(name) exiting \(code)")
        // _exit: output is unbuffered, and no atexit handler should run while the other
        // threads are still blocked in their calls.
        _exit(code)
    }

    /// The main flow, on the main thread.
    func run() -> Never {
        Output.out("\(name) version \(baton.version) starting")
        events.record("started")

        if options.exitBeforeReady {
            Output.err("boom: exiting before ready")
            finish(2)
        }
        sleep(seconds: options.readyAfter)
        if options.failCheck {
            // batond may answer the report only after it has sent SIGTERM (it terminates
            // a failed successor): that SIGTERM must not turn this into a clean stop.
            let goOn = state.withLock { state in
                state.failing = !state.stopping
                return state.failing
            }
            guard goOn else { parkForever() }
            let reason = "self-check failed (--fail-check)"
            Output.err("\(name): \(reason)")
            do {
                _ = try baton.failed(reason: reason)
            } catch {
                Output.err("\(name): reporting failed: \(error)")
            }
            finish(3)
        }
        if options.neverReady {
            Output.out("\(name) never reporting ready (--never-ready)")
            parkForever()
        }

        // A SIGTERM during the self-check has begun the stop path: do not report ready.
        let goOn = state.withLock { state in
            guard !state.stopping else { return false }
            state.reportedReady = true
            return true
        }
        guard goOn else { parkForever() }
        // Recorded before the request: batond may tell the old instance to stop before
        // this one reads its answer, and the lines must keep cause before effect.
        events.record("ready")
        var signal: BatonAgent.Signal
        do {
            // Retried until batond answers, however long it is away.
            signal = try baton.ready()
        } catch {
            giveUp("reporting ready", error)
        }
        Output.out("\(name) ready; signal \(signal)")

        while true {
            switch signal {
            case .go: startWorking()
            case .wait: pauseWorking()
            case .stop: stopSignalled()
            }
            do {
                // While batond is away this keeps asking with the same `seen`, and the
                // work goes on under the signal held.
                signal = try baton.waitForSignal(seen: signal)
            } catch {
                giveUp("waiting for a signal", error)
            }
            Output.out("\(name) signal \(signal)")
        }
    }

    /// A call failed for good (transient failures are retried inside). When batond does
    /// not know this instance, whatever it starts may already be working: the work
    /// stops before anything else, and the process exits 1.
    private func giveUp(_ doing: String, _ error: any Error) -> Never {
        if let error = error as? BatonAgentError, error.isUnknownInstance {
            state.withLock { $0.working = false }
            acceptor?.stop()
            events.record("disowned")
            Output.err("\(name): batond does not know this instance (\(error)); stopped working, exiting 1 so as not to work beside what it starts")
        } else {
            Output.err("\(name): \(doing): \(error)")
        }
        finish(1)
    }

    private func startWorking() {
        let (start, first) = state.withLock { state -> (Bool, Bool) in
            guard !state.working, !state.stopping, !state.stopReceived else { return (false, false) }
            state.working = true
            defer { state.everWorked = true }
            return (true, !state.everWorked)
        }
        guard start else { return }
        events.record("go")
        Output.out("\(name) go: working")
        do {
            // After the go line, so that every accept line follows it.
            try acceptor?.start()
        } catch {
            Output.err("\(name): cannot serve: \(error)")
            finish(1)
        }
        guard first else { return }
        if let every = options.logEvery {
            whileWorking(every: every) { [self] tick in Output.out("\(name) working (tick \(tick))") }
        }
        if let every = options.workEvery {
            whileWorking(every: every) { [self] _ in events.record("work") }
        }
        if let after = options.crashAfter {
            Thread.detachNewThread { [self] in
                sleep(seconds: after)
                Output.err("\(name): crashing (--crash-after \(after))")
                finish(70)
            }
        }
    }

    private func pauseWorking() {
        let paused = state.withLock { state in
            defer { state.working = false }
            return state.working
        }
        if paused {
            acceptor?.pause()
            Output.out("\(name) told to wait: not working")
        }
    }

    /// Calls `tick` (with 1, 2, 3...) every `every` seconds, on a thread of its own,
    /// whenever the instance is working then. Under the lock, so that no tick follows
    /// the line that says the work ended (`stopped`, `disowned`).
    private func whileWorking(every: Double, _ tick: @escaping @Sendable (Int) -> Void) {
        Thread.detachNewThread { [self] in
            var ticks = 0
            while true {
                sleep(seconds: every)
                state.withLock { state in
                    guard state.working else { return }
                    ticks += 1
                    tick(ticks)
                }
            }
        }
    }


    /// The stop signal arrived (the main thread). Returns only when it is ignored.
    private func stopSignalled() {
        enum Action { case repeated, recordOnly, stop }
        let action = state.withLock { state -> Action in
            if state.stopReceived || state.finishedWork { return .repeated }
            state.stopReceived = true
            if state.stopping || options.ignoreStop { return .recordOnly }
            state.stopping = true
            return .stop
        }
        switch action {
        case .repeated:
            return
        case .recordOnly:
            events.record("stop-received")
            Output.out(options.ignoreStop ? "\(name) stop received; ignoring it (--ignore-stop)" : "\(name) stop received")
        case .stop:
            events.record("stop-received")
            Output.out("\(name) stop received")
            stop(byTerm: false)
        }
    }

    /// SIGTERM arrived (the SIGTERM thread).
    func terminated() {
        events.record("term")
        Output.out("\(name) SIGTERM")
        let (start, failing, finished) = state.withLock { state in
            defer { state.stopping = true }
            return (!state.stopping, state.failing, state.finishedWork)
        }
        // Nothing was ever worked on: the failure stands.
        if failing { finish(3) }
        // The work is over and the stopped report is being retried (batond away): the
        // exit tells batond as much as the report would.
        if finished { finish(0) }
        // Still finishing the work after a stop signal: that path goes on and exits.
        if start { stop(byTerm: true) }
    }

    /// Finishes the work and reports stopped. After a stop signal a failed report is an
    /// error (exit 1); after SIGTERM it is best effort (batond may be going away).
    private func stop(byTerm: Bool) -> Never {
        // No accept after this returns; what was accepted is answered, the descriptors closed.
        acceptor?.stop()
        sleep(seconds: options.stopTakes)
        state.withLock { state in
            state.working = false
            state.finishedWork = true
        }
        events.record("stopped")
        do {
            // After a stop signal the report is retried until batond answers it.
            try baton.stopped(timeout: byTerm ? .seconds(3) : nil)
            Output.out("\(name) reported stopped")
        } catch {
            Output.err("\(name): reporting stopped: \(error)")
            if !byTerm { finish(1) }
        }
        finish(0)
    }
}

/// SIGTERM, consumed by sigwait(2) on a thread of its own: the signal is blocked in
/// every thread (the mask is set before any thread exists and inherited), so it never
/// interrupts or kills the main flow.
enum TermSignal {
    static func termSet() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        return set
    }

    /// Call first, before any thread is started.
    static func prepare(ignore: Bool) {
        if ignore {
            signal(SIGTERM, SIG_IGN)
        } else {
            var set = termSet()
            pthread_sigmask(SIG_BLOCK, &set, nil)
        }
    }

    static func handle(with agent: TestAgent) {
        Thread.detachNewThread {
            var set = termSet()
            while true {
                var received: Int32 = 0
                guard sigwait(&set, &received) == 0, received == SIGTERM else { continue }
                agent.terminated()
            }
        }
    }
}

enum Main {
    static func run() -> Never {
        let options = Options.parseOrExit()
        TermSignal.prepare(ignore: options.ignoreTerm)
        // Its output goes to a pipe batond reads: if batond dies, a write must fail
        // (and be ignored), not kill the instance that keeps working meanwhile.
        signal(SIGPIPE, SIG_IGN)
        let baton: BatonAgent
        do {
            baton = try BatonAgent(diagnostics: { Output.err($0) })
        } catch {
            Output.err("baton-testagent: \(error)")
            _exit(1)
        }
        let listeners: [BatonAgent.Listener]
        do {
            // Before any thread starts: it takes the LISTEN_* variables out of the environment.
            listeners = try BatonAgent.Listeners.passed().all
        } catch {
            Output.err("baton-testagent: \(error)")
            _exit(1)
        }
        let agent = TestAgent(options: options, baton: baton, listeners: listeners)
        if !options.ignoreTerm { TermSignal.handle(with: agent) }
        agent.run()
    }
}

Main.run()
