import BatonTestSupport
import Foundation
import Glibc
import Testing

/// Every operation of api/openapi.yaml × every kind of caller, generated from the spec:
/// a route added to the spec is in the matrix without anyone writing a line here. Each
/// cell is refused (401 or 403, in the one error shape) unless the operation's declared
/// security grants that caller; the cells it grants are answered past authentication
/// (their bodies are deliberately invalid, so nothing changes: a 4xx that is not 401 or
/// 403). Open operations (probes, the login page) answer every caller alike.
@Suite("the auth matrix", .serialized)
struct AuthMatrixTests {
    enum Caller: String, CaseIterable, Sendable {
        case none = "no credentials"
        case wrongToken = "a wrong token"
        case otherInstance = "another instance's token"
        case registration = "the registration token"
        case instanceOnSocket = "an instance's process on the control socket, no header"
        case stranger = "a non-operator uid on the control socket (opened to everyone)"
        case operatorToken = "the operator token"
        case ownInstance = "the instance's own token"

        /// Whether an operation with `security` grants this caller.
        func isGranted(by security: [String]) -> Bool {
            switch self {
            case .operatorToken: security.contains("operatorToken")
            case .ownInstance, .instanceOnSocket: security.contains("instanceToken")
            // Registration is granted only with the caller's kernel credentials on the agent
            // socket (over TCP only for configured uids): `registeringOnTheAgentSocket`.
            case .none, .wrongToken, .otherInstance, .registration, .stranger: false
            }
        }
    }

    struct Answer {
        let status: Int
        let body: String
        var errorCode: String? {
            let json = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
            return (json?["error"] as? [String: Any])?["code"] as? String
        }
    }

    static let registrationToken = "registration-token-0123456789abcdef"
    static var canActAsAnotherUser: Bool { getuid() == 0 && which("setpriv") != nil && which("curl") != nil }

    let state = TemporaryDirectory("auth-matrix")
    let daemon: BatondProcess
    let spec: OpenAPISpec
    /// alpha's running instance (whose process makes requests on demand) and beta's.
    let alpha: (id: String, pid: Int32, token: String)
    let beta: (id: String, pid: Int32, token: String)

    var matrix: String { state.file("matrix") }

