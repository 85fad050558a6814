import BatonCore
import BatonHTTP

/// The status page for people (`GET /`) and its login: `POST /v1/ui/links` gives the
/// operator a one-time link, `GET /ui/login?code=` spends it for a session cookie, so
/// the operator token never enters a URL, a browser or a log. The page itself is static
/// (status.html, compiled in): it reads /v1/status and /v1/handoffs with the cookie and
/// follows /v1/events as Server-Sent Events.
struct StatusPageRoutes {
    let sessions: UISessions

    /// `GET /`
    func page(_ request: Request) throws(HTTPError) -> Reply {
        guard case .operator? = request.principal as? Principal else {
            return .respond(Self.loginHelp(status: 401, "This page needs the operator's rights."))
        }
        return .respond(Self.html(Self.page))
    }

    /// `GET /ui/login`
    func login(_ request: Request) throws(HTTPError) -> Reply {
        guard let code = request.query("code"), let session = sessions.spend(code) else {
            return .respond(Self.loginHelp(status: 401, "This login link is unknown, used already or expired (links work once, for 60 seconds)."))
        }
        let maxAge = UISessions.sessionLifetime.components.seconds
        // No `Secure`: batond serves plain HTTP on loopback, where a Secure cookie
        // would never be sent back. HttpOnly keeps it from scripts, SameSite=Strict
        // from requests other sites start.
        return .respond(Response(status: 303, headers: [
            ("Location", "/"),
            ("Set-Cookie", "\(UISessions.cookieName)=\(session.session); HttpOnly; SameSite=Strict; Path=/; Max-Age=\(maxAge)"),
            ("Cache-Control", "no-store"),
            ("Referrer-Policy", "no-referrer"),
        ]))
    }

    /// `POST /v1/ui/links`
    func issueLink(_ request: Request) throws(HTTPError) -> Reply {
        let issued = sessions.issueCode()
        return .respond(.json(status: 201, UILink(path: "/ui/login?code=\(issued.code)", expiresAt: issued.expiresAt)))
    }

    /// status.html, compiled into batond (a resource bundle beside the binary would be
    /// lost when batond runs from its binary store after a self-upgrade).
    static let page: [UInt8] = PackageResources.status_html

    /// The page's own scripts and styles only; it talks to its own origin alone.
    static let contentSecurityPolicy = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        + "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

    static func html(status: Int = 200, _ body: [UInt8], headers: [(name: String, value: String)] = []) -> Response {
        Response(status: status, headers: [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Cache-Control", "no-store"),
            ("Content-Security-Policy", contentSecurityPolicy),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
        ] + headers, body: body)
    }

    /// A small page telling a person without a session how to get one.
    static func loginHelp(status: Int, _ why: String) -> Response {
        let text = """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><title>batond: log in</title>
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <style>body{font:15px/1.5 system-ui,sans-serif;max-width:44em;margin:3em auto;padding:0 1em;color:#222}
            code,pre{background:#f3f3f3;padding:.1em .3em;border-radius:3px}pre{padding:.6em}</style></head>
            <body><h1>batond status page</h1><p>\(why)</p>
            <p>Ask a one-time login link (valid 60 seconds, for one visit) on the machine that runs batond, as an operator:</p>
            <pre>baton ui</pre>
            <p>or with curl, then open <code>http://&lt;batond's TCP listener&gt;</code> followed by the <code>path</code> it answers:</p>
            <pre>curl -s -X POST --unix-socket /run/baton/batond.sock http://localhost/v1/ui/links</pre>
            <p>The link logs this browser in for 12 hours (until batond restarts) to read the status; it cannot change anything.</p>
            </body></html>
            """
        return html(status: status, Array(text.utf8), headers: [("WWW-Authenticate", #"Bearer realm="batond""#)])
    }
}
