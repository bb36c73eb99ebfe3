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
