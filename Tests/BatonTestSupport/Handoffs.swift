import Foundation

extension BatondProcess {
    /// Asks for `version` and follows the ledger (long-poll) until the handoff ends.
    public func handOff(to version: String, mode: String? = nil, agent: String = "web") throws -> [String: Any] {
        let since = try endpoint.get("/v1/status", token: token).json()["ledger"].flatMap { ($0 as? [String: Any])?["last_seq"] as? Int } ?? 0
        var body = #"{"version":"\#(version)""#
        if let mode { body += #","mode":"\#(mode)""# }
        body += "}"
        let answer = try endpoint.json("PUT", "/v1/agents/\(agent)/desired", token: token, body)
        guard answer.status == 202 else { throw TestFailure("PUT desired: \(answer.status) \(answer.text)") }
        guard let id = try answer.json()["id"] as? String else { throw TestFailure("PUT desired: no handoff id in \(answer.text)") }
        var cursor = since
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let page = try endpoint.get("/v1/events?since=\(cursor)&wait=30", token: token, timeout: 40).json()
            let records = page["records"] as? [[String: Any]] ?? []
            cursor = page["last_seq"] as? Int ?? cursor
            if records.contains(where: { $0["kind"] as? String == "handoff.ended" && ($0["data"] as? [String: Any])?["handoff"] as? String == id }) {
                return try endpoint.get("/v1/handoffs/\(id)", token: token).json()
            }
        }
        throw TestFailure("handoff \(id) did not end")
    }
}
