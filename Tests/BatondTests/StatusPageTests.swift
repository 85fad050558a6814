import BatonAPI
import BatonCore
import BatonTestSupport
import Foundation
import Synchronization
import Testing

/// One-time codes and sessions, on a clock the test moves by hand.
@Suite("status page sessions")
struct UISessionsTests {
    final class Clock: Sendable {
        let now = Mutex(Timestamp(milliseconds: 1_700_000_000_000))
        func advance(_ duration: Duration) { now.withLock { $0 = Timestamp(milliseconds: $0.milliseconds + duration.milliseconds) } }
    }

    @Test func aCodeIsSpentOnceForASession() throws {
        let clock = Clock()
        let sessions = UISessions(now: { clock.now.withLock { $0 } })
        let issued = sessions.issueCode()
        #expect(issued.code.count == 64, "256 random bits in hex")
        #expect(issued.expiresAt.milliseconds - clock.now.withLock { $0 }.milliseconds == 60_000)
        let session = try #require(sessions.spend(issued.code))
        #expect(session.session != issued.code)
        #expect(sessions.isValid(session: session.session))
        #expect(sessions.spend(issued.code) == nil, "a code works once")
        #expect(!sessions.isValid(session: issued.code), "a code is not a session")
        #expect(sessions.spend("") == nil)
    }

    @Test func codesAndSessionsExpire() {
        let clock = Clock()
        let sessions = UISessions(now: { clock.now.withLock { $0 } })
        let late = sessions.issueCode()
        clock.advance(.seconds(60))
        #expect(sessions.spend(late.code) == nil, "60 s and a code is gone")
        let code = sessions.issueCode()
        clock.advance(.seconds(59))
        guard let session = sessions.spend(code.code) else {
            Issue.record("a code spent within 60 s works")
            return
        }
        clock.advance(.seconds(12 * 3600 - 1))
        #expect(sessions.isValid(session: session.session))
        clock.advance(.seconds(1))
        #expect(!sessions.isValid(session: session.session), "12 h and a session is gone")
        #expect(sessions.counts.sessions == 0, "and forgotten")
    }

    @Test func askingLinksInALoopDoesNotGrowMemory() {
        let sessions = UISessions()
        let first = sessions.issueCode()
        for _ in 0..<3000 { _ = sessions.issueCode() }
        #expect(sessions.counts.codes <= 1024)
        #expect(sessions.spend(first.code) == nil, "the oldest went first")
    }
}

/// The login over HTTP against a real batond: the token never enters a URL, a cookie or
/// the log, and the cookie reads but never writes.
@Suite("status page login", .serialized)
struct StatusPageLoginTests {
    let daemon: BatondProcess

    init() throws {
        daemon = try BatondProcess(configText: "[agents.demo]\ncommand = [\"/bin/true\"]\n")
    }

    /// Asks a link with the operator token and spends it: the `baton_session` value.
    func logIn() throws -> (session: String, code: String, setCookie: String) {
        let link = try daemon.endpoint.request("POST", "/v1/ui/links", token: daemon.token)
        #expect(link.status == 201, "\(link.text)")
        let path = try #require(try link.json()["path"] as? String)
        let expiresAt = try #require(try link.json()["expires_at"] as? String)
        let expires = try #require(Timestamp(rfc3339: expiresAt))
        #expect(abs(expires.milliseconds - Timestamp.now().milliseconds - 60_000) < 5_000)
        let code = try #require(path.split(separator: "=").last.map(String.init))
        #expect(path.hasPrefix("/ui/login?code="))
        let login = try daemon.endpoint.get(path)
        #expect(login.status == 303)
        #expect(login.header("Location") == "/")
        let setCookie = try #require(login.header("Set-Cookie"))
        let session = try #require(setCookie.split(separator: ";").first?.split(separator: "=", maxSplits: 1).last.map(String.init))
        return (session, code, setCookie)
    }

    func get(_ path: String, cookie: String) throws -> HTTPResponse {
        try daemon.endpoint.request("GET", path, headers: ["Cookie": "other=1; baton_session=\(cookie)"])
    }

    @Test func withoutASessionThePageSaysHowToGetOne() throws {
        let page = try daemon.endpoint.get("/")
        #expect(page.status == 401)
        #expect(page.header("Content-Type")?.hasPrefix("text/html") == true)
        #expect(page.text.contains("baton ui"))
        #expect(page.text.contains("/v1/ui/links"))
        let spent = try daemon.endpoint.get("/ui/login?code=\(String(repeating: "0", count: 64))")
        #expect(spent.status == 401)
        #expect(spent.header("Set-Cookie") == nil)
        #expect(try daemon.endpoint.get("/ui/login").status == 401)
        #expect(try get("/", cookie: "not-a-session").status == 401)
        #expect(try get("/v1/status", cookie: "not-a-session").status == 401)
    }

