import BatonConfig
import BatonCore
import BatonEtcd
import BatonReleases
import Foundation
import Logging
import Synchronization

/// Why a fleet request is refused; the API answers with it.
public enum FleetRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    /// The request is not a plan batond writes (422).
    case invalid(String)
    /// The plan is not the one the request expected (409).
    case conflict(String)
    /// There is no plan (or no previous version) to act on (404).
    case notFound(String)
    /// etcd cannot be reached: nothing was written (503).
    case unreachable(String)

    public var description: String {
        switch self {
        case .invalid(let text), .conflict(let text), .notFound(let text), .unreachable(let text): text
        }
    }
}

/// What `/metrics` shows of the fleet; read without waiting, from any thread.
public struct FleetGauges: Sendable, Equatable {
    public var connected = false
    public var lastContact: Timestamp?
    public var coordinator = false
    public var hostPhase: FleetHostStatus.Rollout.Phase?
    public var planID: String?
    public var planVersion: String?
    public var rolloutPhase: FleetRolloutState.Phase?
    /// Hosts registered, as this host last read them (the coordinator reads them at every change).
    public var hosts: Int?
    public var etcdRequests = 0
    public var refusedWrites = 0
    /// Why etcd did not answer the last request.
    public var lastError: String?
}

/// The gauges, written by the member and the coordinator as things change.
final class FleetGaugeBox: Sendable {
    private let state = Mutex(FleetGauges())
    var snapshot: FleetGauges { state.withLock { $0 } }
    func update(_ change: (inout FleetGauges) -> Void) { state.withLock { change(&$0) } }
}

/// Fleet mode (`[fleet]`): this host's membership and, when elected, the coordinator.
/// The API's fleet routes come here.
public final class Fleet: Sendable {
    public let settings: BatondConfig.FleetSettings
    let keys: FleetKeys
    let client: EtcdClient
    let local: any FleetLocal
    let member: FleetMember
    let coordinator: FleetCoordinatorRole
    let logger: Logger
    let gauges: FleetGaugeBox

    /// Reads the password file (if any) now: a missing file stops batond at start.
    public init(settings: BatondConfig.FleetSettings, local: any FleetLocal, logger: Logger) throws(FleetRefusal) {
        var password: String?
        if let file = settings.passwordFile {
            guard let data = FileManager.default.contents(atPath: file), let text = String(data: data, encoding: .utf8) else {
                throw .invalid("[fleet] password_file \(file) cannot be read")
            }
            password = text.trimmingCharacters(in: .newlines)
        }
        let client = EtcdClient(EtcdSettings(endpoints: settings.endpoints, caFile: settings.caFile, certFile: settings.certFile,
                                             keyFile: settings.keyFile, username: settings.username, password: password,
                                             requestTimeout: settings.requestTimeout))
        self.settings = settings
        self.keys = FleetKeys(settings)
        self.client = client
        self.local = local
        self.logger = logger
        let gauges = FleetGaugeBox()
        self.gauges = gauges
        self.member = FleetMember(settings: settings, client: client, local: local, gauges: gauges, logger: logger)
        self.coordinator = FleetCoordinatorRole(settings: settings, client: client, member: member, gauges: gauges, logger: logger)
    }

    public func start() async {
        await member.start()
        await coordinator.start()
        logger.notice("fleet mode", metadata: ["fleet": "\(settings.name)", "host": "\(settings.host)",
                                               "endpoints": "\(settings.endpoints.joined(separator: ","))"])
    }

    /// Leaves the fleet (gives the lease back); the agents keep working.
    public func stop() async {
        await coordinator.stop()
        await member.stop()
    }

    // MARK: - Reading

    /// The fleet now (one read of every key), or as last read when etcd cannot be reached.
    public func view() async -> FleetView {
        do throws(EtcdError) {
            let read = FleetContents(try await client.range(keys.root, prefix: true), keys: keys)
            gauges.update { $0.hosts = read.hosts.count }
            return FleetView(fleet: settings.name, host: settings.host, connected: true, error: nil, lastContact: .now(), fresh: true,
                             revision: read.revision, planRevision: read.planRevision, coordinator: read.coordinator?.string,
                             plan: read.plan, rollout: read.state, hosts: read.hosts)
        } catch {
            let snapshot = await member.snapshot
            return FleetView(fleet: settings.name, host: settings.host, connected: false, error: error.description,
                             lastContact: gauges.snapshot.lastContact, fresh: false, revision: snapshot?.revision ?? 0, planRevision: 0,
                             coordinator: await coordinator.leader, plan: snapshot?.plan, rollout: snapshot?.state,
                             hosts: [await member.status()])
        }
    }

