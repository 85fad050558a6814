import CCurl

// The only file of BatonEtcd that talks to libcurl. Everything here blocks the calling
// thread: callers run it on a thread of their own, never on Swift's cooperative pool.

/// TLS material for https endpoints, as files libcurl reads (PEM).
struct TLSFiles: Sendable, Equatable {
    var caFile: String?
    var certFile: String?
    var keyFile: String?
}

/// One POST to one endpoint, as etcd's JSON gateway takes it.
struct Post {
    var url: String
    var body: [UInt8]
    /// Extra header lines ("Name: value"). They may hold a token: never put them in a text.
    var headers: [String]
    var tls: TLSFiles
    var connectTimeout: Duration
    /// The whole exchange; nil for a watch, which lasts until stopped.
    var timeout: Duration?
}

/// How a POST ended.
enum PostOutcome {
    /// The server answered with this status, and the whole body went to `onData` (or `onData` stopped it).
    case answered(status: Int)
    /// No answer. `sent` is false when the request certainly never left (no connection, TLS
    /// handshake failed, timed out before the transfer began): then it is safe to send it elsewhere.
    case failed(reason: String, sent: Bool)
    /// No answer within the timeout, after the request was sent (it may have been received).
    case timedOut
    /// `isCancelled` said so.
    case cancelled
}

extension Post {
    /// Sends the POST and hands the answer's body to `onData` as it arrives; `onData`
    /// returns false to end the exchange there (then the outcome is `.answered`). Blocks
    /// until done; `isCancelled` is asked at least every 100 ms.
    func perform(connection: CurlConnection, onData: (UnsafeRawBufferPointer) -> Bool,
                 isCancelled: () -> Bool = { false }) -> PostOutcome {
        withoutActuallyEscaping(onData) { onData in
            connection.perform(self, onData: onData, isCancelled: isCancelled)
        }
    }
}

// MARK: - Connections

