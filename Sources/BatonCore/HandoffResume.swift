/// Taking up a handoff that a previous batond left in flight (it was killed, or stopped
/// without stopping its agents). The rule is decided from the ledger's last recorded
/// phase and the processes still alive, and then the machine's own cells do the rest:
/// the resumed machine re-enters its phase (re-sends what the phase sends, restarts its
/// timers in full), then hears what happened while batond was away.
///
/// | recorded phase       | re-entry                                                  |
/// |----------------------|-----------------------------------------------------------|
/// | began                | the handoff begins again (`.begin`)                       |
/// | stopping_first       | old alive: stop again, stop timer; gone: spawn successor  |
/// | spawning             | successor recorded: as waiting_ready; else spawn it again |
/// | waiting_ready        | ready timer in full                                       |
/// | stopping_old         | stop again to the old one, stop timer                     |
/// | aborting_successor   | terminate the successor again, kill timer                 |
/// | reverting_spawn      | previous recorded: as reverting_ready; else spawn it      |
/// | reverting_ready      | ready timer in full                                       |
///
/// Then, in this order: every role whose process is gone `.exited` (a successor or
/// previous that reported stopped counts as gone: it is on its way out); the old one that
/// reported stopped `.stopped(.old)`; a successor (or previous) alive that had reported
/// ready `.ready`. So, e.g., a successor not ready yet goes on verifying itself while
/// the old one keeps go; an old one already told stop is waited for, and the successor
/// gets go if it is alive and ready, else the handoff fails and supervision starts
/// `current`. The machine's invariants hold on every row: go only after the old one is
/// gone, commit only after ready.
extension Handoff {
    /// What a role's process was found to be when batond came back.
    public enum Found: Sendable, Hashable {
        /// The ledger never recorded a process for it.
        case none
        /// Recorded, but gone.
        case gone
        /// Alive, with what it had reported.
        case alive(ready: Bool, stopped: Bool)

        var isAlive: Bool { if case .alive = self { true } else { false } }
    }

    /// The machine taken up at `phase` (the raw phase recorded, "began" included) and
    /// the actions to perform, re-entry first and then the catching-up events' actions.
    public static func resuming(phase recorded: String, mode: Mode, timeouts: Timeouts, old: Found, successor found: Found,
                                previous foundPrevious: Found, fromRecorded hadOld: Bool) -> (Handoff, [Action]) {
        // A successor (or previous) that reported stopped is on its way out: it never gets go.
        let successor: Found = found == .alive(ready: true, stopped: true) || found == .alive(ready: false, stopped: true) ? .gone : found
        let previous: Found = foundPrevious == .alive(ready: true, stopped: true) || foundPrevious == .alive(ready: false, stopped: true)
            ? .gone : foundPrevious
        var phase = Phase(rawValue: recorded)
        if phase == .spawning, successor != .none { phase = .waitingReady }
        if phase == .revertingSpawn, previous != .none { phase = .revertingReady }
        guard let phase, !phase.isFinal else {
            // "began", or nothing usable: the handoff begins again from the start.
            var machine = Handoff(mode: mode, timeouts: timeouts, hasOld: old.isAlive)
            return (machine, machine.handle(.begin))
        }
        // An old instance that reported stopped no longer works; in the stopping phases the
        // machine hears it as `.stopped(.old)` below, which moves it on.
        let stopping = phase == .stoppingFirst || phase == .stoppingOld
        let oldWorks = old.isAlive && (stopping || old != .alive(ready: true, stopped: true) && old != .alive(ready: false, stopped: true))
        var machine = Handoff(mode: mode, timeouts: timeouts, resuming: phase, hadOld: hadOld || old != .none,
                              oldAlive: oldWorks, successorAlive: successor.isAlive, previousAlive: previous.isAlive)
        var actions: [Action]
        switch phase {
        case .stoppingFirst where old.isAlive, .stoppingOld where old.isAlive:
            actions = [.signalStop(.old), .startTimer(.stop, timeouts.stop)]
        case .stoppingFirst, .stoppingOld:
            actions = []
        case .spawning:
            actions = [.spawn(.successor)]
        case .revertingSpawn:
            actions = [.spawn(.previous)]
        case .waitingReady, .revertingReady:
            actions = [.startTimer(.ready, timeouts.ready)]
        case .abortingSuccessor where successor.isAlive:
            actions = [.terminate(.successor), .startTimer(.kill, timeouts.kill)]
        case .abortingSuccessor:
            actions = []
        case .committed, .failed, .reverted, .cancelled:
            actions = []
        }
        let gone = "ended while batond was down"
        if old == .gone { actions += machine.handle(.exited(.old, description: gone)) }
        if successor == .gone { actions += machine.handle(.exited(.successor, description: gone)) }
        if previous == .gone { actions += machine.handle(.exited(.previous, description: gone)) }
        if stopping, case .alive(_, stopped: true) = old { actions += machine.handle(.stopped(.old)) }
        if case .alive(ready: true, _) = successor { actions += machine.handle(.ready(.successor)) }
        if case .alive(ready: true, _) = previous { actions += machine.handle(.ready(.previous)) }
        return (machine, actions)
    }
}
