import Benchmark
import Foundation
import RedisRotation
import RedisRotationTesting

/// The clusters of the cluster throughput benchmarks, one per benchmark: started in its setup, stopped
/// in its teardown.
final class BenchmarkClusters: @unchecked Sendable {
    // Safe because every access holds the lock.
    private static let lock = NSLock()
    nonisolated(unsafe) private static var running: [String: RedisClusterProcess] = [:]

    static let user = "bench"
    static let passwordText = "benchmark-cluster-password"

    /// Starts `shards` primaries with a replica each (they take no reads) and the benchmark user. Every
    /// node announces 127.0.0.1: a node that only sent `CLUSTER MEET`s, never received one, does not
    /// know its own address and describes itself with an empty one, which neither the cluster client
    /// nor `redis-benchmark` can use when it is the seed of a one-shard cluster.
    static func start(_ name: String, shards: Int) async throws {
        let cluster = try await RedisClusterProcess.start(
            .init(
                primaries: shards,
                replicasPerPrimary: 1,
                users: [.init(name: Self.user, passwords: [RedisSecret(Self.passwordText)])],
                extraConfiguration: ["cluster-announce-ip 127.0.0.1"]
            )
        )
        Self.lock.withLock { Self.running[name] = cluster }
    }

    static func cluster(_ name: String) -> RedisClusterProcess {
        Self.lock.withLock { Self.running[name]! }
    }

    static func stop(_ name: String) async {
        let cluster = Self.lock.withLock { Self.running.removeValue(forKey: name) }
        await cluster?.stop()
    }
}

/// Each sample is this many GETs (so that starting `redis-benchmark` is about 1 % of its sample).
let clusterRequestsPerSample = 100_000

/// Throughput through `RedisClusterClient` with 1 and 3 shards, next to `redis-benchmark --cluster`
/// (C, one event loop, hiredis) against the same kind of cluster, with the same 64 concurrent clients
/// and the same GETs of 1,000 keys spread over every slot.
func clusterBenchmarks() {
    let configuration = Benchmark.Configuration(
        metrics: [.wallClock],
        timeUnits: .milliseconds,
        warmupIterations: 1,
        scalingFactor: .one,
        maxDuration: .seconds(45),
        maxIterations: 5
    )
    for shards in [1, 3] {
        let swiftName = "Cluster \(shards) shard\(shards == 1 ? "" : "s"): 64 tasks, 100,000 GETs (Swift cluster client)"
        Benchmark(swiftName, configuration: configuration) { benchmark in
            let cluster = BenchmarkClusters.cluster(swiftName)
            let client = try RedisClusterClient(
                configuration: RedisClusterConfiguration(
                    seeds: [.init(host: "127.0.0.1", port: cluster.nodes[0].port)],
                    node: RedisClientConfiguration(
                        host: "127.0.0.1",
                        port: 0,
                        name: "bench",
                        // 64 tasks over the shards: up to 64 connections to one node when all go to it.
                        pool: .init(minimumConnections: 64 / shards, maximumConnections: 64)
                    )
                ),
                credentials: .fixed(RedisCredentials(username: BenchmarkClusters.user, password: RedisSecret(BenchmarkClusters.passwordText), version: "v1"))
            )
            let keys = (0..<1000).map { "bench:key:\($0)" }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                // Warm every node's pool before measuring.
                for key in keys { _ = try await client.get(RedisKey(key)) }
                for _ in benchmark.scaledIterations {
                    benchmark.startMeasurement()
                    try await withThrowingTaskGroup(of: Void.self) { tasks in
                        for task in 0..<64 {
                            tasks.addTask {
                                for request in stride(from: task, to: clusterRequestsPerSample, by: 64) {
                                    _ = try await client.get(RedisKey(keys[request % keys.count]))
                                }
                            }
                        }
                        try await tasks.waitForAll()
                    }
                    benchmark.stopMeasurement()
                }
                group.cancelAll()
            }
        } setup: {
            try await BenchmarkClusters.start(swiftName, shards: shards)
        } teardown: {
            await BenchmarkClusters.stop(swiftName)
        }

        // redis-benchmark --cluster refuses a cluster of one primary ("Invalid cluster: 1 node(s)"); with
        // every slot on that primary, plain redis-benchmark against it does the same work.
        let floorName = "Cluster \(shards) shard\(shards == 1 ? "" : "s"): 64 clients, 100,000 GETs (redis-benchmark\(shards == 1 ? "" : " --cluster"))"
        Benchmark(floorName, configuration: configuration) { benchmark in
            let cluster = BenchmarkClusters.cluster(floorName)
            for _ in benchmark.scaledIterations {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                process.arguments = ["redis-benchmark"] + (shards == 1 ? [] : ["--cluster"]) + [
                    "-h", "127.0.0.1", "-p", "\(cluster.nodes[0].port)",
                    "--user", BenchmarkClusters.user, "-a", BenchmarkClusters.passwordText,
                    "-c", "64", "-n", "\(clusterRequestsPerSample)", "-t", "get", "-r", "1000", "-q",
                ]
                let output = Pipe()
                process.standardOutput = output
                process.standardError = output
                benchmark.startMeasurement()
                try process.run()
                let text = output.fileHandleForReading.readDataToEndOfFile()
                process.waitUntilExit()
                benchmark.stopMeasurement()
                let report = String(decoding: text, as: UTF8.self)
                guard process.terminationStatus == 0 && report.contains("requests per second") else {
                    FileHandle.standardError.write(Data("redis-benchmark failed (status \(process.terminationStatus)): \(report)\n".utf8))
                    throw RedisError(code: .unexpectedReply, message: "redis-benchmark failed")
                }
            }
        } setup: {
            try await BenchmarkClusters.start(floorName, shards: shards)
        } teardown: {
            await BenchmarkClusters.stop(floorName)
        }
    }
}
