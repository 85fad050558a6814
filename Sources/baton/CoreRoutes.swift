import BatonClient
import BatonCore
import Foundation

// The routes whose answers are built of the core's types (ledger records, the machine
// rollout's phases, the daemon's upgrade attempts): here, so that BatonClient, which
// the agent library uses, needs only BatonWire.

/// `GET /v1/events` as JSON: a page of ledger records, written by batond from the
/// ledger's own lines and read here as `Record`s.
public struct EventPage: Decodable, Sendable, Equatable {
    public var lastSeq: UInt64
    public var oldestSeq: UInt64
    public var records: [Record]
    public var truncated: Bool
}

extension BatonClient {
    /// The ledger's records after `since`, long-polling up to `wait` when there are none.
    public func events(since: UInt64 = 0, wait: Duration = .zero, limit: Int? = nil, agent: String? = nil)
        throws(ClientError) -> Reply<EventPage> {
        var target = "/v1/events?since=\(since)"
        if wait > .zero { target += "&wait=\(Self.seconds(wait))" }
        if let limit { target += "&limit=\(limit)" }
        if let agent { target += "&agent=\(Self.escape(agent))" }
        return try call("GET", target, as: EventPage.self, timeout: wait + timeout)
    }

    /// The ledger's last sequence number now: where to follow from, to see only what
    /// happens next (an empty page of records after it).
    public func lastSeq() throws(ClientError) -> UInt64 {
        try events(since: UInt64(1) << 53, limit: 1).value.lastSeq
    }

    public func machineVersion() throws(ClientError) -> Reply<MachineVersionView> {
        try call("GET", "/v1/version", as: MachineVersionView.self)
    }

    public func setMachineVersion(_ request: VersionRequest) throws(ClientError) -> Reply<MachineVersionView> {
        try call("PUT", "/v1/version", body: request, as: MachineVersionView.self)
    }

    public func daemon() throws(ClientError) -> Reply<DaemonView> {
        try call("GET", "/v1/daemon", as: DaemonView.self)
    }

    /// Streams a batond binary into the daemon's store. `sha256` is its digest (hex).
    public func storeDaemonBinary(file: String, sha256: String, progress: (@Sendable (Int64, Int64) -> Void)? = nil)
        throws(ClientError) -> Reply<StoredBinary> {
        guard let digest = Hex.decode(sha256), digest.count == 32 else { throw .localFile("not a SHA-256: \(sha256)") }
        let headers = [("Content-Type", "application/octet-stream"),
                       ("Content-Digest", "sha-256=:\(Data(digest).base64EncodedString()):")]
        let response = try send(HTTPRequest("PUT", "/v1/daemon/binary", headers: headers, body: .file(path: file),
                                            timeout: timeout, progress: progress))
        return Reply(value: try Self.decode(StoredBinary.self, response), response: response)
    }

    /// Runs the stored binary's self-check and, when it passes, re-executes batond into it
    /// (the answer comes before the exec).
    public func upgradeDaemon(_ request: UpgradeRequest) throws(ClientError) -> Reply<UpgradeAttempt> {
        try call("POST", "/v1/daemon/upgrade", body: request, as: UpgradeAttempt.self, timeout: .seconds(150))
    }

}

extension BatonClient {
    public func fleet() throws(ClientError) -> Reply<FleetView> {
        try call("GET", "/v1/fleet", as: FleetView.self)
    }

    public func setFleet(_ request: FleetSetRequest) throws(ClientError) -> Reply<FleetView> {
        try call("PUT", "/v1/fleet", body: request, as: FleetView.self)
    }

    public func rollbackFleet(_ request: FleetRollbackRequest) throws(ClientError) -> Reply<FleetView> {
        try call("POST", "/v1/fleet/rollback", body: request, as: FleetView.self)
    }

    public func excludeFromFleet(_ request: FleetExcludeRequest) throws(ClientError) -> Reply<FleetView> {
        try call("POST", "/v1/fleet/exclude", body: request, as: FleetView.self)
    }
}
