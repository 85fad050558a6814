import BatonCore
import CCurl

/// How much a download may take: bytes, the whole time, the longest silence, and the connect.
public struct DownloadLimits: Sendable, Equatable {
    /// The largest body accepted, refused up front from Content-Length and by counting.
    public var maxBytes: Int64
    /// The whole transfer, redirects included.
    public var deadline: Duration
    /// The longest time without a byte (of headers or body); measured from the start, so
    /// a server that accepts and says nothing stalls too. Keep `connectTimeout` below it.
    public var stallTimeout: Duration
    /// Name resolution, TCP connect and TLS handshake, per connection.
    public var connectTimeout: Duration

    public init(maxBytes: Int64, deadline: Duration, stallTimeout: Duration = .seconds(30),
                connectTimeout: Duration = .seconds(10)) {
        self.maxBytes = maxBytes
        self.deadline = deadline
        self.stallTimeout = stallTimeout
        self.connectTimeout = connectTimeout
    }
}

/// A download that completed with a 2xx answer.
public struct DownloadResult: Sendable, Equatable {
    /// Body bytes handed to `write`.
    public var bytes: Int64
    public var status: Int
    /// The URL the bytes came from, after redirects.
    public var effectiveURL: String

    public init(bytes: Int64, status: Int, effectiveURL: String) {
        self.bytes = bytes
        self.status = status
        self.effectiveURL = effectiveURL
    }
}

/// Why a download failed. Each description names what happened in an operator's words.
public enum DownloadError: Error, CustomStringConvertible, Equatable {
    /// The URL (given, or reached by a redirect) is not one batond fetches from.
    case invalidURL(String)
    /// The final answer was not 2xx; `url` is the one that answered (after redirects).
    case httpStatus(Int, url: String)
    /// The body is larger than the limit (announced or counted).
    case tooLarge(Int64)
    /// The whole transfer took longer than its deadline.
    case timedOut(Duration)
    /// Nothing arrived for this long.
    case stalled(Duration)
    /// Connection, TLS, protocol or redirect trouble, in libcurl's words, with the URL.
    case network(String)
    /// `write` threw this: the transfer stopped there.
    case sink(any Error)
    /// `isCancelled` said so.
    case cancelled

    public var description: String {
        switch self {
        case .invalidURL(let reason): "not a URL to fetch from: \(reason)"
        case .httpStatus(let status, let url): "GET \(url) answered \(status)"
        case .tooLarge(let limit): "the download is larger than its limit of \(limit) bytes"
        case .timedOut(let deadline): "the download did not finish within its deadline of \(deadline.spelled)"
        case .stalled(let timeout): "no byte for \(timeout.spelled): stalled"
        case .network(let text): text
        case .sink(let error): "writing the download failed: \(error)"
        case .cancelled: "the download was cancelled"
        }
    }

    /// Equal cases with equal values; two `sink` errors are equal when they read the same.
    public static func == (lhs: DownloadError, rhs: DownloadError) -> Bool {
        switch (lhs, rhs) {
        case (.invalidURL(let a), .invalidURL(let b)): a == b
        case (.httpStatus(let a, let x), .httpStatus(let b, let y)): a == b && x == y
        case (.tooLarge(let a), .tooLarge(let b)): a == b
        case (.timedOut(let a), .timedOut(let b)): a == b
        case (.stalled(let a), .stalled(let b)): a == b
        case (.network(let a), .network(let b)): a == b
        case (.sink(let a), .sink(let b)): "\(a)" == "\(b)"
        case (.cancelled, .cancelled): true
        case (.invalidURL, _), (.httpStatus, _), (.tooLarge, _), (.timedOut, _), (.stalled, _), (.network, _),
             (.sink, _), (.cancelled, _): false
        }
    }
}

/// Downloads over the system's libcurl, for `POST /v1/releases/{agent}/{version}`.
///
/// Only http and https, for the first URL and every redirect (at most 5); no credentials
/// are sent (URLs with a user part are refused, .netrc is not read, no cookies). Proxies
/// are libcurl's defaults from batond's environment: `http_proxy` (lower case only),
/// `https_proxy`/`HTTPS_PROXY`, `all_proxy`, `no_proxy`, as curl users expect; a daemon
/// that must not use one runs without them. TLS is verified against the system's CAs.
public enum Download {
    public static let userAgent = "batond/\(BatonVersion.current)"
    public static let maxURLBytes = 2048
    static let maxRedirects = 5
    static let protocols = "http,https"

