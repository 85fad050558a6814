import BatonCore
import Foundation
import Testing

/// The state the ledger folds from its records, one transition per row.
@Suite("ledger state")
struct LedgerStateTests {
    func fold(_ events: [LedgerEvent]) -> LedgerState {
        var state = LedgerState()
        for (index, event) in events.enumerated() {
            state.apply(Record(seq: UInt64(index + 1), time: Timestamp(milliseconds: Int64(index) * 1000), event: event))
        }
        return state
    }

    @Test func daemonStartsAndCleanStopsAreCounted() {
        let state = fold([.daemonStarted(.init(pid: 1, version: "v", config: nil, listeners: [])),
                          .daemonStopped(.init(pid: 1, reason: "signal")),
                          .daemonStarted(.init(pid: 2, version: "v", config: nil, listeners: []))])
        #expect(state.daemon.starts == 2)
        #expect(state.daemon.cleanStops == 1)
        #expect(state.daemon.lastStartedAt == Timestamp(milliseconds: 2000))
        #expect(state.lastSeq == 3)
    }

    @Test func storedReleasesAreKeptUntilDeleted() {
        let state = fold([
            .releaseStored(.init(agent: "web", version: "1.0", sha256: "a", size: 1, source: "push", url: nil, by: "x",
                                 signedBy: nil, irreversible: false)),
            .releaseStored(.init(agent: "web", version: "2.0", sha256: "b", size: 1, source: "fetch", url: "u", by: "x",
                                 signedBy: nil, irreversible: false)),
            .releaseDeleted(.init(agent: "web", version: "1.0", by: "batond", reason: .collected)),
        ])
        #expect(state.agents["web"]?.stored == ["2.0": "b"])
    }

    @Test func aRolloutIsPendingUntilItEndsAndOnlyDoneMovesTheMachineVersion() {
        let began = LedgerEvent.rolloutBegan(.init(rollout: "machine-1", version: "2.0", barrier: true, migration: ["m"],
                                                   agents: [.init(agent: "web", from: "1.0")], by: "alice"))
        var state = fold([began, .rolloutStep(.init(rollout: "machine-1", phase: .halting)),
                          .rolloutStep(.init(rollout: "machine-1", agent: "web", status: .halted)),
                          .rolloutStep(.init(rollout: "machine-9", phase: .done))])
        #expect(state.machine?.rollout?.phase == .halting, "another rollout's step changes nothing")
        #expect(state.machine?.rollout?.agents.first?.status == .halted)
        #expect(state.machine?.version == nil)
        state.apply(Record(seq: 5, time: Timestamp(milliseconds: 9000),
                           event: .rolloutEnded(.init(rollout: "machine-1", outcome: .restored, error: "the migration failed"))))
        #expect(state.machine?.rollout == nil && state.machine?.version == nil)
        #expect(state.machine?.lastError?.reason == "the migration failed")
        #expect(state.machine?.history.last?.outcome == .restored)
        state.apply(Record(seq: 6, time: Timestamp(milliseconds: 9500), event: .rolloutBegan(.init(
            rollout: "machine-2", version: "2.1", barrier: false, migration: nil, agents: [], by: "alice"))))
        state.apply(Record(seq: 7, time: Timestamp(milliseconds: 9600),
                           event: .rolloutEnded(.init(rollout: "machine-2", outcome: .done, error: nil))))
        #expect(state.machine?.version == "2.1" && state.machine?.rollouts == 2)
    }

    @Test func desiredIsRecordedWithWhoAndWhen() {
        let state = fold([.agentDesired(.init(agent: "web", version: "2.0", mode: .sequential, by: "alice"))])
        let desired = state.agents["web"]?.desired
        #expect(desired?.version == "2.0")
        #expect(desired?.mode == .sequential)
        #expect(desired?.setAt == Timestamp(milliseconds: 0))
        #expect(desired?.setBy == "alice")
        #expect(state.agents["web"]?.running == nil, "desired is not running")
    }

