// http-agent: a small HTTP service that batond upgrades without refusing a connection.
//
// Every request is answered `<agent> <version> (instance <instance>, pid <pid>)`.
//
// Under batond, with `listen` in the agent's configuration, batond opens the listening
// sockets once and passes the same ones to every instance (LISTEN_FDS, the systemd
// way). A new instance holds them without accepting until batond says go; connections
// that arrive meanwhile wait in the kernel's backlog. On stop the old instance stops
// accepting, closes its own descriptors, answers what it accepted, and reports stopped;
// the new one gets go and takes the waiting connections. None is refused.
//
// Without `listen`, --bind tcp://HOST:PORT makes it bind the port itself after go (the
// old instance holds it until then). Without batond (no BATON_* variables) it serves at
// once until SIGTERM or SIGINT, on passed sockets (systemd socket activation) or --bind.
//
// See README.md beside this file, and docs/agent-protocol.md.

import ArgumentParser
import BatonAgent
import Foundation
import Glibc

@main
struct HTTPAgent: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "http-agent",
        abstract: "A small HTTP service agent for batond (examples/http-agent/README.md).")

    @Option(help: ArgumentHelp("Sleep S seconds before reporting ready (a slow self-check).", valueName: "S"))
    var startupDelay: Double = 0

    @Option(help: ArgumentHelp("Bind tcp://HOST:PORT itself when no socket is passed.", valueName: "ADDRESS"))
    var bind: String?

    @Option(help: ArgumentHelp("Without batond: the version to answer with.", valueName: "VERSION"))
    var standaloneVersion = "dev"

    func run() throws {
        // SIGTERM and SIGINT are taken by sigwait, never by a handler: block them before any
        // thread starts (threads inherit the mask). A client gone mid-answer is not fatal.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGTERM)
        sigaddset(&stopSignals, SIGINT)
        pthread_sigmask(SIG_BLOCK, &stopSignals, nil)
        signal(SIGPIPE, SIG_IGN)

        let sockets = try BatonAgent.Listeners.passed().all
        guard !sockets.isEmpty || bind != nil else {
            throw ValidationError("no listening socket was passed (LISTEN_FDS): give --bind tcp://HOST:PORT")
        }
        if ProcessInfo.processInfo.environment["BATON_INSTANCE"] == nil {
            serveStandalone(sockets, stopSignals: stopSignals)
        } else {
            try serveUnderBatond(sockets, stopSignals: stopSignals)
        }
    }

    /// The agent protocol: check, report ready, accept only while holding go.
    func serveUnderBatond(_ sockets: [BatonAgent.Listener], stopSignals: sigset_t) throws -> Never {
        let baton = try BatonAgent(diagnostics: { log($0) })
        let body = "\(baton.agent) \(baton.version) (instance \(baton.instance), pid \(getpid()))\n"
        let acceptor = BatonAgent.Acceptor(sockets, orBind: bind) { answer($0, body: body) }

        // The self-check. It must not accept: the old instance still serves these sockets.
        sleep(seconds: startupDelay)

        // SIGTERM is stop, only sooner: stop accepting, drain, report stopped (best effort).
        Thread.detachNewThread {
            var signals = stopSignals
            var received: Int32 = 0
            sigwait(&signals, &received)
            acceptor.stop()
            try? baton.stopped(timeout: .seconds(3))
            Glibc.exit(0)
        }

        do {
            var signal = try baton.ready()
            while signal != .stop {
                if signal == .go { try acceptor.start() }
                if signal == .wait { acceptor.pause() }
                signal = try baton.waitForSignal(seen: signal)
            }
            acceptor.stop()  // no accept after this; accepted requests answered; our descriptors closed
            try baton.stopped()
            Glibc.exit(0)
        } catch {
            // 401/404: batond does not know this instance; never serve beside the one it runs.
            acceptor.stop()
            log("http-agent: \(error)")
            Glibc.exit(1)
        }
    }

    /// Without batond: serve at once, until SIGTERM or SIGINT.
    func serveStandalone(_ sockets: [BatonAgent.Listener], stopSignals: sigset_t) -> Never {
        let body = "http-agent \(standaloneVersion) (instance standalone, pid \(getpid()))\n"
        let acceptor = BatonAgent.Acceptor(sockets, orBind: bind) { answer($0, body: body) }
        sleep(seconds: startupDelay)
        do {
            try acceptor.start()
        } catch {
            log("http-agent: \(error)")
            Glibc.exit(1)
        }
        log("http-agent: serving on \(acceptor.listeners.map { "\($0.address.map { "\($0)" } ?? $0.name)" }.joined(separator: ", "))")
        var signals = stopSignals
        var received: Int32 = 0
        sigwait(&signals, &received)
        acceptor.stop()
        Glibc.exit(0)
    }
}

/// Reads the request head and answers `200` with `body`; the acceptor closes the
/// connection when this returns. A real service would parse the request here.
func answer(_ connection: BatonAgent.Acceptor.Connection, body: String) {
    guard connection.receive(until: Array("\r\n\r\n".utf8)) != nil else { return }
    let response = "HTTP/1.1 200 OK\r\n"
        + "Content-Type: text/plain\r\n"
        + "Content-Length: \(body.utf8.count)\r\n"
        + "Connection: close\r\n"
        + "\r\n"
        + body
    _ = connection.send(Array(response.utf8))
}

func log(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

func sleep(seconds: Double) {
    if seconds > 0 { usleep(useconds_t(seconds * 1_000_000)) }
}