    /// Whether batond fetches from `url`: nil when acceptable, else the reason. Parsed by
    /// libcurl's own URL parser, so what is checked is what would be fetched.
    public static func validate(url: String) -> String? {
        guard url.utf8.count <= maxURLBytes else { return "longer than \(maxURLBytes) bytes" }
        guard !url.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7f }) else {
            return "contains a space or a control character"
        }
        guard let handle = curl_url() else { return "libcurl could not parse it" }
        defer { curl_url_cleanup(handle) }
        let parsed = curl_url_set(handle, CURLUPART_URL, url, 0)
        guard parsed == CURLUE_OK else { return "not an absolute URL (\(String(cString: curl_url_strerror(parsed))))" }
        func part(_ which: CURLUPart) -> String? {
            var value: UnsafeMutablePointer<CChar>?
            guard curl_url_get(handle, which, &value, 0) == CURLUE_OK, let value else { return nil }
            defer { curl_free(value) }
            return String(cString: value)
        }
        let scheme = part(CURLUPART_SCHEME) ?? ""
        guard scheme == "http" || scheme == "https" else { return "the scheme is \(scheme), not http or https" }
        // libcurl reads "http:///x" as host x; take only "scheme://host".
        guard url.utf8.dropFirst(scheme.utf8.count).starts(with: "://".utf8),
              url.utf8.dropFirst(scheme.utf8.count + 3).first != UInt8(ascii: "/") else {
            return "not an absolute URL (no host after //)"
        }
        guard let host = part(CURLUPART_HOST), !host.isEmpty else { return "it has no host" }
        guard part(CURLUPART_USER) == nil, part(CURLUPART_PASSWORD) == nil else {
            return "it carries a user name or password; batond sends no credentials"
        }
        return nil
    }

    /// Downloads `url`, handing the body to `write` as it arrives; blocks the calling
    /// thread until done (run it on a thread of its own, not on Swift's cooperative pool).
    /// All three closures run on the calling thread. A throwing `write` stops the
    /// transfer with `.sink(error)`; `isCancelled` is asked at least every 100 ms;
    /// `progress` is told after each batch of bytes (total: Content-Length, when known).
    /// A final answer other than 2xx fails with `.httpStatus`, and its body never reaches `write`.
    public static func fetch(url: String, limits: DownloadLimits,
                             write: (UnsafeRawBufferPointer) throws -> Void,
                             progress: (_ received: Int64, _ total: Int64?) -> Void = { _, _ in },
                             isCancelled: () -> Bool = { false }) throws(DownloadError) -> DownloadResult {
        if let reason = validate(url: url) { throw .invalidURL(reason) }
        guard globalInit == CURLE_OK else { throw .network("libcurl did not start: \(String(cString: curl_easy_strerror(globalInit)))") }
        let outcome = withoutActuallyEscaping(write) { write in
            Result { () throws(DownloadError) in
                let transfer = try Transfer(url: url, limits: limits, write: write)
                return try transfer.run(progress: progress, isCancelled: isCancelled)
            }
        }
        return try outcome.get()
    }

    /// A small body kept in memory (a detached `.sig`): nil when the server answers 404.
    public static func fetchSmall(url: String, maxBytes: Int, limits: DownloadLimits) throws(DownloadError) -> [UInt8]? {
        var limits = limits
        limits.maxBytes = Int64(maxBytes)
        var bytes: [UInt8] = []
        do {
            _ = try fetch(url: url, limits: limits, write: { bytes.append(contentsOf: $0) })
        } catch .httpStatus(404, _) {
            return nil
        }
        return bytes
    }

    /// libcurl's global state, set up once (a Swift static is initialised once, thread-safely).
    private static let globalInit: CURLcode = baton_curl_global_init()
}

// MARK: - One transfer

