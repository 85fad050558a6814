import BatonAPI
import BatonConfig
import BatonCore
import BatonHTTP
import BatonLedger
import BatonReleases
import BatonSupervisor
import BatonWire
import Foundation
import Glibc

/// The parsers batond runs on bytes it did not write itself, one entry function each,
/// shared by the libFuzzer executable (`make fuzz`, Tests/Fuzz/baton-fuzz) and the
/// replay of the committed corpus and crashes in `make test` (Tests/BatonFuzzTests).
///
/// Each entry takes any bytes. A refusal is a thrown error, caught here; a trap (force
/// unwrap, overflow, index out of range, precondition) is a bug in the parser, and so is
/// a broken property (`require`): both stop the process, which is what the
/// fuzzer reports and the replay fails on.
public enum FuzzTarget: String, CaseIterable, Sendable {
    case ledgerRecord = "ledger-record"
    case ledgerSnapshot = "ledger-snapshot"
    case config
    case requestBody = "request-body"
    case release

    public func run(_ bytes: [UInt8]) {
        switch self {
        case .ledgerRecord: fuzzLedgerRecord(bytes)
        case .ledgerSnapshot: fuzzLedgerSnapshot(bytes)
        case .config: fuzzConfig(bytes)
        case .requestBody: fuzzRequestBody(bytes)
        case .release: fuzzRelease(bytes)
        }
    }
}

/// A property every input must keep; broken, it traps with what broke.
@inline(never)
func require(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("fuzz property broken: \(what())") }
}

// MARK: - Ledger records

/// A journal's bytes, line by line, as recovery reads them: each line decoded as it is
/// (trailer and checksum checked) and again sealed afresh, so that the JSON behind the
/// checksum is fuzzed too (a mutated line almost never keeps a matching CRC). A decoded
/// record encodes and decodes back to itself, and is applied to a state in seq order
/// (`LedgerState.apply`, as replay does). `RecordCodec.highestSeq`, which recovery runs
/// on the damaged bytes it cuts, reads the whole input.
public func fuzzLedgerRecord(_ bytes: [UInt8]) {
    _ = bytes.withUnsafeBytes { RecordCodec.highestSeq(in: $0) }
    var state = LedgerState()
    for line in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).prefix(64) {
        for candidate in [line, resealed(line)[...]] {
            guard let record = try? RecordCodec.decode(candidate) else { continue }
            if case .unknown = record.event {} else {
                guard let encoded = try? RecordCodec.encode(record) else {
                    require(false, "a decoded record does not encode: \(record)")
                    continue
                }
                let again = try? RecordCodec.decode(encoded[...])
                require(again == record, "record round trip: \(record) came back as \(String(describing: again))")
            }
            if record.seq > state.lastSeq { state.apply(record) }
        }
    }
}

