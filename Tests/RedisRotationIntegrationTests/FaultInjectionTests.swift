import Foundation
import RedisRotation
import RedisRotationTesting
import Synchronization
import Testing

/// What a run of ``faultTraffic`` saw. Every task writes unique keys (`SET`, marked idempotent), reads
/// them back and increments one counter, so the server's contents can be checked against what was
/// acknowledged.
struct FaultReport: Sendable, CustomStringConvertible {
    var setsAcknowledged = 0
    var setsAttempted = 0
    var incrementsAcknowledged = 0
    var incrementsUnknown = 0
    /// Idempotent commands (SET, GET) that failed although no fault lasted past their deadline.
    var failedIdempotent: [String] = []
    /// Commands that failed with a deadline while the server could not answer (blackhole).
    var timedOut = 0
    /// Anything else: an INCR failing other than with outcomeUnknown or a timeout, a GET returning a value
    /// that was never written.
    var wrong: [String] = []

    var description: String {
        "sets=\(self.setsAcknowledged)/\(self.setsAttempted) incr=\(self.incrementsAcknowledged)+\(self.incrementsUnknown)? timedOut=\(self.timedOut) failedIdempotent=\(self.failedIdempotent.count) \(self.failedIdempotent.prefix(3)) wrong=\(self.wrong.prefix(3))"
    }

    static func + (lhs: FaultReport, rhs: FaultReport) -> FaultReport {
        FaultReport(
            setsAcknowledged: lhs.setsAcknowledged + rhs.setsAcknowledged,
            setsAttempted: lhs.setsAttempted + rhs.setsAttempted,
            incrementsAcknowledged: lhs.incrementsAcknowledged + rhs.incrementsAcknowledged,
            incrementsUnknown: lhs.incrementsUnknown + rhs.incrementsUnknown,
            failedIdempotent: lhs.failedIdempotent + rhs.failedIdempotent,
            timedOut: lhs.timedOut + rhs.timedOut,
            wrong: lhs.wrong + rhs.wrong
        )
    }
}

/// `tasks` loops of SET (unique key) / GET (that key) / INCR until `stop` (at most 60 s, 100,000 rounds).
func faultTraffic(client: RedisClient, tasks: Int, prefix: String, stop: StopFlag) async -> FaultReport {
    let clock = ContinuousClock()
    let deadline = clock.now + .seconds(60)
    return await withTaskGroup(of: FaultReport.self) { group in
        for task in 0..<tasks {
            group.addTask {
                var report = FaultReport()
                var round = 0
                while !stop.isStopped && clock.now < deadline && round < 100_000 {
                    round += 1
                    let key = RedisKey("\(prefix):k:\(task):\(round)")
                    do {
                        report.setsAttempted += 1
                        try await client.send(RedisCommand("SET", .key(key), .integer(round)).idempotent())
                        report.setsAcknowledged += 1
                        let read = try await client.get(key, as: Int.self)
                        if read != round { report.wrong.append("GET \(key) returned \(String(describing: read))") }
                        stop.recordSuccess()
                    } catch let error as RedisError where error.isDeadline {
                        report.timedOut += 1
                    } catch {
                        report.failedIdempotent.append("\(error)")
                    }
                    do {
                        _ = try await client.incr("\(prefix):counter")
                        report.incrementsAcknowledged += 1
                    } catch let error as RedisError where error.code == .outcomeUnknown {
                        report.incrementsUnknown += 1
                    } catch let error as RedisError where error.isDeadline {
                        report.timedOut += 1
                    } catch {
                        report.wrong.append("INCR: \(error)")
                    }
                }
                return report
            }
        }
        return await group.reduce(FaultReport(), +)
    }
}

extension RedisError {
    /// A command that failed because a deadline passed: its own, its lease's, or (for a write whose
    /// earlier attempt may have run) an `outcomeUnknown` caused by one.
    var isDeadline: Bool {
        if self.code == .commandTimeout || self.code == .leaseTimeout { return true }
        return self.code == .outcomeUnknown && (self.underlying as? RedisError)?.isDeadline == true
    }
}

