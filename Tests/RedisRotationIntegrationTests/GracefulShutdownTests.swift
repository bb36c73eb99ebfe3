import Foundation
import Logging
@testable import RedisRotation
import RedisRotationTesting
import ServiceLifecycle
import Testing

/// A graceful shutdown (SIGINT/SIGTERM through a `ServiceGroup`) lets commands already in flight get
/// their replies: found as the rare "command failed: outcomeUnknown" of the MutualTLSHotReload example
/// test, whose Ctrl-C closed the connection under a HINCRBY that the server had not answered yet.
@Suite("Graceful shutdown against a real redis-server", .timeLimit(.minutes(2)))
struct GracefulShutdownTests {
    @Test("a graceful shutdown while a HINCRBY is in flight: the HINCRBY gets its reply (not outcomeUnknown), later commands fail with clientShutdown, run() ends")
    func gracefulShutdownLetsACommandInFlightFinish() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: PoolSharingReviewTests.configuration(host: server.host, port: server.port, minimumConnections: 1, maximumConnections: 2),
                credentials: PoolSharingReviewTests.alice(password)
            )
            let group = ServiceGroup(configuration: .init(services: [client], logger: Logger(label: "test")))
            let run = Task { try await group.run() }
            let key = uniqueKey("graceful")
            #expect(try await client.hincrby(key, field: "ticks", increment: 1) == 1)
            // The server holds writes back: the next HINCRBY is written and stays unanswered.
            try await server.admin("CLIENT", "PAUSE", "10000", "WRITE")
            let finished = Locked(false)
            let write = Task {
                defer { finished.withLock { $0 = true } }
                return try await client.hincrby(key, field: "ticks", increment: 1)
            }
            try await server.waitForBlockedClients(1)
            await group.triggerGracefulShutdown()
            // The client is stopping once new leases fail with clientShutdown. (A lease, not a command:
            // a command could be pipelined behind the paused write.)
            var stopped = false
            for _ in 0..<500 where !stopped {
                do {
                    try await client.withConnection { _ in }
                    try await Task.sleep(for: .milliseconds(5))
                } catch let error as RedisError where error.code == .clientShutdown {
                    stopped = true
                }
            }
            #expect(stopped, "new commands never failed with clientShutdown")
            // Before the fix the shutdown closed the connection under the HINCRBY at once: it had
            // failed by now. (Bounded: the write stays paused for 10 s unless the close fails it.)
            for _ in 0..<50 where !finished.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(10)) }
            try await server.admin("CLIENT", "UNPAUSE")
            let result = await write.result
            switch result {
            case .success(let value): #expect(value == 2)
            case .failure(let error): Issue.record("the HINCRBY in flight failed at a graceful shutdown: \(error)")
            }
            try await run.value
            #expect(try await server.admin("HGET", .key(key), "ticks").string == "2")
        }
    }

    @Test("a graceful shutdown waits for commands in flight at most the command timeout: a BLPOP 0 that never returns is closed and run() ends")
    func gracefulShutdownIsBounded() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: PoolSharingReviewTests.configuration(
                    host: server.host, port: server.port, minimumConnections: 1, maximumConnections: 2, commandTimeout: .seconds(1)
                ),
                credentials: PoolSharingReviewTests.alice(password)
            )
            let group = ServiceGroup(configuration: .init(services: [client], logger: Logger(label: "test")))
            let run = Task { try await group.run() }
            let key = uniqueKey("bounded")
            // Blocks until an element arrives, which none will: only the shutdown's bound ends it.
            let blocked = Task { try await client.send(RedisCommand("BLPOP", .key(key), "0"), timeout: nil) }
            try await server.waitForBlockedClients(1)
            await group.triggerGracefulShutdown()
            try await run.value
            let result = await blocked.result
            if case .success(let value) = result { Issue.record("BLPOP 0 returned with nothing pushed: \(value)") }
        }
    }

    @Test("a cluster client's graceful shutdown while a HINCRBY is in flight on a node: the HINCRBY gets its reply, run() ends")
    func clusterGracefulShutdownLetsACommandInFlightFinish() async throws {
        let password = makePassword()
        try await RedisClusterProcess.withCluster(.init(users: [.init(name: "alice", passwords: [password])])) { cluster in
            let client = try RedisClusterClient(
                configuration: RedisClusterConfiguration(
                    seeds: [.init(host: "127.0.0.1", port: cluster.nodes[0].port)],
                    node: testClusterNodeConfiguration(name: "graceful-cluster", leaseTimeout: .seconds(10))
                ),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            let group = ServiceGroup(configuration: .init(services: [client], logger: Logger(label: "test")))
            let run = Task { try await group.run() }
            let key = uniqueKey("graceful-cluster")
            #expect(try await client.hincrby(key, field: "ticks", increment: 1) == 1)
            let node = try await cluster.primary(forSlot: RedisClusterSlot.slot(for: key))
            try await node.admin("CLIENT", "PAUSE", "10000", "WRITE")
            let finished = Locked(false)
            let write = Task {
                defer { finished.withLock { $0 = true } }
                return try await client.hincrby(key, field: "ticks", increment: 1)
            }
            try await node.waitForBlockedClients(1)
            await group.triggerGracefulShutdown()
            // Before the fix the cluster client cancelled its node pools, which closed the connection
            // under the HINCRBY at once. (Bounded: the write stays paused for 10 s unless a close fails it.)
            for _ in 0..<50 where !finished.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(10)) }
            try await node.admin("CLIENT", "UNPAUSE")
            switch await write.result {
            case .success(let value): #expect(value == 2)
            case .failure(let error): Issue.record("the HINCRBY in flight failed at a graceful shutdown: \(error)")
            }
            try await run.value
            let direct = try await RedisConnection.connect(configuration: node.connectionConfiguration(username: "alice", password: password))
            #expect(try await direct.send(RedisCommand("HGET", .key(key), "ticks")).string == "2")
            await direct.close()
            // After the shutdown, commands fail with clientShutdown.
            let after = await #expect(throws: RedisError.self) { try await client.hincrby(key, field: "ticks", increment: 1) }
            #expect(after?.code == .clientShutdown)
        }
    }

}
