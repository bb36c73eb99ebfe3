import NIOCore
import Testing

@testable import RedisRotation

@Suite("Cluster hash slots")
struct RedisClusterSlotTests {
    @Test("CRC16 matches the cluster specification's reference value")
    func referenceValue() {
        #expect(RedisClusterSlot.crc16(Array("123456789".utf8)[...]) == 0x31C3)
    }

    @Test("slots match CLUSTER KEYSLOT for plain keys, hash tags and the edge cases of tags")
    func slots() {
        // Values from CLUSTER KEYSLOT of redis-server 7.0.
        let expected: [(String, Int)] = [
            ("foo", 12182), ("bar", 5061), ("", 0), ("user:1000", 1649),
            ("{user1000}.following", 3443), ("{user1000}.followers", 3443), ("user1000", 3443),
            ("foo{}{bar}", 8363),  // an empty first tag: the whole key
            ("foo{{bar}}zap", 4015),  // the tag is "{bar"
            ("foo{bar}{zap}", 5061),  // the first tag only: "bar"
            ("{", 4092), ("}", 12090),
        ]
        for (key, slot) in expected {
            #expect(RedisClusterSlot.slot(for: RedisKey(key)) == slot, "\(key)")
        }
    }
}

@Suite("Cluster routing of commands")
struct RedisCommandSlotTests {
    let user = RedisClusterSlot.slot(for: RedisKey("{user:42}"))

    @Test("the slot of a command's keys: plain, tagged, movable; nil without keys")
    func slots() throws {
        #expect(try RedisCommand("GET", "foo").clusterSlot() == 12182)
        #expect(try RedisCommand("MSET", "{user:42}:a", "1", "{user:42}:b", "2").clusterSlot() == self.user)
        #expect(try RedisCommand("EVAL", "return 1", "2", "{user:42}:a", "{user:42}:b", "not-a-key").clusterSlot() == self.user)
        #expect(try RedisCommand("EVAL", "return 1", "0", "not-a-key").clusterSlot() == nil)
        #expect(try RedisCommand("XREAD", "COUNT", "1", "STREAMS", "{user:42}:s", "{user:42}:t", "0", "0").clusterSlot() == self.user)
        #expect(try RedisCommand("SORT", "{user:42}:l", "STORE", "{user:42}:out").clusterSlot() == self.user)
        #expect(try RedisCommand("OBJECT", "ENCODING", "foo").clusterSlot() == 12182)
        #expect(try RedisCommand("PING").clusterSlot() == nil)
        #expect(try RedisCommand("INFO", "server").clusterSlot() == nil)
        #expect(try RedisCommands.ZUNIONSTORE(destination: "{user:42}:d", keys: ["{user:42}:a", "{user:42}:b"]).command.clusterSlot() == self.user)
        // A value longer than any keyword is not read as one, and does not change the slot.
        #expect(try RedisCommand("SET", "foo", .bytes(ByteBuffer(repeating: 0x41, count: 100_000))).clusterSlot() == 12182)
    }

    @Test("keys in different slots are refused before anything is sent, naming the remedy")
    func crossSlot() {
        for command in [
            RedisCommand("MSET", "a", "1", "b", "2"),
            RedisCommand("SORT", "{x}l", "STORE", "{y}out"),
            RedisCommand("EVAL", "return 1", "2", "a", "b"),
        ] {
            let error = #expect(throws: RedisError.self) { try command.clusterSlot() }
            #expect(error?.code == .invalidArgument)
            #expect(error?.message.contains("hash tag") == true)
        }
    }

    @Test("a key count that is not a number is refused, not routed at random; one past the arguments stops there, as the server does")
    func malformed() throws {
        #expect(throws: RedisError.self) { try RedisCommand("EVAL", "return 1", "many", "a").clusterSlot() }
        // The server refuses this one itself; routing it by its only key is harmless.
        #expect(try RedisCommand("EVAL", "return 1", "5", "a").clusterSlot() == RedisClusterSlot.slot(for: RedisKey("a")))
    }
}
