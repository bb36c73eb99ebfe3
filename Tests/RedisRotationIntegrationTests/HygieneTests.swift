import Foundation
import RedisRotation
import RedisRotationTesting
import Testing

/// A pooled connection comes back to the pool exactly as clean as it left, whatever its user did to it
/// or however its user's task ended. Each test pins the pool to one connection, so the next lease
/// certainly gets the connection the previous one left behind.
@Suite("Connection hygiene through the pool", .timeLimit(.minutes(2)))
struct HygieneTests {
    /// Runs `send` on `connection` in a task of its own, waits until `sent` holds (the command is on its
    /// way), cancels that task and returns what it threw.
    func cancelAfterSending(
        _ connection: RedisConnection,
        _ command: RedisCommand,
        sent: @Sendable (RedisConnection) async throws -> Bool
    ) async throws -> (any Error)? {
        let task = Task { try await connection.send(command) }
        await eventually("\(command.name) was sent") { (try? await sent(connection)) ?? false }
        task.cancel()
        if case .failure(let error) = await task.result { return error }
        return nil
    }

    @Test("a MULTI whose task is cancelled before its +OK never puts later writes into a transaction")
    func cancelledMulti() async throws {
        try await withOneConnectionClient { server, client in
            #expect(try await client.ping() == "PONG")
            // The server is stopped, so MULTI's reply cannot arrive before the cancellation.
            server.kill(signal: SIGSTOP)
            let error = try await client.withConnection { connection in
                try await self.cancelAfterSending(connection, RedisCommand("MULTI")) { $0.isInTransaction }
            }
            server.kill(signal: SIGCONT)
            #expect(error is CancellationError)

            // Acknowledged writes through the same (only) connection all reach the server.
            let prefix = "multi:\(UUID().uuidString)"
            for index in 0..<40 {
                try await client.set(RedisKey("\(prefix):\(index)"), to: "\(index)")
                #expect(try await client.get(RedisKey("\(prefix):\(index)"), as: String.self) == "\(index)")
            }
            let admin = try await server.adminConnection()
            let keys = try await admin.send(RedisCommand("KEYS", .string("\(prefix):*")))
            await admin.close()
            #expect(keys.array?.count == 40)
        }
    }

    @Test("200 transactions cancelled at random moments lose none of 1,000 acknowledged writes")
    func cancelledTransactionsUnderTraffic() async throws {
        try await withOneConnectionClient { server, client in
            let prefix = "tx:\(UUID().uuidString)"
            for round in 0..<200 {
                let task = Task {
                    try await client.withConnection { connection in
                        try await connection.send(RedisCommand("MULTI"))
                        try await connection.send(RedisCommand("SET", .string("\(prefix):tx:\(round)"), "1"))
                        return try await connection.send(RedisCommand("EXEC"))
                    }
                }
                // Cancel at a different point of the sequence each round.
                for _ in 0..<(round % 7) { await Task.yield() }
                task.cancel()
                _ = await task.result
                for index in 0..<5 {
                    let key = RedisKey("\(prefix):plain:\(round * 5 + index)")
                    try await client.send(RedisCommand("SET", .key(key), "v").idempotent())
                }
            }
            let admin = try await server.adminConnection()
            let stored = try await admin.send(RedisCommand("KEYS", .string("\(prefix):plain:*")))
            await admin.close()
            #expect(stored.array?.count == 1000)
        }
    }

    @Test("a cancelled BLPOP closes its connection: the element pushed later stays in the list and nobody waits behind it")
    func cancelledBlockingPop() async throws {
        try await withOneConnectionClient { server, client in
            let list = uniqueKey("blpop")
            let popper = Task { try await client.send(RedisCommand("BLPOP", .key(list), "30"), timeout: .seconds(40)) }
            try await server.waitForBlockedClients(1)
            popper.cancel()
            let outcome = await popper.result
            #expect(throws: CancellationError.self) { try outcome.get() }
            // The server unblocks a client that disconnects; only then is the push safe to make.
            try await server.waitForBlockedClients(0)
            try await server.admin("RPUSH", .key(list), "element")
            // The next command through the pool does not wait behind an abandoned BLPOP.
            #expect(try await client.send(RedisCommand("LLEN", .key(list))).int == 1)
            let admin = try await server.adminConnection()
            #expect(try await admin.send(RedisCommand("LRANGE", .key(list), "0", "-1")).array?.count == 1)
            await admin.close()
        }
    }

