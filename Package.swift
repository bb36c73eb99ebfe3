// swift-tools-version: 6.2
import PackageDescription

/// Settings shared by every Swift target of ours: Swift 6 mode (strict concurrency) and no warnings.
/// Warning control applies to this package only, never to dependencies or to packages that depend on us.
let strictSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .treatAllWarnings(as: .error),
]

let package = Package(
    name: "RedisRotation",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "redis-rotation", targets: ["redis-rotation"]),
        .library(name: "RedisRotation", targets: ["RedisRotation"]),
        .library(name: "RedisRotationTesting", targets: ["RedisRotationTesting"]),
        .library(name: "RedisRotationAdmin", targets: ["RedisRotationAdmin"]),
    ],
    traits: [
        .trait(
            name: "ThreadSanitizerLocks",
            description: "Locks are pthread mutexes, which ThreadSanitizer understands, instead of Synchronization.Mutex. For TSan runs only (scripts/sanitizers.sh tsan)."
        ),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.3.0"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin.git", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"]), .brew(["hiredis"])]
        ),
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"]), .brew(["openssl@3"])]
        ),
        .target(
            name: "COpenSSLShims",
            dependencies: ["COpenSSL"]
        ),
        .target(
            name: "RedisRotation",
            dependencies: [
                "CHiredis",
                "COpenSSL",
                "COpenSSLShims",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "RedisRotationTesting",
            dependencies: [
                "RedisRotation",
                "COpenSSL",
                "COpenSSLShims",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "RedisRotationAdmin",
            dependencies: ["RedisRotation"],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "redis-rotation",
            dependencies: [
                "RedisRotation",
                "RedisRotationAdmin",
                "RedisRotationTesting",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "BasicUsageExample",
            dependencies: [
                "RedisRotation",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Examples/BasicUsage",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "PasswordFileRotationExample",
            dependencies: [
                "RedisRotation",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Examples/PasswordFileRotation",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "CredentialProviderExample",
            dependencies: [
                "RedisRotation",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Examples/CredentialProvider",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "MutualTLSHotReloadExample",
            dependencies: [
                "RedisRotation",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Examples/MutualTLSHotReload",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "PubSubExample",
            dependencies: [
                "RedisRotation",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Examples/PubSub",
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "RedisRotationTests",
            dependencies: [
                "RedisRotation",
                "RedisRotationTesting",
                "CHiredis",
                "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "RedisRotationIntegrationTests",
            dependencies: [
                "RedisRotation",
                "RedisRotationAdmin",
                "RedisRotationTesting",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
    ]
)
