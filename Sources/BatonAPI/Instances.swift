import BatonCore
import BatonHTTP
import BatonReleases
import BatonSupervisor

/// The instance protocol: an agent's process reports ready, failed or stopped, and
/// long-polls its signal with the last one it saw (`seen`) and, if it cares, the last
/// desired version it saw (`seen_desired`). A parked poll is answered when the signal
/// changes or, if it passed `seen_desired`, when the desired version its answer carries
/// changes.
struct InstanceRoutes: Sendable {
    let supervisor: Supervisor
    let maxWait: Duration

    /// Reports wait for their record to be durable; far longer than that means batond is stuck.
    static let reportDeadline: Duration = .seconds(30)
    /// Parked signal long-polls per instance. An agent needs one; a poll whose connection
    /// was cut stays parked unnoticed until its wait ends, so a new one displaces the oldest.
    static let signalWaiters = 2

    /// `POST /v1/instances/{id}/ready`
    func reportReady(_ request: Request) throws(HTTPError) -> Reply {
        _ = try request.decodeOptionalJSON(EmptyJSONObject.self)
        return report(request, .ready)
    }

    /// `POST /v1/instances/{id}/failed`
    func reportFailed(_ request: Request) throws(HTTPError) -> Reply {
        let body = try request.decodeJSON(FailedReport.self)
        return report(request, .failed(reason: String(body.reason.prefix(4096))))
    }

    /// `POST /v1/instances/{id}/stopped`
    func reportStopped(_ request: Request) throws(HTTPError) -> Reply {
        _ = try request.decodeOptionalJSON(EmptyJSONObject.self)
        return report(request, .stopped)
    }

    /// Answers once the report is recorded and acted on, with the signal that follows.
    private func report(_ request: Request, _ report: InstanceReport) -> Reply {
        let id = request.parameters["id"] ?? ""
        let pending = request.park(deadline: Self.reportDeadline) {
            HTTPError(status: 503, code: "timeout", message: "the report was not processed in time").response
        }
        supervisor.report(instance: id, report) { result in
            switch result {
            case .success(let view): pending.answer(.json(view))
            case .failure(let error): pending.answer(error.http.response)
            }
        }
        return .parked
    }

    /// `GET /v1/instances/{id}/signal`
    func signal(_ request: Request) throws(HTTPError) -> Reply {
        let id = request.parameters["id"] ?? ""
        var seen: AgentSignal?
        if let text = request.query("seen") {
            guard let value = AgentSignal(rawValue: text) else {
                throw HTTPError.badParameter("seen", "must be wait, go or stop, not \"\(text)\"")
            }
            seen = value
        }
        // The desired version the agent last saw (empty: none): one it has not seen is news too.
        let seenDesired = request.query("seen_desired")
        if let seenDesired, !seenDesired.isEmpty, !Names.isValidVersion(seenDesired) {
            throw HTTPError.badParameter("seen_desired", "must be a version, or empty for none, not \"\(seenDesired)\"")
        }
        let wait = try request.wait(max: maxWait)
        let registry = supervisor.registry
        guard let now = registry.view(id, seen: seen) else {
            throw HTTPError(status: 404, code: "instance_not_found", message: "no instance \(id)")
        }
        if wait == 0 || seen != now.signal { return .respond(.json(now)) }
        if let seenDesired, seenDesired != now.desired?.version ?? "" { return .respond(.json(now)) }
        let pending = try request.park(deadline: .milliseconds(Int64(wait * 1000)),
                                       limit: ParkLimit(group: "signal \(id)", most: Self.signalWaiters, overflow: .answerOldest)) { [seen] in
            .json(registry.view(id, seen: seen) ?? SignalView(instance: id, signal: .stop, handoff: nil))
        }
        let waiter = InstanceRegistry.Waiter(seen: seen, followsDesired: seenDesired != nil, answer: { pending.answer(.json($0)) },
                                             isAnswered: { pending.isAnswered })
        if let changed = registry.signalOrPark(id, seen: seen, seenDesired: seenDesired, waiter: waiter) {
            pending.answer(.json(changed))
        }
        return .parked
    }
}

/// The operator's side of handoffs: ask for a version, roll back, follow a handoff.
struct HandoffRoutes: Sendable {
    let supervisor: Supervisor
    let ledger: @Sendable () -> LedgerState
    /// The longest `wait` of `GET /v1/handoffs/{id}`, and how many may be parked at once.
    let maxWait: Duration
    let maxWaiters: Int

    /// `GET /v1/handoffs`: the default and the largest `limit`.
    static let listLimit = (default: 20, most: 1000)

