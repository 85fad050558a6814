import Foundation
import Glibc

/// A temporary directory removed when the value is released.
public final class TemporaryDirectory: @unchecked Sendable {
    // @unchecked: the path is immutable after init; deinit only removes the tree.
    public let path: String

    public init(_ prefix: String = "baton-test") {
        let base = NSTemporaryDirectory().hasSuffix("/") ? String(NSTemporaryDirectory().dropLast()) : NSTemporaryDirectory()
        var template = Array("\(base)/\(prefix)-XXXXXX".utf8CString)
        let created = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(created != nil, "mkdtemp failed")
        path = String(cString: created!)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    public func file(_ name: String) -> String { path + "/" + name }
}

/// Where the package's built products are: next to the running test bundle.
public enum Products {
    public static var directory: String {
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return (executable as NSString).deletingLastPathComponent
    }

    public static func path(_ name: String) -> String { directory + "/" + name }

    /// The package root (for api/, config/, systemd/).
    public static var packageRoot: String {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }
}

/// Whether a command is on PATH (tests that need promtool or systemd-analyze skip without).
public func which(_ command: String) -> String? {
    for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let candidate = "\(directory)/\(command)"
        if access(candidate, X_OK) == 0 { return candidate }
    }
    return nil
}

/// Runs a command to completion, capturing its output.
public func run(_ arguments: [String], environment: [String: String]? = nil) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: arguments[0])
    process.arguments = Array(arguments.dropFirst())
    if let environment { process.environment = environment }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: output, as: UTF8.self))
}

/// A value shared between a test and the threads it starts.
public final class Locked<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched under `lock`.
    private let lock = NSLock()
    private var value: Value
    public init(_ value: Value) { self.value = value }
    public func get() -> Value { lock.lock(); defer { lock.unlock() }; return value }
    public func set(_ newValue: Value) { lock.lock(); value = newValue; lock.unlock() }
    /// Reads and changes the value in one step (`x.set(x.get() + 1)` from two threads
    /// loses one of them).
    @discardableResult
    public func update<Result>(_ change: (inout Value) -> Result) -> Result {
        lock.lock(); defer { lock.unlock() }
        return change(&value)
    }
}

/// Work on a plain thread (blocking socket calls must not occupy Swift's small
/// cooperative pool, which the code under test may need).
public final class Background<Value: Sendable>: @unchecked Sendable {
    // @unchecked: `result` is written once before `done` is signalled and read after.
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<Value, any Error>?

    init(_ work: @escaping @Sendable () throws -> Value) {
        Thread { [self] in
            result = Result { try work() }
            done.signal()
        }.start()
    }

    public func wait(timeout: Double = 60) throws -> Value {
        guard done.wait(timeout: .now() + timeout) == .success else { throw TestFailure("background work timed out") }
        return try result!.get()
    }
}

public func inBackground<Value: Sendable>(_ work: @escaping @Sendable () throws -> Value) -> Background<Value> {
    Background(work)
}

/// Polls a condition that has no signal to wait on (an external process's state).
public func waitUntil(timeout: Double, _ condition: () -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while !condition() {
        guard Date() < deadline else { throw TestFailure("condition not met within \(timeout)s") }
        usleep(20_000)
    }
}

/// A port that was free a moment ago (for tools that must be told a port up front).
public func freePort() throws -> Int { try freePorts(1)[0] }

/// `count` distinct TCP ports the kernel calls free now (bound to port 0, then released).
public func freePorts(_ count: Int) throws -> [Int] {
    var held: [Int32] = []
    defer { held.forEach { close($0) } }
    var ports: [Int] = []
    for _ in 0..<count {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        held.append(fd)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard ok else { throw TestFailure("no free port: \(String(cString: strerror(errno)))") }
        ports.append(Int(UInt16(bigEndian: address.sin_port)))
    }
    return ports
}
