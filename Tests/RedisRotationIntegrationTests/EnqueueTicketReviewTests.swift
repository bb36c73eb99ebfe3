import Foundation
import NIOCore
import NIOPosix
import RedisRotation
import RedisRotationTesting
import Testing

/// Review of commands handed to an event loop that shuts down under them (the enqueue ticket), over
/// plain text and TLS: every caller returns, with its reply, `connectionClosed` or `CancellationError`,
/// and `commandWasNotSent` is said only of commands the server never ran (each command increments a key
/// of its own, and the server is asked afterwards).
@Suite("Enqueue tickets against a real redis-server", .timeLimit(.minutes(3)))
struct EnqueueTicketReviewTests {
    enum Outcome: Sendable {
        case replied
        case notSent
        case maybeSent
        case cancelled
        case other(String)
    }

    static func outcome(_ result: Result<Void, any Error>) -> Outcome {
        switch result {
        case .success: return .replied
        case .failure(let error as RedisError) where error.code == .connectionClosed:
            return error.commandWasNotSent ? .notSent : .maybeSent
        case .failure(let error) where error is CancellationError: return .cancelled
        case .failure(let error): return .other("\(error)")
        }
    }

    @Test(
        "commands racing their event loop's shutdown (single sends, pipelines, every seventh cancelled): all return; 'not sent' only for commands the server never ran",
        arguments: [false, true]
    )
    func loopShutdownUnderTraffic(tls: Bool) async throws {
        let fixture = try TLSFixture()
        let serverConfiguration = tls ? fixture.serverConfiguration() : .init(users: [.init(name: "alice", passwords: [fixture.password])])
        try await RedisServerProcess.withServer(serverConfiguration) { server in
            let admin = try await server.adminConnection()
            let context = tls ? try fixture.context() : nil
            var counts: [String: Int] = [:]
            for round in 0..<40 {
                let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
                let name = "ticket-\(round)-\(UUID().uuidString.prefix(8))"
                var configuration = context.map { fixture.aliceConfiguration(server, context: $0) }
                    ?? server.connectionConfiguration(username: "alice", password: fixture.password)
                configuration.name = name
                let connection = try await RedisConnection.connect(configuration: configuration, eventLoopGroup: group)
                let prefix = "test:ticket:\(name)"
                // Each task: the keys its commands increment (once each).
                var tasks: [(keys: [String], task: Task<Void, any Error>)] = []
                for index in 0..<120 {
                    let key = "\(prefix):s\(index)"
                    tasks.append(([key], Task { try await connection.send(RedisCommand("INCR", .key(RedisKey(key))), timeout: .seconds(30)) }))
                }
                for index in 0..<12 {
                    let keys = (0..<8).map { "\(prefix):p\(index)-\($0)" }
                    tasks.append((keys, Task {
                        let results = try await connection.pipeline(keys.map { RedisCommand("INCR", .key(RedisKey($0))) }, timeout: .seconds(30))
                        for result in results { _ = try result.get() }
                    }))
                }
                // The shutdown lands at a different point each round: before, among and after the enqueues.
                for _ in 0..<(round * 3) { await Task.yield() }
                for (index, entry) in tasks.enumerated() where index % 7 == round % 7 { entry.task.cancel() }
                // More commands while the loop shuts down: some find it closed, some reach it as it stops
                // taking tasks (NIO drops those; their tickets fail them as not sent).
                let shutdown = Task { try await group.shutdownGracefully() }
                for index in 0..<150 {
                    let key = "\(prefix):late\(index)"
                    tasks.append(([key], Task { try await connection.send(RedisCommand("INCR", .key(RedisKey(key))), timeout: .seconds(30)) }))
                    if index % 10 == 0 { await Task.yield() }
                }
                try await shutdown.value
                // Every task returns (bounded: 20 s for all of them).
                let finished = Locked<[Int: Result<Void, any Error>]>([:])
                for (index, entry) in tasks.enumerated() {
                    Task {
                        let result = await entry.task.result
                        finished.withLock { $0[index] = result }
                    }
                }
                let clock = ContinuousClock()
                let end = clock.now + .seconds(20)
                while clock.now < end, finished.withLock({ $0.count }) < tasks.count { try await Task.sleep(for: .milliseconds(5)) }
                let results = finished.withLock { $0 }
                var outcomes: [(keys: [String], outcome: Outcome)] = []
                for (index, entry) in tasks.enumerated() {
                    guard let result = results[index] else {
                        Issue.record("round \(round): task \(index) never returned")
                        entry.task.cancel()
                        continue
                    }
                    outcomes.append((entry.keys, Self.outcome(result)))
                }
                // Once the server has dropped the connection it has run everything it read from it.
                var gone = false
                for _ in 0..<200 where !gone {
                    let list = try await admin.send(RedisCommand("CLIENT", "LIST"), as: String.self)
                    gone = !list.contains("name=\(name) ")
                    if !gone { try await Task.sleep(for: .milliseconds(10)) }
                }
                #expect(gone, "round \(round): the server still lists the connection")
                let allKeys = outcomes.flatMap(\.keys)
                let fetched = try await admin.send(RedisCommand("MGET", arguments: allKeys.map { .key(RedisKey($0)) })).array ?? []
                #expect(fetched.count == allKeys.count)
                let stored = Dictionary(uniqueKeysWithValues: zip(allKeys, fetched.map(\.string)))
                for (keys, outcome) in outcomes {
                    let values = keys.map { stored[$0] ?? nil }
                    switch outcome {
                    case .replied:
                        #expect(values.allSatisfy { $0 == "1" }, "round \(round): replied but the server holds \(values)")
                        counts["replied", default: 0] += 1
                    case .notSent:
                        #expect(values.allSatisfy { $0 == nil }, "round \(round): 'not sent' but the server ran it: \(keys) = \(values)")
                        counts["notSent", default: 0] += 1
                    case .maybeSent, .cancelled:
                        #expect(values.allSatisfy { $0 == nil || $0 == "1" }, "round \(round): \(values)")
                        counts["\(outcome)", default: 0] += 1
                    case .other(let error):
                        Issue.record("round \(round): \(keys.first ?? ""): \(error)")
                    }
                }
                #expect(!connection.isActive)
            }
            await admin.close()
            print("enqueue tickets (tls: \(tls)): \(counts)")
        }
    }
}

