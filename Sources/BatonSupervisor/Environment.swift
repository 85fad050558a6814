import BatonConfig
import Glibc

/// The environment an instance starts with: defined, like systemd's, never batond's own
/// (which carries whatever its parent had: `MAKEFLAGS`, a shell's settings, secrets).
///
/// In order, later entries winning: `PATH` (systemd's default), `LANG` (batond's, or
/// `C.UTF-8`), `HOME`, `USER` and `LOGNAME` of the user the agent runs as; the variables
/// named in the agent's `inherit_env`, from batond's environment when set there; the
/// agent's `env`; then batond's `BATON_*` variables, which nothing overrides.
enum InstanceEnvironment {
    static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    static func make(config: AgentConfig, uid: uid_t, inherited: [String: String], baton: [String: String]) -> [String: String] {
        var environment = ["PATH": defaultPath, "LANG": inherited["LANG"] ?? "C.UTF-8"]
        if let (home, user) = account(uid) {
            environment["HOME"] = home
            environment["USER"] = user
            environment["LOGNAME"] = user
        }
        for name in config.inheritEnv {
            if let value = inherited[name] { environment[name] = value }
        }
        environment.merge(config.env) { _, configured in configured }
        environment.merge(baton) { _, own in own }
        return environment
    }

    /// The home directory and name of `uid`, with getpwuid_r: runners start instances
    /// on several threads at once, and getpwuid's static buffer is shared.
    private static func account(_ uid: uid_t) -> (home: String, user: String)? {
        var buffer = [CChar](repeating: 0, count: 16_384)
        return buffer.withUnsafeMutableBufferPointer { storage in
            var entry = passwd()
            var found: UnsafeMutablePointer<passwd>?
            guard let base = storage.baseAddress, getpwuid_r(uid, &entry, base, storage.count, &found) == 0, found != nil else {
                return nil
            }
            return (String(cString: entry.pw_dir), String(cString: entry.pw_name))
        }
    }
}
