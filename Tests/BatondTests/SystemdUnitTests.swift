import BatonTestSupport
import Foundation
import Testing

@Suite("systemd units")
struct SystemdUnitTests {
    /// `systemd-analyze verify` on copies whose ExecStart is the freshly built batond (it
    /// refuses a missing binary). Unknown keys only warn, so the output must be empty too.
    @Test func theUnitsVerifyCleanly() throws {
        guard let analyze = which("systemd-analyze") else {
            Issue.record("systemd-analyze is not installed; `make test` installs systemd")
            return
        }
        let directory = TemporaryDirectory("units")
        for name in ["batond.service", "batond.socket"] {
            var text = try String(contentsOfFile: Products.packageRoot + "/systemd/" + name, encoding: .utf8)
            text = text.replacingOccurrences(of: "/var/lib/baton/daemon/current/batond", with: Products.path("batond"))
            try text.write(toFile: directory.file(name), atomically: true, encoding: .utf8)
        }
        let result = try run(["/bin/sh", "-c", "cd \(directory.path) && \(analyze) verify ./batond.socket ./batond.service 2>&1"])
        #expect(result.status == 0, "systemd-analyze: \(result.output)")
        #expect(result.output.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "systemd-analyze: \(result.output)")
    }

    @Test func theServiceIsHardenedAndNotifies() throws {
        let text = try String(contentsOfFile: Products.packageRoot + "/systemd/batond.service", encoding: .utf8)
        for line in ["Type=notify", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "StateDirectory=baton",
                     "RestartPreventExitStatus=64 78", "KillMode=process",
                     // Through the link a self-upgrade moves (batond --install-self seeds it).
                     "ExecStart=/var/lib/baton/daemon/current/batond --config /etc/baton/batond.toml"] {
            #expect(text.split(separator: "\n").contains(Substring(line)), "missing \(line)")
        }
    }
}
