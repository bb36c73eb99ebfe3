import Foundation
import RedisRotation
import RedisRotationTesting
import Testing

/// The loopback cluster the cluster tests run on: formed, failed over and resharded for real.
@Suite("A real Redis Cluster on loopback", .timeLimit(.minutes(3)))
struct ClusterHarnessTests {
    @Test("3 primaries and 3 replicas: every slot served, keys where CLUSTER KEYSLOT says; a failover and a 100-slot migration keep every key")
    func formFailoverMigrate() async throws {
        let password = makePassword()
        try await RedisClusterProcess.withCluster(.init(users: [.init(name: "alice", passwords: [password])])) { cluster in
            let topology = try await cluster.topology()
            #expect(topology.coversAllSlots)
            #expect(topology.shards.count == 3)
            #expect(topology.shards.allSatisfy { $0.replicas.count == 1 })

            // Keys written as alice on the primary of their slot (0...99 are migrated below).
            var written: [String: Int] = [:]
            for index in 0..<300 {
                let key = "{s\(index % 150)}:k\(index)"
                let slot = RedisClusterSlot.slot(for: RedisKey(key))
                let primary = try await cluster.primary(forSlot: slot)
                let connection = try await RedisConnection.connect(configuration: primary.connectionConfiguration(username: "alice", password: password))
                try await connection.set(RedisKey(key), to: .integer(index))
                await connection.close()
                written[key] = slot
            }
            // The server agrees on the slot of every key.
            let any = try await cluster.nodes[0].adminConnection()
            for (key, slot) in written.prefix(20) {
                #expect(try await any.clusterKeyslot(key: .string(key)) == slot)
            }
            await any.close()

            // A coordinated failover: the replica of the first shard becomes its primary.
            let shard = try #require(topology.shard(forSlot: 0))
            let replicaID = try #require(shard.replicas.first?.id)
            let replica = try #require(cluster.node(id: replicaID))
            try await cluster.failover(to: replica)
            #expect(try await cluster.topology().shard(forSlot: 0)?.primary?.id == shard.replicas.first?.id)

            // 100 slots with their keys to the second shard's primary.
            let target = try await cluster.primary(forSlot: 6000)
            let movedSlots = written.values.filter { (0...99).contains($0) }.count
            try await cluster.migrate(slots: 0...99, to: target)
            let after = try await cluster.topology()
            #expect(after.shard(forSlot: 50)?.primary?.id == after.shard(forSlot: 6000)?.primary?.id)
            #expect(after.coversAllSlots)

            // Every key is on the primary that now serves its slot.
            var found = 0
            for (key, slot) in written {
                let primary = try await cluster.primary(forSlot: slot)
                let connection = try await RedisConnection.connect(configuration: primary.connectionConfiguration(username: "alice", password: password))
                if try await connection.get(RedisKey(key)) != nil { found += 1 }
                await connection.close()
            }
            #expect(found == written.count, "\(movedSlots) keys were in migrated slots")
        }
    }
}
