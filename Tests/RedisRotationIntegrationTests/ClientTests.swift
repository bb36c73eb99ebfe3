import Foundation
import RedisRotation
import RedisRotationTesting
import Synchronization
import Testing

@Suite("Rotation-aware client against a real redis-server", .timeLimit(.minutes(3)))
struct ClientTests {
    func configuration(_ server: RedisServerProcess, maximumConnections: Int = 8) -> RedisClientConfiguration {
        RedisClientConfiguration(
            host: server.host,
            port: server.port,
            name: "test",
            pool: .init(minimumConnections: 2, maximumConnections: maximumConnections, maximumConnectionAge: nil, leaseTimeout: .seconds(10)),
            rotation: .init(probeBackoffBase: .milliseconds(50), probeBackoffCap: .milliseconds(400), maximumProbeAttempts: 6)
        )
    }

    /// A server where `alice` has password `one`, a password file holding it as version v1.
    func withRotationSetup(
        _ body: @Sendable (RedisServerProcess, String, RedisSecret) async throws -> Void
    ) async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { server in
            let file = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: file)
            try await body(server, file, old)
        }
    }

    @Test("commands through the pool from many tasks, with typed helpers and withConnection")
    func basicTraffic() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: self.configuration(server),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                async let report = runTraffic(client: client, tasks: 32, prefix: "basic", stop: stop)
                await stop.waitForProgress(2000, "through the pool")
                stop.stop()
                let result = await report
                #expect(result.failedIdempotent.isEmpty && result.failedOther.isEmpty && result.outcomeUnknown == 0, "\(result)")
                #expect(try await client.get("basic:counter", as: Int.self) == result.incrementsAcknowledged)

                let value = try await client.withConnection { connection in
                    try await connection.send(RedisCommand("MULTI"))
                    try await connection.send(RedisCommand("INCR", "basic:tx"))
                    return try await connection.send(RedisCommand("EXEC"))
                }
                #expect(value.array?.first?.int == 1)
                #expect(client.currentCredentialVersion == "v1")
                #expect(client.connectionsByCredentialVersion.keys.sorted() == ["v1"])
            }
        }
    }

    @Test("the rotation flow under 32 tasks: add, publish, remove, kill; nothing fails, every connection ends on the new version")
    func rotationFlow() async throws {
        try await self.withRotationSetup { server, file, old in
            let new = makePassword()
            let client = try RedisClient(configuration: self.configuration(server, maximumConnections: 12), credentials: .file(file, username: "alice"))
            try await withRunningClient(client) { client in
                let seen = Lock<[String]>([])
                let events = Task { for await event in client.events { seen.withLock { $0.append("\(event)") } } }
                defer { events.cancel() }
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 32, prefix: "flow", stop: stop) }
                await stop.waitForProgress(200, "before the rotation")
                // A settled pool: every connection on the server is one the client counts (a hedged handshake's
                // surplus, closed as soon as it opens, is not part of the picture).
                var before: [[String: String]] = []
                _ = try await eventually("the server's connections are the client's") {
                    before = try await server.clients(of: "alice").filter { $0["name"]?.hasPrefix("test@") == true }
                    return before.count == client.connectionsByCredentialVersion.values.reduce(0, +)
                }
                #expect(!before.isEmpty)
                #expect(before.allSatisfy { $0["name"] == "test@v1" })

                // 1. The operator adds the new password; 2. the secret manager publishes it.
                try await server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
                try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
                await eventually("the client promoted v2 and every connection re-authenticated") {
                    client.currentCredentialVersion == "v2" && client.connectionsByCredentialVersion.keys.sorted() == ["v2"]
                }
                // Re-authentication happened in place: the connections seen before are still there, renamed.
                let after = try await server.clients(of: "alice")
                let afterByID = Dictionary(after.map { ($0["id"] ?? "", $0) }, uniquingKeysWith: { first, _ in first })
                for connection in before {
                    #expect(
                        afterByID[connection["id"] ?? ""]?["name"] == "test@v2",
                        "connection \(connection["id"] ?? "?") was not re-authenticated in place; events: \(seen.withLock { $0.filter { !$0.contains("connectionReauthenticated") } })"
                    )
                }

                // 3. The operator removes the old password and kills the user's connections.
                try await server.admin("ACL", "SETUSER", "alice", .string("<\(text(of: old))"))
                try await server.admin("CLIENT", "KILL", "USER", "alice")
                await stop.waitForProgress(500, "after the kill")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty, "\(report)")
                #expect(report.failedOther.isEmpty, "\(report)")

                // Everything is on v2, on both sides.
                #expect(client.connectionsByCredentialVersion.keys.sorted() == ["v2"])
                let names = try await server.clients(of: "alice").compactMap { $0["name"] }.filter { !$0.hasSuffix("-probe") }
                #expect(!names.isEmpty && names.allSatisfy { $0 == "test@v2" }, "\(names)")
                // INCRs in flight at the kill may or may not have executed; the counter says which.
                let counter = try await client.get("flow:counter", as: Int.self) ?? 0
                #expect(counter >= report.incrementsAcknowledged && counter <= report.incrementsAcknowledged + report.outcomeUnknown)
            }
        }
    }

    @Test("a password that reaches the client before the server is promoted once the server learns it")
    func clientLearnsFirst() async throws {
        try await self.withRotationSetup { server, file, _ in
            let new = makePassword()
            let client = try RedisClient(configuration: self.configuration(server), credentials: .file(file, username: "alice"))
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 8, prefix: "early", stop: stop) }
                try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
                await eventually("v2 is pending") { client.pendingCredentialVersion == "v2" }
                // A rejected probe, and traffic flowing on v1 meanwhile. (The server learns the password
                // right after, while the probe still retries: its budget is a few seconds in this suite.)
                for await event in client.events where event.kind == .probeFailed { break }
                #expect(client.currentCredentialVersion == "v1", "not promoted while the server does not know it")
                try await server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
                await stop.waitForProgress(100, "while v2 was pending")
                await eventually("v2 promoted") {
                    client.currentCredentialVersion == "v2" && client.connectionsByCredentialVersion.keys.sorted() == ["v2"]
                }
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty && report.outcomeUnknown == 0, "\(report)")
            }
        }
    }

    @Test("a wrong password in the file: traffic goes on, rejections are reported, failed AUTHs stay bounded")
    func wrongPasswordInFile() async throws {
        try await self.withRotationSetup { server, file, _ in
            try await server.admin("ACL", "LOG", "RESET")
            let client = try RedisClient(configuration: self.configuration(server), credentials: .file(file, username: "alice"))
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 8, prefix: "wrong", stop: stop) }
                try writeAtomically("password=definitely-wrong\nversion=v2\n", to: file)
                var probeFailures = 0
                for await event in client.events where event.kind == .probeFailed {
                    probeFailures += 1
                    if event.detail.contains("giving up") { break }
                }
                #expect(probeFailures == 6)
                await stop.waitForProgress(200, "after the probes gave up")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty && report.outcomeUnknown == 0, "\(report)")
                #expect(client.currentCredentialVersion == "v1")
                // The server saw exactly the probes, no storm of attempts.
                let log = try await server.admin("ACL", "LOG", "128").array ?? []
                let authFailures = log.reduce(0) { count, entry in
                    let fields = entry.array ?? []
                    var reason: String?
                    var entries = 1
                    var index = 0
                    while index + 1 < fields.count {
                        if fields[index].string == "reason" { reason = fields[index + 1].string }
                        if fields[index].string == "count" { entries = fields[index + 1].int ?? 1 }
                        index += 2
                    }
                    return reason == "auth" ? count + entries : count
                }
                #expect(authFailures <= 6, "ACL LOG shows \(authFailures) failed AUTHs")
            }
        }
    }

    @Test("the whole pool killed five times under load: idempotent commands never fail")
    func repeatedKills() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: self.configuration(server),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 32, prefix: "kills", stop: stop) }
                for _ in 0..<5 {
                    await stop.waitForProgress(200, "before a kill")
                    try await server.admin("CLIENT", "KILL", "USER", "alice")
                }
                await stop.waitForProgress(200, "after the last kill")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty, "\(report)")
                #expect(report.failedOther.isEmpty, "only the may-have-executed code is allowed: \(report)")
                let counter = try await client.get("kills:counter", as: Int.self) ?? 0
                #expect(counter >= report.incrementsAcknowledged && counter <= report.incrementsAcknowledged + report.outcomeUnknown)
            }
        }
    }
}

