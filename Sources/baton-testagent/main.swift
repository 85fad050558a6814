// baton-testagent: an agent with misbehaviour switches, for tests and demos.
//
// It speaks the agent protocol through BatonAgent and can be told to be slow, to fail
// its self-check, to crash, to ignore stop or SIGTERM. With --events FILE it appends
// one line per event, `<event> <instance> <version> <monotonic_ns>`, so that a test
// can put the lines of several instances on one time line (CLOCK_MONOTONIC is
// system-wide on Linux).
//
// Exit codes: 0 stopped cleanly (stop signal or SIGTERM), 1 protocol or environment
// error, 2 --exit-before-ready, 3 --fail-check, 64 bad command line, 70 --crash-after.

import BatonAgent
import Foundation
import Glibc
import Synchronization

// In a type, not at top level: top-level variables of main.swift are main-actor isolated.
enum Usage {
    static let text = """
        usage: baton-testagent [switches]   (seconds are decimals, e.g. 0.5)
          --ready-after S      sleep S before reporting ready (the "self-check" time; default 0)
          --never-ready        never report ready; sleep, still handling SIGTERM
          --fail-check         report failed ("self-check failed (--fail-check)") after
                               --ready-after, then exit 3 (also on a SIGTERM meanwhile)
          --crash-after S      S seconds after go, exit 70 without reporting
          --exit-before-ready  print "boom: exiting before ready" to stderr, exit 2 at once
          --ignore-stop        on stop: record it, keep working, never report stopped
          --ignore-term        ignore SIGTERM entirely
          --stop-takes S       after stop (or SIGTERM): keep working S seconds, then report
                               stopped and exit 0 (a SIGTERM during those S seconds does not
                               shorten them)
          --events FILE        append `<event> <instance> <version> <monotonic_ns>` lines;
                               events: started ready go stop-received stopped term exit
          --log-every S        print a line every S seconds while working
        environment: BATON_SOCKET or BATON_URL, BATON_AGENT, BATON_INSTANCE, BATON_TOKEN,
        BATON_VERSION (set by batond).
        """
}

// MARK: command line

struct Options: Sendable {
    var readyAfter: Double = 0
    var neverReady = false
    var failCheck = false
    var crashAfter: Double?
    var exitBeforeReady = false
    var ignoreStop = false
    var ignoreTerm = false
    var stopTakes: Double = 0
    var eventsPath: String?
    var logEvery: Double?

    /// Parses the arguments; on a mistake prints usage and exits 64.
    static func parse(_ arguments: [String]) -> Options {
        var options = Options()
        var rest = arguments[...]
        func fail(_ message: String) -> Never {
            Output.err("baton-testagent: \(message)\n\(Usage.text)")
            _exit(64)
        }
        while let argument = rest.popFirst() {
            // Both `--switch value` and `--switch=value`.
            var name = argument
            var inlineValue: String?
            if let equals = argument.firstIndex(of: "="), argument.hasPrefix("--") {
                name = String(argument[..<equals])
                inlineValue = String(argument[argument.index(after: equals)...])
            }
            func value() -> String {
                if let inlineValue { return inlineValue }
                guard let next = rest.popFirst() else { fail("\(name) needs a value") }
                return next
            }
            func seconds() -> Double {
                let text = value()
                guard let number = Double(text), number.isFinite, number >= 0 else {
                    fail("\(name): not a number of seconds: \(text)")
                }
                return number
            }
            func flag() {
                if inlineValue != nil { fail("\(name) takes no value") }
            }
            switch name {
            case "--ready-after": options.readyAfter = seconds()
            case "--never-ready": flag(); options.neverReady = true
            case "--fail-check": flag(); options.failCheck = true
            case "--crash-after": options.crashAfter = seconds()
            case "--exit-before-ready": flag(); options.exitBeforeReady = true
            case "--ignore-stop": flag(); options.ignoreStop = true
            case "--ignore-term": flag(); options.ignoreTerm = true
            case "--stop-takes": options.stopTakes = seconds()
            case "--events": options.eventsPath = value()
            case "--log-every":
                let every = seconds()
                guard every > 0 else { fail("--log-every must be above 0") }
                options.logEvery = every
            case "-h", "--help":
                Output.out(Usage.text)
                _exit(0)
            default: fail("unknown argument \(argument)")
            }
        }
        return options
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

    func record(_ event: String) {
        guard fd >= 0 else { return }
        let line = Array("\(event)\(suffix) \(monotonicNanoseconds())\n".utf8)
        _ = line.withUnsafeBytes { Glibc.write(fd, $0.baseAddress!, $0.count) }
    }
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

    init(options: Options, baton: BatonAgent) {
        self.options = options
        self.baton = baton
        events = EventLog(path: options.eventsPath, instance: baton.instance, version: baton.version)
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
            signal = try baton.ready()
        } catch {
            Output.err("\(name): reporting ready: \(error)")
            finish(1)
        }
        Output.out("\(name) ready; signal \(signal)")

        while true {
            switch signal {
            case .go: startWorking()
            case .wait: pauseWorking()
            case .stop: stopSignalled()
            }
            do {
                signal = try baton.waitForSignal(seen: signal)
            } catch {
                // Not transient (those are retried inside): batond no longer knows this
                // instance. Working on regardless could break the exclusion.
                Output.err("\(name): waiting for a signal: \(error)")
                finish(1)
            }
            Output.out("\(name) signal \(signal)")
        }
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
        guard first else { return }
        if let every = options.logEvery {
            Thread.detachNewThread { [self] in logWhileWorking(every: every) }
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
        if paused { Output.out("\(name) told to wait: not working") }
    }

    private func logWhileWorking(every: Double) {
        var tick = 0
        while true {
            sleep(seconds: every)
            if state.withLock({ $0.working }) {
                tick += 1
                Output.out("\(name) working (tick \(tick))")
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
        let (start, failing) = state.withLock { state in
            defer { state.stopping = true }
            return (!state.stopping, state.failing)
        }
        // Nothing was ever worked on: the failure stands.
        if failing { finish(3) }
        // Already stopping: that path goes on and exits.
        if start { stop(byTerm: true) }
    }

    /// Finishes the work and reports stopped. After a stop signal a failed report is an
    /// error (exit 1); after SIGTERM it is best effort (batond may be going away).
    private func stop(byTerm: Bool) -> Never {
        sleep(seconds: options.stopTakes)
        state.withLock { state in
            state.working = false
            state.finishedWork = true
        }
        events.record("stopped")
        do {
            try baton.stopped(timeout: byTerm ? .seconds(3) : .seconds(60))
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
        let options = Options.parse(Array(CommandLine.arguments.dropFirst()))
        TermSignal.prepare(ignore: options.ignoreTerm)
        let baton: BatonAgent
        do {
            baton = try BatonAgent(diagnostics: { Output.err($0) })
        } catch {
            Output.err("baton-testagent: \(error)")
            _exit(1)
        }
        let agent = TestAgent(options: options, baton: baton)
        if !options.ignoreTerm { TermSignal.handle(with: agent) }
        agent.run()
    }
}

Main.run()
