import BatonCore
import CArchive
import Foundation
import Glibc
import Synchronization

/// How much a release may make on disk.
public struct UnpackLimits: Sendable, Equatable {
    /// Bytes of all regular files together, as declared by their headers (a sparse
    /// file counts at its full size) and as written.
    public var maxBytes: Int64
    /// Paths created: files, links and directories, those made implicitly for an
    /// entry's parents included.
    public var maxFiles: Int

    public init(maxBytes: Int64, maxFiles: Int) {
        self.maxBytes = maxBytes
        self.maxFiles = maxFiles
    }
}

/// What an unpacked release made.
public struct Unpacked: Sendable, Equatable {
    /// Bytes of its regular files (apparent sizes).
    public var bytes: Int64
    /// Paths it created (files, links, directories): what `UnpackLimits.maxFiles` counts.
    public var files: Int
    /// The author's part of a top-level `release.json`, when the archive has one.
    public var declared: ReleaseManifest.Declared?

    public init(bytes: Int64, files: Int, declared: ReleaseManifest.Declared?) {
        self.bytes = bytes
        self.files = files
        self.declared = declared
    }
}

/// Why an archive was refused or could not be unpacked. A refusal leaves the target
/// directory as it is (possibly partly filled); the caller removes it.
public enum UnpackError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `.executable` was given: a single executable is installed, not unpacked.
    case notAnArchive
    /// The (decompressed) stream is not a tar archive: libarchive's words.
    case notTar(String)
    /// The content is not the format it was told by: expected, found (filters, innermost first).
    case formatMismatch(ReleaseManifest.Format, String)
    /// The archive broke off or is damaged past its first header: libarchive's words.
    case malformed(String)
    /// No entry besides its top directory.
    case empty
    /// An entry name that is empty or not UTF-8 (then shown as "?").
    case badName(String)
    case absolutePath(String)
    case dotDot(String)
    /// A symlink (entry, target) whose target is absolute or, followed inside the release
    /// (through the other symlinks), leads out of it.
    case symlinkOut(String, String)
    /// A symlink whose resolution does not end (a loop, or more than 40 links in a chain).
    case symlinkLoop(String)
    /// A hardlink (entry, target) whose target is not a regular file extracted before it.
    case hardlinkOut(String, String)
    /// An entry (entry, parent, what the parent is) under a parent that is not a directory.
    case parentNotDirectory(String, String, String)
    /// A path that appears twice (a directory may appear again).
    case duplicate(String)
    /// A device node, fifo, socket or any type other than file, directory, symlink, hardlink.
    case special(String, String)
    /// Entry, its size, the limit: the release would exceed `maxBytes`.
    case tooLarge(String, Int64, Int64)
    /// Entry, the limit: the release would exceed `maxFiles`.
    case tooManyFiles(String, Int)
    /// `release.json` at the top is not a regular file, too large, or does not parse.
    case manifest(String)
    /// libarchive refused an entry by its own checks, with no system error behind it
    /// (what it was doing, its words). The checks before it should leave nothing to it.
    case refused(String)
    /// ENOSPC or EDQUOT while writing (what failed, errno): the route answers 507.
    case noSpace(String, Int32)
    /// Any other system error (what failed, errno).
    case io(String, Int32)

    public var description: String {
        switch self {
        case .notAnArchive:
            "a single executable is not an archive: nothing to unpack"
        case .notTar(let message):
            "the content is not a tar archive (\(message)): refused"
        case .formatMismatch(let expected, let found):
            "the content was detected as \(expected.rawValue) but reads as \(found): refused"
        case .malformed(let message):
            "the archive is truncated or damaged (\(message)): refused"
        case .empty:
            "the archive holds no entries: refused"
        case .badName(let name):
            "entry \"\(name)\" has an empty or non-UTF-8 name: refused"
        case .absolutePath(let name):
            "entry \"\(name)\" is an absolute path: refused"
        case .dotDot(let name):
            "entry \"\(name)\" leads out of the release (..): refused"
        case .symlinkOut(let name, let target):
            "symlink \"\(name)\" -> \"\(target)\" leads out of the release: refused"
        case .symlinkLoop(let name):
            "symlink \"\(name)\" does not resolve (a loop or a chain of more than \(Unpacker.maxSymlinkHops) links): refused"
        case .hardlinkOut(let name, let target):
            "hardlink \"\(name)\" -> \"\(target)\" does not name a regular file extracted before it in the release: refused"
        case .parentNotDirectory(let name, let parent, let kind):
            "entry \"\(name)\" would be written through \"\(parent)\", which is a \(kind), not a directory: refused"
        case .duplicate(let name):
            "entry \"\(name)\" appears twice in the archive: refused"
        case .special(let name, let kind):
            "entry \"\(name)\" is a \(kind): only files, directories, symlinks and hardlinks are unpacked: refused"
        case .tooLarge(let name, let size, let limit):
            "entry \"\(name)\" (\(size) bytes) takes the release past its limit of \(limit) bytes: refused"
        case .tooManyFiles(let name, let limit):
            "entry \"\(name)\" takes the release past its limit of \(limit) files: refused"
        case .manifest(let message):
            "\(ReleaseManifest.fileName) in the archive: \(message)"
        case .refused(let what):
            "\(what): refused"
        case .noSpace(let operation, let code), .io(let operation, let code):
            "\(operation): \(String(cString: strerror(code)))"
        }
    }
}