    @Test("SELECT, CLIENT SETNAME and WATCH left by withConnection are undone before the next lease")
    func sessionStateRestored() async throws {
        try await withOneConnectionClient { server, client in
            let watched = uniqueKey("watched")
            let idBefore = try await client.withConnection { connection in
                try await connection.send(RedisCommand("SELECT", "1"))
                try await connection.send(RedisCommand("CLIENT", "SETNAME", "someone-else"))
                try await connection.send(RedisCommand("WATCH", .key(watched)))
                return try await connection.send(RedisCommand("CLIENT", "ID")).int
            }
            // Someone changes the watched key: a leaked WATCH would make the next EXEC fail.
            try await server.admin("SET", .key(watched), "changed")

            let prefix = "db:\(UUID().uuidString)"
            for index in 0..<40 {
                try await client.set(RedisKey("\(prefix):\(index)"), to: "x")
            }
            let (idAfter, exec) = try await client.withConnection { connection in
                let id = try await connection.send(RedisCommand("CLIENT", "ID")).int
                try await connection.send(RedisCommand("MULTI"))
                try await connection.send(RedisCommand("SET", .key(watched), "mine"))
                return (id, try await connection.send(RedisCommand("EXEC")))
            }
            #expect(idAfter == idBefore, "the connection was restored, not replaced")
            #expect(exec.array?.count == 1, "EXEC ran: no WATCH was left behind")

            let admin = try await server.adminConnection()
            #expect(try await admin.send(RedisCommand("KEYS", .string("\(prefix):*"))).array?.count == 40)
            try await admin.send(RedisCommand("SELECT", "1"))
            #expect(try await admin.send(RedisCommand("KEYS", .string("\(prefix):*"))).array?.count == 0)
            await admin.close()
            let names = try await server.clients(of: "alice").compactMap { $0["name"] }
            #expect(names == ["test@v1"])
        }
    }

    @Test("a connection left subscribed, monitoring or re-authenticated is closed, never handed on")
    func irreversibleStateCloses() async throws {
        try await withOneConnectionClient { server, client in
            let first = try await client.withConnection { connection in
                let id = try await connection.send(RedisCommand("CLIENT", "ID")).int
                try await connection.send(RedisCommand("SUBSCRIBE", "news"))
                return id
            }
            let second = try await client.withConnection { connection in
                try await connection.send(RedisCommand("CLIENT", "ID")).int
            }
            #expect(first != second)
            // The close reaches the server a moment later.
            try await eventually("no subscribed connection of alice is left on the server") {
                let clients = try await server.clients(of: "alice")
                return clients.allSatisfy { $0["sub"] == "0" && $0["flags"]?.contains("P") != true }
            }
            #expect(try await client.ping() == "PONG")
        }
    }

    @Test(
        "commands that change a pooled connection's session are refused by send with a clear error",
        arguments: [
            RedisCommand("MULTI"), RedisCommand("EXEC"), RedisCommand("WATCH", "k"), RedisCommand("SELECT", "1"),
            RedisCommand("CLIENT", "SETNAME", "x"), RedisCommand("AUTH", "x"), RedisCommand("HELLO", "3"),
            RedisCommand("RESET"), RedisCommand("SUBSCRIBE", "c"), RedisCommand("PSUBSCRIBE", "c*"),
            RedisCommand("MONITOR"), RedisCommand("QUIT"), RedisCommand("CLIENT", "REPLY", "OFF"),
        ]
    )
    func refusedThroughSend(command: RedisCommand) async throws {
        try await withOneConnectionClient { _, client in
            do {
                try await client.send(command)
                Issue.record("\(command) was sent through the pool")
            } catch let error as RedisError {
                #expect(error.code == .invalidArgument)
                #expect(error.message.contains(command.name), "\(error)")
            }
            // Nothing reached the server: the pool's connection still answers.
            #expect(try await client.ping() == "PONG")
        }
    }
}
