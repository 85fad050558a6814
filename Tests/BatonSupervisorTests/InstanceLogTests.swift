@testable import BatonSupervisor
import BatonTestSupport
import Foundation
import Glibc
import Testing

/// The instance log file: the child's stdout and stderr themselves, rotated in place,
/// its tail read back from disk.
@Suite("instance log file")
struct InstanceLogTests {
    func write(_ text: String, to path: String) throws {
        try text.write(toFile: path, atomically: false, encoding: .utf8)
    }

    func contents(_ path: String) -> String? {
        try? String(contentsOfFile: path, encoding: .utf8)
    }

    @Test func theTailIsTheFilesEndAndThenThePreviousFilesEnd() throws {
        let state = TemporaryDirectory("log")
        let log = InstanceLog(path: state.file("a.log"), capBytes: 1 << 20)
        #expect(log.lastOutput == "", "no file yet")
        try write(String(repeating: "a", count: 3000), to: log.previousPath)
        try write(String(repeating: "b", count: 2000), to: log.path)
        #expect(log.lastOutput == String(repeating: "a", count: 2096) + String(repeating: "b", count: 2000))
        try write(String(repeating: "c", count: 5000), to: log.path)
        #expect(log.lastOutput == String(repeating: "c", count: 4096))
        // A cut inside a UTF-8 sequence starts at the next whole character.
        try write("é" + String(repeating: "d", count: 4095), to: log.path)
        #expect(log.lastOutput == String(repeating: "d", count: 4095))
    }

    @Test func rotationCopiesAndTruncatesAndTheWriterGoesOnAtTheNewEnd() throws {
        let state = TemporaryDirectory("log")
        let log = InstanceLog(path: state.file("a.log"), capBytes: 4096)
        let writer = try log.openForAppending()
        defer { close(writer) }
        func append(_ text: String) { _ = text.withCString { Glibc.write(writer, $0, strlen($0)) } }
        append(String(repeating: "x", count: 4096))
        #expect(!log.rotateIfNeeded(), "at the cap, not past it")
        append("y\n")
        #expect(log.rotateIfNeeded())
        #expect(contents(log.previousPath) == String(repeating: "x", count: 4096) + "y\n")
        #expect(contents(log.path) == "")
        append("after\n")
        #expect(contents(log.path) == "after\n", "no hole where the old end was")
        #expect(log.lastOutput.hasSuffix("xy\nafter\n"))
        // The next rotation replaces the previous file.
        append(String(repeating: "z", count: 5000))
        #expect(log.rotateIfNeeded())
        #expect(contents(log.previousPath) == "after\n" + String(repeating: "z", count: 5000))
        #expect(!FileManager.default.fileExists(atPath: log.previousPath + ".tmp"))
    }

    @Test func aChildsStdoutAndStderrAreTheFileItself() throws {
        let state = TemporaryDirectory("log")
        let log = InstanceLog(path: state.file("child.log"), capBytes: 1 << 20)
        let child = try Processes.spawn(argv: ["/bin/sh", "-c", "echo out; echo err >&2; exec sleep 300"], environment: [:],
                                        log: log, directory: nil, credentials: nil)
        defer {
            child.send(SIGKILL)
            var status: Int32 = 0
            waitpid(child.pid, &status, 0)
        }
        try waitUntil(timeout: 10) { contents(log.path) == "out\nerr\n" }
        for fd in [1, 2] {
            let target = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(child.pid)/fd/\(fd)")
            #expect(target == log.path, "fd \(fd) is \(target), not the log file")
        }
        var info = stat()
        #expect(stat(log.path, &info) == 0 && info.st_mode & 0o777 == 0o640)
    }

    @Test func oneRotationCheckCoversEveryWatchedLog() throws {
        let state = TemporaryDirectory("log")
        let rotation = LogRotation(interval: .seconds(1))
        let logs = ["a", "b"].map { InstanceLog(path: state.file("\($0).log"), capBytes: 4096) }
        for log in logs { try write(String(repeating: "x", count: 5000), to: log.path) }
        rotation.watch("a", logs[0])
        rotation.watch("b", logs[1])
        rotation.forget("b")
        rotation.rotateAll()
        #expect(contents(logs[0].path) == "")
        #expect(contents(logs[1].path)?.count == 5000, "a forgotten log is left alone")
    }

    func waitUntil(timeout: Double, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            guard Date() < deadline else { throw TestFailure("condition not met within \(timeout) s") }
            usleep(10_000)
        }
    }
}
