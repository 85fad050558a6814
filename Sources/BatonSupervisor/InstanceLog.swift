import Foundation
import Glibc
import Synchronization

/// An instance's stdout and stderr: read from a pipe by a thread of its own, written to
/// `<state_dir>/logs/<instance>.log` (rotated once to `.log.1` past `capBytes`), and
/// the last bytes kept in memory for error reports.
final class InstanceLog: Sendable {
    let path: String
    let capBytes: Int
    private let tailBytes: Int
    private let tail = Mutex<[UInt8]>([])
    private let finished = DispatchSemaphore(value: 0)

    /// Starts reading `readEnd` (which this takes over) until every writer closed it.
    init(path: String, readEnd: Int32, capBytes: Int = 1 << 20, tailBytes: Int = 4096) {
        self.path = path
        self.capBytes = capBytes
        self.tailBytes = tailBytes
        let thread = Thread { [self] in self.pump(readEnd) }
        thread.name = "baton.log"
        thread.start()
    }

    /// The last bytes the instance wrote, as text.
    var lastOutput: String {
        String(decoding: tail.withLock { $0 }, as: UTF8.self)
    }

    /// Waits (up to `timeout`) until the output is read to its end: after the process
    /// exited, so the tail is complete.
    func drain(timeout: Duration = .milliseconds(500)) {
        let nanoseconds = Int(timeout.components.seconds * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000)
        if finished.wait(timeout: .now() + .nanoseconds(nanoseconds)) == .success { finished.signal() }
    }

    private func pump(_ fd: Int32) {
        var file = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        var size = Int(lseek(file, 0, SEEK_END))
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            if file >= 0 {
                if size + count > capBytes {
                    close(file)
                    rename(path, path + ".1")
                    file = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o640)
                    size = 0
                }
                _ = buffer.withUnsafeBytes { write(file, $0.baseAddress, count) }
                size += count
            }
            tail.withLock { tail in
                tail += buffer[0..<count]
                if tail.count > tailBytes { tail.removeFirst(tail.count - tailBytes) }
            }
        }
        close(fd)
        if file >= 0 { close(file) }
        finished.signal()
    }
}
