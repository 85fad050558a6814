import BatonTestSupport
import Foundation

/// The paths and methods of api/openapi.yaml, read line by line (paths at two spaces,
/// methods at four), so the test needs no YAML library.
struct OpenAPISpec {
    struct Operation: Hashable {
        let method: String
        let path: String
    }

    let operations: Set<Operation>

    static func load() throws -> OpenAPISpec {
        let text = try String(contentsOfFile: Products.packageRoot + "/api/openapi.yaml", encoding: .utf8)
        var operations = Set<Operation>()
        var inPaths = false
        var path: String?
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("paths:") { inPaths = true; continue }
            guard inPaths else { continue }
            if let first = line.first, first != " ", first != "#" { break }
            if line.hasPrefix("  /"), line.hasSuffix(":") {
                path = String(line.dropFirst(2).dropLast())
            } else if let path, line.hasPrefix("    "), !line.hasPrefix("     "),
                      let method = ["get", "put", "post", "delete", "patch"].first(where: { line == "    \($0):" }) {
                operations.insert(Operation(method: method.uppercased(), path: path))
            }
        }
        return OpenAPISpec(operations: operations)
    }
}
