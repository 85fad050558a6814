import Foundation
import Glibc

/// Disk faults for a real batond: Tests/Faults/faultfs.c, compiled once per test run with
/// the toolchain's C compiler and loaded into batond with LD_PRELOAD, fails write, sync,
/// rename or symlink calls on chosen paths with a chosen errno, as a failing disk does, or
/// stalls them, as a hung one does.
/// The faults are changed while batond runs (`set`), and every injected failure is
/// counted (`hits`), so a test waits for a fault to be met instead of sleeping.
public final class DiskFaults {
    public enum Call: String, Sendable { case write, sync, rename, symlink }

    public struct Fault: Sendable, CustomStringConvertible {
        public var call: Call
        /// The errno the call fails with, or `stall`.
        public var errno: Int32
        /// The absolute path (or its start) the fault applies to.
        public var path: String
        /// `path` only, not what is under it.
        public var exact: Bool

        /// The call waits, as on a hung disk, while the fault is in force; then goes through.
        public static let stall: Int32 = -1

        public init(_ call: Call, _ errno: Int32, _ path: String, exact: Bool = false) {
            self.call = call
            self.errno = errno
            self.path = path
            self.exact = exact
        }

        public var description: String {
            (errno == Self.stall ? "\(call) stalls" : "\(call) fails with \(String(cString: strerror(errno)))")
                + (exact ? " on \(path)" : " under \(path)")
        }
    }

    /// The C compiler the shim is built with: the system's, else the toolchain's.
    public static let compiler = which("cc") ?? which("clang")
    public static var isAvailable: Bool { compiler != nil }

    /// The compiled shim, beside the build's products (compiled once per test run); a
    /// shim that does not compile fails the tests that need it.
    public static let library: Result<String, TestFailure> = {
        guard let compiler else { return .failure(TestFailure("no C compiler (cc, clang)")) }
        let output = Products.path("faultfs.so")
        let source = Products.packageRoot + "/Tests/Faults/faultfs.c"
        guard let (status, text) = try? run([compiler, "-shared", "-fPIC", "-O1", "-Wall", "-o", output, source, "-ldl", "-lpthread"])
        else { return .failure(TestFailure("\(compiler) did not run")) }
        guard status == 0 else { return .failure(TestFailure("compiling \(source) failed: \(text)")) }
        return .success(output)
    }()

    public let control: String

    /// Faults kept in `directory` (a test's temporary directory).
    public init(directory: TemporaryDirectory) {
        control = directory.file("faults")
    }

    /// The environment batond needs to meet these faults.
    public func environment() throws -> [String: String] {
        ["LD_PRELOAD": try Self.library.get(), "BATON_FAULTS": control]
    }

    /// Replaces the faults in force; none clears them.
    public func set(_ faults: [Fault]) throws {
        let text = faults.map { "\($0.call.rawValue) \($0.errno) \($0.path)\($0.exact ? "$" : "")\n" }.joined()
        // Written whole under another name, then renamed: the shim never reads half a file.
        try text.write(toFile: control, atomically: true, encoding: .utf8)
    }

    public func clear() throws { try set([]) }

    /// The failures injected so far: `call errno path` per line.
    public var hits: [String] {
        ((try? String(contentsOfFile: control + ".hits", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }
}
