import BatonCore

/// Finds the line each dotted key is defined on in a TOML text. TOMLKit reports
/// positions for syntax errors only, so validation errors look their keys up here.
/// It understands table headers (`[a.b]`, `[[a]]`), `key = value` lines, dotted and
/// quoted keys; keys inside inline tables resolve to the line of the table's key.
struct KeyLines {
    private var lines: [String: Int] = [:]

    init(_ text: String) {
        var table: [String] = []
        var number = 0
        var inMultiline: String?
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            number += 1
            var line = Substring(raw)
            if let delimiter = inMultiline {
                if line.contains(delimiter) { inMultiline = nil }
                continue
            }
            line = line.drop { $0 == " " || $0 == "\t" }
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("[") {
                let inner = line.hasPrefix("[[") ? line.dropFirst(2) : line.dropFirst()
                guard let close = inner.firstIndex(of: "]") else { continue }
                table = Self.keyPath(inner[..<close])
                let full = table.joined(separator: ".")
                if lines[full] == nil { lines[full] = number }
                continue
            }
            guard let equals = Self.assignment(in: line) else { continue }
            let path = table + Self.keyPath(line[..<equals])
            let full = path.joined(separator: ".")
            if lines[full] == nil { lines[full] = number }
            let value = line[line.index(after: equals)...].drop { $0 == " " }
            for delimiter in ["\"\"\"", "'''"] where value.hasPrefix(delimiter) {
                if !value.dropFirst(3).contains(delimiter) { inMultiline = delimiter }
            }
        }
    }

    /// The line of `key`, or of its nearest defined parent.
    func line(of key: String) -> Int? {
        var parts = key.split(separator: ".").map(String.init)
        while !parts.isEmpty {
            if let line = lines[parts.joined(separator: ".")] { return line }
            parts.removeLast()
        }
        return nil
    }

    /// Index of the `=` outside quotes, if the line is an assignment.
    private static func assignment(in line: Substring) -> Substring.Index? {
        var quote: Character?
        for index in line.indices {
            let char = line[index]
            if let open = quote {
                if char == open { quote = nil }
            } else if char == "\"" || char == "'" {
                quote = char
            } else if char == "=" {
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
}
