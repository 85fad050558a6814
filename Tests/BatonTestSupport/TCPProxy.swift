import Foundation
import Glibc

/// A TCP proxy on loopback in front of one target (an etcd member), for partition tests:
/// it forwards every connection while healed; `partition()` cuts every connection it
/// carries and holds new ones (accepted, never answered: a silent network, so clients
/// wait out their own timeouts); `heal()` closes the held ones and forwards again.
/// `stall(request:answer:)` freezes the traffic instead, at one chosen moment: right
/// after etcd answered a given request, before the client sees the answer; nothing is
/// lost, everything moves on in order at `release()`. Call `stop()` when done (its
/// threads hold it).
///
/// @unchecked Sendable: `partitioned`, `pairs`, `held`, `closed`, `marker`, `armedPair`
/// and `stalled` are only touched under `lock`; the descriptors are owned as described at `Pair`.
public final class TCPProxy: @unchecked Sendable {
    /// Where clients connect: `http://127.0.0.1:PORT`.
    public var url: String { "http://127.0.0.1:\(port)" }
    public let port: Int
    let targetPort: Int
    private let listener: Int32
    private let lock = NSLock()
    private var partitioned = false
    private var closed = false
    private var pairs: [ObjectIdentifier: Pair] = [:]
    private var held: [Int32] = []
    /// The stall: armed with `marker` (a request's) and `answerMarker`, set off by an answer
    /// holding `answerMarker` on the connection (`armedPair`) whose last request held
    /// `marker`; while `stalled`, no pump sends anything.
    private var marker: [UInt8]?
    private var answerMarker: [UInt8] = []
    private var armedPair: ObjectIdentifier?
    private var stalled = false
    private let moving = NSCondition()

    /// One forwarded connection: the client's socket and the target's. Each direction is
    /// pumped by a thread of its own; cutting shuts both sockets down (which wakes the
    /// pumps), and the last pump to end closes both, so no descriptor is closed while a
    /// pump may still use it.
    final class Pair: @unchecked Sendable {
        // @unchecked: the descriptors never change; `ended` is only touched under `lock`.
        let client: Int32, target: Int32
        private let lock = NSLock()
        private var ended = 0
        init(client: Int32, target: Int32) { self.client = client; self.target = target }
        func cut() {
            shutdown(client, Int32(SHUT_RDWR))
            shutdown(target, Int32(SHUT_RDWR))
        }
        /// A pump ended; true for the last one.
        func pumpEnded() -> Bool {
            lock.lock(); defer { lock.unlock() }
            ended += 1
            return ended == 2
        }
    }

