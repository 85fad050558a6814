import BatonCore
import BatonReleases
import BatonTestSupport
import Foundation
import Glibc
import Testing

/// Real archives, built here with GNU tar and Python's tarfile (which writes any entry,
/// hostile ones included), unpacked into an empty directory beside an `outside` one.
@Suite("Unpacker")
struct UnpackerTests {
    static let python = "/usr/bin/python3"
    static let tools = FileManager.default.isExecutableFile(atPath: python)
        && ["/usr/bin/tar", "/usr/bin/gzip", "/usr/bin/xz", "/usr/bin/zstd"].allSatisfy(FileManager.default.isExecutableFile(atPath:))
    static let limits = UnpackLimits(maxBytes: 100 << 20, maxFiles: 1000)

    // MARK: - Format

    @Test(.enabled(if: tools, "needs tar, gzip, xz, zstd")) func formatIsToldByContent() throws {
        let work = TemporaryDirectory("format")
        try shell("""
            cd '\(work.path)' && mkdir src && echo hello > src/a && tar -C src -cf plain.tar . \
            && gzip -c plain.tar > a.tgz.bin && xz -c plain.tar > a.txz.bin && zstd -q -c plain.tar > a.tzst.bin \
            && printf '#!/bin/sh\\necho hi\\n' > script && head -c 4096 /dev/urandom > random \
            && printf 'us' > short && : > empty && cp plain.tar misnamed.tar.gz
            """)
        #expect(try Unpacker.format(ofFileAt: work.file("a.tgz.bin")) == .tarGzip)
        #expect(try Unpacker.format(ofFileAt: work.file("a.txz.bin")) == .tarXz)
        #expect(try Unpacker.format(ofFileAt: work.file("a.tzst.bin")) == .tarZstd)
        #expect(try Unpacker.format(ofFileAt: work.file("plain.tar")) == .tar)
        #expect(try Unpacker.format(ofFileAt: work.file("misnamed.tar.gz")) == .tar)
        #expect(try Unpacker.format(ofFileAt: "/proc/self/exe") == .executable)
        #expect(try Unpacker.format(ofFileAt: work.file("script")) == .executable)
        #expect(try Unpacker.format(ofFileAt: work.file("random")) == nil)
        #expect(try Unpacker.format(ofFileAt: work.file("short")) == nil)
        #expect(try Unpacker.format(ofFileAt: work.file("empty")) == nil)
        #expect(throws: UnpackError.self) { try Unpacker.format(ofFileAt: work.file("missing")) }
        // A tar whose first entry is named like a script is a tar.
        #expect(Unpacker.format(of: Array("#!x".utf8) + [UInt8](repeating: 0, count: 254) + Array("ustar".utf8)) == .tar)
    }

    // MARK: - Good archives

