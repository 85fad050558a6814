import BatonConfig
import Foundation
import Glibc

/// Readiness for agents that do not speak the protocol: a command that exits 0, or an
/// HTTP URL that answers 2xx or 3xx, tried every `interval` until it succeeds. The
/// weaker mode: such an agent works from the moment it starts, and is stopped by
/// SIGTERM, so batond cannot hold it back until the old one stopped.
enum ReadinessProbe {
    static let interval: Duration = .milliseconds(250)

    /// Tries the probe until it succeeds (true) or the task is cancelled (false). The
    /// command's output goes to `log`, checked against its cap before each attempt.
    static func wait(for readiness: AgentConfig.Readiness, directory: String, environment: [String: String], log: InstanceLog) async -> Bool {
        while !Task.isCancelled {
            log.rotateIfNeeded()
            if await attempt(readiness, directory: directory, environment: environment, log: log) { return true }
            try? await Task.sleep(for: interval)
        }
        return false
    }

    static func attempt(_ readiness: AgentConfig.Readiness, directory: String, environment: [String: String], log: InstanceLog) async -> Bool {
        switch readiness {
        case .command(let argv):
            let command = argv.map { $0.replacingOccurrences(of: "{release}", with: directory) }
            return await withCheckedContinuation { continuation in
                do {
                    // A probe is batond's own check, not an instance: nothing to record first.
                    let process = try Processes.spawn(argv: command, environment: environment, log: log,
                                                      directory: directory, credentials: nil).release()
                    process.watch { status in
                        process.reap()
                        continuation.resume(returning: status == .exited(0))
                    }
                } catch {
                    continuation.resume(returning: false)
                }
            }
        case .http(let url):
            return await withCheckedContinuation { continuation in
                let thread = Thread { continuation.resume(returning: httpGet(url)) }
                thread.start()
            }
        }
    }

    /// A plain HTTP/1.0 GET with a 2 s timeout: true on a 2xx or 3xx status.
    static func httpGet(_ url: String) -> Bool {
        guard url.hasPrefix("http://") else { return false }
        let rest = url.dropFirst("http://".count)
        let authority = rest.split(separator: "/", maxSplits: 1).first.map(String.init) ?? ""
        let path = rest.dropFirst(authority.count).isEmpty ? "/" : String(rest.dropFirst(authority.count))
        let parts = authority.split(separator: ":")
        let host = parts.first.map(String.init) ?? "127.0.0.1"
        let port = parts.count > 1 ? String(parts[1]) : "80"
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, port, &hints, &result) == 0, let info = result else { return false }
        defer { freeaddrinfo(result) }
        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else { return false }
        let request = Array("GET \(path) HTTP/1.0\r\nHost: \(authority)\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else { return false }
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = recv(fd, &buffer, buffer.count, 0)
        guard count > 12 else { return false }
        let line = String(decoding: buffer[0..<count], as: UTF8.self)
        let fields = line.split(separator: " ")
        guard fields.count >= 2, let status = Int(fields[1]) else { return false }
        return (200..<400).contains(status)
    }
}
