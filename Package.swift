// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "signpost",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "signpost", targets: ["signpost"]),
        // For the microbenchmarks in bench/micro, a package of their own.
        .library(name: "SignpostKit", targets: ["DNSWire", "Catalog", "Registries", "Gateway", "FuzzChecks"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.25.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.2.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.21.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.27.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.0.0"),
    ],
    targets: [
        // DNS wire format: messages, names, records, compression. NIOCore only.
        .target(
            name: "DNSWire",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        // libldns, used to read RFC 1035 master files (and as the reference in differential tests).
        .systemLibrary(
            name: "CLDNS",
            pkgConfig: "ldns",
            providers: [.apt(["libldns-dev"])]
        ),
        // The registry model, snapshots, the catalog-file watcher and zone loading.
        .target(
            name: "Catalog",
            dependencies: [
                "DNSWire", "CLDNS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "HashTreeCollections", package: "swift-collections"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // The registry clients, each with its decoder: catalog files, etcd, Consul, and the connection they share.
        .target(
            name: "Registries",
            dependencies: [
                "DNSWire", "Catalog",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ]
        ),
        // recvmmsg/sendmmsg, which Swift's Glibc module hides (they need _GNU_SOURCE).
        .target(name: "CUDPBatch"),
        // Dropping root on a thread glibc's setuid() skips (--user).
        .target(name: "CPrivileges"),
        // Resolver, UDP/TCP front ends.
        .target(
            name: "Gateway",
            dependencies: [
                "DNSWire", "Catalog", "CUDPBatch",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // What the fuzz targets in fuzz/ check, shared with the test that replays their corpus.
        .target(
            name: "FuzzChecks",
            dependencies: [
                "DNSWire", "Catalog", "Gateway",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "signpost",
            dependencies: [
                "Gateway", "Catalog", "Registries", "DNSWire", "CPrivileges",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ]
        ),
        // The seeded random generator every test target draws from.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(
            name: "DNSWireTests",
            dependencies: ["DNSWire", "CLDNS", "FuzzChecks", "TestSupport", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "CatalogTests",
            dependencies: ["Catalog", "Registries", "DNSWire", "TestSupport", .product(name: "Logging", package: "swift-log"),
                           .product(name: "NIOCore", package: "swift-nio"),
                           .product(name: "HashTreeCollections", package: "swift-collections")],
            resources: [.copy("Resources")]
        ),
        .testTarget(
            name: "GatewayTests",
            dependencies: [
                "Gateway", "Catalog", "Registries", "DNSWire", "TestSupport", "CUDPBatch",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: [
                "DNSWire", "Catalog", "Registries", "Gateway", "signpost", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            exclude: ["ConsulStandIn", "FakeUpstream", "GRPCProbe", "MuslProbe", "TLS", "BadRegistry", "GoLookup"]
        ),
    ]
)
