import Foundation

/// `releases/<agent>/<version>/release.json`: what batond knows of a release it stored,
/// written once, before the release's directory appears under its version. A release
/// dropped in by hand has none (or only the author's part of one: see `Declared`).
public struct ReleaseManifest: Codable, Sendable, Equatable {
    /// How the release came.
    public enum Source: String, Codable, Sendable {
        /// `PUT /v1/releases/{agent}/{version}`.
        case push
        /// `POST /v1/releases/{agent}/{version}`: batond downloaded it.
        case fetch
        /// Put in `releases/<agent>/` by hand: no digest, never signed.
        case local
    }

    /// What the pushed bytes were: one executable, or a tar archive (compression told
    /// by content, not by name).
    public enum Format: String, Codable, Sendable {
        case executable, tar
        case tarGzip = "tar.gz"
        case tarXz = "tar.xz"
        case tarZstd = "tar.zst"
    }

    public var agent: String
    public var version: String
    /// SHA-256 (64 lowercase hex digits) of the bytes pushed or fetched.
    public var sha256: String
    /// Their size, and what they made on disk.
    public var size: Int64
    public var unpackedBytes: Int64
    public var files: Int
    public var format: Format
    public var source: Source
    /// Where a fetch took it from.
    public var url: String?
    public var pushedAt: Timestamp
    /// The principal that pushed or asked for the fetch.
    public var pushedBy: String
    /// The trusted key whose Ed25519 signature over the digest verified, if any.
    public var signedBy: String?
    /// The release migrates data: never rewound by itself, rolled back only with force.
    public var irreversible: Bool
    /// argv run once by a barrier upgrade to this release, with `{release}` expanded.
    public var migration: [String]?

    public init(agent: String, version: String, sha256: String, size: Int64, unpackedBytes: Int64, files: Int,
                format: Format, source: Source, url: String? = nil, pushedAt: Timestamp, pushedBy: String,
                signedBy: String? = nil, irreversible: Bool = false, migration: [String]? = nil) {
        self.agent = agent; self.version = version; self.sha256 = sha256; self.size = size
        self.unpackedBytes = unpackedBytes; self.files = files; self.format = format; self.source = source
        self.url = url; self.pushedAt = pushedAt; self.pushedBy = pushedBy; self.signedBy = signedBy
        self.irreversible = irreversible; self.migration = migration
    }

    /// The part of `release.json` a release's author may ship inside an archive (or a
    /// hand-dropped release may carry): the rest is batond's to write.
    public struct Declared: Codable, Sendable, Equatable {
        public var irreversible: Bool?
        public var migration: [String]?
        public init(irreversible: Bool? = nil, migration: [String]? = nil) {
            self.irreversible = irreversible
            self.migration = migration
        }
    }

    public static let fileName = "release.json"

    /// The file's bytes: snake_case keys, sorted, pretty-printed for people who look.
    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }

    public static func decode(_ data: Data) throws -> ReleaseManifest {
        try decoder.decode(ReleaseManifest.self, from: data)
    }

    public static func decodeDeclared(_ data: Data) throws -> Declared {
        try decoder.decode(Declared.self, from: data)
    }

    private static var decoder: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }
}
