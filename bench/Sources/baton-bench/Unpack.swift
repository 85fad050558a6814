// baton-bench unpack --size-mb N --dir DIR
//
// Builds a release of about N MB (N files of 1 MB, each half random and half text, and
// 10·N small files of 1 to 8 KB in 10 directories), packs it with `tar -czf`, then
// times, three times each on the same disk, and prints the medians:
//   - Unpacker.unpack (libarchive, checks, fsync of every file and directory);
//   - `tar -xzf` alone (nothing fsync'd);
//   - `tar -xzf` followed by `sync -f` on the target's filesystem.
import BatonReleases
import Foundation

func unpackBench() -> Never {
    let megabytes = Int(option("--size-mb", default: "100")) ?? 100
    let base = option("--dir", default: NSTemporaryDirectory() + "/baton-bench-unpack-\(getpid())")
    let source = base + "/src", archive = base + "/release.tar.gz"
    do {
        try makeRelease(source, megabytes: megabytes)
        try run(["tar", "-C", source, "-czf", archive, "."])
    } catch {
        FileHandle.standardError.write(Data("baton-bench: \(error)\n".utf8))
        exit(74)
    }
    Unpacker.removeTree(source)
    let archiveBytes = (try? FileManager.default.attributesOfItem(atPath: archive)[.size] as? Int) ?? 0

    var unpacked = Unpacked(bytes: 0, files: 0, declared: nil)
    var times: [String: [Double]] = [:]
    for round in 0..<3 {
        let target = base + "/out-\(round)"
        func fresh() {
            Unpacker.removeTree(target)
            try? FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
            // What earlier rounds left dirty is not this round's to write back.
            try? run(["sync", "-f", base])
        }
        fresh()
        let limits = UnpackLimits(maxBytes: Int64(megabytes + 64) << 20, maxFiles: 1_000_000)
        times["unpacker", default: []].append(timed {
            do {
                unpacked = try Unpacker.unpack(archive: archive, format: .tarGzip, into: target, limits: limits)
            } catch {
                FileHandle.standardError.write(Data("baton-bench: unpack: \(error)\n".utf8))
                exit(70)
            }
        })
        fresh()
        let tar = timed { try? run(["tar", "-C", target, "-xzf", archive]) }
        let sync = timed { try? run(["sync", "-f", target]) }
        times["tar", default: []].append(tar)
        times["tar+sync", default: []].append(tar + sync)
        Unpacker.removeTree(target)
    }
    Unpacker.removeTree(base)

    func median(_ name: String) -> Double { times[name]!.sorted()[1] }
    let megabytesOut = Double(unpacked.bytes) / 1_048_576
    print("archive=\(archiveBytes) bytes unpacked=\(unpacked.bytes) bytes files=\(unpacked.files) (median of 3)")
    for name in ["unpacker", "tar", "tar+sync"] {
        let seconds = median(name)
        print("\(name)_ms=\(Int(seconds * 1000)) \(name)_mb_per_s=\(String(format: "%.1f", megabytesOut / seconds))"
              + " all_ms=\(times[name]!.map { Int($0 * 1000) })")
    }
    exit(0)
}

private func timed(_ body: () -> Void) -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    body()
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
}

/// The files of a realistic release: large ones that compress by half, many small ones.
private func makeRelease(_ root: String, megabytes: Int) throws {
    var state: UInt64 = 0x9e37_79b9_7f4a_7c15
    func random(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var index = 0
        while index < count {
            // SplitMix64: fast, and enough to defeat gzip.
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            z ^= z >> 31
            for shift in stride(from: 0, to: 64, by: 8) where index < count {
                bytes[index] = UInt8(truncatingIfNeeded: z >> UInt64(shift))
                index += 1
            }
        }
        return bytes
    }
    let text = Array(String(repeating: "baton hands over a long-running agent without dropping a request. ", count: 8200).utf8)
    try FileManager.default.createDirectory(atPath: root + "/bin", withIntermediateDirectories: true)
    for index in 0..<megabytes {
        let content = random(512 * 1024) + text.prefix(512 * 1024)
        guard FileManager.default.createFile(atPath: root + "/bin/large-\(index)", contents: Data(content),
                                             attributes: [.posixPermissions: index % 10 == 0 ? 0o755 : 0o644]) else {
            throw BenchFailure("cannot write \(root)/bin/large-\(index)")
        }
    }
    for directory in 0..<10 {
        let path = root + "/lib/part-\(directory)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        for index in 0..<megabytes {
            let size = 1024 * (1 + (index * 7 + directory) % 8)
            guard FileManager.default.createFile(atPath: path + "/small-\(index)", contents: Data(random(size / 2) + text.prefix(size / 2))) else {
                throw BenchFailure("cannot write \(path)/small-\(index)")
            }
        }
    }
}

/// A command found on PATH, run to its end (`spawnAndWait`); throws when it fails.
private func run(_ arguments: [String]) throws {
    let status = try spawnAndWait(["/usr/bin/env"] + arguments)
    guard status == 0 else { throw BenchFailure("\(arguments.joined(separator: " ")): exit status \(status)") }
}
