import Foundation
import Glibc

/// A headless Chromium driven over the DevTools protocol on `--remote-debugging-pipe`:
/// JSON messages, each ended by a NUL byte, written to the browser's fd 3 and read from
/// its fd 4. A pipe rather than `--remote-debugging-port`: no port to find, no
/// websocket client to write (Foundation has none on Linux, the test venv has none
/// either), and the browser cannot outlive the pipe's reader unnoticed.
public final class Chromium {
    public let profile: TemporaryDirectory
    private let process = Process()
    private let toBrowser = Pipe()
    private let fromBrowser = Pipe()
    private var buffer: [UInt8] = []
    private var nextID = 0
    /// Events read while waiting for something else, oldest first.
    fileprivate var events: [[String: Any]] = []

    /// Debian's `chromium`, or nil when it is not installed.
    public static var path: String? { which("chromium") ?? which("chromium-browser") }

    public init(profile: TemporaryDirectory = TemporaryDirectory("chromium")) throws {
        guard let chromium = Self.path else { throw TestFailure("chromium is not installed") }
        self.profile = profile
        // The shell hands our pipes over as fds 3 and 4, where Chromium looks for them.
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", #"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2"#, chromium,
                             "--headless", "--remote-debugging-pipe", "--user-data-dir=\(profile.path)",
                             // The sandbox needs user namespaces or a setuid helper; tests may run as root.
                             "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                             "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                             "--disable-sync", "--hide-scrollbars", "--mute-audio", "about:blank"]
        process.standardInput = toBrowser
        process.standardOutput = fromBrowser
        guard FileManager.default.createFile(atPath: profile.file("chromium.log"), contents: nil) else {
            throw TestFailure("cannot create \(profile.file("chromium.log"))")
        }
        process.standardError = FileHandle(forWritingAtPath: profile.file("chromium.log"))
        try process.run()
    }

    /// What Chromium wrote on stderr, for failure messages.
    public var log: String {
        (try? String(contentsOfFile: profile.file("chromium.log"), encoding: .utf8)).map { String($0.suffix(4000)) } ?? ""
    }

    /// Sends a command and returns its result.
    @discardableResult
    public func call(_ method: String, _ params: [String: Any] = [:], session: String? = nil,
                     timeout: Double = 30) throws -> [String: Any] {
        nextID += 1
        let id = nextID
        var message: [String: Any] = ["id": id, "method": method, "params": params]
        if let session { message["sessionId"] = session }
        var data = try JSONSerialization.data(withJSONObject: message)
        data.append(0)
        try toBrowser.fileHandleForWriting.write(contentsOf: data)
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let answer = try nextMessage(until: deadline, waitingFor: method)
            guard answer["id"] as? Int == id else {
                if answer["method"] != nil { events.append(answer) }
                continue
            }
            if let error = answer["error"] { throw TestFailure("chromium: \(method) failed: \(error)") }
            return answer["result"] as? [String: Any] ?? [:]
        }
    }

    /// Waits for the event `method` (of `session`), taking the ones read before first.
    @discardableResult
    public func event(_ method: String, session: String? = nil, timeout: Double = 30) throws -> [String: Any] {
        let matches = { (event: [String: Any]) in
            event["method"] as? String == method && (session == nil || event["sessionId"] as? String == session)
        }
        if let index = events.firstIndex(where: matches) { return events.remove(at: index) }
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let message = try nextMessage(until: deadline, waitingFor: method)
            if matches(message) { return message }
            if message["method"] != nil { events.append(message) }
        }
    }

    private func nextMessage(until deadline: Date, waitingFor what: String) throws -> [String: Any] {
        let fd = fromBrowser.fileHandleForReading.fileDescriptor
        while true {
            if let end = buffer.firstIndex(of: 0) {
                let bytes = Data(buffer[..<end])
                buffer.removeFirst(end + 1)
                guard let message = try JSONSerialization.jsonObject(with: bytes) as? [String: Any] else {
                    throw TestFailure("chromium sent a message that is not an object")
                }
                return message
            }
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { throw TestFailure("chromium: no answer to \(what) in time\n--- chromium ---\n\(log)") }
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, Int32(min(left, 1) * 1000) + 1) > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            let count = read(fd, &chunk, chunk.count)
            guard count > 0 else { throw TestFailure("chromium closed its pipe\n--- chromium ---\n\(log)") }
            buffer += chunk[..<count]
        }
    }

    /// A new tab of `width` × `height` CSS pixels.
    public func newPage(width: Int = 1280, height: Int = 900) throws -> Page {
        let target = try call("Target.createTarget", ["url": "about:blank"])["targetId"] as? String ?? ""
        let session = try call("Target.attachToTarget", ["targetId": target, "flatten": true])["sessionId"] as? String ?? ""
        let page = Page(browser: self, session: session)
        try page.call("Page.enable")
        try page.call("Runtime.enable")
        try page.call("Emulation.setDeviceMetricsOverride",
                      ["width": width, "height": height, "deviceScaleFactor": 1, "mobile": false])
        return page
    }

    /// One tab, attached in flat mode: its commands carry its session id.
    public struct Page {
        let browser: Chromium
        let session: String

        @discardableResult
        public func call(_ method: String, _ params: [String: Any] = [:], timeout: Double = 30) throws -> [String: Any] {
            try browser.call(method, params, session: session, timeout: timeout)
        }

        /// Opens `url` and waits for its load event (after any redirects).
        public func navigate(_ url: String) throws {
            browser.events.removeAll { $0["method"] as? String == "Page.loadEventFired" && $0["sessionId"] as? String == session }
            let result = try call("Page.navigate", ["url": url])
            if let error = result["errorText"] as? String { throw TestFailure("chromium could not open \(url): \(error)") }
            try browser.event("Page.loadEventFired", session: session)
        }

        /// The value of a JavaScript expression (awaited when it is a promise).
        public func evaluate(_ expression: String, timeout: Double = 30) throws -> Any? {
            let result = try call("Runtime.evaluate", ["expression": expression, "awaitPromise": true, "returnByValue": true],
                                  timeout: timeout)
            if let exception = result["exceptionDetails"] as? [String: Any] {
                let description = (exception["exception"] as? [String: Any])?["description"] as? String
                throw TestFailure("in the page: \(description ?? "\(exception)")")
            }
            return (result["result"] as? [String: Any])?["value"]
        }

        /// Waits until `condition` (a JavaScript expression) holds, re-checked on every
        /// change of the page's DOM: no polling, no sleeping.
        public func waitFor(_ condition: String, timeout: Double = 30) throws {
            let script = """
                new Promise((resolve, reject) => {
                  const holds = () => { try { return Boolean(\(condition)); } catch (_) { return false; } };
                  if (holds()) return resolve(true);
                  const observer = new MutationObserver(() => {
                    if (holds()) { observer.disconnect(); clearTimeout(timer); resolve(true); }
                  });
                  observer.observe(document.documentElement, { subtree: true, childList: true, attributes: true, characterData: true });
                  const timer = setTimeout(() => {
                    observer.disconnect();
                    reject(new Error("timed out waiting for: " + \(Self.quote(condition)) + "\\n--- page ---\\n" + document.body.innerText));
                  }, \(Int(timeout * 1000)));
                })
                """
            _ = try evaluate(script, timeout: timeout + 10)
        }

        /// A PNG of the tab, the whole page's height.
        public func screenshot() throws -> Data {
            let result = try call("Page.captureScreenshot", ["format": "png", "captureBeyondViewport": true])
            guard let base64 = result["data"] as? String, let png = Data(base64Encoded: base64) else {
                throw TestFailure("chromium sent no screenshot")
            }
            return png
        }

        static func quote(_ text: String) -> String {
            let data = try? JSONSerialization.data(withJSONObject: [text])
            return data.map { String(decoding: $0.dropFirst().dropLast(), as: UTF8.self) } ?? "\"\""
        }
    }

    deinit {
        _ = try? call("Browser.close", timeout: 5)
        let done = DispatchSemaphore(value: 0)
        let waiter = Thread { [process] in
            process.waitUntilExit()
            done.signal()
        }
        waiter.start()
        if done.wait(timeout: .now() + 10) != .success {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}
