import Foundation
import NIOCore
import RedisRotation
import RedisRotationTesting
import Testing

/// Commands written in one turn of the event loop leave with one flush, and over TLS as one piece of
/// plaintext: many callers' commands, small and large, and re-authentications in their midst, must
/// each still get their own reply.
@Suite("Flush batching against a real redis-server", .timeLimit(.minutes(2)))
struct FlushBatchingReviewTests {
    @Test("over TLS, 240 concurrent callers on one connection (values of 0 B to 1.1 MiB) with re-authentications among them: each gets its own value")
    func concurrentCallersOverTLS() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration()) { server in
            let connection = try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: try fixture.context()))
            let prefix = uniqueKey("flush-batch")
            let sizes = [0, 1, 300, 16_383, 16_384, 16_385, 20_000, 70_000, (1 << 20) + 100_000]
            func value(_ index: Int) -> [UInt8] {
                let size = index % 40 == 7 ? sizes.last! : sizes[index % (sizes.count - 1)]
                return (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index) }
            }
            let credentials = RedisCredentials(username: "alice", password: fixture.password, version: "v1")
            let mismatches = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<240 {
                    group.addTask {
                        if index % 60 == 13 {
                            try await connection.authenticate(as: credentials, name: "batch-\(index)")
                            return 0
                        }
                        let key = "\(prefix):\(index)"
                        let expected = value(index)
                        try await connection.set(RedisKey(key), to: .bytes(expected))
                        let got = try await connection.get(RedisKey(key)).map { Array($0.readableBytesView) }
                        // A pipeline of its own as well: replies matched in order.
                        let replies = try await connection.pipeline([
                            RedisCommand("GET", .key(RedisKey(key))), RedisCommand("STRLEN", .key(RedisKey(key))),
                        ])
                        let piped = try replies[0].get().bytes.map { Array($0.readableBytesView) }
                        let length = try replies[1].get().int
                        return got == expected && piped == expected && length == expected.count ? 0 : 1
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(mismatches == 0)
            #expect(try await connection.ping() == "PONG")
            await connection.close()
        }
    }

    @Test("over TLS, the client closes the connection amid 200 callers' commands (some written and not yet flushed): each caller gets its reply or connectionClosed, none hangs, 5 times")
    func closeAmidBatchesOverTLS() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration()) { server in
            let context = try fixture.context()
            for round in 0..<5 {
                let connection = try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: context))
                let outcomes = try await withThrowingTaskGroup(of: Bool.self) { group in
                    for index in 0..<200 {
                        group.addTask {
                            if index == 50 + round * 30 {
                                await connection.close()
                                return true
                            }
                            do {
                                let value = "v\(index)"
                                let reply = try await connection.send(RedisCommand("ECHO", .string(value)))
                                return reply.string == value
                            } catch let error as RedisError {
                                return error.code == .connectionClosed
                            }
                        }
                    }
                    return try await group.reduce(into: [Bool]()) { $0.append($1) }
                }
                #expect(outcomes.count == 200)
                #expect(outcomes.allSatisfy { $0 }, "a caller got another's reply or an unexpected error in round \(round)")
                await connection.waitUntilClosed()
            }
        }
    }
}
