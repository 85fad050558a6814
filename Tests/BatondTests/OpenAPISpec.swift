import BatonTestSupport
import Foundation

/// What the tests read from api/openapi.yaml, line by line, so they need no YAML library:
/// the paths and methods (paths at two spaces, methods at four), and the component
/// schemas (names at four spaces, their keys at six, properties at eight).
struct OpenAPISpec {
    struct Operation: Hashable {
        let method: String
        let path: String
    }

    /// What an operation declares about its callers and its body.
    struct Details {
        /// The security schemes that grant it (any one suffices); empty: open to anyone.
        var security: [String]
        /// The media type of its request body, if it takes one.
        var bodyType: String?
    }

    let operations: Set<Operation>
    /// Each operation's security and body; the document's `security` where it has none.
    let details: [Operation: Details]
    /// Each component schema's lines, below its name.
    let schemas: [String: [Substring]]

    static func load() throws -> OpenAPISpec {
        let text = try String(contentsOfFile: Products.packageRoot + "/api/openapi.yaml", encoding: .utf8)
        var operations = Set<Operation>()
        var declared: [Operation: (security: [String]?, bodyType: String?)] = [:]
        var documentSecurity: [String] = []
        var schemas: [String: [Substring]] = [:]
        var section = ""  // "paths:", or "components:" and its part, e.g. "components:schemas:"
        var path: String?
        var operation: Operation?
        var operationPart = ""  // the operation's key being read: "security", "requestBody", ...
        var schema: String?
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if let first = line.first, first != " ", first != "#" { section = String(line); continue }
            if section == "security:", line.hasPrefix("  - "), line.hasSuffix(": []") {
                documentSecurity.append(String(line.dropFirst(4).dropLast(4)))
                continue
            }
            if section.hasPrefix("components:"), line.hasPrefix("  "), !line.hasPrefix("   "), line.hasSuffix(":") {
                section = "components:" + line.dropFirst(2)
                continue
            }
            switch section {
            case "paths:":
                if line.hasPrefix("  /"), line.hasSuffix(":") {
                    path = String(line.dropFirst(2).dropLast())
                    operation = nil
                } else if let path, line.hasPrefix("    "), !line.hasPrefix("     ") {
                    operation = ["get", "put", "post", "delete", "patch"].first(where: { line == "    \($0):" })
                        .map { Operation(method: $0.uppercased(), path: path) }
                    if let operation {
                        operations.insert(operation)
                        declared[operation] = (nil, nil)
                    }
                } else if let operation, line.hasPrefix("      "), !line.hasPrefix("       ") {
                    operationPart = String(line.dropFirst(6).prefix { $0 != ":" })
                    if line == "      security: []" { declared[operation]?.security = [] }
                } else if let operation, operationPart == "security", line.hasPrefix("        - "), line.hasSuffix(": []") {
                    let scheme = String(line.dropFirst(10).dropLast(4))
                    let before = declared[operation]?.security ?? []
                    declared[operation]?.security = before + [scheme]
                } else if let operation, operationPart == "requestBody", declared[operation]?.bodyType == nil,
                          line.hasPrefix("          "), !line.hasPrefix("           "), line.hasSuffix(":") {
                    declared[operation]?.bodyType = String(line.dropFirst(10).dropLast())
                }
            case "components:schemas:":
                if line.hasPrefix("    "), !line.hasPrefix("     "), line.hasSuffix(":") {
                    schema = String(line.dropFirst(4).dropLast())
                } else if let schema, line.hasPrefix("      ") {
                    schemas[schema, default: []].append(line)
                }
            default:
                continue
            }
        }
        let details = declared.mapValues { Details(security: $0.security ?? documentSecurity, bodyType: $0.bodyType) }
        return OpenAPISpec(operations: operations, details: details, schemas: schemas)
    }

    /// A schema's own `pattern`, written as a single-quoted YAML scalar (no escapes but '').
    func pattern(of schema: String) -> String? {
        guard let line = schemas[schema]?.first(where: { $0.hasPrefix("      pattern: '") && $0.hasSuffix("'") }) else { return nil }
        return String(line.dropFirst("      pattern: '".count).dropLast()).replacingOccurrences(of: "''", with: "'")
    }

    /// The names of a schema's `properties`.
    func properties(of schema: String) -> Set<String> {
        var names = Set<String>()
        var inProperties = false
        for line in schemas[schema] ?? [] {
            if line.hasPrefix("      "), !line.hasPrefix("       ") { inProperties = line == "      properties:"; continue }
            if inProperties, line.hasPrefix("        "), !line.hasPrefix("         "), line.hasSuffix(":") {
                names.insert(String(line.dropFirst(8).dropLast()))
            }
        }
        return names
    }

    /// The line of property `name` in `schema` and the lines below it, up to the next property.
    func property(_ name: String, of schema: String) -> [Substring] {
        guard let lines = schemas[schema], let start = lines.firstIndex(of: "        \(name):") else { return [] }
        let rest = lines[(start + 1)...]
        let end = rest.firstIndex { !$0.hasPrefix("         ") } ?? lines.endIndex
        return Array(lines[start..<end])
    }

    func isClosed(_ schema: String) -> Bool {
        schemas[schema]?.contains("      additionalProperties: false") == true
    }
}
