import BatonCore
import BatonHTTP
import BatonReleases
import BatonSupervisor
import Dispatch
import Foundation

/// `/v1/releases/...`: push, list, show, delete (operator only).
struct ReleaseRoutes: Sendable {
    let releases: Releases

    /// `PUT /v1/releases/{agent}/{version}`'s body: decided from the head (digest,
    /// signature, immutability, free space), then streamed into the release's intake.
    var pushBody: StreamedBody {
        StreamedBody(maxBytes: Int(clamping: releases.settings.maxBytes)) { [releases] (request) throws(HTTPError) -> any BodySink in
            let (agent, version) = try request.release()
            let announcement = Releases.Announcement(
                agent: agent, version: version, sha256: try request.announcedSHA256(),
                signature: try request.signature(), length: request.header("Content-Length").flatMap { Int64($0) },
                irreversible: try request.flag("irreversible"), by: request.by)
            do throws(ReleaseRefusal) {
                return ReleaseSink(try releases.announce(announcement))
            } catch {
                throw error.http
            }
        }
    }

    /// `PUT /v1/releases/{agent}/{version}`
    func push(_ request: Request) throws(HTTPError) -> Reply {
        guard let sink = request.sink as? ReleaseSink else {
            throw HTTPError(status: 500, code: "internal", message: "the push lost its sink")
        }
        // Unpacking a large archive takes time: the slot waits as long as the body could.
        let pending = request.park(deadline: .seconds(600)) {
            HTTPError(status: 503, code: "timeout", message: "storing the release took too long; see GET /v1/releases/{agent}/{version}").response
        }
        Task {
            do throws(ReleaseRefusal) {
                let stored = try await releases.complete(sink.intake)
                pending.answer(.json(status: stored.created ? 201 : 200, stored.view))
            } catch {
                pending.answer(error.http.response)
            }
        }
        return .parked
    }

    /// `POST /v1/releases/{agent}/{version}`
    func fetch(_ request: Request) throws(HTTPError) -> Reply {
        let (agent, version) = try request.release()
        let body = try request.decodeJSON(FetchRequest.self)
        guard Hex.isSHA256(body.sha256.lowercased()), let digest = Hex.decode(body.sha256) else {
            throw HTTPError(status: 422, code: "invalid_digest", message: "sha256 must be 64 hex digits, not \(WireJSON.quote(body.sha256))")
        }
        var signature: [UInt8]?
        if let text = body.signature {
            guard let parsed = TrustedKeys.parseSignature(Array(text.utf8)) else {
                throw HTTPError(status: 422, code: "invalid_signature", message: "signature must be the base64 of a 64-byte Ed25519 signature")
            }
            signature = parsed
        }
        let fetch = Releases.FetchRequest(agent: agent, version: version, url: body.url, sha256: digest, signature: signature,
                                          irreversible: body.irreversible ?? false, by: request.by)
        // Looking for <url>.sig may take a moment: the answer waits for it.
        let pending = request.park(deadline: .seconds(60)) {
            HTTPError(status: 503, code: "timeout", message: "the fetch did not start in time; see GET /v1/releases/{agent}/{version}").response
        }
        Task {
            do throws(ReleaseRefusal) {
                switch try await releases.fetch(fetch) {
                case .started(let view):
                    var response = Response.json(status: 202, view)
                    response.headers.append((name: "Location", value: "/v1/releases/\(agent)/\(version)"))
                    pending.answer(response)
                case .stored(let view):
                    pending.answer(.json(status: 200, view))
                }
            } catch {
                pending.answer(error.http.response)
            }
        }
        return .parked
    }

    /// `GET /v1/releases/{agent}`
    func listReleases(_ request: Request) throws(HTTPError) -> Reply {
        let agent = try request.releaseAgent()
        do throws(ReleaseRefusal) {
            return .respond(.json(try releases.list(agent: agent)))
        } catch {
            throw error.http
        }
    }

    /// `GET /v1/releases/{agent}/{version}`
    func getRelease(_ request: Request) throws(HTTPError) -> Reply {
        let (agent, version) = try request.release()
        do throws(ReleaseRefusal) {
            return .respond(.json(try releases.view(agent: agent, version: version)))
        } catch {
            throw error.http
        }
    }

    /// `DELETE /v1/releases/{agent}/{version}`
    func deleteRelease(_ request: Request) throws(HTTPError) -> Reply {
        let (agent, version) = try request.release()
        let by = request.by
        let pending = request.park(deadline: .seconds(120)) {
            HTTPError(status: 503, code: "timeout", message: "removing the release took too long; see GET /v1/releases/{agent}").response
        }
        Task {
            do throws(ReleaseRefusal) {
                try await releases.delete(agent: agent, version: version, by: by)
                pending.answer(Response(status: 204))
            } catch {
                pending.answer(error.http.response)
            }
        }
        return .parked
    }
}

extension FetchRequest: ClosedJSONObject {
    public static let fieldNames: Set<String> = ["url", "sha256", "signature", "irreversible"]
}

/// The HTTP layer's view of a push's intake.
final class ReleaseSink: BodySink {
    let intake: Releases.Intake

    init(_ intake: Releases.Intake) { self.intake = intake }

    func write(_ bytes: UnsafeRawBufferPointer) throws(HTTPError) {
        do throws(ReleaseRefusal) { try intake.write(bytes) } catch { throw error.http }
    }
}

