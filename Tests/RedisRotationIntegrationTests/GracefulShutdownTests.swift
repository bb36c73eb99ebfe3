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

    @Test("a cluster client cancelled while its graceful shutdown drains a command the server holds back: run() ends at once, the command fails")
    func clusterCancelDuringDrain() async throws {
        let password = makePassword()
        try await RedisClusterProcess.withCluster(.init(users: [.init(name: "alice", passwords: [password])])) { cluster in
            var node = testClusterNodeConfiguration(name: "cancel-drain", leaseTimeout: .seconds(10))
            // The drain would wait up to a minute for the held-back reply: only the cancellation ends it.
            node.commandTimeout = .seconds(60)
            let client = try RedisClusterClient(
                configuration: RedisClusterConfiguration(seeds: [.init(host: "127.0.0.1", port: cluster.nodes[0].port)], node: node),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            let group = ServiceGroup(configuration: .init(services: [client], logger: Logger(label: "test")))
            let run = Task { try await group.run() }
            let key = uniqueKey("cancel-drain")
            #expect(try await client.hincrby(key, field: "ticks", increment: 1) == 1)
            let server = try await cluster.primary(forSlot: RedisClusterSlot.slot(for: key))
            try await server.admin("CLIENT", "PAUSE", "30000", "WRITE")
            let write = Task { try await client.hincrby(key, field: "ticks", increment: 1) }
            try await server.waitForBlockedClients(1)
            await group.triggerGracefulShutdown()
            // A second graceful signal changes nothing.
            await group.triggerGracefulShutdown()
            // The drain has begun once new commands fail with clientShutdown (bounded: 5 s).
            var stopped = false
            for _ in 0..<500 where !stopped {
                do {
                    _ = try await client.send(RedisCommand("PING"), timeout: .seconds(1))
                    try await Task.sleep(for: .milliseconds(10))
                } catch let error as RedisError where error.code == .clientShutdown {
                    stopped = true
                }
            }
            #expect(stopped, "new commands never failed with clientShutdown")
            run.cancel()
            let ended = await ReplyBoxIntegrationReviewTests.outcome(within: .seconds(10)) { try await run.value }
            let written = await ReplyBoxIntegrationReviewTests.outcome(within: .seconds(10)) { try await write.value }
            try await server.admin("CLIENT", "UNPAUSE")
            #expect(ended != nil, "run() still drained after its task was cancelled")
            switch written {
            case nil: Issue.record("the held-back HINCRBY never returned after the cancellation")
            case .success(let value)?: Issue.record("the held-back HINCRBY was answered while the server held it back: \(value)")
            case .failure(let error)?:
                let code = (error as? RedisError)?.code
                #expect(code == .connectionClosed || code == .outcomeUnknown, "\(error)")
            }
            _ = try? await run.value
        }
    }

    @Test("after a cluster client stopped, a command for a node it never opened a pool to fails with clientShutdown, at once")
    func clusterCommandAfterShutdownToANodeWithoutPool() async throws {
        let password = makePassword()
        try await RedisClusterProcess.withCluster(.init(users: [.init(name: "alice", passwords: [password])])) { cluster in
            let client = try RedisClusterClient(
                configuration: RedisClusterConfiguration(
                    seeds: [.init(host: "127.0.0.1", port: cluster.nodes[0].port)],
                    node: testClusterNodeConfiguration(name: "after-stop", leaseTimeout: .seconds(3)),
                    refreshInterval: .seconds(600)
                ),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            var keysByPort: [Int: RedisKey] = [:]
            for index in 0..<2000 where keysByPort.count < 3 {
                let key = uniqueKey("after-stop-\(index)")
                let port = try await cluster.primary(forSlot: RedisClusterSlot.slot(for: key)).port
                if keysByPort[port] == nil { keysByPort[port] = key }
            }
            let seedKey = try #require(keysByPort[cluster.nodes[0].port])
            let group = ServiceGroup(configuration: .init(services: [client], logger: Logger(label: "test")))
            let run = Task { try await group.run() }
            #expect(try await client.hincrby(seedKey, field: "n", increment: 1) == 1)
            await group.triggerGracefulShutdown()
            try await run.value
            for (port, key) in keysByPort {
                // Before the fix only the seed's node (whose pool had stopped) answered: the others got a
                // pool that never ran, and the command waited forever, past its deadline. (Bounded here: a
                // watchdog cancels it after 5 s.)
                let attempt = Task { try await client.hincrby(key, field: "n", increment: 1) }
                let watchdog = Task {
                    try await Task.sleep(for: .seconds(5))
                    attempt.cancel()
                }
                let result = await attempt.result
                watchdog.cancel()
                switch result {
                case .success(let value): Issue.record("port \(port): a stopped cluster client answered \(value)")
                case .failure(let error): #expect((error as? RedisError)?.code == .clientShutdown, "port \(port): \(error)")
                }
            }
        }
    }

    @Test("a service the group shuts down before the cluster client still uses it while it stops: node pools its commands opened do not stop with it")
    func clusterPoolsDoNotStopWithTheServiceThatOpenedThem() async throws {
        let password = makePassword()
        try await RedisClusterProcess.withCluster(.init(users: [.init(name: "alice", passwords: [password])])) { cluster in
            // Only the seed's pool is opened by the cluster client itself (no periodic refresh asks the
            // other primaries): the service's first commands open the other nodes' pools, from its task.
            let client = try RedisClusterClient(
                configuration: RedisClusterConfiguration(
                    seeds: [.init(host: "127.0.0.1", port: cluster.nodes[0].port)],
                    node: testClusterNodeConfiguration(name: "graceful-pools", leaseTimeout: .seconds(3)),
                    refreshInterval: .seconds(600)
                ),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            // One key on each primary.
            var keysByPort: [Int: RedisKey] = [:]
            for index in 0..<2000 where keysByPort.count < 3 {
                let key = uniqueKey("graceful-pools-\(index)")
                let port = try await cluster.primary(forSlot: RedisClusterSlot.slot(for: key)).port
                if keysByPort[port] == nil { keysByPort[port] = key }
            }
            try #require(keysByPort.count == 3)
            let user = ClusterUserAtShutdown(client: client, keys: Array(keysByPort.values))
            // A ServiceGroup stops its services last first: the user, then (once its run() returned) the
            // cluster client. Before the fix a pool's task inherited the graceful shutdown of the task
            // that opened it: the user's stop drained and closed the pools its own commands had opened,
            // and its commands while stopping failed with clientShutdown until their deadline.
            let group = ServiceGroup(configuration: .init(services: [client, user], logger: Logger(label: "test")))
            let run = Task { try await group.run() }
            try await user.warmedUp.wait()
            await group.triggerGracefulShutdown()
            try await run.value
            #expect(user.failures.withLock { $0 }.isEmpty, "commands sent while the service stopped: \(user.failures.withLock { $0 })")
            #expect(user.stopped.withLock { $0 } == 3)
        }
    }

}

/// Uses the cluster client while it runs (which opens node pools from its task) and again while it
/// stops gracefully, as a server finishing its requests at a SIGTERM does.
private struct ClusterUserAtShutdown: Service {
    let client: RedisClusterClient
    let keys: [RedisKey]
    let warmedUp = Signal()
    let stopped = Locked(0)
    let failures = Locked<[String]>([])

    func run() async throws {
        for key in self.keys { _ = try await self.client.hincrby(key, field: "running", increment: 1) }
        self.warmedUp.fire()
        try? await gracefulShutdown()
        for key in self.keys {
            do {
                _ = try await self.client.hincrby(key, field: "stopping", increment: 1)
                self.stopped.withLock { $0 += 1 }
            } catch {
                self.failures.withLock { $0.append("\(key): \(error)") }
            }
        }
    }
}

/// Fired once; waited for by any number of tasks (bounded: at most 30 s).
private final class Signal: Sendable {
    private let fired = Locked(false)

    func fire() { self.fired.withLock { $0 = true } }

    func wait() async throws {
        for _ in 0..<3000 where !self.fired.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(10)) }
        try #require(self.fired.withLock { $0 }, "never fired")
    }
}
