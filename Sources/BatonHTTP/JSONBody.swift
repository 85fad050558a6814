import Foundation
import BatonWire

/// A request body that is a JSON object with a closed set of fields: the spec's
/// `additionalProperties: false`. Any other field is refused, not ignored.
public protocol ClosedJSONObject: Decodable {
    /// The fields' names as they are on the wire (snake_case).
    static var fieldNames: Set<String> { get }
}

/// `{}`: the body of routes that take one but read nothing from it.
public struct EmptyJSONObject: ClosedJSONObject, Sendable {
    public static let fieldNames: Set<String> = []
    public init(from decoder: any Decoder) throws {}
}

extension Request {
    /// The body as `T` (`T.decode(body:)`).
    public func decodeJSON<T: ClosedJSONObject>(_ type: T.Type) throws(HTTPError) -> T {
        try T.decode(body: body)
    }

    /// For routes whose body is optional: nil when none was sent, else as `decodeJSON`.
    public func decodeOptionalJSON<T: ClosedJSONObject>(_ type: T.Type) throws(HTTPError) -> T? {
        body.isEmpty ? nil : try decodeJSON(type)
    }
}

extension ClosedJSONObject {
    /// A request body as `Self`. 400 `malformed_json` when there is none, when it is not
    /// JSON, or when an object in it has a key twice (parsers disagree on which one wins,
    /// so neither does); 422 `invalid_body` when it is not an object, has a field `Self`
    /// does not know, or has the wrong shape. Apart from `Request` so that the parser
    /// fuzzer (Tests/Fuzz) runs the routes' own decoding.
    public static func decode(body: [UInt8]) throws(HTTPError) -> Self {
        let type = Self.self
        guard !body.isEmpty else {
            throw HTTPError(status: 400, code: "malformed_json", message: "a JSON body is required")
        }
        let data = Data(body)
        let parsed: Any
        do {
            parsed = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            throw .badJSON("not parseable")
        }
        if let key = JSONDuplicates.firstRepeatedKey(in: body) {
            throw .badJSON("the key \(WireJSON.quote(key)) appears twice in one object")
        }
        guard let object = parsed as? [String: Any] else {
            throw HTTPError(status: 422, code: "invalid_body", message: "the body must be a JSON object")
        }
        if let unknown = object.keys.filter({ !fieldNames.contains($0) }).min() {
            let known = fieldNames.isEmpty ? "none" : fieldNames.sorted().joined(separator: ", ")
            throw HTTPError(status: 422, code: "invalid_body", message: "unknown field \(WireJSON.quote(unknown)) (known: \(known))")
        }
        do {
            return try WireJSON.decoder.decode(type, from: data)
        } catch let DecodingError.keyNotFound(key, _) {
            throw HTTPError(status: 422, code: "invalid_body", message: "missing field \"\(key.stringValue)\"")
        } catch let DecodingError.typeMismatch(_, context) {
            throw HTTPError(status: 422, code: "invalid_body",
                            message: "wrong type at \"\(context.codingPath.map(\.stringValue).joined(separator: "."))\"")
        } catch {
            throw HTTPError(status: 422, code: "invalid_body", message: "the body does not have the expected shape")
        }
    }
}

/// Finds a key repeated within one JSON object. Foundation's parser keeps one of the two
/// silently; this scanner runs on text that parser already accepted, so it only has to
/// follow strings, nesting and commas.
enum JSONDuplicates {
    static func firstRepeatedKey(in bytes: [UInt8]) -> String? {
        /// One open container: an object (its keys so far, and whether a key comes next) or an array.
        struct Container {
            let isObject: Bool
            var keys: Set<String> = []
            var expectingKey: Bool
        }
        var open: [Container] = []
        var index = 0
        while index < bytes.count {
            switch bytes[index] {
            case UInt8(ascii: "{"):
                open.append(Container(isObject: true, expectingKey: true))
            case UInt8(ascii: "["):
                open.append(Container(isObject: false, expectingKey: false))
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                _ = open.popLast()
            case UInt8(ascii: ","):
                if let top = open.indices.last, open[top].isObject { open[top].expectingKey = true }
            case UInt8(ascii: "\""):
                let start = index + 1
                var escaped = false
                index = start
                while index < bytes.count {
                    if escaped { escaped = false } else if bytes[index] == UInt8(ascii: "\\") { escaped = true } else if bytes[index] == UInt8(ascii: "\"") { break }
                    index += 1
                }
                // Through indices, never a copy of the container: a second reference to its
                // set would make every insert copy it, quadratic in the number of keys.
                guard let top = open.indices.last, open[top].isObject, open[top].expectingKey else { break }
                let key = decodeKey(bytes[start..<min(index, bytes.count)])
                guard open[top].keys.insert(key).inserted else { return key }
                open[top].expectingKey = false
            default:
                break
            }
            index += 1
        }
        return nil
    }

    /// A key's text: `"\u0061"` and `"a"` are the same key.
    private static func decodeKey(_ raw: ArraySlice<UInt8>) -> String {
        guard raw.contains(UInt8(ascii: "\\")) else { return String(decoding: raw, as: UTF8.self) }
        let quoted = Data([UInt8(ascii: "\"")] + raw + [UInt8(ascii: "\"")])
        return (try? JSONSerialization.jsonObject(with: quoted, options: [.fragmentsAllowed])) as? String
            ?? String(decoding: raw, as: UTF8.self)
    }
}
