import Foundation
import NIOCore
import RedisRotation
import RedisRotationTesting
import Testing

@Suite("Typed command helpers", .timeLimit(.minutes(2)))
struct CommandHelperTests {
    @Test("each helper sends its command and converts the reply")
    func helpers() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let redis = try await RedisConnection.connect(
                configuration: server.connectionConfiguration(username: "alice", password: password)
            )
            #expect(try await redis.ping() == "PONG")
            #expect(try await redis.ping("hi") == "hi")

            let key = uniqueKey("string")
            #expect(try await redis.get(key) == nil)
            #expect(try await redis.set(key, to: "v1"))
            #expect(try await redis.get(key, as: String.self) == "v1")
            #expect(try await redis.set(key, to: "v2", condition: .ifNotExists) == false)
            #expect(try await redis.set(key, to: "v3", condition: .ifExists))
            #expect(try await redis.set(uniqueKey("absent"), to: "x", condition: .ifExists) == false)
            #expect(try await redis.get(key, as: String.self) == "v3")

            #expect(try await redis.ttl(key) == .noExpiration)
            #expect(try await redis.ttl(uniqueKey("missing")) == .keyDoesNotExist)
            try await redis.set(key, to: "v4", expiration: .seconds(100))
            guard case .seconds(let seconds) = try await redis.ttl(key) else {
                Issue.record("EX did not set a TTL")
                return
            }
            #expect((1...100).contains(seconds))
            try await redis.set(key, to: "v5", expiration: .milliseconds(200_000))
            guard case .seconds(let pxSeconds) = try await redis.ttl(key) else {
                Issue.record("PX did not set a TTL")
                return
            }
            #expect((101...200).contains(pxSeconds))
            #expect(try await redis.expire(key, seconds: 50))
            #expect(try await redis.expire(uniqueKey("missing"), seconds: 50) == false)

            let counter = uniqueKey("counter")
            #expect(try await redis.incr(counter) == 1)
            #expect(try await redis.incrBy(counter, 41) == 42)
            #expect(try await redis.incrBy(counter, -2) == 40)

            #expect(try await redis.exists(key, counter, uniqueKey("missing")) == 2)
            #expect(try await redis.del(key, counter) == 2)
            #expect(try await redis.exists(key) == 0)

            let a = uniqueKey("a")
            let b = uniqueKey("b")
            try await redis.mset([(a, "1"), (b, .bytes([0, 255]))])
            let values = try await redis.mget([a, uniqueKey("missing"), b])
            #expect(values.map { $0.map { Array($0.readableBytesView) } } == [Array("1".utf8), nil, [0, 255]])

            let hash = uniqueKey("hash")
            #expect(try await redis.hset(hash, fields: [("f1", "x"), ("f2", 7)]) == 2)
            #expect(try await redis.hset(hash, field: "f1", to: "y") == false)
            #expect(try await redis.hget(hash, field: "f1").map { String(buffer: $0) } == "y")
            #expect(try await redis.hget(hash, field: "nope") == nil)
            #expect(try await redis.hgetall(hash).mapValues { String(buffer: $0) } == ["f1": "y", "f2": "7"])
            #expect(try await redis.hgetall(uniqueKey("no-hash")).isEmpty)

            let list = uniqueKey("list")
            #expect(try await redis.lpush(list, ["a", "b", "c"]) == 3)
            #expect(try await redis.lrange(list, from: 0, to: -1).map { String(buffer: $0) } == ["c", "b", "a"])
            #expect(try await redis.rpop(list).map { String(buffer: $0) } == "a")
            #expect(try await redis.lrange(list, from: 0, to: 0).map { String(buffer: $0) } == ["c"])
            _ = try await redis.rpop(list)
            _ = try await redis.rpop(list)
            #expect(try await redis.rpop(list) == nil)

            #expect(try await redis.clientGetName() == nil)
            try await redis.clientSetName("renamed")
            #expect(try await redis.clientGetName() == "renamed")

            // A reply of the wrong shape for the helper is unexpectedReply, not a crash.
            try await redis.lpush(list, ["x"])
            let wrongType = await #expect(throws: RedisError.self) { try await redis.get(list) }
            #expect(wrongType?.code == .serverError)
            #expect(wrongType?.serverErrorPrefix == "WRONGTYPE")
            let unexpected = await #expect(throws: RedisError.self) {
                try await redis.send(RedisCommand("LRANGE", .key(list), "0", "-1"), as: Int.self)
            }
            #expect(unexpected?.code == .unexpectedReply)
            await redis.close()
        }
    }
}
