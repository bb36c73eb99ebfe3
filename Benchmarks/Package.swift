// swift-tools-version: 6.1
import Foundation
import PackageDescription

// A path dependency's identity is its folder's name, which depends on where the repository was cloned.
let parentPackage = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent

// Benchmarks live in their own package so that `swift test` in the main package never builds them.
// Run: cd Benchmarks && swift package benchmark
let package = Package(
    name: "RedisRotationBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/ordo-one/package-benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // The C floor: hiredis and OpenSSL driven directly over a blocking socket, no Swift in between.
        .target(
            name: "CFloor",
            linkerSettings: [.linkedLibrary("hiredis"), .linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        // The NIO floor: the least a SwiftNIO client does for a reconnect (ClientBootstrap, HELLO, PING),
        // to tell what this library adds from what SwiftNIO itself costs.
        .target(
            name: "NIOFloor",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "RedisRotationBenchmarks",
            dependencies: [
                "CFloor",
                "NIOFloor",
                .product(name: "RedisRotation", package: parentPackage),
                .product(name: "RedisRotationTesting", package: parentPackage),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Benchmark", package: "package-benchmark"),
            ],
            path: "Benchmarks/RedisRotationBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "package-benchmark")]
        ),
        // A small executable for `callgrind.sh`: N operations of one kind (Swift or C floor), so that
        // valgrind's instruction counts can be taken per operation.
        .executableTarget(
            name: "CallgrindProbe",
            dependencies: [
                "CFloor",
                "NIOFloor",
                .product(name: "RedisRotation", package: parentPackage),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
