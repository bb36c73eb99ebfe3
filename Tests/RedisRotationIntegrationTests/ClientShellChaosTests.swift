import Foundation
import Logging
import NIOCore
import NIOPosix
import RedisRotationTesting
import Synchronization
import Testing

@testable import RedisRotation

/// The client's shell against a real server under everything at once (found by the review of the
/// move of every decision into `ClientStateMachine`).
@Suite("Client shell under chaos", .timeLimit(.minutes(2)))
struct ClientShellChaosTests {}

extension ClientShellChaosTests {
    /// Everything at once against a real server: short connection ages (replacements, closeWhenFree),
    /// frequent health checks, kills, a rotation, cancelled commands and transactions, then a shutdown
    /// while commands are still being issued. The debug build's assertions in `translate` and the
    /// precondition of `leaseRequestsInFlight` watch the shell's invariants.
    @Test("chaos: kills, rotation, cancellations and a shutdown mid-traffic leave nothing behind")
    func chaos() async throws {
        let old = makePassword()
        let new = makePassword()
        try await withAliceServer(password: old) { server in
            let file = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: file)
            let client = try RedisClient(
                configuration: RedisClientConfiguration(
                    host: server.host,
                    port: server.port,
                    name: "test",
                    pool: .init(
                        minimumConnections: 1,
                        maximumConnections: 4,
                        maximumConcurrentHandshakes: 2,
                        idleTimeout: .milliseconds(300),
                        maximumConnectionAge: .milliseconds(400),
                        leaseTimeout: .seconds(2),
                        reconnectBackoffCap: .milliseconds(200),
                        healthCheckInterval: .milliseconds(100)
                    ),
                    rotation: .init(probeBackoffBase: .milliseconds(20), probeBackoffCap: .milliseconds(100), maximumProbeAttempts: 20)
                ),
                credentials: .file(file, username: "alice")
            )
            let runner = Task { try await client.run() }
            let events = Task { for await _ in client.events {} }
            defer { events.cancel() }
            let stop = StopFlag()
            let workers = (0..<12).map { worker in
                Task {
                    var index = 0
                    while !stop.isStopped {
                        index += 1
                        let key = RedisKey("chaos:\(worker):\(index % 10)")
                        let current = index
                        let job = Task {
                            switch current % 4 {
                            case 0: _ = try await client.get(key)
                            case 1: _ = try await client.send(RedisCommand("SET", .key(key), .integer(current)).idempotent())
                            case 2:
                                _ = try await client.withConnection { connection in
                                    try await connection.send(RedisCommand("MULTI"))
                                    try await connection.send(RedisCommand("INCR", .key(key)))
                                    return try await connection.send(RedisCommand("EXEC"))
                                }
                            default: _ = try await client.incr("chaos:counter")
                            }
                        }
                        if index % 3 == 0 {
                            try? await Task.sleep(for: .microseconds(Int.random(in: 0..<2000)))
                            job.cancel()
                        }
                        _ = await job.result
                    }
                }
            }
            try await Task.sleep(for: .milliseconds(500))
            try await server.admin("CLIENT", "KILL", "USER", "alice")
            try await server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
            try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
            try await Task.sleep(for: .milliseconds(500))
            try await server.admin("ACL", "SETUSER", "alice", .string("<\(text(of: old))"))
            try await server.admin("CLIENT", "KILL", "USER", "alice")
            try await Task.sleep(for: .milliseconds(800))
            #expect(client.currentCredentialVersion == "v2")
            // Quiet: every lease request ended.
            stop.stop()
            for worker in workers { await worker.value }
            await eventually("no lease request is left", timeout: .seconds(5)) { client.leaseRequestsInFlight == 0 }
            #expect(try await client.get(RedisKey("chaos:0:0")) != nil || true)
            // Shutdown while commands are issued and handshakes are in flight.
            let late = (0..<8).map { _ in Task { try? await client.get(RedisKey("chaos:late")) } }
            try await server.admin("CLIENT", "KILL", "USER", "alice")
            let more = (0..<8).map { _ in Task { try? await client.get(RedisKey("chaos:late")) } }
            try await Task.sleep(for: .microseconds(Int.random(in: 0..<3000)))
            runner.cancel()
            let clock = ContinuousClock()
            let started = clock.now
            _ = await runner.result
            #expect(clock.now - started < .seconds(3), "run() took \(clock.now - started) to return after cancellation")
            for task in late + more { _ = await task.value }
            #expect(client.leaseRequestsInFlight == 0)
            // Nothing of the client's stays connected to the server.
            await eventually("no connection of the client is left on the server", timeout: .seconds(5)) {
                ((try? await server.clients(of: "alice")) ?? [["": ""]]).isEmpty
            }
        }
    }
}