/// Tells a release's format by its first bytes, unpacks a tar archive safely with
/// libarchive, and removes trees without following symlinks.
///
/// Invariant of `unpack`: nothing is created outside the target directory, whatever the
/// archive says. Every entry is checked before libarchive writes it (names, types,
/// links, limits), libarchive's own secure flags stand behind those checks, and once
/// all entries are out every symlink is resolved again through the final tree, so a
/// later symlink cannot turn an earlier one outwards.
public enum Unpacker {
    /// Bytes `format(of:)` needs to tell every format (ustar's magic ends at 262).
    public static let sniffLength = 262
    /// As Linux's MAXSYMLINKS: a chain longer than that never resolves.
    static let maxSymlinkHops = 40
    /// The largest `release.json` read from an archive.
    static let maxManifestBytes = 64 * 1024

    // MARK: - Format

    /// The format of content starting with `header` (at least `sniffLength` bytes when
    /// there are that many): gzip, xz or zstd magic (the archive inside is checked when
    /// unpacking), a ustar header, an ELF or a `#!` script; nil for anything else.
    public static func format(of header: some Collection<UInt8>) -> ReleaseManifest.Format? {
        let bytes = Array(header.prefix(sniffLength))
        func starts(_ magic: [UInt8]) -> Bool { bytes.starts(with: magic) }
        if starts([0x1f, 0x8b]) { return .tarGzip }
        if starts([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) { return .tarXz }
        if starts([0x28, 0xb5, 0x2f, 0xfd]) { return .tarZstd }
        if starts([0x7f, 0x45, 0x4c, 0x46]) { return .executable }
        // Before "#!": a tar whose first entry is named "#!…" is still a tar.
        if bytes.count >= 262, bytes[257..<262].elementsEqual("ustar".utf8) { return .tar }
        if starts([0x23, 0x21]) { return .executable }
        return nil
    }

    /// The format of a file's content (never its name).
    public static func format(ofFileAt path: String) throws(UnpackError) -> ReleaseManifest.Format? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io("open \(path)", errno) }
        defer { close(fd) }
        var header = [UInt8](repeating: 0, count: sniffLength)
        var filled = 0
        while filled < sniffLength {
            let count = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + filled, sniffLength - filled, off_t(filled)) }
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw .io("read \(path)", errno) }
            if count == 0 { break }
            filled += count
        }
        return format(of: header[..<filled])
    }

    // MARK: - Unpacking

    /// Unpacks the tar archive at `path` into `directory`, an existing empty directory
    /// (a temporary one on the release store's filesystem, renamed into place by the
    /// caller once this returns). Everything written is durable when it returns (see
    /// `sync`), so the caller's rename and its fsync of the parent make the release
    /// durable whole.
    ///
    /// Modes are kept (executable bits) without setuid, setgid and sticky bits; owners
    /// are not restored (files belong to batond's user). The top directory's own entry
    /// (`./`) is skipped: `directory` keeps its mode.
    ///
    /// One unpack runs at a time in the process: archive_write_disk reads the umask with
    /// `umask(umask(0))` before each entry, and two extractions interleaving there can
    /// leave the whole process with umask 0 (libarchive issue #1876).
    public static func unpack(archive path: String, format: ReleaseManifest.Format, into directory: String,
                              limits: UnpackLimits) throws(UnpackError) -> Unpacked {
        try extracting.withLock { _ throws(UnpackError) in
            try extract(archive: path, format: format, into: directory, limits: limits)
        }
    }

    private static let extracting = Mutex(())

    private static func extract(archive path: String, format: ReleaseManifest.Format, into directory: String,
                                limits: UnpackLimits) throws(UnpackError) -> Unpacked {
        // libarchive's SECURE_SYMLINKS refuses a path with any symlink among its
        // components, the directory's own included: resolve it once.
        guard let resolved = realpath(directory, nil) else { throw .io("realpath \(directory)", errno) }
        let root = String(cString: resolved)
        free(resolved)
        let rootFD = try openEmptyDirectory(root)
        defer { close(rootFD) }

        let reader = try openReader(path, format: format)
        defer { archive_read_free(reader) }
        guard let writer = archive_write_disk_new() else { throw .io("archive_write_disk_new", ENOMEM) }
        defer { archive_write_free(writer) }
        // NOABSOLUTEPATHS is left out on purpose: every pathname handed to libarchive is
        // `root/` + a name checked relative here, so absolute by construction. Absolute
        // names in the archive are refused before that (`EntryPath`).
        archive_write_disk_set_options(writer, ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME
            | ARCHIVE_EXTRACT_SECURE_NODOTDOT | ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_NO_OVERWRITE)

        var tree = ReleaseTree()
        var bytes: Int64 = 0
        var manifest: [UInt8]?
        var first = true
        while true {
            var entry: OpaquePointer?
            let status = archive_read_next_header(reader, &entry)
            if status == ARCHIVE_EOF { break }
            guard status >= ARCHIVE_WARN, let entry else {
                let message = errorString(reader)
                throw first ? .notTar(message) : .malformed(message)
            }
            if first {
                try checkFilters(reader, format: format)
                first = false
            }

            let name = try entryName(entry)
            let kind = try entryKind(entry, name: name)
            guard try tree.add(name, kind: kind, limits: limits) else { continue }
            let size = kind.carriesData ? max(0, archive_entry_size(entry)) : 0
            guard bytes + size <= limits.maxBytes else { throw .tooLarge(name.display, size, limits.maxBytes) }
            bytes += size
            let isManifest = name.isTopLevel(ReleaseManifest.fileName)
            if isManifest {
                guard case .file = kind else { throw .manifest("it is a \(kind.noun), not a regular file") }
                guard size <= maxManifestBytes else { throw .manifest("\(size) bytes, more than \(maxManifestBytes)") }
                manifest = []
            }

            archive_entry_copy_pathname(entry, root + "/" + name.relative)
            archive_entry_set_perm(entry, archive_entry_perm(entry) & 0o777)
            switch kind {
            case .hardlink(let to): archive_entry_copy_hardlink(entry, root + "/" + to.relative)
            case .symlink(let to): archive_entry_copy_symlink(entry, to)
            case .file, .directory: break
            }
            try check(archive_write_header(writer, entry), writer, "extract \"\(name.display)\"")

            if size > 0 {
                var written: Int64 = 0
                while true {
                    var block: UnsafeRawPointer?
                    var length = 0
                    var offset: la_int64_t = 0
                    let read = archive_read_data_block(reader, &block, &length, &offset)
                    if read == ARCHIVE_EOF { break }
                    guard read >= ARCHIVE_WARN else { throw .malformed(errorString(reader)) }
                    written += Int64(length)
                    // The header's size (counted against the limit above) bounds what
                    // libarchive writes; this bounds what is read, blocks of a sparse
                    // file included, should a reader ever hand over more.
                    guard written <= size, offset >= 0, offset + Int64(length) <= size else {
                        throw .malformed("entry \"\(name.display)\" holds more data than its header declares")
                    }
                    guard length > 0, let block else { continue }
                    if isManifest {
                        let start = Int(offset), end = start + length
                        if manifest!.count < end { manifest!.append(contentsOf: repeatElement(0, count: end - manifest!.count)) }
                        manifest!.replaceSubrange(start..<end, with: UnsafeRawBufferPointer(start: block, count: length))
                    }
                    let status = archive_write_data_block(writer, block, length, offset)
                    try check(status < 0 ? Int32(status) : ARCHIVE_OK, writer, "write \"\(name.display)\"")
                }
            }
            try check(archive_write_finish_entry(writer), writer, "finish \"\(name.display)\"")
            if case .file = kind, size > 0 { startWriteback(root + "/" + name.relative) }
        }
        // Directory modes and times are set here (libarchive defers them so that a
        // read-only directory can still be filled).
        try check(archive_write_close(writer), writer, "close the extraction")

        guard tree.count > 0 else { throw .empty }
        try tree.checkSymlinks()
        var declared: ReleaseManifest.Declared?
        if let manifest {
            do {
                declared = try ReleaseManifest.decodeDeclared(Data(manifest))
            } catch {
                throw .manifest("does not parse: \(error)")
            }
        }
        try sync(rootFD, root: root)
        return Unpacked(bytes: bytes, files: tree.count, declared: declared)
    }

    // MARK: - Removing

    /// Removes `path` and everything under it, never following a symlink (a symlink is
    /// removed, not what it points at) and never crossing into another filesystem.
    /// Directories without write or search permission are opened up first. Returns
    /// whether `path` is gone (true when it never existed).
    @discardableResult
    public static func removeTree(_ path: String) -> Bool {
        var info = stat()
        guard lstat(path, &info) == 0 else { return errno == ENOENT }
        guard (info.st_mode & S_IFMT) == S_IFDIR else { return unlink(path) == 0 || errno == ENOENT }
        let fd = openForRemoval(AT_FDCWD, path, mode: info.st_mode)
        guard fd >= 0 else { return false }
        let emptied = empty(fd, device: info.st_dev)
        close(fd)
        return emptied && (rmdir(path) == 0 || errno == ENOENT)
    }

    /// Empties the directory open at `fd`, depth first, one open descriptor per level.
    private static func empty(_ fd: Int32, device: dev_t) -> Bool {
        guard let names = names(in: fd) else { return false }
        var emptied = true
        for name in names {
            var info = stat()
            guard fstatat(fd, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
                if errno != ENOENT { emptied = false }
                continue
            }
            if (info.st_mode & S_IFMT) == S_IFDIR {
                guard info.st_dev == device else { emptied = false; continue }
                let child = openForRemoval(fd, name, mode: info.st_mode)
                guard child >= 0 else { emptied = false; continue }
                let inner = empty(child, device: device)
                close(child)
                if !inner || unlinkat(fd, name, AT_REMOVEDIR) != 0 && errno != ENOENT { emptied = false }
            } else if unlinkat(fd, name, 0) != 0 && errno != ENOENT {
                emptied = false
            }
        }
        return emptied
    }

    /// Opens a directory (never through a symlink) so that its entries can be removed:
    /// one without read, write or search permission for batond is given them first.
    private static func openForRemoval(_ at: Int32, _ name: String, mode: mode_t) -> Int32 {
        let flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
        var fd = openat(at, name, flags)
        if fd < 0 && errno == EACCES && fchmodat(at, name, 0o700, 0) == 0 { fd = openat(at, name, flags) }
        if fd >= 0 && (mode & 0o700) != 0o700 { fchmod(fd, 0o700) }
        return fd
    }

    /// The names in the directory open at `fd`, `.` and `..` left out.
    private static func names(in fd: Int32) -> [String]? {
        let copy = dup(fd)
        guard copy >= 0 else { return nil }
        guard let stream = fdopendir(copy) else {
            close(copy)
            return nil
        }
        defer { closedir(stream) }
        var names: [String] = []
        while let record = readdir(stream) {
            let name = withUnsafeBytes(of: record.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    // MARK: - libarchive

    private static func openReader(_ path: String, format: ReleaseManifest.Format) throws(UnpackError) -> OpaquePointer {
        guard let reader = archive_read_new() else { throw .io("archive_read_new", ENOMEM) }
        // Only tar, and only the one filter the content was told by: no other format
        // or filter libarchive knows is let near a release.
        archive_read_support_format_tar(reader)
        let filter: Int32
        switch format {
        case .executable:
            archive_read_free(reader)
            throw .notAnArchive
        case .tar: filter = ARCHIVE_OK
        case .tarGzip: filter = archive_read_support_filter_gzip(reader)
        case .tarXz: filter = archive_read_support_filter_xz(reader)
        case .tarZstd: filter = archive_read_support_filter_zstd(reader)
        }
        // ARCHIVE_WARN: this libarchive was built without the library and would run an
        // external program (`zstd -d`…), forked from batond's threads. Not that.
        guard filter == ARCHIVE_OK else {
            archive_read_free(reader)
            throw .io("libarchive cannot decompress \(format.rawValue) by itself", ENOTSUP)
        }
        // Opening reads the first blocks and bids on them: content that is no tar
        // (ARCHIVE_ERRNO_FILE_FORMAT, EILSEQ on Linux) is refused here.
        guard archive_read_open_filename(reader, path, 128 * 1024) == ARCHIVE_OK else {
            let code = archive_errno(reader)
            let error: UnpackError = code == EILSEQ ? .notTar(errorString(reader)) : .io("open \(path): \(errorString(reader))", code)
            archive_read_free(reader)
            throw error
        }
        return reader
    }

    /// The filters libarchive applied are exactly the one the format names (a gzip
    /// inside a gzip, or a plain tar told as gzip, is not what was detected).
    private static func checkFilters(_ reader: OpaquePointer, format: ReleaseManifest.Format) throws(UnpackError) {
        let expected: [Int32] = switch format {
        case .executable, .tar: [ARCHIVE_FILTER_NONE]
        case .tarGzip: [ARCHIVE_FILTER_GZIP, ARCHIVE_FILTER_NONE]
        case .tarXz: [ARCHIVE_FILTER_XZ, ARCHIVE_FILTER_NONE]
        case .tarZstd: [ARCHIVE_FILTER_ZSTD, ARCHIVE_FILTER_NONE]
        }
        let count = archive_filter_count(reader)
        let found = (0..<count).map { archive_filter_code(reader, $0) }
        guard found == expected else {
            let names = (0..<count).map { archive_filter_name(reader, $0).map { String(cString: $0) } ?? "?" }
            throw .formatMismatch(format, names.joined(separator: " in "))
        }
    }

    /// Throws for any status but ARCHIVE_OK, ENOSPC and EDQUOT apart: archive_write_disk
    /// reports a failed write(2) (a full disk) and a failed chmod as mere warnings.
    private static func check(_ status: Int32, _ archive: OpaquePointer, _ operation: String) throws(UnpackError) {
        guard status != ARCHIVE_OK else { return }
        let code = archive_errno(archive)
        let what = "\(operation): \(errorString(archive))"
        if code == ENOSPC || code == EDQUOT { throw .noSpace(what, code) }
        // No errno, or ARCHIVE_ERRNO_MISC (-1 in libarchive's private archive_platform.h):
        // a refusal of libarchive's own, "Path contains '..'" and the like.
        if code == 0 || code == -1 { throw .refused(what) }
        throw .io(what, code)
    }

    private static func errorString(_ archive: OpaquePointer) -> String {
        archive_error_string(archive).map { String(cString: $0) } ?? "unknown libarchive error"
    }

    private static func entryName(_ entry: OpaquePointer) throws(UnpackError) -> EntryPath {
        try EntryPath(text(archive_entry_pathname_utf8(entry), orRaw: archive_entry_pathname(entry)))
    }

    private static func entryKind(_ entry: OpaquePointer, name: EntryPath) throws(UnpackError) -> EntryKind {
        if archive_entry_hardlink(entry) != nil || archive_entry_hardlink_utf8(entry) != nil {
            let raw = text(archive_entry_hardlink_utf8(entry), orRaw: archive_entry_hardlink(entry))
            guard let raw, let target = try? EntryPath(raw), !target.isRoot else {
                throw .hardlinkOut(name.display, raw ?? "?")
            }
            return .hardlink(target)
        }
        let type = archive_entry_filetype(entry) & S_IFMT
        switch type {
        case S_IFREG: return .file
        case S_IFDIR: return .directory
        case S_IFLNK:
            guard let target = text(archive_entry_symlink_utf8(entry), orRaw: archive_entry_symlink(entry)),
                  !target.isEmpty else { throw .symlinkOut(name.display, "") }
            return .symlink(target)
        case S_IFCHR: throw .special(name.display, "character device")
        case S_IFBLK: throw .special(name.display, "block device")
        case S_IFIFO: throw .special(name.display, "fifo")
        case S_IFSOCK: throw .special(name.display, "socket")
        default: throw .special(name.display, "file of unknown type \(String(type, radix: 8))")
        }
    }

    /// A name as UTF-8: libarchive's conversion when it has one, else the raw bytes when
    /// they are UTF-8 (a ustar name is stored as is; the C locale cannot convert it).
    private static func text(_ utf8: UnsafePointer<CChar>?, orRaw raw: UnsafePointer<CChar>?) -> String? {
        if let utf8, let text = String(validatingCString: utf8) { return text }
        if let raw { return String(validatingCString: raw) }
        return nil
    }

    // MARK: - Durability

    /// Starts writing a file back while the next ones are unpacked, so that the syncfs at
    /// the end finds little left to write. Advice only: errors show at syncfs.
    private static func startWriteback(_ path: String) {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return }
        baton_start_writeback(fd)
        close(fd)
    }

    /// Makes the release durable: syncfs(2) of its filesystem through `root`, opened
    /// before anything was written, so that the error it returns covers every file and
    /// directory written since (Linux reports writeback errors to syncfs from 5.8).
    /// One call instead of an fsync per file: with ~1100 files, fsync'ing each took
    /// 3 s where the whole extraction took 2 s (`baton-bench unpack`), one journal
    /// commit each.
    private static func sync(_ fd: Int32, root: String) throws(UnpackError) {
        guard baton_syncfs(fd) == 0 else {
            let code = errno
            if code == ENOSPC || code == EDQUOT { throw .noSpace("syncfs \(root)", code) }
            throw .io("syncfs \(root)", code)
        }
    }

    /// Opens `path`, refusing it unless it is an empty directory; the caller closes it.
    private static func openEmptyDirectory(_ path: String) throws(UnpackError) -> Int32 {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .io("open \(path)", errno) }
        guard let names = names(in: fd) else {
            let code = errno
            close(fd)
            throw .io("read \(path)", code)
        }
        guard names.isEmpty else {
            close(fd)
            throw .io("unpack into \(path)", ENOTEMPTY)
        }
        return fd
    }
}

