import Foundation
import Glibc

/// Releases of a test agent under a state directory: each version's `bin/agent` runs
/// baton-testagent with that version's switches and one shared events file.
public struct TestReleases {
    public let state: TemporaryDirectory
    public let agent: String
    public let events: String

    public init(state: TemporaryDirectory, agent: String = "web") {
        self.state = state
        self.agent = agent
        self.events = state.file("events-\(agent).log")
    }

    /// Writes `releases/<agent>/<version>/bin/agent`.
    public func add(_ version: String, _ switches: [String] = []) throws {
        let bin = "\(state.path)/releases/\(agent)/\(version)/bin"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        let arguments = (["--events", events] + switches).map { "'\($0)'" }.joined(separator: " ")
        let script = "#!/bin/sh\nexec '\(Products.path("baton-testagent"))' \(arguments) \"$@\"\n"
        try script.write(toFile: "\(bin)/agent", atomically: true, encoding: .utf8)
        chmod("\(bin)/agent", 0o755)
    }

    public func setCurrent(_ version: String) throws {
        let link = "\(state.path)/releases/\(agent)/current"
        unlink(link)
        guard symlink(version, link) == 0 else { throw TestFailure("symlink \(link)") }
    }

    public var current: String? {
        try? FileManager.default.destinationOfSymbolicLink(atPath: "\(state.path)/releases/\(agent)/current")
    }

    /// The config declaring the agent.
    public func config(mode: String = "parallel", ready: String = "10s", stop: String = "5s", kill: String = "2s") -> String {
        """
        [agents.\(agent)]
        command = ["{release}/bin/agent"]
        mode = "\(mode)"
        ready_timeout = "\(ready)"
        stop_timeout = "\(stop)"
        kill_timeout = "\(kill)"
        """
    }

    /// The events the agents wrote: `(event, instance, version, monotonic ns)`.
    public func log() -> [AgentEvent] { AgentEventLog(path: events).events }
}

/// An events file written by baton-testagent (`--events`).
public struct AgentEventLog {
    public let path: String

    public init(path: String) { self.path = path }

    public var events: [AgentEvent] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let parts = line.split(separator: " ")
            guard parts.count >= 4, let time = UInt64(parts[3]) else { return nil }
            return AgentEvent(event: String(parts[0]), instance: String(parts[1]), version: String(parts[2]), nanoseconds: time)
        }
    }
}

public struct AgentEvent: Sendable, Equatable {
    public let event: String
    public let instance: String
    public let version: String
    public let nanoseconds: UInt64

    public init(event: String, instance: String, version: String, nanoseconds: UInt64) {
        self.event = event; self.instance = instance; self.version = version; self.nanoseconds = nanoseconds
    }
}

/// The invariant checked from the agents' own records, not batond's view: at most one
/// instance works at any moment. An instance works from `go` until it reports
/// `stopped` or exits (`exit`), whichever comes first (after SIGTERM it may still be
/// finishing its work, so `term` does not end it).
public func workingIntervals(_ events: [AgentEvent]) -> [(instance: String, from: UInt64, to: UInt64)] {
    var intervals: [(String, UInt64, UInt64)] = []
    for (instance, mine) in Dictionary(grouping: events, by: \.instance) {
        guard let go = mine.first(where: { $0.event == "go" }) else { continue }
        let end = mine.first { ["stopped", "exit"].contains($0.event) && $0.nanoseconds >= go.nanoseconds }
        intervals.append((instance, go.nanoseconds, end?.nanoseconds ?? UInt64.max))
    }
    return intervals.sorted { $0.1 < $1.1 }
}

/// The overlapping pairs of working intervals (empty when exclusion held).
public func overlaps(_ events: [AgentEvent]) -> [(String, String)] {
    let intervals = workingIntervals(events)
    var found: [(String, String)] = []
    for (index, a) in intervals.enumerated() {
        // Sorted by start: the first that starts after `a` ended ends the search.
        for b in intervals[(index + 1)...] {
            guard b.from < a.to else { break }
            found.append((a.instance, b.instance))
        }
    }
    return found
}
