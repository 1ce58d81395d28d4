// swift-tools-version:6.0
// libFuzzer targets. Built by `make fuzz` with -sanitize=fuzzer,address and -parse-as-library; the checks
// themselves live in the main package (FuzzChecks), so the test suite can replay the corpus without sanitizers.
import Foundation
import PackageDescription

// A path dependency is named after its directory, which is whatever the clone was called.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()

let package = Package(
    name: "signpost-fuzz",
    platforms: [.macOS(.v14)],
    dependencies: [.package(path: root.path)],
    targets: [
        .target(name: "FuzzDriver"),
        .executableTarget(name: "FuzzParser",
                          dependencies: ["FuzzDriver", .product(name: "SignpostKit", package: root.lastPathComponent.lowercased())]),
        .executableTarget(name: "FuzzQueryPath",
                          dependencies: ["FuzzDriver", .product(name: "SignpostKit", package: root.lastPathComponent.lowercased())]),
    ]
)
