import Foundation
import RedisRotation
import RedisRotationTesting
import Synchronization
import Testing

/// Ordinary commands multiplexed onto shared pool connections (issue 14), against a real server:
/// rotation in place under shared load, kills, and cancellation of shared callers.
@Suite("Pool sharing against a real redis-server", .timeLimit(.minutes(3)))
struct PoolSharingTests {
    /// Few connections for 64 tasks, so that every connection carries many callers at once.
    func configuration(_ server: RedisServerProcess, maximumConnections: Int = 4) -> RedisClientConfiguration {
        RedisClientConfiguration(
            host: server.host,
            port: server.port,
            name: "share",
            pool: .init(
                minimumConnections: 2,
                maximumConnections: maximumConnections,
                maximumConnectionAge: nil,
                leaseTimeout: .seconds(10),
                maximumSharedCommandsPerConnection: 16
            ),
            rotation: .init(probeBackoffBase: .milliseconds(50), probeBackoffCap: .milliseconds(400), maximumProbeAttempts: 6)
        )
    }

    @Test("64 tasks sharing the pool through a password rotation: 0 failed, every connection re-authenticated in place onto the new version")
    func rotationUnderSharedLoad() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { server in
            let file = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: file)
            let new = makePassword()
            let client = try RedisClient(configuration: self.configuration(server), credentials: .file(file, username: "alice"))
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 64, prefix: "sharedflow", stop: stop) }
                await stop.waitForProgress(500, "before the rotation")
                var before: [[String: String]] = []
                _ = try await eventually("the server's connections are the client's") {
                    before = try await server.clients(of: "alice").filter { $0["name"]?.hasPrefix("share@") == true }
                    return before.count == client.connectionsByCredentialVersion.values.reduce(0, +)
                }
                #expect(!before.isEmpty && before.count <= 4)
                #expect(before.allSatisfy { $0["name"] == "share@v1" })
                let opened = client.statistics.connectionsOpened
                let reauthenticated = client.statistics.reauthentications

                try await server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
                try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
                // The traffic never pauses: connections carrying shared users re-authenticate in the pipeline.
                await eventually("the client promoted v2 and every connection re-authenticated") {
                    client.currentCredentialVersion == "v2" && client.connectionsByCredentialVersion.keys.sorted() == ["v2"]
                }
                await stop.waitForProgress(500, "after the rotation")
                let after = try await server.clients(of: "alice")
                let afterByID = Dictionary(after.map { ($0["id"] ?? "", $0) }, uniquingKeysWith: { first, _ in first })
                for connection in before {
                    #expect(afterByID[connection["id"] ?? ""]?["name"] == "share@v2", "connection \(connection["id"] ?? "?") was not re-authenticated in place")
                }
                #expect(client.statistics.connectionsOpened == opened, "re-authentication in place, not by reconnecting")
                #expect(client.statistics.reauthentications - reauthenticated >= before.count)
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty && report.outcomeUnknown == 0, "\(report)")
                #expect(try await client.get("sharedflow:counter", as: Int.self) == report.incrementsAcknowledged)
                let names = try await server.clients(of: "alice").compactMap { $0["name"] }.filter { !$0.hasSuffix("-probe") }
                #expect(!names.isEmpty && names.allSatisfy { $0 == "share@v2" }, "\(names)")
            }
        }
    }

    @Test("the user's connections killed five times under shared load: idempotent commands succeed, INCRs succeed or say they may have run, never counted twice silently")
    func killsUnderSharedLoad() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: self.configuration(server),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 64, prefix: "sharedkills", stop: stop) }
                for _ in 0..<5 {
                    await stop.waitForProgress(300, "before a kill")
                    try await server.admin("CLIENT", "KILL", "USER", "alice")
                }
                await stop.waitForProgress(300, "after the last kill")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty, "\(report)")
                #expect(report.failedOther.isEmpty, "only the may-have-executed code is allowed: \(report)")
                // Every acknowledged INCR ran once; each may-have-run one at most once.
                let counter = try await client.get("sharedkills:counter", as: Int.self) ?? 0
                #expect(counter >= report.incrementsAcknowledged && counter <= report.incrementsAcknowledged + report.outcomeUnknown, "counter \(counter), \(report)")
            }
        }
    }

    @Test("shared callers cancelled at random points: every task gets its own value back, no connection is lost, the pool serves on")
    func cancellationOfSharedCallers() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: self.configuration(server, maximumConnections: 2),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                // Both connections open and serving before counting.
                _ = try await client.send(RedisCommand("PING"), timeout: nil)
                await eventually("the minimum of connections is open") { client.connectionsByCredentialVersion.values.reduce(0, +) == 2 }
                let opened = client.statistics.connectionsOpened
                let counts = Locked<(misdelivered: Int, cancelled: Int, answered: Int)>((0, 0, 0))
                let failures = Locked<[String]>([])
                let clock = ContinuousClock()
                let deadline = clock.now + .seconds(60)
                await withTaskGroup(of: Void.self) { group in
                    for task in 0..<64 {
                        group.addTask {
                            var random = SystemRandomNumberGenerator()
                            let key = RedisKey("sharedcancel:\(task)")
                            for round in 0..<40 where clock.now < deadline {
                                let value = "task\(task)-round\(round)"
                                do {
                                    _ = try await client.send(RedisCommand("SET", .key(key), .string(value)), timeout: nil)
                                } catch {
                                    failures.withLock { $0.append("SET: \(error)") }
                                    continue
                                }
                                // A GET whose caller is cancelled after a random moment: before the write, with the
                                // command in flight, or after the reply.
                                let get = Task { try await client.send(RedisCommand("GET", .key(key)), timeout: nil) }
                                if round % 10 == 9 {
                                    // Every tenth, cancelled once its reply is in: a loaded machine can
                                    // take longer than any pause below for every round trip.
                                    _ = await get.result
                                } else {
                                    let pause = Int.random(in: 0...400, using: &random)
                                    if pause > 0 { try? await Task.sleep(for: .microseconds(pause)) }
                                }
                                get.cancel()
                                switch await get.result {
                                case .success(let reply):
                                    counts.withLock { $0.answered += 1 }
                                    if reply.string != value { counts.withLock { $0.misdelivered += 1 } }
                                case .failure(let error) where error is CancellationError:
                                    counts.withLock { $0.cancelled += 1 }
                                case .failure(let error):
                                    failures.withLock { $0.append("cancelled GET: \(error)") }
                                }
                                // The next caller on the same connections gets its own reply.
                                do {
                                    let reply = try await client.send(RedisCommand("GET", .key(key)), timeout: nil)
                                    if reply.string != value { counts.withLock { $0.misdelivered += 1 } }
                                } catch {
                                    failures.withLock { $0.append("GET: \(error)") }
                                }
                            }
                        }
                    }
                }
                #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { Array($0.prefix(5)) })")
                #expect(counts.withLock { $0.misdelivered } == 0, "a reply reached another caller")
                #expect(counts.withLock { $0.cancelled } > 0, "no GET was cancelled in flight: the test did not test")
                #expect(counts.withLock { $0.answered } > 0)
                #expect(client.statistics.connectionsOpened == opened, "cancelled shared callers cost no connection")
                // The pool serves on: every connection back idle and clean, usable by an exclusive lease too.
                let value = try await client.withConnection { connection in
                    try await connection.send(RedisCommand("GET", "sharedcancel:0"))
                }
                #expect(value.string?.hasPrefix("task0-round") == true)
            }
        }
    }

    @Test("a shared connection closed by another caller's deadline: a command written after it goes on elsewhere until its own deadline, and costs no attempt")
    func anotherCallersDeadline() async throws {
        // Before the fix: the SET failed with outcomeUnknown (connectionClosed) at the GET's deadline, a
        // second before its own, counted as its one attempt; alone on the connection it would have
        // waited until its own deadline and succeeded once the server answered again.
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            let client = try RedisClient(
                configuration: RedisClientConfiguration(
                    host: proxy.host,
                    port: proxy.port,
                    name: "share",
                    commandTimeout: .seconds(3),
                    maximumCommandAttempts: 1,
                    pool: .init(minimumConnections: 1, maximumConnections: 1, maximumConnectionAge: nil, leaseTimeout: .seconds(10))
                ),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                await eventually("the pool's connection is up") { client.connectionsByCredentialVersion == ["v1": 1] }
                let key = uniqueKey("own-deadline")
                await proxy.setMode(.paused)
                // The GET goes out first and times out first (its silence closes the only connection);
                // the SET is written after it on the same connection, with a deadline of its own far
                // later (a reconnect on a loaded machine has all the time it needs).
                let first = Task { try await client.send(RedisCommand("GET", .key(key))) }
                #expect(await eventually("the GET is held by the proxy") { await proxy.chunksInTransit(towardServer: true) >= 1 })
                let second = Task { try await client.send(RedisCommand("SET", .key(key), "landed").idempotent(), timeout: .seconds(20)) }
                #expect(await eventually("the SET is held behind it") { await proxy.chunksInTransit(towardServer: true) >= 2 })
                let error = await #expect(throws: RedisError.self) { try await first.value }
                #expect(error?.code == .commandTimeout, "\(String(describing: error))")
                // The server answers again long before the SET's own deadline.
                await proxy.setMode(.forward)
                _ = try await second.value
                let admin = try await server.adminConnection()
                #expect(try await admin.send(RedisCommand("GET", .key(key))).string == "landed")
                await admin.close()
                #expect(client.statistics.commandsFailed == 1)
            }
            await proxy.close()
        }
    }
}
