// baton-bench download --mb M --runs R --dir DIR
//
// Serves an M MB file from the tests' loopback server (StaticHTTPServer) and downloads it
// R times with batond's Download.fetch and R times with `curl -o`, both into DIR (the same
// disk), no fsync for either. Prints each run and the medians in MB/s.
import BatonReleases
import BatonTestSupport
import Foundation
import Glibc

func benchDownload() throws {
    let megabytes = Int(option("--mb", default: "100")) ?? 100
    let runs = Int(option("--runs", default: "3")) ?? 3
    let directory = option("--dir", default: NSTemporaryDirectory() + "/baton-bench-download-\(getpid())")
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let source = directory + "/source.bin"
    let size = megabytes << 20
    var block = [UInt8](repeating: 0, count: 1 << 20)
    for index in block.indices { block[index] = UInt8(truncatingIfNeeded: (index &* 2_654_435_761) >> 13) }
    guard FileManager.default.createFile(atPath: source, contents: nil) else { throw BenchFailure("cannot create \(source)") }
    let sourceHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: source))
    for _ in 0..<megabytes { sourceHandle.write(Data(block)) }
    try sourceHandle.close()

    let server = try StaticHTTPServer()
    defer { server.close() }
    server.route("/source.bin", .file(source))
    let url = server.url("/source.bin")
    let limits = DownloadLimits(maxBytes: Int64(size), deadline: .seconds(600))

    func mbPerSecond(_ seconds: Double) -> Double { Double(size) / 1_048_576 / seconds }
    func timed(_ work: () throws -> Void) rethrows -> Double {
        let started = ContinuousClock.now
        try work()
        let elapsed = ContinuousClock.now - started
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    var ours: [Double] = [], theirs: [Double] = []
    for run in 1...runs {
        let target = directory + "/fetched.bin"
        let fd = open(target, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw BenchFailure("open \(target): errno \(errno)") }
        let seconds = try timed {
            let result = try Download.fetch(url: url, limits: limits, write: { bytes in
                var offset = 0
                while offset < bytes.count {
                    let written = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                    guard written > 0 else { throw BenchFailure("write: errno \(errno)") }
                    offset += written
                }
            })
            guard result.bytes == Int64(size) else { throw BenchFailure("fetched \(result.bytes) bytes of \(size)") }
        }
        close(fd)
        ours.append(mbPerSecond(seconds))
        unlink(target)

        let curlTarget = directory + "/curl.bin"
        let curlSeconds = try timed {
            let status = try spawnAndWait(["/usr/bin/curl", "-s", "-f", "-o", curlTarget, url])
            guard status == 0 else { throw BenchFailure("curl exited \(status)") }
        }
        theirs.append(mbPerSecond(curlSeconds))
        unlink(curlTarget)
        print("run=\(run) fetch_mb_per_s=\(String(format: "%.0f", ours.last!)) curl_mb_per_s=\(String(format: "%.0f", theirs.last!))")
    }
    unlink(source)
    rmdir(directory)
    func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
    print("size_mb=\(megabytes) runs=\(runs) fetch_median_mb_per_s=\(String(format: "%.0f", median(ours)))"
          + " curl_median_mb_per_s=\(String(format: "%.0f", median(theirs)))")
}

struct BenchFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// posix_spawn and waitpid: the exit status of a command, its output left alone.
func spawnAndWait(_ arguments: [String]) throws -> Int32 {
    var pid: pid_t = 0
    var argv = arguments.map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    let spawned = posix_spawn(&pid, arguments[0], nil, nil, &argv, environ)
    guard spawned == 0 else { throw BenchFailure("posix_spawn \(arguments[0]): errno \(spawned)") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}
