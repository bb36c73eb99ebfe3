import Foundation
import NIOCore
import RedisRotation
import RedisRotationTesting
import Testing

/// Typed commands that would break a pooled connection, the pairing of replies with commands, or the
/// RESP2 reader are refused before anything is sent.
@Suite("Typed commands: refused where they would break the connection", .timeLimit(.minutes(3)))
struct TypedCommandSafetyTests {
    @Test("SCRIPT DEBUG through the pool is refused, or leaves the next lease's EVAL unaffected")
    func scriptDebugThroughThePoolDoesNotPoisonTheConnection() async throws {
        try await withOneConnectionClient { _, client in
            // Not offered as a method on the pooled client; the command value is refused like SELECT.
            let refusal = await #expect(throws: RedisError.self) { try await client.execute(RedisCommands.SCRIPT.DEBUG(mode: .yes)) }
            #expect(refusal?.code == .invalidArgument)
            // The next user of the (only) pooled connection runs a script: it must get its result,
            // not a Lua debugger session (the server forked one for this connection).
            let reply = try? await client.send(RedisCommand("EVAL", "return 41 + 1", "0"), timeout: .seconds(5))
            #expect(reply?.int == 42, "EVAL after SCRIPT DEBUG YES on the pooled connection answered \(String(describing: reply))")
            let get = try? await client.send(RedisCommand("PING"), timeout: .seconds(5))
            #expect(get.flatMap { try? String(fromRESP: $0) } == "PONG", "PING afterwards answered \(String(describing: get))")
        }
    }

    @Test("SCRIPT DEBUG queued in a pooled pipeline is refused before anything is sent")
    func scriptDebugInAPooledBatchIsRefused() async throws {
        try await withOneConnectionClient { _, client in
            var pipeline = RedisPipeline()
            pipeline.queue(RedisCommands.SCRIPT.DEBUG(mode: .yes))
            await #expect(throws: RedisError.self) { _ = try await client.pipeline(pipeline) }
            let reply = try? await client.send(RedisCommand("EVAL", "return 41 + 1", "0"), timeout: .seconds(5))
            #expect(reply?.int == 42, "EVAL afterwards answered \(String(describing: reply))")
        }
    }

    @Test("HELLO 3 through the generated RedisConnection.hello is refused before it is sent, or leaves a working connection")
    func helloThreeDoesNotBreakTheConnection() async throws {
        try await RedisServerProcess.withServer { server in
            let connection = try await server.adminConnection()
            do {
                _ = try await connection.hello(arguments: .init(protover: 3))
            } catch let error as RedisError where error.code == .invalidArgument {
                await connection.close()
                return  // refused: the client speaks RESP2 only
            } catch {
                Issue.record("HELLO 3 failed with \(error)")
            }
            let reply = try? await connection.send(RedisCommand("PING"), timeout: .seconds(5))
            #expect(reply.flatMap { try? String(fromRESP: $0) } == "PONG", "PING after HELLO 3 answered \(String(describing: reply))")
            await connection.close()
        }
    }

    @Test("CLIENT REPLY SKIP through the generated API never hands one command's reply to another")
    func clientReplySkipDoesNotMisdeliverReplies() async throws {
        try await RedisServerProcess.withServer { server in
            let admin = try await server.adminConnection()
            _ = try await admin.send(RedisCommand("SET", "typed-safety:x", "value of x"))
            _ = try await admin.send(RedisCommand("SET", "typed-safety:y", "value of y"))
            await admin.close()
            var configuration = server.adminConnectionConfiguration()
            configuration.commandTimeout = .seconds(1)
            let connection = try await RedisConnection.connect(configuration: configuration)
            // The generated RedisConnection.clientReply(onOffSkip:) accepts .skip; the same command in a
            // pipeline shows where its missing reply leads.
            var pipeline = RedisPipeline()
            pipeline.queue(RedisCommands.CLIENT.REPLY(onOffSkip: .skip))
            let x = pipeline.get("typed-safety:x")
            let y = pipeline.get("typed-safety:y")
            let results: RedisCommandResults
            do {
                results = try await connection.pipeline(pipeline)
            } catch let error as RedisError where error.code == .invalidArgument {
                await connection.close()
                return  // refused before sending: the fix
            }
            await connection.close()
            let replyToClientReply = try? results.results[0].get()
            #expect(replyToClientReply.flatMap { $0.bytes.map { String(buffer: $0) } } != "value of y",
                    "CLIENT REPLY SKIP was answered with GET typed-safety:y's value")
            #expect((try? results[y]).flatMap { $0.map { String(buffer: $0) } } != "value of x")
            _ = x
        }
    }

    @Test("a typed method inside the generated multi()/exec() never reports failure for a command the server queued and then ran")
    func typedMethodInsideMultiDoesNotClaimFailureForAQueuedCommand() async throws {
        try await RedisServerProcess.withServer { server in
            let connection = try await server.adminConnection()
            let key = uniqueKey("multi")
            try await connection.multi()
            var thrown: RedisError?
            do {
                _ = try await connection.decrby(key, decrement: 5)  // the server answers +QUEUED
            } catch let error as RedisError {
                thrown = error
            }
            let exec = try await connection.exec()
            let value = try await connection.get(key, as: Int.self)
            await connection.close()
            if let thrown {
                // An error is fine only when the command did not run.
                #expect(value == nil, "decrby threw \(thrown.code) (\(thrown.message)), yet EXEC ran it: \(String(describing: exec)), value \(String(describing: value))")
            }
        }
    }
}
