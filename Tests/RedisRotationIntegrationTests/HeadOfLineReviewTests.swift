import Foundation
import NIOCore
@testable import RedisRotation
import RedisRotationTesting
import Synchronization
import Testing

/// Hostile review of head-of-line steering (`ReplyProgress`, `RedisClient.heldBackAfter`) and of the
/// allocation cuts in the command path (a single ordinary command written from its own encoding, no
/// pub/sub array for ordinary writes, lengths and argv in temporary allocations), against a real
/// redis-server.
@Suite("Head-of-line steering and command-path review against a real redis-server", .timeLimit(.minutes(3)))
struct HeadOfLineReviewTests {
    // MARK: Steering in the default pool shape

    @Test("default pool shape (minimum 1 connection, room to grow): reads sent 100 ms or more into a paused write do not queue behind it")
    func readsDoNotQueueBehindAPausedWriteWithOneConnectionOpen() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            // As `RedisClientConfiguration.Pool()` by default: one connection kept, more allowed.
            let client = try RedisClient(
                configuration: PoolSharingReviewTests.configuration(
                    host: server.host, port: server.port, minimumConnections: 1, maximumConnections: 4, cap: 32
                ),
                credentials: PoolSharingReviewTests.alice(password)
            )
            try await withRunningClient(client) { client in
                let key = uniqueKey("paused1")
                _ = try await client.send(RedisCommand("SET", .key(key), "before"), timeout: nil)
                try await server.admin("CLIENT", "PAUSE", "3000", "WRITE")
                let write = Task { try await client.send(RedisCommand("SET", .key(key), "after"), timeout: nil) }
                try await server.waitForBlockedClients(1)
                let clock = ContinuousClock()
                let blocked = clock.now
                let late = Locked<[String]>([])
                let served = Locked(0)
                await withTaskGroup(of: Void.self) { group in
                    for _ in 0..<8 {
                        group.addTask {
                            for _ in 0..<1000 where clock.now < blocked + .milliseconds(1500) {
                                let started = clock.now
                                do {
                                    _ = try await client.send(RedisCommand("GET", .key(key)), timeout: .seconds(1))
                                    served.withLock { $0 += 1 }
                                } catch {
                                    if started > blocked + .milliseconds(100), wasSentBehind(error) { late.withLock { $0.append("\(error)") } }
                                }
                            }
                        }
                    }
                }
                let open = client.connectionsByCredentialVersion.values.reduce(0, +)
                #expect(
                    late.withLock { $0 }.isEmpty,
                    "\(late.withLock { $0.count }) reads sent 100 ms or more into the pause failed behind the held-back write (served: \(served.withLock { $0 }), connections open: \(open)): \(late.withLock { $0.first ?? "" })"
                )
                try await server.admin("CLIENT", "UNPAUSE")
                _ = try await write.value
            }
        }
    }

    @Test("two connections under more readers than places (cap 2): reads sent 100 ms or more into a paused write are not handed the held-back connection when its place frees")
    func readsUnderCapPressureAreNotHandedTheHeldBackConnection() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: PoolSharingReviewTests.configuration(
                    host: server.host, port: server.port, minimumConnections: 2, maximumConnections: 2, cap: 2
                ),
                credentials: PoolSharingReviewTests.alice(password)
            )
            try await withRunningClient(client) { client in
                let key = uniqueKey("paused2")
                _ = try await client.send(RedisCommand("SET", .key(key), "before"), timeout: nil)
                await eventually("both connections are open") { client.connectionsByCredentialVersion.values.reduce(0, +) == 2 }
                try await server.admin("CLIENT", "PAUSE", "4000", "WRITE")
                let write = Task { try await client.send(RedisCommand("SET", .key(key), "after"), timeout: nil) }
                try await server.waitForBlockedClients(1)
                let clock = ContinuousClock()
                let blocked = clock.now
                let late = Locked<[String]>([])
                let served = Locked(0)
                await withTaskGroup(of: Void.self) { group in
                    for _ in 0..<6 {
                        group.addTask {
                            for _ in 0..<5000 where clock.now < blocked + .milliseconds(2500) {
                                let started = clock.now
                                do {
                                    _ = try await client.send(RedisCommand("GET", .key(key)), timeout: .seconds(1))
                                    served.withLock { $0 += 1 }
                                } catch {
                                    if started > blocked + .milliseconds(100), wasSentBehind(error) { late.withLock { $0.append("\(error)") } }
                                }
                            }
                        }
                    }
                }
                #expect(served.withLock { $0 } > 20)
                #expect(
                    late.withLock { $0 }.isEmpty,
                    "\(late.withLock { $0.count }) reads sent 100 ms or more into the pause failed behind the held-back write (served: \(served.withLock { $0 })): \(late.withLock { $0.first ?? "" })"
                )
                try await server.admin("CLIENT", "UNPAUSE")
                _ = try await write.value
            }
        }
    }

    // MARK: ReplyProgress through the real handler

    @Test("a command that timed out behind a paused write marks its connection held back until its dropped reply arrives, then no longer")
    func progressClearsAfterADroppedReplyArrives() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(
                configuration: .init(host: server.host, port: server.port, username: "alice", password: password, commandTimeout: .seconds(5))
            )
            defer { Task { await connection.close() } }
            let key = uniqueKey("progress")
            #expect(!connection.progress.isStalled(longerThan: .zero, now: .now() + .seconds(60)), "nothing is owed on a fresh connection")
            try await server.admin("CLIENT", "PAUSE", "5000", "WRITE")
            await #expect(throws: RedisError.self) {
                _ = try await connection.send(RedisCommand("SET", .key(key), "x"), timeout: .milliseconds(100))
            }
            #expect(connection.progress.isStalled(longerThan: .milliseconds(5), now: .now()), "the timed-out SET is still owed")
            try await server.admin("CLIENT", "UNPAUSE")
            await eventually("the dropped reply clears the stall", timeout: .seconds(5)) {
                !connection.progress.isStalled(longerThan: .zero, now: .now() + .seconds(60))
            }
            #expect(try await connection.send(RedisCommand("GET", .key(key))).string == "x")
            #expect(!connection.progress.isStalled(longerThan: .zero, now: .now() + .seconds(60)))
        }
    }

    @Test("a cancelled caller behind a paused write: the connection is held back until the reply arrives; a close clears it too")
    func progressAfterCancelAndClose() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let configuration = RedisConnectionConfiguration(
                host: server.host, port: server.port, username: "alice", password: password, commandTimeout: .seconds(5)
            )
            let connection = try await RedisConnection.connect(configuration: configuration)
            defer { Task { await connection.close() } }
            let key = uniqueKey("cancel")
            try await server.admin("CLIENT", "PAUSE", "5000", "WRITE")
            let task = Task { try await connection.send(RedisCommand("SET", .key(key), "y")) }
            try await server.waitForBlockedClients(1)
            task.cancel()
            _ = await task.result
            #expect(connection.progress.isStalled(longerThan: .milliseconds(5), now: .now() + .milliseconds(50)))
            try await server.admin("CLIENT", "UNPAUSE")
            await eventually("the cancelled caller's reply clears the stall", timeout: .seconds(5)) {
                !connection.progress.isStalled(longerThan: .zero, now: .now() + .seconds(60))
            }

            // A second connection closed with a reply owed is not held back any more.
            let other = try await RedisConnection.connect(configuration: configuration)
            try await server.admin("CLIENT", "PAUSE", "5000", "WRITE")
            let pending = Task { try await other.send(RedisCommand("SET", .key(key), "z")) }
            try await server.waitForBlockedClients(1)
            #expect(other.progress.isStalled(longerThan: .milliseconds(5), now: .now() + .milliseconds(50)))
            await other.close()
            _ = await pending.result
            await other.waitUntilClosed()
            #expect(!other.progress.isStalled(longerThan: .zero, now: .now() + .seconds(60)))
            try await server.admin("CLIENT", "UNPAUSE")
        }
    }

    // MARK: Pub/sub confirmations among ordinary commands

    @Test("subscribe-family commands mixed with ordinary ones in pipelines and single writes on one connection: every caller gets its own reply")
    func pubSubMixedWithOrdinaryCommands() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(
                configuration: .init(host: server.host, port: server.port, username: "alice", password: password, commandTimeout: .seconds(5))
            )
            defer { Task { await connection.close() } }
            let key = uniqueKey("mixed")
            _ = try await connection.send(RedisCommand("SET", .key(key), "v"))
            for round in 0..<5 {
                // Ordinary single writes first (the plain path), then a pipeline mixing both.
                #expect(try await connection.send(RedisCommand("GET", .key(key))).string == "v")
                let results = try await connection.pipeline([
                    RedisCommand("GET", .key(key)),
                    RedisCommand("SUBSCRIBE", "a\(round)", "b\(round)", "c\(round)"),
                    RedisCommand("PING", "p1"),
                    RedisCommand("UNSUBSCRIBE", "a\(round)"),
                    RedisCommand("PSUBSCRIBE", "p\(round)*"),
                    RedisCommand("PING", "p2"),
                    RedisCommand("UNSUBSCRIBE"),
                    RedisCommand("PUNSUBSCRIBE"),
                    RedisCommand("GET", .key(key)),
                    RedisCommand("SUBSCRIBE", "d\(round)"),
                    RedisCommand("RESET"),
                    RedisCommand("GET", .key(key)),
                ])
                #expect(results.count == 12)
                let values = results.map { try? $0.get() }
                #expect(values[0]?.string == "v")
                #expect(values[1]?.array?.count == 3, "SUBSCRIBE with 3 names: \(String(describing: values[1]))")
                #expect(values[2]?.array?.first?.string == "pong", "PING while subscribed: \(String(describing: values[2]))")
                #expect(values[3]?.array?.count == 1)
                #expect(values[4]?.array?.count == 1)
                #expect(values[5]?.array?.last?.string == "p2")
                #expect(values[6]?.array?.count == 2, "UNSUBSCRIBE of the 2 channels left: \(String(describing: values[6]))")
                #expect(values[7]?.array?.count == 1)
                #expect(values[8]?.string == "v", "GET after leaving subscribed mode: \(String(describing: values[8]))")
                #expect(values[9]?.array?.count == 1)
                #expect(values[10]?.string == "RESET")
                // RESET drops the authentication: alice's GET now answers NOAUTH, as its own reply.
                #expect((try? results[11].get()) == nil)
                try await connection.authenticate(as: RedisCredentials(username: "alice", password: password, version: "v1"), name: nil)
                #expect(try await connection.send(RedisCommand("GET", .key(key))).string == "v")
                #expect(try await connection.send(RedisCommand("PING", "single")).string == "single")
            }
        }
    }

    // MARK: Payloads of the allocation cuts

    @Test("one command value sent many times, concurrently, over a shared pool, and commands with many and empty arguments: the server sees exactly the bytes")
    func payloadsStayExact() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: PoolSharingReviewTests.configuration(host: server.host, port: server.port, minimumConnections: 2, maximumConnections: 2),
                credentials: PoolSharingReviewTests.alice(password)
            )
            try await withRunningClient(client) { client in
                let list = uniqueKey("many")
                // 5,000 arguments: far more than fits on the stack, so the temporary allocations go to the heap.
                let elements: [RedisArgument] = (0..<5000).map { .string(String($0 % 7 == 0 ? "" : "e\($0)")) }
                let push = RedisCommand("RPUSH", arguments: [.key(list)] + elements)
                #expect(try await client.send(push, timeout: nil).int == 5000)
                let range = try await client.send(RedisCommand("LRANGE", .key(list), "0", "-1"), timeout: nil).array ?? []
                #expect(range.count == 5000)
                #expect(range.enumerated().allSatisfy { $0.element.string == ($0.offset % 7 == 0 ? "" : "e\($0.offset)") })

                let counter = uniqueKey("counter")
                let increment = RedisCommand("INCR", .key(counter))
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<16 {
                        group.addTask {
                            for _ in 0..<50 { _ = try await client.send(increment, timeout: nil) }
                        }
                    }
                    try await group.waitForAll()
                }
                #expect(try await client.send(RedisCommand("GET", .key(counter)), timeout: nil).string == "800")
                // An empty-string only command and a binary argument.
                let binary = uniqueKey("binary")
                let bytes: [UInt8] = [0, 13, 10, 36, 42, 255]
                _ = try await client.send(RedisCommand("SET", .key(binary), .bytes(ByteBuffer(bytes: bytes))), timeout: nil)
                let back = try await client.send(RedisCommand("GET", .key(binary)), timeout: nil)
                #expect(back.bytes.map { Array($0.readableBytesView) } == bytes)
            }
        }
    }
}

/// Whether a read failed after it was written (it waited on a connection for a reply), rather than while
/// it waited for a place or a connection (`leaseTimeout`, or a deadline before anything was sent): only
/// the former can mean it queued behind a held-back command. On a loaded machine a 1 s wait for a place
/// can run out; that is not what these tests are about.
func wasSentBehind(_ error: any Error) -> Bool {
    guard let error = error as? RedisError else { return true }
    return error.code != .leaseTimeout && !error.commandWasNotSent
}
