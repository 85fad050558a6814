// INTERIM: replaced by the libarchive unpacker (branch `unpack`) before issue 8 lands.
import BatonCore
import Foundation
import Glibc

public struct UnpackLimits: Sendable, Equatable {
    public var maxBytes: Int64
    public var maxFiles: Int
    public init(maxBytes: Int64, maxFiles: Int) {
        self.maxBytes = maxBytes
        self.maxFiles = maxFiles
    }
}

public struct Unpacked: Sendable {
    public var bytes: Int64
    public var files: Int
    public var declared: ReleaseManifest.Declared?
}

public enum UnpackError: Error, Sendable, CustomStringConvertible {
    case noSpace(String)
    case io(String)
    case unsupported
    public var description: String { "archives are not supported yet" }
}

public enum Unpacker {
    public static func format(ofFileAt path: String) throws -> ReleaseManifest.Format? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        let head = [UInt8](handle.readData(ofLength: 512))
        if head.starts(with: [0x7f, 0x45, 0x4c, 0x46]) || head.starts(with: [0x23, 0x21]) { return .executable }
        if head.starts(with: [0x1f, 0x8b]) { return .tarGzip }
        return nil
    }

    public static func unpack(archive path: String, format: ReleaseManifest.Format, into directory: String,
                              limits: UnpackLimits) throws(UnpackError) -> Unpacked {
        throw .unsupported
    }

    public static func removeTree(_ path: String) {
        try? FileManager.default.removeItem(atPath: path)
    }
}
