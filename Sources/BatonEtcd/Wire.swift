import Foundation

// etcd's v3 JSON gateway (grpc-gateway, checked by hand against etcd 3.4.23):
// - Keys and values are base64; int64 fields are strings; fields equal to zero, false or
//   empty are omitted (`succeeded` absent = false, `kvs` absent = none, a keepalive's `TTL`
//   absent = the lease is gone). Requests may spell int64s as strings.
// - A unary error answers with the gRPC code's HTTP status (503 Unavailable, 404 NotFound,
//   400 InvalidArgument/OutOfRange, 401 Unauthenticated, 500 Unknown) and the body
//   `{"error": "...", "message": "...", "code": N}`.
// - Streaming calls (lease/keepalive, watch) answer 200 with one `{"result": {...}}` per
//   line; an error is a line `{"error": {"grpc_code": N, "http_code": H, "message": "..."}}`
//   (with status H when it comes first). A keepalive POST carries one request: the
//   gateway answers once and closes.

/// A decoded JSON object, read leniently the way the gateway writes it.
struct JSONObject {
    let fields: [String: Any]

    init(_ fields: [String: Any]) { self.fields = fields }

    init(parsing bytes: some Collection<UInt8>) throws(EtcdError) {
        let data = Data(bytes)
        guard let object = try? JSONSerialization.jsonObject(with: data), let fields = object as? [String: Any] else {
            throw .badAnswer("not a JSON object: \(String(decoding: data.prefix(200), as: UTF8.self))")
        }
        self.fields = fields
    }

    func object(_ name: String) -> JSONObject? { (fields[name] as? [String: Any]).map(JSONObject.init) }
    func objects(_ name: String) -> [JSONObject] { (fields[name] as? [[String: Any]] ?? []).map(JSONObject.init) }
    func string(_ name: String) -> String? { fields[name] as? String }
    func bool(_ name: String) -> Bool { fields[name] as? Bool ?? false }

    /// An int64, spelled as a string (or, leniently, a number); absent = 0.
    func int64(_ name: String) throws(EtcdError) -> Int64 {
        switch fields[name] {
        case nil: return 0
        case let text as String:
            guard let value = Int64(text) else { throw .badAnswer("\(name) is not an integer: \(text)") }
            return value
        case let number as NSNumber: return number.int64Value
        default: throw .badAnswer("\(name) is not an integer")
        }
    }

    /// Base64 bytes; absent = empty.
    func bytes(_ name: String) throws(EtcdError) -> [UInt8] {
        guard let text = fields[name] as? String else { return [] }
        guard let data = Data(base64Encoded: text) else { throw .badAnswer("\(name) is not base64") }
        return [UInt8](data)
    }

    /// The header's revision.
    func revision() throws(EtcdError) -> Int64 {
        guard let header = object("header") else { throw .badAnswer("no header") }
        return try header.int64("revision")
    }
}

// MARK: - Requests

enum Wire {
    static func base64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }
    static func base64(_ text: String) -> String { base64(Array(text.utf8)) }

    /// The end of the range of keys that start with `prefix`: the prefix with its last
    /// byte below 0xff incremented (and what follows it dropped); "\0" (no end) when there is none.
    static func prefixEnd(_ prefix: String) -> [UInt8] {
        var bytes = Array(prefix.utf8)
        while let last = bytes.last {
            if last < 0xff {
                bytes[bytes.count - 1] = last + 1
                return bytes
            }
            bytes.removeLast()
        }
        return [0]
    }

    /// `key` (and `range_end` for a prefix) of a range or delete request.
    static func keyRange(_ key: String, prefix: Bool) -> [String: Any] {
        var fields: [String: Any] = ["key": base64(key.isEmpty && prefix ? "\0" : key)]
        if prefix { fields["range_end"] = base64(prefixEnd(key)) }
        return fields
    }

    static func put(_ key: String, value: [UInt8], lease: Int64) -> [String: Any] {
        var fields: [String: Any] = ["key": base64(key), "value": base64(value)]
        if lease != 0 { fields["lease"] = String(lease) }
        return fields
    }

    static func compare(_ compare: EtcdCompare) -> [String: Any] {
        // `result` is omitted: EQUAL is its zero value.
        switch compare {
        case .createRevision(let key, let revision):
            ["key": base64(key), "target": "CREATE", "create_revision": String(revision)]
        case .modRevision(let key, let revision):
            ["key": base64(key), "target": "MOD", "mod_revision": String(revision)]
        case .value(let key, let value):
            ["key": base64(key), "target": "VALUE", "value": base64(value)]
        }
    }

    static func operation(_ operation: EtcdOperation) -> [String: Any] {
        switch operation {
        case .put(let key, let value, let lease): ["request_put": put(key, value: value, lease: lease)]
        case .delete(let key, let prefix): ["request_delete_range": keyRange(key, prefix: prefix)]
        case .range(let key, let prefix): ["request_range": keyRange(key, prefix: prefix)]
        }
    }

    static func encode(_ fields: [String: Any]) -> [UInt8] {
        // Only strings, numbers, booleans, arrays and objects are put in: this cannot fail.
        (try? [UInt8](JSONSerialization.data(withJSONObject: fields))) ?? Array("{}".utf8)
    }
}

// MARK: - Answers

extension EtcdKeyValue {
    init(_ object: JSONObject) throws(EtcdError) {
        self.init(key: String(decoding: try object.bytes("key"), as: UTF8.self), value: try object.bytes("value"),
                  createRevision: try object.int64("create_revision"), modRevision: try object.int64("mod_revision"),
                  version: try object.int64("version"), lease: try object.int64("lease"))
    }
}

extension EtcdError {
    /// The error in a non-200 answer or a stream's error line, from either of the
    /// gateway's two shapes (see the top of this file).
    static func answered(status: Int, body: [UInt8]) -> EtcdError {
        guard let object = try? JSONObject(parsing: body) else {
            return .badAnswer("HTTP \(status): \(String(decoding: body.prefix(200), as: UTF8.self))")
        }
        return answered(status: status, object) ?? .badAnswer("HTTP \(status) without an error: \(String(decoding: body.prefix(200), as: UTF8.self))")
    }

    /// The error an answer object carries, or nil when it carries none.
    static func answered(status: Int, _ object: JSONObject) -> EtcdError? {
        let code: Int, message: String
        if let nested = object.object("error") {
            code = (try? nested.int64("grpc_code")).map(Int.init) ?? 0
            message = nested.string("message") ?? "HTTP \(status)"
        } else if let text = object.string("error") {
            code = (try? object.int64("code")).map(Int.init) ?? 0
            message = object.string("message") ?? text
        } else {
            return nil
        }
        // NotFound is how etcd says a lease is gone (put with a lease, revoke).
        if code == GRPCCode.notFound, message.contains("lease not found") { return .leaseNotFound }
        return .failed(code: code, message: message)
    }
}

/// The gRPC status codes the client acts on.
enum GRPCCode {
    static let invalidArgument = 3
    static let notFound = 5
    static let unavailable = 14
    static let unauthenticated = 16
}
