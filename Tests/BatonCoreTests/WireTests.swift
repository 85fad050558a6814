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

    /// A signal answer always has `desired` (null while the instance runs it), and a
    /// desired version leaves out the digest and URL it does not know. Answers written
    /// before `desired` existed still decode.
    @Test func theSignalCarriesDesiredAsNullOrWithWhatIsKnown() throws {
        let plain = try #require(JSONSerialization.jsonObject(with: JSONEncoder().encode(SignalView(instance: "a.1", signal: .go, handoff: nil))) as? [String: Any])
        #expect(Set(plain.keys) == ["instance", "signal", "handoff", "desired"])
        #expect(plain["desired"] is NSNull)
        let at = Timestamp(milliseconds: 1_795_560_776_824)
        let bare = DesiredVersion(version: "2.0", mode: .parallel, setAt: at, setBy: "uid 0")
        let view = SignalView(instance: "a.1", signal: .go, handoff: nil, desired: bare)
        let object = try #require(JSONSerialization.jsonObject(with: JSONEncoder().encode(view)) as? [String: Any])
        #expect(Set((object["desired"] as? [String: Any] ?? [:]).keys) == ["version", "mode", "setAt", "setBy"])
        let old = try JSONDecoder().decode(SignalView.self, from: Data(#"{"instance":"a.1","signal":"wait","handoff":null}"#.utf8))
        #expect(old == SignalView(instance: "a.1", signal: .wait, handoff: nil))
    }

    /// A ledger state written before desired versions had a URL still loads.
    @Test func aDesiredVersionWithoutURLDecodes() throws {
        let text = #"{"version":"2.0","mode":"parallel","setAt":"2025-11-24T22:42:07.315Z","setBy":"uid 0"}"#
        let desired = try JSONDecoder().decode(DesiredVersion.self, from: Data(text.utf8))
        #expect(desired.url == nil && desired.sha256 == nil && desired.version == "2.0")
    }
}
