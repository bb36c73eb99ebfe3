import NIOCore
import RedisRotation
import Testing

/// `connect`'s first handshake step with more than one command (HELLO with SETNAME, then SELECT),
/// against a fake server that fails after answering the first of them: the one waiter must report the
/// second command's failure, not hang for the rest of its replies.
@Suite("Connect mid-handshake review", .timeLimit(.minutes(2)))
struct ConnectMidHandshakeReviewTests {
    @Test("a server that answers HELLO and closes at the SELECT of the same step: each of 20 connects throws connectionClosed, none hangs")
    func serverClosesAfterHello() async throws {
        try await FakeRedisServer.withServer(steps: Array(repeating: .close, count: 20)) { fake in
            let configuration = RedisConnectionConfiguration(port: fake.port, database: 2, name: "mid-step")
            for round in 0..<20 {
                let result = await ConnectWaiterReviewTests.outcome(within: .seconds(20)) {
                    try await RedisConnection.connect(configuration: configuration)
                }
                switch result {
                case nil:
                    Issue.record("round \(round): connect never returned")
                case .success(let connection)?:
                    Issue.record("round \(round): connected although the SELECT was never answered")
                    await connection.close()
                case .failure(let error)?:
                    #expect((error as? RedisError)?.code == .connectionClosed, "round \(round): \(error)")
                }
            }
        }
    }

    @Test("a SELECT answered with a bulk string length near Int64.max, under the largest limits: protocolError, not a crash")
    func hugeBulkLengthInTheStep() async throws {
        try await FakeRedisServer.withServer(steps: [.reply("$9223372036854775807\r\n")]) { fake in
            let limits = RESPReaderLimits(
                maximumBulkLength: .max,
                maximumArrayElements: Int(Int32.max),
                maximumLineLength: .max,
                maximumReplyBytes: .max,
                maximumReplyElements: .max
            )
            let configuration = RedisConnectionConfiguration(port: fake.port, database: 2, name: "huge", readerLimits: limits)
            let result = await ConnectWaiterReviewTests.outcome(within: .seconds(20)) {
                try await RedisConnection.connect(configuration: configuration)
            }
            switch result {
            case nil:
                Issue.record("connect never returned")
            case .success(let connection)?:
                Issue.record("connected over a malformed SELECT reply")
                await connection.close()
            case .failure(let error)?:
                #expect((error as? RedisError)?.code == .protocolError, "\(error)")
            }
        }
    }
}
