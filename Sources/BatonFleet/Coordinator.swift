import BatonConfig
import BatonCore
import BatonEtcd
import Foundation
import Logging

/// The fleet's one coordinator, elected through etcd by the create-revision recipe: the
/// first batond to create `coordinator` (under its host lease) leads, until its lease
/// ends. While it leads it reads the whole fleet at one revision whenever something
/// changes, asks `FleetCoordinator` what the rollout state must become, and writes it in
/// a transaction that compares its leader key (its value and create revision): once it
/// is deposed, even a write it sends late is refused by etcd.
actor FleetCoordinatorRole {
    let settings: BatondConfig.FleetSettings
    let keys: FleetKeys
    let client: EtcdClient
    let member: FleetMember
    let gauges: FleetGaugeBox
    let logger: Logger

    /// The create revision of our leader key while we lead.
    private(set) var term: Int64?
    /// Who leads, as last seen.
    private(set) var leader: String?
    /// Keys whose values could not be read at the last look (logged once).
    private var unreadable: [String] = []
    private var task: Task<Void, Never>?

    init(settings: BatondConfig.FleetSettings, client: EtcdClient, member: FleetMember, gauges: FleetGaugeBox, logger: Logger) {
        self.gauges = gauges
        self.settings = settings
        self.keys = FleetKeys(settings)
        self.client = client
        self.member = member
        self.logger = logger
    }

    var me: String { settings.host }

    func start() {
        guard settings.coordinator else { return }
        task = Task { await self.campaign() }
    }

    func stop() {
        task?.cancel()
        term = nil
    }

    /// Campaigns until it leads, leads until deposed, and campaigns again.
    private func campaign() async {
        var backoff: Duration = .milliseconds(200)
        while !Task.isCancelled {
            do throws(EtcdError) {
                let lease = try await member.currentLease()
                let result = try await client.txn([.createRevision(keys.coordinator, equals: 0)],
                                                  success: [.put(keys.coordinator, value: Array(me.utf8), lease: lease)],
                                                  failure: [.range(keys.coordinator)])
                backoff = .milliseconds(200)
                if result.succeeded {
                    term = result.revision
                    gauges.update { $0.coordinator = true }
                    leader = me
                    logger.notice("this host coordinates the fleet", metadata: ["fleet": "\(settings.name)", "term": "\(result.revision)"])
                    await lead(lease: lease, from: result.revision)
                    if term != nil { logger.notice("this host no longer coordinates the fleet") }
                    term = nil
                    gauges.update { $0.coordinator = false }
                } else {
                    let holder = result.ranges.first?.first
                    leader = holder?.string
                    if let holder, holder.string == me {
                        // Our own key from an earlier term (a campaign whose answer was lost, or the
                        // batond before a restart or a self-upgrade, whose lease has not ended yet):
                        // give it up, then campaign.
                        _ = try await client.txn([.value(keys.coordinator, equals: Array(me.utf8))], success: [.delete(keys.coordinator)])
                        continue
                    }
                    // Until the leader key goes (its lease ends, or it resigns).
                    for await update in client.watch(keys.coordinator, from: result.revision + 1) {
                        if case .events(let events, _) = update, events.contains(where: { $0.kind == .delete }) { break }
                        if case .compacted = update { break }
                        if Task.isCancelled { return }
                        if await member.lease != lease { break }
                    }
                }
            } catch {
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(5))
            }
        }
    }

    /// Leads while the leader key is ours: observe, decide, write; again at every change
    /// in the fleet's keys and at the time the rules ask to look again.
    private func lead(lease: Int64, from revision: Int64) async {
        let changes = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let watcher = Task { [client, keys] in
            for await update in client.watch(keys.root, prefix: true, from: revision + 1) {
                if case .events = update { changes.continuation.yield() }
                if case .compacted = update { changes.continuation.yield() }
            }
        }
        defer { watcher.cancel() }
        while !Task.isCancelled, term != nil {
            guard await member.lease == lease else { return deposed("its lease ended") }
            var wake: Timestamp?
            do throws(EtcdError) {
                let observation = try await observe()
                guard observation.leaderOK else { return deposed("another host holds the leader key") }
                if !observation.unreadable.isEmpty {
                    // Decide nothing on a partial picture; look again at the next change.
                    if observation.unreadable != unreadable {
                        logger.error("fleet values this batond cannot read: the rollout waits",
                                     metadata: ["keys": "\(observation.unreadable.joined(separator: ", "))"])
                    }
                    unreadable = observation.unreadable
                } else if let next = FleetCoordinator.next(observation.value) {
                    if try await write(next) {
                        logger.notice("fleet rollout state", metadata: ["plan": "\(next.id)", "phase": "\(next.phase.rawValue)",
                                                                       "reason": "\(next.reason ?? "")"])
                        continue  // look again at once: the state we wrote is part of what we observe
                    }
                    return deposed("etcd refused a write guarded by the leader key")
                }
                wake = FleetCoordinator.wakeAt(observation.value)
            } catch {
                // Look again shortly; the lease tells whether we still lead.
                try? await Task.sleep(for: .seconds(1))
                continue
            }
            // Until something changes, the rules' next time, or 5 s (a host's lease ending
            // shows as a delete, but a clock-driven step has no event).
            let limit: Duration = wake.map { .milliseconds(max(10, min(5000, $0.milliseconds - Timestamp.now().milliseconds))) } ?? .seconds(5)
            let timer = Task {
                // A cancelled timer must not wake the next wait.
                guard (try? await Task.sleep(for: limit)) != nil else { return }
                changes.continuation.yield()
            }
            var iterator = changes.stream.makeAsyncIterator()
            _ = await iterator.next()
            timer.cancel()
        }
    }

    private func deposed(_ why: String) {
        logger.warning("deposed as the fleet's coordinator", metadata: ["why": "\(why)"])
        term = nil
        gauges.update { $0.coordinator = false }
    }

    struct Observed { var value: FleetObservation; var leaderOK: Bool; var unreadable: [String] }

    /// The whole fleet at one revision.
    private func observe() async throws(EtcdError) -> Observed {
        let read = FleetContents(try await client.range(keys.root, prefix: true), keys: keys)
        gauges.update { $0.hosts = read.hosts.count }
        let observation = FleetObservation(plan: read.plan, state: read.state, hosts: read.hosts, halted: read.halted,
                                           migrationClaim: read.migrationClaim, migrationOutcome: read.migrationOutcome,
                                           now: .now(), me: me)
        let leaderOK = read.coordinator.map { $0.string == me && $0.createRevision == term } ?? false
        return Observed(value: observation, leaderOK: leaderOK, unreadable: read.unreadable)
    }

    /// A debug build's pause between deciding and writing (`BATON_FLEET_WRITE_DELAY_MS`),
    /// so that a test can depose the coordinator exactly there and see its late write
    /// refused. Release builds ignore the variable.
    static let writeDelay: Duration? = {
        #if DEBUG
        guard let text = ProcessInfo.processInfo.environment["BATON_FLEET_WRITE_DELAY_MS"], let ms = Int64(text) else { return nil }
        return .milliseconds(ms)
        #else
        return nil
        #endif
    }()

    /// Writes the rollout state if we still lead; false when etcd refused it.
    private func write(_ state: FleetRolloutState) async throws(EtcdError) -> Bool {
        if let delay = Self.writeDelay { try? await Task.sleep(for: delay) }
        guard let term, let body = try? WireJSON.encoder.encode(state) else { return false }
        let result = try await client.txn([.createRevision(keys.coordinator, equals: term), .value(keys.coordinator, equals: Array(me.utf8))],
                                          success: [.put(keys.rollout, value: Array(body))])
        if !result.succeeded { gauges.update { $0.refusedWrites += 1 } }
        return result.succeeded
    }
}