    @Test func aCommittedHandoffMakesTheTargetRunningAndEndsUpInHistory() {
        let state = fold([
            .handoffBegan(.init(handoff: "h1", agent: "web", from: "1.0", to: "2.0", mode: .parallel)),
            .handoffPhase(.init(handoff: "h1", agent: "web", phase: "waiting_stopped")),
            .handoffEnded(.init(handoff: "h1", agent: "web", outcome: .committed, gapMs: 0.3, error: nil)),
        ])
        let agent = state.agents["web"]
        #expect(agent?.handoff == nil)
        #expect(agent?.running?.version == "2.0")
        #expect(agent?.history.map(\.outcome) == [.committed])
        #expect(agent?.history.first?.gapMs == 0.3)
    }

    @Test func aFailedHandoffLeavesRunningAlone() {
        let state = fold([
            .handoffBegan(.init(handoff: "h1", agent: "web", from: "1.0", to: "2.0", mode: .parallel)),
            .handoffPhase(.init(handoff: "h1", agent: "web", phase: "waiting_ready")),
            .handoffEnded(.init(handoff: "h1", agent: "web", outcome: .failed, gapMs: nil, error: "never ready")),
        ])
        #expect(state.agents["web"]?.running == nil)
        #expect(state.agents["web"]?.history.first?.error == "never ready")
    }

    @Test func phasesOfAnotherHandoffAreIgnored() {
        let state = fold([
            .handoffBegan(.init(handoff: "h1", agent: "web", from: nil, to: "2.0", mode: .parallel)),
            .handoffPhase(.init(handoff: "h0", agent: "web", phase: "stale")),
        ])
        #expect(state.agents["web"]?.handoff?.phase == "began")
    }

    @Test func instancesComeAndGo() {
        let spawned = fold([
            .instanceSpawned(.init(agent: "web", instance: "web.1", version: "1.0", pid: 10, startTime: 5, handoff: nil)),
            .instanceReady(.init(agent: "web", instance: "web.1")),
        ])
        #expect(spawned.agents["web"]?.instances["web.1"]?.state == .ready)
        let exited = fold([
            .instanceSpawned(.init(agent: "web", instance: "web.1", version: "1.0", pid: 10, startTime: 5, handoff: nil)),
            .instanceStopped(.init(agent: "web", instance: "web.1")),
            .instanceExited(.init(agent: "web", instance: "web.1", exitCode: 0, signal: nil)),
        ])
        #expect(exited.agents["web"]?.instances.isEmpty == true)
    }

    /// Re-adoption needs to know who may still work: one told stop after go works until it is gone.
    @Test func anInstanceToldGoKeepsHavingHeldGoOnceToldStop() throws {
        let spawned = LedgerEvent.instanceSpawned(.init(agent: "web", instance: "web.1", version: "1.0", pid: 10, startTime: 5, handoff: nil))
        let stopped = fold([spawned, .instanceSignal(.init(agent: "web", instance: "web.1", signal: .stop, handoff: nil))])
        #expect(stopped.agents["web"]?.instances["web.1"]?.heldGo == false)
        let state = fold([spawned, .instanceSignal(.init(agent: "web", instance: "web.1", signal: .go, handoff: nil)),
                          .instanceSignal(.init(agent: "web", instance: "web.1", signal: .stop, handoff: "web-1"))])
        #expect(state.agents["web"]?.instances["web.1"]?.signal == .stop)
        #expect(state.agents["web"]?.instances["web.1"]?.heldGo == true)

        // A snapshot written before heldGo was kept: whoever was told anything may still work.
        let old = try JSONEncoder().encode(state.agents["web"]!.instances["web.1"]!)
        var fields = try #require(JSONSerialization.jsonObject(with: old) as? [String: Any])
        fields["heldGo"] = nil
        for signal in ["wait", "go", "stop"] {
            fields["signal"] = signal
            let decoded = try JSONDecoder().decode(InstanceLedger.self, from: JSONSerialization.data(withJSONObject: fields))
            #expect(decoded.heldGo == (signal != "wait"), "\(signal)")
        }
    }

    @Test func errorsAndCurrentReleaseAreKept() {
        let state = fold([
            .agentError(.init(agent: "web", reason: "failed self-check", stderrTail: "boom", handoff: "h1", instance: "web.2")),
            .releaseCurrent(.init(agent: "web", version: "2.0", previous: "1.0")),
        ])
        #expect(state.agents["web"]?.lastError?.reason == "failed self-check")
        #expect(state.agents["web"]?.lastError?.stderrTail == "boom")
        #expect(state.agents["web"]?.current == "2.0")
        #expect(state.agents["web"]?.previous == "1.0")
    }

