import BatonCore
import Crypto
import Synchronization

/// Instance tokens are kept as SHA-256 digests (hex): the ledger holds the same digest, so
/// a restarted batond knows an adopted instance by its token without ever storing it.
public enum TokenDigest {
    public static func hex(_ token: String) -> String {
        Hex.encode(Array(SHA256.hash(data: Array(token.utf8))))
    }
}

/// The live instances of every agent, as the API needs them: their tokens, their
/// signals, each agent's desired version, and the long-polls waiting for a change. Read
/// from libmicrohttpd's threads, written by the agents' run loops; everything under one
/// lock.
///
/// An instance's view carries the agent's desired version when it is not the instance's
/// own version (`SignalView.desired`).
///
/// Invariant: a waiter is parked only while its instance's signal equals the `seen` it
/// asked with (or its instance is `undecided`) and, if it asked about the desired version
/// (`seen_desired`), the desired version its view carries is the one it carried when the
/// waiter parked; any change of either answers it. A waiter that did not ask about the
/// desired version is not answered for it: an answer with its signal unchanged would only
/// send it round again (the agent library backs off on such an answer, and the old
/// instance of a handoff, which the desired version begins, would hear its stop late).
public final class InstanceRegistry: Sendable {
    public struct Instance: Sendable, Equatable {
        public var id: String
        public var agent: String
        public var version: String
        public var pid: Int32
        public var signal: AgentSignal
        public var handoff: String?
        public var startedAt: Timestamp
        /// Whether it reported ready (or its probe succeeded).
        public var ready: Bool
        /// Whether it reported stopped.
        public var stopped: Bool
        /// Whether batond started it (false for registered processes).
        public var spawned: Bool
        /// SHA-256 (hex) of its bearer token.
        let tokenDigest: String
        /// batond restarted while this handoff successor may hold a go that was never
        /// recorded (docs/ledger.md): it is told nothing new until its next signal is set.
        /// Its polls park whatever they saw and answer with what they saw, so one that
        /// heard go never hears wait because of the restart.
        public var undecided = false
    }

    public struct Waiter: Sendable {
        let seen: AgentSignal?
        /// Whether it asked about the desired version (`seen_desired`).
        let followsDesired: Bool
        /// Answers the parked request; a no-op once it was answered (deadline, shutdown).
        let answer: @Sendable (SignalView) -> Void
        let isAnswered: @Sendable () -> Bool

        public init(seen: AgentSignal?, followsDesired: Bool = false, answer: @escaping @Sendable (SignalView) -> Void,
                    isAnswered: @escaping @Sendable () -> Bool) {
            self.seen = seen
            self.followsDesired = followsDesired
            self.answer = answer
            self.isAnswered = isAnswered
        }
    }

    private struct State {
        /// Bumped on every change, so views built from the registry can be cached.
        var generation = 0
        var instances: [String: Instance] = [:]
        /// Instance ids by token digest.
        var byToken: [String: String] = [:]
        var waiters: [String: [Waiter]] = [:]
        /// Each agent's desired version, as instances are shown it.
        var desired: [String: DesiredVersion] = [:]
        /// Every live instance's pid, and pids claimed by a registration in progress:
        /// one live registration per pid.
        var pids: [Int32: String] = [:]

        /// What the instance is told: its signal, its handoff, and the agent's desired
        /// version unless it runs that version already.
        /// `seen`: what the asker last saw, which an undecided instance is told again.
        func view(of instance: Instance, seen: AgentSignal? = nil) -> SignalView {
            let desired = self.desired[instance.agent].flatMap { $0.version == instance.version ? nil : $0 }
            let signal = instance.undecided ? seen ?? instance.signal : instance.signal
            return SignalView(instance: instance.id, signal: signal, handoff: instance.handoff, desired: desired)
        }
    }

    private let state = Mutex(State())

    public init() {}

    public var generation: Int { state.withLock { $0.generation } }

    public func add(_ instance: Instance) {
        state.withLock { state in
            state.generation += 1
            state.instances[instance.id] = instance
            state.byToken[instance.tokenDigest] = instance.id
            state.pids[instance.pid] = instance.id
        }
    }

    /// Claims `pid` for the instance `id` about to be registered; returns the instance
    /// that already holds it instead, if any.
    public func claim(pid: Int32, for id: String) -> String? {
        state.withLock { state in
            if let holder = state.pids[pid] { return holder }
            state.pids[pid] = id
            return nil
        }
    }

    /// Gives up a claim whose registration did not happen.
    public func release(pid: Int32, claimedBy id: String) {
        state.withLock { state in
            if state.pids[pid] == id { state.pids[pid] = nil }
        }
    }

    /// Forgets an instance; its waiters are answered with `stop` (it is gone).
    public func remove(_ id: String) {
        let (waiters, view) = state.withLock { state -> ([Waiter], SignalView?) in
            guard let instance = state.instances.removeValue(forKey: id) else { return ([], nil) }
            state.generation += 1
            state.byToken[instance.tokenDigest] = nil
            if state.pids[instance.pid] == id { state.pids[instance.pid] = nil }
            return (state.waiters.removeValue(forKey: id) ?? [], SignalView(instance: id, signal: .stop, handoff: instance.handoff))
        }
        if let view { for waiter in waiters { waiter.answer(view) } }
    }