/// Review of `send` (one command, no arrays), pipelines and transactions cancelled at every point of
/// their way over TLS: the TLS handler's reads come in right-sized buffers and skip the flush when
/// reading wrote nothing, so a reply split across records and reads is where a lost byte would show.
@Suite("Cancellation over TLS against a real redis-server", .timeLimit(.minutes(3)))
struct TLSCancellationReviewTests {
    @Test("sends, pipelines and transactions over TLS cancelled at every point, with replies of 0 B to 40 KB: each gets CancellationError or its own reply, and the connection stays in step")
    func cancelledAtEveryPointOverTLS() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration()) { server in
            let connection = try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: try fixture.context()))
            let sizes = [0, 1, 255, 16_384 - 40, 16_384, 16_385, 40_000]
            let key = uniqueKey("tls-cancel")
            for (index, size) in sizes.enumerated() {
                try await connection.set("\(key):\(index)", to: .bytes(ByteBuffer(repeating: UInt8(97 + index), count: size)))
            }
            func expected(_ index: Int) -> ByteBuffer { ByteBuffer(repeating: UInt8(97 + index), count: sizes[index]) }
            let counts = Locked((cancelled: 0, answered: 0))
            for round in 0..<300 {
                let index = round % sizes.count
                let get = RedisCommand("GET", .key(RedisKey("\(key):\(index)")))
                let task = Task { () -> Bool in
                    switch round % 3 {
                    case 0:
                        return try await connection.send(get).bytes == expected(index)
                    case 1:
                        let results = try await connection.pipeline([get, RedisCommand("ECHO", .string("r\(round)")), get])
                        return try results[0].get().bytes == expected(index) && results[1].get().string == "r\(round)"
                            && results[2].get().bytes == expected(index)
                    default:
                        var transaction = RedisTransaction()
                        let first = transaction.queue(get)
                        let second = transaction.queue(RedisCommand("ECHO", .string("t\(round)")))
                        guard let results = try await connection.transaction(transaction) else { return false }
                        return try results.results[first].get().bytes == expected(index) && results.results[second].get().string == "t\(round)"
                    }
                }
                for _ in 0..<(round % 9) { await Task.yield() }
                if round % 4 == 3 { try? await Task.sleep(for: .microseconds(30 * (round % 11))) }
                task.cancel()
                guard let result = await ReplyBoxIntegrationReviewTests.outcome(within: .seconds(10), { try await task.value }) else {
                    Issue.record("round \(round): the cancelled command never returned")
                    return
                }
                switch result {
                case .success(let matched):
                    #expect(matched, "round \(round): a reply that is not its own")
                    counts.withLock { $0.answered += 1 }
                case .failure(let error):
                    #expect(error is CancellationError, "round \(round): \(error)")
                    counts.withLock { $0.cancelled += 1 }
                }
            }
            #expect(counts.withLock { $0.cancelled + $0.answered } == 300)
            for index in 0..<sizes.count {
                #expect(try await connection.send(RedisCommand("GET", .key(RedisKey("\(key):\(index)")))).bytes == expected(index), "after: \(index)")
            }
            #expect(try await connection.send(RedisCommand("ECHO", "in-step")).string == "in-step")
            #expect(connection.isActive)
            await connection.close()
        }
    }
}

