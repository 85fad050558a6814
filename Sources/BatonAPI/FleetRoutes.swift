import BatonCore
import BatonFleet
import BatonHTTP

/// `/v1/fleet`: the fleet as this host sees it, and the fleet's plan (operator only).
/// Every answer reads etcd, so each parks until it has one (within the request timeout
/// of `[fleet]`, and never longer than a minute).
struct FleetRoutes: Sendable {
    let fleet: Fleet?

    /// `GET /v1/fleet`
    func get(_ request: Request) throws(HTTPError) -> Reply {
        let fleet = try enabled()
        return park(request) { () async throws(FleetRefusal) -> FleetView in await fleet.view() }
    }

    /// `PUT /v1/fleet`
    func set(_ request: Request) throws(HTTPError) -> Reply {
        let fleet = try enabled()
        let body = try request.decodeJSON(FleetSetRequest.self)
        let by = request.by
        return park(request) { () async throws(FleetRefusal) -> FleetView in try await fleet.set(body, by: by) }
    }

    /// `POST /v1/fleet/rollback`
    func rollback(_ request: Request) throws(HTTPError) -> Reply {
        let fleet = try enabled()
        let body = try request.decodeOptionalJSON(FleetRollbackRequest.self) ?? FleetRollbackRequest()
        let by = request.by
        return park(request) { () async throws(FleetRefusal) -> FleetView in try await fleet.rollback(body, by: by) }
    }

    /// `POST /v1/fleet/exclude`
    func exclude(_ request: Request) throws(HTTPError) -> Reply {
        let fleet = try enabled()
        let body = try request.decodeJSON(FleetExcludeRequest.self)
        let by = request.by
        return park(request) { () async throws(FleetRefusal) -> FleetView in try await fleet.exclude(body, by: by) }
    }

    private func enabled() throws(HTTPError) -> Fleet {
        guard let fleet else {
            throw HTTPError(status: 404, code: "fleet_off", message: "fleet mode is off: batond's configuration has no [fleet] section")
        }
        return fleet
    }

    private func park(_ request: Request, _ work: @escaping @Sendable () async throws(FleetRefusal) -> FleetView) -> Reply {
        let pending = request.park(deadline: .seconds(60)) {
            HTTPError(status: 503, code: "etcd_unavailable", message: "etcd did not answer in time").response
        }
        Task {
            do throws(FleetRefusal) {
                pending.answer(.json(try await work()))
            } catch {
                pending.answer(error.http.response)
            }
        }
        return .parked
    }
}

extension FleetRefusal {
    var http: HTTPError {
        switch self {
        case .invalid: HTTPError(status: 422, code: "invalid_plan", message: description)
        case .conflict: HTTPError(status: 409, code: "plan_changed", message: description)
        case .notFound: HTTPError(status: 404, code: "no_plan", message: description)
        case .unreachable: HTTPError(status: 503, code: "etcd_unavailable", message: description)
        }
    }
}

extension FleetSetRequest: ClosedJSONObject {
    public static let fieldNames: Set<String> = ["version", "releases", "url_template", "agents", "barrier", "canary", "max_unavailable",
                                                 "soak_ms", "failure_threshold", "exclude", "expect_revision"]
}

extension FleetRollbackRequest: ClosedJSONObject {
    public static let fieldNames: Set<String> = ["max_unavailable", "expect_revision"]
}

extension FleetExcludeRequest: ClosedJSONObject {
    public static let fieldNames: Set<String> = ["hosts"]
}
