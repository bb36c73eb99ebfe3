// swift-tools-version: 6.2
import Foundation
import PackageDescription

// A path dependency's identity is its folder's name, which depends on where the repository was cloned.
let parentPackage = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent

let fuzzSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .treatAllWarnings(as: .error),
]

// libFuzzer targets, in their own package so that the main package never builds them. Each executable
// defines LLVMFuzzerTestOneInput and gets its main from libFuzzer: build and run them with
// scripts/fuzz.sh, which passes --sanitize=fuzzer --sanitize=address.
let package = Package(
    name: "RedisRotationFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(
            name: "FuzzRESPReader",
            dependencies: [
                .product(name: "RedisRotation", package: parentPackage),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: fuzzSettings
        ),
        .executableTarget(
            name: "FuzzCredentialFile",
            dependencies: [.product(name: "RedisRotation", package: parentPackage)],
            swiftSettings: fuzzSettings
        ),
        .executableTarget(
            name: "FuzzPEM",
            dependencies: [.product(name: "RedisRotation", package: parentPackage)],
            swiftSettings: fuzzSettings
        ),
    ]
)
