@testable import BatonHTTP
import Testing

/// The connection table's decisions, with time driven by hand.
@Suite("connection table")
struct ConnectionTableTests {
    let start = Tick.now

    func table(limit: Int = 3, perPeer: Int? = nil) -> ConnectionTable {
        ConnectionTable(policy: ListenerPolicy(maxConnections: limit, maxConnectionsPerPeer: perPeer),
                        headTimeout: .seconds(10), bodyTimeout: .seconds(30), idleTimeout: .seconds(30))
    }

    @Test func belowTheLimitEveryConnectionIsTaken() {
        var connections = table()
        for key in UInt(1)...3 {
            let result1 = connections.admit()
            #expect(result1 == .accept)
            let result2 = connections.started(key, fd: Int32(key), peer: nil, now: start)
            #expect(result2)
        }
        #expect(connections.open == 3)
    }

    @Test func aFullTableGivesTheSlotOfTheLongestWaitingHead() {
        var connections = table()
        for key in UInt(1)...3 {
            _ = connections.admit()
            _ = connections.started(key, fd: Int32(10 + key), peer: nil, now: start + .seconds(Int64(key)))
        }
        connections.headReceived(1, now: start + .seconds(4))
        let result3 = connections.admit()
        #expect(result3 == .acceptEvicting(fd: 12), "1 sent its head; 2 has waited longest")
        #expect(connections.open == 2)
        connections.closed(2)
        #expect(connections.entries[2] == nil)
    }

    @Test func aFullTableOfBusyConnectionsRefuses() {
        var connections = table(limit: 2)
        for key in UInt(1)...2 {
            _ = connections.admit()
            _ = connections.started(key, fd: Int32(key), peer: nil, now: start)
            connections.headReceived(key, now: start)
        }
        connections.bodyReceived(1)
        let result4 = connections.admit()
        #expect(result4 == .refuse, "one handled, one reading its body: none waits for a head")
    }

    @Test func aPeerPastItsCapIsRefusedAndOthersAreNot() {
        var connections = table(limit: 10, perPeer: 2)
        let result5 = connections.started(1, fd: 1, peer: "uid 7", now: start)
        #expect(result5)
        let result6 = connections.started(2, fd: 2, peer: "uid 7", now: start)
        #expect(result6)
        let result7 = connections.started(3, fd: 3, peer: "uid 7", now: start)
        #expect(!result7)
        let result8 = connections.started(4, fd: 4, peer: "instance web.1", now: start)
        #expect(result8)
        connections.closed(1)
        let result9 = connections.started(5, fd: 5, peer: "uid 7", now: start)
        #expect(result9, "a slot freed by the peer is its own again")
    }

    @Test func headAndBodyDeadlines() {
        var connections = table()
        _ = connections.started(1, fd: 11, peer: nil, now: start)
        _ = connections.started(2, fd: 12, peer: nil, now: start)
        _ = connections.started(3, fd: 13, peer: nil, now: start)
        connections.headReceived(2, now: start + .seconds(5))
        connections.headReceived(3, now: start + .seconds(5))
        connections.bodyReceived(3)
        let result10 = connections.expire(now: start + .seconds(9))
        #expect(result10.isEmpty)
        let result11 = connections.expire(now: start + .seconds(10))
        #expect(result11 == [11], "no head within 10 s")
        let result12 = connections.expire(now: start + .seconds(34))
        #expect(result12.isEmpty)
        let result13 = connections.expire(now: start + .seconds(35))
        #expect(result13 == [12], "no body within 30 s of the head")
        let result14 = connections.expire(now: start + .seconds(3600))
        #expect(result14.isEmpty, "a request being handled has no deadline here")
        let result15 = connections.expire(now: start + .seconds(3600))
        #expect(result15.isEmpty, "each connection is shut down once")
    }

    @Test func onlyABodyWhoseClientLeftIsClosedAsAbandoned() {
        var connections = table()
        for key in UInt(1)...3 {
            _ = connections.admit()
            _ = connections.started(key, fd: Int32(10 + key), peer: nil, now: start)
        }
        connections.headReceived(1, now: start)
        connections.headReceived(2, now: start)
        connections.bodyReceived(2)
        // Every peer is "gone": only the one in the middle of a body is closed.
        #expect(connections.abandoned(gone: { _ in true }) == [11])
        #expect(connections.closures[.abandoned] == 1)
        #expect(connections.abandoned(gone: { _ in true }) == [], "closing stays closing")
    }

    @Test func aKeptAliveConnectionMayIdleBeforeItsNextHead() {
        var connections = table()
        _ = connections.started(1, fd: 11, peer: nil, now: start)
        connections.headReceived(1, now: start)
        connections.bodyReceived(1)
        connections.requestEnded(1, now: start + .seconds(1))
        let result16 = connections.expire(now: start + .seconds(40))
        #expect(result16.isEmpty)
        let result17 = connections.expire(now: start + .seconds(41))
        #expect(result17 == [11], "idle 30 s, then 10 s for the head")
    }

    @Test func aClosingConnectionStaysClosing() {
        var connections = table()
        _ = connections.started(1, fd: 11, peer: nil, now: start)
        connections.headReceived(1, now: start)
        let result18 = connections.expire(now: start + .seconds(30))
        #expect(result18 == [11])
        connections.requestEnded(1, now: start + .seconds(30))
        connections.headReceived(1, now: start + .seconds(30))
        #expect(connections.entries[1]?.phase == .closing)
        #expect(connections.open == 0)
    }

    /// Held connections (parked, streaming) stay within `maxConnections - reserved`; a
    /// forced hold goes past; ending a request or closing frees the hold.
    @Test func heldConnectionsStayWithinTheLimitLessTheReserve() {
        var connections = ConnectionTable(policy: ListenerPolicy(maxConnections: 4, reserved: 2),
                                          headTimeout: .seconds(10), bodyTimeout: .seconds(30), idleTimeout: .seconds(30))
        for key in UInt(1)...4 {
            _ = connections.started(key, fd: Int32(key), peer: nil, now: start)
            connections.headReceived(key, now: start)
            connections.bodyReceived(key)
        }
        let first = connections.hold(1), second = connections.hold(2), third = connections.hold(3)
        #expect(first && second)
        #expect(!third, "two of four slots are reserved")
        #expect(connections.entries[3]?.phase == .busy)
        let forced = connections.hold(3, force: true)
        #expect(forced)
        #expect(connections.held == 3)
        connections.requestEnded(1, now: start)
        connections.closed(2)
        #expect(connections.held == 1)
        let fourth = connections.hold(4)
        #expect(fourth)
        #expect(connections.held == 2)
    }
}
