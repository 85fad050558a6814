import Crypto
import Foundation

/// The Ed25519 public keys a release may be signed with, by name (`[releases.trusted_keys]`).
/// A signature is over the 32 bytes of the release's SHA-256 digest, so a signer signs
/// once, whatever the size of the release, and the check needs only the digest.
public struct TrustedKeys: Sendable {
    private let keys: [(name: String, key: Curve25519.Signing.PublicKey)]

    /// `raw`: key name to the 32 raw bytes of its public key (the config checks the size).
    public init(_ raw: [String: [UInt8]]) {
        keys = raw.keys.sorted().compactMap { name in
            (try? Curve25519.Signing.PublicKey(rawRepresentation: raw[name]!)).map { (name, $0) }
        }
    }

    public var isEmpty: Bool { keys.isEmpty }

    /// The name of the first key (by name) under which `signature` verifies over `digest`.
    public func signer(of digest: [UInt8], signature: [UInt8]) -> String? {
        keys.first { $0.key.isValidSignature(signature, for: digest) }?.name
    }

    /// A signature as sent: base64 of its 64 bytes (the `Baton-Signature` header, a
    /// `.sig` file of text), or the 64 bytes themselves (a binary `.sig`).
    public static func parseSignature(_ bytes: [UInt8]) -> [UInt8]? {
        if bytes.count == 64 { return bytes }
        let text = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let decoded = Data(base64Encoded: text), decoded.count == 64 else { return nil }
        return Array(decoded)
    }
}
