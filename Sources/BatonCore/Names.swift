/// Validation of the names that become path components: agent names and versions.
/// Anything that reaches the file system passes through here first.
public enum Names {
    /// Agent names: lowercase letters, digits, `.`, `_`, `-`; 1 to 63 characters, starting
    /// with a letter or digit.
    public static func isValidAgent(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...63).contains(bytes.count), isLowerAlnum(bytes[0]) else { return false }
        return bytes.allSatisfy { isLowerAlnum($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }
    }

    /// Versions (release directory names): letters, digits, `.`, `_`, `+`, `-`; 1 to 128
    /// characters, starting with a letter or digit, never `current` or `previous`, no `..`.
    public static func isValidVersion(_ version: String) -> Bool {
        let bytes = Array(version.utf8)
        guard (1...128).contains(bytes.count), isAlnum(bytes[0]) else { return false }
        guard version != "current", version != "previous", !version.contains("..") else { return false }
        return bytes.allSatisfy { isAlnum($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_")
            || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "-") }
    }

    private static func isLowerAlnum(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }

    private static func isAlnum(_ byte: UInt8) -> Bool {
        isLowerAlnum(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
    }
}