@Suite("Rotation-aware client: recovery", .timeLimit(.minutes(3)))
struct ClientRecoveryTests {
    func configuration(_ server: RedisServerProcess) -> RedisClientConfiguration {
        RedisClientConfiguration(
            host: server.host,
            port: server.port,
            name: "test",
            pool: .init(minimumConnections: 2, maximumConnections: 8, maximumConnectionAge: nil, leaseTimeout: .seconds(20)),
            rotation: .init(probeBackoffBase: .milliseconds(50), probeBackoffCap: .milliseconds(400), maximumProbeAttempts: 6)
        )
    }

    @Test("a server restarted on the same port: the client recovers by itself")
    func serverRestart() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: self.configuration(server),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 8, prefix: "restart", stop: stop) }
                await stop.waitForProgress(200, "before the restart")
                try await server.restart()
                await stop.waitForProgress(200, "after the restart")
                stop.stop()
                let report = await traffic.value
                // Reads and idempotent writes may fail only while the server is down longer than their retry
                // budget allows; afterwards everything flows again.
                #expect(report.failedOther.isEmpty, "\(report)")
                #expect(try await client.ping() == "PONG")
                #expect(client.connectionsByCredentialVersion.keys.sorted() == ["v1"])
            }
        }
    }

    @Test("SIGKILL, then a restart that loads the append-only file slowly: commands retry on LOADING, none fails, nothing acknowledged is lost")
    func loadingAfterCrash() async throws {
        let password = makePassword()
        // appendfsync always: with everysec, Redis may postpone the AOF write while replies go out, so a
        // SIGKILL can lose acknowledged writes on the server's side. key-load-delay (µs per key) makes
        // loading take about a second; events are processed every KiB, so the server answers -LOADING
        // meanwhile instead of not answering at all.
        let persistence = ["appendonly yes", "appendfsync always", "key-load-delay 200", "loading-process-events-interval-bytes 1024"]
        try await withAliceServer(password: password, extraConfiguration: persistence) { server in
            let admin = try await server.adminConnection()
            for batch in 0..<10 {
                _ = try await admin.pipeline((0..<500).map { RedisCommand("SET", .string("filler:\(batch * 500 + $0)"), .bytes([UInt8](repeating: 1, count: 64))) })
            }
            try await admin.send(RedisCommand("BGREWRITEAOF"))
            await eventually("the AOF rewrite finished") {
                let info = (try? await admin.send(RedisCommand("INFO", "persistence")).string) ?? ""
                return info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0")
            }
            await admin.close()

            var configuration = self.configuration(server)
            configuration.commandTimeout = .seconds(15)
            let client = try RedisClient(
                configuration: configuration,
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 8, prefix: "loading", stop: stop) }
                await stop.waitForProgress(200, "before the crash")
                server.kill(signal: SIGKILL)
                #expect(await server.waitForExit(timeout: .seconds(5)))
                let restart = Task { try await server.restart(timeout: .seconds(30)) }
                // The test is only meaningful if the server did answer LOADING for a while.
                var sawLoading = false
                await eventually("the restarted server answered, LOADING first") {
                    var probe = server.adminConnectionConfiguration()
                    probe.connectTimeout = .milliseconds(200)
                    guard let connection = try? await RedisConnection.connect(configuration: probe) else { return false }
                    defer { Task { await connection.close() } }
                    do {
                        try await connection.ping()
                        return true
                    } catch let error as RedisError where error.serverErrorPrefix == "LOADING" {
                        sawLoading = true
                        return false
                    } catch {
                        return false
                    }
                }
                try await restart.value
                #expect(sawLoading)
                await stop.waitForProgress(200, "after the restart")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty, "\(report)")
                let counter = try await client.get("loading:counter", as: Int.self) ?? 0
                #expect(counter >= report.incrementsAcknowledged, "no acknowledged INCR was lost")
                #expect(counter <= report.incrementsAcknowledged + report.outcomeUnknown)
            }
        }
    }

    @Test("a WRONGPASS on the known-good credential is not fatal while another candidate remains")
    func candidateFallback() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { server in
            let file = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: file)
            let new = makePassword()
            var configuration = self.configuration(server)
            // No probe retries: only a regular connection can find out that v2 works.
            configuration.rotation = .init(probeBackoffBase: .seconds(60), probeBackoffCap: .seconds(60), maximumProbeAttempts: 1)
            let client = try RedisClient(configuration: configuration, credentials: .file(file, username: "alice"))
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 8, prefix: "fallback", stop: stop) }
                try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
                await eventually("v2 is pending") { client.pendingCredentialVersion == "v2" }
                for await event in client.events where event.kind == .probeFailed { break }
                // The server swaps the passwords at once and drops every connection.
                try await server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"), .string("<\(text(of: old))"))
                try await server.admin("CLIENT", "KILL", "USER", "alice")
                await eventually("connections came back on v2") {
                    client.currentCredentialVersion == "v2" && client.connectionsByCredentialVersion.keys.sorted() == ["v2"]
                }
                await stop.waitForProgress(200, "after the swap")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty, "\(report)")
            }
        }
    }

    @Test("a password rolled back on the server: the rejected one is demoted, traffic serves on the previous one, no reconnect storm")
    func rollback() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { server in
            let file = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: file)
            let new = makePassword()
            let client = try RedisClient(configuration: self.configuration(server), credentials: .file(file, username: "alice"))
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 8, prefix: "rollback", stop: stop) }
                await stop.waitForProgress(200, "before the rotation")
                try await server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
                try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
                await eventually("every connection moved to v2") {
                    client.currentCredentialVersion == "v2" && client.connectionsByCredentialVersion.keys.sorted() == ["v2"]
                }

                // The operator rolls back: the new password is removed and every connection of the user dropped.
                // The client still holds v2 as current and v1 as previous.
                try await server.admin("ACL", "SETUSER", "alice", .string("<\(text(of: new))"))
                try await server.admin("ACL", "LOG", "RESET")
                let openedBefore = client.statistics.connectionsOpened
                try await server.admin("CLIENT", "KILL", "USER", "alice")
                await eventually("v2 was demoted") { client.currentCredentialVersion == "v1" }
                await eventually("every connection serves on v1") { client.connectionsByCredentialVersion.keys.sorted() == ["v1"] }
                await stop.waitForProgress(3000, "after the rollback")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty, "\(report)")

                // Measured before the fix: thousands of connections and failed logins within seconds.
                let opened = client.statistics.connectionsOpened - openedBefore
                #expect(opened <= 16, "\(opened) connections opened after the rollback")
                let log = try await server.admin("ACL", "LOG")
                let failedLogins = (log.array ?? []).reduce(0) { total, entry in
                    let fields = entry.array ?? []
                    let pairs = stride(from: 0, to: fields.count - 1, by: 2).map { (fields[$0].string ?? "", fields[$0 + 1]) }
                    let reason = pairs.first { $0.0 == "reason" }?.1.string
                    return total + (reason == "auth" ? (pairs.first { $0.0 == "count" }?.1.int ?? 0) : 0)
                }
                #expect(failedLogins <= 24, "\(failedLogins) failed logins after the rollback")
                #expect(try await client.ping() == "PONG")
            }
        }
    }

    @Test("credentials the server rejects outright fail commands at once with credentialsRejected, naming the versions tried")
    func allCandidatesRejected() async throws {
        try await withAliceServer(password: makePassword()) { server in
            var configuration = self.configuration(server)
            // Far beyond the test's time limit: a command that waited for the lease deadline would fail the test.
            configuration.pool.leaseTimeout = .seconds(600)
            let client = try RedisClient(
                configuration: configuration,
                credentials: .fixed(RedisCredentials(username: "alice", password: "wrong", version: "v7"))
            )
            try await withRunningClient(client) { client in
                // Whether the command arrives before or after the first connect attempt fails, it fails with
                // the rejection, not with leaseTimeout.
                for _ in 0..<3 {
                    let error = await #expect(throws: RedisError.self) { try await client.ping() }
                    #expect(error?.code == .credentialsRejected)
                    #expect(error?.message.contains("versions tried: v7") == true, "\(String(describing: error))")
                }
                for await event in client.events where event.kind == .credentialRejected {
                    #expect(event.credentialVersion == "v7")
                    break
                }
            }
        }
    }
}

