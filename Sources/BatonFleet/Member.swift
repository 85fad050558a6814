import BatonConfig
import BatonCore
import BatonEtcd
import Foundation
import Logging

/// The plan and the coordinator's state, read together at one revision.
struct PlanSnapshot: Sendable, Equatable {
    var revision: Int64
    var plan: FleetPlan?
    var state: FleetRolloutState?
}

/// This host in the fleet: its presence (a lease, renewed at a third of its TTL), its
/// status, and what it does about the plan. It acts only on a plan and a rollout state
/// read together at one revision; when etcd cannot be reached it begins nothing and
/// leaves its agents as they are (a machine rollout already begun runs to its end: it is
/// local). One upgrade at a time; everything it does is a machine rollout, recorded in
/// the ledger with `by` = `fleet <plan id> (<who set the plan>)`.
actor FleetMember {
    let settings: BatondConfig.FleetSettings
    let keys: FleetKeys
    let client: EtcdClient
    let local: any FleetLocal
    let gauges: FleetGaugeBox
    let logger: Logger

    // MARK: Connection
    private(set) var lease: Int64?
    /// The grant in flight, if one is.
    private var granting: Task<Result<Int64, EtcdError>, Never>?
    private var lastKeepAlive: ContinuousClock.Instant?
    /// Whether etcd answered the last request (the time and the error are in `gauges`).
    private(set) var connected = false

    // MARK: The plan as last read
    private(set) var snapshot: PlanSnapshot?
    private var snapshotWaiters: [CheckedContinuation<Void, Never>] = []

    // MARK: This host's part
    private(set) var rollout: FleetHostStatus.Rollout?
    private var working: Task<Void, Never>?
    private var prefetched: String?
    private var published: FleetHostStatus?
    private var publishedAt: ContinuousClock.Instant?
    private var tasks: [Task<Void, Never>] = []
    private var stopping = false

    init(settings: BatondConfig.FleetSettings, client: EtcdClient, local: any FleetLocal, gauges: FleetGaugeBox, logger: Logger) {
        self.settings = settings
        self.keys = FleetKeys(settings)
        self.client = client
        self.local = local
        self.gauges = gauges
        self.logger = logger
    }

    var me: String { settings.host }

    // MARK: - Running

    func start() {
        tasks.append(Task { await self.follow() })
        tasks.append(Task { await self.keepAlive() })
        tasks.append(Task { await self.tick() })
    }

    /// Stops following, and gives the lease back so this host, its slots and its
    /// coordinator key leave the fleet at once (agents keep working).
    func stop() async {
        stopping = true
        for task in tasks { task.cancel() }
        working?.cancel()
        if let lease { try? await client.revoke(lease) }
        lease = nil
        for waiter in snapshotWaiters { waiter.resume() }
        snapshotWaiters = []
    }

    /// The lease this host's keys live under, granted (and the host registered) once etcd
    /// answers. One grant at a time: callers that ask meanwhile (the follower, the
    /// coordinator, the keepalive) all get the lease it grants.
    func currentLease() async throws(EtcdError) -> Int64 {
        if let lease { return lease }
        let grant = granting ?? Task { () async -> Result<Int64, EtcdError> in
            do throws(EtcdError) {
                let granted = try await client.grant(ttl: settings.leaseTTL.components.seconds)
                lease = granted.id
                lastKeepAlive = .now
                logger.notice("joined the fleet", metadata: ["fleet": "\(settings.name)", "host": "\(me)", "lease": "\(granted.id)"])
                published = nil
                await publish()
                return .success(granted.id)
            } catch {
                return .failure(error)
            }
        }
        granting = grant
        let result = await grant.value
        granting = nil
        return try result.get()
    }

    /// The lease was lost (expired while etcd could not be reached, or revoked): every key
    /// under it is gone, this host's slots and coordinator key with them.
    private func leaseLost(_ why: String) {
        guard let lost = lease else { return }
        logger.warning("the fleet lease was lost; joining again", metadata: ["lease": "\(lost)", "why": "\(why)"])
        lease = nil
    }

    private func contact(_ error: EtcdError?) {
        if let error {
            if connected { logger.warning("etcd cannot be reached; agents stay as they are", metadata: ["error": "\(error)"]) }
            connected = false
            gauges.update { $0.connected = false; $0.lastError = error.description }
        } else {
            if !connected { logger.notice("etcd reached", metadata: ["endpoints": "\(settings.endpoints.joined(separator: ","))"]) }
            connected = true
            gauges.update { $0.connected = true; $0.lastContact = .now() }
        }
    }

    /// Renews the lease at a third of its TTL. When etcd says it is gone, or it could not
    /// be renewed for a whole TTL, it counts as lost.
    private func keepAlive() async {
        let interval = settings.leaseTTL / 3
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            guard let lease else {
                // Lost: register again (a host that waits for nothing else comes back here).
                _ = try? await currentLease()
                continue
            }
            do throws(EtcdError) {
                _ = try await client.keepAlive(lease)
                lastKeepAlive = .now
                contact(nil)
            } catch .leaseNotFound {
                leaseLost("etcd no longer has it")
            } catch {
                contact(error)
                if let last = lastKeepAlive, ContinuousClock.now - last > settings.leaseTTL {
                    leaseLost("not renewed for \(settings.leaseTTL.spelled)")
                }
            }
        }
    }

    /// Reads the plan, acts on it, and watches `plan/` for the next change; reconnects
    /// (and reads again) whenever the watch breaks.
    private func follow() async {
        var backoff: Duration = .milliseconds(200)
        while !Task.isCancelled {
            do throws(EtcdError) {
                _ = try await currentLease()
                let read = try await readPlan()
                contact(nil)
                backoff = .milliseconds(200)
                adopt(read)
                // Follow every change from the revision read on.
                for await update in client.watch(keys.planFolder, prefix: true, from: read.revision + 1) {
                    if Task.isCancelled { return }
                    switch update {
                    case .events(_, let revision):
                        contact(nil)
                        let fresh = try await readPlan()
                        adopt(PlanSnapshot(revision: max(revision, fresh.revision), plan: fresh.plan, state: fresh.state))
                    case .disconnected(let error):
                        contact(error)
                    case .compacted:
                        break  // read again, and watch from there
                    }
                    if case .compacted = update { break }
                    if lease == nil { break }  // join again first
                }
            } catch {
                contact(error)
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(5))
            }
        }
    }

    /// The plan and the rollout state in one transaction: one revision, never half a plan.
    func readPlan() async throws(EtcdError) -> PlanSnapshot {
        let result = try await client.txn([], success: [.range(keys.plan), .range(keys.rollout)])
        let plan = result.ranges.first?.first.flatMap { try? WireJSON.decoder.decode(FleetPlan.self, from: Data($0.value)) }
        let state = result.ranges.dropFirst().first?.first.flatMap {
            try? WireJSON.decoder.decode(FleetRolloutState.self, from: Data($0.value))
        }
        return PlanSnapshot(revision: result.revision, plan: plan, state: state)
    }

    private func adopt(_ read: PlanSnapshot) {
        if let snapshot, snapshot.revision > read.revision { return }
        snapshot = read
        gauges.update {
            $0.planID = read.plan?.id
            $0.planVersion = read.plan?.version
            $0.rolloutPhase = read.state?.id == read.plan?.id ? read.state?.phase : nil
        }
        for waiter in snapshotWaiters { waiter.resume() }
        snapshotWaiters = []
        evaluate()
    }

    /// Waits for the next plan read (or `stop`).
    private func nextSnapshot() async {
        if stopping { return }
        await withCheckedContinuation { snapshotWaiters.append($0) }
    }

    /// Publishes the status when the agents changed, and at least every `heartbeat`.
    private func tick() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            await publish()
        }
    }

    // MARK: - Status

    func status() -> FleetHostStatus {
        FleetHostStatus(host: me, labels: settings.labels, batondVersion: BatonVersion.current, machineVersion: local.machineVersion,
                        agents: local.agents(), rollout: rollout, updatedAt: .now())
    }

    /// Writes this host's status under its lease when it changed or the heartbeat is due.
    func publish() async {
        guard let lease else { return }
        var status = status()
        if var last = published, let at = publishedAt, ContinuousClock.now - at < settings.heartbeat {
            last.updatedAt = status.updatedAt
            if last == status { return }
        }
        status.updatedAt = .now()
        guard let body = try? WireJSON.encoder.encode(status) else { return }
        do throws(EtcdError) {
            _ = try await client.put(keys.host(me), value: Array(body), lease: lease)
            published = status
            publishedAt = .now
            contact(nil)
        } catch .leaseNotFound {
            leaseLost("etcd no longer has it")
        } catch {
            contact(error)
        }
    }

    private func set(_ phase: FleetHostStatus.Rollout.Phase, _ plan: FleetPlan, error: String? = nil) async {
        rollout = .init(id: plan.id, version: plan.version, phase: phase, error: error)
        gauges.update { $0.hostPhase = phase }
        if phase.isFinal {
            logger.notice("fleet rollout ended here", metadata: ["plan": "\(plan.id)", "version": "\(plan.version)",
                                                                 "phase": "\(phase.rawValue)", "error": "\(error ?? "")"])
        }
        await publish()
    }

    // MARK: - Acting on the plan

    /// What this host does about the plan it read: nothing while it works on one; else
    /// prefetch, upgrade when admitted, or take part in the barrier.
    private func evaluate() {
        guard working == nil, !stopping, let snapshot, let plan = snapshot.plan else { return }
        let by = plan.rolloutBy
        if let id = local.running(by: by) {
            // A batond restarted in the middle of this plan's machine rollout: await it
            // (at the fleet's barrier again, if it was halted there).
            return work(plan) { member in
                if plan.barrier {
                    await member.local.rejoinBarrier(id) { hasMigration, run in
                        await member.atBarrier(plan, hasMigration: hasMigration, run: run, resumed: true)
                    }
                }
                await member.finish(plan, await member.local.awaitEnd(id))
            }
        }
        if let rollout, rollout.id == plan.id, rollout.phase.isFinal { return }
        if let ended = local.ended(by: by) {
            return work(plan) { member in await member.finish(plan, ended) }
        }
        let planned = local.planned(plan.releases)
        let agents = local.agents()
        let onVersion = planned.allSatisfy { name in agents.first { $0.name == name }?.running == plan.version }
        guard let state = snapshot.state, state.id == plan.id else {
            // The coordinator has not taken the plan up yet: only fetch ahead.
            return prefetch(plan, planned: planned)
        }
        // A host that registers while the fleet is halted (or migrating) halts too.
        if plan.barrier, state.phase == .halting || state.phase == .migrating, !plan.exclude.contains(me), !planned.isEmpty,
           connected {
            return work(plan) { member in await member.barrier(plan) }
        }
        if planned.isEmpty || onVersion {
            if rollout?.id != plan.id || rollout?.phase != .done {
                return work(plan) { member in await member.set(.done, plan) }
            }
            return
        }
        if state.admits(me), connected {
            return work(plan) { member in await member.upgrade(plan) }
        }
        if rollout?.id != plan.id {
            rollout = .init(id: plan.id, version: plan.version, phase: .waiting)
            Task { await self.publish() }
        }
        prefetch(plan, planned: planned)
    }

    private func work(_ plan: FleetPlan, _ body: @escaping @Sendable (FleetMember) async -> Void) {
        working = Task {
            await body(self)
            self.workEnded()
        }
    }

    private func workEnded() {
        working = nil
        evaluate()
    }

    /// Fetches the plan's releases ahead of the host's turn (once per plan): the upgrade
    /// then starts at once, and a barrier keeps the agents down for less time.
    private func prefetch(_ plan: FleetPlan, planned: [String]) {
        guard prefetched != plan.id, !planned.isEmpty else { return }
        prefetched = plan.id
        Task { [local, logger] in
            if let reason = await local.fetch(version: plan.version, releases: plan.releases, by: plan.rolloutBy) {
                logger.warning("fetching the fleet's release ahead failed", metadata: ["plan": "\(plan.id)", "error": "\(reason)"])
            }
        }
    }

    private func finish(_ plan: FleetPlan, _ outcome: FleetUpgradeOutcome) async {
        switch outcome {
        case .done: await set(.done, plan)
        case .failed(let why): await set(.failed, plan, error: why)
        case .restored(let why): await set(.restored, plan, error: why)
        }
    }

    /// A plain upgrade: fetch, take a max-unavailable slot, one machine rollout, give the slot back.
    private func upgrade(_ plan: FleetPlan) async {
        await set(.fetching, plan)
        if let reason = await local.fetch(version: plan.version, releases: plan.releases, by: plan.rolloutBy) {
            return await set(.failed, plan, error: reason)
        }
        await set(.waitingSlot, plan)
        guard let slot = await takeSlot(plan) else {
            // Paused, replaced, or batond stops: nothing was begun.
            rollout = .init(id: plan.id, version: plan.version, phase: .waiting)
            return await publish()
        }
        // The last word before acting: the plan read again, now.
        guard await stillCalled(plan, { $0.admits(me) }) else {
            await giveBack(slot)
            rollout = .init(id: plan.id, version: plan.version, phase: .waiting)
            return await publish()
        }
        await set(.handingOver, plan)
        let outcome = await local.upgrade(version: plan.version, by: plan.rolloutBy, barrier: nil)
        await giveBack(slot)
        await finish(plan, outcome)
    }

    /// Whether the plan, read from etcd now, is still `plan` with a rollout state that
    /// asks this of the host: what a host does to its agents never rests on an old read.
    private func stillCalled(_ plan: FleetPlan, _ asks: (FleetRolloutState) -> Bool) async -> Bool {
        do throws(EtcdError) {
            let fresh = try await readPlan()
            adopt(fresh)
            guard fresh.plan?.id == plan.id, let state = fresh.state, state.id == plan.id else { return false }
            return asks(state)
        } catch {
            contact(error)
            return false
        }
    }

    /// One of `maxUnavailable` slot keys, created if absent under this host's lease (a dead
    /// host's slot ends with its lease). Waits while every slot is taken; nil once the
    /// plan no longer admits this host.
    private func takeSlot(_ plan: FleetPlan) async -> Int? {
        var backoff: Duration = .milliseconds(100)
        while !Task.isCancelled && !stopping {
            guard let snapshot, snapshot.plan?.id == plan.id, snapshot.state?.admits(me) == true else { return nil }
            do throws(EtcdError) {
                let lease = try await currentLease()
                let held = try await client.range(keys.slots, prefix: true)
                if let mine = held.kvs.first(where: { $0.string == me }), let index = Int(mine.key.dropFirst(keys.slots.count)),
                   index < plan.maxUnavailable {
                    // This host's from before a restart (under an older lease): hold it under this one.
                    _ = try await client.put(mine.key, value: Array(me.utf8), lease: lease)
                    return index
                }
                let taken = Set(held.kvs.map(\.key))
                // From a random free slot on: hosts that race for the free slots then mostly try
                // different ones, instead of all colliding on the lowest, then the next.
                let free = (0..<plan.maxUnavailable).filter { !taken.contains(keys.slot($0)) }
                let start = free.isEmpty ? 0 : Int.random(in: 0..<free.count)
                for index in free[start...] + free[..<start] {
                    let result = try await client.txn([.createRevision(keys.slot(index), equals: 0)],
                                                      success: [.put(keys.slot(index), value: Array(me.utf8), lease: lease)])
                    if result.succeeded { return index }
                }
                // Every slot is taken: wait until one is given back (or the plan changes).
                await waitForSlots(from: held.revision + 1)
                backoff = .milliseconds(100)
            } catch {
                contact(error)
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(5))
            }
        }
        return nil
    }

    /// Until a slot key is deleted (or 2 s, to look at the plan again).
    private func waitForSlots(from revision: Int64) async {
        let watch = Task { [client, keys] in
            for await update in client.watch(keys.slots, prefix: true, from: revision) {
                if case .events(let events, _) = update, events.contains(where: { $0.kind == .delete }) { return }
                if case .compacted = update { return }
            }
        }
        let timeout = Task { try? await Task.sleep(for: .seconds(2)); watch.cancel() }
        _ = await watch.value
        timeout.cancel()
    }

    private func giveBack(_ slot: Int) async {
        for attempt in 0..<5 {
            do throws(EtcdError) {
                let key = keys.slot(slot)
                _ = try await client.txn([.value(key, equals: Array(me.utf8))], success: [.delete(key)])
                return
            } catch {
                contact(error)
                try? await Task.sleep(for: .milliseconds(200 << attempt))
            }
        }
        logger.warning("a max-unavailable slot could not be given back; it ends with this host's lease", metadata: ["slot": "\(slot)"])
    }

    // MARK: - The barrier

    /// A migrating upgrade: fetch first, halt every agent here (a machine rollout with the
    /// barrier), then wait at the fleet's barrier until the coordinator says proceed or
    /// restore; the migration itself runs on the one host that claims it.
    private func barrier(_ plan: FleetPlan) async {
        await set(.fetching, plan)
        if let reason = await local.fetch(version: plan.version, releases: plan.releases, by: plan.rolloutBy) {
            return await set(.failed, plan, error: reason)
        }
        guard await stillCalled(plan, { $0.phase == .halting || $0.phase == .migrating }) else {
            rollout = .init(id: plan.id, version: plan.version, phase: .waiting)
            return await publish()
        }
        await set(.halting, plan)
        let outcome = await local.upgrade(version: plan.version, by: plan.rolloutBy, barrier: { hasMigration, run in
            await self.atBarrier(plan, hasMigration: hasMigration, run: run, resumed: false)
        })
        await finish(plan, outcome)
    }

    /// Every agent here is halted: says so, and waits for the fleet's decision; runs the
    /// migration if this host claims it. `resumed`: batond restarted while halted here; a
    /// claim of this host's found then is an earlier batond's, whose migration may have
    /// run: it is never run again, and its outcome is written as unknown (the fleet restores).
    private func atBarrier(_ plan: FleetPlan, hasMigration: Bool, run: @Sendable () async -> (ok: Bool, detail: String),
                           resumed: Bool) async -> (ok: Bool, detail: String) {
        await set(.halted, plan)
        let halted = Array((try? WireJSON.encoder.encode(FleetHalted(migration: hasMigration))) ?? Data())
        var said = false
        var claimed = false
        var tried = false
        while !stopping {
            do throws(EtcdError) {
                if !said {
                    _ = try await client.put(keys.halted(plan.id, host: me), value: halted, lease: try await currentLease())
                    said = true
                }
                let state = snapshot?.state
                guard snapshot?.plan?.id == plan.id, let state, state.id == plan.id else {
                    return (false, "the fleet's plan changed while this host waited at the barrier")
                }
                switch state.phase {
                case .proceeding, .done:
                    return (true, "the fleet proceeds")
                case .restoring, .restored, .paused:
                    return (false, state.reason ?? "the fleet restores the previous versions")
                case .migrating where (hasMigration || resumed) && !claimed:
                    // The first attempt in this wait: a claim of this host's found now is an earlier batond's.
                    let first = !tried
                    tried = true
                    let claim = try await client.txn([.createRevision(keys.migration(plan.id), equals: 0)],
                                                     success: hasMigration ? [.put(keys.migration(plan.id), value: Array(me.utf8))] : [],
                                                     failure: [.range(keys.migration(plan.id)), .range(keys.outcome(plan.id))])
                    let holder = claim.ranges.first?.first?.string
                    let hasOutcome = claim.ranges.dropFirst().first?.isEmpty == false
                    claimed = true
                    if !claim.succeeded, holder == me, first, !hasOutcome {
                        // An earlier batond of this host claimed it, and may have run it:
                        // its outcome is unknown, and it never runs twice.
                        let outcome = FleetMigrationOutcome(host: me, ok: false,
                                                            detail: "batond restarted while this host ran the migration: its outcome is unknown")
                        try await putRetrying(keys.outcome(plan.id), Array((try? WireJSON.encoder.encode(outcome)) ?? Data()))
                        continue
                    }
                    // Ours also when an earlier attempt in this wait created it and its answer was lost.
                    if hasMigration && (claim.succeeded || holder == me) {
                        logger.notice("this host runs the fleet's migration", metadata: ["plan": "\(plan.id)"])
                        await set(.migrating, plan)
                        let (ok, detail) = await run()
                        let outcome = FleetMigrationOutcome(host: me, ok: ok, detail: detail)
                        try await putRetrying(keys.outcome(plan.id), Array((try? WireJSON.encoder.encode(outcome)) ?? Data()))
                        await set(.halted, plan)
                    }
                    continue
                case .migrating, .halting, .canary, .soaking, .rolling:
                    break
                }
                await nextSnapshot()
            } catch {
                contact(error)
                // etcd cannot be reached: stay halted (the fleet may be migrating) and ask again.
                try? await Task.sleep(for: .seconds(1))
                if !said { continue }
                if let fresh = try? await readPlan() { adopt(fresh) }
            }
        }
        return (false, "batond stops")
    }

    /// The migration's outcome must reach etcd whatever it takes: the fleet waits for it.
    private func putRetrying(_ key: String, _ value: [UInt8]) async throws(EtcdError) {
        var backoff: Duration = .milliseconds(200)
        while true {
            do throws(EtcdError) {
                _ = try await client.put(key, value: value)
                return
            } catch {
                contact(error)
                if stopping { throw error }
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(5))
            }
        }
    }
}