    /// For `/v1/status`: never waits.
    public var summary: FleetSummary {
        let gauges = self.gauges.snapshot
        return FleetSummary(fleet: settings.name, host: settings.host, connected: gauges.connected, lastContact: gauges.lastContact,
                            error: gauges.connected ? nil : gauges.lastError, coordinator: gauges.coordinator, planId: gauges.planID,
                            planVersion: gauges.planVersion, rolloutPhase: gauges.rolloutPhase, hostPhase: gauges.hostPhase)
    }

    /// For `/metrics`: never waits.
    public var metrics: FleetGauges {
        var snapshot = gauges.snapshot
        snapshot.etcdRequests = client.requests
        return snapshot
    }

    // MARK: - Writing the plan

    static let canaryRange = 0...10_000
    static let maxUnavailableRange = 1...10_000
    static let soakRange: ClosedRange<Int64> = 0...(7 * 24 * 3_600_000)
    static let thresholdRange = 0...10_000

    /// `PUT /v1/fleet`: a new plan, one more than the one it replaces, guarded by the
    /// revision of the plan read (or the one the request expects).
    public func set(_ request: FleetSetRequest, by: String) async throws(FleetRefusal) -> FleetView {
        guard Names.isValidVersion(request.version) else { throw .invalid("\(WireJSON.quote(request.version)) is not a valid version") }
        let canary = request.canary ?? 0
        let maxUnavailable = request.maxUnavailable ?? 1
        let soak = request.soakMs ?? 0
        let threshold = request.failureThreshold ?? 0
        let barrier = request.barrier ?? false
        guard Self.canaryRange.contains(canary) else { throw .invalid("canary must be between 0 and 10000") }
        guard Self.maxUnavailableRange.contains(maxUnavailable) else { throw .invalid("max_unavailable must be between 1 and 10000") }
        guard Self.soakRange.contains(soak) else { throw .invalid("soak_ms must be between 0 and 7 days") }
        guard Self.thresholdRange.contains(threshold) else { throw .invalid("failure_threshold must be between 0 and 10000") }
        guard !(barrier && canary > 0) else {
            throw .invalid("a barrier upgrade halts every host at once: canary waves do not apply (leave canary out)")
        }
        let exclude = request.exclude ?? []
        for host in exclude where !BatondConfig.FleetSettings.isValidName(host) {
            throw .invalid("\(WireJSON.quote(host)) is not a valid host name")
        }
        let releases = try resolve(request)
        return try await write(expecting: request.expectRevision) { current in
            FleetPlan(id: "fleet-\((current?.number ?? 0) + 1)", version: request.version, releases: releases, barrier: barrier,
                      canary: canary, maxUnavailable: maxUnavailable, soakMs: soak, failureThreshold: threshold,
                      exclude: exclude.sorted(), previous: current.map { FleetVersion(version: $0.version, releases: $0.releases) },
                      by: by, at: .now())
        }
    }

    /// `POST /v1/fleet/rollback`: the previous version again, as a new plan (no canary,
    /// no barrier: it is the version the fleet ran).
    public func rollback(_ request: FleetRollbackRequest, by: String) async throws(FleetRefusal) -> FleetView {
        let maxUnavailable = request.maxUnavailable
        if let maxUnavailable, !Self.maxUnavailableRange.contains(maxUnavailable) {
            throw .invalid("max_unavailable must be between 1 and 10000")
        }
        return try await write(expecting: request.expectRevision) { (current) throws(FleetRefusal) -> FleetPlan in
            guard let current else { throw .notFound("the fleet has no plan: there is nothing to roll back") }
            guard let previous = current.previous else { throw .notFound("plan \(current.id) has no previous version to go back to") }
            return FleetPlan(id: "fleet-\(current.number + 1)", version: previous.version, releases: previous.releases,
                             maxUnavailable: maxUnavailable ?? current.maxUnavailable, failureThreshold: current.failureThreshold,
                             previous: FleetVersion(version: current.version, releases: current.releases), by: by, at: .now())
        }
    }

