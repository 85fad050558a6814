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
        #expect(result.output.contains("62 passed, 0 failed"), "\(result.output)")
    }

    /// The fleet routes in fleet mode, on a real etcd: no plan, plans, conflicts, refusals.
    @Test(.enabled(if: EtcdCluster.isAvailable, "etcd is not installed (scripts/install-deps.sh test)"))
    func fleetAnswersMatchTheSpec() throws {
        let python = try #require(which("python3"), "make test installs python3")
        let cluster = try EtcdCluster(size: 1)
        let daemon = try BatondProcess(configText: """
            [fleet]
            endpoints = ["\(cluster.endpoints[0])"]
            host = "contract"

            [agents.demo]
            command = ["{release}/bin/demo"]
            """)
        guard case .tcp(let host, let port) = daemon.endpoint else { throw TestFailure("no TCP listener") }
        let result = try run([python, Products.packageRoot + "/scripts/check-contract.py",
                              Products.packageRoot + "/api/openapi.yaml", "http://\(host):\(port)", daemon.token, "fleet"])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("75 passed, 0 failed"), "\(result.output)")
    }
}