    /// `PUT /v1/agents/{name}/desired`
    func setDesired(_ request: Request) throws(HTTPError) -> Reply {
        let name = try request.agentName()
        let body = try request.decodeJSON(DesiredRequest.self)
        guard Names.isValidVersion(body.version) else {
            throw HTTPError(status: 422, code: "invalid_version", message: "\"\(body.version)\" is not a valid version")
        }
        let by = (request.principal as? Principal)?.name ?? "operator"
        guard let startsReleases = supervisor.startsReleases(of: name) else { throw SupervisorError.agentNotFound(name).http }
        if !startsReleases {
            try Self.validateSource(body)
            let pending = request.park(deadline: .seconds(60)) { Self.busy }
            supervisor.recordDesired(agent: name, body, by: by) { result in
                switch result {
                case .success(let desired): pending.answer(.json(status: 202, desired))
                case .failure(let error): pending.answer(error.http.response)
                }
            }
            return .parked
        }
        if body.url != nil || body.sha256 != nil { throw SupervisorError.notExternal(name).http }
        let pending = request.park(deadline: .seconds(60)) { Self.busy }
        supervisor.setDesired(agent: name, version: body.version, mode: body.mode, by: by, force: body.force ?? false) { result in
            switch result {
            case .success(.handoff(let view)): pending.answer(.json(status: 202, view))
            case .success(.unchanged(let agent, let version)): pending.answer(.json(status: 200, UnchangedView(agent: agent, version: version)))
            case .failure(let error): pending.answer(error.http.response)
            }
        }
        return .parked
    }

    /// `POST /v1/agents/{name}/rollback`
    func rollback(_ request: Request) throws(HTTPError) -> Reply {
        let name = try request.agentName()
        let body = try request.decodeOptionalJSON(RollbackRequest.self)
        let by = (request.principal as? Principal)?.name ?? "operator"
        let pending = request.park(deadline: .seconds(60)) { Self.busy }
        supervisor.rollback(agent: name, by: by, force: body?.force ?? false) { result in pending.answer(Self.answer(result)) }
        return .parked
    }

    /// `POST /v1/agents/{name}/instances`
    func register(_ request: Request) throws(HTTPError) -> Reply {
        let name = try request.agentName()
        let body = try request.decodeJSON(RegistrationRequest.self)
        let pending = request.park(deadline: .seconds(60)) { Self.busy }
        let caller: RegistrationCaller = switch request.peer {
        case .unix(let credentials?): .unix(pid: credentials.pid, uid: credentials.uid)
        case .unix(nil), .tcp: .unverified
        }
        supervisor.register(agent: name, pid: body.pid, version: body.version, caller: caller) { result in
            switch result {
            case .success(let registration): pending.answer(.json(status: 201, registration))
            case .failure(let error): pending.answer(error.http.response)
            }
        }
        return .parked
    }

    /// `GET /v1/handoffs`
    func listHandoffs(_ request: Request) throws(HTTPError) -> Reply {
        let agent = try request.agentFilter()
        let limit = try request.integer("limit", default: Self.listLimit.default, range: 1...Self.listLimit.most)
        return .respond(.json(HandoffList(handoffs: list(agent: agent, limit: limit))))
    }

    /// One handoff; with `wait`, parked until it has an outcome or the wait ends (then
    /// answered as it is).
    func handoff(_ request: Request) throws(HTTPError) -> Reply {
        let id = request.parameters["id"] ?? ""
        let wait = try request.wait(max: maxWait)
        guard let view = supervisor.handoffs.view(id) ?? historical(id) else {
            throw HTTPError(status: 404, code: "handoff_not_found", message: "no handoff \(id)")
        }
        if wait == 0 || view.outcome != nil { return .respond(.json(view)) }
        let book = supervisor.handoffs
        let pending = try request.park(deadline: .milliseconds(Int64(wait * 1000)),
                                       limit: ParkLimit(group: "handoff waits", most: maxWaiters, overflow: .refuse)) {
            .json(book.view(id) ?? view)
        }
        if let ended = book.whenEnded(id, .init(ended: { pending.answer(.json($0)) }, isAnswered: { pending.isAnswered })) {
            pending.answer(.json(ended))
        }
        return .parked
    }

    /// The handoffs of every agent (or of `agent`), newest first: the one running, then
    /// the ledger's history, as this run of batond saw them when it did (with steps).
    private func list(agent: String?, limit: Int) -> [HandoffView] {
        let book = Dictionary(uniqueKeysWithValues: supervisor.handoffs.all.map { ($0.id, $0) })
        var views: [HandoffView] = []
        for (name, state) in ledger().agents where agent == nil || name == agent {
            if let active = state.handoff {
                views.append(book[active.id] ?? HandoffView(
                    id: active.id, agent: name, from: active.from, to: active.to, mode: active.mode, phase: active.phase,
                    outcome: nil, error: nil, gapMs: nil, startedAt: active.startedAt, endedAt: nil, steps: [], by: active.by))
            }
            for summary in state.history.suffix(limit) {
                views.append(book[summary.id] ?? Self.view(of: summary, agent: name))
            }
        }
        // Newest first; within one agent, by the handoff's number (`web-12` after `web-9`).
        views.sort { a, b in
            if a.startedAt != b.startedAt { return a.startedAt > b.startedAt }
            if a.agent != b.agent { return a.agent < b.agent }
            return Self.number(a.id) > Self.number(b.id)
        }
        return Array(views.prefix(limit))
    }

