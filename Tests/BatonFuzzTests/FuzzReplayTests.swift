import BatonFuzzTargets
import Foundation
import Testing

/// Replays the committed fuzz corpus (Tests/Fuzz/corpus/<target>) and every crash the
/// fuzzer found (Tests/Fuzz/crashes/<target>) through the same entry functions
/// `make fuzz` runs, in the normal build: an input that traps takes the test process
/// down, so the run fails.
@Suite struct FuzzReplayTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz")

    static func inputs(_ kind: String, _ target: FuzzTarget) -> [URL] {
        let directory = root.appendingPathComponent(kind).appendingPathComponent(target.rawValue)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted().map { directory.appendingPathComponent($0) }
    }

    @Test("the corpus and every crash found replay without a trap", arguments: FuzzTarget.allCases)
    func replay(_ target: FuzzTarget) throws {
        let corpus = Self.inputs("corpus", target)
        // Seeded from real files: a target without any would replay nothing.
        #expect(corpus.count >= 5, "\(target.rawValue): \(corpus.count) corpus files")
        // BATON_FUZZ_REPLAY_VERBOSE=1 names each file before it runs: the one a trap stopped at.
        let verbose = ProcessInfo.processInfo.environment["BATON_FUZZ_REPLAY_VERBOSE"] != nil
        for file in corpus + Self.inputs("crashes", target) {
            if verbose { FileHandle.standardError.write(Data("replaying \(file.path)\n".utf8)) }
            target.run(Array(try Data(contentsOf: file)))
        }
    }
}