/// One transfer, driven through libcurl's multi interface so the loop wakes at least every
/// 100 ms to check the stall, the deadline and cancellation with millisecond resolution,
/// even when the server sends nothing. Used on one thread only: libcurl calls the callbacks
/// from inside `curl_multi_perform`, on the caller's thread.
private final class Transfer {
    private let easy: UnsafeMutableRawPointer
    private let multi: UnsafeMutableRawPointer
    private let url: String
    private let limits: DownloadLimits
    private let sink: (UnsafeRawBufferPointer) throws -> Void
    private let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE))
    private let started = ContinuousClock.now
    private var lastByte = ContinuousClock.now
    private var received: Int64 = 0
    private var statusChecked = false
    /// Why a callback stopped the transfer; it wins over libcurl's code for the stop.
    private var failure: DownloadError?

    static let pollInterval: Duration = .milliseconds(100)
    /// libcurl's clock rounds to milliseconds and may call its deadline (CURLOPT_TIMEOUT_MS,
    /// the same as ours) a little before ours: its timeout that late is the deadline, and
    /// an earlier one is the connect timeout.
    static let clockSlack: Duration = .milliseconds(50)
    /// Large reads: fewer wake-ups and calls to `write` (curl's own tool uses 100 KiB).
    static let bufferBytes = 256 * 1024

    init(url: String, limits: DownloadLimits, write: @escaping (UnsafeRawBufferPointer) throws -> Void) throws(DownloadError) {
        guard let easy = curl_easy_init() else { throw .network("libcurl could not start a transfer") }
        guard let multi = curl_multi_init() else {
            curl_easy_cleanup(easy)
            throw .network("libcurl could not start a transfer")
        }
        self.easy = easy
        self.multi = multi
        self.url = url
        self.limits = limits
        self.sink = write
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE))
        let context = Unmanaged.passUnretained(self).toOpaque()
        var code = CURLE_OK
        // The first option libcurl refuses is the one reported.
        func set(_ option: CURLoption, _ value: Int) { if code == CURLE_OK { code = baton_curl_setopt_long(easy, option, value) } }
        func set(_ option: CURLoption, _ value: String) { if code == CURLE_OK { code = baton_curl_setopt_string(easy, option, value) } }
        func set(_ option: CURLoption, offset: curl_off_t) { if code == CURLE_OK { code = baton_curl_setopt_offset(easy, option, offset) } }
        func set(_ option: CURLoption, pointer: UnsafeMutableRawPointer) {
            if code == CURLE_OK { code = baton_curl_setopt_pointer(easy, option, pointer) }
        }
        func set(_ option: CURLoption, function: curl_write_callback) {
            if code == CURLE_OK { code = baton_curl_setopt_write_function(easy, option, function) }
        }
        set(CURLOPT_URL, url)
        set(CURLOPT_PROTOCOLS_STR, Download.protocols)
        set(CURLOPT_REDIR_PROTOCOLS_STR, Download.protocols)
        set(CURLOPT_FOLLOWLOCATION, 1)
        set(CURLOPT_MAXREDIRS, Download.maxRedirects)
        set(CURLOPT_FAILONERROR, 1)
        set(CURLOPT_NOSIGNAL, 1)
        set(CURLOPT_NETRC, Int(CURL_NETRC_IGNORED.rawValue))  // the default, said out loud: no credentials from ~/.netrc
        set(CURLOPT_USERAGENT, Download.userAgent)
        set(CURLOPT_TIMEOUT_MS, max(1, Int(limits.deadline.milliseconds)))
        set(CURLOPT_CONNECTTIMEOUT_MS, max(1, Int(limits.connectTimeout.milliseconds)))
        set(CURLOPT_BUFFERSIZE, Transfer.bufferBytes)
        set(CURLOPT_MAXFILESIZE_LARGE, offset: curl_off_t(limits.maxBytes))
        set(CURLOPT_ERRORBUFFER, pointer: errorBuffer)
        set(CURLOPT_WRITEFUNCTION, function: onBody)
        set(CURLOPT_WRITEDATA, pointer: context)
        set(CURLOPT_HEADERFUNCTION, function: onHeader)
        set(CURLOPT_HEADERDATA, pointer: context)
        guard code == CURLE_OK else { throw .network("libcurl refused an option: \(String(cString: curl_easy_strerror(code)))") }
        let added = curl_multi_add_handle(multi, easy)
        guard added == CURLM_OK else { throw .network("libcurl: \(String(cString: curl_multi_strerror(added)))") }
    }

    deinit {
        curl_multi_remove_handle(multi, easy)
        curl_easy_cleanup(easy)
        curl_multi_cleanup(multi)
        errorBuffer.deallocate()
    }

    func run(progress: (Int64, Int64?) -> Void, isCancelled: () -> Bool) throws(DownloadError) -> DownloadResult {
        var reported: Int64 = 0
        while true {
            var running: Int32 = 0
            let performed = curl_multi_perform(multi, &running)
            guard performed == CURLM_OK else { throw .network("libcurl: \(String(cString: curl_multi_strerror(performed)))") }
            if received != reported {
                reported = received
                progress(received, contentLength)
            }
            if running == 0 { return try finish() }
            if isCancelled() { throw .cancelled }
            let now = ContinuousClock.now
            let beforeDeadline = limits.deadline - (now - started)
            let beforeStall = limits.stallTimeout - (now - lastByte)
            if beforeDeadline <= .zero { throw .timedOut(limits.deadline) }
            if beforeStall <= .zero { throw .stalled(limits.stallTimeout) }
            let wait = min(beforeDeadline, beforeStall, Transfer.pollInterval)
            let polled = curl_multi_poll(multi, nil, 0, Int32(max(1, wait.milliseconds)), nil)
            guard polled == CURLM_OK else { throw .network("libcurl: \(String(cString: curl_multi_strerror(polled)))") }
        }
    }

    /// The transfer is over: what libcurl says of it, unless a callback stopped it first.
    private func finish() throws(DownloadError) -> DownloadResult {
        var left: Int32 = 0
        guard let message = curl_multi_info_read(multi, &left) else { throw .network("libcurl lost the transfer's result") }
        let result = baton_curl_message_result(message)
        if let failure { throw failure }
        let text = errorBuffer[0] == 0 ? String(cString: curl_easy_strerror(result)) : String(cString: errorBuffer)
        switch result {
        case CURLE_OK:
            let status = self.status
            guard (200..<300).contains(status) else { throw .httpStatus(status, url: effectiveURL) }
            return DownloadResult(bytes: received, status: status, effectiveURL: effectiveURL)
        case CURLE_HTTP_RETURNED_ERROR:
            throw .httpStatus(status, url: effectiveURL)
        case CURLE_FILESIZE_EXCEEDED:
            throw .tooLarge(limits.maxBytes)
        case CURLE_OPERATION_TIMEDOUT where ContinuousClock.now - started >= limits.deadline - Transfer.clockSlack:
            throw .timedOut(limits.deadline)
        case CURLE_UNSUPPORTED_PROTOCOL:
            throw .invalidURL("GET \(url) redirected to \(effectiveURL), which is not http or https (\(text))")
        default:
            throw .network("GET \(effectiveURL): \(text)")
        }
    }

    /// A body chunk: checked against the status and the limit, then handed to `write`.
    /// Returning less than `count` makes libcurl stop with CURLE_WRITE_ERROR.
    fileprivate func body(_ bytes: UnsafeRawBufferPointer) -> Int {
        lastByte = .now
        if !statusChecked {
            // FAILONERROR is not fail-safe (401 and 407 may slip through): nothing but a
            // 2xx body reaches `write`. Redirect bodies never come here.
            statusChecked = true
            let status = self.status
            guard (200..<300).contains(status) else {
                failure = .httpStatus(status, url: effectiveURL)
                return 0
            }
        }
        guard received + Int64(bytes.count) <= limits.maxBytes else {
            failure = .tooLarge(limits.maxBytes)
            return 0
        }
        do {
            try sink(bytes)
        } catch {
            failure = .sink(error)
            return 0
        }
        received += Int64(bytes.count)
        return bytes.count
    }

    fileprivate func header() {
        lastByte = .now
    }

    private var status: Int {
        var code = 0
        _ = baton_curl_getinfo_long(easy, CURLINFO_RESPONSE_CODE, &code)
        return code
    }

    private var contentLength: Int64? {
        var length: curl_off_t = -1
        guard baton_curl_getinfo_offset(easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length) == CURLE_OK, length >= 0 else { return nil }
        return Int64(length)
    }

    private var effectiveURL: String {
        var pointer: UnsafeMutablePointer<CChar>?
        guard baton_curl_getinfo_string(easy, CURLINFO_EFFECTIVE_URL, &pointer) == CURLE_OK, let pointer else { return url }
        return String(cString: pointer)
    }
}

private let onBody: curl_write_callback = { data, size, count, context in
    let transfer = Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue()
    return transfer.body(UnsafeRawBufferPointer(start: data, count: size * count))
}

private let onHeader: curl_write_callback = { _, size, count, context in
    Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue().header()
    return size * count
}
