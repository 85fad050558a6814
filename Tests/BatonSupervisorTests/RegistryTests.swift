import BatonCore
@testable import BatonSupervisor
import Synchronization
import Testing

/// The registry's signal long-polls and the desired version they carry: a waiter is
/// answered when its instance's signal changes, or when the desired version its answer
/// carries changes; never for a change that leaves its answer's desired version as it was.
@Suite("instance registry")
struct RegistryTests {
    static let at = Timestamp(milliseconds: 1_795_560_776_824)

    static func desired(_ version: String, sha256: String? = nil) -> DesiredVersion {
        DesiredVersion(version: version, mode: .parallel, setAt: at, setBy: "uid 0", sha256: sha256, url: sha256.map { _ in "http://x/\(version)" })
    }

    /// A registry with `ext.1` at 1.0 (told go) and `ext.2` at 2.0 (told wait).
    static func registry() -> InstanceRegistry {
        let registry = InstanceRegistry()
        for (id, version, signal) in [("ext.1", "1.0", AgentSignal.go), ("ext.2", "2.0", .wait)] {
            registry.add(.init(id: id, agent: "ext", version: version, pid: id == "ext.1" ? 101 : 102, signal: signal, handoff: nil,
                               startedAt: at, ready: true, stopped: false, spawned: false, tokenDigest: id))
        }
        return registry
    }

    /// A parked waiter that keeps what it was answered.
    final class Parked: Sendable {
        let answers = Mutex<[SignalView]>([])
        var waiter: InstanceRegistry.Waiter {
            InstanceRegistry.Waiter(seen: nil, answer: { view in self.answers.withLock { $0.append(view) } },
                                    isAnswered: { self.answers.withLock { !$0.isEmpty } })
        }
        /// `followsDesired`: it asked with `seen_desired`.
        func parked(seen: AgentSignal, followsDesired: Bool = true) -> InstanceRegistry.Waiter {
            InstanceRegistry.Waiter(seen: seen, followsDesired: followsDesired, answer: { view in self.answers.withLock { $0.append(view) } },
                                    isAnswered: { self.answers.withLock { !$0.isEmpty } })
        }
        var answered: [SignalView] { answers.withLock { $0 } }
    }

    @Test func theViewCarriesTheDesiredVersionOnlyWhereItIsNotTheInstancesOwn() {
        let registry = Self.registry()
        #expect(registry.view("ext.1")?.desired == nil)
        registry.setDesired(agent: "ext", Self.desired("2.0", sha256: String(repeating: "a", count: 64)))
        #expect(registry.view("ext.1")?.desired == Self.desired("2.0", sha256: String(repeating: "a", count: 64)))
        #expect(registry.view("ext.2")?.desired == nil, "ext.2 runs 2.0 already")
        #expect(registry.desired(of: "ext")?.version == "2.0")
        #expect(registry.desired(of: "other") == nil)
    }

    @Test func aParkedPollIsAnsweredWhenItsDesiredVersionChanges() {
        let registry = Self.registry()
        let one = Parked(), two = Parked()
        #expect(registry.signalOrPark("ext.1", seen: .go, waiter: one.parked(seen: .go)) == nil)
        #expect(registry.signalOrPark("ext.2", seen: .wait, waiter: two.parked(seen: .wait)) == nil)
        let generation = registry.generation
        registry.setDesired(agent: "ext", Self.desired("2.0"))
        #expect(one.answered.map(\.desired?.version) == ["2.0"])
        #expect(one.answered.first?.signal == .go, "the same signal, with the news")
        #expect(two.answered.isEmpty, "its answer carries no desired version either way")
        #expect(registry.generation > generation, "cached views are rebuilt")

        // The same version again (set again, by someone else): nothing new to answer.
        let again = Parked()
        #expect(registry.signalOrPark("ext.1", seen: .go, waiter: again.parked(seen: .go)) == nil)
        var later = Self.desired("2.0")
        later.setBy = "operator (token)"
        registry.setDesired(agent: "ext", later)
        #expect(again.answered.isEmpty)
        // Back to 1.0: ext.1's answer loses it, ext.2's gains it.
        let three = Parked()
        #expect(registry.signalOrPark("ext.2", seen: .wait, waiter: three.parked(seen: .wait)) == nil)
        registry.setDesired(agent: "ext", Self.desired("1.0"))
        #expect(again.answered.count == 1 && again.answered.first?.desired == nil)
        #expect(three.answered.map(\.desired?.version) == ["1.0"])
        // A signal change still answers as before, with the desired version.
        let four = Parked()
        #expect(registry.signalOrPark("ext.2", seen: .wait, waiter: four.parked(seen: .wait)) == nil)
        registry.setSignal("ext.2", .go, handoff: "ext-1")
        #expect(four.answered.map(\.signal) == [.go] && four.answered.first?.desired?.version == "1.0")
    }

