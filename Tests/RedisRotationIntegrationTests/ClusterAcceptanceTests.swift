import Foundation
import RedisRotation
import RedisRotationTesting
import Testing

/// Issue 13's acceptance run: against a real 3 + 3 cluster (plain, and TLS-only) under 32 tasks, the
/// password rotated on every node while 100 slots migrate, the user's connections killed on every node,
/// a replica promoted, all mid-traffic: no idempotent command fails and no acknowledged write is lost.
@Suite("Cluster client: rotation, kills, migration and failover together", .serialized, .timeLimit(.minutes(4)))
struct ClusterAcceptanceTests {
    @Test("plain text: 0 failed commands, 0 lost writes, every node left with exactly the new password")
    func plainText() async throws {
        try await self.acceptanceRun(tls: false)
    }

    @Test("TLS only (tls-cluster, tls-replication): 0 failed commands, 0 lost writes, every node left with exactly the new password")
    func tls() async throws {
        try await self.acceptanceRun(tls: true)
    }

    func acceptanceRun(tls: Bool) async throws {
        let authority = tls ? try TestCertificateAuthority(name: "Acceptance CA \(UUID().uuidString.prefix(6))") : nil
        let old = makePassword()
        try await RedisClusterProcess.withCluster(.init(users: [.init(name: "alice", passwords: [old])], tlsAuthority: authority)) { cluster in
            let file = cluster.nodes[0].directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: file)
            let connectionTLS = try authority.map {
                RedisConnectionConfiguration.TLS(context: try RedisTLSContext(configuration: RedisTLSConfiguration(trustAnchors: [$0.certificate.certificateSource])))
            }
            let client = try RedisClusterClient(
                configuration: RedisClusterConfiguration(
                    seeds: [.init(host: "127.0.0.1", port: cluster.nodes[0].port)],
                    node: RedisClientConfiguration(
                        host: "127.0.0.1",
                        port: 0,
                        name: "cluster-acceptance",
                        tls: connectionTLS.map { .init(context: $0.context) },
                        pool: .init(minimumConnections: 2, maximumConnections: 16, leaseTimeout: .seconds(10))
                    )
                ),
                credentials: .file(file, username: "alice", pollInterval: .milliseconds(200))
            )
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                let traffic = ClusterTraffic(client: client, prefix: "acc", workers: 32, readBack: true)
                let stop = traffic.stop
                await stop.waitForProgress(500, "before anything changes")

                // 100 slots migrate while the password rotates, node by node as in open-source Redis:
                // the new password added everywhere and published, every pool moves, the old one removed.
                let topology = try await cluster.topology()
                let target = try await cluster.primary(forSlot: 6000)
                let migration = Task { try await cluster.migrate(slots: 0...99, to: target) }
                let new = makePassword()
                for node in cluster.nodes {
                    try await node.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
                }
                try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
                await eventually("every node's pool is on v2", timeout: .seconds(60)) {
                    let versions = client.connectionsByCredentialVersion.values
                    return !versions.isEmpty && versions.allSatisfy { !$0.isEmpty && $0.keys.allSatisfy { $0 == "v2" } }
                }
                for node in cluster.nodes {
                    try await node.admin("ACL", "SETUSER", "alice", .string("<\(text(of: old))"))
                }
                try await migration.value
                await stop.waitForProgress(500, "after the rotation and the migration")

                for node in cluster.nodes {
                    _ = try await node.admin("CLIENT", "KILL", "USER", "alice")
                }
                await stop.waitForProgress(500, "after the kills")

                let replicaID = try #require(topology.shard(forSlot: 12000)?.replicas.first?.id)
                let replica = try #require(cluster.node(id: replicaID))
                try await cluster.failover(to: replica)
                await stop.waitForProgress(500, "after the failover")
                let (acknowledged, failures) = await traffic.finish()

                #expect(failures.isEmpty, "\(failures.count) failed: \(failures.prefix(5))")
                #expect(acknowledged.count > 2_000)
                // The migration and the failover were met as redirections, not hidden by a refresh.
                #expect(client.redirectionsFollowed.moved > 0, "\(client.redirectionsFollowed)")

                // Keys summed over the primaries now serving the slots == writes acknowledged.
                #expect(try await keysOnPrimaries(cluster, password: new, tls: connectionTLS) == acknowledged.count)
                // Every node, primaries and replicas, holds exactly the new password.
                #expect(try await passwordHashes(in: cluster) == Array(repeating: [new.sha256Hex], count: cluster.nodes.count))
                group.cancelAll()
            }
        }
    }
}
