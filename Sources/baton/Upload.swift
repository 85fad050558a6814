import BatonCore
import Crypto
import Foundation
import Glibc
import Synchronization

/// A file to send: its SHA-256, read once before the upload streams it.
enum Upload {
    static func sha256(of path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw CLIError.failed("cannot read \(path): \(String(cString: strerror(errno)))", code: .error)
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            throw CLIError.failed("\(path) is not a regular file", code: .error)
        }
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw CLIError.failed("cannot read \(path): \(String(cString: strerror(errno)))", code: .error) }
            if n == 0 { break }
            hasher.update(data: buffer[0..<n])
        }
        return Hex.encode(hasher.finalize())
    }

    /// A progress bar on stderr while the upload runs, only when stderr is a terminal;
    /// nil otherwise (piped output stays clean).
    static func progressBar(_ label: String) -> (@Sendable (Int64, Int64) -> Void)? {
        guard Terminal.stderrIsTTY else { return nil }
        let last = Mutex<Int>(-1)
        return { sent, total in
            let percent = total > 0 ? Int(sent * 100 / total) : 100
            let changed = last.withLock { value in
                defer { value = percent }
                return value != percent
            }
            guard changed else { return }
            let width = 30
            let filled = width * percent / 100
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            Terminal.write(STDERR_FILENO, "\r\(label) [\(bar)] \(percent)% \(Format.bytes(sent))/\(Format.bytes(total))"
                + (sent >= total ? "\n" : ""))
        }
    }

    /// Base64 of the Ed25519 signature over the digest's 32 bytes, with the private key in
    /// `keyFile`: OpenSSL's PEM (`openssl genpkey -algorithm ed25519`), or base64 of the
    /// 32-byte seed, or the 32 bytes themselves.
    static func sign(sha256: String, keyFile: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: keyFile) else {
            throw CLIError.failed("cannot read the key file \(keyFile)", code: .error)
        }
        var seed: [UInt8]?
        if data.count == 32 {
            seed = Array(data)
        } else {
            let text = String(decoding: data, as: UTF8.self)
            let base64 = text.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
                .trimmingCharacters(in: .whitespacesAndNewlines)
            if let decoded = Data(base64Encoded: base64) {
                // PKCS#8 of an Ed25519 key: 16 bytes of header, then the 32-byte seed.
                if decoded.count == 32 { seed = Array(decoded) } else if decoded.count == 48 { seed = Array(decoded.suffix(32)) }
            }
        }
        guard let seed, let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: seed) else {
            throw CLIError.failed("\(keyFile) is not an Ed25519 private key (PEM, or base64 of its 32-byte seed)", code: .error)
        }
        guard let digest = Hex.decode(sha256) else { throw CLIError.failed("bad digest \(sha256)", code: .error) }
        do {
            return try key.signature(for: digest).base64EncodedString()
        } catch {
            throw CLIError.failed("cannot sign with \(keyFile): \(error)", code: .error)
        }
    }
}
