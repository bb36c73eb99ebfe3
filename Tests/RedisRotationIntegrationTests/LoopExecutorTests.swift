import Foundation
import NIOCore
import NIOPosix
import RedisRotation
import RedisRotationTesting
import Testing

/// A task that prefers a connection's task executor, against a real server: it runs on the connection's
/// event loop between its awaits, gets the same replies, cancellation and close behaviour as anywhere
/// else, and carries on elsewhere once the connection or its event loop is gone.
@Suite("A connection's task executor against a real redis-server", .timeLimit(.minutes(3)))
struct LoopExecutorTests {
    func configuration(_ server: RedisServerProcess, _ password: RedisSecret) -> RedisConnectionConfiguration {
        RedisConnectionConfiguration(host: server.host, port: server.port, username: "alice", password: password)
    }

    @Test("300 sequential commands (SET, GET, INCR), a pipeline and a transaction from a task preferring the connection's executor: every await resumes on the connection's event loop, every reply is right")
    func sequentialCommandsOnTheLoop() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(configuration: self.configuration(server, password))
            let key = uniqueKey("onloop")
            let counter = uniqueKey("onloop-counter")
            let offLoop = try await withTaskExecutorPreference(connection.taskExecutor) { () async throws -> Int in
                var offLoop = 0
                for index in 0..<100 {
                    try await connection.set(key, to: "value-\(index)")
                    if !connection.eventLoop.inEventLoop { offLoop += 1 }
                    #expect(try await connection.get(key, as: String.self) == "value-\(index)")
                    if !connection.eventLoop.inEventLoop { offLoop += 1 }
                    #expect(try await connection.incr(counter) == index + 1)
                    if !connection.eventLoop.inEventLoop { offLoop += 1 }
                }
                let results = try await connection.pipeline([
                    RedisCommand("INCR", .key(counter)), RedisCommand("GET", .key(key)),
                ])
                #expect(results.count == 2)
                if !connection.eventLoop.inEventLoop { offLoop += 1 }
                _ = try await connection.send(RedisCommand("MULTI"))
                _ = try await connection.send(RedisCommand("INCR", .key(counter)))
                let exec = try await connection.send(RedisCommand("EXEC"))
                #expect(exec.array?.first?.int == 102)
                if !connection.eventLoop.inEventLoop { offLoop += 1 }
                return offLoop
            }
            #expect(offLoop == 0, "\(offLoop) awaits resumed off the connection's event loop")
            #expect(connection.isActive)
            await connection.close()
        }
    }

    @Test("BLPOP 0 from a task on the connection's loop, cancelled while blocked on the server: its caller returns, and an element pushed afterwards is not taken")
    func cancelledBlockingPopOnTheLoop() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(configuration: self.configuration(server, password))
            let list = uniqueKey("onloop-list")
            let executor = connection.taskExecutor
            let pop = Task(executorPreference: executor) {
                try await connection.send(RedisCommand("BLPOP", .key(list), "0"))
            }
            try await server.waitForBlockedClients(1)
            pop.cancel()
            switch await pop.result {
            case .success(let value):
                Issue.record("BLPOP on an empty list answered \(value)")
            case .failure(let error):
                let closed = (error as? RedisError)?.code == .connectionClosed
                #expect(error is CancellationError || closed, "\(error)")
            }
            try await server.waitForBlockedClients(0)
            _ = try await server.admin("RPUSH", .key(list), "element")
            #expect(try await server.admin("LLEN", .key(list)) == .integer(1))
            await connection.close()
        }
    }

    @Test("a connection killed by the server while a task on its loop waits for a reply: the command fails with connectionClosed, and the task carries on off the loop (a new connection, commands, sleeps)")
    func connectionKilledUnderTheTask() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(configuration: self.configuration(server, password))
            let id = try #require(connection.clientID)
            let list = uniqueKey("onloop-killed")
            let task = Task(executorPreference: connection.taskExecutor) { () async throws -> (String, Bool, Bool) in
                let outcome: String
                do {
                    _ = try await connection.send(RedisCommand("BLPOP", .key(list), "0"))
                    outcome = "answered"
                } catch let error as RedisError {
                    outcome = "\(error.code)"
                }
                try await Task.sleep(for: .milliseconds(10))
                let another = try await RedisConnection.connect(configuration: self.configuration(server, password))
                let pong = try await another.send(RedisCommand("PING"))
                await another.close()
                return (outcome, pong.string == "PONG", connection.eventLoop.inEventLoop)
            }
            try await server.waitForBlockedClients(1)
            _ = try await server.admin("CLIENT", "KILL", "ID", .string("\(id)"))
            let (outcome, ponged, onLoop) = try await task.value
            #expect(outcome == "\(RedisError.Code.connectionClosed)")
            #expect(ponged)
            #expect(!onLoop, "a task whose connection closed still ran on its event loop")
        }
    }

    @Test("the connection's event loop group shut down while a task prefers its executor and waits: the task wakes and finishes (on the global executor) instead of staying suspended for ever")
    func eventLoopShutDownUnderTheTask() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let connection = try await RedisConnection.connect(configuration: self.configuration(server, password), eventLoopGroup: group)
            let started = AsyncStream<Void>.makeStream()
            // Woken only once the group has shut down: no margin of time for the shutdown to fit in.
            let shutDown = AsyncStream<Void>.makeStream()
            let task = Task(executorPreference: connection.taskExecutor) { () async throws -> Bool in
                _ = try await connection.send(RedisCommand("PING"))
                #expect(connection.eventLoop.inEventLoop)
                started.continuation.yield()
                var wake = shutDown.stream.makeAsyncIterator()
                await wake.next()
                #expect(!connection.eventLoop.inEventLoop)
                let afterShutdown: Bool
                do {
                    _ = try await connection.send(RedisCommand("PING"))
                    afterShutdown = false
                } catch let error as RedisError {
                    afterShutdown = error.code == .connectionClosed
                }
                return afterShutdown
            }
            var iterator = started.stream.makeAsyncIterator()
            await iterator.next()
            try await group.shutdownGracefully()
            shutDown.continuation.yield()
            #expect(try await task.value, "a PING after the loop shut down did not fail with connectionClosed")
        }
    }

    @Test("a pooled connection used from a task on its event loop (withConnection, a transaction inside): the awaits stay on the loop, and the connection goes back to the pool clean")
    func pooledConnectionOnItsLoop() async throws {
        try await withOneConnectionClient(name: "onloop") { _, client in
            let key = uniqueKey("onloop-pool")
            let (exec, onLoop) = try await client.withConnection { connection in
                try await withTaskExecutorPreference(connection.taskExecutor) {
                    _ = try await connection.send(RedisCommand("MULTI"))
                    _ = try await connection.send(RedisCommand("INCR", .key(key)))
                    let exec = try await connection.send(RedisCommand("EXEC"))
                    return (exec, connection.eventLoop.inEventLoop)
                }
            }
            #expect(exec.array?.first?.int == 1)
            #expect(onLoop)
            // The one pooled connection came back clean and serves the pool.
            #expect(try await client.incr(key) == 2)
            let id = try await client.withConnection { connection in connection.id }
            #expect(try await client.withConnection { $0.isInTransaction } == false)
            #expect(try await client.withConnection { $0.id } == id)
        }
    }

    @Test("a task on a pooled connection's event loop cancelled inside withConnection with a MULTI open: the queued INCR never runs, and the connection comes back out of the transaction")
    func cancelledTransactionOnItsLoop() async throws {
        try await withOneConnectionClient(name: "onloop-cancel") { (_, client) async throws in
            let key = uniqueKey("onloop-cancelled")
            let queued = AsyncStream<Int>.makeStream()
            let task = Task {
                try await client.withConnection { connection in
                    try await withTaskExecutorPreference(connection.taskExecutor) {
                        _ = try await connection.send(RedisCommand("MULTI"))
                        _ = try await connection.send(RedisCommand("INCR", .key(key)))
                        queued.continuation.yield(connection.id)
                        // Cancelled here, on the loop, with the transaction open.
                        try await Task.sleep(for: .seconds(60))
                    }
                }
            }
            var iterator = queued.stream.makeAsyncIterator()
            let id = await iterator.next()
            task.cancel()
            await #expect(throws: CancellationError.self) { try await task.value }
            #expect(try await client.withConnection { $0.isInTransaction } == false)
            #expect(try await client.withConnection { $0.id } == id)
            #expect(try await client.get(key) == nil, "the INCR queued in the abandoned MULTI ran")
        }
    }
}