/// A line's JSON with its trailer (if any) replaced by a fresh, correct one.
func resealed(_ line: ArraySlice<UInt8>) -> [UInt8] {
    var body = Array(line)
    let trailer = Array(#","crc":""#.utf8)
    if body.count >= trailer.count + 10, body[(body.count - trailer.count - 10)...].starts(with: trailer) {
        body.removeLast(trailer.count + 10)
    }
    return RecordCodec.seal(body)
}

// MARK: - Ledger snapshot

/// `snapshot.json`'s bytes, as they are and sealed afresh: a decoded state encodes and
/// decodes back to itself, and takes the record a start appends (`daemon.started`).
public func fuzzLedgerSnapshot(_ bytes: [UInt8]) {
    let line = bytes.split(separator: UInt8(ascii: "\n"), maxSplits: 1, omittingEmptySubsequences: false).first ?? []
    for candidate in [bytes[...], resealed(line)[...]] {
        guard var state = try? Ledger.decodeSnapshot(candidate, path: "snapshot.json") else { continue }
        guard let encoded = try? Ledger.encodeSnapshot(state) else {
            require(false, "a decoded snapshot does not encode")
            continue
        }
        let again = try? Ledger.decodeSnapshot(encoded[...], path: "snapshot.json")
        require(again == state, "snapshot round trip")
        guard state.lastSeq < RecordCodec.maxCredibleSeq else { continue }
        let started = DaemonStarted(pid: 1, version: "fuzz", config: nil, listeners: [])
        state.apply(Record(seq: state.lastSeq + 1, time: .now(), event: .daemonStarted(started)))
    }
}

// MARK: - Configuration

/// Accounts in which every user and group exists (uid 1000): the fuzzer reaches past the
/// look-ups without asking NSS.
let everyoneExists = Accounts(userID: { _ in 1000 }, groupExists: { _ in true })

/// A configuration file's bytes, as `batond --config` loads them: text that is not UTF-8
/// is refused there before the parser, so it is here.
public func fuzzConfig(_ bytes: [UInt8]) {
    guard let text = String(validating: bytes, as: UTF8.self) else { return }
    _ = try? BatondConfig.parse(text, file: "fuzz.toml", workingDirectory: "/fuzz", accounts: everyoneExists)
}

// MARK: - Request bodies

/// One body decoded as every JSON body an API route takes, by the routes' own decoding
/// (`ClosedJSONObject.decode(body:)`), then checked as the routes check it. A decoded
/// body encodes and decodes back to itself.
public func fuzzRequestBody(_ bytes: [UInt8]) {
    func body<T: ClosedJSONObject & Encodable & Equatable>(_ type: T.Type, _ check: (T) -> Void = { _ in }) {
        guard let decoded = try? T.decode(body: bytes) else { return }
        check(decoded)
        guard let encoded = try? WireJSON.encoder.encode(decoded) else {
            require(false, "a decoded \(T.self) does not encode")
            return
        }
        let again = try? T.decode(body: Array(encoded))
        require(again == decoded, "\(T.self) round trip: \(decoded) came back as \(String(describing: again))")
    }
    func source(url: String?, sha256: String?) {
        if let sha256 { _ = Hex.isSHA256(sha256.lowercased()); _ = Hex.decode(sha256) }
        if let url { _ = Download.validate(url: url) }
    }
    body(DesiredRequest.self) { _ = Names.isValidVersion($0.version); source(url: $0.url, sha256: $0.sha256) }
    body(RollbackRequest.self)
    body(RegistrationRequest.self) { _ = Names.isValidVersion($0.version) }
    body(FailedReport.self)
    _ = try? EmptyJSONObject.decode(body: bytes)
    body(VersionRequest.self) { _ = Names.isValidVersion($0.version) }
    body(FetchRequest.self) {
        source(url: $0.url, sha256: $0.sha256)
        if let signature = $0.signature { _ = TrustedKeys.parseSignature(Array(signature.utf8)) }
    }
    body(UpgradeRequest.self) { _ = DaemonBinaries.isDigest($0.digest) }
    body(FleetSetRequest.self) { request in
        _ = Names.isValidVersion(request.version)
        for host in request.exclude ?? [] { _ = BatondConfig.FleetSettings.isValidName(host) }
        for (agent, release) in request.releases ?? [:] {
            _ = Names.isValidAgent(agent)
            source(url: release.url, sha256: release.sha256)
        }
        for agent in request.agents ?? [] {
            _ = Names.isValidAgent(agent)
            if let template = request.urlTemplate {
                source(url: template.replacingOccurrences(of: "{agent}", with: agent)
                    .replacingOccurrences(of: "{version}", with: request.version), sha256: nil)
            }
        }
    }
    body(FleetRollbackRequest.self)
    body(FleetExcludeRequest.self) { for host in $0.hosts { _ = BatondConfig.FleetSettings.isValidName(host) } }
}

// MARK: - Releases

/// The release store's checks on bytes pushed or fetched: the format sniffed from the
/// content, `release.json` as the unpacker reads it, and, for an archive, the unpack
/// with every check on names, types, links and sizes, into a directory of its own under
/// a scratch directory (tmpfs when there is one) that is emptied after each input.
/// Nothing may land outside that directory, and the tree must remove cleanly.
public func fuzzRelease(_ bytes: [UInt8]) {
    _ = try? ReleaseManifest.decodeDeclared(Data(bytes))
    guard let format = Unpacker.format(of: bytes), format != .executable else { return }
    let scratch = FuzzScratch.shared
    let archive = scratch.path + "/archive"
    let target = scratch.path + "/out"
    guard FileManager.default.createFile(atPath: archive, contents: Data(bytes)), mkdir(target, 0o700) == 0 else {
        fatalError("the fuzz scratch directory \(scratch.path) cannot be written: errno \(errno)")
    }
    _ = try? Unpacker.unpack(archive: archive, format: format, into: target,
                             limits: UnpackLimits(maxBytes: 1 << 20, maxFiles: 256))
    let left = (try? FileManager.default.contentsOfDirectory(atPath: scratch.path)) ?? []
    require(Set(left) == ["archive", "out"], "the unpack wrote outside its directory: \(left.sorted())")
    require(Unpacker.removeTree(target), "the unpacked tree does not remove")
    unlink(archive)
}

/// The release target's scratch directory: made once per process, removed at exit.
final class FuzzScratch: Sendable {
    static let shared = FuzzScratch()
    let path: String

    private init() {
        let base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : NSTemporaryDirectory()
        var template = Array("\(base)/baton-fuzz-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { fatalError("mkdtemp under \(base): errno \(errno)") }
        path = String(cString: made)
        atexit { _ = Unpacker.removeTree(FuzzScratch.shared.path) }
    }
}
