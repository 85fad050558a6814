@testable import BatonHTTP
import Testing

/// An open stream's wake-ups: its connection is suspended only when nothing came since
/// the writer last looked, and resumed exactly once per suspension.
@Suite("stream wake-ups")
struct StreamWakeupsTests {
    /// A poke while the writer works resumes nothing; it keeps the writer from resting.
    @Test(arguments: [StreamWakeups.Poke.news, .keepalive, .end(.finish), .end(.abort)])
    func aPokeWhileWritingKeepsTheWriterAwake(_ poke: StreamWakeups.Poke) {
        var wakeups = StreamWakeups()
        _ = wakeups.take()
        let resume = wakeups.poke(poke)
        #expect(!resume, "nothing to resume: the connection is not suspended")
        let rests = wakeups.rest()
        #expect(!rests, "news came since the writer looked: it looks again")
    }

    @Test(arguments: [StreamWakeups.Poke.news, .keepalive, .end(.finish), .end(.abort)])
    func aPokeResumesARestingStreamOnce(_ poke: StreamWakeups.Poke) {
        var wakeups = StreamWakeups()
        _ = wakeups.take()
        let rests = wakeups.rest()
        #expect(rests)
        let resume = wakeups.poke(poke)
        #expect(resume, "resume now")
        let again = wakeups.poke(.news)
        #expect(!again, "resumed already: a second resume would be undefined")
    }

    @Test func takeClearsWhatItActsOnAndTheEndStays() {
        var wakeups = StreamWakeups()
        _ = wakeups.poke(.keepalive)
        _ = wakeups.poke(.news)
        let first = wakeups.take()
        #expect(first.keepalive && first.ending == nil)
        let second = wakeups.take()
        #expect(!second.keepalive)
        let rests = wakeups.rest()
        #expect(rests)
        _ = wakeups.poke(.end(.abort))
        _ = wakeups.poke(.end(.finish))
        let ending = wakeups.take().ending
        #expect(ending == .abort, "the first reason to end stands")
        let still = wakeups.take().ending
        #expect(still == .abort)
        let restsAgain = wakeups.rest()
        #expect(!restsAgain, "an ending stream never sleeps again")
    }
}
