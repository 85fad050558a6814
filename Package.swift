// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "baton",
    // Linux only: batond and its tests use Glibc, epoll (through libmicrohttpd), pidfds,
    // SO_PEERCRED and /proc. SwiftPM has no way to declare Linux, so no platform is listed.
    products: [
        .executable(name: "batond", targets: ["batond"]),
        // The operator's command line (docs/cli.md).
        .executable(name: "baton", targets: ["baton"]),
        // batond's API from Swift: one HTTP/1.1 client over the Unix socket or loopback TCP.
        .library(name: "BatonClient", targets: ["BatonClient"]),
        // The agent side of the protocol, for Swift agents (docs/agent-protocol.md).
        .library(name: "BatonAgent", targets: ["BatonAgent"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        // libmicrohttpd, seen through a header of fixed-arity wrappers (Swift cannot call C variadics).
        .systemLibrary(
            name: "CMicroHTTPD",
            pkgConfig: "libmicrohttpd",
            providers: [.apt(["libmicrohttpd-dev"])]
        ),
        // libarchive, for unpacking releases; libcurl, for fetching them.
        .systemLibrary(name: "CArchive", pkgConfig: "libarchive", providers: [.apt(["libarchive-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        // The API's JSON bodies, shared by batond, the CLI and the agent library. Foundation only.
        .target(name: "BatonWire"),
        // The pure core: names, versions, ledger records and their codec. No I/O.
        .target(name: "BatonCore", dependencies: ["BatonWire"]),
        // The ledger on disk: journal, snapshot, recovery, lock, group commit.
        .target(
            name: "BatonLedger",
            dependencies: ["BatonCore", .product(name: "Logging", package: "swift-log")]
        ),
        // An HTTP/1.1 server over libmicrohttpd. Knows nothing of agents; speaks BatonWire's JSON.
        .target(
            name: "BatonHTTP",
            dependencies: ["CMicroHTTPD", "BatonWire", .product(name: "Logging", package: "swift-log")]
        ),
        // Process creation in C: fork, switch user and group, exec (posix_spawn cannot).
        .target(name: "CBatonSpawn"),
        // Releases on disk: push and fetch, verify, unpack safely, list, collect.
        .target(
            name: "BatonReleases",
            dependencies: [
                "BatonCore", "CArchive", "CCurl",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The etcd v3 client of fleet mode: its JSON gateway over libcurl (docs/fleet.md).
        .target(name: "BatonEtcd", dependencies: ["CCurl"]),
        // Processes: spawn, watch, signal; instances and their signals; handoffs.
        .target(
            name: "BatonSupervisor",
            dependencies: [
                "BatonCore", "BatonLedger", "BatonConfig", "BatonReleases", "BatonClient", "BatonHTTP", "CBatonSpawn",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Configuration: one TOML file, validated once, errors with file, key and line.
        .target(
            name: "BatonConfig",
            dependencies: ["BatonCore", "TOMLKit"]
        ),
        // Fleet mode: this host's membership in a fleet kept in etcd, and the coordinator.
        .target(
            name: "BatonFleet",
            dependencies: [
                "BatonCore", "BatonConfig", "BatonEtcd", "BatonReleases", "BatonSupervisor",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Routes and handlers of the batond API: auth, status, events, metrics.
        .target(
            name: "BatonAPI",
            dependencies: [
                "BatonCore", "BatonLedger", "BatonHTTP", "BatonConfig", "BatonSupervisor", "BatonReleases", "BatonFleet",
                .product(name: "Logging", package: "swift-log"),
            ],
            // The status page, compiled into batond as bytes (no bundle to lose beside the binary).
            resources: [.embedInCode("status.html")]
        ),
        // The daemon's parts wired together as services: listeners, sd_notify, shutdown.
        .target(
            name: "BatonDaemon",
            dependencies: [
                "BatonCore", "BatonLedger", "BatonHTTP", "BatonConfig", "BatonAPI", "BatonSupervisor", "BatonFleet",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "batond",
            dependencies: [
                "BatonDaemon", "BatonConfig", "BatonCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The one HTTP/1.1 client of batond's API (the CLI's, the agent library's, the probe's, the tests'): BatonWire, Foundation and Glibc only.
        .target(name: "BatonClient", dependencies: ["BatonWire"]),
        // `baton`, the operator's command line.
        .executableTarget(
            name: "baton",
            dependencies: [
                "BatonClient", "BatonCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // Benchmarks live apart from tests (`make bench`).
        .executableTarget(
            name: "baton-bench",
            dependencies: ["BatonCore", "BatonLedger", .product(name: "Logging", package: "swift-log"),
                           "BatonReleases", "BatonTestSupport", "BatonFleet", "BatonConfig", "BatonEtcd"],
            path: "bench/Sources/baton-bench"
        ),
        // Helpers shared by the test targets: requests through BatonClient and a raw sender, temp dirs, a batond launcher.
        .target(
            name: "BatonTestSupport",
            dependencies: ["BatonClient"],
            path: "Tests/BatonTestSupport"
        ),
        .testTarget(name: "BatonCoreTests", dependencies: ["BatonCore", "BatonTestSupport"]),
        .testTarget(name: "BatonLedgerTests", dependencies: ["BatonLedger", "BatonCore", "BatonTestSupport"]),
        .testTarget(name: "BatonHTTPTests", dependencies: ["BatonHTTP", "BatonWire", "BatonTestSupport"]),
        .testTarget(name: "BatonConfigTests", dependencies: ["BatonConfig", "BatonTestSupport"]),
        .testTarget(
            name: "BatonReleasesTests",
            dependencies: ["BatonReleases", "BatonCore", "BatonTestSupport", .product(name: "Crypto", package: "swift-crypto")]
        ),
        .testTarget(name: "BatonEtcdTests", dependencies: ["BatonEtcd", "BatonTestSupport"]),
        .testTarget(name: "BatonSupervisorTests", dependencies: ["BatonSupervisor", "BatonCore", "BatonTestSupport"]),
        .testTarget(
            name: "BatondTests",
            dependencies: ["BatonTestSupport", "BatonCore", "BatonAPI", "BatonSupervisor", "BatonLedger", "BatonReleases",
                           .product(name: "Crypto", package: "swift-crypto"),
                           .product(name: "Logging", package: "swift-log")]
        ),
        // The parsers' fuzz entry points (Tests/Fuzz): run by `make fuzz`, replayed on the
        // committed corpus and crashes by BatonFuzzTests.
        .target(
            name: "BatonFuzzTargets",
            dependencies: ["BatonAPI", "BatonConfig", "BatonCore", "BatonHTTP", "BatonLedger", "BatonReleases",
                           "BatonSupervisor", "BatonWire"],
            path: "Tests/Fuzz/BatonFuzzTargets"
        ),
        .testTarget(name: "BatonFuzzTests", dependencies: ["BatonFuzzTargets"]),
        // Client library for Swift agents: the agent side of the protocol, over BatonClient.
        .target(name: "BatonAgent", dependencies: ["BatonWire", "BatonClient"]),
        .testTarget(name: "BatonAgentTests", dependencies: ["BatonAgent", "BatonWire", "BatonTestSupport"]),
        .testTarget(name: "BatonCLITests", dependencies: ["BatonClient", "BatonCore", "BatonTestSupport"]),
        // An agent with misbehaviour switches, for tests and demos.
        .executableTarget(
            name: "baton-testagent",
            dependencies: ["BatonAgent", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // Runs a batond the way a service manager does, reaping the instances a killed
        // batond leaves (the soak's); a C program, so it adds nothing to the build's time.
        .executableTarget(name: "baton-testreaper", path: "Tests/Reaper"),
        // The example HTTP service agent (examples/http-agent/README.md): listening sockets passed by batond.
        .executableTarget(
            name: "http-agent",
            dependencies: ["BatonAgent", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "examples/http-agent",
            exclude: ["README.md"]
        ),
    ],
    swiftLanguageModes: [.v6]
)

// `make fuzz` only (scripts/fuzz.sh sets BATON_FUZZ): the libFuzzer executable, built with
// -sanitize=fuzzer,address into .build-fuzz. libFuzzer brings its main, so the normal
// build, which has none, never sees this target.
if Context.environment["BATON_FUZZ"] != nil {
    package.targets.append(
        .executableTarget(name: "baton-fuzz", dependencies: ["BatonFuzzTargets"], path: "Tests/Fuzz/baton-fuzz"))
}
