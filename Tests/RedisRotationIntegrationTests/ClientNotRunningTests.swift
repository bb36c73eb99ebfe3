import Foundation
import RedisRotationTesting
import Testing

@testable import RedisRotation

/// A client whose `run()` has not started: commands wait for it up to their lease deadline, and fail
/// then with an error that says what is missing, instead of waiting for ever.
@Suite("A client whose run() has not started", .timeLimit(.minutes(2)))
struct ClientNotRunningTests {
    func client(_ server: RedisServerProcess, _ password: RedisSecret, leaseTimeout: Duration = .milliseconds(400)) throws -> RedisClient {
        try RedisClient(
            configuration: RedisClientConfiguration(
                host: server.host,
                port: server.port,
                name: "not-running",
                pool: .init(minimumConnections: 1, maximumConnections: 2, leaseTimeout: leaseTimeout)
            ),
            credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
        )
    }

    @Test("GET, withConnection and a transaction on a client never run: each fails at its lease deadline with leaseTimeout, naming RedisClient.run()")
    func neverRun() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try self.client(server, password)
            let key = uniqueKey("not-running")
            let attempts: [(String, @Sendable () async throws -> Void)] = [
                ("GET", { _ = try await client.get(key) }),
                ("withConnection", { _ = try await client.withConnection { $0.id } }),
                ("transaction", { _ = try await client.transaction { $0.queue(RedisCommand("INCR", .key(key))) } }),
            ]
            for (label, attempt) in attempts {
                do {
                    try await attempt()
                    Issue.record("\(label) succeeded on a client that never ran")
                } catch let error as RedisError {
                    #expect(error.code == .leaseTimeout, "\(label): \(error)")
                    #expect(error.message.contains("RedisClient.run()"), "\(label): \(error.message)")
                }
            }
        }
    }

    @Test("a command sent before run() starts, run() started within its lease deadline: the command succeeds")
    func runStartsInTime() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try self.client(server, password, leaseTimeout: .seconds(20))
            let key = uniqueKey("late-run")
            let command = Task { try await client.set(key, to: "value") }
            // The command is waiting for a connection before run() starts.
            await eventually("the command waits for a lease", timeout: .seconds(5)) { client.leaseRequestsInFlight > 0 }
            try await withRunningClient(client) { client in
                _ = try await command.value
                #expect(try await client.get(key, as: String.self) == "value")
            }
        }
    }
}
