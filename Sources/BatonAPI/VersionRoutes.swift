import BatonCore
import BatonHTTP
import BatonSupervisor

/// `PUT /v1/version` and `GET /v1/version`: the machine's version (operator only).
struct VersionRoutes: Sendable {
    let rollouts: Rollouts

    /// `GET /v1/version`
    func getVersion(_ request: Request) throws(HTTPError) -> Reply {
        .respond(.json(rollouts.view))
    }

    /// `PUT /v1/version`
    func setVersion(_ request: Request) throws(HTTPError) -> Reply {
        let body = try request.decodeJSON(VersionRequest.self)
        guard Names.isValidVersion(body.version) else {
            throw HTTPError(status: 422, code: "invalid_version", message: "\(WireJSON.quote(body.version)) is not a valid version")
        }
        let by = request.by
        let pending = request.park(deadline: .seconds(60)) {
            HTTPError(status: 503, code: "timeout", message: "the rollout was not recorded in time; see GET /v1/version").response
        }
        Task {
            do throws(RolloutRefusal) {
                pending.answer(.json(status: 202, try await rollouts.begin(version: body.version, barrier: body.barrier ?? false, by: by)))
            } catch {
                pending.answer(error.http.response)
            }
        }
        return .parked
    }
}

extension VersionRequest: ClosedJSONObject {
    public static let fieldNames: Set<String> = ["version", "barrier"]
}

extension RolloutRefusal {
    var http: HTTPError {
        switch self {
        case .invalidVersion: HTTPError(status: 422, code: "invalid_version", message: description)
        case .noRelease: HTTPError(status: 404, code: "release_not_found", message: description)
        case .inProgress: HTTPError(status: 409, code: "rollout_in_progress", message: description)
        case .ledger: HTTPError(status: 503, code: "ledger_unavailable", message: description)
        }
    }
}
