import NIOCore
import RedisRotation
import Testing

/// A reply a fake server sends, named for the test list.
struct BadReply: Sendable, CustomTestStringConvertible {
    let name: String
    let bytes: ByteBuffer
    var testDescription: String { self.name }
}

@Suite("Connection against a server that sends malformed or oversized replies", .timeLimit(.minutes(1)))
struct MalformedReplyTests {
    static let replies: [BadReply] = [
        BadReply(
            name: "a bulk length whose CR is not followed by LF, then 1 MiB",
            bytes: ByteBuffer(string: "$5\r" + String(repeating: "x", count: 1 << 20))
        ),
        BadReply(name: "an integer whose CR is not followed by LF", bytes: ByteBuffer(string: ":12\rX")),
        BadReply(
            name: "a status line of 1 MiB without CRLF",
            bytes: ByteBuffer(string: "+" + String(repeating: "a", count: 1 << 20))
        ),
        BadReply(
            name: "nested arrays announcing more elements than one reply may hold",
            bytes: ByteBuffer(string: "*2\r\n*16777216\r\n")
        ),
    ]

    @Test("the waiting command fails with protocolError, not at its deadline, and the connection closes", arguments: replies)
    func badReplyClosesConnection(reply: BadReply) async throws {
        try await FakeRedisServer.withServer(reply: reply.bytes) { server in
            var configuration = RedisConnectionConfiguration(host: "127.0.0.1", port: server.port)
            // Far beyond what the reader needs: a commandTimeout here would mean it waited for more bytes.
            configuration.commandTimeout = .seconds(20)
            let connection = try await RedisConnection.connect(configuration: configuration)
            #expect(connection.serverVersion == "7.2.4")
            let error = await #expect(throws: RedisError.self) { try await connection.send(RedisCommand("GET", "key")) }
            #expect(error?.code == .protocolError)
            await connection.waitUntilClosed()
            #expect(!connection.isActive)
        }
    }
}
