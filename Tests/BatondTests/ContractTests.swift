import BatonTestSupport
import Foundation
import Testing

/// Every route of the real batond, checked against api/openapi.yaml's schemas by
/// scripts/check-contract.py (a JSON Schema validator reads the spec itself).
@Suite("batond contract")
struct ContractTests {
    @Test func everyAnswerMatchesTheSpec() throws {
        guard let python = which("python3") else {
            Issue.record("python3 is not installed; `make test` installs it")
            return
        }
        let daemon = try BatondProcess(configText: "[agents.demo]\ncommand = [\"{release}/bin/demo\"]\n")
        guard case .tcp(let host, let port) = daemon.endpoint else { throw TestFailure("no TCP listener") }
        let result = try run([python, Products.packageRoot + "/scripts/check-contract.py",
                              Products.packageRoot + "/api/openapi.yaml", "http://\(host):\(port)", daemon.token])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("58 passed, 0 failed"), "\(result.output)")
    }
}
