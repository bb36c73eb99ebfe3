import NIOCore
import Testing

@testable import RedisRotation

/// Cluster routing at its edges: sensitive commands, odd redirections, 7.2 topologies.
@Suite("Cluster routing: edge cases")
struct ClusterRoutingEdgeTests {
    @Test("MIGRATE is routed by its key although its arguments are not kept (they may hold a password)")
    func migrateRoutedByItsKey() throws {
        let key = "{mig}k"
        let single = RedisCommand("MIGRATE", "127.0.0.1", "7000", .key(RedisKey(key)), "0", "1000")
        #expect(try single.clusterSlot() == RedisClusterSlot.slot(for: RedisKey(key)))
        let many = RedisCommand("MIGRATE", "127.0.0.1", "7000", "", "0", "1000", "KEYS", "{mig}a", "{mig}b")
        #expect(try many.clusterSlot() == RedisClusterSlot.slot(for: RedisKey("{mig}")))
    }

    @Test("a command whose value is a secret is still routed by its key, not sent to an arbitrary primary")
    func secretValueRoutedByKey() throws {
        let command = RedisCommand("SET", "foo", .secret(RedisSecret("s3cret")))
        #expect(try command.clusterSlot() == 12182)
        let hset = RedisCommand("HSET", "{user:1}:tokens", "api", .secret(RedisSecret("s3cret")))
        #expect(try hset.clusterSlot() == RedisClusterSlot.slot(for: RedisKey("{user:1}")))
    }

    @Test("MOVED with an empty endpoint (cluster-preferred-endpoint-type unknown-endpoint) never yields a node named \"\"")
    func movedWithEmptyHost() {
        let error = RedisError(code: .serverError, message: "MOVED 3999 :6381", serverErrorPrefix: "MOVED", serverMessage: "MOVED 3999 :6381")
        let target = RedisClusterClient.redirectTarget(error)
        #expect(target?.host != "", "redirectTarget gave host \"\": the client creates a pool for \":6381\" instead of using the host it asked")
    }

    @Test("CLUSTER SHARDS of Redis 7.2 / Valkey after a failover: a failed old primary in the same shard does not replace the promoted one")
    func failedOldPrimaryInSameShard() throws {
        func bulk(_ text: String) -> RESPValue { .bulkString(ByteBuffer(string: text)) }
        func node(_ id: String, port: Int, role: String, health: String) -> RESPValue {
            .array([
                bulk("id"), bulk(id), bulk("port"), .integer(Int64(port)), bulk("ip"), bulk("127.0.0.1"), bulk("endpoint"), bulk("127.0.0.1"),
                bulk("role"), bulk(role), bulk("replication-offset"), .integer(0), bulk("health"), bulk(health),
            ])
        }
        // Shards are grouped by shard id since 7.2: the dead ex-primary keeps its shard id and its
        // `master` flag until it comes back, so it is listed next to the replica that took over.
        let reply = RESPValue.array([
            .array([
                bulk("slots"), .array([.integer(0), .integer(16383)]), bulk("nodes"),
                .array([node("new", port: 7002, role: "master", health: "online"), node("old", port: 7001, role: "master", health: "fail")]),
            ])
        ])
        let topology = try RedisClusterTopology.fromShards(reply)
        #expect(topology.shard(forSlot: 0)?.primary?.id == "new", "commands for the shard would go to the dead node \(topology.shard(forSlot: 0)?.primary?.description ?? "-")")
    }
}
