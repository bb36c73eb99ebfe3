import Foundation
import RedisRotation
import RedisRotationAdmin
import RedisRotationTesting
import Testing

/// RedisClusterOperations (failover and slot migration by an operator) against a real 3 + 3 cluster.
@Suite("Cluster operations", .timeLimit(.minutes(3)))
struct ClusterOperationsTests {
    @Test("RedisClusterOperations: a failover promotes the replica everywhere; a migration moves the slots' keys to the target")
    func operations() async throws {
        try await withOperatorCluster { cluster, _, opsPassword in
            var configuration = cluster.nodes[0].connectionConfiguration(username: "ops", password: opsPassword)
            configuration.name = "operations-test"
            let operations = try await RedisClusterOperations.connect(configuration: configuration)
            defer { Task { await operations.close() } }
            #expect(operations.topology.nodes.count == 6)

            // Keys in the slots that will move (slots 0-99 of the first primary), written directly.
            let admin0 = try await cluster.nodes[0].adminConnection()
            var keys: [String] = []
            for index in 0..<5000 where keys.count < 200 {
                let key = "op:\(index)"
                if RedisClusterSlot.slot(for: RedisKey(key)) < 100 {
                    _ = try await admin0.send(RedisCommand("SET", .string(key), "v"))
                    keys.append(key)
                }
            }
            await admin0.close()
            #expect(keys.count > 10)

            let replicaID = cluster.nodeIDs[3]  // the first primary's replica
            try await operations.failover(to: replicaID)
            let afterFailover = try await cluster.topology()
            #expect(afterFailover.shard(forSlot: 0)?.primary?.id == replicaID)

            let targetID = cluster.nodeIDs[1]
            try await operations.migrate(slots: 0...99, to: targetID)
            let afterMigration = try await cluster.topology()
            #expect(afterMigration.shard(forSlot: 0)?.primary?.id == targetID)
            #expect(afterMigration.shard(forSlot: 99)?.primary?.id == targetID)
            #expect(afterMigration.shard(forSlot: 100)?.primary?.id == replicaID)
            let target = try await cluster.nodes[1].adminConnection()
            var onTarget = 0
            for key in keys { onTarget += try await target.send(RedisCommand("EXISTS", .string(key)), as: Int.self) }
            await target.close()
            #expect(onTarget == keys.count)
        }
    }
}

/// A cluster with the traffic user `alice` and the operator `ops` (same password on every node).
func withOperatorCluster(_ body: (RedisClusterProcess, _ alice: RedisSecret, _ ops: RedisSecret) async throws -> Void) async throws {
    let alice = makePassword()
    let ops = makePassword()
    try await RedisClusterProcess.withCluster(.init(users: [.init(name: "alice", passwords: [alice]), .init(name: "ops", passwords: [ops])])) { cluster in
        try await body(cluster, alice, ops)
    }
}