@Suite("TLS closes against a real redis-server", .timeLimit(.minutes(2)))
struct TLSCloseReviewTests {
    @Test("over TLS 1.3 and 1.2: a 40 KB reply right before the server closes (QUIT after a GET, in one pipeline) arrives whole; the waiters behind a CLIENT KILL fail with connectionClosed")
    func replyThenCloseOverTLS() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration()) { server in
            for maximumVersion in [nil, RedisTLSVersion.tls12] {
                let context = try fixture.context(maximumVersion: maximumVersion)
                let key = uniqueKey("tls-close")
                let value = ByteBuffer(repeating: 0x61, count: 40_000)
                do {
                    let connection = try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: context))
                    try await connection.set(key, to: .bytes(value))
                    let results = try await connection.pipeline([RedisCommand("GET", .key(key)), RedisCommand("QUIT")])
                    #expect(try results[0].get().bytes == value, "\(String(describing: maximumVersion))")
                    #expect(try results[1].get().string == "OK", "\(String(describing: maximumVersion))")
                    await connection.waitUntilClosed()
                    #expect(!connection.isActive)
                }
                do {
                    var configuration = fixture.aliceConfiguration(server, context: context)
                    let name = "tls-kill-\(UUID().uuidString.prefix(8))"
                    configuration.name = name
                    let connection = try await RedisConnection.connect(configuration: configuration)
                    let blocked = Task { try await connection.send(RedisCommand("BLPOP", .key(uniqueKey("tls-kill-list")), "0")) }
                    // The BLPOP is on the server, blocked, before any command behind it is sent: a task
                    // started together with it may run first, and its command would then be answered.
                    try await server.waitForBlockedClients(1)
                    let behind = (0..<50).map { index in Task { try await connection.send(RedisCommand("ECHO", .string("b\(index)"))) } }
                    let admin = try await server.adminConnection()
                    // Wait (bounded) until the server holds commands behind the blocked one in the
                    // connection's query buffer, so that the kill finds them in flight.
                    var line = ""
                    for _ in 0..<500 {
                        let list = try await admin.send(RedisCommand("CLIENT", "LIST"), as: String.self)
                        line = String(try #require(list.split(separator: "\n").first { $0.contains("name=\(name) ") }))
                        if !line.contains(" qbuf=0 ") { break }
                        try await Task.sleep(for: .milliseconds(10))
                    }
                    let id = try #require(line.split(separator: " ").first { $0.hasPrefix("id=") }?.dropFirst(3))
                    try await admin.send(RedisCommand("CLIENT", "KILL", "ID", .string(String(id))))
                    await admin.close()
                    for (position, task) in ([blocked] + behind).enumerated() {
                        guard let result = await ReplyBoxIntegrationReviewTests.outcome(within: .seconds(10), { try await task.value }) else {
                            Issue.record("a waiter behind CLIENT KILL never returned")
                            task.cancel()
                            continue
                        }
                        switch result {
                        case .success(let reply): Issue.record("a killed connection answered task \(position) with \(reply.string ?? "?")")
                        case .failure(let error): #expect((error as? RedisError)?.code == .connectionClosed, "\(error)")
                        }
                    }
                    #expect(!connection.isActive)
                }
            }
        }
    }
}
