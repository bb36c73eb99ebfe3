import Foundation
import NIOCore
import RedisRotation
import RedisRotationTesting
import Testing

/// The reader writes a batch's short strings into the last batch's buffer again when no value of it
/// is alive. Against a real server: reply values kept by the application (plain, in arrays, pub/sub
/// payloads, SCAN pages, the HELLO map's version) keep their bytes across all later replies.
@Suite("Reply arena against a real redis-server", .timeLimit(.minutes(2)))
struct ReplyArenaIntegrationReviewTests {
    @Test("GET, MGET and HGETALL values (one reply of 40 KiB of short strings among them) kept across 2,000 later replies keep their bytes")
    func keptReplies() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(configuration: server.connectionConfiguration(username: "alice", password: password))
            let prefix = "test:arena:\(UUID().uuidString)"
            func key(_ index: Int) -> RedisKey { RedisKey("\(prefix):\(index)") }
            func value(_ index: Int, _ round: Int) -> String { String(repeating: Character(UnicodeScalar(UInt8(65 + (index + round) % 26))), count: 10 + index % 90) + "#\(index)/\(round)" }
            for index in 0..<50 { try await connection.send(RedisCommand("SET", .key(key(index)), .string(value(index, 0)))) }
            let hash = RedisKey("\(prefix):hash")
            for index in 0..<200 {
                try await connection.send(RedisCommand("HSET", .key(hash), .string("f\(index)"), .string(String(repeating: "h", count: 200) + "\(index)")))
            }
            var kept: [(RESPValue, String)] = []
            let single = try await connection.send(RedisCommand("GET", .key(key(3))))
            kept.append((single, value(3, 0)))
            let many = try await connection.send(RedisCommand("MGET", arguments: (0..<50).map { .key(key($0)) }))
            let element = try #require(many.array?[17])
            kept.append((element, value(17, 0)))
            let all = try await connection.send(RedisCommand("HGETALL", .key(hash)))
            let fields = try #require(all.array)
            #expect(fields.count == 400)
            // The server's order: look the value up by the field before it.
            let index = try #require(fields.firstIndex { $0.string == "f123" })
            kept.append((fields[index + 1], String(repeating: "h", count: 200) + "123"))
            // 2,000 later replies, sequential and pipelined, overwrite the keys too.
            for round in 1...20 {
                for index in 0..<50 { try await connection.send(RedisCommand("SET", .key(key(index)), .string(value(index, round)))) }
                let results = try await connection.pipeline((0..<50).map { RedisCommand("GET", .key(key($0))) })
                for (index, result) in results.enumerated() { #expect(try result.get().string == value(index, round)) }
                for (value, expected) in kept { #expect(value.string == expected, "round \(round)") }
            }
            #expect(single.string == value(3, 0))
            await connection.close()
        }
    }

    @Test("pub/sub payloads kept while 3,000 more messages arrive keep their bytes")
    func keptMessages() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let configuration = server.connectionConfiguration(username: "alice", password: password)
            let subscriber = try await RedisConnection.connect(configuration: configuration)
            let publisher = try await RedisConnection.connect(configuration: configuration)
            let subscription = try await subscriber.subscribe(to: ["arena-a", "arena-b"])
            func payload(_ index: Int) -> String { String(repeating: Character(UnicodeScalar(UInt8(97 + index % 26))), count: index % 300) + "|\(index)" }
            let publishing = Task {
                for start in stride(from: 0, to: 3000, by: 100) {
                    let results = try await publisher.pipeline((start..<(start + 100)).map {
                        RedisCommand("PUBLISH", .string($0 % 2 == 0 ? "arena-a" : "arena-b"), .string(payload($0)))
                    })
                    for result in results { _ = try result.get() }
                }
            }
            var kept: [(RedisPubSubMessage, Int)] = []
            var iterator = subscription.makeAsyncIterator()
            for index in 0..<3000 {
                let message = try #require(try await iterator.next())
                #expect(message.string == payload(index))
                if index % 7 == 0 { kept.append((message, index)) }
            }
            try await publishing.value
            for (message, index) in kept {
                #expect(message.string == payload(index) && message.channel == (index % 2 == 0 ? "arena-a" : "arena-b"))
            }
            await subscriber.close()
            await publisher.close()
        }
    }

    @Test("SCAN pages of ByteBuffer keys, kept across all pages, are every key once; the HELLO map's version survives later replies")
    func scanAndHello() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(configuration: server.connectionConfiguration(username: "alice", password: password))
            let version = try #require(connection.serverVersion)
            let prefix = "test:scan:\(UUID().uuidString)"
            var written: Set<String> = []
            for start in stride(from: 0, to: 1000, by: 200) {
                let keys = (start..<(start + 200)).map { "\(prefix):\($0):" + String(repeating: "k", count: $0 % 50) }
                written.formUnion(keys)
                let results = try await connection.pipeline(keys.map { RedisCommand("SET", .key(RedisKey($0)), "v") })
                for result in results { _ = try result.get() }
            }
            var found: [ByteBuffer] = []
            for try await key in connection.scan(matching: "\(prefix):*", count: 7) { found.append(key) }
            #expect(found.count == written.count)
            #expect(Set(found.map { String(buffer: $0) }) == written)
            let info = try await connection.send(RedisCommand("INFO", "server"), as: String.self)
            #expect(info.contains("redis_version:\(version)\r\n"), "\(version)")
            await connection.close()
        }
    }
}
