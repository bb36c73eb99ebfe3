import NIOCore
import RedisRotation
import RedisRotationTesting
import Testing

/// 512 MiB + 1 readable bytes whose memory is reserved but never written, so no test touches gigabytes.
func oversizedValue() -> ByteBuffer {
    let count = 512 * 1024 * 1024 + 1
    var buffer = ByteBufferAllocator().buffer(capacity: count)
    buffer.moveWriterIndex(forwardBy: count)
    return buffer
}

@Suite("Arguments larger than the server accepts", .timeLimit(.minutes(2)))
struct HugeArgumentTests {
    @Test("a 512 MiB + 1 byte argument fails with invalidArgument before anything is written; the connection stays usable")
    func oversizedArgumentOnConnection() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(
                configuration: server.connectionConfiguration(username: "alice", password: password)
            )
            let key = uniqueKey("huge")
            let error = await #expect(throws: RedisError.self) {
                try await connection.send(RedisCommand("SET", .key(key), .bytes(oversizedValue())))
            }
            #expect(error?.code == .invalidArgument)
            #expect(error?.message == "argument 2 of SET is 536870913 bytes; the server accepts at most 512 MiB")
            let pipelined = await #expect(throws: RedisError.self) {
                try await connection.pipeline([RedisCommand("PING"), RedisCommand("SET", .key(key), .bytes(oversizedValue()))])
            }
            #expect(pipelined?.code == .invalidArgument)
            #expect(connection.isActive)
            #expect(try await connection.get(key) == nil)
            #expect(try await connection.ping() == "PONG")
            await connection.close()
        }
    }

    @Test("through the pool the same command fails once, is not retried, and leaves the connection in use")
    func oversizedArgumentThroughPool() async throws {
        try await withOneConnectionClient(name: "huge") { _, client in
            let key = uniqueKey("huge")
            let pong = try await client.ping()
            #expect(pong == "PONG")
            let connectionBefore = try await client.withConnection { try await $0.send(RedisCommand("CLIENT", "ID")).int }
            let before = client.statistics
            let error = await #expect(throws: RedisError.self) {
                try await client.send(RedisCommand("SET", .key(key), .bytes(oversizedValue())).idempotent(), timeout: nil)
            }
            #expect(error?.code == .invalidArgument)
            let value = try await client.get(key)
            #expect(value == nil)
            let after = client.statistics
            #expect(after.commandsRetried == before.commandsRetried)
            #expect(after.commandsFailed == before.commandsFailed)
            // The pool's one connection is the one it had: nothing was closed or replaced.
            let connectionAfter = try await client.withConnection { try await $0.send(RedisCommand("CLIENT", "ID")).int }
            #expect(connectionAfter == connectionBefore)
        }
    }
}
