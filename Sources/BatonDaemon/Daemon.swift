import BatonAPI
import BatonConfig
import BatonCore
import BatonFleet
import BatonHTTP
import BatonLedger
import BatonSupervisor
import Foundation
import Glibc
import Logging
import ServiceLifecycle
import Synchronization

/// batond's life: lock and load the ledger, bind the listeners, serve, and on SIGTERM or
/// SIGINT answer every parked request, record the clean stop and exit 0.
public struct Daemon: Sendable {
    /// Exit codes that mean something to a service manager (sysexits.h).
    public enum Exit: Int32, Sendable {
        case ok = 0
        case failure = 1
        case ioError = 74
        case stateDirInUse = 75
        case configError = 78
    }

    public struct Failure: Error, CustomStringConvertible {
        public let exit: Exit
        public let description: String
    }

    let config: BatondConfig
    let logger: Logger
    let notifier = SystemdNotifier()

    public init(config: BatondConfig, logger: Logger) {
        self.config = config
        self.logger = logger
    }

    public func run() async throws(Failure) {
        raiseFileLimit()
        Processes.keepUmask()
        let startedAt = Timestamp.now()
        let ledger: Ledger
        do {
            var options = Ledger.Options()
            options.snapshotEvery = config.ledger.snapshotEvery
            options.retainRecords = config.ledger.retainRecords
            ledger = try Ledger(stateDirectory: config.stateDir, options: options, logger: logger)
        } catch {
            if case .locked = error { throw Failure(exit: .stateDirInUse, description: error.description) }
            throw Failure(exit: .ioError, description: error.description)
        }
        defer { ledger.close() }

        let token: String
        do {
            token = try OperatorToken.loadOrCreate(at: config.stateDir + "/operator.token")
        } catch {
            throw Failure(exit: .ioError, description: error.description)
        }
        let operatorGID = try resolveOperatorGroup()
        let binaries = DaemonBinaries(stateDirectory: config.stateDir)
        binaries.removeLeftoverUploads()
        let running: RunningBinary
        do {
            running = try RunningBinary.identify(store: binaries)
        } catch {
            throw Failure(exit: .failure, description: "cannot read this binary's digest: \(error)")
        }

        // After a re-exec the previous image's sockets, never bound again: clients
        // queued in their backlogs meanwhile are served, not refused.
        let handedOver = Listener.handedOver()
        // systemd's descriptors: its socket unit's, and the agents' sockets batond put in
        // its file descriptor store before a restart (named agent.*).
        let fromSystemd = Listener.activatedDescriptors()
        let stored = fromSystemd.filter { $0.name?.hasPrefix(AgentSockets.storePrefix) == true }
        let activated = fromSystemd.filter { $0.name?.hasPrefix(AgentSockets.storePrefix) != true }.compactMap { Listener.activated(fd: $0.fd) }
        let listeners = try bindListeners(operatorGID: operatorGID, handedOver: handedOver, activated: activated)
        let agentListener: Listener
        if let inherited = handedOver[Role.agent] {
            agentListener = inherited
        } else {
            do {
                // Any local user may connect: its routes want an instance's token or a
                // registration, and each peer has its own cap.
                agentListener = try Listener.unix(path: config.agentSocketPath, mode: 0o666)
            } catch {
                listeners.forEach { $0.close() }
                throw Failure(exit: .failure, description: error.description)
            }
        }
        let addressFile = config.stateDir + "/batond.addr"
        defer {
            for listener in listeners { listener.close() }
            agentListener.close()
            unlink(addressFile)
        }
        try publishAddress(listeners, to: addressFile)

        let described = (listeners + [agentListener]).map(\.description)
        // The agents' listening sockets: across a re-exec first, else from systemd's store;
        // under systemd each one batond opens goes into its store, so that it outlives
        // batond's own restarts.
        var inheritedSockets = Dictionary(stored.map { ($0.name!, $0.fd) }) { first, again in
            close(again)  // systemd kept two under one name (an earlier batond's leftovers)
            return first
        }
        inheritedSockets.merge(AgentSockets.handedOver()) { kept, handed in
            close(kept)
            return handed
        }
        let notifier = self.notifier
        let store = notifier.isEnabled
            ? AgentSockets.Store(keep: { fd, name in notifier.store(fd, name: name) },
                                 remove: { name in notifier.send("FDSTOREREMOVE=1\nFDNAME=\(name)") })
            : nil
        let sockets = AgentSockets(inherited: inheritedSockets, logger: logger, store: store)
        // Instances talk to batond over their own socket, out of reach of floods on the others.
        let supervisor = Supervisor(config: config, ledger: ledger, socketPath: config.agentSocketPath,
                                    url: listeners.first { !$0.isUnix }?.url, logger: logger, sockets: sockets)
        await supervisor.releases.boot()
        let auth = OperatorAuth(token: token, operatorGID: operatorGID, probesOpen: config.http.probesOpen,
                                instanceForToken: { [registry = supervisor.registry] in registry.instance(forToken: $0) },
                                instanceForProcess: { [supervisor] in supervisor.instance(forProcess: $0) },
                                registrationTokens: Dictionary(uniqueKeysWithValues: config.agents.compactMap { agent in
                                    agent.registrationToken.map { (agent.name, $0) }
                                }),
                                adopting: { [supervisor] in supervisor.isAdopting })
        let upgrader = SelfUpgrader(ledger: ledger, binaries: binaries, running: running, startedAt: startedAt,
                                    arguments: Array(CommandLine.arguments.dropFirst()), logger: logger)
        let rollouts = Rollouts(supervisor: supervisor, ledger: ledger, agents: config.agents,
                                logDirectory: config.stateDir + "/logs", logger: logger)
        // Fleet mode: the member reads the agents as the API shows them.
        let views = AgentViewSource()
        let fleet: Fleet?
        if let settings = config.fleet {
            let local = MachineHost(supervisor: supervisor, rollouts: rollouts, agents: config.agents, views: { views.views() })
            do throws(FleetRefusal) {
                fleet = try Fleet(settings: settings, local: local, logger: logger)
            } catch {
                throw Failure(exit: .configError, description: error.description)
            }
        } else {
            fleet = nil
        }
        let api = API(context: .init(config: config, startedAt: startedAt, listeners: described),
                      ledger: ledger, supervisor: supervisor, rollouts: rollouts, fleet: fleet, auth: auth, daemon: upgrader,
                      logger: logger)
        views.install(api)
        var httpConfiguration = HTTPServer.Configuration()
        httpConfiguration.maxBodyBytes = config.http.maxBodyBytes
        httpConfiguration.connectionLimit = UInt32(config.http.maxConnections)
        httpConfiguration.connectionTimeoutSeconds = UInt32(max(1, config.http.connectionTimeout.components.seconds))
        httpConfiguration.requestHeadTimeout = config.http.requestHeadTimeout
        httpConfiguration.requestBodyTimeout = config.http.requestBodyTimeout
        httpConfiguration.maxStreams = config.http.maxEventStreams
        httpConfiguration.streamKeepalive = config.http.eventStreamKeepalive
        let server = api.makeServer(configuration: httpConfiguration)
        let agentPolicy = ListenerPolicy(
            maxConnections: config.http.agentMaxConnections, maxConnectionsPerPeer: config.http.agentConnectionsPerPeer,
            peerKey: { [supervisor] peer in supervisor.instance(forProcess: peer.pid).map { "instance \($0)" } ?? "uid \(peer.uid)" },
            scopes: [.instance, .registration],
            reserved: ListenerPolicy.defaultReserve(maxConnections: config.http.agentMaxConnections))

        do {
            try await ledger.append(.daemonStarted(.init(pid: getpid(), version: BatonVersion.current, config: config.file,
                                                        listeners: described)))
        } catch {
            throw Failure(exit: .ioError, description: "cannot record the start in the ledger: \(error)")
        }
        let served = listeners.map { (role: $0.isUnix ? Role.control : Role.tcp, listener: $0,
                                      policy: ListenerPolicy(maxConnections: config.http.maxConnections,
                                                             reserved: ListenerPolicy.defaultReserve(maxConnections: config.http.maxConnections))) }
            + [(role: Role.agent, listener: agentListener, policy: agentPolicy)]
        for (_, listener, policy) in served {
            do { try server.serve(listener, policy: policy) } catch {
                server.shutdown(grace: .zero)
                throw Failure(exit: .failure, description: error.description)
            }
        }
        do {
            try await upgrader.settle()
        } catch {
            server.shutdown(grace: .zero)
            throw Failure(exit: .ioError, description: "cannot settle the last upgrade in the ledger: \(error)")
        }
        upgrader.install { [self] binary, digest in
            reexecute(into: binary, digest: digest, server: server, served: served, sockets: sockets, ledger: ledger)
        }
        logger.info("batond serving", metadata: ["listeners": "\(described.joined(separator: ", "))",
                                                 "state_dir": "\(config.stateDir)", "pid": "\(getpid())"])

        let services = ServiceGroup(configuration: .init(
            services: [
                .init(service: HTTPService(server: server, listeners: listeners.map(\.description),
                                           adopted: { [supervisor, logger] in
                                               await supervisor.adopted()
                                               // Every agent took its sockets: the rest belong to none.
                                               for name in supervisor.sockets.closeUnclaimed() {
                                                   logger.notice("closed a kept socket no agent lists any more", metadata: ["socket": "\(name)"])
                                               }
                                               // A rollout a restart cut short goes on once every agent re-adopted.
                                               await rollouts.resume()
                                               // Then the fleet: this host acts on its plan only with its own state settled.
                                               await fleet?.start()
                                           }, notifier: notifier, logger: logger)),
                .init(service: FleetService(fleet: fleet)),
                .init(service: WatchdogService(notifier: notifier)),
                .init(service: UpgradeService(upgrader: upgrader)),
                // Last, so it stops first: agents are stopped while the API still serves them.
                .init(service: SupervisorService(supervisor: supervisor, logger: logger)),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        do {
            try await services.run()
        } catch {
            logger.error("service group ended with an error", metadata: ["error": "\(error)"])
        }
        do {
            try await ledger.append(.daemonStopped(.init(pid: getpid(), reason: "signal")))
        } catch {
            logger.error("cannot record the stop in the ledger", metadata: ["error": "\(error)"])
        }
        logger.info("batond stopped")
    }

    // MARK: - Start-up steps

    private func resolveOperatorGroup() throws(Failure) -> gid_t? {
        guard let name = config.operatorGroup else { return nil }
        if let gid = gid_t(name) { return gid }
        guard let group = getgrnam(name) else {
            throw Failure(exit: .configError, description: "daemon.operator_group: no group named \"\(name)\"")
        }
        return group.pointee.gr_gid
    }

    /// The roles of the listeners, as they are named across a re-exec.
    enum Role {
        static let control = "control"
        static let tcp = "tcp"
        static let agent = "agent"
    }

    /// The previous image's sockets after a re-exec, else systemd's when activated, else
    /// the configured socket and TCP address.
    private func bindListeners(operatorGID: gid_t?, handedOver: [String: Listener], activated: [Listener]) throws(Failure) -> [Listener] {
        if let control = handedOver[Role.control] {
            return [control] + (handedOver[Role.tcp].map { [$0] } ?? [])
        }
        var listeners: [Listener] = []
        if let unix = activated.first(where: \.isUnix) {
            listeners.append(unix)
        } else {
            do {
                let directory = (config.socketPath as NSString).deletingLastPathComponent
                try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                listeners.append(try Listener.unix(path: config.socketPath, group: operatorGID))
            } catch {
                throw Failure(exit: .failure, description: error.description + (Listener.isAccepting(config.socketPath) ? "; is a batond already running?" : ""))
            }
        }
        if let tcp = activated.first(where: { !$0.isUnix }) {
            listeners.append(tcp)
        } else if let address = config.listen {
            do {
                listeners.append(try Listener.tcp(host: address.host, port: address.port))
            } catch {
                listeners.forEach { $0.close() }
                throw Failure(exit: .failure, description: error.description)
            }
        }
        for extra in activated where !listeners.contains(where: { $0.fd == extra.fd }) {
            logger.warning("ignoring an extra activated socket", metadata: ["socket": "\(extra)"])
        }
        return listeners
    }

    // MARK: - Re-executing in place

    /// Hands the listening sockets over and replaces this image with `binary`: same pid,
    /// same arguments, the agents untouched (no supervisor shutdown: they stay children
    /// of this pid and keep working). Returns only if `execve` failed, serving again on
    /// the same sockets (libmicrohttpd cannot un-quiesce: new daemons on the same fds).
    private func reexecute(into binary: String, digest: String, server: HTTPServer,
                           served: [(role: String, listener: Listener, policy: ListenerPolicy)], sockets: AgentSockets,
                           ledger: Ledger) -> String {
        guard server.handOver(grace: .seconds(2)) else { return "batond is stopping; no re-exec" }
        for entry in served { _ = entry.listener.setInheritable(true) }
        var environment = ProcessInfo.processInfo.environment
        environment[Listener.handedOverVariable] = Listener.handOverDescription(served.map { ($0.role, $0.listener) })
        // The agents' sockets cross too: never closed, so never unbound.
        environment[AgentSockets.handedOverVariable] = sockets.prepareReexec(true)
        environment[SelfUpgrader.markerVariable] = digest
        let argv = ([binary] + CommandLine.arguments.dropFirst()).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        notifier.send("RELOADING=1\nMONOTONIC_USEC=\(Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1000)\n"
                      + "STATUS=re-executing into batond \(digest)")
        // The mask crosses exec: a signal blocked on this thread would stay blocked for
        // the new image's whole life.
        var everything = sigset_t(), previous = sigset_t()
        sigemptyset(&everything)
        pthread_sigmask(SIG_SETMASK, &everything, &previous)
        // No write is half done when the image goes: the journal ends on a whole batch.
        let error: Int32 = ledger.withWritesHeld {
            execve(binary, argv, envp)
            return errno
        }
        pthread_sigmask(SIG_SETMASK, &previous, nil)
        for entry in served { _ = entry.listener.setInheritable(false) }
        _ = sockets.prepareReexec(false)
        do {
            try server.resumeServing(served.map { ($0.listener, $0.policy) })
        } catch {
            logger.critical("cannot serve again after the failed re-exec", metadata: ["error": "\(error)"])
        }
        notifier.send("READY=1\nSTATUS=serving (re-exec into \(digest) failed)")
        return "execve \(binary): \(String(cString: strerror(error)))"
    }

    /// Writes the TCP address (`HOST:PORT`) to `<state_dir>/batond.addr`, atomically, so
    /// scripts and tests can find a port-0 listener.
    private func publishAddress(_ listeners: [Listener], to path: String) throws(Failure) {
        guard let tcp = listeners.first(where: { !$0.isUnix }), case .tcp(let host, let port) = tcp.address else {
            unlink(path)
            return
        }
        let text = (host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)") + "\n"
        do {
            try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw Failure(exit: .ioError, description: "cannot write \(path): \(error)")
        }
    }

    /// Long-polls hold a descriptor each: lift the soft limit to the hard one.
    private func raiseFileLimit() {
        var limit = rlimit()
        guard getrlimit(RLIMIT_NOFILE_VALUE, &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(RLIMIT_NOFILE_VALUE, &limit)
    }
}

private let RLIMIT_NOFILE_VALUE = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)

/// Serves until graceful shutdown, then drains: quiesce, answer parked requests, stop.
struct HTTPService: Service {
    let server: HTTPServer
    let listeners: [String]
    let adopted: @Sendable () async -> Void
    let notifier: SystemdNotifier
    let logger: Logger

    func run() async throws {
        // Ready only now: the service group traps SIGTERM/SIGINT before it starts services,
        // so a stop request from here on is always a graceful one; and every agent has
        // re-adopted what an earlier batond left running.
        await adopted()
        notifier.send("READY=1\nSTATUS=serving on \(listeners.joined(separator: ", "))\nMAINPID=\(getpid())")
        try? await gracefulShutdown()
        notifier.send("STOPPING=1\nSTATUS=stopping")
        logger.info("shutting down: answering parked requests", metadata: ["parked": "\(server.parkedCount)"])
        // Blocks this task for at most the grace period; nothing else needs the thread then.
        server.shutdown(grace: .seconds(5))
    }
}

/// Pings systemd's watchdog at half its interval while batond runs.
struct WatchdogService: Service {
    let notifier: SystemdNotifier

    func run() async throws {
        guard let interval = notifier.watchdogInterval else {
            try? await gracefulShutdown()
            return
        }
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                notifier.send("WATCHDOG=1")
                try await Task.sleep(for: interval)
            }
        }
    }
}

/// Runs the agents; on graceful shutdown stops each the normal way (stop signal, then
/// TERM and KILL by deadline) before batond goes on to stop its API.
struct SupervisorService: Service {
    let supervisor: Supervisor
    let logger: Logger

    func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await supervisor.run() }
            try? await gracefulShutdown()
            logger.info("stopping agents")
            await supervisor.shutdown()
        }
    }
}

/// Leaves the fleet when batond stops: gives its lease back, so that the fleet sees this
/// host go at once and its slots and coordinator key are free (the agents keep working).
struct FleetService: Service {
    let fleet: Fleet?

    func run() async throws {
        // Returns only at shutdown: a service that returns ends the group.
        try? await gracefulShutdown()
        await fleet?.stop()
    }
}

/// The agents as the API shows them, for the fleet member (made before the API is).
private final class AgentViewSource: Sendable {
    private let api = Mutex<API?>(nil)
    func install(_ api: API) { self.api.withLock { $0 = api } }
    func views() -> [AgentView] { api.withLock { $0 }?.agentViews() ?? [] }
}
