import Foundation
import RedisRotationTesting
import Testing

@testable import RedisRotation

/// The client's own bookkeeping of lease requests, which no public API shows, against a real server.
@Suite("Lease bookkeeping", .timeLimit(.minutes(2)))
struct LeaseBookkeepingTests {
    @Test("2,000 commands cancelled at every point of their lease leave no lease request behind, and the pool still serves")
    func cancelledLeasesLeaveNothing() async throws {
        let password = RedisSecret("pw-\(UUID().uuidString)")
        try await RedisServerProcess.withServer(.init(users: [.init(name: "alice", passwords: [password])])) { server in
            let client = try RedisClient(
                configuration: RedisClientConfiguration(
                    host: server.host,
                    port: server.port,
                    pool: .init(minimumConnections: 1, maximumConnections: 2, maximumConnectionAge: nil, leaseTimeout: .seconds(10))
                ),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            let running = Task { try await client.run() }
            for round in 0..<2000 {
                let task = Task { try await client.send(RedisCommand("SET", .string("bookkeeping:\(round % 20)"), "x").idempotent()) }
                // Cancel before the lease is requested, while it waits, after it is granted, or not at all.
                for _ in 0..<(round % 5) { await Task.yield() }
                if round % 7 != 0 { task.cancel() }
                _ = await task.result
            }
            let pong = try await client.ping()
            #expect(pong == "PONG")
            #expect(client.leaseRequestsInFlight == 0)
            running.cancel()
            _ = await running.result
        }
    }
}
