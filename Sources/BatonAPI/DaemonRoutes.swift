import BatonCore
import BatonHTTP
import BatonSupervisor
import Foundation

/// What the daemon routes need from batond itself: who it is, where its binaries are
/// kept, and the upgrade. The daemon implements it; tests may fake it.
public protocol DaemonControl: Sendable {
    var view: DaemonView { get }
    var binaries: DaemonBinaries { get }
    /// Starts an upgrade to the stored binary `digest` and answers through `answer`,
    /// once: 202 just before the re-exec, 422 when its self-check refused, 503 when the
    /// ledger cannot record the attempt. Throws what can be told at once (409 busy, 409
    /// a binary that died before confirming, without `force`).
    func upgrade(to digest: String, force: Bool, by: String,
                 answer: @escaping @Sendable (Response) -> Void) throws(HTTPError)
}

/// `GET /v1/daemon`, `PUT /v1/daemon/binary`, `POST /v1/daemon/upgrade`: operator only.
struct DaemonRoutes: Sendable {
    let control: any DaemonControl

    /// The largest batond binary `PUT /v1/daemon/binary` takes.
    static let maxBinaryBytes = 512 << 20

    /// `GET /v1/daemon`
    func getDaemon(_ request: Request) throws(HTTPError) -> Reply {
        .respond(.json(control.view))
    }

    /// `PUT /v1/daemon/binary`'s body, streamed into the binary store from its head on.
    var binaryBody: StreamedBody {
        StreamedBody(maxBytes: Self.maxBinaryBytes) { [control] (request) throws(HTTPError) -> any BodySink in
            let expected = try request.announcedSHA256()
            do throws(DaemonBinaries.StoreError) {
                return UploadSink(try control.binaries.upload(expected: expected, maxBytes: Self.maxBinaryBytes))
            } catch {
                throw Self.http(error)
            }
        }
    }

    /// `PUT /v1/daemon/binary`
    func storeBinary(_ request: Request) throws(HTTPError) -> Reply {
        guard let sink = request.sink as? UploadSink else {
            throw HTTPError(status: 500, code: "internal", message: "the upload lost its sink")
        }
        guard sink.upload.size > 0 else {
            throw HTTPError(status: 400, code: "binary_required", message: "the body must be the batond binary; it was empty")
        }
        // fsync and rename: disk work, kept off libmicrohttpd's thread.
        let pending = request.park(deadline: .seconds(60)) {
            HTTPError(status: 503, code: "timeout", message: "storing the binary took too long; retry").response
        }
        DispatchQueue.global().async {
            do throws(DaemonBinaries.StoreError) {
                let stored = try sink.upload.finish()
                pending.answer(.json(status: stored.existed ? 200 : 201, StoredBinary(sha256: stored.digest, size: Int64(stored.size))))
            } catch {
                pending.answer(Self.http(error).response)
            }
        }
        return .parked
    }

    /// `POST /v1/daemon/upgrade`
    func upgradeDaemon(_ request: Request) throws(HTTPError) -> Reply {
        let body = try request.decodeJSON(UpgradeRequest.self)
        guard DaemonBinaries.isDigest(body.digest) else {
            throw HTTPError(status: 422, code: "invalid_digest",
                            message: "digest must be a SHA-256 in 64 lowercase hex digits, not \(WireJSON.quote(body.digest))")
        }
        let by = request.by
        // The self-check has its own deadline; this one only guards the parked slot.
        let pending = request.park(deadline: .seconds(120)) {
            HTTPError(status: 503, code: "timeout", message: "the upgrade did not answer in time; see GET /v1/daemon").response
        }
        do throws(HTTPError) {
            try control.upgrade(to: body.digest, force: body.force ?? false, by: by) { pending.answer($0) }
        } catch {
            pending.answer(error.response)
        }
        return .parked
    }

    static func http(_ error: DaemonBinaries.StoreError) -> HTTPError {
        switch error {
        case .mismatch: HTTPError(status: 422, code: "digest_mismatch", message: error.description)
        case .tooLarge(let limit): HTTPError.payloadTooLarge(limit: limit)
        case .notStored: HTTPError(status: 404, code: "binary_not_found", message: error.description)
        case .io(_, ENOSPC), .io(_, EDQUOT):
            HTTPError(status: 507, code: "insufficient_storage", message: "the binary could not be stored: \(error); nothing was kept")
        case .io: HTTPError(status: 503, code: "store_failed", message: "the binary could not be stored: \(error); nothing was kept")
        }
    }
}

/// The HTTP layer's view of an upload in the binary store.
final class UploadSink: BodySink {
    let upload: BinaryUpload

    init(_ upload: BinaryUpload) { self.upload = upload }

    func write(_ bytes: UnsafeRawBufferPointer) throws(HTTPError) {
        do { try upload.write(bytes) } catch { throw DaemonRoutes.http(error) }
    }
}

extension UpgradeRequest: ClosedJSONObject {
    public static let fieldNames: Set<String> = ["digest", "force"]
}