// MARK: - Entries

/// An entry's name made relative and plain: no empty or `.` components, refused when
/// absolute, with a `..` component, empty, or not UTF-8. The root (`./`) has no components.
struct EntryPath {
    let components: [Substring]
    let display: String

    init(_ text: String?) throws(UnpackError) {
        guard let text, !text.isEmpty else { throw .badName(text ?? "?") }
        display = text
        guard !text.hasPrefix("/") else { throw .absolutePath(text) }
        components = text.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
        guard !components.contains("..") else { throw .dotDot(text) }
    }

    var isRoot: Bool { components.isEmpty }
    var relative: String { components.joined(separator: "/") }
    func isTopLevel(_ name: String) -> Bool { components.count == 1 && components[0] == name }
}

enum EntryKind {
    case file, directory
    case symlink(String)
    case hardlink(EntryPath)

    var carriesData: Bool {
        switch self {
        case .file, .hardlink: true
        case .directory, .symlink: false
        }
    }

    var noun: String {
        switch self {
        case .file: "regular file"
        case .directory: "directory"
        case .symlink: "symlink"
        case .hardlink: "hardlink"
        }
    }
}

/// The paths an extraction has made so far, by kind: what decides duplicates, parents,
/// hardlink targets, symlink resolution and the file count, without asking the disk.
struct ReleaseTree {
    private enum Node: Equatable {
        case file, directory
        case symlink(String)
    }

