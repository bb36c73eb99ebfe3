import NIOCore
import Testing

@testable import RedisRotation

@Suite("Cluster topology")
struct RedisClusterTopologyTests {
    func bulk(_ text: String) -> RESPValue { .bulkString(ByteBuffer(string: text)) }

    func node(_ id: String, port: Int, role: String, tlsPort: Int? = nil, health: String = "online") -> RESPValue {
        var fields: [RESPValue] = [self.bulk("id"), self.bulk(id), self.bulk("port"), .integer(Int64(port))]
        if let tlsPort { fields += [self.bulk("tls-port"), .integer(Int64(tlsPort))] }
        fields += [
            self.bulk("ip"), self.bulk("127.0.0.1"), self.bulk("endpoint"), self.bulk("127.0.0.1"), self.bulk("role"), self.bulk(role),
            self.bulk("replication-offset"), .integer(0), self.bulk("health"), self.bulk(health),
        ]
        return .array(fields)
    }

    func shard(_ slots: [Int], _ nodes: [RESPValue]) -> RESPValue {
        .array([self.bulk("slots"), .array(slots.map { .integer(Int64($0)) }), self.bulk("nodes"), .array(nodes)])
    }

    @Test("CLUSTER SHARDS: shards by slot, primaries and replicas, a node without slots left out")
    func shards() throws {
        // The shape redis-server 7.0 answers (RESP2), including a fresh node that serves nothing yet.
        let reply = RESPValue.array([
            self.shard([], [self.node("n4", port: 7104, role: "master")]),
            self.shard([5461, 10922], [self.node("n2", port: 7102, role: "master")]),
            self.shard([0, 5460], [self.node("n1", port: 7101, role: "master"), self.node("n5", port: 7105, role: "replica")]),
            self.shard([10923, 16000, 16001, 16383], [self.node("n3", port: 7103, role: "master", tlsPort: 8103)]),
        ])
        let topology = try RedisClusterTopology.fromShards(reply)
        #expect(topology.shards.count == 3)
        #expect(topology.coversAllSlots)
        #expect(topology.shard(forSlot: 0)?.primary?.port == 7101)
        #expect(topology.shard(forSlot: 0)?.replicas.map(\.port) == [7105])
        #expect(topology.shard(forSlot: 5461)?.primary?.id == "n2")
        #expect(topology.shard(forSlot: 16383)?.primary?.tlsPort == 8103)
        #expect(topology.shard(forSlot: 16001)?.slots == [10923...16000, 16001...16383])
        #expect(topology.shard(forSlot: 16384) == nil)
        #expect(topology.nodes.map(\.id) == ["n1", "n2", "n3", "n5"])
        #expect(topology.nodesWithoutSlots.map(\.id) == ["n4"])
    }

    @Test("slots nobody serves are reported as such")
    func partial() throws {
        let topology = try RedisClusterTopology.fromShards(.array([self.shard([0, 100], [self.node("n1", port: 1, role: "master")])]))
        #expect(!topology.coversAllSlots)
        #expect(topology.shard(forSlot: 101) == nil)
    }

    @Test("CLUSTER SLOTS: ranges of the same primary merged into one shard")
    func slots() throws {
        func range(_ start: Int, _ end: Int, _ nodes: [(String, Int)]) -> RESPValue {
            .array([.integer(Int64(start)), .integer(Int64(end))] + nodes.map { .array([self.bulk("127.0.0.1"), .integer(Int64($0.1)), self.bulk($0.0), .array([])]) })
        }
        let reply = RESPValue.array([
            range(0, 5460, [("n1", 7101), ("n4", 7104)]),
            range(5461, 10922, [("n2", 7102)]),
            range(10923, 16383, [("n1", 7101), ("n4", 7104)]),
        ])
        let topology = try RedisClusterTopology.fromSlots(reply)
        #expect(topology.shards.count == 2)
        #expect(topology.shard(forSlot: 16383)?.slots == [0...5460, 10923...16383])
        #expect(topology.shard(forSlot: 16383)?.replicas.map(\.id) == ["n4"])
        let tls = try RedisClusterTopology.fromSlots(reply, tls: true)
        #expect(tls.shard(forSlot: 0)?.primary?.tlsPort == 7101 && tls.shard(forSlot: 0)?.primary?.port == nil)
    }

    @Test("malformed replies are refused with unexpectedReply, never a crash")
    func malformed() {
        let cases: [RESPValue] = [
            .integer(1),
            .array([.integer(1)]),
            .array([self.shard([0], [])]),
            .array([self.shard([5, 1], [])]),
            .array([self.shard([0, 16384], [])]),
            .array([.array([self.bulk("slots"), .array([]), self.bulk("nodes"), .array([.array([self.bulk("id")])])])]),
        ]
        for reply in cases {
            let error = #expect(throws: RedisError.self) { try RedisClusterTopology.fromShards(reply) }
            #expect(error?.code == .unexpectedReply)
        }
        for reply: RESPValue in [.integer(1), .array([.array([.integer(0)])]), .array([.array([.integer(9), .integer(1), .array([])])])] {
            #expect(throws: RedisError.self) { try RedisClusterTopology.fromSlots(reply) }
        }
    }

    @Test("a node that announces no address (only sent CLUSTER MEETs) is reached at the address that was asked")
    func unknownEndpointsResolved() {
        let lone = RedisClusterNode(id: String(repeating: "a", count: 40), endpoint: "", port: 7000, role: .primary)
        let known = RedisClusterNode(id: String(repeating: "b", count: 40), endpoint: "10.0.0.2", port: 7001, role: .replica)
        let unknown = RedisClusterNode(id: String(repeating: "c", count: 40), endpoint: "?", port: 7002, role: .primary)
        let topology = RedisClusterTopology(shards: [
            RedisClusterShard(slots: [0...16383], primary: lone, replicas: [known]),
            RedisClusterShard(slots: [], primary: unknown, replicas: []),
        ]).resolvingUnknownEndpoints(to: "10.0.0.9")
        #expect(topology.shard(forSlot: 5)?.primary?.endpoint == "10.0.0.9")
        #expect(topology.shard(forSlot: 5)?.replicas.first?.endpoint == "10.0.0.2")
        #expect(topology.nodesWithoutSlots.map(\.endpoint) == ["10.0.0.9"])
    }
}