extension ReleaseRefusal {
    var http: HTTPError {
        switch self {
        case .agentNotFound: HTTPError(status: 404, code: "agent_not_found", message: description)
        case .notFound: HTTPError(status: 404, code: "release_not_found", message: description)
        case .busy: HTTPError(status: 409, code: "release_busy", message: description)
        case .conflict: HTTPError(status: 409, code: "release_exists", message: description)
        case .inUse: HTTPError(status: 409, code: "release_in_use", message: description)
        case .signatureRequired: HTTPError(status: 403, code: "signature_required", message: description)
        case .badSignature: HTTPError(status: 403, code: "bad_signature", message: description)
        case .badURL: HTTPError(status: 422, code: "invalid_url", message: description)
        case .signatureUnavailable: HTTPError(status: 502, code: "signature_unavailable", message: description)
        case .ledger: HTTPError(status: 503, code: "ledger_unavailable", message: description)
        case .store(let error):
            switch error {
            case .invalidName: HTTPError(status: 400, code: "invalid_name", message: description)
            case .tooLarge(let limit): HTTPError.payloadTooLarge(limit: Int(clamping: limit))
            case .digestMismatch: HTTPError(status: 422, code: "digest_mismatch", message: description)
            case .unsupportedFormat: HTTPError(status: 415, code: "unsupported_release", message: description)
            case .unsafeArchive: HTTPError(status: 422, code: "unsafe_archive", message: description)
            case .insufficientSpace, .noSpace: HTTPError(status: 507, code: "insufficient_storage", message: description)
            case .exists: HTTPError(status: 409, code: "release_exists", message: description)
            case .io: HTTPError(status: 503, code: "store_failed", message: "the release could not be stored: \(description); nothing was kept")
            }
        }
    }
}

extension Request {
    /// The principal's name, as the ledger records who asked.
    var by: String { (principal as? Principal)?.name ?? "operator" }

    func releaseAgent() throws(HTTPError) -> String {
        let agent = parameters["agent"] ?? ""
        guard Names.isValidAgent(agent) else {
            throw HTTPError(status: 400, code: "invalid_name", message: "\(WireJSON.quote(agent)) is not a valid agent name")
        }
        return agent
    }

    /// `{agent}` and `{version}` of the path, validated before they touch a path.
    func release() throws(HTTPError) -> (agent: String, version: String) {
        let agent = try releaseAgent()
        let version = parameters["version"] ?? ""
        guard Names.isValidVersion(version) else {
            throw HTTPError(status: 400, code: "invalid_version",
                            message: "\(WireJSON.quote(version)) is not a valid version: 1 to 128 of letters, digits, '.', '_', '+', '-', starting with a letter or digit, never current or previous")
        }
        return (agent, version)
    }

    /// `?NAME=true|false`, false when absent.
    func flag(_ name: String) throws(HTTPError) -> Bool {
        switch query(name) {
        case nil, "false"?, "0"?: return false
        case "true"?, "1"?, ""?: return true
        case let other?: throw HTTPError.badParameter(name, "must be true or false, not \(WireJSON.quote(other))")
        }
    }

    /// The SHA-256 the body must have: `Content-Digest: sha-256=:BASE64:` (RFC 9530) or
    /// `?sha256=HEX`; both may come if they agree. 400 when there is none.
    func announcedSHA256() throws(HTTPError) -> [UInt8] {
        let fromHeader = try header("Content-Digest").map { (field) throws(HTTPError) in try Self.contentDigest(field) }
        var fromQuery: [UInt8]?
        if let text = query("sha256") {
            guard Hex.isSHA256(text.lowercased()), let bytes = Hex.decode(text) else {
                throw HTTPError(status: 400, code: "invalid_digest", message: "sha256 must be 64 hex digits, not \(WireJSON.quote(text))")
            }
            fromQuery = bytes
        }
        switch (fromHeader, fromQuery) {
        case (let header?, let query?) where header != query:
            throw HTTPError(status: 400, code: "invalid_digest", message: "Content-Digest and ?sha256= name different digests")
        case (let digest?, _), (nil, let digest?):
            return digest
        case (nil, nil):
            throw HTTPError(status: 400, code: "digest_required",
                            message: "the body's SHA-256 is required, as Content-Digest: sha-256=:BASE64: (RFC 9530) or ?sha256=HEX")
        }
    }

    /// The SHA-256 of `Content-Digest: sha-256=:BASE64:` (RFC 9530; other algorithms in
    /// the field are ignored). 400 when it has none, or it is not 32 bytes of base64.
    static func contentDigest(_ field: String) throws(HTTPError) -> [UInt8] {
        for member in field.split(separator: ",") {
            let parts = member.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces).lowercased() == "sha-256" else { continue }
            let value = parts[1].trimmingCharacters(in: .whitespaces)
            guard value.count > 2, value.hasPrefix(":"), value.hasSuffix(":"),
                  let bytes = Data(base64Encoded: String(value.dropFirst().dropLast())), bytes.count == 32 else {
                throw HTTPError(status: 400, code: "invalid_digest",
                                message: "Content-Digest's sha-256 must be :BASE64: of 32 bytes, not \(WireJSON.quote(value))")
            }
            return Array(bytes)
        }
        throw HTTPError(status: 400, code: "digest_required",
                        message: "Content-Digest has no sha-256 member; send sha-256=:BASE64: (RFC 9530)")
    }

    /// `Baton-Signature`: base64 of an Ed25519 signature (64 bytes) over the SHA-256 digest.
    func signature() throws(HTTPError) -> [UInt8]? {
        guard let field = header("Baton-Signature") else { return nil }
        guard let signature = TrustedKeys.parseSignature(Array(field.utf8)) else {
            throw HTTPError(status: 400, code: "invalid_signature",
                            message: "Baton-Signature must be the base64 of a 64-byte Ed25519 signature")
        }
        return signature
    }
}