    @Test(.enabled(if: tools, "needs tar, gzip, xz, zstd"), arguments: [
        ("tar.gz", "-z", ReleaseManifest.Format.tarGzip), ("tar.xz", "-J", .tarXz), ("tar.zst", "--zstd", .tarZstd), ("tar", "", .tar),
    ])
    func aGoodArchiveLandsWithItsModesLinksAndManifest(_ suffix: String, _ flag: String, _ format: ReleaseManifest.Format) throws {
        let box = ArchiveBox()
        let manifest = #"{"irreversible": true, "migration": ["{release}/bin/app", "migrate"]}"#
        try shell("""
            cd '\(box.build)' && mkdir -p src/bin src/lib/deep/er \
            && printf '#!/bin/sh\\necho hi\\n' > src/bin/app && chmod 4755 src/bin/app && ln src/bin/app src/bin/app-hard \
            && printf data > src/lib/data.txt && chmod 640 src/lib/data.txt && ln -s ../lib/data.txt src/bin/data \
            && head -c 300000 /dev/urandom > src/lib/deep/er/blob && printf 'é' > 'src/lib/données.txt' \
            && chmod 1777 src/lib/deep && printf '%s' '\(manifest)' > src/release.json \
            && tar -C src \(flag) -cf release.\(suffix) .
            """)
        let archive = box.build + "/release.\(suffix)"
        #expect(try Unpacker.format(ofFileAt: archive) == format)

        let unpacked = try Unpacker.unpack(archive: archive, format: format, into: box.release, limits: Self.limits)

        let release = box.release
        #expect(unpacked.declared == ReleaseManifest.Declared(irreversible: true, migration: ["{release}/bin/app", "migrate"]))
        // bin, lib, lib/deep, lib/deep/er, two names of app, data.txt, data, blob, données.txt, release.json
        #expect(unpacked.files == 11)
        #expect(unpacked.bytes == Int64(18 + 4 + 300_000 + 2 + manifest.utf8.count))
        let app = try lstatOf(release + "/bin/app")
        #expect(app.st_mode & 0o7777 == 0o755, "exec bits kept, setuid cleared")
        #expect(access(release + "/bin/app", X_OK) == 0)
        #expect(try lstatOf(release + "/bin/app-hard").st_ino == app.st_ino)
        #expect(try lstatOf(release + "/lib/data.txt").st_mode & 0o7777 == 0o640)
        #expect(try lstatOf(release + "/lib/deep").st_mode & 0o7777 == 0o777, "sticky bit cleared")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: release + "/bin/data") == "../lib/data.txt")
        #expect(try String(contentsOfFile: release + "/bin/data", encoding: .utf8) == "data")
        #expect(FileManager.default.contents(atPath: release + "/lib/deep/er/blob")
                == FileManager.default.contents(atPath: box.build + "/src/lib/deep/er/blob"))
        #expect(try String(contentsOfFile: release + "/lib/données.txt", encoding: .utf8) == "é")
        #expect(try String(contentsOfFile: release + "/release.json", encoding: .utf8) == manifest, "left in place")
        #expect(try lstatOf(release).st_mode & 0o777 == 0o700, "the top directory keeps its own mode")
        #expect(box.outsideIsUntouched())
    }

    @Test(.enabled(if: tools, "needs python3")) func entriesWithoutTheirParentsAndAParentListedLaterAreFine() throws {
        let box = ArchiveBox()
        let unpacked = try box.unpack("""
            f("a/b/c", b"1")
            d("a/b")
            d("a")
            sym("a/up", "../a/b/c")
            """)
        #expect(unpacked.files == 4)
        #expect(unpacked.declared == nil)
        #expect(try String(contentsOfFile: box.release + "/a/up", encoding: .utf8) == "1")
    }

    @Test(.enabled(if: tools, "needs python3"), arguments: ["GNU_FORMAT", "PAX_FORMAT", "USTAR_FORMAT"])
    func nonASCIIAndLongNamesLandAsTheyAreNamed(_ format: String) throws {
        let box = ArchiveBox()
        let long = String(repeating: "d", count: format == "USTAR_FORMAT" ? 60 : 150)
        let unpacked = try box.unpack(#"f("données/\#(long)/é.txt", b"1")"#, format: format)
        #expect(unpacked.files == 3)
        #expect(try String(contentsOfFile: box.release + "/données/\(long)/é.txt", encoding: .utf8) == "1")
    }

    @Test(.enabled(if: tools, "needs python3")) func aMalformedReleaseJSONIsRefusedByName() throws {
        let box = ArchiveBox()
        let error = try #require(throws: UnpackError.self) {
            try box.unpack(#"f("release.json", b'{"irreversible": "yes"}')"#)
        }
        guard case .manifest(let message) = error else { Issue.record("\(error)"); return }
        #expect(message.hasPrefix("does not parse"))
        #expect(error.description.hasPrefix("release.json in the archive: does not parse"))
        // Only the top-level one is the release's.
        let other = ArchiveBox()
        #expect(try other.unpack(#"f("lib/release.json", b"not json")"#).declared == nil)
    }

    // MARK: - HostileArchive archives

    /// One hostile archive each: the exact refusal, and nothing written outside the release.
    @Test(.enabled(if: tools, "needs python3"), arguments: HostileArchive.all)
    func aHostileArchiveIsRefused(_ hostile: HostileArchive) throws {
        let box = ArchiveBox()
        let entries = hostile.entries.replacingOccurrences(of: "OUTSIDE", with: box.outside)
        let error = try #require(throws: UnpackError.self) {
            try box.unpack(entries, limits: hostile.limits)
        }
        #expect(error == hostile.expected(box), "\(error)")
        #expect(box.outsideIsUntouched())
        for path in hostile.absent(box) {
            #expect(!exists(path), "\(path) was created")
        }
    }

    @Test(.enabled(if: tools, "needs python3")) func aHardlinkToAFileOutsideLeavesItsLinkCountAlone() throws {
        let box = ArchiveBox()
        let error = try #require(throws: UnpackError.self) {
            try box.unpack(#"hard("pw", "/etc/passwd")"# + "\n" + #"hard("sec", "../../outside/secret")"#)
        }
        #expect(error == .hardlinkOut("pw", "/etc/passwd"))
        #expect(try lstatOf("/etc/passwd").st_nlink == 1)
        #expect(try lstatOf(box.outside + "/secret").st_nlink == 1)

        let second = ArchiveBox()
        #expect(throws: UnpackError.hardlinkOut("sec", "../../outside/secret")) {
            try second.unpack(#"hard("sec", "../../outside/secret")"#)
        }
        #expect(try lstatOf(second.outside + "/secret").st_nlink == 1)
    }

    @Test(.enabled(if: tools, "needs tar")) func aSparseTenGigabyteFileIsRefusedAtOnceByItsDeclaredSize() throws {
        let box = ArchiveBox()
        try shell("cd '\(box.build)' && mkdir bomb && truncate -s 10G bomb/big && tar -C bomb -S -czf bomb.tar.gz big && rm bomb/big")
        let started = monotonicNanoseconds()
        #expect(throws: UnpackError.tooLarge("big", 10 << 30, 100 << 20)) {
            try Unpacker.unpack(archive: box.build + "/bomb.tar.gz", format: .tarGzip, into: box.release, limits: Self.limits)
        }
        let seconds = Double(monotonicNanoseconds() - started) / 1e9
        #expect(seconds < 2, "took \(seconds) s")
        #expect(!exists(box.release + "/big"))
        #expect(box.outsideIsUntouched())
    }

    @Test(.enabled(if: tools, "needs gzip")) func aCompressedStreamThatIsNotATarIsRefused() throws {
        let box = ArchiveBox()
        try shell("cd '\(box.build)' && head -c 100000 /dev/urandom | gzip -c > junk.gz")
        let archive = box.build + "/junk.gz"
        #expect(try Unpacker.format(ofFileAt: archive) == .tarGzip)
        let error = try #require(throws: UnpackError.self) {
            try Unpacker.unpack(archive: archive, format: .tarGzip, into: box.release, limits: Self.limits)
        }
        guard case .notTar = error else { Issue.record("\(error)"); return }
        #expect(try FileManager.default.contentsOfDirectory(atPath: box.release).isEmpty)
    }

    @Test(.enabled(if: tools, "needs tar, gzip")) func aTruncatedArchiveIsRefused() throws {
        let box = ArchiveBox()
        try shell("""
            cd '\(box.build)' && mkdir src && head -c 400000 /dev/urandom > src/blob \
            && tar -C src -czf whole.tar.gz . && head -c 200000 whole.tar.gz > cut.tar.gz
            """)
        let error = try #require(throws: UnpackError.self) {
            try Unpacker.unpack(archive: box.build + "/cut.tar.gz", format: .tarGzip, into: box.release, limits: Self.limits)
        }
        guard case .malformed = error else { Issue.record("\(error)"); return }
        #expect(box.outsideIsUntouched())
    }

    @Test(.enabled(if: tools, "needs python3")) func contentNotOfTheFormatItWasToldOrANonEmptyTargetIsRefused() throws {
        let box = ArchiveBox()
        try box.tar(#"f("a")"#, into: box.build + "/plain.tar")
        #expect(throws: UnpackError.formatMismatch(.tarGzip, "none")) {
            try Unpacker.unpack(archive: box.build + "/plain.tar", format: .tarGzip, into: box.release, limits: Self.limits)
        }
        #expect(throws: UnpackError.notAnArchive) {
            try Unpacker.unpack(archive: box.build + "/plain.tar", format: .executable, into: box.release, limits: Self.limits)
        }
        // Only into an empty directory.
        try Data().write(to: URL(fileURLWithPath: box.release + "/left"))
        let error = try #require(throws: UnpackError.self) {
            try Unpacker.unpack(archive: box.build + "/plain.tar", format: .tar, into: box.release, limits: Self.limits)
        }
        guard case .io(_, ENOTEMPTY) = error else { Issue.record("\(error)"); return }
    }

    @Test(.enabled(if: tools && getuid() == 0, "needs root to mount a small tmpfs"))
    func aFullDiskIsNoSpace() throws {
        let box = ArchiveBox()
        let small = box.build + "/small"
        try shell("""
            cd '\(box.build)' && mkdir src small && head -c 4000000 /dev/urandom > src/blob && tar -C src -czf big.tar.gz . \
            && mount -t tmpfs -o size=1m tmpfs small && mkdir small/release
            """)
        defer { _ = try? shell("umount '\(small)'") }
        let error = try #require(throws: UnpackError.self) {
            try Unpacker.unpack(archive: box.build + "/big.tar.gz", format: .tarGzip, into: small + "/release", limits: Self.limits)
        }
        guard case .noSpace(_, ENOSPC) = error else { Issue.record("\(error)"); return }
        #expect(Unpacker.removeTree(small + "/release"))
    }

    // MARK: - Through the store's intake

    /// The seam with the release store: an archive received, checked, unpacked and
    /// published; a hostile one refused with nothing left in the agent's directory.
    @Test(.enabled(if: tools, "needs tar, python3, sha256sum"))
    func anArchiveGoesThroughTheStoresIntakeAndAHostileOneLeavesNothing() throws {
        let box = ArchiveBox()
        let store = ReleaseStore(stateDirectory: box.build + "/state")
        try shell("""
            cd '\(box.build)' && mkdir -p state src/bin && printf '#!/bin/sh\\necho hi\\n' > src/bin/web && chmod 755 src/bin/web \
            && printf '{"irreversible": true}' > src/release.json && tar -C src -czf good.tar.gz .
            """)
        try box.tar(#"f("bin/web", b"x")"# + "\n" + #"sym("up", "../..")"#, into: box.build + "/bad.tar")
        try shell("gzip -n '\(box.build)/bad.tar'")

        func intake(_ archive: String, version: String) throws -> PreparedRelease {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: archive))
            let file = try store.receive(agent: "web", maxBytes: 1 << 20)
            try bytes.withUnsafeBytes { try file.write($0) }
            let digest = try sha256(archive)
            return try store.prepare(file, expected: digest, agent: "web", version: version,
                                     provenance: Provenance(source: .push, by: "operator"), limits: Self.limits)
        }

        try intake(box.build + "/good.tar.gz", version: "1.0").publish()
        let manifest = try #require(store.manifest(agent: "web", version: "1.0"))
        #expect(manifest.format == .tarGzip)
        #expect(manifest.irreversible)
        #expect(manifest.files == 3)
        #expect(access(store.root + "/web/1.0/bin/web", X_OK) == 0)

        let error = try #require(throws: ReleaseError.self) { try intake(box.build + "/bad.tar.gz", version: "2.0") }
        #expect(error == .unsafeArchive(UnpackError.symlinkOut("up", "../..").description))
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.root + "/web") == ["1.0"])
    }

    // MARK: - Removing trees

    @Test func removeTreeFollowsNoSymlinkAndOpensUpLockedDirectories() throws {
        let work = TemporaryDirectory("remove")
        let outside = work.file("outside")
        let tree = work.file("tree")
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        try Data("keep".utf8).write(to: URL(fileURLWithPath: outside + "/keep"))
        try FileManager.default.createDirectory(atPath: tree + "/locked/inner", withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: tree + "/locked/inner/file"))
        try FileManager.default.createSymbolicLink(atPath: tree + "/link", withDestinationPath: outside)
        try FileManager.default.createSymbolicLink(atPath: tree + "/locked/file-link", withDestinationPath: outside + "/keep")
        chmod(tree + "/locked/inner", 0)
        chmod(tree + "/locked", 0o500)

        #expect(Unpacker.removeTree(tree))
        #expect(!exists(tree))
        #expect(exists(outside + "/keep"))
        #expect(Unpacker.removeTree(tree), "a missing tree is gone already")
        try FileManager.default.createSymbolicLink(atPath: work.file("top-link"), withDestinationPath: outside)
        #expect(Unpacker.removeTree(work.file("top-link")))
        #expect(exists(outside + "/keep"))
    }
}

