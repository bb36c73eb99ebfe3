import Foundation
import RedisRotationTesting
import Synchronization
import Testing

@testable import RedisRotation

/// `RedisClient.transaction` against a real server: atomic, typed per command, optimistic with
/// `WATCH`, and never reported as run when it did not, through kills and a rotation.
@Suite("Transactions and pipelines", .timeLimit(.minutes(2)))
struct TransactionAndPipelineTests {
    func client(_ server: RedisServerProcess, password: RedisSecret) throws -> RedisClient {
        try RedisClient(
            configuration: RedisClientConfiguration(
                host: server.host,
                port: server.port,
                name: "test",
                pool: .init(minimumConnections: 1, maximumConnections: 4, maximumConnectionAge: nil, leaseTimeout: .seconds(10))
            ),
            credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
        )
    }

    @Test("queued commands run atomically with a result each; a command's error fails only its result; a refused queue runs nothing")
    func basics() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            try await withRunningClient(try self.client(server, password: password)) { client in
                let counter = uniqueKey("tx")
                let text = uniqueKey("text")
                try await client.set(text, to: "not a number")
                let results = try await client.transaction { tx in
                    tx.queue(RedisCommand("INCR", .key(counter)))
                    tx.queue(RedisCommand("INCR", .key(text)))
                    tx.queue(RedisCommand("INCRBY", .key(counter), "10"))
                }
                #expect(results.count == 3)
                #expect(try results.value(at: 0, as: Int.self) == 1)
                #expect(throws: RedisError.self) { try results.value(at: 1, as: Int.self) }
                #expect(try results.value(at: 2, as: Int.self) == 11)

                // A command the server refuses while queueing (wrong arity): EXECABORT, nothing runs.
                await #expect {
                    _ = try await client.transaction { tx in
                        tx.queue(RedisCommand("INCR", .key(counter)))
                        tx.queue(RedisCommand("INCR"))
                    }
                } throws: { error in
                    (error as? RedisError)?.code == .transactionAborted
                }
                #expect(try await client.get(counter, as: Int.self) == 11)

