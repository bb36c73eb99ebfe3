import Foundation
import Logging
import NIOCore
import RedisRotation
import RedisRotationTesting
import Testing

@Suite("Connection against a real redis-server", .timeLimit(.minutes(2)))
struct ConnectionTests {
    @Test("AUTH with an ACL user succeeds and CLIENT GETNAME shows the configured name")
    func authAndName() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(
                configuration: server.connectionConfiguration(username: "alice", password: password, name: "orders-api")
            )
            #expect(try await connection.clientGetName() == "orders-api")
            #expect(try await connection.send(RedisCommand("ACL", "WHOAMI"), as: String.self) == "alice")
            #expect(connection.serverVersion?.isEmpty == false)
            let serverID = try await connection.send(RedisCommand("CLIENT", "ID"), as: Int.self)
            #expect(connection.clientID == serverID)
            await connection.close()
            #expect(!connection.isActive)
        }
    }

    @Test("a wrong password gives authenticationFailed with WRONGPASS as data")
    func wrongPassword() async throws {
        let password = makePassword()
        let wrong = makePassword()
        try await withAliceServer(password: password) { server in
            let error = await #expect(throws: RedisError.self) {
                try await RedisConnection.connect(
                    configuration: server.connectionConfiguration(username: "alice", password: wrong)
                )
            }
            #expect(error?.code == .authenticationFailed)
            #expect(error?.serverErrorPrefix == "WRONGPASS")
            #expect(error.map { "\($0)" }?.contains(text(of: wrong)) == false)
        }
    }

    @Test("without credentials the server answers NOAUTH, at connect and to a command")
    func noAuth() async throws {
        try await withAliceServer(password: makePassword()) { server in
            // With a name to set, the handshake itself needs authentication.
            let error = await #expect(throws: RedisError.self) {
                try await RedisConnection.connect(
                    configuration: RedisConnectionConfiguration(host: server.host, port: server.port, name: "anonymous")
                )
            }
            #expect(error?.code == .authenticationFailed)
            #expect(error?.serverErrorPrefix == "NOAUTH")

            // With nothing to set, connecting sends HELLO 2 only; it fails the same way.
            let bare = await #expect(throws: RedisError.self) {
                try await RedisConnection.connect(
                    configuration: RedisConnectionConfiguration(host: server.host, port: server.port)
                )
            }
            #expect(bare?.serverErrorPrefix == "NOAUTH")
        }
    }

    @Test("a command the user may not run gives NOPERM as data; the connection stays usable")
    func noPermission() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let admin = try await server.adminConnection()
            try await admin.send(RedisCommand("ACL", "SETUSER", "alice", "-get"))
            await admin.close()
            let connection = try await RedisConnection.connect(
                configuration: server.connectionConfiguration(username: "alice", password: password)
            )
            let error = await #expect(throws: RedisError.self) { try await connection.get("anything") }
            #expect(error?.code == .serverError)
            #expect(error?.serverErrorPrefix == "NOPERM")
            #expect(try await connection.ping() == "PONG")
            await connection.close()
        }
    }

    @Test("a 1 MiB value round-trips, and so does every byte value")
    func largeAndBinaryValues() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(
                configuration: server.connectionConfiguration(username: "alice", password: password)
            )
            var generator = SystemRandomNumberGenerator()
            let large = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let key = uniqueKey("large")
            try await connection.set(key, to: .bytes(large))
            let readBack = try await connection.get(key)
            #expect(readBack.map { Array($0.readableBytesView) } == large)
            #expect(try await connection.send(RedisCommand("STRLEN", key.argumentForTests), as: Int.self) == 1 << 20)

            let everyByte = Array(UInt8.min...UInt8.max)
            let binaryKey = RedisKey(ByteBuffer(bytes: everyByte))
            try await connection.set(binaryKey, to: .bytes(everyByte))
            #expect(try await connection.get(binaryKey).map { Array($0.readableBytesView) } == everyByte)
            await connection.close()
        }
    }

    @Test("10,000 pipelined commands from 50 concurrent tasks each get their own reply")
    func concurrentPipelining() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(
                configuration: server.connectionConfiguration(username: "alice", password: password)
            )
            let mismatches = try await withThrowingTaskGroup(of: Int.self) { tasks in
                for task in 0..<50 {
                    tasks.addTask {
                        // Each task issues its 200 commands without waiting for one another.
                        try await withThrowingTaskGroup(of: Bool.self) { commands in
                            for index in 0..<200 {
                                commands.addTask {
                                    let token = "task-\(task)-command-\(index)"
                                    let reply = try await connection.send(RedisCommand("ECHO", .string(token)), as: String.self)
                                    return reply == token
                                }
                            }
                            var wrong = 0
                            for try await matched in commands where !matched { wrong += 1 }
                            return wrong
                        }
                    }
                }
                return try await tasks.reduce(0, +)
            }
            #expect(mismatches == 0)

            // And through the explicit pipeline call: one write, results in order.
            let commands = (0..<1000).map { RedisCommand("ECHO", .string("p\($0)")) }
            let results = try await connection.pipeline(commands)
            #expect(try results.map { try $0.get().string } == (0..<1000).map { "p\($0)" })
            await connection.close()
        }
    }

    @Test("one error in a pipeline fails only its own result")
    func pipelineWithError() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(
                configuration: server.connectionConfiguration(username: "alice", password: password)
            )
            let key = uniqueKey("pipeline")
            let results = try await connection.pipeline([
                RedisCommand("SET", key.argumentForTests, "not a number"),
                RedisCommand("INCR", key.argumentForTests),
                RedisCommand("GET", key.argumentForTests),
            ])
            #expect(try results[0].get().string == "OK")
            #expect(throws: RedisError.self) { try results[1].get() }
            if case .failure(let error) = results[1] {
                #expect(error.code == .serverError)
                #expect(error.serverErrorPrefix == "ERR")
            }
            #expect(try results[2].get().string == "not a number")
            await connection.close()
        }
    }

    @Test("SIGKILL of the server fails every outstanding command at once, without waiting for deadlines")
    func serverKilled() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            var configuration = server.connectionConfiguration(username: "alice", password: password)
            // Far longer than the test may take: failures must come from the closed socket.
            configuration.commandTimeout = .seconds(600)
            let connection = try await RedisConnection.connect(configuration: configuration)
            let started = ContinuousClock.now
            let outcomes = try await withThrowingTaskGroup(of: RedisError?.self) { group in
                for task in 0..<50 {
                    group.addTask {
                        for index in 0..<100_000 {
                            do {
                                _ = try await connection.send(RedisCommand("INCR", .string("counter:\(task)")))
                                if task == 0 && index == 200 { server.kill(signal: SIGKILL) }
                            } catch let error as RedisError {
                                return error
                            }
                        }
                        return nil
                    }
                }
                var errors: [RedisError?] = []
                for try await outcome in group { errors.append(outcome) }
                return errors
            }
            #expect(outcomes.count == 50)
            #expect(outcomes.allSatisfy { $0?.code == .connectionClosed })
            #expect(ContinuousClock.now - started < .seconds(60))
            #expect(!connection.isActive)
            // Later commands fail immediately too.
            let later = await #expect(throws: RedisError.self) { try await connection.ping() }
            #expect(later?.code == .connectionClosed)
        }
    }

    @Test("a server that stops answering fails commands at their deadline and closes the connection")
    func serverStopsAnswering() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            var configuration = server.connectionConfiguration(username: "alice", password: password)
            configuration.commandTimeout = .milliseconds(300)
            let connection = try await RedisConnection.connect(configuration: configuration)
            // A generous deadline while the server still answers (a busy test machine is slow).
            _ = try await connection.send(RedisCommand("PING"), timeout: .seconds(30))
            server.kill(signal: SIGSTOP)
            defer { server.kill(signal: SIGCONT) }
            let errors = await withTaskGroup(of: RedisError?.self) { group in
                for _ in 0..<10 {
                    group.addTask {
                        do {
                            try await connection.ping()
                            return nil
                        } catch {
                            return error as? RedisError
                        }
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            // The oldest command times out; the connection then closes under the others, whose deadlines
            // had not quite passed yet.
            #expect(errors.contains { $0?.code == .commandTimeout })
            #expect(errors.allSatisfy { $0?.code == .commandTimeout || $0?.code == .connectionClosed })
            await connection.waitUntilClosed()
            #expect(!connection.isActive)
        }
    }

    @Test("a handshake the server never answers fails with handshakeTimeout")
    func handshakeTimeout() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            // A stopped server still completes TCP connects from its listen backlog, then never answers.
            server.kill(signal: SIGSTOP)
            defer { server.kill(signal: SIGCONT) }
            var configuration = server.connectionConfiguration(username: "alice", password: password)
            configuration.handshakeTimeout = .milliseconds(300)
            let error = await #expect(throws: RedisError.self) {
                try await RedisConnection.connect(configuration: configuration)
            }
            #expect(error?.code == .handshakeTimeout)
        }
    }

    @Test("cancelling a connect whose handshake the server never answers fails with CancellationError, not at the deadline")
    func cancelledConnect() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            // A stopped server completes the TCP connect from its backlog and never answers HELLO.
            server.kill(signal: SIGSTOP)
            defer { server.kill(signal: SIGCONT) }
            var configuration = server.connectionConfiguration(username: "alice", password: password)
            // Far beyond the suite's time limit: only the cancellation can end this connect in time.
            configuration.handshakeTimeout = .seconds(600)
            let connect = Task { try await RedisConnection.connect(configuration: configuration) }
            connect.cancel()
            await #expect(throws: CancellationError.self) { try await connect.value }
        }
    }

    @Test("a connect from a task already cancelled opens nothing, 20 times, even when the server answers at once")
    func connectFromCancelledTask() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let configuration = server.connectionConfiguration(username: "alice", password: password, name: "cancelled-before")
            for _ in 0..<20 {
                let connect = Task {
                    withUnsafeCurrentTask { $0?.cancel() }
                    return try await RedisConnection.connect(configuration: configuration)
                }
                await #expect(throws: CancellationError.self) { try await connect.value }
            }
            let admin = try await RedisConnection.connect(configuration: server.adminConnectionConfiguration())
            let list = try await admin.send(RedisCommand("CLIENT", "LIST"), as: String.self)
            #expect(!list.contains("cancelled-before"), "\(list)")
            await admin.close()
        }
    }

    @Test("a refused connection fails with connectionFailed")
    func refused() async throws {
        let port = try await RedisServerProcess.withServer { server in server.port }
        // The server is gone: nothing listens on its port any more.
        let error = await #expect(throws: RedisError.self) {
            try await RedisConnection.connect(configuration: RedisConnectionConfiguration(port: port))
        }
        #expect(error?.code == .connectionFailed)
    }

    @Test("a reply over the configured limit is a protocol error that closes the connection")
    func replyOverLimit() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let key = uniqueKey("big")
            let admin = try await server.adminConnection()
            try await admin.set(key, to: .bytes([UInt8](repeating: 7, count: 4096)))
            await admin.close()

            var configuration = server.connectionConfiguration(username: "alice", password: password)
            configuration.readerLimits = RESPReaderLimits(maximumBulkLength: 1024)
            let connection = try await RedisConnection.connect(configuration: configuration)
            let error = await #expect(throws: RedisError.self) { try await connection.get(key) }
            #expect(error?.code == .protocolError)
            await connection.waitUntilClosed()
            #expect(!connection.isActive)
        }
    }

    @Test("cancelling a waiting command returns at once; the connection stays in step")
    func cancellation() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(
                configuration: server.connectionConfiguration(username: "alice", password: password)
            )
            let key = uniqueKey("cancelled")
            try await connection.set(key, to: "value")
            // With the server stopped, the GET is written but cannot be answered before it is cancelled.
            server.kill(signal: SIGSTOP)
            let waiting = Task { try await connection.get(key) }
            let written = Task { try await connection.send(RedisCommand("ECHO", "after")) }
            waiting.cancel()
            await #expect(throws: CancellationError.self) { try await waiting.value }
            server.kill(signal: SIGCONT)
            // The GET's reply is dropped; the ECHO written after it gets its own.
            #expect(try await written.value.string == "after")
            #expect(try await connection.ping() == "PONG")
            await connection.close()
        }
    }

    @Test("cancelling a blocking command closes the connection, so the element pushed later stays in the list")
    func blockingCancellation() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(
                configuration: server.connectionConfiguration(username: "alice", password: password)
            )
            let key = uniqueKey("list")
            let blocked = Task {
                // A deadline far beyond the test's own: only the cancellation can end it.
                try await connection.send(RedisCommand("BLPOP", key.argumentForTests, "0"), timeout: .seconds(300))
            }
            try await server.waitForBlockedClients(1)
            blocked.cancel()
            await #expect(throws: CancellationError.self) { try await blocked.value }
            await connection.waitUntilClosed()
            try await server.waitForBlockedClients(0)
            try await server.admin("LPUSH", .key(key), "wake")
            let admin = try await server.adminConnection()
            #expect(try await admin.send(RedisCommand("LLEN", .key(key))).int == 1)
            await admin.close()
        }
    }

    @Test("SELECT picks the configured database")
    func database() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            var configuration = server.connectionConfiguration(username: "alice", password: password)
            configuration.database = 3
            let connection = try await RedisConnection.connect(configuration: configuration)
            let key = uniqueKey("db")
            try await connection.set(key, to: "in three")
            await connection.close()

            let admin = try await server.adminConnection()
            #expect(try await admin.get(key) == nil)
            try await admin.send(RedisCommand("SELECT", "3"))
            #expect(try await admin.get(key, as: String.self) == "in three")
            await admin.close()
        }
    }

    @Test("closing fails outstanding commands with connectionClosed")
    func closeFailsOutstanding() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(
                configuration: server.connectionConfiguration(username: "alice", password: password)
            )
            let key = uniqueKey("blocked")
            let blocked = Task { try await connection.send(RedisCommand("BLPOP", key.argumentForTests, "0")) }
            try await server.waitForBlockedClients(1)
            await connection.close()
            let error = await #expect(throws: RedisError.self) { try await blocked.value }
            #expect(error?.code == .connectionClosed)
        }
    }
}

extension RedisKey {
    /// The key as a command argument, for tests that build commands by hand.
    var argumentForTests: RedisArgument {
        .key(self)
    }
}
