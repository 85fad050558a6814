import Glibc

/// Why the release store refused a release or could not store it. Each refusal leaves
/// nothing behind on disk.
public enum ReleaseError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalidName(String)
    /// The bytes are past the size limit.
    case tooLarge(limit: Int64)
    case digestMismatch(expected: String, actual: String)
    /// Neither an executable (ELF, `#!`) nor a tar archive (plain, gzip, xz, zstd).
    case unsupportedFormat
    /// The archive was refused by the unpacker's checks.
    case unsafeArchive(String)
    /// Not enough free space to start: what was needed, what there was, where.
    case insufficientSpace(needed: Int64, available: Int64, path: String)
    /// The disk filled up on the way (ENOSPC, EDQUOT).
    case noSpace(String)
    /// The version was stored meanwhile.
    case exists(String)
    case io(String, Int32)

    public var description: String {
        switch self {
        case .invalidName(let name): "\"\(name)\" is not a valid agent name and version"
        case .tooLarge(let limit): "the release is larger than the limit of \(limit) bytes"
        case .digestMismatch(let expected, let actual):
            "the bytes' SHA-256 is \(actual), not \(expected) as announced; nothing was kept"
        case .unsupportedFormat:
            "a release is one executable (ELF, or a script starting with #!) or a tar archive (plain, gzip, xz or zstd); these bytes are neither"
        case .unsafeArchive(let reason): "the archive was refused: \(reason); nothing was kept"
        case .insufficientSpace(let needed, let available, let path):
            "not enough free space on \(path): \(needed) bytes needed (the release and a margin), \(available) available"
        case .noSpace(let operation): "the disk is full (\(operation)); nothing was kept"
        case .exists(let version): "release \(version) was stored meanwhile"
        case .io(let operation, let code): "\(operation): \(String(cString: strerror(code)))"
        }
    }

    /// An errno from `operation`: a full disk is `noSpace`, the rest `io`.
    static func failure(_ operation: String, _ code: Int32) -> ReleaseError {
        code == ENOSPC || code == EDQUOT ? .noSpace(operation) : .io(operation, code)
    }

    public init(_ failure: DigestingFile.Failure) {
        switch failure {
        case .tooLarge(let limit): self = .tooLarge(limit: limit)
        case .noSpace(let operation): self = .noSpace(operation)
        case .io(let operation, let code): self = .io(operation, code)
        }
    }
}