                // A command that would change the pooled connection's session is refused before anything is sent.
                await #expect {
                    _ = try await client.transaction { tx in tx.queue(RedisCommand("SELECT", "1")) }
                } throws: { error in
                    (error as? RedisError)?.code == .invalidArgument
                }
                // The pool is clean after all of it.
                try await client.set(counter, to: "0")
                #expect(try await client.get(counter, as: Int.self) == 0)
            }
        }
    }

    @Test("a pipeline: one write, results in order, an error reply fails only its own result; session changes refused")
    func pipeline() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            try await withRunningClient(try self.client(server, password: password)) { client in
                let key = uniqueKey("pipe")
                let results = try await client.pipeline { p in
                    p.queue(RedisCommand("SET", .key(key), "1"))
                    p.queue(RedisCommand("LPUSH", .key(key), "x"))
                    p.queue(RedisCommand("INCR", .key(key)))
                    p.queue(RedisCommand("GET", .key(key)))
                }
                #expect(try results.value(at: 0, as: String.self) == "OK")
                #expect(throws: RedisError.self) { try results.value(at: 1, as: Int.self) }
                if case .failure(let error) = results.results[1] { #expect(error.serverErrorPrefix == "WRONGTYPE") }
                #expect(try results.value(at: 2, as: Int.self) == 2)
                #expect(try results.value(at: 3, as: String.self) == "2")
                await #expect {
                    _ = try await client.pipeline { p in p.queue(RedisCommand("SELECT", "2")) }
                } throws: { error in
                    (error as? RedisError)?.code == .invalidArgument
                }
                #expect(try await client.pipeline { _ in }.count == 0)
            }
        }
    }

    @Test("a watched key changed by someone else makes the transaction run again; changed every time, it is aborted and nothing applies")
    func optimisticConcurrency() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            try await withRunningClient(try self.client(server, password: password)) { client in
                let balance = uniqueKey("balance")
                try await client.set(balance, to: "100")
                let attempts = Atomic<Int>(0)
                let results = try await client.transaction(watching: [balance]) { connection in
                    let current = try await connection.send(RedisCommand("GET", .key(balance)), as: Int.self)
                    if attempts.add(1, ordering: .relaxed).newValue == 1 {
                        // Another client changes the key between the read and EXEC: the first attempt must not apply.
                        try await server.admin("INCRBY", .key(balance), "5")
                    }
                    var tx = RedisTransaction()
                    tx.queue(RedisCommand("SET", .key(balance), .integer(Int64(current + 10))))
                    return tx
                }
                #expect(attempts.load(ordering: .relaxed) == 2)
                #expect(results.count == 1)
                #expect(try await client.get(balance, as: Int.self) == 115)

                let always = Atomic<Int>(0)
                await #expect {
                    _ = try await client.transaction(watching: [balance], maximumAttempts: 3) { connection in
                        always.add(1, ordering: .relaxed)
                        try await server.admin("INCR", .key(balance))
                        var tx = RedisTransaction()
                        tx.queue(RedisCommand("SET", .key(balance), "0"))
                        return tx
                    }
                } throws: { error in
                    (error as? RedisError)?.code == .transactionAborted
                }
                #expect(always.load(ordering: .relaxed) == 3)
                #expect(try await client.get(balance, as: Int.self) == 118)
                // A body that throws leaves no watch behind: the next transaction on any connection runs.
                struct Stop: Error {}
                await #expect(throws: Stop.self) {
                    _ = try await client.transaction(watching: [balance]) { _ in throw Stop() }
                }
                let after = try await client.transaction { tx in tx.queue(RedisCommand("INCR", .key(balance))) }
                #expect(try after.value(at: 0, as: Int.self) == 119)
            }
        }
    }

    @Test("transactions under repeated kills and a password rotation: each commits fully or reports failure, never half")
    func killsAndRotation() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { server in
            let file = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: file)
            let client = try RedisClient(
                configuration: RedisClientConfiguration(
                    host: server.host,
                    port: server.port,
                    name: "test",
                    pool: .init(minimumConnections: 2, maximumConnections: 6, maximumConnectionAge: nil, leaseTimeout: .seconds(10)),
                    rotation: .init(probeBackoffBase: .milliseconds(50), probeBackoffCap: .milliseconds(400), maximumProbeAttempts: 6)
                ),
                credentials: .file(file, username: "alice")
            )
            try await withRunningClient(client) { client in
                let a = uniqueKey("a")
                let b = uniqueKey("b")
                let stop = StopFlag()
                let tally = TransactionTally()
                let workers = (0..<6).map { _ in
                    Task {
                        // Bounded by count and by the stop flag.
                        for _ in 0..<5_000 where !stop.isStopped {
                            do {
                                let results = try await client.transaction { tx in
                                    tx.queue(RedisCommand("INCR", .key(a)))
                                    tx.queue(RedisCommand("INCR", .key(b)))
                                }
                                #expect(try results.value(at: 0, as: Int.self) == results.value(at: 1, as: Int.self))
                                tally.state.withLock { $0.committed += 1 }
                                stop.recordSuccess()
                            } catch let error as RedisError where error.code == .outcomeUnknown {
                                tally.state.withLock { $0.unknown += 1 }
                            } catch {
                                tally.state.withLock { $0.failed.append("\(error)") }
                            }
                        }
                    }
                }
                await stop.waitForProgress(200, "before the kills")
                for _ in 0..<3 {
                    try await server.admin("CLIENT", "KILL", "USER", "alice")
                    await stop.waitForProgress(100, "after a kill")
                }
                let new = makePassword()
                try await server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
                try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
                await eventually("every connection is on v2") { client.connectionsByCredentialVersion.keys.sorted() == ["v2"] }
                try await server.admin("ACL", "SETUSER", "alice", .string("<\(text(of: old))"))
                try await server.admin("CLIENT", "KILL", "USER", "alice")
                await stop.waitForProgress(200, "after the rotation")
                stop.stop()
                for worker in workers { await worker.value }
                let (committed, unknown, failed) = tally.state.withLock { ($0.committed, $0.unknown, $0.failed) }
                print("transactions: committed=\(committed) unknown=\(unknown) retried=\(client.statistics.commandsRetried)")
                #expect(failed.isEmpty, "\(failed.prefix(3))")
                let countA = try await client.get(a, as: Int.self) ?? 0
                let countB = try await client.get(b, as: Int.self) ?? 0
                // Never half a transaction, and every reported commit is there.
                #expect(countA == countB)
                #expect(countA >= committed && countA <= committed + unknown, "a=\(countA) committed=\(committed) unknown=\(unknown)")
            }
        }
    }
}

/// What the transaction workers saw.
final class TransactionTally: Sendable {
    let state = Mutex<(committed: Int, unknown: Int, failed: [String])>((0, 0, []))
}
