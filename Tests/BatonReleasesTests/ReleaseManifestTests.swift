import BatonCore
import BatonReleases
import BatonTestSupport
import Foundation
import Testing

@Suite("release.json")
struct ReleaseManifestTests {
    @Test func roundTripsWithSnakeCaseKeys() throws {
        let manifest = ReleaseManifest(agent: "web", version: "2.0", sha256: String(repeating: "a", count: 64), size: 10,
                                       unpackedBytes: 20, files: 2, format: .tarGzip, source: .fetch,
                                       url: "http://127.0.0.1/web-2.0.tar.gz", pushedAt: .now(), pushedBy: "operator",
                                       signedBy: "ci", irreversible: true, migration: ["{release}/bin/migrate"])
        let data = try manifest.encoded()
        let text = String(decoding: data, as: UTF8.self)
        #expect(text.contains("\"unpacked_bytes\""))
        #expect(text.contains("\"format\" : \"tar.gz\""))
        #expect(try ReleaseManifest.decode(data) == manifest)
    }

    @Test func theStoreReadsAReleasesManifestAndNoneForAHandDroppedOne() throws {
        let state = TemporaryDirectory("manifest")
        let store = ReleaseStore(stateDirectory: state.path)
        try FileManager.default.createDirectory(atPath: state.path + "/releases/web/1.0", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: state.path + "/releases/web/2.0", withIntermediateDirectories: true)
        let manifest = ReleaseManifest(agent: "web", version: "2.0", sha256: String(repeating: "b", count: 64), size: 1,
                                       unpackedBytes: 1, files: 1, format: .executable, source: .push,
                                       pushedAt: .now(), pushedBy: "operator")
        try manifest.encoded().write(to: URL(fileURLWithPath: state.path + "/releases/web/2.0/release.json"))
        #expect(store.manifest(agent: "web", version: "2.0") == manifest)
        #expect(store.manifest(agent: "web", version: "1.0") == nil)
        #expect(store.manifest(agent: "web", version: "../web/2.0") == nil)
    }
}
