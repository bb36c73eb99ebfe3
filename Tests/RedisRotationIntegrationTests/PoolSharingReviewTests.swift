import Foundation
@testable import RedisRotation
import RedisRotationTesting
import Synchronization
import Testing

/// Hostile review of pool multiplexing (issue 14), against a real redis-server: cancellation at every
/// await of a shared caller, deadlines of one caller among many on a connection, dirty connections
/// reaching exclusive leases, password rollbacks and rejected re-authentications under shared load,
/// shutdown, retirement, the cap of 1, corrupted replies and a server restart mid-reply.
///
/// Every test checks the one property multiplexing must never break: a caller receives its own
/// reply, or an error, never another caller's.
@Suite("Pool sharing review against a real redis-server", .timeLimit(.minutes(3)))
struct PoolSharingReviewTests {
    static func configuration(
        host: String,
        port: Int,
        minimumConnections: Int = 1,
        maximumConnections: Int = 1,
        cap: Int = 32,
        commandTimeout: Duration = .seconds(5),
        leaseTimeout: Duration = .seconds(10),
        maximumConnectionAge: Duration? = nil
    ) -> RedisClientConfiguration {
        RedisClientConfiguration(
            host: host,
            port: port,
            name: "review",
            commandTimeout: commandTimeout,
            pool: .init(
                minimumConnections: minimumConnections,
                maximumConnections: maximumConnections,
                maximumConnectionAge: maximumConnectionAge,
                leaseTimeout: leaseTimeout,
                maximumSharedCommandsPerConnection: cap
            ),
            rotation: .init(probeBackoffBase: .milliseconds(50), probeBackoffCap: .milliseconds(400), maximumProbeAttempts: 6)
        )
    }

    static func alice(_ password: RedisSecret, _ version: String = "v1") -> RedisCredentialSource {
        .fixed(RedisCredentials(username: "alice", password: password, version: version))
    }

    // MARK: Cancellation

