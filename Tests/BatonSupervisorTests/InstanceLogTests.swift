@testable import BatonSupervisor
import CBatonSpawn
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

    /// A fresh directory on the file system at `base`, removed by the caller.
    static func scratch(on base: String) -> String? {
        var template = Array("\(base)/baton-log-XXXXXX".utf8CString)
        return template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }.map { String(cString: $0) }
    }

    /// Whether the file system under `base` cuts the front of a file (ext4, XFS).
    static func collapses(_ base: String) -> Bool {
        guard let directory = scratch(on: base) else { return false }
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let fd = open(directory + "/probe", O_RDWR | O_CREAT, 0o600)
        defer { close(fd) }
        return ftruncate(fd, 1 << 16) == 0 && baton_collapse_front(fd, 1 << 15) == 0
    }

    static let temporary = NSTemporaryDirectory().hasSuffix("/") ? String(NSTemporaryDirectory().dropLast()) : NSTemporaryDirectory()

    /// Both ways: where the file system collapses (the temporary directory here, ext4)
    /// and where it cannot (tmpfs, copytruncate).
    @Test(arguments: [temporary, "/dev/shm"])
    func rotationKeepsEveryByteAndTheWriterGoesOnAtTheNewEnd(base: String) throws {
        guard let directory = Self.scratch(on: base) else { return }
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let log = InstanceLog(path: directory + "/a.log", capBytes: 4096)
        let writer = try log.openForAppending()
        defer { close(writer) }
        var written = ""
        func append(_ text: String) {
            _ = text.withCString { Glibc.write(writer, $0, strlen($0)) }
            written += text
        }
        append(String(repeating: "x", count: 4096))
        #expect(!log.rotateIfNeeded(), "at the cap, not past it")
        append("y\n")
        #expect(log.rotateIfNeeded())
        append("after\n")
        let previous = try #require(contents(log.previousPath)), current = try #require(contents(log.path))
        #expect(previous + current == written, "nothing lost, nothing twice")
        #expect(previous.count >= 4096 && current.count < 4096 + 6)
        #expect(current.hasSuffix("after\n") && !current.contains("\0"), "no hole where the old end was")
        #expect(log.lastOutput.hasSuffix("xy\nafter\n"))
        // The next rotation replaces the previous file.
        append(String(repeating: "z", count: 5000))
        #expect(log.rotateIfNeeded())
        #expect(try #require(contents(log.previousPath)).hasPrefix(current))
        #expect(!FileManager.default.fileExists(atPath: log.previousPath + ".tmp"))
    }

    /// A writer as fast as awk can print, rotated every 10 ms at a 256 KiB cap: every
    /// line is in one of the rotated files or the log, in order, once.
    @Test(.enabled(if: collapses(temporary), "the temporary directory's file system cannot collapse a range (tmpfs, btrfs)"))
    func aFastWriterLosesNothingWhereTheFileSystemCollapses() throws {
        let state = TemporaryDirectory("log")
        let log = InstanceLog(path: state.file("fast.log"), capBytes: 256 << 10)
        let lines = 1_000_000
        let writer = try Processes.spawn(argv: ["/usr/bin/awk", "BEGIN { for (i = 1; i <= \(lines); i++) print i }"],
                                         environment: [:], log: log, directory: nil, credentials: nil).release()
        var rotated: [UInt8] = []
        var rotations = 0
        var status: Int32 = 0
        while waitpid(writer.pid, &status, WNOHANG) == 0 {
            if log.rotateIfNeeded() {
                rotations += 1
                rotated += try #require(FileManager.default.contents(atPath: log.previousPath))
            }
            usleep(10_000)
        }
        rotated += try #require(FileManager.default.contents(atPath: log.path))
        let numbers = String(decoding: rotated, as: UTF8.self).split(separator: "\n").map { Int($0) }
        #expect(rotations >= 5, "rotated \(rotations) times")
        #expect(numbers.count == lines)
        let wrong = numbers.enumerated().first { $0.element != $0.offset + 1 }
        #expect(wrong == nil, "line \(wrong.map { $0.offset + 1 } ?? 0) was lost, doubled or cut")
    }

    @Test func aChildsStdoutAndStderrAreTheFileItself() throws {
        let state = TemporaryDirectory("log")
        let log = InstanceLog(path: state.file("child.log"), capBytes: 1 << 20)
        let child = try Processes.spawn(argv: ["/bin/sh", "-c", "echo out; echo err >&2; exec sleep 300"], environment: [:],
                                        log: log, directory: nil, credentials: nil).release()
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
        #expect(try #require(contents(logs[0].path)).count < 4096)
        #expect(contents(logs[1].path)?.count == 5000, "a forgotten log is left alone")
    }

}
