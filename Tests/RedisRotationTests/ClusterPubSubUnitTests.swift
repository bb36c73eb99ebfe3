import Testing

@testable import RedisRotation

/// The pure parts of cluster pub/sub: one slot per shard subscription, one slot per command.
@Suite("Cluster pub/sub: slots")
struct ClusterPubSubUnitTests {
    @Test("shard channels of one subscription must share a slot; the refusal names hash tags")
    func shardSlotOfChannels() throws {
        let slot = try RedisClusterClient.shardSlot(of: ["{orders}:eu", "{orders}:us"])
        #expect(slot == RedisClusterSlot.slot(for: Array("orders".utf8)))
        let refused = #expect(throws: RedisError.self) { try RedisClusterClient.shardSlot(of: ["orders:eu", "orders:us"]) }
        #expect(refused?.code == .invalidArgument)
        #expect(refused?.message.contains("hash tag") == true)
        #expect(throws: RedisError.self) { try RedisClusterClient.shardSlot(of: []) }
    }

    @Test("SSUBSCRIBE and SUNSUBSCRIBE names go one slot per command, in order; other kinds in one")
    func commandGroupsBySlot() {
        let names: [PubSubName] = ["{a}1", "{b}1", "{a}2", "{b}2", "{c}"]
        let groups = PubSubStateMachine.Kind.shardChannel.commandGroups(names)
        #expect(groups == [["{a}1", "{a}2"], ["{b}1", "{b}2"], ["{c}"]])
        #expect(PubSubStateMachine.Kind.channel.commandGroups(names) == [names])
        #expect(PubSubStateMachine.Kind.shardChannel.commandGroups([]).isEmpty)
        #expect(PubSubStateMachine.Kind.pattern.commandGroups([]).isEmpty)
    }
}