    @Test("cap 1, one connection: callers waiting for a place are cancelled while the only place is held; the others get their own replies and nothing is left behind")
    func cancelWhileWaitingForAPlace() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            let client = try RedisClient(configuration: Self.configuration(host: proxy.host, port: proxy.port, cap: 1), credentials: Self.alice(password))
            try await withRunningClient(client) { client in
                let prefix = uniquePrefix("waitcancel")
                for index in 0..<20 { _ = try await client.send(RedisCommand("SET", .string("\(prefix):\(index)"), .string("value\(index)")), timeout: nil) }
                let opened = client.statistics.connectionsOpened
                await proxy.setMode(.paused)
                // The first GET holds the only place; the 19 others wait for it.
                var tasks: [Task<RESPValue, any Error>] = []
                for index in 0..<20 {
                    tasks.append(Task { try await client.send(RedisCommand("GET", .string("\(prefix):\(index)")), timeout: nil) })
                    if index == 0 { await eventually("the first GET reached the proxy") { await proxy.chunksInTransit(towardServer: true) > 0 } }
                }
                await eventually("19 callers wait for a place") { client.leaseRequestsInFlight == 19 }
                for index in stride(from: 1, to: 20, by: 2) { tasks[index].cancel() }
                await eventually("the cancelled waiters are gone") { client.leaseRequestsInFlight == 9 }
                await proxy.setMode(.forward)
                for index in 0..<20 {
                    let result = await tasks[index].result
                    if index % 2 == 1 {
                        #expect(throws: CancellationError.self, "waiter \(index)") { try result.get() }
                    } else {
                        #expect(try result.get().string == "value\(index)", "caller \(index) got another reply")
                    }
                }
                #expect(client.leaseRequestsInFlight == 0)
                #expect(client.statistics.connectionsOpened == opened)
                #expect(client.statistics.commandsFailed == 0)
                // The connection serves an exclusive lease, clean.
                let reply = try await client.withConnection { try await $0.send(RedisCommand("GET", .string("\(prefix):3"))) }
                #expect(reply.string == "value3")
            }
            await proxy.close()
        }
    }

    @Test("cap 1 on one connection, 32 tasks: callers cancelled at random moments race the grants of their places; every answer is the caller's own, nothing is left waiting, no connection is lost")
    func cancellationRacesGrantsAtTheCap() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(configuration: Self.configuration(host: server.host, port: server.port, cap: 1), credentials: Self.alice(password))
            try await withRunningClient(client) { client in
                _ = try await client.send(RedisCommand("PING"), timeout: nil)
                let opened = client.statistics.connectionsOpened
                let prefix = uniquePrefix("racecancel")
                let counts = Locked<(misdelivered: Int, cancelled: Int, answered: Int)>((0, 0, 0))
                let failures = Locked<[String]>([])
                let clock = ContinuousClock()
                let deadline = clock.now + .seconds(40)
                await withTaskGroup(of: Void.self) { group in
                    for task in 0..<32 {
                        group.addTask {
                            var random = SystemRandomNumberGenerator()
                            let key = RedisKey("\(prefix):\(task)")
                            for round in 0..<30 where clock.now < deadline {
                                let value = "t\(task)r\(round)"
                                do {
                                    _ = try await client.send(RedisCommand("SET", .key(key), .string(value)), timeout: nil)
                                } catch {
                                    failures.withLock { $0.append("SET: \(error)") }
                                    continue
                                }
                                let get = Task { try await client.send(RedisCommand("GET", .key(key)), timeout: nil) }
                                let pause = Int.random(in: 0...3000, using: &random)
                                if pause > 0 { try? await Task.sleep(for: .microseconds(pause)) }
                                // One GET in four is left alone, so that answers race the cancelled ones however
                                // slow the machine is.
                                if round % 4 != 0 { get.cancel() }
                                switch await get.result {
                                case .success(let reply):
                                    counts.withLock { $0.answered += 1 }
                                    if reply.string != value { counts.withLock { $0.misdelivered += 1 } }
                                case .failure(let error) where error is CancellationError:
                                    counts.withLock { $0.cancelled += 1 }
                                case .failure(let error):
                                    failures.withLock { $0.append("cancelled GET: \(error)") }
                                }
                            }
                        }
                    }
                }
                #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { Array($0.prefix(5)) })")
                #expect(counts.withLock { $0.misdelivered } == 0, "a reply reached another caller")
                #expect(counts.withLock { $0.cancelled } > 0 && counts.withLock { $0.answered } > 0, "\(counts.withLock { $0 })")
                #expect(clock.now < deadline, "the rounds did not finish in 40 s: \(counts.withLock { $0 }), \(client.statistics)")
                #expect(client.leaseRequestsInFlight == 0)
                #expect(client.statistics.connectionsOpened == opened)
                let reply = try await client.withConnection { try await $0.send(RedisCommand("GET", .string("\(prefix):0"))) }
                #expect(reply.string?.hasPrefix("t0r") == true)
            }
        }
    }

    @Test("callers cancelled between their write and their reply, at every point of a slow pipeline: no reply reaches another caller; the connection is restored before an exclusive lease gets it")
    func cancelBetweenWriteAndReplyThenExclusiveLease() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            let client = try RedisClient(configuration: Self.configuration(host: proxy.host, port: proxy.port, cap: 32), credentials: Self.alice(password))
            try await withRunningClient(client) { client in
                let prefix = uniquePrefix("midcancel")
                for index in 0..<32 { _ = try await client.send(RedisCommand("SET", .string("\(prefix):\(index)"), .string("value\(index)")), timeout: nil) }
                await proxy.setMode(.paused)
                var tasks: [Task<RESPValue, any Error>] = []
                for index in 0..<32 {
                    tasks.append(Task { try await client.send(RedisCommand("GET", .string("\(prefix):\(index)")), timeout: nil) })
                }
                await eventually("32 GETs are written") { await proxy.chunksInTransit(towardServer: true) >= 1 && client.leaseRequestsInFlight == 0 }
                try await Task.sleep(for: .milliseconds(50))
                for index in stride(from: 0, to: 32, by: 3) { tasks[index].cancel() }
                // An exclusive lease asked for while replies are owed must get the connection only once they
                // have arrived: its GET must not be answered with one of theirs.
                let exclusive = Task { try await client.withConnection { try await $0.send(RedisCommand("GET", .string("\(prefix):31"))) } }
                try await Task.sleep(for: .milliseconds(50))
                await proxy.setMode(.forward)
                for index in 0..<32 {
                    switch await tasks[index].result {
                    case .success(let reply):
                        #expect(reply.string == "value\(index)", "caller \(index) got another caller's reply: \(reply)")
                    case .failure(let error):
                        #expect(index % 3 == 0 && error is CancellationError, "caller \(index): \(error)")
                    }
                }
                #expect(try await exclusive.value.string == "value31")
                #expect(client.leaseRequestsInFlight == 0)
            }
            await proxy.close()
        }
    }

    // MARK: Deadlines

    @Test("one shared caller's short deadlines among 31 others on one slow connection: replies stay matched, the connection is never replaced, the next exclusive lease is clean")
    func shortDeadlinesAmongSharedCallers() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            let client = try RedisClient(configuration: Self.configuration(host: proxy.host, port: proxy.port, cap: 32), credentials: Self.alice(password))
            try await withRunningClient(client) { client in
                _ = try await client.send(RedisCommand("PING"), timeout: nil)
                let opened = client.statistics.connectionsOpened
                await proxy.setMode(.latency(.milliseconds(40)))
                let misdelivered = Locked<[String]>([])
                let failures = Locked<[String]>([])
                let timedOut = Locked(0)
                let prefix = uniquePrefix("deadlines")
                await withTaskGroup(of: Void.self) { group in
                    for task in 0..<32 {
                        group.addTask {
                            let key = RedisKey("\(prefix):\(task)")
                            for round in 0..<12 {
                                let value = "t\(task)r\(round)"
                                do {
                                    _ = try await client.send(RedisCommand("SET", .key(key), .string(value)).idempotent(), timeout: nil)
                                } catch {
                                    failures.withLock { $0.append("SET \(task): \(error)") }
                                    continue
                                }
                                // Task 0 has deadlines around the round trip: some pass, some not.
                                let timeout: Duration = task == 0 ? .milliseconds(20 + 10 * (round % 6)) : .seconds(5)
                                do {
                                    let reply = try await client.send(RedisCommand("GET", .key(key)), timeout: timeout)
                                    if reply.string != value { misdelivered.withLock { $0.append("\(task): \(reply) for \(value)") } }
                                } catch let error as RedisError where (error.code == .commandTimeout || error.code == .leaseTimeout) && task == 0 {
                                    // Task 0's short deadline may pass while it waits for the reply, or (on a
                                    // loaded machine) already while it waits for the connection.
                                    timedOut.withLock { $0 += 1 }
                                } catch {
                                    failures.withLock { $0.append("GET \(task): \(error)") }
                                }
                            }
                        }
                    }
                }
                #expect(misdelivered.withLock { $0 }.isEmpty, "\(misdelivered.withLock { $0.prefix(5) })")
                #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0.prefix(5) })")
                #expect(timedOut.withLock { $0 } > 0, "no deadline passed: the test did not test")
                #expect(client.statistics.connectionsOpened == opened, "a caller's own deadline must not cost the shared connection")
                let reply = try await client.withConnection { try await $0.send(RedisCommand("GET", .string("\(prefix):5"))) }
                #expect(reply.string == "t5r11")
            }
            await proxy.close()
        }
    }

    @Test("a timed-out shared GET still owes its reply when a transaction and a BLPOP ask for the only connection: each gets its own reply")
    func exclusiveLeasesAfterAnAbandonedSharedReply() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            let client = try RedisClient(configuration: Self.configuration(host: proxy.host, port: proxy.port), credentials: Self.alice(password))
            try await withRunningClient(client) { client in
                let key = uniqueKey("owed")
                let list = uniqueKey("owedlist")
                _ = try await client.send(RedisCommand("SET", .key(key), "stale"), timeout: nil)
                _ = try await client.send(RedisCommand("RPUSH", .key(list), "element"), timeout: nil)
                await proxy.setMode(.paused)
                await #expect(throws: RedisError.self) { try await client.send(RedisCommand("GET", .key(key)), timeout: .milliseconds(100)) }
                let transaction = Task {
                    try await client.transaction { tx in
                        tx.queue(RedisCommand("INCR", .key(uniqueKey("owedcounter"))))
                        tx.queue(RedisCommand("LLEN", .key(list)))
                    }
                }
                let pop = Task { try await client.send(RedisCommand("BLPOP", .key(list), "1"), timeout: nil) }
                try await Task.sleep(for: .milliseconds(100))
                await proxy.setMode(.forward)
                let results = try await transaction.value
                #expect(results.count == 2)
                let popped = try await pop.value
                #expect(popped.array?.last?.string == "element", "\(popped)")
            }
            await proxy.close()
        }
    }

    // MARK: Head-of-line blocking

    @Test("reads with a 1 s deadline while the server holds back writes (CLIENT PAUSE WRITE, as the FAILOVER command does) and one write waits on the pool: once the held-back connection has answered nothing for a moment, the free connection serves every read")
    func readsDoNotQueueBehindAPausedWrite() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: Self.configuration(host: server.host, port: server.port, minimumConnections: 2, maximumConnections: 2, cap: 32),
                credentials: Self.alice(password)
            )
            try await withRunningClient(client) { client in
                let key = uniqueKey("paused")
                _ = try await client.send(RedisCommand("SET", .key(key), "before"), timeout: nil)
                await eventually("both connections are open") { client.connectionsByCredentialVersion.values.reduce(0, +) == 2 }
                try await server.admin("CLIENT", "PAUSE", "3000", "WRITE")
                // One write, held back by the server on its connection; the other connection is free.
                let write = Task { try await client.send(RedisCommand("SET", .key(key), "after"), timeout: nil) }
                try await server.waitForBlockedClients(1)
                let clock = ContinuousClock()
                let blocked = clock.now
                // Reads keep coming, as traffic does. Those sent in the first moments may be pipelined
                // behind the held-back write on the connection being filled (the pool cannot know yet);
                // once the connection has answered nothing for a while (`RedisClient.heldBackAfter`, 5 ms),
                // reads go to the free one. Before the fix, every read routed to the held-back
                // connection failed, however late (10 of 20 in one burst, every run).
                let late = Locked<[String]>([])
                let served = Locked(0)
                await withTaskGroup(of: Void.self) { group in
                    for _ in 0..<20 {
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
                #expect(served.withLock { $0 } > 20)
                #expect(late.withLock { $0 }.isEmpty, "\(late.withLock { $0.count }) reads sent 100 ms or more into the pause failed behind the held-back write: \(late.withLock { $0.first ?? "" })")
                try await server.admin("CLIENT", "UNPAUSE")
                _ = try await write.value
            }
        }
    }

    // MARK: Exclusive leases under load

    @Test("withConnection, transactions and BLPOP under a steady shared load of 64 tasks on 2 connections: none starves")
    func exclusiveLeasesDoNotStarve() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: Self.configuration(host: server.host, port: server.port, minimumConnections: 2, maximumConnections: 2, cap: 8, leaseTimeout: .seconds(5)),
                credentials: Self.alice(password)
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 64, prefix: uniquePrefix("starve"), stop: stop) }
                await stop.waitForProgress(500, "before the exclusive leases")
                var failures: [String] = []
                let list = uniqueKey("starvelist")
                for round in 0..<15 {
                    do {
                        switch round % 3 {
                        case 0:
                            _ = try await client.withConnection { try await $0.send(RedisCommand("PING")) }
                        case 1:
                            _ = try await client.transaction { $0.queue(RedisCommand("INCR", .key(list))) }
                            _ = try await client.send(RedisCommand("DEL", .key(list)), timeout: nil)
                        default:
                            _ = try await client.send(RedisCommand("BLPOP", .key(list), "0.01"), timeout: nil)
                        }
                    } catch {
                        failures.append("round \(round): \(error)")
                    }
                }
                stop.stop()
                let report = await traffic.value
                #expect(failures.isEmpty, "\(failures)")
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty && report.outcomeUnknown == 0, "\(report)")
                #expect(client.leaseRequestsInFlight == 0)
            }
        }
    }

    @Test("withConnection and a transaction while new connections cannot be opened (accepted, never answered) and one pool connection carries shared load: the lease gets that connection")
    func exclusiveLeaseWhileNewConnectionsHang() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            let client = try RedisClient(
                configuration: Self.configuration(host: proxy.host, port: proxy.port, minimumConnections: 1, maximumConnections: 2, cap: 32, leaseTimeout: .seconds(3)),
                credentials: Self.alice(password)
            )
            try await withRunningClient(client) { client in
                // One connection, open before the load: 8 tasks fit on it (cap 32), so no second one opens.
                _ = try await client.send(RedisCommand("PING"), timeout: nil)
                await eventually("one connection is open") { client.connectionsByCredentialVersion.values.reduce(0, +) == 1 }
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 8, prefix: uniquePrefix("hang"), stop: stop) }
                await stop.waitForProgress(300, "before new connections hang")
                #expect(client.connectionsByCredentialVersion.values.reduce(0, +) == 1, "one connection carries the shared load")
                await proxy.setMode(.blackholeNewConnections)
                var failures: [String] = []
                do {
                    _ = try await client.withConnection { try await $0.send(RedisCommand("PING")) }
                } catch {
                    failures.append("withConnection: \(error)")
                }
                do {
                    _ = try await client.transaction { $0.queue(RedisCommand("INCR", .key(uniqueKey("hangcounter")))) }
                } catch {
                    failures.append("transaction: \(error)")
                }
                await stop.waitForProgress(100, "with new connections hanging")
                stop.stop()
                let report = await traffic.value
                #expect(failures.isEmpty, "the shared connection was never drained for the lease: \(failures)")
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty, "\(report)")
                await proxy.setMode(.forward)
            }
            await proxy.close()
        }
    }

    /// `workers` tasks looping `exclusive` next to `readers` tasks looping `read` for `duration`, on a
    /// 2-connection pool with a 2 s lease deadline. The first failed read ends the run (one starved read
    /// shows it). Returns the number of exclusive uses, of reads, and the failures.
    func starvationRun(
        workers: Int,
        readers: Int,
        duration: Duration,
        exclusive: @escaping @Sendable (RedisClient) async throws -> Void,
        read: @escaping @Sendable (RedisClient) async throws -> Void
    ) async throws -> (exclusive: Int, reads: Int, failures: [String]) {
        let password = makePassword()
        let result = Locked<(exclusive: Int, reads: Int, failures: [String])>((0, 0, []))
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: Self.configuration(host: server.host, port: server.port, minimumConnections: 2, maximumConnections: 2, cap: 32, leaseTimeout: .seconds(2)),
                credentials: Self.alice(password)
            )
            try await withRunningClient(client) { client in
                _ = try await client.send(RedisCommand("PING"), timeout: nil)
                let stop = StopFlag()
                let clock = ContinuousClock()
                let end = clock.now + duration
                await withTaskGroup(of: Void.self) { group in
                    for _ in 0..<workers {
                        group.addTask {
                            while clock.now < end && !stop.isStopped {
                                do {
                                    try await exclusive(client)
                                    result.withLock { $0.exclusive += 1 }
                                } catch {
                                    result.withLock { $0.failures.append("exclusive: \(error)") }
                                }
                            }
                        }
                    }
                    for _ in 0..<readers {
                        group.addTask {
                            while clock.now < end && !stop.isStopped {
                                do {
                                    try await read(client)
                                    result.withLock { $0.reads += 1 }
                                } catch {
                                    result.withLock { $0.failures.append("GET: \(error)") }
                                    stop.stop()
                                }
                            }
                        }
                    }
                }
            }
        }
        return result.withLock { $0 }
    }

    @Test("ordinary commands under a steady load of transactions (8 tasks, 2 connections): every GET is served within its lease deadline, as when leases were served in order")
    func sharedCommandsDoNotStarveUnderExclusiveLoad() async throws {
        let counter = uniqueKey("starvecounter")
        let run = try await self.starvationRun(
            workers: 8,
            readers: 8,
            duration: .seconds(4),
            exclusive: { client in _ = try await client.transaction { $0.queue(RedisCommand("INCR", .key(counter))) } },
            read: { client in _ = try await client.send(RedisCommand("GET", .key(counter)), timeout: nil) }
        )
        #expect(run.exclusive > 0)
        #expect(run.failures.isEmpty, "\(run.reads) reads, \(run.exclusive) transactions; failures: \(run.failures.prefix(3))")
    }

    @Test("ordinary commands next to queue workers (4 tasks looping BLPOP with a 0.2 s timeout on an empty list, 2 connections): every GET is served within its lease deadline")
    func sharedCommandsDoNotStarveNextToBlockingWorkers() async throws {
        let queue = uniqueKey("workqueue")
        let run = try await self.starvationRun(
            workers: 4,
            readers: 1,
            duration: .seconds(3),
            exclusive: { client in _ = try await client.send(RedisCommand("BLPOP", .key(queue), "0.2"), timeout: nil) },
            read: { client in _ = try await client.send(RedisCommand("GET", .key(queue)), timeout: nil) }
        )
        #expect(run.exclusive > 0)
        #expect(run.failures.isEmpty, "\(run.reads) reads, \(run.exclusive) empty pops; failures: \(run.failures.prefix(3))")
    }

    // MARK: Rotation

    @Test("password rolled forward then back (v1 → v2 → v1 file restored) under shared load: nothing fails, every connection ends on the restored password")
    func rollbackUnderSharedLoad() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { server in
            let file = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: file)
            let new = makePassword()
            let client = try RedisClient(
                configuration: Self.configuration(host: server.host, port: server.port, minimumConnections: 2, maximumConnections: 4, cap: 16),
                credentials: .file(file, username: "alice")
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let prefix = uniquePrefix("rollback")
                let traffic = Task { await runTraffic(client: client, tasks: 64, prefix: prefix, stop: stop) }
                await stop.waitForProgress(300, "before the rotation")
                try await server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
                try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
                await eventually("all on v2") { client.currentCredentialVersion == "v2" && client.connectionsByCredentialVersion.keys.sorted() == ["v2"] }
                await stop.waitForProgress(300, "on v2")
                // Rolled back: the old file restored, the new password removed from the ACL.
                try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: file)
                await eventually("the client follows the restored file", timeout: .seconds(30)) { client.currentCredentialVersion == "v1" }
                try await server.admin("ACL", "SETUSER", "alice", .string("<\(text(of: new))"))
                await eventually("every connection is on v1 again", timeout: .seconds(30)) { client.connectionsByCredentialVersion.keys.sorted() == ["v1"] }
                await stop.waitForProgress(300, "after the rollback")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty && report.outcomeUnknown == 0, "\(report)")
                #expect(try await client.get("\(prefix):counter", as: Int.self) == report.incrementsAcknowledged)
                // The server agrees: every connection of the client is named for v1, and as many as the client counts.
                let names = try await server.clients(of: "alice").compactMap { $0["name"] }.filter { $0.hasPrefix("review@") }
                #expect(names.allSatisfy { $0 == "review@v1" }, "\(names)")
                #expect(names.count == client.connectionsByCredentialVersion.values.reduce(0, +), "\(names) vs \(client.connectionsByCredentialVersion)")
            }
        }
    }

    @Test("a promoted password removed from the server before the in-place re-authentication reaches it, with shared commands in flight on every connection: WRONGPASS demotes, nothing fails, no connection stays on the removed password")
    func rejectedReauthenticationUnderSharedLoad() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            let file = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: file)
            let new = makePassword()
            let client = try RedisClient(
                configuration: Self.configuration(host: proxy.host, port: proxy.port, minimumConnections: 2, maximumConnections: 3, cap: 16),
                credentials: .file(file, username: "alice")
            )
            let rejections = Locked<[String]>([])
            _ = client.addObserver { event in
                if event.kind == .credentialRejected, event.detail.contains("re-authenticating") {
                    rejections.withLock { $0.append(event.credentialVersion ?? "?") }
                }
            }
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let prefix = uniquePrefix("rejected")
                let traffic = Task { await runTraffic(client: client, tasks: 48, prefix: prefix, stop: stop) }
                await stop.waitForProgress(300, "before the rotation")
                await proxy.setMode(.latency(.milliseconds(300)))
                try await server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
                try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
                await eventually("v2 promoted") { client.currentCredentialVersion == "v2" }
                // The re-authentications are on their way (300 ms); the password goes first.
                try await server.admin("ACL", "SETUSER", "alice", .string("<\(text(of: new))"))
                await proxy.setMode(.forward)
                await eventually("v2 demoted and every connection on v1", timeout: .seconds(30)) {
                    client.currentCredentialVersion == "v1" && client.connectionsByCredentialVersion.keys.sorted() == ["v1"]
                }
                await stop.waitForProgress(300, "after the demotion")
                #expect(!rejections.withLock { $0 }.isEmpty, "no re-authentication was rejected: the test did not test")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty && report.outcomeUnknown == 0, "\(report)")
                #expect(try await client.get("\(prefix):counter", as: Int.self) == report.incrementsAcknowledged)
                let names = try await server.clients(of: "alice").compactMap { $0["name"] }.filter { $0.hasPrefix("review@") }
                #expect(names.allSatisfy { $0 == "review@v1" }, "\(names)")
                #expect(names.count == client.connectionsByCredentialVersion.values.reduce(0, +), "\(names) vs \(client.connectionsByCredentialVersion)")
            }
            await proxy.close()
        }
    }

    // MARK: Shutdown, retirement

    @Test("the client stopped with one shared command in flight and ten waiting for a place: every caller ends, none hangs")
    func shutdownWithSharedCommandsInFlightAndWaiting() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            let client = try RedisClient(configuration: Self.configuration(host: proxy.host, port: proxy.port, cap: 1), credentials: Self.alice(password))
            let run = Task { try await client.run() }
            _ = try await client.send(RedisCommand("PING"), timeout: nil)
            await proxy.setMode(.paused)
            var tasks: [Task<RESPValue, any Error>] = []
            for index in 0..<11 {
                tasks.append(Task { try await client.send(RedisCommand("INCR", .key(uniqueKey("shutdown\(index)"))), timeout: nil) })
            }
            await eventually("ten callers wait for a place") { client.leaseRequestsInFlight == 10 }
            run.cancel()
            let ended = Locked(0)
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(15)
            for task in tasks {
                // Bounded: a caller still waiting after 15 s counts as hung.
                let result = await withTaskGroup(of: Bool.self) { group in
                    group.addTask { _ = await task.result; return true }
                    group.addTask { try? await Task.sleep(until: deadline); return false }
                    let first = await group.next()!
                    group.cancelAll()
                    return first
                }
                if result { ended.withLock { $0 += 1 } } else { task.cancel() }
            }
            #expect(ended.withLock { $0 } == 11, "callers hung after the client stopped")
            for task in tasks {
                if case .failure(let error as RedisError) = await task.result {
                    #expect([.clientShutdown, .connectionClosed, .outcomeUnknown, .leaseTimeout].contains(error.code), "\(error)")
                }
            }
            _ = try? await run.value
            await proxy.close()
        }
    }

    @Test("connections reaching their maximum age under steady shared load are replaced without a failed command, and the pool never exceeds its maximum on the server")
    func retirementUnderSharedLoad() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: Self.configuration(
                    host: server.host, port: server.port, minimumConnections: 2, maximumConnections: 2, cap: 8, maximumConnectionAge: .milliseconds(700)
                ),
                credentials: Self.alice(password)
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let prefix = uniquePrefix("retire")
                let traffic = Task { await runTraffic(client: client, tasks: 32, prefix: prefix, stop: stop) }
                let opened = client.statistics.connectionsOpened
                var most = 0
                let clock = ContinuousClock()
                let end = clock.now + .seconds(4)
                while clock.now < end {
                    most = max(most, try await server.clients(of: "alice").filter { $0["name"]?.hasPrefix("review@") == true }.count)
                    try await Task.sleep(for: .milliseconds(50))
                }
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty && report.outcomeUnknown == 0, "\(report)")
                #expect(client.statistics.connectionsOpened - opened >= 4, "connections were not retired")
                // Make-before-break: a replacement may be open next to each old connection, never more.
                #expect(most <= 4, "at most \(most) connections at once")
                await eventually("the retired connections are gone") {
                    let names = (try? await server.clients(of: "alice").filter { $0["name"]?.hasPrefix("review@") == true }.count) ?? -1
                    return names == client.connectionsByCredentialVersion.values.reduce(0, +) && names <= 2
                }
            }
        }
    }

    // MARK: Corrupted streams, restarts

    @Test("garbage and oversized headers injected into the reply streams of shared connections under load: no caller gets another's value, idempotent commands succeed")
    func garbageInSharedReplyStreams() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            let client = try RedisClient(
                configuration: Self.configuration(host: proxy.host, port: proxy.port, minimumConnections: 2, maximumConnections: 2, cap: 16),
                credentials: Self.alice(password)
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let misdelivered = Locked<[String]>([])
                let failures = Locked<[String]>([])
                let prefix = uniquePrefix("garbage")
                let traffic = Task {
                    await withTaskGroup(of: Void.self) { group in
                        for task in 0..<32 {
                            group.addTask {
                                var round = 0
                                while !stop.isStopped && round < 100_000 {
                                    round += 1
                                    let key = RedisKey("\(prefix):\(task)")
                                    let value = "t\(task)r\(round)"
                                    do {
                                        _ = try await client.send(RedisCommand("SET", .key(key), .string(value)).idempotent(), timeout: nil)
                                        let reply = try await client.send(RedisCommand("GET", .key(key)), timeout: nil)
                                        if reply.string != value { misdelivered.withLock { $0.append("\(reply) for \(value)") } }
                                        stop.recordSuccess()
                                    } catch {
                                        failures.withLock { $0.append("\(error)") }
                                    }
                                }
                            }
                        }
                    }
                }
                // Not a valid RESP type byte; a bulk string over every limit; an array of more elements than
                // any reply may hold: each must close the connection, never skip or wait.
                let opened = client.statistics.connectionsOpened
                let faults = ["!garbage\r\n", "$99999999999\r\n", "*99999999999\r\n", "!garbage\r\n"]
                for (fault, bytes) in faults.enumerated() {
                    await stop.waitForProgress(200, "before fault \(fault)")
                    await proxy.injectIntoReplies(Array(bytes.utf8))
                    await stop.waitForProgress(50, "after fault \(fault)")
                    await proxy.disarmReplyFaults()
                }
                await stop.waitForProgress(200, "after the faults")
                stop.stop()
                await traffic.value
                #expect(client.statistics.connectionsOpened >= opened + 4, "the faults did not close connections: the test did not test")
                #expect(misdelivered.withLock { $0 }.isEmpty, "\(misdelivered.withLock { $0.prefix(5) })")
                #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0.prefix(5) })")
                #expect(client.leaseRequestsInFlight == 0)
            }
            await proxy.close()
        }
    }

    @Test("replies cut mid-way, then the server restarted with its append-only file, under shared load: idempotent commands succeed, every acknowledged INCR counted once")
    func cutRepliesAndRestartUnderSharedLoad() async throws {
        let password = makePassword()
        try await withAliceServer(password: password, extraConfiguration: ["appendonly yes", "appendfsync always"]) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            let client = try RedisClient(
                configuration: Self.configuration(
                    host: proxy.host, port: proxy.port, minimumConnections: 2, maximumConnections: 3, cap: 16, leaseTimeout: .seconds(20)
                ),
                credentials: Self.alice(password)
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let prefix = uniquePrefix("restart")
                let traffic = Task { await runTraffic(client: client, tasks: 48, prefix: prefix, stop: stop) }
                await stop.waitForProgress(300, "before the cut")
                await proxy.truncateNextReply(keeping: 3)
                await stop.waitForProgress(100, "after the cut")
                await proxy.disarmReplyFaults()
                try await server.restart()
                await stop.waitForProgress(300, "after the restart")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedOther.isEmpty, "\(report)")
                #expect(report.failedIdempotent.isEmpty, "\(report)")
                let counter = try await client.get("\(prefix):counter", as: Int.self) ?? 0
                #expect(counter >= report.incrementsAcknowledged && counter <= report.incrementsAcknowledged + report.outcomeUnknown, "counter \(counter), \(report)")
                #expect(client.leaseRequestsInFlight == 0)
            }
            await proxy.close()
        }
    }
}

/// A unique key prefix, so tests never collide.
private func uniquePrefix(_ label: String) -> String {
    "test:\(label):\(UUID().uuidString)"
}