    /// `POST /v1/fleet/exclude`: the same plan, with hosts the barrier no longer waits for.
    public func exclude(_ request: FleetExcludeRequest, by: String) async throws(FleetRefusal) -> FleetView {
        guard !request.hosts.isEmpty else { throw .invalid("hosts must name at least one host") }
        for host in request.hosts where !BatondConfig.FleetSettings.isValidName(host) {
            throw .invalid("\(WireJSON.quote(host)) is not a valid host name")
        }
        return try await write(expecting: nil) { (current) throws(FleetRefusal) -> FleetPlan in
            guard var plan = current else { throw .notFound("the fleet has no plan to exclude hosts from") }
            plan.exclude = Array(Set(plan.exclude).union(request.hosts)).sorted()
            logger.notice("hosts excluded from the fleet's plan", metadata: ["plan": "\(plan.id)", "hosts": "\(request.hosts)", "by": "\(by)"])
            return plan
        }
    }

    /// Reads the plan, makes the next one, and writes it only if the plan is still the
    /// one read (and the one expected).
    private func write(expecting: Int64?, _ make: (FleetPlan?) throws(FleetRefusal) -> FleetPlan) async throws(FleetRefusal) -> FleetView {
        let read: EtcdRange
        do throws(EtcdError) { read = try await client.range(keys.plan) } catch {
            throw .unreachable("etcd cannot be reached: nothing was written (\(error))")
        }
        let revision = read.kvs.first?.modRevision ?? 0
        if let expecting, expecting != revision {
            throw .conflict("the plan is at revision \(revision), not \(expecting): read it again (baton fleet status)")
        }
        let current = read.kvs.first.flatMap { try? WireJSON.decoder.decode(FleetPlan.self, from: Data($0.value)) }
        let plan = try make(current)
        guard let body = try? WireJSON.encoder.encode(plan) else { throw .invalid("the plan cannot be encoded") }
        let result: EtcdTxnResult
        do throws(EtcdError) {
            result = try await client.txn([.modRevision(keys.plan, equals: revision)], success: [.put(keys.plan, value: Array(body))])
        } catch {
            throw .unreachable("etcd did not answer (\(error)): read the plan again (baton fleet status) to see whether it was written")
        }
        guard result.succeeded else {
            throw .conflict("the plan changed while this one was written: read it again (baton fleet status)")
        }
        logger.notice("fleet plan written", metadata: ["plan": "\(plan.id)", "version": "\(plan.version)", "by": "\(plan.by)"])
        return await view()
    }

    /// Every agent's source: the request's, else the URL template's, else the release of
    /// that version stored here (its URL if it was fetched, and its digest).
    private func resolve(_ request: FleetSetRequest) throws(FleetRefusal) -> [String: FleetRelease] {
        let given = request.releases ?? [:]
        let agents = request.agents ?? (given.isEmpty ? local.startedAgents : Array(given.keys))
        guard !agents.isEmpty else { throw .invalid("the plan names no agent: give releases or agents") }
        var releases: [String: FleetRelease] = [:]
        for agent in Set(agents).union(given.keys).sorted() {
            guard Names.isValidAgent(agent) else { throw .invalid("\(WireJSON.quote(agent)) is not a valid agent name") }
            let stored = local.stored(agent: agent, version: request.version)
            let template = request.urlTemplate.map {
                $0.replacingOccurrences(of: "{agent}", with: agent).replacingOccurrences(of: "{version}", with: request.version)
            }
            guard let url = given[agent]?.url ?? template ?? stored?.url else {
                throw .invalid("no URL for \(agent) \(request.version): give releases.\(agent).url or url_template, or fetch the release here first")
            }
            if let reason = Download.validate(url: url) { throw .invalid("\(agent): \(url) is not a URL hosts fetch from: \(reason)") }
            guard let sha256 = given[agent]?.sha256?.lowercased() ?? stored?.sha256 else {
                throw .invalid("no sha256 for \(agent) \(request.version): give releases.\(agent).sha256, or push or fetch the release here first")
            }
            guard Hex.isSHA256(sha256) else { throw .invalid("\(agent): sha256 must be 64 hex digits") }
            releases[agent] = FleetRelease(url: url, sha256: sha256)
        }
        return releases
    }
}
