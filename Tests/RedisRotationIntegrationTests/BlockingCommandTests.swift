import Foundation
import RedisRotationTesting
import Testing

@testable import RedisRotation

/// Blocking commands through the pool and on a single connection, against a real server: their
/// deadline is their own timeout plus the command timeout, and a rotation waits for them.
@Suite("Blocking commands", .timeLimit(.minutes(2)))
struct BlockingCommandTests {
    func configuration(_ server: RedisServerProcess, commandTimeout: Duration = .milliseconds(300), maximumConnections: Int = 8) -> RedisClientConfiguration {
        RedisClientConfiguration(
            host: server.host,
            port: server.port,
            name: "test",
            commandTimeout: commandTimeout,
            pool: .init(minimumConnections: 1, maximumConnections: maximumConnections, maximumConnectionAge: nil, leaseTimeout: .seconds(10)),
            rotation: .init(probeBackoffBase: .milliseconds(50), probeBackoffCap: .milliseconds(400), maximumProbeAttempts: 6)
        )
    }

    @Test("a BLPOP that blocks longer than the command timeout waits for its element (its own timeout plus the command timeout)")
    func blocksPastCommandTimeout() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: self.configuration(server),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                let list = uniqueKey("blocking")
                let popped = Task { try await client.send(RedisCommand("BLPOP", .key(list), "20")) }
                try await server.waitForBlockedClients(1)
                // Well past the 300 ms command timeout.
                try await Task.sleep(for: .milliseconds(600))
                try await server.admin("RPUSH", .key(list), "element")
                let reply = try await popped.value
                #expect(reply.array?.last?.string == "element")
                // A timeout of 0 blocks until data arrives, however long that is.
                let forever = Task { try await client.send(RedisCommand("BLPOP", .key(list), "0")) }
                try await server.waitForBlockedClients(1)
                try await Task.sleep(for: .milliseconds(600))
                try await server.admin("RPUSH", .key(list), "second")
                #expect(try await forever.value.array?.last?.string == "second")
                #expect(client.statistics.commandsFailed == 0)
            }
        }
    }

    @Test("a single connection gives a blocking command its own timeout plus the command timeout")
    func singleConnectionBlocks() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(
                configuration: .init(host: server.host, port: server.port, username: "alice", password: password, commandTimeout: .milliseconds(300))
            )
            defer { Task { await connection.close() } }
            let list = uniqueKey("single")
            let popped = Task { try await connection.send(RedisCommand("BLPOP", .key(list), "20")) }
            try await server.waitForBlockedClients(1)
            try await Task.sleep(for: .milliseconds(600))
            try await server.admin("RPUSH", .key(list), "element")
            #expect(try await popped.value.array?.last?.string == "element")
            // A block that ends empty answers nil within its own timeout, not a client timeout.
            let empty = try await connection.send(RedisCommand("BLPOP", .key(list), "0.5"))
            #expect(empty == .null)
        }
    }

    @Test("BLPOP waiters through a password rotation: each gets its element, none an AUTH reply or an error; then they re-authenticate")
    func waitersThroughRotation() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { server in
            let file = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: file)
            let client = try RedisClient(configuration: self.configuration(server), credentials: .file(file, username: "alice"))
            try await withRunningClient(client) { client in
                let list = uniqueKey("rotation")
                let waiters = (0..<4).map { _ in Task { try await client.send(RedisCommand("BLPOP", .key(list), "20")) } }
                try await server.waitForBlockedClients(4)
                // The rotation: add the new password, publish it, wait for the promotion.
                let new = makePassword()
                try await server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
                try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
                await eventually("v2 is promoted") { client.currentCredentialVersion == "v2" }
                // The blocked connections are still v1, still blocked, and got no AUTH behind their BLPOP.
                try await server.waitForBlockedClients(4)
                #expect(client.connectionsByCredentialVersion["v1", default: 0] >= 4)
                for index in 0..<4 { try await server.admin("RPUSH", .key(list), .string("e\(index)")) }
                var received: [String] = []
                for waiter in waiters {
                    let reply = try await waiter.value
                    received.append(reply.array?.last?.string ?? "\(reply)")
                }
                #expect(received.sorted() == ["e0", "e1", "e2", "e3"])
                // Released, they switch to v2 in place; the old password can go.
                await eventually("every connection is on v2") { client.connectionsByCredentialVersion.keys.sorted() == ["v2"] }
                try await server.admin("ACL", "SETUSER", "alice", .string("<\(text(of: old))"))
                #expect(try await client.ping() == "PONG")
                #expect(client.statistics.commandsFailed == 0)
            }
        }
    }

    @Test("a connection killed during the block: an idempotent-marked BLPOP is resent and gets its element; an unmarked one reports outcomeUnknown")
    func killDuringBlock() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: self.configuration(server),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                let list = uniqueKey("killed")
                let safe = Task { try await client.send(RedisCommand("BLPOP", .key(list), "10").idempotent()) }
                let unsafe = Task { try await client.send(RedisCommand("BLPOP", .key(uniqueKey("other")), "10")) }
                try await server.waitForBlockedClients(2)
                try await server.admin("CLIENT", "KILL", "USER", "alice")
                // The marked one blocks again on a new connection.
                try await server.waitForBlockedClients(1)
                try await server.admin("RPUSH", .key(list), "element")
                #expect(try await safe.value.array?.last?.string == "element")
                await #expect {
                    _ = try await unsafe.value
                } throws: { error in
                    (error as? RedisError)?.code == .outcomeUnknown
                }
            }
        }
    }
}
