import Foundation
import NIOCore
import NIOPosix
import RedisRotation
import RedisRotationTesting
import Testing

/// Review of replies reaching callers through reply boxes: cancellation at every point of a command's
/// way, connections that close (server killed, `CLIENT KILL`, event loop shut down) under many waiting
/// commands, one short deadline among many waiters, and many concurrent callers on one connection.
@Suite("Reply boxes against a real redis-server", .timeLimit(.minutes(3)))
struct ReplyBoxIntegrationReviewTests {
    /// The outcome of `operation`, or `nil` when it has not finished within `limit` (it is then left
    /// running, a hang being what the caller reports, or cancelled when `cancelling`).
    static func outcome<T: Sendable>(
        within limit: Duration,
        cancelling: Bool = false,
        _ operation: @escaping @Sendable () async throws -> T
    ) async -> Result<T, any Error>? {
        let done = Locked<Result<T, any Error>?>(nil)
        let task = Task { try await operation() }
        Task { let result = await task.result; done.withLock { $0 = result } }
        let clock = ContinuousClock()
        let end = clock.now + limit
        while clock.now < end {
            if let result = done.withLock({ $0 }) { return result }
            try? await Task.sleep(for: .milliseconds(5))
        }
        if cancelling { task.cancel() }
        return done.withLock { $0 }
    }

    static func connect(_ server: RedisServerProcess, password: RedisSecret, name: String? = nil, commandTimeout: Duration = .seconds(60), group: (any EventLoopGroup)? = nil) async throws -> RedisConnection {
        var configuration = server.connectionConfiguration(username: "alice", password: password, name: name)
        configuration.commandTimeout = commandTimeout
        if let group { return try await RedisConnection.connect(configuration: configuration, eventLoopGroup: group) }
        return try await RedisConnection.connect(configuration: configuration)
    }

    static func echo(_ connection: RedisConnection, _ text: String, timeout: Duration? = nil) async throws -> String? {
        try await connection.send(RedisCommand("ECHO", .string(text)), timeout: timeout).string
    }

    /// Every caller gets its own value back, and the connection is still in step.
    static func expectInStep(_ connection: RedisConnection, label: String) async throws {
        for index in 0..<20 {
            #expect(try await Self.echo(connection, "\(label)-after-\(index)") == "\(label)-after-\(index)")
        }
    }

