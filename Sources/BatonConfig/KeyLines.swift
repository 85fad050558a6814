import BatonCore
import Foundation

/// Finds the line each key is defined on in a TOML text. TOMLKit reports positions for
/// syntax errors only, so validation errors look their keys up here.
/// It understands table headers (`[a.b]`, `[[a]]`), `key = value` lines, dotted and
/// quoted keys; keys inside inline tables resolve to the line of the table's key.
/// Keys are paths of components, never dotted strings: `[agents."a.b"]` is the path
/// `["agents", "a.b"]`, apart from `[agents.a.b]`. Lines end at LF, with or without a CR
/// before it, as TOML allows.
struct KeyLines {
    private var lines: [[String]: Int] = [:]

    init(_ text: String) {
        var table: [String] = []
        var number = 0
        var inMultiline: String?
        // By bytes: a Swift String takes "\r\n" as one Character, so splitting its
        // Characters at "\n" would never split a CRLF file at all.
        for bytes in text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            number += 1
            let raw = bytes.last == UInt8(ascii: "\r") ? bytes.dropLast() : bytes[...]
            var line = Substring(String(decoding: raw, as: UTF8.self))
            if let delimiter = inMultiline {
                if line.contains(delimiter) { inMultiline = nil }
                continue
            }
            line = line.drop { $0 == " " || $0 == "\t" }
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("[") {
                let inner = line.hasPrefix("[[") ? line.dropFirst(2) : line.dropFirst()
                guard let close = Self.unquoted("]", in: inner) else { continue }
                table = Self.keyPath(inner[..<close])
                if lines[table] == nil { lines[table] = number }
                continue
            }
            guard let equals = Self.unquoted("=", in: line) else { continue }
            let path = table + Self.keyPath(line[..<equals])
            if lines[path] == nil { lines[path] = number }
            let value = line[line.index(after: equals)...].drop { $0 == " " }
            for delimiter in ["\"\"\"", "'''"] where value.hasPrefix(delimiter) {
                if !value.dropFirst(3).contains(delimiter) { inMultiline = delimiter }
            }
        }
    }

    /// The line of `path`, or of its nearest defined parent.
    func line(of path: [String]) -> Int? {
        var parts = path
        while !parts.isEmpty {
            if let line = lines[parts] { return line }
            parts.removeLast()
        }
        return nil
    }

    /// Index of the first `character` outside quotes.
    private static func unquoted(_ character: Character, in line: Substring) -> Substring.Index? {
        var quote: Character?
        for index in line.indices {
            let char = line[index]
            if let open = quote {
                if char == open { quote = nil }
            } else if char == "\"" || char == "'" {
                quote = char
            } else if char == character {
                return index
            }
        }
        return nil
    }

    /// Splits `a."b.c".d` into `["a", "b.c", "d"]`.
    static func keyPath(_ text: Substring) -> [String] {
        var parts: [String] = []
        var current = ""
        var quote: Character?
        for char in text {
            if let open = quote {
                if char == open { quote = nil } else { current.append(char) }
            } else if char == "\"" || char == "'" {
                quote = char
            } else if char == "." {
                parts.append(current.trimmed(of: " \t"))
                current = ""
            } else {
                current.append(char)
            }
        }
        parts.append(current.trimmed(of: " \t"))
        return parts
    }

    /// A path as TOML spells it, for messages: components that are not bare keys are
    /// quoted, `agents."a/../b".command`.
    static func spelled(_ path: [String]) -> String {
        path.map { part in
            let bare = !part.isEmpty && part.utf8.allSatisfy { byte in
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                    || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
            }
            return bare ? part : "\"" + part.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        }.joined(separator: ".")
    }
}
