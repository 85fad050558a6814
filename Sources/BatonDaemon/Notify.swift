import Foundation
import Glibc

/// systemd's readiness protocol: datagrams to `$NOTIFY_SOCKET` (READY=1, STATUS=…,
/// STOPPING=1, WATCHDOG=1). A no-op when the variable is unset.
public struct SystemdNotifier: Sendable {
    let path: String?
    /// Half of `$WATCHDOG_USEC` (when it is meant for this process): how often to ping.
    public let watchdogInterval: Duration?

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        path = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
        if let usec = environment["WATCHDOG_USEC"].flatMap(UInt64.init), usec > 0,
           environment["WATCHDOG_PID"].flatMap(Int32.init).map({ $0 == getpid() }) ?? true {
            watchdogInterval = .microseconds(Int64(usec / 2))
        } else {
            watchdogInterval = nil
        }
    }

    public var isEnabled: Bool { path != nil }

    /// Puts `fd` in systemd's file descriptor store under `name` (`FDSTORE=1`): systemd
    /// keeps it open while batond restarts and passes it back with `LISTEN_FDS` and
    /// `LISTEN_FDNAMES`. Needs `FileDescriptorStoreMax=` in the unit.
    @discardableResult
    public func store(_ fd: Int32, name: String) -> Bool {
        send("FDSTORE=1\nFDNAME=\(name)", descriptors: [fd])
    }

    /// Sends `message` (newline-separated assignments), with `descriptors` attached
    /// (SCM_RIGHTS). Failures are ignored: the service manager going away must not take
    /// batond down.
    @discardableResult
    public func send(_ message: String, descriptors: [Int32] = []) -> Bool {
        guard let path else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }  // abstract namespace
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        var payload = Array(message.utf8)
        let controlLength = descriptors.isEmpty ? 0 : cmsgSpace(descriptors.count * MemoryLayout<Int32>.size)
        var control = [UInt8](repeating: 0, count: controlLength)
        let sent = withUnsafeMutablePointer(to: &address) { pointer in
            payload.withUnsafeMutableBytes { bytes in
                control.withUnsafeMutableBytes { controlBytes in
                    var vector = iovec(iov_base: bytes.baseAddress, iov_len: bytes.count)
                    return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                        var header = msghdr()
                        header.msg_name = UnsafeMutableRawPointer(pointer)
                        header.msg_namelen = length
                        header.msg_iov = vectorPointer
                        header.msg_iovlen = 1
                        if !descriptors.isEmpty {
                            header.msg_control = controlBytes.baseAddress
                            header.msg_controllen = controlBytes.count
                            // One cmsghdr: level SOL_SOCKET, type SCM_RIGHTS, the descriptors after it.
                            let headerSize = cmsgAlign(MemoryLayout<cmsghdr>.size)
                            var cmsg = cmsghdr()
                            cmsg.cmsg_len = headerSize + descriptors.count * MemoryLayout<Int32>.size
                            cmsg.cmsg_level = SOL_SOCKET
                            cmsg.cmsg_type = Int32(SCM_RIGHTS)
                            withUnsafeBytes(of: cmsg) { controlBytes.copyBytes(from: $0) }
                            descriptors.withUnsafeBytes { fds in
                                UnsafeMutableRawBufferPointer(rebasing: controlBytes[headerSize...]).copyBytes(from: fds)
                            }
                        }
                        return sendmsg(fd, &header, Int32(MSG_NOSIGNAL))
                    }
                }
            }
        }
        return sent == payload.count
    }
}

private func cmsgAlign(_ length: Int) -> Int {
    (length + MemoryLayout<Int>.size - 1) & ~(MemoryLayout<Int>.size - 1)
}

/// CMSG_SPACE: a control message of `length` data bytes with its header, aligned.
private func cmsgSpace(_ length: Int) -> Int {
    cmsgAlign(MemoryLayout<cmsghdr>.size) + cmsgAlign(length)
}