// MARK: - HostileArchive entries

struct HostileArchive: Sendable, CustomTestStringConvertible {
    let name: String
    /// Python lines calling `f`, `d`, `sym`, `hard`, `char`, `fifo` (see `ArchiveBox.build`);
    /// OUTSIDE stands for the absolute path of the directory beside the release.
    let entries: String
    let expected: @Sendable (ArchiveBox) -> UnpackError
    var limits = UnpackerTests.limits
    /// Paths that must not exist afterwards.
    var absent: @Sendable (ArchiveBox) -> [String] = { _ in [] }

    var testDescription: String { name }

    static let all: [HostileArchive] = [
        HostileArchive(name: "../x", entries: #"f("../x")"#, expected: { _ in .dotDot("../x") },
                absent: { [$0.work.file("box/x")] }),
        HostileArchive(name: "x/../../y", entries: #"f("x/../../y")"#, expected: { _ in .dotDot("x/../../y") },
                absent: { [$0.work.file("box/y"), $0.release + "/x"] }),
        HostileArchive(name: "an absolute path", entries: #"f("OUTSIDE/abs")"#, expected: { .absolutePath($0.outside + "/abs") },
                absent: { [$0.outside + "/abs"] }),
        HostileArchive(name: "/etc/x", entries: #"f("/etc/baton-unpack-probe")"#, expected: { _ in .absolutePath("/etc/baton-unpack-probe") },
                absent: { _ in ["/etc/baton-unpack-probe"] }),
        HostileArchive(name: "a symlink to / then a file written through it",
                entries: #"sym("link", "/")"# + "\n" + #"f("linkOUTSIDE/pwned")"#,
                expected: { _ in .symlinkOut("link", "/") }, absent: { [$0.outside + "/pwned", $0.release + "/link"] }),
        HostileArchive(name: "a symlink up -> ../..", entries: #"sym("up", "../..")"#, expected: { _ in .symlinkOut("up", "../..") },
                absent: { [$0.release + "/up"] }),
        HostileArchive(name: "a symlink leading out through a symlink listed after it",
                entries: #"d("sub")"# + "\n" + #"sym("sub/b", "a/..")"# + "\n" + #"sym("sub/a", "..")"#,
                expected: { _ in .symlinkOut("sub/b", "a/..") }),
        HostileArchive(name: "a symlink loop", entries: #"sym("a", "b")"# + "\n" + #"sym("b", "a")"#, expected: { _ in .symlinkLoop("b") }),
        HostileArchive(name: "a file written through a symlink inside",
                entries: #"d("sub")"# + "\n" + #"sym("d", "sub")"# + "\n" + #"f("d/x")"#,
                expected: { _ in .parentNotDirectory("d/x", "d", "symlink") }, absent: { [$0.release + "/sub/x"] }),
        HostileArchive(name: "a hardlink to /etc/passwd", entries: #"hard("pw", "/etc/passwd")"#,
                expected: { _ in .hardlinkOut("pw", "/etc/passwd") }, absent: { [$0.release + "/pw"] }),
        HostileArchive(name: "a hardlink to ../outside", entries: #"hard("sec", "../../outside/secret")"#,
                expected: { _ in .hardlinkOut("sec", "../../outside/secret") }, absent: { [$0.release + "/sec"] }),
        HostileArchive(name: "a hardlink to a file not extracted yet", entries: #"hard("h", "later")"# + "\n" + #"f("later")"#,
                expected: { _ in .hardlinkOut("h", "later") }),
        HostileArchive(name: "a hardlink to a directory", entries: #"d("dir")"# + "\n" + #"hard("h", "dir")"#,
                expected: { _ in .hardlinkOut("h", "dir") }),
        HostileArchive(name: "a character device", entries: #"char("null")"#, expected: { _ in .special("null", "character device") },
                absent: { [$0.release + "/null"] }),
        HostileArchive(name: "a fifo", entries: #"fifo("pipe")"#, expected: { _ in .special("pipe", "fifo") },
                absent: { [$0.release + "/pipe"] }),
        HostileArchive(name: "too many files", entries: "for i in range(20): f(f\"f{i}\")",
                expected: { _ in .tooManyFiles("f10", 10) }, limits: UnpackLimits(maxBytes: 1 << 20, maxFiles: 10),
                absent: { [$0.release + "/f10"] }),
        HostileArchive(name: "too many implicit directories", entries: #"f("a/b/c/d/e/f/g/h/i/j/k")"#,
                expected: { _ in .tooManyFiles("a/b/c/d/e/f/g/h/i/j/k", 10) }, limits: UnpackLimits(maxBytes: 1 << 20, maxFiles: 10)),
        HostileArchive(name: "too many bytes", entries: #"f("a", b"x" * 600)"# + "\n" + #"f("b", b"x" * 600)"#,
                expected: { _ in .tooLarge("b", 600, 1000) }, limits: UnpackLimits(maxBytes: 1000, maxFiles: 10),
                absent: { [$0.release + "/b"] }),
        HostileArchive(name: "a path twice", entries: #"f("a")"# + "\n" + #"f("a")"#, expected: { _ in .duplicate("a") }),
        HostileArchive(name: "a directory over a file", entries: #"f("a")"# + "\n" + #"d("a")"#, expected: { _ in .duplicate("a/") }),
        HostileArchive(name: "release.json as a symlink", entries: #"f("x")"# + "\n" + #"sym("release.json", "x")"#,
                expected: { _ in .manifest("it is a symlink, not a regular file") }),
        HostileArchive(name: "an empty archive", entries: #"d(".")"#, expected: { _ in .empty }),
    ]
}

// MARK: - Helpers

/// `work/box/release`, the empty directory unpacked into, `work/outside/secret` beside
/// it, and `work/build` for the test's own files; `outsideIsUntouched` says whether
/// everything but the release and `build` is as it was.
final class ArchiveBox: Sendable {
    let work = TemporaryDirectory("unpack")
    let release: String
    let outside: String
    let build: String

    init() {
        release = work.file("box/release")
        outside = work.file("outside")
        build = work.file("build")
        for directory in [release, outside, build] {
            try! FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        chmod(release, 0o700)
        try! Data("secret".utf8).write(to: URL(fileURLWithPath: outside + "/secret"))
    }

    func outsideIsUntouched() -> Bool {
        (try? FileManager.default.contentsOfDirectory(atPath: work.path).sorted()) == ["box", "build", "outside"]
            && listing(work.file("box")).filter { !$0.hasPrefix(release + "/") } == [release]
            && listing(outside) == [outside + "/secret"]
    }

    /// Builds an uncompressed tar from Python lines (see `HostileArchive.entries`) in one of
    /// tarfile's formats.
    func tar(_ entries: String, into path: String, format: String = "GNU_FORMAT") throws {
        let script = build + "/build.py"
        try Data("""
            import io, sys, tarfile
            t = tarfile.open(sys.argv[1], "w", format=tarfile.\(format))
            def add(name, type, data=b"", mode=0o644, link=""):
                i = tarfile.TarInfo(name); i.type = type; i.mode = mode; i.linkname = link
                i.size = len(data) if type == tarfile.REGTYPE else 0
                t.addfile(i, io.BytesIO(data) if i.size else None)
            def f(name, data=b"x", mode=0o644): add(name, tarfile.REGTYPE, data, mode)
            def d(name, mode=0o755): add(name, tarfile.DIRTYPE, mode=mode)
            def sym(name, target): add(name, tarfile.SYMTYPE, mode=0o777, link=target)
            def hard(name, target): add(name, tarfile.LNKTYPE, link=target)
            def char(name):
                i = tarfile.TarInfo(name); i.type = tarfile.CHRTYPE; i.devmajor = 1; i.devminor = 3; t.addfile(i)
            def fifo(name): add(name, tarfile.FIFOTYPE)
            \(entries)
            t.close()

            """.utf8).write(to: URL(fileURLWithPath: script))
        try shell("\(UnpackerTests.python) '\(script)' '\(path)'")
    }

    /// Builds the entries into a .tar.gz and unpacks it into `release`.
    @discardableResult
    func unpack(_ entries: String, limits: UnpackLimits = UnpackerTests.limits, format: String = "GNU_FORMAT") throws -> Unpacked {
        let archive = build + "/hostile.tar"
        try tar(entries, into: archive, format: format)
        try shell("gzip -n -f '\(archive)'")
        return try Unpacker.unpack(archive: archive + ".gz", format: .tarGzip, into: release, limits: limits)
    }
}

/// Every path under `root` (not following symlinks), sorted.
fileprivate func listing(_ root: String) -> [String] {
    var found: [String] = []
    func walk(_ directory: String) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        for name in names {
            let path = directory + "/" + name
            found.append(path)
            if let info = try? lstatOf(path), info.st_mode & S_IFMT == S_IFDIR { walk(path) }
        }
    }
    walk(root)
    return found.sorted()
}

fileprivate func lstatOf(_ path: String) throws -> stat {
    var info = stat()
    guard lstat(path, &info) == 0 else { throw TestFailure("lstat \(path): \(String(cString: strerror(errno)))") }
    return info
}

/// The SHA-256 of a file, by `sha256sum`.
fileprivate func sha256(_ path: String) throws -> [UInt8] {
    let output = path + ".sha256"
    try shell("sha256sum '\(path)' > '\(output)'")
    let hex = Array(try String(contentsOfFile: output, encoding: .utf8).prefix(64))
    return stride(from: 0, to: hex.count, by: 2).compactMap { UInt8(String(hex[$0...$0 + 1]), radix: 16) }
}

fileprivate func exists(_ path: String) -> Bool {
    var info = stat()
    return lstat(path, &info) == 0
}

/// Runs a shell command with posix_spawn and waitpid (not Foundation's Process, which was
/// seen to miss a shell's exit); throws when it fails.
fileprivate func shell(_ command: String) throws {
    let words = ["/bin/sh", "-c", command]
    let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var child: pid_t = 0
    guard posix_spawn(&child, "/bin/sh", nil, nil, argv, environ) == 0 else { throw TestFailure("posix_spawn /bin/sh") }
    var status: Int32 = 0
    while waitpid(child, &status, 0) < 0 && errno == EINTR {}
    guard status == 0 else { throw TestFailure("\(command): exit status \(status)") }
}