    @Test func seenDesiredAnswersAtOnceWhatTheAgentHasNotSeen() {
        let registry = Self.registry()
        registry.setDesired(agent: "ext", Self.desired("2.0"))
        let parked = Parked()
        #expect(registry.signalOrPark("ext.1", seen: .go, seenDesired: "", waiter: parked.waiter)?.desired?.version == "2.0")
        #expect(registry.signalOrPark("ext.1", seen: .go, seenDesired: "1.5", waiter: parked.waiter)?.desired?.version == "2.0")
        #expect(registry.signalOrPark("ext.1", seen: .go, seenDesired: "2.0", waiter: parked.parked(seen: .go)) == nil)
        #expect(registry.signalOrPark("ext.2", seen: .wait, seenDesired: "", waiter: Parked().parked(seen: .wait)) == nil,
                "ext.2 runs the desired version: none to see")
        #expect(parked.answered.isEmpty)
    }

    /// A successor batond restarted over while it may have heard go unrecorded
    /// (`undecided`): its polls park whatever they saw and answer with what they saw, so
    /// one that heard go never hears wait; its next signal decides, and answers as usual.
    @Test func anUndecidedInstanceIsToldNothingNewUntilItsNextSignal() {
        let registry = InstanceRegistry()
        registry.add(.init(id: "web.2", agent: "web", version: "2.0", pid: 102, signal: .wait, handoff: "web-1", startedAt: Self.at,
                           ready: true, stopped: false, spawned: true, tokenDigest: "web.2", undecided: true))
        // A poll that saw go parks; at its deadline (or at once, without wait) it is told go again.
        let heard = Parked(), notHeard = Parked()
        #expect(registry.signalOrPark("web.2", seen: .go, waiter: heard.parked(seen: .go)) == nil)
        #expect(registry.signalOrPark("web.2", seen: .wait, waiter: notHeard.parked(seen: .wait)) == nil)
        #expect(registry.isParked("web.2", seen: .go) && registry.isParked("web.2", seen: .wait))
        #expect(registry.view("web.2", seen: .go)?.signal == .go)
        #expect(registry.view("web.2", seen: .wait)?.signal == .wait)
        // News of the desired version answers it with its own signal, not the recorded one.
        registry.setDesired(agent: "web", Self.desired("3.0"))
        #expect(heard.answered.map(\.signal) == [.go] && notHeard.answered.map(\.signal) == [.wait])

        // The handoff gives it go: the one that heard go stays parked, the other hears go.
        let heardAgain = Parked(), waiting = Parked()
        #expect(registry.signalOrPark("web.2", seen: .go, waiter: heardAgain.parked(seen: .go)) == nil)
        #expect(registry.signalOrPark("web.2", seen: .wait, waiter: waiting.parked(seen: .wait)) == nil)
        registry.setSignal("web.2", .go, handoff: "web-1")
        #expect(heardAgain.answered.isEmpty)
        #expect(waiting.answered.map(\.signal) == [.go])
        // Decided: a later stop answers as for any instance.
        registry.setSignal("web.2", .stop, handoff: nil)
        #expect(heardAgain.answered.map(\.signal) == [.stop])
        #expect(registry.view("web.2", seen: .go)?.signal == .stop)
    }

    /// Without the restart's doubt, a poll that saw another signal is answered at once.
    @Test func aDecidedInstanceIsAnsweredWithItsSignal() {
        let registry = Self.registry()
        let parked = Parked()
        #expect(registry.signalOrPark("ext.2", seen: .go, waiter: parked.parked(seen: .go))?.signal == .wait)
        #expect(registry.view("ext.2", seen: .go)?.signal == .wait)
    }

    /// A poll that did not ask about the desired version (no `seen_desired`: BatonAgent's
    /// `waitForSignal`) is not answered when it changes, only when its signal does: the
    /// old instance of a handoff, which a desired version begins, stays parked and hears
    /// its stop at once instead of after the agent library's back-off.
    @Test func aPollThatDoesNotFollowTheDesiredVersionIsNotAnsweredForIt() {
        let registry = Self.registry()
        let signalOnly = Parked()
        #expect(registry.signalOrPark("ext.1", seen: .go, waiter: signalOnly.parked(seen: .go, followsDesired: false)) == nil)
        registry.setDesired(agent: "ext", Self.desired("2.0"))
        #expect(signalOnly.answered.isEmpty)
        #expect(registry.isParked("ext.1", seen: .go))
        registry.setSignal("ext.1", .stop, handoff: "ext-1")
        #expect(signalOnly.answered.map(\.signal) == [.stop] && signalOnly.answered.first?.desired?.version == "2.0")
    }
}
