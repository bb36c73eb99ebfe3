import Foundation
import NIOCore
import RedisRotation
import RedisRotationTesting
import Testing

/// Hostile review of the outbound buffer against a real redis-server: short commands (copied into the
/// handler's one buffer per turn), long ones (their own buffer), pipelines, transactions, pub/sub and
/// re-authentications mixed on one connection, over TCP and TLS; a slow reader; close, kill and
/// cancel amid unflushed commands. Every value is unique, so a reply given to the wrong caller shows.
@Suite("Outbound buffer review against a real redis-server", .timeLimit(.minutes(3)))
struct OutboundBufferIntegrationReviewTests {
    /// A value of `size` bytes unique to `tag` (binary: every byte value appears).
    static func value(_ tag: Int, size: Int) -> [UInt8] {
        var bytes = Array("\(tag):".utf8)
        var state = UInt64(truncatingIfNeeded: tag) &* 0x9E37_79B9_7F4A_7C15 | 1
        while bytes.count < size {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            bytes.append(UInt8(truncatingIfNeeded: state))
        }
        return Array(bytes.prefix(max(size, 0)))
    }

    /// The result of `body`, or `nil` when it does not finish within `limit`.
    static func outcome<T: Sendable>(within limit: Duration, _ body: @escaping @Sendable () async throws -> T) async -> Result<T, any Error>? {
        await withTaskGroup(of: Result<T, any Error>?.self) { group in
            group.addTask {
                do { return .success(try await body()) } catch { return .failure(error) }
            }
            group.addTask {
                try? await Task.sleep(for: limit)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    static func bytes(_ value: RESPValue) -> [UInt8]? {
        value.bytes.map { Array($0.readableBytesView) }
    }

    /// One caller's work on a shared connection; `nil` when every reply was its own, else what was wrong.
    static func mixedCaller(_ connection: RedisConnection, index: Int, prefix: String, credentials: RedisCredentials) async throws -> String? {
        let keyString = "\(prefix):\(index)"
        let key = RedisKey(keyString)
        switch index % 8 {
        case 0:
            // Re-authentication (sensitive, flushed at once) amid everyone's short commands.
            try await connection.authenticate(as: credentials, name: "outbound-\(index)")
            return nil
        case 1:
            // A pipeline of short and long commands: one buffer of its own.
            let value = Self.value(index, size: 300 + index)
            let replies = try await connection.pipeline([
                RedisCommand("SET", .key(key), .bytes(value)), RedisCommand("GET", .key(key)),
                RedisCommand("ECHO", .bytes(Self.value(index, size: 5))), RedisCommand("STRLEN", .key(key)),
            ])
            let ok = try replies[0].get().string == "OK" && Self.bytes(try replies[1].get()) == value
                && Self.bytes(try replies[2].get()) == Self.value(index, size: 5) && (try replies[3].get().int) == value.count
            return ok ? nil : "pipeline \(index)"
        case 2:
            // SETs of exactly 255, 256 and 257 bytes on the wire (inline, inline, own buffer).
            let keyBytes = Array(keyString.utf8)
            let lengthOfKeyPart = 1 + String(keyBytes.count).utf8.count + 2 + keyBytes.count + 2
            for wire in [255, 256, 257] {
                // `*3\r\n$3\r\nSET\r\n` (13) + key part + `$<n>\r\n<n>\r\n`.
                var size = wire - 13 - lengthOfKeyPart - 5
                if String(size).utf8.count != 1 { size -= String(size).utf8.count - 1 }
                while 13 + lengthOfKeyPart + 1 + String(size).utf8.count + 2 + size + 2 > wire { size -= 1 }
                let value = Self.value(index &* 1000 &+ wire, size: size)
                let reply = try await connection.send(RedisCommand("SET", .key(key), .bytes(value)))
                let got = try await connection.send(RedisCommand("GET", .key(key)))
                if reply.string != "OK" || Self.bytes(got) != value { return "boundary \(wire) of \(index)" }
            }
            return nil
        case 3:
            // Empty and binary arguments.
            let empty = try await connection.send(RedisCommand("ECHO", .bytes([])))
            let binary = Self.value(index, size: 64) + [0, 13, 10, 36, 42]
            let echoed = try await connection.send(RedisCommand("ECHO", .bytes(binary)))
            return Self.bytes(empty) == [] && Self.bytes(echoed) == binary ? nil : "binary \(index)"
        case 4:
            // A long value: its own buffer, written after the outbound buffer of its turn.
            let value = Self.value(index, size: [2_000, 70_000, 300_000][index % 3])
            _ = try await connection.send(RedisCommand("SET", .key(key), .bytes(value)))
            let got = try await connection.send(RedisCommand("GET", .key(key)))
            return Self.bytes(got) == value ? nil : "long \(index)"
        default:
            // Short commands in a row.
            for step in 0..<4 {
                let value = Self.value(index &* 10 &+ step, size: 8 + step * 20)
                let got = try await connection.send(RedisCommand("ECHO", .bytes(value)))
                if Self.bytes(got) != value { return "short \(index).\(step)" }
            }
            return nil
        }
    }

    static func runMixed(_ connection: RedisConnection, credentials: RedisCredentials, callers: Int) async throws -> [String] {
        let prefix = "test:outbound-mixed:\(UUID().uuidString)"
        return try await withThrowingTaskGroup(of: String?.self) { group in
            for index in 0..<callers {
                group.addTask { try await Self.mixedCaller(connection, index: index, prefix: prefix, credentials: credentials) }
            }
            var wrong: [String] = []
            for try await result in group { if let result { wrong.append(result) } }
            return wrong
        }
    }

    @Test("over TCP, 400 concurrent callers on one connection mixing short, 255/256/257-byte, long, empty, binary commands, pipelines and re-authentications: each reply is its own")
    func mixedOverTCP() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(
                configuration: server.connectionConfiguration(username: "alice", password: password)
            )
            let credentials = RedisCredentials(username: "alice", password: password, version: "v1")
            for _ in 0..<2 {
                let wrong = try await Self.runMixed(connection, credentials: credentials, callers: 400)
                #expect(wrong.isEmpty, "\(wrong.prefix(10))")
            }
            #expect(try await connection.ping() == "PONG")
            await connection.close()
        }
    }

    @Test("over TLS, the same 400 mixed callers on one connection: each reply is its own")
    func mixedOverTLS() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration()) { server in
            let connection = try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: try fixture.context()))
            let credentials = RedisCredentials(username: "alice", password: fixture.password, version: "v1")
            for _ in 0..<2 {
                let wrong = try await Self.runMixed(connection, credentials: credentials, callers: 400)
                #expect(wrong.isEmpty, "\(wrong.prefix(10))")
            }
            #expect(try await connection.ping() == "PONG")
            await connection.close()
        }
    }

    @Test("pub/sub on the same connection: subscriptions come and go while other callers PING and ECHO unique values; each reply is its own (or, while subscribed, the server's refusal)")
    func pubSubAmidShortCommands() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(
                configuration: server.connectionConfiguration(username: "alice", password: password)
            )
            let wrong = try await withThrowingTaskGroup(of: String?.self) { group in
                for index in 0..<200 {
                    group.addTask {
                        if index % 20 == 0 {
                            let subscription = try await connection.subscribe(to: ["outbound-\(index)"])
                            _ = subscription  // Ends (and unsubscribes) when let go.
                            return nil
                        }
                        let tag = "ping-\(index)"
                        // PING answers its argument, or ["pong", argument] while the connection is subscribed.
                        let pong = try await connection.send(RedisCommand("PING", .string(tag)))
                        let pongOK = pong.string == tag || (pong.array.map { $0.count == 2 && $0[1].string == tag } ?? false)
                        let value = Self.value(index, size: 20)
                        do {
                            let echoed = try await connection.send(RedisCommand("ECHO", .bytes(value)))
                            if Self.bytes(echoed) != value { return "echo \(index): \(echoed)" }
                        } catch let error as RedisError where error.code == .serverError {
                            // Refused while subscribed: its own reply, an error.
                        }
                        return pongOK ? nil : "ping \(index): \(pong)"
                    }
                }
                var wrong: [String] = []
                for try await result in group { if let result { wrong.append(result) } }
                return wrong
            }
            #expect(wrong.isEmpty, "\(wrong.prefix(10))")
            // Every subscription ended: ordinary commands answer again, in step.
            let settled = await eventually("the connection leaves subscribed mode") {
                (try? await connection.send(RedisCommand("ECHO", "in-step")).string) == "in-step"
            }
            #expect(settled)
            await connection.close()
        }
    }

    @Test("transactions through a pool of at most two connections amid short and long commands of other callers: each EXEC holds its own results")
    func transactionsAmidShortCommands() async throws {
        try await withOneConnectionClient(maximumConnections: 2) { (_, client) async throws in
            let prefix = "test:outbound-multi:\(UUID().uuidString)"
            let wrong = try await withThrowingTaskGroup(of: String?.self) { group in
                for index in 0..<150 {
                    group.addTask {
                        let key = RedisKey("\(prefix):\(index)")
                        let value = Self.value(index, size: index % 3 == 0 ? 600 : 30)
                        if index % 3 != 2 {
                            let results = try await client.transaction {
                                _ = $0.queue(RedisCommand("SET", .key(key), .bytes(value)))
                                _ = $0.queue(RedisCommand("GET", .key(key)))
                                _ = $0.queue(RedisCommand("ECHO", .bytes(Self.value(index &+ 7, size: 12))))
                            }
                            let got = try results.results.map { try $0.get() }
                            let ok = got.count == 3 && got[0].string == "OK" && Self.bytes(got[1]) == value
                                && Self.bytes(got[2]) == Self.value(index &+ 7, size: 12)
                            return ok ? nil : "transaction \(index)"
                        }
                        _ = try await client.send(RedisCommand("SET", .key(key), .bytes(value)))
                        let got = try await client.send(RedisCommand("GET", .key(key)))
                        return Self.bytes(got) == value ? nil : "plain \(index)"
                    }
                }
                var wrong: [String] = []
                for try await result in group { if let result { wrong.append(result) } }
                return wrong
            }
            #expect(wrong.isEmpty, "\(wrong.prefix(10))")
        }
    }

    @Test("a stopped server (SIGSTOP) under 1 MiB ECHOs and short ones from later turns: the socket fills, NIO holds the writes; after SIGCONT every reply is its own, none hangs")
    func slowReader() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            var configuration = server.connectionConfiguration(username: "alice", password: password)
            configuration.commandTimeout = .seconds(60)
            let connection = try await RedisConnection.connect(configuration: configuration)
            // Grow the outbound buffer first (a burst of short commands in few turns).
            _ = try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<2000 { group.addTask { _ = try await connection.send(RedisCommand("ECHO", .string("warm-\(index)"))) } }
                try await group.waitForAll()
            }
            server.kill(signal: SIGSTOP)
            var tasks: [Task<Bool, any Error>] = []
            for wave in 0..<30 {
                // Big ones fill the socket buffers; short ones of later turns wait behind them in NIO.
                if wave % 3 == 0 {
                    let big = Self.value(wave, size: 1 << 20)
                    tasks.append(Task { Self.bytes(try await connection.send(RedisCommand("ECHO", .bytes(big)))) == big })
                }
                for index in 0..<40 {
                    let value = Self.value(wave &* 1000 &+ index, size: 10 + index)
                    tasks.append(Task { Self.bytes(try await connection.send(RedisCommand("ECHO", .bytes(value)))) == value })
                }
                // Spread over turns of the loop (not needed for the outcome).
                try await Task.sleep(for: .milliseconds(3))
            }
            server.kill(signal: SIGCONT)
            var failures = 0
            for task in tasks {
                let result = await Self.outcome(within: .seconds(60)) { try await task.value }
                if (try? result?.get()) != true { failures += 1 }
            }
            #expect(failures == 0, "\(failures) of \(tasks.count) callers got no reply or another's")
            #expect(try await connection.send(RedisCommand("ECHO", "in-step")).string == "in-step")
            await connection.close()
        }
    }

    @Test("a 100 MiB SET in flight and 300 short ECHOs of later turns queued behind it: each reply is its own, the value is whole")
    func hugeValueAndShortCommands() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            var configuration = server.connectionConfiguration(username: "alice", password: password)
            configuration.commandTimeout = .seconds(60)
            let connection = try await RedisConnection.connect(configuration: configuration)
            let key = uniqueKey("outbound-huge")
            let size = 100 * 1024 * 1024
            let huge = Task { () -> Bool in
                var value = [UInt8](repeating: 0x5A, count: size)
                value[0] = 1
                value[size - 1] = 2
                return try await connection.send(RedisCommand("SET", .key(key), .bytes(value))).string == "OK"
            }
            var tasks: [Task<Bool, any Error>] = []
            for index in 0..<300 {
                let value = Self.value(index, size: 16)
                tasks.append(Task { Self.bytes(try await connection.send(RedisCommand("ECHO", .bytes(value)))) == value })
                if index % 30 == 0 { await Task.yield() }
            }
            #expect((try? await Self.outcome(within: .seconds(90)) { try await huge.value }?.get()) == true)
            var failures = 0
            for task in tasks where (try? await Self.outcome(within: .seconds(60)) { try await task.value }?.get()) != true { failures += 1 }
            #expect(failures == 0)
            #expect(try await connection.send(RedisCommand("STRLEN", .key(key))).int == size)
            let ends = try await connection.pipeline([
                RedisCommand("GETRANGE", .key(key), "0", "0"), RedisCommand("GETRANGE", .key(key), .integer(Int64(size - 1)), .integer(Int64(size - 1))),
            ])
            #expect(ends.map { (try? $0.get()).flatMap(Self.bytes) } == [[1], [2]])
            _ = try await connection.send(RedisCommand("DEL", .key(key)))
            await connection.close()
        }
    }

    @Test("10,000 concurrent short commands on one connection (the outbound buffer grows past 64 KiB and is dropped): each reply is its own")
    func tenThousandShortCommands() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(
                configuration: server.connectionConfiguration(username: "alice", password: password)
            )
            for round in 0..<2 {
                let wrong = try await withThrowingTaskGroup(of: Int.self) { group in
                    for index in 0..<10_000 {
                        group.addTask {
                            let value = Self.value(round &* 100_000 &+ index, size: 12 + index % 40)
                            return Self.bytes(try await connection.send(RedisCommand("ECHO", .bytes(value)))) == value ? 0 : 1
                        }
                    }
                    return try await group.reduce(0, +)
                }
                #expect(wrong == 0, "round \(round)")
            }
            await connection.close()
        }
    }

    enum Ending: String, CaseIterable, Sendable {
        case close, clientKill, serverKill
    }

    @Test("the connection ends (client close, CLIENT KILL, SIGKILL) amid 300 callers, some cancelled, while commands wait for the turn's flush: each caller finishes once, with its own reply or an error; later commands fail as not sent", arguments: Ending.allCases)
    func endingAmidUnflushedCommands(_ ending: Ending) async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            for round in 0..<3 {
                let connection = try await RedisConnection.connect(
                    configuration: server.connectionConfiguration(username: "alice", password: password, name: "victim-\(round)")
                )
                let id = try #require(connection.clientID)
                let admin = try await server.adminConnection()
                var tasks: [Task<Bool, any Error>] = []
                for index in 0..<300 {
                    if index == 100 + round * 50 {
                        switch ending {
                        case .close: tasks.append(Task { await connection.close(); return true })
                        case .clientKill:
                            tasks.append(Task { _ = try await admin.send(RedisCommand("CLIENT", "KILL", "ID", .integer(Int64(id)))); return true })
                        case .serverKill:
                            tasks.append(Task { server.kill(signal: SIGKILL); return true })
                        }
                    }
                    let value = Self.value(round &* 1000 &+ index, size: index % 10 == 0 ? 400 : 20)
                    let task = Task { () -> Bool in
                        do {
                            return Self.bytes(try await connection.send(RedisCommand("ECHO", .bytes(value)))) == value
                        } catch let error as RedisError {
                            return error.code == .connectionClosed
                        } catch is CancellationError {
                            return true
                        }
                    }
                    if index % 7 == 3 { task.cancel() }
                    tasks.append(task)
                }
                var bad = 0
                for task in tasks {
                    let result = await Self.outcome(within: .seconds(20)) { try await task.value }
                    if (try? result?.get()) != true { bad += 1 }
                }
                #expect(bad == 0, "\(ending) round \(round): \(bad) callers hung, got another's reply or an unexpected error")
                await connection.waitUntilClosed()
                do {
                    _ = try await connection.send(RedisCommand("ECHO", "late"))
                    Issue.record("a closed connection answered")
                } catch let error as RedisError {
                    #expect(error.code == .connectionClosed)
                    #expect(error.commandWasNotSent)
                }
                await admin.close()
                if ending == .serverKill {
                    #expect(await server.waitForExit(timeout: .seconds(10)))
                    break
                }
            }
        }
    }
}