    /// One request per operation: path parameters filled with this machine's names, a
    /// version that is not stored, and a body no schema accepts.
    func request(_ operation: OpenAPISpec.Operation) -> (path: String, bodyType: String?, body: [UInt8]?) {
        var path = operation.path
            .replacingOccurrences(of: "{name}", with: "alpha")
            .replacingOccurrences(of: "{agent}", with: "alpha")
            .replacingOccurrences(of: "{version}", with: "9.9")
        path = path.hasPrefix("/v1/instances/") ? path.replacingOccurrences(of: "{id}", with: alpha.id)
            : path.replacingOccurrences(of: "{id}", with: "alpha-1")
        switch spec.details[operation]?.bodyType {
        case "application/json"?: return (path, "application/json", Array(#"{"baton_auth_matrix":true}"#.utf8))
        case let type?: return (path, type, Array("x".utf8))
        case nil: return (path, nil, nil)
        }
    }

    init() throws {
        Glibc.chmod(state.path, 0o711)
        try FileManager.default.createDirectory(atPath: state.file("matrix"), withIntermediateDirectories: true)
        Glibc.chmod(state.file("matrix"), 0o777)
        spec = try OpenAPISpec.load()
        // The batch runner: each request of DIR/batch over SOCKET, the answers in DIR/results.
        let runner = """
            #!/bin/sh
            dir=$1 socket=$2
            : > "$dir/results.tmp"
            while read -r method path ctype body; do
              rm -f "$dir/answer"
              if [ "$body" = "-" ]; then
                code=$(curl -s -o "$dir/answer" -w '%{http_code}' --unix-socket "$socket" -X "$method" "http://localhost$path")
              else
                code=$(curl -s -o "$dir/answer" -w '%{http_code}' --unix-socket "$socket" -X "$method" -H "Content-Type: $ctype" --data-binary "@$body" "http://localhost$path")
              fi
              printf '%s %s\\n' "$code" "$(head -c 400 "$dir/answer" 2>/dev/null | tr -d '\\n')" >> "$dir/results.tmp"
            done < "$dir/batch"
            mv "$dir/results.tmp" "$dir/results"
            """
        try Self.write(runner, to: state.file("matrix/batch.sh"), mode: 0o755)
        // alpha: runs the batch in matrix/alpha as itself whenever a line arrives on its fifo.
        try FileManager.default.createDirectory(atPath: state.file("matrix/alpha"), withIntermediateDirectories: true)
        mkfifo(state.file("matrix/alpha/fifo"), 0o600)
        for (agent, script) in [
            ("alpha", "#!/bin/sh\nwhile read -r _ < \(state.file("matrix/alpha/fifo")); do sh \(state.file("matrix/batch.sh")) \(state.file("matrix/alpha")) \(state.file("batond.sock")); done\n"),
            ("beta", "#!/bin/sh\nexec sleep 3600\n"),
        ] {
            try FileManager.default.createDirectory(atPath: state.file("releases/\(agent)/1.0/bin"), withIntermediateDirectories: true)
            try Self.write(script, to: state.file("releases/\(agent)/1.0/bin/run"), mode: 0o755)
            try FileManager.default.createSymbolicLink(atPath: state.file("releases/\(agent)/current"), withDestinationPath: "1.0")
        }
        let daemon = try BatondProcess(state: state, configText: """
            [daemon]
            operator_group = "4242"
            stop_agents_on_exit = true

            [agents.alpha]
            command = ["{release}/bin/run"]
            readiness = { command = ["/bin/true"] }

            [agents.beta]
            command = ["{release}/bin/run"]
            readiness = { command = ["/bin/true"] }

            [agents.ext]
            external = true
            registration_token = "\(Self.registrationToken)"
            """)
        self.daemon = daemon
        func instance(_ agent: String) throws -> (String, Int32, String) {
            var found: (String, Int32, String)?
            try waitUntil(timeout: 30) {
                guard let first = (try? daemon.instances(of: agent))?.first, first["state"] as? String == "working",
                      let id = first["id"] as? String, let pid = first["pid"] as? Int,
                      let environ = try? String(contentsOfFile: "/proc/\(pid)/environ", encoding: .utf8),
                      let token = environ.split(separator: "\0").first(where: { $0.hasPrefix("BATON_TOKEN=") })?.dropFirst(12)
                else { return false }
                found = (id, Int32(pid), String(token))
                return true
            }
            return found!
        }
        let alpha = try instance("alpha")
        let beta = try instance("beta")
        self.alpha = alpha
        self.beta = beta
    }

    static func write(_ text: String, to path: String, mode: mode_t) throws {
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        Glibc.chmod(path, mode)
    }

    /// Runs every operation's request through `runner` (`dir`'s batch file, answered in
    /// its results file) and returns the answers by operation.
    func batch(in dir: String, run: () throws -> Void) throws -> [OpenAPISpec.Operation: Answer] {
        let operations = spec.operations.sorted { ($0.path, $0.method) < ($1.path, $1.method) }
        var lines: [String] = []
        for (index, operation) in operations.enumerated() {
            let request = request(operation)
            var bodyFile = "-"
            if let body = request.body {
                bodyFile = "\(dir)/body-\(index)"
                guard FileManager.default.createFile(atPath: bodyFile, contents: Data(body), attributes: [.posixPermissions: 0o644])
                else { throw TestFailure("could not write \(bodyFile)") }
            }
            lines.append("\(operation.method) \(request.path) \(request.bodyType ?? "-") \(bodyFile)")
        }
        try Self.write(lines.joined(separator: "\n") + "\n", to: "\(dir)/batch", mode: 0o644)
        unlink("\(dir)/results")
        try run()
        try waitUntil(timeout: 60) { access("\(dir)/results", F_OK) == 0 }
        let results = try String(contentsOfFile: "\(dir)/results", encoding: .utf8).split(separator: "\n")
        #expect(results.count == operations.count)
        return Dictionary(uniqueKeysWithValues: zip(operations, results.map { line in
            Answer(status: Int(line.prefix(3)) ?? 0, body: String(line.dropFirst(4)))
        }))
    }

    /// Every operation's answer to `caller`.
    func answers(_ caller: Caller) throws -> [OpenAPISpec.Operation: Answer] {
        switch caller {
        case .instanceOnSocket:
            return try batch(in: state.file("matrix/alpha")) {
                let fifo = open(state.file("matrix/alpha/fifo"), O_WRONLY)
                defer { close(fifo) }
                _ = "go\n".withCString { Glibc.write(fifo, $0, 3) }
            }
        case .stranger:
            let dir = state.file("matrix/stranger")
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            Glibc.chmod(dir, 0o777)
            return try batch(in: dir) {
                let (status, output) = try run([which("setpriv")!, "--reuid", "65534", "--regid", "65534", "--clear-groups", "--",
                                                "/bin/sh", state.file("matrix/batch.sh"), dir, daemon.socketPath])
                guard status == 0 else { throw TestFailure("the batch as uid 65534 failed: \(output)") }
            }
        default:
            let token: String? = switch caller {
            case .none: nil
            case .wrongToken: String(daemon.token.reversed())
            case .otherInstance: beta.token
            case .registration: Self.registrationToken
            case .operatorToken: daemon.token
            case .ownInstance: alpha.token
            case .instanceOnSocket, .stranger: nil
            }
            var answers: [OpenAPISpec.Operation: Answer] = [:]
            for operation in spec.operations {
                let request = request(operation)
                let response = try daemon.endpoint.request(operation.method, request.path, token: token,
                                                           headers: request.bodyType.map { ["Content-Type": $0] } ?? [:],
                                                           body: request.body)
                answers[operation] = Answer(status: response.status, body: response.text)
            }
            return answers
        }
    }

    @Test(.enabled(if: canActAsAnotherUser, "needs root, setpriv and curl to act as an instance's process and as another user"),
          .timeLimit(.minutes(3)))
    func everyCellIsRefusedButTheIntendedOnes() throws {
        // Open to everyone only to see what batond answers a stranger who got through.
        Glibc.chmod(daemon.socketPath, 0o666)
        let baseline = try answers(.none)
        var cells = 0
        for caller in Caller.allCases {
            let answers = try answers(caller)
            for operation in spec.operations {
                let security = try #require(spec.details[operation]?.security)
                let answer = try #require(answers[operation])
                let cell = "\(operation.method) \(operation.path) × \(caller.rawValue): \(answer.status) \(answer.body.prefix(200))"
                cells += 1
                if security.isEmpty {
                    #expect(answer.status == baseline[operation]?.status, "an open route answered a credential differently: \(cell)")
                } else if caller.isGranted(by: security) {
                    #expect(![0, 401, 403].contains(answer.status) && answer.status < 500, "refused where granted: \(cell)")
                } else {
                    #expect([401, 403].contains(answer.status), "granted where refused: \(cell)")
                    if operation.path.hasPrefix("/v1/") {
                        #expect(["unauthorized", "forbidden"].contains(answer.errorCode), "not the one error shape: \(cell)")
                    }
                }
            }
        }
        #expect(cells == spec.operations.count * Caller.allCases.count)
        // The instances the matrix acted as are still there: no refused cell had an effect.
        #expect(try daemon.instances(of: "alpha").first?["id"] as? String == alpha.id)
        #expect(try daemon.instances(of: "beta").first?["id"] as? String == beta.id)
    }

    @Test(.enabled(if: canActAsAnotherUser, "needs root, setpriv and curl to act as another user"))
    func aNonOperatorUidCannotEvenConnect() throws {
        let answers = try answers(.stranger)
        #expect(answers.count == spec.operations.count)
        #expect(answers.values.allSatisfy { $0.status == 0 }, "\(answers.values.map(\.status))")
    }

    @Test(.enabled(if: canActAsAnotherUser, "needs root, setpriv and curl to act as another user"))
    func registeringOnTheAgentSocketIsTheRegistrationTokensOneCell() throws {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/sleep")
        child.arguments = ["300"]
        try child.run()
        defer { kill(child.processIdentifier, SIGKILL) }
        let body = #"{"pid":\#(child.processIdentifier),"version":"1.0"}"#
        let agentSocket = Endpoint.unix(path: daemon.agentSocketPath)
        // The same token for another agent, and over TCP, where the peer is not known: refused.
        #expect([401, 403].contains(try agentSocket.json("POST", "/v1/agents/alpha/instances", token: Self.registrationToken, body).status))
        #expect([401, 403].contains(try daemon.endpoint.json("POST", "/v1/agents/ext/instances", token: Self.registrationToken, body).status))
        let registered = try agentSocket.json("POST", "/v1/agents/ext/instances", token: Self.registrationToken, body)
        #expect(registered.status == 201, "\(registered.text)")
    }
}