    /// Listens on a free loopback port and forwards to `127.0.0.1:targetPort`.
    public init(targetPort: Int) throws {
        self.targetPort = targetPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = Self.loopback(port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound, listen(fd, 128) == 0 else {
            close(fd)
            throw TestFailure("the proxy cannot listen: \(String(cString: strerror(errno)))")
        }
        listener = fd
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread { [self] in acceptLoop() }.start()
    }

    /// A proxy in front of `url` (`http://127.0.0.1:PORT`, as `EtcdCluster.endpoints`).
    public convenience init(to url: String) throws {
        guard let port = url.split(separator: ":").last.flatMap({ Int($0) }) else { throw TestFailure("no port in \(url)") }
        try self.init(targetPort: port)
    }

    /// Cuts every connection, and holds new ones until `heal()`.
    public func partition() {
        lock.lock()
        partitioned = true
        let cut = Array(pairs.values)
        lock.unlock()
        for pair in cut { pair.cut() }
    }

    /// Closes the held connections (their clients see them end) and forwards new ones.
    public func heal() {
        lock.lock()
        partitioned = false
        let release = held
        held = []
        lock.unlock()
        for fd in release {
            shutdown(fd, Int32(SHUT_RDWR))
            close(fd)
        }
    }

    /// Arms the stall: once a request whose bytes contain `request` has gone to the target,
    /// and its answer comes with `answer` in it, those bytes, and every byte after them on
    /// every connection, wait until `release()`.
    public func stall(request: String, answer: String) {
        lock.lock()
        marker = Array(request.utf8)
        answerMarker = Array(answer.utf8)
        armedPair = nil
        lock.unlock()
    }

    /// Whether the stall went off (and holds the traffic now).
    public var isStalled: Bool {
        lock.lock(); defer { lock.unlock() }
        return stalled
    }

    private var isClosed: Bool {
        lock.lock(); defer { lock.unlock() }
        return closed
    }

    /// Lets everything held move on, in order; disarms the stall.
    public func release() {
        lock.lock()
        marker = nil
        armedPair = nil
        stalled = false
        lock.unlock()
        moving.lock()
        moving.broadcast()
        moving.unlock()
    }

    /// Stops listening and ends every connection.
    public func stop() {
        lock.lock()
        guard !closed else { return lock.unlock() }
        closed = true
        let cut = Array(pairs.values), release = held
        held = []
        lock.unlock()
        shutdown(listener, Int32(SHUT_RDWR))  // wakes accept(2)
        for pair in cut { pair.cut() }
        for fd in release { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
        moving.lock()
        moving.broadcast()
        moving.unlock()
    }

    private func acceptLoop() {
        while true {
            let fd = accept(listener, nil, nil)
            lock.lock()
            let (isClosed, isPartitioned) = (closed, partitioned)
            if fd >= 0 && !isClosed && isPartitioned { held.append(fd) }
            lock.unlock()
            if isClosed {
                if fd >= 0 { close(fd) }
                close(listener)
                return
            }
            guard fd >= 0 else {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            if isPartitioned { continue }
            forward(fd)
        }
    }

    private func forward(_ client: Int32) {
        let target = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = Self.loopback(port: targetPort)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(target, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard connected else {
            close(target)
            close(client)
            return
        }
        let pair = Pair(client: client, target: target)
        lock.lock()
        // A partition that came while this one connected cuts it too.
        let cutNow = partitioned || closed
        pairs[ObjectIdentifier(pair)] = pair
        lock.unlock()
        if cutNow { pair.cut() }
        for (from, to) in [(client, target), (target, client)] {
            Thread { [self] in
                pump(from, to, pair: ObjectIdentifier(pair), request: from == client)
                // One direction ended: end the other too (a half-closed etcd connection is of no use).
                pair.cut()
                if pair.pumpEnded() {
                    lock.lock()
                    pairs[ObjectIdentifier(pair)] = nil
                    lock.unlock()
                    close(pair.client)
                    close(pair.target)
                }
            }.start()
        }
    }

    /// `request`: the client-to-target direction (where the stall's marker is looked for).
    private func pump(_ from: Int32, _ to: Int32, pair: ObjectIdentifier, request: Bool) {
        var buffer = [UInt8](repeating: 0, count: 16_384)
        var tail: [UInt8] = []  // the end of the previous read, for a marker split across two
        while true {
            let count = buffer.withUnsafeMutableBytes { read(from, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return }
            lock.lock()
            if let marker, !stalled {
                let seen = tail + buffer[..<count]
                let needle = request ? marker : answerMarker
                if request && Self.contains(seen, needle) {
                    armedPair = pair
                } else if !request && armedPair == pair && Self.contains(seen, needle) {
                    stalled = true
                }
                tail = Array(seen.suffix(max(marker.count, answerMarker.count)))
            }
            lock.unlock()
            waitWhileStalled()
            var sent = 0
            while sent < count {
                let wrote = buffer.withUnsafeBytes { send(to, $0.baseAddress! + sent, count - sent, Int32(MSG_NOSIGNAL)) }
                if wrote < 0 && errno == EINTR { continue }
                guard wrote > 0 else { return }
                sent += wrote
            }
        }
    }

    private func waitWhileStalled() {
        moving.lock()
        // `release` and `stop` broadcast under `moving`, after the change: none is missed.
        while isStalled && !isClosed { moving.wait() }
        moving.unlock()
    }

    private static func contains(_ bytes: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, bytes.count >= needle.count else { return false }
        return (0...(bytes.count - needle.count)).contains { bytes[$0..<($0 + needle.count)].elementsEqual(needle) }
    }

    private static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        return address
    }
}