    private var nodes: [String: Node] = [:]
    /// Symlinks in archive order, to report the first one that leads out.
    private var symlinks: [(path: String, target: String)] = []

    var count: Int { nodes.count }

    /// Records an entry, refusing what would make the tree unsafe or too big. Returns
    /// whether to extract it: not the root's own entry.
    mutating func add(_ name: EntryPath, kind: EntryKind, limits: UnpackLimits) throws(UnpackError) -> Bool {
        if name.isRoot {
            guard case .directory = kind else { throw .badName(name.display) }
            return false
        }
        // Parents: directories, made implicitly when the archive has not listed them.
        var parent = ""
        for component in name.components.dropLast() {
            parent = parent.isEmpty ? String(component) : parent + "/" + component
            switch nodes[parent] {
            case .directory: continue
            case .file: throw .parentNotDirectory(name.display, parent, "regular file")
            case .symlink: throw .parentNotDirectory(name.display, parent, "symlink")
            case nil: try insert(parent, .directory, for: name, limits: limits)
            }
        }
        let path = name.relative
        switch kind {
        case .directory:
            if nodes[path] == .directory { return true }
            try insert(path, .directory, for: name, limits: limits)
        case .file:
            try insert(path, .file, for: name, limits: limits)
        case .hardlink(let target):
            guard nodes[target.relative] == .file else { throw .hardlinkOut(name.display, target.display) }
            try insert(path, .file, for: name, limits: limits)
        case .symlink(let target):
            try insert(path, .symlink(target), for: name, limits: limits)
            symlinks.append((path, target))
            // Refused at once when it leads out already; `checkSymlinks` sees the whole tree.
            try resolve(path, target)
        }
        return true
    }

