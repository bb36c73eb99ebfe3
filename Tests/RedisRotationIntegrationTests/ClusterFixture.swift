import Foundation
import RedisRotation
import RedisRotationTesting
import Testing

/// The node pool configuration the cluster suites use: 1 to 8 connections, a 5 s lease timeout.
func testClusterNodeConfiguration(name: String = "cluster-test", leaseTimeout: Duration = .seconds(5)) -> RedisClientConfiguration {
    RedisClientConfiguration(
        host: "127.0.0.1",
        port: 0,
        name: name,
        pool: .init(minimumConnections: 1, maximumConnections: 8, leaseTimeout: leaseTimeout)
    )
}

/// Waits (at most 10 s) until every replica of `key`'s shard holds `key`, so that a primary can be
/// killed without losing it.
func waitUntilReplicated(_ key: RedisKey, in cluster: RedisClusterProcess) async throws {
    let shard = try #require(try await cluster.topology().shard(forSlot: RedisClusterSlot.slot(for: key)))
    for replica in shard.replicas {
        let node = try #require(cluster.node(id: replica.id))
        let admin = try await node.adminConnection()
        do {
            try await admin.send(RedisCommand("READONLY"))
            try await eventually("the replica on port \(node.port) holds \(key)", timeout: .seconds(10)) {
                try await admin.send(RedisCommand("EXISTS", .key(key))).int == 1
            }
        } catch {
            await admin.close()
            throw error
        }
        await admin.close()
    }
}

/// Starts a 3 + 3 cluster with the ACL user `alice`, runs a cluster client as `alice` (seeded with the
/// first node unless `seeds` says otherwise) for `body`, and stops everything after.
///
/// - Parameters:
///   - passwordFile: Whether the client reads `alice.password` in the first node's directory (version
///     `v1` at first; write it to rotate), instead of fixed credentials.
///   - minimumRefreshInterval: The client's shortest time between topology refreshes.
func withTestClusterClient(
    seeds: [RedisClusterConfiguration.Endpoint]? = nil,
    node: RedisClientConfiguration = testClusterNodeConfiguration(),
    passwordFile: Bool = false,
    minimumRefreshInterval: Duration = .milliseconds(100),
    reads: RedisClusterConfiguration.ReadRouting = .primary,
    _ body: @Sendable (RedisClusterProcess, RedisClusterClient, RedisSecret) async throws -> Void
) async throws {
    let password = makePassword()
    try await RedisClusterProcess.withCluster(.init(users: [.init(name: "alice", passwords: [password])])) { cluster in
        let file = cluster.nodes[0].directory.appendingPathComponent("alice.password").path
        try writeAtomically("password=\(text(of: password))\nversion=v1\n", to: file)
        let client = try RedisClusterClient(
            configuration: RedisClusterConfiguration(
                seeds: seeds ?? [.init(host: "127.0.0.1", port: cluster.nodes[0].port)],
                node: node,
                minimumRefreshInterval: minimumRefreshInterval,
                reads: reads
            ),
            credentials: passwordFile
                ? .file(file, username: "alice", pollInterval: .milliseconds(200))
                : .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
        )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.run() }
            try await body(cluster, client, password)
            group.cancelAll()
        }
    }
}

/// How many errors with `prefix` (`CLUSTERDOWN`, `MOVED`) the server behind `admin` answered so far
/// (`INFO errorstats`).
func errorCount(_ prefix: String, on admin: RedisConnection) async throws -> Int {
    let stats = try await admin.send(RedisCommand("INFO", "errorstats"), as: String.self)
    let line = stats.split(whereSeparator: \.isNewline).first { $0.hasPrefix("errorstat_\(prefix):") }
    return line.flatMap { Int($0.split(separator: "=")[1].prefix { $0.isNumber }) } ?? 0
}

/// Keys summed over the primaries that serve the slots now, counted as `user` with `password`.
func keysOnPrimaries(
    _ cluster: RedisClusterProcess,
    user: String = "alice",
    password: RedisSecret,
    tls: RedisConnectionConfiguration.TLS? = nil
) async throws -> Int {
    var counted = 0
    for shard in try await cluster.topology().shards {
        let primaryID = try #require(shard.primary?.id)
        let primary = try #require(cluster.node(id: primaryID))
        let connection = try await RedisConnection.connect(configuration: primary.connectionConfiguration(username: user, password: password, tls: tls))
        counted += try await connection.dbsize()
        await connection.close()
    }
    return counted
}

/// The password hashes `user` has on each node of the cluster (`ACL GETUSER`), in node order.
func passwordHashes(of user: String = "alice", in cluster: RedisClusterProcess) async throws -> [[String]] {
    var result: [[String]] = []
    for node in cluster.nodes {
        let admin = try await node.adminConnection()
        let reply = try await admin.send(RedisCommand("ACL", "GETUSER", .string(user)))
        await admin.close()
        let fields = reply.array ?? []
        let index = try #require(fields.firstIndex { $0.string == "passwords" })
        result.append(fields[index + 1].array?.compactMap(\.string) ?? [])
    }
    return result
}