    /// supervision's verdict on a crash loop stands until an operator's desired version.
    @Test func aRewindOrAFailureStandsUntilTheNextDesiredVersion() {
        let rewound = LedgerEvent.agentRewound(.init(agent: "web", from: "2.0", to: "1.0", reason: "crash loop", exits: 5, windowMs: 300_000))
        let failed = LedgerEvent.agentFailed(.init(agent: "web", version: "1.0", reason: "irreversible"))
        let desired = LedgerEvent.agentDesired(.init(agent: "web", version: "3.0", mode: .parallel, by: "alice"))
        let both = fold([rewound, failed])
        #expect(both.agents["web"]?.rewound == RewoundRelease(from: "2.0", to: "1.0", reason: "crash loop", at: Timestamp(milliseconds: 0),
                                                        exits: 5, windowMs: 300_000))
        #expect(both.agents["web"]?.failed == FailedRelease(version: "1.0", reason: "irreversible", at: Timestamp(milliseconds: 1000)))
        let cleared = fold([rewound, failed, desired])
        #expect(cleared.agents["web"]?.rewound == nil && cleared.agents["web"]?.failed == nil)
        // A snapshot written before the verdicts existed still loads.
        let old = try? JSONDecoder().decode(AgentLedger.self, from: Data(#"{"history":[],"instances":{},"spawns":0,"handoffsBegun":0}"#.utf8))
        #expect(old != nil && old?.rewound == nil)
    }

    @Test func historyIsBounded() {
        var events: [LedgerEvent] = []
        for index in 0..<(LedgerState.historyLimit + 5) {
            events.append(.handoffBegan(.init(handoff: "h\(index)", agent: "web", from: nil, to: "\(index)", mode: .parallel)))
            events.append(.handoffEnded(.init(handoff: "h\(index)", agent: "web", outcome: .committed, gapMs: 1, error: nil)))
        }
        let state = fold(events)
        #expect(state.agents["web"]?.history.count == LedgerState.historyLimit)
        #expect(state.agents["web"]?.history.last?.id == "h\(LedgerState.historyLimit + 4)")
    }

    @Test func unknownKindsChangeNothingButTheSequence() {
        let state = fold([.unknown(kind: "future.kind", version: 2)])
        #expect(state.lastSeq == 1)
        #expect(state.agents.isEmpty)
    }

    @Test func aCutChangesNothingButTheSequence() {
        let cut = LedgerEvent.ledgerCut(.init(file: "journal.jsonl.cut-x", line: 1, bytes: 3, reason: "no end of line",
                                              follows: 0, highestCutSeq: nil))
        #expect(fold([cut]) == fold([.unknown(kind: "future.kind", version: 2)]))
    }

    @Test func selfUpgradesFoldIntoTheLastAttemptAndTheBinariesThatDiedBeforeConfirming() {
        let a = String(repeating: "a", count: 64), b = String(repeating: "b", count: 64)
        let began = LedgerEvent.daemonUpgradeBegan(.init(from: a, fromVersion: "1", to: b, pid: 7, by: "operator"))
        #expect(fold([began]).daemon.upgrades?.last?.outcome == .inProgress)
        let died = fold([began, .daemonUpgradeFailed(.init(from: a, to: b, stage: .confirm, reason: "died"))])
        #expect(died.daemon.upgrades?.last?.outcome == .failed)
        #expect(died.daemon.upgrades?.last?.stage == .confirm)
        #expect(died.daemon.upgrades?.diedBeforeConfirming == [b])
        let refused = fold([.daemonUpgradeFailed(.init(from: a, to: b, stage: .selfCheck, reason: "exit 1"))])
        #expect(refused.daemon.upgrades?.diedBeforeConfirming == [], "a refused self-check is no reason to shun the binary")
        let forced = fold([began, .daemonUpgradeFailed(.init(from: a, to: b, stage: .confirm, reason: "died")), began,
                           .daemonUpgraded(.init(from: a, fromVersion: "1", to: b, toVersion: "2", pid: 7))])
        #expect(forced.daemon.upgrades?.last?.outcome == .upgraded)
        #expect(forced.daemon.upgrades?.diedBeforeConfirming == [])
    }
}