@Suite("Rotation-aware client over TLS", .timeLimit(.minutes(2)))
struct ClientTLSTests {
    @Test("the pool rotates a password over mutual TLS, re-authenticating in place")
    func rotationOverMutualTLS() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(clientAuthentication: .required)) { server in
            let file = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: fixture.password))\nversion=v1\n", to: file)
            let context = try fixture.context(identity: try fixture.ca.issueClient(commonName: "pool").identity)
            let client = try RedisClient(
                configuration: RedisClientConfiguration(
                    host: server.host,
                    port: server.port,
                    name: "tls-pool",
                    tls: .init(context: context),
                    pool: .init(minimumConnections: 2, maximumConnections: 6, maximumConnectionAge: nil, leaseTimeout: .seconds(10))
                ),
                credentials: .file(file, username: "alice")
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 16, prefix: "tls", stop: stop) }
                await stop.waitForProgress(200, "over TLS")
                let new = makePassword()
                try await server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
                try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
                await eventually("every connection on v2") {
                    client.currentCredentialVersion == "v2" && client.connectionsByCredentialVersion.keys.sorted() == ["v2"]
                }
                try await server.admin("CLIENT", "KILL", "USER", "alice")
                await stop.waitForProgress(200, "after the kill")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty, "\(report)")
            }
        }
    }
}