    private static func number(_ id: String) -> Int {
        id.split(separator: "-").last.flatMap { Int($0) } ?? 0
    }

    private static func view(of summary: HandoffSummary, agent: String) -> HandoffView {
        HandoffView(id: summary.id, agent: agent, from: summary.from, to: summary.to, mode: summary.mode,
                    phase: summary.outcome.rawValue, outcome: summary.outcome, error: summary.error,
                    gapMs: summary.gapMs, startedAt: summary.startedAt, endedAt: summary.endedAt, steps: [], by: summary.by)
    }

    static let busy = HTTPError(status: 503, code: "timeout", message: "the request was not processed in time").response

    /// An external agent's desired version may say where to fetch it, checked as a fetch's:
    /// a URL batond itself would fetch from, and a digest to check it against.
    static func validateSource(_ body: DesiredRequest) throws(HTTPError) {
        if let sha256 = body.sha256, !Hex.isSHA256(sha256.lowercased()) {
            throw HTTPError(status: 422, code: "invalid_digest", message: "sha256 must be 64 hex digits, not \(WireJSON.quote(sha256))")
        }
        if let url = body.url {
            if let reason = Download.validate(url: url) {
                throw HTTPError(status: 422, code: "invalid_url", message: "url \(WireJSON.quote(url)): \(reason)")
            }
            guard body.sha256 != nil else {
                throw HTTPError(status: 422, code: "invalid_digest", message: "a url needs its sha256: the agent checks what it downloads")
            }
        }
    }

    /// A handoff of an earlier run of batond, from the ledger's history.
    private func historical(_ id: String) -> HandoffView? {
        for (agent, state) in ledger().agents {
            if let summary = state.history.last(where: { $0.id == id }) { return Self.view(of: summary, agent: agent) }
        }
        return nil
    }

    static func answer(_ result: Result<HandoffView, SupervisorError>) -> Response {
        switch result {
        case .success(let view):
            return .json(status: 202, view)
        case .failure(let error):
            return error.http.response
        }
    }
}

extension SupervisorError {
    var http: HTTPError {
        switch self {
        case .agentNotFound(let name):
            HTTPError(status: 404, code: "agent_not_found", message: "no agent named \"\(name)\" is configured")
        case .noSuchProcess(let pid):
            HTTPError(status: 422, code: "no_such_process", message: "no process \(pid) runs on this machine")
        case .invalidVersion(let version):
            HTTPError(status: 422, code: "invalid_version", message: "\"\(version)\" is not a valid version")
        case .releaseNotFound(let agent, let version):
            HTTPError(status: 404, code: "release_not_found", message: "no release \(version) of \(agent) (releases/\(agent)/\(version)/)")
        case .handoffInProgress(let id):
            HTTPError(status: 409, code: "handoff_in_progress", message: "handoff \(id) is in progress; see /v1/handoffs/\(id)")
        case .noPreviousRelease(let agent):
            HTTPError(status: 409, code: "no_previous_release", message: "\(agent) has no previous release to roll back to")
        case .irreversibleRelease(let agent, let version, let previous):
            HTTPError(status: 409, code: "irreversible_release",
                      message: "\(agent)'s release \(version) is irreversible: it may have migrated data that \(previous) cannot read. "
                          + "Roll back anyway with {\"force\": true}, or set a desired version")
        case .shuttingDown:
            HTTPError.shuttingDown
        case .ledger(let detail):
            HTTPError(status: 503, code: "ledger_unavailable", message: detail)
        case .instanceNotFound(let id):
            HTTPError(status: 404, code: "instance_not_found", message: "no instance \(id)")
        case .registrationRefused(let reason):
            HTTPError(status: 403, code: "registration_refused", message: reason)
        case .alreadyRegistered(let pid, let instance):
            HTTPError(status: 409, code: "already_registered", message: "process \(pid) is already instance \(instance)")
        case .rolloutInProgress(let rollout):
            HTTPError(status: 409, code: "rollout_in_progress",
                      message: "rollout \(rollout) moves this agent; wait for it to end (GET /v1/version)")
        case .externalAgent(let agent):
            HTTPError(status: 409, code: "external_agent",
                      message: "batond does not start \(agent) (external = true): set a desired version, which its instances fetch and start")
        case .notExternal(let agent):
            HTTPError(status: 422, code: "not_external",
                      message: "url and sha256 are for external agents; batond starts \(agent) from a stored release (push or fetch it first)")
        }
    }
}

// The request bodies' fields, as api/openapi.yaml lists them (`additionalProperties: false`;
// BatondTests checks the two agree): any other field is refused.
extension RegistrationRequest: ClosedJSONObject {
    public static let fieldNames: Set<String> = ["pid", "version"]
}

extension DesiredRequest: ClosedJSONObject {
    public static let fieldNames: Set<String> = ["version", "mode", "url", "sha256", "force"]
}

extension RollbackRequest: ClosedJSONObject {
    public static let fieldNames: Set<String> = ["force"]
}

extension FailedReport: ClosedJSONObject {
    public static let fieldNames: Set<String> = ["reason"]
}
