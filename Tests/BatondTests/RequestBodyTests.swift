@testable import BatonAPI
import BatonCore
import BatonHTTP
import BatonTestSupport
import Foundation
import Testing

/// Request bodies as the spec closes them, checked on both sides: api/openapi.yaml against
/// the server's own rules, and the real batond against bodies that bend them.
@Suite("request bodies", .serialized)
struct RequestBodyTests {
    /// The spec's Version pattern and `Names.isValidVersion` are one rule: the same answer
    /// on every example, the edges of each clause included.
    @Test func theVersionPatternIsTheServersRule() throws {
        let spec = try OpenAPISpec.load()
        let pattern = try #require(spec.pattern(of: "Version"), "the Version schema has a single-quoted pattern")
        let regex = try NSRegularExpression(pattern: pattern)
        let examples = ["1.0", "1.4.3", "2.0.0-rc.1+build.7", "a", "Z", "0", "v1_2", String(repeating: "a", count: 128),
                        String(repeating: "a", count: 129), "", "current", "previous", "Current", "currently", "previous1",
                        "xcurrent", "1..2", "1.", "1...2", "..", ".1", "-1", "_1", "+1", "1/2", "../x", "1 0", "1.0\n",
                        "ü", "1\u{0}", "1%2F", "a:b", "a~b"]
        for example in examples {
            let range = NSRange(example.startIndex..., in: example)
            let matches = regex.firstMatch(in: example, options: [], range: range)?.range == range
            // ICU's `$` also matches before a final newline; JSON Schema's (ECMA 262) does not.
            let specSays = matches && !example.hasSuffix("\n")
            #expect(specSays == Names.isValidVersion(example), "\(example.debugDescription): spec \(specSays), server \(Names.isValidVersion(example))")
        }
        // Both request bodies take their version from that one schema, not a copy of it.
        for schema in ["DesiredRequest", "RegistrationRequest"] {
            #expect(spec.property("version", of: schema).contains("          $ref: \"#/components/schemas/Version\""), "\(schema).version")
        }
    }

    /// Each request body the server closes is closed in the spec, with the same fields.
    @Test func closedBodiesListTheServersFields() throws {
        let spec = try OpenAPISpec.load()
        let bodies: [(String, Set<String>)] = [
            ("DesiredRequest", DesiredRequest.fieldNames), ("FailedReport", FailedReport.fieldNames),
            ("RegistrationRequest", RegistrationRequest.fieldNames), ("EmptyObject", EmptyJSONObject.fieldNames),
            ("RollbackRequest", RollbackRequest.fieldNames),
        ]
        for (schema, fields) in bodies {
            #expect(spec.isClosed(schema), "\(schema) has additionalProperties: false")
            #expect(spec.properties(of: schema) == fields, "\(schema)")
        }
    }

    @Test func theRealDaemonRefusesBodiesThatBendTheSchema() throws {
        let daemon = try BatondProcess(configText: "[agents.demo]\ncommand = [\"{release}/bin/demo\"]\n")
        let cases: [(String, String, String, Int, String)] = [
            ("PUT", "/v1/agents/demo/desired", #"{"version":"1.0","restart":true}"#, 422, "invalid_body"),
            ("PUT", "/v1/agents/demo/desired", #"{"version":"1.0","version":"current"}"#, 400, "malformed_json"),
            ("PUT", "/v1/agents/demo/desired", #"{"version":"1..0"}"#, 422, "invalid_version"),
            ("PUT", "/v1/agents/demo/desired", #"["1.0"]"#, 422, "invalid_body"),
            ("POST", "/v1/agents/demo/rollback", #"{"to":"1.0"}"#, 422, "invalid_body"),
            ("POST", "/v1/agents/demo/rollback", #"{"force":"yes"}"#, 422, "invalid_body"),
            ("POST", "/v1/agents/demo/rollback", "{nope", 400, "malformed_json"),
            ("POST", "/v1/agents/demo/instances", #"{"pid":2,"version":"1.0","uid":0}"#, 422, "invalid_body"),
            ("POST", "/v1/agents/demo/instances", #"{"pid":2,"pid":3,"version":"1.0"}"#, 400, "malformed_json"),
        ]
        for (method, path, body, status, code) in cases {
            let response = try daemon.endpoint.json(method, path, token: daemon.token, body)
            #expect(response.status == status, "\(method) \(path) \(body): \(response.text)")
            #expect(response.errorCode == code, "\(method) \(path) \(body): \(response.text)")
        }
        // Rollback with `{}` or no body at all gets past the body to the agent's state.
        #expect(try daemon.endpoint.json("POST", "/v1/agents/demo/rollback", token: daemon.token, "{}").errorCode == "no_previous_release")
        #expect(try daemon.endpoint.request("POST", "/v1/agents/demo/rollback", token: daemon.token).errorCode == "no_previous_release")
    }

    /// The duplicate-key scan is linear: an object of 60,000 keys (just under the 1 MiB
    /// limit) is refused at once. A copy of the key set per key took 47 s here, one request
    /// holding the listener's thread all that time.
    @Test func aBodyOfManyKeysIsRefusedAtOnce() throws {
        let daemon = try BatondProcess(configText: "[agents.demo]\ncommand = [\"{release}/bin/demo\"]\n")
        let body = "{\"version\":\"1.0\"" + (0..<60_000).map { ",\"k\($0)\":\($0)" }.joined() + "}"
        #expect(body.utf8.count < 1 << 20)
        let started = Date()
        let response = try daemon.endpoint.json("PUT", "/v1/agents/demo/desired", token: daemon.token, body)
        #expect(response.errorCode == "invalid_body")
        #expect(Date().timeIntervalSince(started) < 5, "took \(Date().timeIntervalSince(started)) s")
    }

    @Test func aBodyOnARouteThatTakesNoneIsRefused() throws {
        let daemon = try BatondProcess(configText: "[agents.demo]\ncommand = [\"{release}/bin/demo\"]\n")
        for path in ["/v1/status", "/v1/agents/demo", "/healthz"] {
            let response = try daemon.endpoint.json("GET", path, token: daemon.token, #"{"x":1}"#)
            #expect(response.status == 400, "\(path): \(response.text)")
            #expect(response.errorCode == "body_not_allowed", "\(path)")
        }
        #expect(try daemon.endpoint.get("/v1/status", token: daemon.token).status == 200)
    }
}
