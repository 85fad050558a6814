import BatonCore
import Foundation
import Testing

@Suite("wire encoding")
struct WireTests {
    /// The contract lists every field of an agent's `last_error` and says fields without a
    /// value are null, never left out (schemathesis found `handoff` missing).
    @Test func lastErrorWithoutAHandoffEncodesItAsNull() throws {
        let error = try JSONDecoder().decode(LastError.self, from: Data(#"{"reason":"exited","at":"2025-11-24T22:42:07.315Z","stderrTail":""}"#.utf8))
        let object = try #require(JSONSerialization.jsonObject(with: JSONEncoder().encode(error)) as? [String: Any])
        #expect(Set(object.keys) == ["reason", "at", "stderrTail", "handoff"])
        #expect(object["handoff"] is NSNull)
    }
}