    @Test("a GET cancelled at every point of its way (before the loop enqueues it, in flight, after its reply): CancellationError or its own reply, 400 times")
    func cancelledAtEveryPoint() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await Self.connect(server, password: password)
            let counts = Locked((cancelled: 0, answered: 0))
            for round in 0..<400 {
                let value = "v\(round)"
                let task = Task { try await Self.echo(connection, value) }
                // 0 to 7 yields, sometimes a short sleep: the cancellation lands at different points.
                for _ in 0..<(round % 8) { await Task.yield() }
                if round % 5 == 4 { try? await Task.sleep(for: .microseconds(20 * (round % 13))) }
                task.cancel()
                guard let result = await Self.outcome(within: .seconds(10), { try await task.value }) else {
                    Issue.record("round \(round): the cancelled command never returned")
                    return
                }
                switch result {
                case .success(let reply):
                    #expect(reply == value, "round \(round)")
                    counts.withLock { $0.answered += 1 }
                case .failure(let error):
                    #expect(error is CancellationError, "round \(round): \(error)")
                    counts.withLock { $0.cancelled += 1 }
                }
            }
            #expect(counts.withLock { $0.cancelled + $0.answered } == 400)
            try await Self.expectInStep(connection, label: "cancel")
            #expect(connection.isActive)
            await connection.close()
        }
    }

    @Test("500 concurrent callers, every other cancelled at a different moment: the rest get their own values")
    func concurrentCancellations() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await Self.connect(server, password: password)
            let tasks = (0..<500).map { index in
                Task { try await Self.echo(connection, "c\(index)") }
            }
            for (index, task) in tasks.enumerated() where index % 2 == 1 {
                if index % 10 == 1 { await Task.yield() }
                task.cancel()
            }
            for (index, task) in tasks.enumerated() {
                guard let result = await Self.outcome(within: .seconds(20), { try await task.value }) else {
                    Issue.record("caller \(index) never returned")
                    return
                }
                switch result {
                case .success(let reply): #expect(reply == "c\(index)")
                case .failure(let error): #expect(index % 2 == 1 && error is CancellationError, "caller \(index): \(error)")
                }
            }
            try await Self.expectInStep(connection, label: "concurrent")
            await connection.close()
        }
    }

    /// Starts `count` single commands and `pipelines` pipelines of 20, all waiting on a stopped server.
    static func startWaiters(_ connection: RedisConnection, count: Int, pipelines: Int) -> [Task<Void, any Error>] {
        var tasks: [Task<Void, any Error>] = []
        for index in 0..<count {
            tasks.append(Task { _ = try await Self.echo(connection, "w\(index)", timeout: .seconds(60)) })
        }
        for index in 0..<pipelines {
            tasks.append(Task {
                let results = try await connection.pipeline((0..<20).map { RedisCommand("ECHO", .string("p\(index)-\($0)")) }, timeout: .seconds(60))
                for result in results { _ = try result.get() }
            })
        }
        return tasks
    }

    static func expectAllClosed(_ tasks: [Task<Void, any Error>], label: String) async {
        for (index, task) in tasks.enumerated() {
            guard let result = await Self.outcome(within: .seconds(20), { try await task.value }) else {
                Issue.record("\(label): waiter \(index) never returned")
                return
            }
            switch result {
            case .success: Issue.record("\(label): waiter \(index) got a reply from a dead connection")
            case .failure(let error):
                #expect((error as? RedisError)?.code == .connectionClosed, "\(label): waiter \(index): \(error)")
            }
        }
    }

    @Test("the server killed with SIGKILL under 400 waiting commands and 20 pipelines: every waiter fails with connectionClosed")
    func serverKilled() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await Self.connect(server, password: password)
            #expect(try await Self.echo(connection, "before") == "before")
            server.kill(signal: SIGSTOP)
            let tasks = Self.startWaiters(connection, count: 400, pipelines: 20)
            // Give the loop a moment to write them (bounded; not required for the outcome).
            for _ in 0..<50 { await Task.yield() }
            server.kill(signal: SIGKILL)
            #expect(await server.waitForExit(timeout: .seconds(10)))
            await Self.expectAllClosed(tasks, label: "SIGKILL")
            await connection.waitUntilClosed()
            let after = await Self.outcome(within: .seconds(10)) { try await Self.echo(connection, "after") }
            #expect((try? after?.get()) == nil)
        }
    }

    @Test("CLIENT KILL under a blocked BLPOP and 300 commands queued behind it: every waiter fails with connectionClosed")
    func clientKilled() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await Self.connect(server, password: password, name: "replybox-victim")
            let id = try #require(connection.clientID)
            let key = uniqueKey("replybox-block")
            let blocked = Task<Void, any Error> {
                _ = try await connection.send(RedisCommand("BLPOP", .key(key), "0"), timeout: .seconds(60))
            }
            try await server.waitForBlockedClients(1)
            let tasks = Self.startWaiters(connection, count: 300, pipelines: 10)
            for _ in 0..<50 { await Task.yield() }
            try await server.admin("CLIENT", "KILL", "ID", .integer(Int64(id)))
            await Self.expectAllClosed([blocked] + tasks, label: "CLIENT KILL")
        }
    }

    @Test("one caller's short deadline among 200 waiting callers: it alone fails; its late reply is dropped; the others get their own values")
    func oneTimesOut() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await Self.connect(server, password: password, commandTimeout: .seconds(60))
            server.kill(signal: SIGSTOP)
            var tasks: [Task<String?, any Error>] = []
            for index in 0..<100 { tasks.append(Task { try await Self.echo(connection, "a\(index)", timeout: .seconds(60)) }) }
            let short = Task { try await Self.echo(connection, "short", timeout: .milliseconds(300)) }
            for index in 100..<200 { tasks.append(Task { try await Self.echo(connection, "a\(index)", timeout: .seconds(60)) }) }
            let pipeline = Task {
                try await connection.pipeline((0..<50).map { RedisCommand("ECHO", .string("pl\($0)")) }, timeout: .seconds(60))
            }
            let shortOutcome = await Self.outcome(within: .seconds(20)) { try await short.value }
            server.kill(signal: SIGCONT)
            switch shortOutcome {
            case nil: Issue.record("the short deadline never fired")
            case .success?: Issue.record("a stopped server answered")
            case .failure(let error)?: #expect((error as? RedisError)?.code == .commandTimeout, "\(error)")
            }
            for (index, task) in tasks.enumerated() {
                let result = await Self.outcome(within: .seconds(20)) { try await task.value }
                #expect((try? result?.get()) == "a\(index)", "caller \(index): \(String(describing: result))")
            }
            let results = try #require(await Self.outcome(within: .seconds(20)) { try await pipeline.value }).get()
            #expect(results.map { try? $0.get().string } == (0..<50).map { "pl\($0)" })
            try await Self.expectInStep(connection, label: "timeout")
            await connection.close()
        }
    }

    @Test("a whole pipeline of 100 times out on a stopped server; after it resumes, the late replies are dropped")
    func wholePipelineTimesOut() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await Self.connect(server, password: password, commandTimeout: .seconds(60))
            server.kill(signal: SIGSTOP)
            let pipeline = Task {
                try await connection.pipeline((0..<100).map { RedisCommand("ECHO", .string("late\($0)")) }, timeout: .milliseconds(200))
            }
            let outcome = await Self.outcome(within: .seconds(20)) { try await pipeline.value }
            server.kill(signal: SIGCONT)
            let results = try #require(outcome).get()
            #expect(results.count == 100)
            for result in results {
                guard case .failure(let error) = result else {
                    Issue.record("a stopped server answered: \(result)")
                    continue
                }
                #expect(error.code == .commandTimeout)
            }
            try await Self.expectInStep(connection, label: "pipeline-timeout")
            await connection.close()
        }
    }

    @Test("the connection's event loop shut down under waiting commands: they fail; a command sent afterwards fails too, not hangs")
    func eventLoopShutDown() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let connection = try await Self.connect(server, password: password, group: group)
            #expect(try await Self.echo(connection, "before") == "before")
            server.kill(signal: SIGSTOP)
            let tasks = Self.startWaiters(connection, count: 50, pipelines: 2)
            // Wait (bounded) until the loop has written them: the server's input queue is not readable
            // while it is stopped, so give the loop a few turns instead.
            for _ in 0..<50 { await Task.yield() }
            try await group.shutdownGracefully()
            server.kill(signal: SIGCONT)
            // A waiter whose task reaches `exchange` just as the loop stops taking tasks has its enqueue
            // dropped by NIO; the dropped task's ticket fails it (it used to wait forever).
            await Self.expectAllClosed(tasks, label: "loop shut down")
            #expect(!connection.isActive)
            // A command sent afterwards fails at once: the connection's close reason is read off the
            // loop (a shut-down loop drops what is scheduled on it, so the write would never be answered).
            let sentAfter = Task { try await Self.echo(connection, "after") }
            let after = await Self.outcome(within: .seconds(10)) { try await sentAfter.value }
            switch after {
            case nil:
                Issue.record("a command on a connection whose event loop has shut down never returns")
                sentAfter.cancel()
            case .success?: Issue.record("a command on a connection whose event loop has shut down was answered")
            case .failure(let error)?:
                #expect((error as? RedisError)?.code == .connectionClosed, "\(error)")
                #expect((error as? RedisError)?.commandWasNotSent == true, "\(error)")
            }
        }
    }

    @Test("5000 concurrent callers and 200 pipelines on one connection: every caller gets its own value")
    func manyConcurrentCallers() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await Self.connect(server, password: password)
            let mismatches = Locked(0)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<5000 {
                    group.addTask {
                        if try await Self.echo(connection, "m\(index)") != "m\(index)" { mismatches.withLock { $0 += 1 } }
                    }
                }
                for index in 0..<200 {
                    group.addTask {
                        let expected = (0..<(1 + index % 7)).map { "q\(index)-\($0)" }
                        let results = try await connection.pipeline(expected.map { RedisCommand("ECHO", .string($0)) })
                        if results.map({ try? $0.get().string }) != expected { mismatches.withLock { $0 += 1 } }
                    }
                }
                try await group.waitForAll()
            }
            #expect(mismatches.withLock { $0 } == 0)
            try await Self.expectInStep(connection, label: "many")
            await connection.close()
        }
    }
}