    public func instance(_ id: String) -> Instance? { state.withLock { $0.instances[id] } }

    public func instances(of agent: String) -> [Instance] {
        state.withLock { $0.instances.values.filter { $0.agent == agent }.sorted { $0.startedAt < $1.startedAt } }
    }

    /// The instance a bearer token belongs to.
    public func instance(forToken token: String) -> String? {
        let digest = TokenDigest.hex(token)
        return state.withLock { $0.byToken[digest] }
    }

    /// The instance whose process is `pid` or one of its ancestors (agents' children
    /// count as their agent), walking parents through /proc up to `stopAt`.
    public func instance(forProcess pid: Int32, stopAt daemon: Int32, parent: (Int32) -> Int32?) -> String? {
        let byPid = state.withLock { state in
            Dictionary(state.instances.values.map { ($0.pid, $0.id) }, uniquingKeysWith: { first, _ in first })
        }
        var current = pid
        for _ in 0..<64 {
            if let id = byPid[current] { return id }
            guard current > 1, current != daemon, let next = parent(current), next > 0 else { return nil }
            current = next
        }
        return nil
    }

    /// What the instance is told when it last saw `seen` (see `Instance.undecided`).
    public func view(_ id: String, seen: AgentSignal? = nil) -> SignalView? {
        state.withLock { state in state.instances[id].map { state.view(of: $0, seen: seen) } }
    }

    /// Whether a poll of `id` that saw `seen` is parked (a test seam: see `CrashPoint`).
    public func isParked(_ id: String, seen: AgentSignal) -> Bool {
        state.withLock { state in state.waiters[id, default: []].contains { $0.seen == seen && !$0.isAnswered() } }
    }

    /// The agent's desired version as its instances see it (nil before the first).
    public func desired(of agent: String) -> DesiredVersion? {
        state.withLock { $0.desired[agent] }
    }

    /// Sets the agent's desired version, and answers the waiters that follow it (see the
    /// invariant) of every instance whose view now carries another desired version (one
    /// appears, goes, or changes version).
    public func setDesired(agent: String, _ desired: DesiredVersion?) {
        let answers = state.withLock { state -> [(Waiter, SignalView)] in
            guard state.desired[agent] != desired else { return [] }
            state.generation += 1
            let before = state.instances.values.filter { $0.agent == agent }.map { ($0, state.view(of: $0).desired?.version) }
            state.desired[agent] = desired
            var answers: [(Waiter, SignalView)] = []
            for (instance, carried) in before {
                let view = state.view(of: instance)
                guard view.desired?.version != carried else { continue }
                let waiters = state.waiters[instance.id] ?? []
                state.waiters[instance.id] = waiters.filter { !$0.followsDesired }
                answers += waiters.filter(\.followsDesired).map { ($0, state.view(of: instance, seen: $0.seen)) }
            }
            return answers
        }
        for (waiter, view) in answers { waiter.answer(view) }
    }

    public func update(_ id: String, _ change: (inout Instance) -> Void) {
        state.withLock { state in
            if var instance = state.instances[id] {
                state.generation += 1
                change(&instance)
                state.instances[id] = instance
            }
        }
    }

    /// Sets the signal and answers every waiter that saw another one.
    public func setSignal(_ id: String, _ signal: AgentSignal, handoff: String?) {
        let (ready, view) = state.withLock { state -> ([Waiter], SignalView?) in
            guard var instance = state.instances[id] else { return ([], nil) }
            state.generation += 1
            instance.signal = signal
            instance.undecided = false
            instance.handoff = handoff
            state.instances[id] = instance
            let all = state.waiters[id] ?? []
            let ready = all.filter { $0.seen != signal }
            state.waiters[id] = all.filter { $0.seen == signal && !$0.isAnswered() }
            return (ready, state.view(of: instance))
        }
        if let view { for waiter in ready { waiter.answer(view) } }
    }

    /// Answers at once (returns the view) when the signal differs from `seen`, or when
    /// `seenDesired` is given (empty: none) and the desired version the view carries
    /// differs from it; else parks `waiter` and returns nil.
    public func signalOrPark(_ id: String, seen: AgentSignal?, seenDesired: String? = nil, waiter: Waiter) -> SignalView? {
        state.withLock { state in
            guard let instance = state.instances[id] else { return SignalView(instance: id, signal: .stop, handoff: nil) }
            let view = state.view(of: instance, seen: seen)
            if seen != view.signal { return view }
            if let seenDesired, seenDesired != view.desired?.version ?? "" { return view }
            var list = state.waiters[id, default: []].filter { !$0.isAnswered() }
            list.append(waiter)
            state.waiters[id] = list
            return nil
        }
    }
}