/// A libcurl multi handle with one easy handle, kept between requests so that their
/// connections (and TLS sessions) are reused. Used by one thread at a time.
final class CurlConnection {
    private let easy: UnsafeMutableRawPointer
    private let multi: UnsafeMutableRawPointer
    private let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE))
    /// The current transfer's body and callback; libcurl reads the body from here (not copied).
    private var body: UnsafeMutableBufferPointer<UInt8>?
    private var headerList: UnsafeMutablePointer<curl_slist>?
    fileprivate var onData: ((UnsafeRawBufferPointer) -> Bool)?
    fileprivate var stopped = false

    static let pollInterval: Duration = .milliseconds(100)

    init?() {
        guard globalInit == CURLE_OK, let easy = curl_easy_init() else { return nil }
        guard let multi = curl_multi_init() else {
            curl_easy_cleanup(easy)
            return nil
        }
        self.easy = easy
        self.multi = multi
    }

    deinit {
        curl_easy_cleanup(easy)
        curl_multi_cleanup(multi)
        if let headerList { curl_slist_free_all(headerList) }
        body?.deallocate()
        errorBuffer.deallocate()
    }

    fileprivate func perform(_ post: Post, onData: @escaping (UnsafeRawBufferPointer) -> Bool,
                             isCancelled: () -> Bool) -> PostOutcome {
        // Reset keeps the live connections, the DNS and TLS session caches; the options go.
        curl_easy_reset(easy)
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE))
        self.onData = onData
        stopped = false
        defer {
            self.onData = nil
            curl_multi_remove_handle(multi, easy)
        }
        if let reason = configure(post) { return .failed(reason: reason, sent: false) }
        let added = curl_multi_add_handle(multi, easy)
        guard added == CURLM_OK else { return .failed(reason: "libcurl: \(String(cString: curl_multi_strerror(added)))", sent: false) }
        while true {
            var running: Int32 = 0
            let performed = curl_multi_perform(multi, &running)
            guard performed == CURLM_OK else { return .failed(reason: "libcurl: \(String(cString: curl_multi_strerror(performed)))", sent: true) }
            if running == 0 { return finish(post) }
            if isCancelled() { return .cancelled }
            let polled = curl_multi_poll(multi, nil, 0, Int32(CurlConnection.pollInterval.milliseconds), nil)
            guard polled == CURLM_OK else { return .failed(reason: "libcurl: \(String(cString: curl_multi_strerror(polled)))", sent: true) }
        }
    }

    /// Sets the options of one POST: nil when libcurl took them all, else why not.
    private func configure(_ post: Post) -> String? {
        body?.deallocate()
        let body = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: max(1, post.body.count))
        _ = body.initialize(from: post.body)
        self.body = body
        if let headerList { curl_slist_free_all(headerList) }
        headerList = nil
        // Content-Type for the gateway; an empty Expect stops libcurl's "100-continue"
        // round trip on bodies over 1 KiB.
        for line in ["Content-Type: application/json", "Expect:"] + post.headers {
            guard let appended = curl_slist_append(headerList, line) else { return "libcurl could not add a header" }
            headerList = appended
        }
        let context = Unmanaged.passUnretained(self).toOpaque()
        var code = CURLE_OK
        // The first option libcurl refuses is the one reported.
        func set(_ option: CURLoption, _ value: Int) { if code == CURLE_OK { code = baton_curl_setopt_long(easy, option, value) } }
        func set(_ option: CURLoption, _ value: String) { if code == CURLE_OK { code = baton_curl_setopt_string(easy, option, value) } }
        func set(_ option: CURLoption, pointer: UnsafeMutableRawPointer?) {
            if code == CURLE_OK { code = baton_curl_setopt_pointer(easy, option, pointer) }
        }
        set(CURLOPT_URL, post.url)
        set(CURLOPT_PROTOCOLS_STR, "http,https")
        set(CURLOPT_NOSIGNAL, 1)
        set(CURLOPT_NETRC, Int(CURL_NETRC_IGNORED.rawValue))
        set(CURLOPT_POST, 1)
        set(CURLOPT_POSTFIELDSIZE, post.body.count)
        set(CURLOPT_POSTFIELDS, pointer: UnsafeMutableRawPointer(body.baseAddress))
        set(CURLOPT_HTTPHEADER, pointer: UnsafeMutableRawPointer(headerList))
        set(CURLOPT_CONNECTTIMEOUT_MS, max(1, Int(post.connectTimeout.milliseconds)))
        if let timeout = post.timeout { set(CURLOPT_TIMEOUT_MS, max(1, Int(timeout.milliseconds))) }
        // A watch may be silent for hours: TCP keepalives find a peer that vanished
        // without a reset (about 5 s idle + 9 probes 2 s apart).
        set(CURLOPT_TCP_KEEPALIVE, 1)
        set(CURLOPT_TCP_KEEPIDLE, 5)
        set(CURLOPT_TCP_KEEPINTVL, 2)
        if let caFile = post.tls.caFile { set(CURLOPT_CAINFO, caFile) }
        if let certFile = post.tls.certFile { set(CURLOPT_SSLCERT, certFile) }
        if let keyFile = post.tls.keyFile { set(CURLOPT_SSLKEY, keyFile) }
        set(CURLOPT_ERRORBUFFER, pointer: UnsafeMutableRawPointer(errorBuffer))
        if code == CURLE_OK { code = baton_curl_setopt_write_function(easy, CURLOPT_WRITEFUNCTION, onBody) }
        set(CURLOPT_WRITEDATA, pointer: context)
        return code == CURLE_OK ? nil : "libcurl refused an option: \(String(cString: curl_easy_strerror(code)))"
    }

    private func finish(_ post: Post) -> PostOutcome {
        var left: Int32 = 0
        guard let message = curl_multi_info_read(multi, &left) else { return .failed(reason: "libcurl lost the transfer's result", sent: true) }
        let result = baton_curl_message_result(message)
        if result == CURLE_OK || (result == CURLE_WRITE_ERROR && stopped) { return .answered(status: status) }
        let text = errorBuffer[0] == 0 ? String(cString: curl_easy_strerror(result)) : String(cString: errorBuffer)
        // PRETRANSFER is stamped just before the request is written: still zero means
        // nothing was sent on this attempt (libcurl itself retries a reused connection
        // found dead before anything was read back).
        var pretransfer: curl_off_t = 0
        _ = baton_curl_getinfo_offset(easy, CURLINFO_PRETRANSFER_TIME_T, &pretransfer)
        let notSent: Set<UInt32> = [CURLE_COULDNT_RESOLVE_HOST.rawValue, CURLE_COULDNT_CONNECT.rawValue,
                                    CURLE_SSL_CONNECT_ERROR.rawValue, CURLE_PEER_FAILED_VERIFICATION.rawValue,
                                    CURLE_SSL_CERTPROBLEM.rawValue, CURLE_SSL_CACERT_BADFILE.rawValue,
                                    CURLE_UNSUPPORTED_PROTOCOL.rawValue, CURLE_URL_MALFORMAT.rawValue]
        let sent = pretransfer > 0 && !notSent.contains(result.rawValue)
        if result == CURLE_OPERATION_TIMEDOUT, pretransfer > 0 { return .timedOut }
        return .failed(reason: text, sent: sent)
    }

    fileprivate func received(_ bytes: UnsafeRawBufferPointer) -> Int {
        guard let onData, onData(bytes) else {
            stopped = true
            return 0  // less than given: libcurl stops with CURLE_WRITE_ERROR
        }
        return bytes.count
    }

    private var status: Int {
        var code = 0
        _ = baton_curl_getinfo_long(easy, CURLINFO_RESPONSE_CODE, &code)
        return code
    }
}

/// libcurl's global state, set up once (a Swift global is initialised once, thread-safely).
private let globalInit: CURLcode = baton_curl_global_init()

private let onBody: curl_write_callback = { data, size, count, context in
    let connection = Unmanaged<CurlConnection>.fromOpaque(context!).takeUnretainedValue()
    return connection.received(UnsafeRawBufferPointer(start: data, count: size * count))
}

extension Duration {
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    /// "5 s", "250 ms": for error texts.
    var spelled: String {
        let milliseconds = self.milliseconds
        return milliseconds % 1000 == 0 ? "\(milliseconds / 1000) s" : "\(milliseconds) ms"
    }
}