    private mutating func insert(_ path: String, _ node: Node, for name: EntryPath, limits: UnpackLimits) throws(UnpackError) {
        guard nodes[path] == nil else { throw .duplicate(name.display) }
        guard nodes.count < limits.maxFiles else { throw .tooManyFiles(name.display, limits.maxFiles) }
        nodes[path] = node
    }

    /// Every symlink, resolved through the complete tree, stays inside it.
    func checkSymlinks() throws(UnpackError) {
        for (path, target) in symlinks { try resolve(path, target) }
    }

    /// Follows `target` from the directory of the symlink at `path` as the kernel would,
    /// through the symlinks known, refusing it when it climbs above the root or is absolute.
    private func resolve(_ path: String, _ target: String) throws(UnpackError) {
        guard !target.hasPrefix("/") else { throw .symlinkOut(path, target) }
        var hops = 0
        var pending = ArraySlice(target.split(separator: "/", omittingEmptySubsequences: false))
        var reached = Array(path.split(separator: "/").dropLast())
        while let component = pending.popFirst() {
            switch component {
            case "", ".": continue
            case "..":
                guard !reached.isEmpty else { throw .symlinkOut(path, target) }
                reached.removeLast()
            default:
                reached.append(component)
                guard case .symlink(let next) = nodes[reached.joined(separator: "/")] else { continue }
                hops += 1
                guard hops <= Unpacker.maxSymlinkHops else { throw .symlinkLoop(path) }
                guard !next.hasPrefix("/") else { throw .symlinkOut(path, target) }
                reached.removeLast()
                pending = ArraySlice(next.split(separator: "/", omittingEmptySubsequences: false)) + pending
            }
        }
    }
}