    @Test func aLinkLogsInOnceWithAnHttpOnlyStrictCookie() throws {
        let (session, code, setCookie) = try logIn()
        let attributes = Set(setCookie.split(separator: ";").dropFirst().map { $0.trimmingCharacters(in: .whitespaces) })
        #expect(attributes.isSuperset(of: ["HttpOnly", "SameSite=Strict", "Path=/"]), "\(setCookie)")
        #expect(session.count == 64)
        #expect(session != daemon.token && code != daemon.token && !setCookie.contains(daemon.token))
        #expect(try daemon.endpoint.get("/ui/login?code=\(code)").status == 401, "a link works once")

        let page = try get("/", cookie: session)
        #expect(page.status == 200)
        #expect(page.header("Content-Type") == "text/html; charset=utf-8")
        #expect(page.header("Content-Security-Policy")?.contains("default-src 'none'") == true)
        #expect(page.text.contains("EventSource"))
        #expect(!page.text.contains("http://") && !page.text.contains("https://"), "no CDN, nothing from elsewhere")
        #expect(try get("/v1/status", cookie: session).status == 200)
        #expect(try get("/v1/agents/demo", cookie: session).status == 200)
        #expect(try get("/v1/events?since=0", cookie: session).status == 200)
        // The operator token still opens the page, for curl and scripts.
        #expect(try daemon.endpoint.get("/", token: daemon.token).status == 200)
    }

    /// A browser sends the cookie with every request, wherever the request came from: it
    /// must never let one change anything. Every non-GET operator route of the auth table,
    /// with the cookie alone, is refused as if it had no credential.
    @Test func theCookieNeverAdmitsAChange() throws {
        let (session, _, _) = try logIn()
        let changes = AuthTests.operatorCalls.filter { $0.method != "GET" } + AuthTests.instanceCalls
        #expect(changes.contains { $0.path == "/v1/ui/links" })
        for call in changes {
            var headers = ["Cookie": "baton_session=\(session)"]
            if call.body != nil { headers["Content-Type"] = "application/json" }
            let response = try daemon.endpoint.request(call.method, call.path, headers: headers, body: call.body.map { Array($0.utf8) })
            #expect(response.status == 401, "\(call.method) \(call.path) with the cookie alone: \(response.status) \(response.text)")
        }
        #expect(try get("/v1/status", cookie: session).status == 200, "and the session still reads")
    }

    @Test func neitherCodesNorSessionsAreLogged() throws {
        let (session, code, _) = try logIn()
        _ = try get("/v1/status", cookie: session)
        _ = try daemon.endpoint.get("/ui/login?code=\(code)")
        daemon.stop()
        #expect(!daemon.log.isEmpty)
        #expect(!daemon.log.contains(code))
        #expect(!daemon.log.contains(session))
    }
}

/// The acceptance check for people: a real browser logs in through a link, sees the
/// demo agent, and sees a handoff appear without a reload, from the event stream.
@Suite("status page in Chromium", .enabled(if: Chromium.path != nil, "needs Debian's chromium (scripts/install-deps.sh)"))
struct StatusPageBrowserTests {
    @Test func theDemoAgentAndALiveHandoff() throws {
        let state = TemporaryDirectory("status-page")
        let agents = TestReleases(state: state, agent: "demo")
        try agents.add("1.0")
        try agents.add("2.0")
        try agents.setCurrent("1.0")
        let daemon = try BatondProcess(state: state, configText: agents.config())
        try waitUntil(timeout: 30) {
            let view = try? daemon.endpoint.get("/v1/agents/demo", token: daemon.token).json()
            return (view?["running"] as? [String: Any])?["version"] as? String == "1.0"
        }
        let link = try daemon.endpoint.request("POST", "/v1/ui/links", token: daemon.token)
        let path = try #require(try link.json()["path"] as? String)

        let browser = try Chromium()
        let page = try browser.newPage(width: 1280, height: 900)
        try page.navigate("http://\(daemon.endpoint)\(path)")
        #expect(try page.evaluate("location.pathname") as? String == "/", "the code left the address bar")
        #expect(try page.evaluate("document.cookie") as? String == "", "the session is out of scripts' reach")
        try page.waitFor(#"document.querySelector('[data-agent="demo"] .running').textContent === "1.0""#)
        try page.waitFor(#"document.getElementById("live").dataset.state === "live""#)
        // Gone if the page were loaded again.
        _ = try page.evaluate("window.notReloaded = true")

        let answer = try daemon.endpoint.json("PUT", "/v1/agents/demo/desired", token: daemon.token, #"{"version":"2.0"}"#)
        #expect(answer.status == 202, "\(answer.text)")
        let id = try #require(try answer.json()["id"] as? String)
        // Within 20 s: before the page's own 30-s refresh could show it without the stream.
        try page.waitFor("""
            document.querySelector('[data-handoff="\(id)"]').dataset.outcome === "committed"
              && document.querySelector('[data-agent="demo"] .running').textContent === "2.0"
            """, timeout: 20)
        #expect(try page.evaluate("window.notReloaded") as? Bool == true, "no reload")
        // The event stream brought it: its records are listed as they arrive.
        let kinds = try page.evaluate(##"[...document.querySelectorAll("#events li b")].map(b => b.textContent)"##) as? [String] ?? []
        #expect(kinds.contains("handoff.began") && kinds.contains("handoff.ended"), "\(kinds)")

        let png = try page.screenshot()
        let artifacts = Products.packageRoot + "/.build/test-artifacts"
        try FileManager.default.createDirectory(atPath: artifacts, withIntermediateDirectories: true)
        try png.write(to: URL(fileURLWithPath: artifacts + "/status-page.png"))
        #expect(png.starts(with: [0x89, 0x50, 0x4E, 0x47]))
    }
}