@Suite("Faults injected between client and server", .timeLimit(.minutes(3)))
struct FaultInjectionTests {
    /// A server with `alice`, a fault proxy in front of it, and a running client that goes through the proxy.
    func withProxiedClient(
        commandTimeout: Duration = .seconds(5),
        _ body: @Sendable (RedisServerProcess, RedisFaultProxy, RedisClient) async throws -> Void
    ) async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            do {
                let client = try RedisClient(
                    configuration: RedisClientConfiguration(
                        host: proxy.host,
                        port: proxy.port,
                        name: "fault",
                        commandTimeout: commandTimeout,
                        pool: .init(minimumConnections: 4, maximumConnections: 8, maximumConnectionAge: nil, leaseTimeout: .seconds(10))
                    ),
                    credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
                )
                try await withRunningClient(client) { client in try await body(server, proxy, client) }
            } catch {
                await proxy.close()
                throw error
            }
            await proxy.close()
        }
    }

    /// Runs traffic, applies `fault` `times` times (each after 200 more successes), then checks that
    /// traffic recovers within 5 seconds and that the server holds exactly what was acknowledged.
    func run(
        _ name: String,
        times: Int = 1,
        server: RedisServerProcess,
        client: RedisClient,
        fault: @Sendable () async throws -> Void
    ) async throws -> (report: FaultReport, recovery: Duration) {
        let prefix = "\(name):\(UUID().uuidString.prefix(8))"
        let stop = StopFlag()
        let traffic = Task { await faultTraffic(client: client, tasks: 8, prefix: prefix, stop: stop) }
        var recovery = Duration.zero
        for _ in 0..<times {
            await stop.waitForProgress(200, "before the fault")
            try await fault()
            let lifted = ContinuousClock.now
            await stop.waitForProgress(100, "after the fault")
            recovery = max(recovery, ContinuousClock.now - lifted)
        }
        stop.stop()
        let report = await traffic.value
        // The figures docs/RELIABILITY.md quotes.
        print("fault \(name): traffic back \(recovery) after the fault ended; \(report)")
        #expect(report.wrong.isEmpty, "\(report)")
        #expect(recovery < .seconds(5), "recovered within 5 s of the fault being lifted: \(recovery)")

        // Nothing acknowledged is lost, nothing appears that was not attempted.
        let admin = try await server.adminConnection()
        let keys = try await admin.send(RedisCommand("KEYS", .string("\(prefix):k:*"))).array?.count ?? -1
        let counter = Int(try await admin.send(RedisCommand("GET", .string("\(prefix):counter"))).string ?? "0") ?? -1
        await admin.close()
        #expect(keys >= report.setsAcknowledged && keys <= report.setsAttempted, "keys=\(keys) \(report)")
        #expect(counter >= report.incrementsAcknowledged && counter <= report.incrementsAcknowledged + report.incrementsUnknown, "counter=\(counter) \(report)")
        return (report, recovery)
    }

    @Test("connections reset under traffic: idempotent commands recover, INCRs in flight are outcomeUnknown, nothing is lost")
    func reset() async throws {
        try await self.withProxiedClient { server, proxy, client in
            let (report, _) = try await self.run("reset", times: 5, server: server, client: client) { await proxy.resetAll() }
            #expect(report.failedIdempotent.isEmpty && report.timedOut == 0, "\(report)")
        }
    }

    @Test("replies cut short mid-way: the connection closes, idempotent commands recover, nothing is lost")
    func truncatedReplies() async throws {
        try await self.withProxiedClient { server, proxy, client in
            let (report, _) = try await self.run("truncate", times: 3, server: server, client: client) {
                await proxy.truncateNextReply(keeping: 3)
                // Busy connections get their cut within milliseconds; idle ones must not keep it for later.
                try await Task.sleep(for: .milliseconds(50))
                await proxy.disarmReplyFaults()
            }
            #expect(report.failedIdempotent.isEmpty && report.timedOut == 0, "\(report)")
        }
    }

    @Test("garbage in the reply stream: a protocol error closes the connection; nothing garbled is reported as a reply")
    func garbage() async throws {
        try await self.withProxiedClient { server, proxy, client in
            let (report, _) = try await self.run("garbage", times: 3, server: server, client: client) {
                await proxy.injectIntoReplies(Array("?garbage\r\n".utf8))
                try await Task.sleep(for: .milliseconds(50))
                await proxy.disarmReplyFaults()
            }
            #expect(report.failedIdempotent.isEmpty && report.timedOut == 0, "\(report)")
        }
    }

    @Test("a one-second pause and a second of 30 ms latency, both within the deadline: no command fails")
    func pauseAndLatency() async throws {
        try await self.withProxiedClient { server, proxy, client in
            let (paused, _) = try await self.run("pause", server: server, client: client) {
                await proxy.setMode(.paused)
                try await Task.sleep(for: .seconds(1))
                await proxy.setMode(.forward)
            }
            #expect(paused.failedIdempotent.isEmpty && paused.timedOut == 0 && paused.incrementsUnknown == 0, "\(paused)")
            let (slow, _) = try await self.run("latency", server: server, client: client) {
                await proxy.setMode(.latency(.milliseconds(30)))
                try await Task.sleep(for: .seconds(1))
                await proxy.setMode(.forward)
            }
            #expect(slow.failedIdempotent.isEmpty && slow.timedOut == 0 && slow.incrementsUnknown == 0, "\(slow)")
        }
    }

    @Test("the server stopped (SIGSTOP) for a second, then continued: no command fails")
    func serverStopped() async throws {
        try await self.withProxiedClient { server, _, client in
            let (report, _) = try await self.run("sigstop", server: server, client: client) {
                server.kill(signal: SIGSTOP)
                try await Task.sleep(for: .seconds(1))
                server.kill(signal: SIGCONT)
            }
            #expect(report.failedIdempotent.isEmpty && report.timedOut == 0 && report.incrementsUnknown == 0, "\(report)")
        }
    }

    @Test("a blackhole longer than the command deadline: commands fail by their deadline, traffic is back within 5 s of the end")
    func blackhole() async throws {
        try await self.withProxiedClient(commandTimeout: .seconds(1)) { server, proxy, client in
            let (report, _) = try await self.run("blackhole", server: server, client: client) {
                await proxy.setMode(.blackhole)
                try await Task.sleep(for: .milliseconds(2500))
                await proxy.setMode(.forward)
            }
            #expect(report.failedIdempotent.isEmpty, "only deadlines may fail commands: \(report)")
        }
    }

    @Test("a resend that fails after an attempt that may have run reports outcomeUnknown, and the write did land")
    func resendAfterPossibleExecution() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            let client = try RedisClient(
                configuration: RedisClientConfiguration(
                    host: proxy.host,
                    port: proxy.port,
                    name: "fault",
                    pool: .init(minimumConnections: 1, maximumConnections: 1, maximumConnectionAge: nil, leaseTimeout: .seconds(1))
                ),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                await eventually("the pool's connection is up") { client.connectionsByCredentialVersion == ["v1": 1] }
                let key = uniqueKey("resend")
                // The SET reaches the server, its reply is cut off with the connection, and no new
                // connection can be made (the proxy accepts and never answers) before the lease deadline.
                await proxy.setMode(.blackholeNewConnections)
                await proxy.truncateNextReply(keeping: 0)
                let error = await #expect(throws: RedisError.self) {
                    try await client.send(RedisCommand("SET", .key(key), "landed").idempotent())
                }
                #expect(error?.code == .outcomeUnknown, "\(String(describing: error))")
                let admin = try await server.adminConnection()
                #expect(try await admin.send(RedisCommand("GET", .key(key))).string == "landed")
                await admin.close()
            }
            await proxy.close()
        }
    }

    @Test("half a TLS handshake (the server stops after its first bytes): connect fails with tlsHandshakeTimeout at the deadline; whole handshakes work again after")
    func halfTLSHandshake() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration()) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            var configuration = fixture.aliceConfiguration(server, context: try fixture.context(), serverName: "127.0.0.1")
            configuration.port = proxy.port
            configuration.handshakeTimeout = .seconds(1)
            await proxy.setMode(.limitServerBytes(200))
            let error = await #expect(throws: RedisError.self) { try await RedisConnection.connect(configuration: configuration) }
            #expect(error?.code == .tlsHandshakeTimeout, "\(String(describing: error))")
            await proxy.setMode(.forward)
            configuration.handshakeTimeout = .seconds(10)  // A whole handshake, on a machine that may be busy.
            let connection = try await RedisConnection.connect(configuration: configuration)
            #expect(try await connection.ping() == "PONG")
            await connection.close()
            await proxy.close()
        }
    }
}
