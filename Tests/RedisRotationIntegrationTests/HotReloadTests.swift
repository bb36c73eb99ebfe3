import CoreMetrics
import Foundation
import MetricsTestKit
import RedisRotation
import RedisRotationTesting
import Synchronization
import Testing

/// Leases `count` connections at once and reports what each one's TLS handshake saw, so that every
/// connection of a pool of `count` is inspected.
func inspectAllConnections(_ client: RedisClient, count: Int) async throws -> [RedisTLSConnectionInfo] {
    let leased = StopFlag()
    return try await withThrowingTaskGroup(of: RedisTLSConnectionInfo?.self) { group in
        for _ in 0..<count {
            group.addTask {
                try await client.withConnection { connection in
                    leased.recordSuccess()
                    // Hold the lease until every task has one: then they are all different connections.
                    let deadline = ContinuousClock.now + .seconds(20)
                    while leased.successes < count && ContinuousClock.now < deadline {
                        try await Task.sleep(for: .milliseconds(5))
                    }
                    return connection.tlsInfo
                }
            }
        }
        return try await group.reduce(into: []) { if let info = $1 { $0.append(info) } }
    }
}

@Suite("Certificate hot reload under traffic", .timeLimit(.minutes(3)))
struct HotReloadTests {
    func clientConfiguration(_ server: RedisServerProcess, tls: RedisClientConfiguration.TLS, connections: Int = 4) -> RedisClientConfiguration {
        RedisClientConfiguration(
            host: server.host,
            port: server.port,
            name: "reload",
            tls: tls,
            pool: .init(minimumConnections: connections, maximumConnections: connections, maximumConnectionAge: nil, leaseTimeout: .seconds(20))
        )
    }

    @Test("the server certificate replaced with CONFIG SET (same CA): after a kill every handshake sees the new one")
    func serverCertificateRotation() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(keepPlainTextPort: true)) { server in
            let client = try RedisClient(
                configuration: self.clientConfiguration(server, tls: .init(context: try fixture.context())),
                credentials: .fixed(RedisCredentials(username: "alice", password: fixture.password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 32, prefix: "servercert", stop: stop) }
                await stop.waitForProgress(200, "before the rotation")
                let renewed = try fixture.ca.issueServer(commonName: "redis-server-renewed")
                let files = try renewed.write(to: server.directory, name: "server-renewed")
                try await server.admin("CONFIG", "SET", "tls-cert-file", .string(files.certificate), "tls-key-file", .string(files.privateKey))
                try await server.admin("CLIENT", "KILL", "USER", "alice")
                await stop.waitForProgress(300, "after the kill")
                let infos = try await inspectAllConnections(client, count: 4)
                #expect(infos.count == 4)
                #expect(infos.allSatisfy { $0.peerCertificate?.subject.contains("CN=redis-server-renewed") == true }, "\(infos.map { $0.peerCertificate?.subject ?? "-" })")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty, "\(report)")
            }
        }
    }

    @Test("CA rollover: the bundle gains the new CA, the server switches, the old CA is removed, all connections are killed; then the old CA is refused")
    func caRollover() async throws {
        let fixture = try TLSFixture()
        let newCA = try TestCertificateAuthority(name: "Next Root CA")
        try await RedisServerProcess.withServer(fixture.serverConfiguration(keepPlainTextPort: true)) { server in
            let bundle = server.directory.appendingPathComponent("trusted-cas.pem").path
            try writeAtomically(fixture.ca.certificate.certificatePEM, to: bundle)
            let client = try RedisClient(
                configuration: self.clientConfiguration(
                    server,
                    tls: .reloading(RedisTLSConfiguration(trustAnchors: [.file(bundle)]), debounce: .milliseconds(20), rolloverWindow: .milliseconds(500))
                ),
                credentials: .fixed(RedisCredentials(username: "alice", password: fixture.password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 32, prefix: "ca", stop: stop) }
                await stop.waitForProgress(200, "before the rollover")
                let first = try #require(client.currentTLSContext?.generation)

                // 1. Trust both.
                try writeAtomically(fixture.ca.certificate.certificatePEM + newCA.certificate.certificatePEM, to: bundle)
                await eventually("the two-CA generation is in use") { (client.currentTLSContext?.trustAnchors.count ?? 0) == 2 }
                let both = try #require(client.currentTLSContext?.generation)
                #expect(both != first)
                await eventually("every connection rolled onto it") { client.connectionsByTLSGeneration.keys.sorted() == [both] }

                // 2. The server switches to a certificate from the new CA.
                let files = try newCA.issueServer().write(to: server.directory, name: "server-next")
                try await server.admin("CONFIG", "SET", "tls-cert-file", .string(files.certificate), "tls-key-file", .string(files.privateKey))
                await stop.waitForProgress(200, "after the server switched")

                // 3. The old CA leaves the bundle; 4. every connection is killed.
                try writeAtomically(newCA.certificate.certificatePEM, to: bundle)
                await eventually("the new-CA-only generation is in use") {
                    client.currentTLSContext?.trustAnchors.map(\.subject) == [newCA.certificate.certificateSource].flatMap { try! RedisCertificate.load($0).map(\.subject) }
                }
                try await server.admin("CLIENT", "KILL", "USER", "alice")
                await stop.waitForProgress(300, "after the kill")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty, "\(report)")

                // A server certificate from the old CA alone is now refused.
                let old = try fixture.ca.issueServer().write(to: server.directory, name: "server-old")
                try await server.admin("CONFIG", "SET", "tls-cert-file", .string(old.certificate), "tls-key-file", .string(old.privateKey))
                let context = try #require(client.currentTLSContext)
                let error = await #expect(throws: RedisError.self) {
                    try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: context))
                }
                #expect(error?.code == .tlsUntrustedServerCertificate)
            }
        }
    }

    @Test("client certificate renewal with mutual TLS, key written first: no connection keeps the old identity")
    func clientCertificateRenewal() async throws {
        let fixture = try TLSFixture()
        let newCA = try TestCertificateAuthority(name: "Next Client CA")
        try await RedisServerProcess.withServer(
            fixture.serverConfiguration(clientCAs: [fixture.ca.certificate], clientAuthentication: .required, keepPlainTextPort: true)
        ) { server in
            let files = try fixture.ca.issueClient(commonName: "app-2026-11").write(to: server.directory, name: "client")
            let caFile = server.directory.appendingPathComponent("server-ca.pem").path
            try writeAtomically(fixture.ca.certificate.certificatePEM, to: caFile)
            let client = try RedisClient(
                configuration: self.clientConfiguration(
                    server,
                    tls: .reloading(
                        RedisTLSConfiguration(
                            trustAnchors: [.file(caFile)],
                            clientIdentity: RedisTLSClientIdentity(certificateChain: .file(files.certificate), privateKey: .file(files.privateKey))
                        ),
                        debounce: .milliseconds(20),
                        rolloverWindow: .milliseconds(500)
                    )
                ),
                credentials: .fixed(RedisCredentials(username: "alice", password: fixture.password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 32, prefix: "mtls", stop: stop) }
                await stop.waitForProgress(200, "before the renewal")

                // The server trusts the old and the new client CA during the overlap.
                let bundle = server.directory.appendingPathComponent("client-cas.pem").path
                try writeAtomically(fixture.ca.certificate.certificatePEM + newCA.certificate.certificatePEM, to: bundle)
                try await server.admin("CONFIG", "SET", "tls-ca-cert-file", .string(bundle))

                // The renewed pair, written in place and key first, as a careless secret manager would.
                let renewed = try newCA.issueClient(commonName: "app-2026-12")
                try renewed.privateKeyPEM.write(toFile: files.privateKey, atomically: false, encoding: .utf8)
                try await Task.sleep(for: .milliseconds(100))
                try renewed.certificatePEM.write(toFile: files.certificate, atomically: false, encoding: .utf8)
                await eventually("the renewed identity is in use") {
                    client.currentTLSContext?.clientCertificateChain.first?.subject.contains("CN=app-2026-12") == true
                }
                let renewedGeneration = try #require(client.currentTLSContext?.generation)
                await eventually("no connection keeps the old identity") { client.connectionsByTLSGeneration.keys.sorted() == [renewedGeneration] }
                var sawRolled = false
                for await event in client.events where event.kind == .tlsGenerationRolled {
                    sawRolled = event.detail.contains("\(renewedGeneration)")
                    if sawRolled { break }
                }
                #expect(sawRolled)

                // Now the server drops the old client CA and every connection reconnects.
                let newOnly = server.directory.appendingPathComponent("client-ca-new.pem").path
                try writeAtomically(newCA.certificate.certificatePEM, to: newOnly)
                try await server.admin("CONFIG", "SET", "tls-ca-cert-file", .string(newOnly))
                try await server.admin("CLIENT", "KILL", "USER", "alice")
                await stop.waitForProgress(300, "after the kill")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty, "\(report)")
                #expect(client.connectionsByTLSGeneration.keys.sorted() == [renewedGeneration])
            }
        }
    }

    @Test("bad TLS material written to the watched files is rejected with its own event; traffic is unaffected")
    func badMaterial() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(clientAuthentication: .required, keepPlainTextPort: true)) { server in
            let files = try fixture.ca.issueClient(commonName: "app").write(to: server.directory, name: "client")
            let caFile = server.directory.appendingPathComponent("server-ca.pem").path
            try writeAtomically(fixture.ca.certificate.certificatePEM, to: caFile)
            let client = try RedisClient(
                configuration: self.clientConfiguration(
                    server,
                    tls: .reloading(
                        RedisTLSConfiguration(
                            trustAnchors: [.file(caFile)],
                            clientIdentity: RedisTLSClientIdentity(certificateChain: .file(files.certificate), privateKey: .file(files.privateKey))
                        ),
                        debounce: .milliseconds(20)
                    )
                ),
                credentials: .fixed(RedisCredentials(username: "alice", password: fixture.password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                let generation = try #require(client.currentTLSContext?.generation)
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 16, prefix: "badtls", stop: stop) }
                await stop.waitForProgress(100, "before the bad writes")
                let now = Date()
                let good = try fixture.ca.issueClient()
                let expired = try fixture.ca.issueClient(notBefore: now.addingTimeInterval(-200_000), notAfter: now.addingTimeInterval(-100_000))
                let serverOnly = try fixture.ca.issueClient(usage: .clientWithoutClientAuth)
                let writes: [(certificate: String, privateKey: String, code: String)] = [
                    (String(good.certificatePEM.dropLast(30)), good.privateKeyPEM, "tlsMalformedPEM"),
                    (good.certificatePEM, try fixture.ca.issueClient().privateKeyPEM, "tlsKeyMismatch"),
                    (expired.certificatePEM, expired.privateKeyPEM, "tlsClientCertificateExpired"),
                    (serverOnly.certificatePEM, serverOnly.privateKeyPEM, "tlsClientCertificateMissingClientAuth"),
                ]
                var events = client.events.makeAsyncIterator()
                for (certificate, privateKey, code) in writes {
                    try writeAtomically(privateKey, to: files.privateKey)
                    try writeAtomically(certificate, to: files.certificate)
                    // The two files are written one after the other, as secret managers do: a reload may
                    // see the new key next to the previous certificate first (a starved test process
                    // leaves more than the 20 ms debounce between the writes). That pair is rejected too,
                    // for its own reason; the one for the pair as written must follow.
                    var rejections: [String] = []
                    while let event = await events.next() {
                        if event.kind == .tlsMaterialReloaded { Issue.record("bad material was accepted: \(event)") }
                        if event.kind == .tlsMaterialRejected {
                            rejections.append(event.detail)
                            if event.detail.hasPrefix(code) { break }
                            if rejections.count >= 3 {
                                Issue.record("no \(code) rejection: \(rejections)")
                                break
                            }
                        }
                    }
                    await stop.waitForProgress(100, "after writing bad material (\(code))")
                }
                #expect(client.currentTLSContext?.generation == generation, "the last good generation stays")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty && report.outcomeUnknown == 0, "\(report)")
            }
        }
    }

    @Test("connections are replaced ahead of their client certificate's expiry")
    func replacedBeforeExpiry() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(clientAuthentication: .required, keepPlainTextPort: true)) { server in
            // Expires in an hour and fifteen seconds; connections must go an hour before: within fifteen
            // seconds (ample for the first connections to open, even on a slow machine).
            let expiring = try fixture.ca.issueClient(commonName: "expiring", notAfter: Date().addingTimeInterval(3615))
            var configuration = self.clientConfiguration(server, tls: .init(context: try fixture.context(identity: expiring.identity)), connections: 2)
            configuration.pool.minimumConnections = 1
            configuration.expiry.replaceConnectionsBeforeCertificateExpiry = .seconds(3600)
            let client = try RedisClient(
                configuration: configuration,
                credentials: .fixed(RedisCredentials(username: "alice", password: fixture.password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 4, prefix: "expiring", stop: stop) }
                // A connection opened in the first seconds must be replaced when its deadline comes (one
                // opened later, already within the margin, is kept: a replacement would get the same
                // certificate; the expiry warning covers it).
                var replaced: RedisRotationEvent?
                for await event in client.events where event.kind == .connectionReplaced {
                    replaced = event
                    break
                }
                #expect(replaced?.detail == "closed by the pool")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty && report.outcomeUnknown == 0, "\(report)")
            }
        }
    }

    @Test("a client certificate that expires within a week is warned about at start, with a gauge of seconds left")
    func expiryWarning() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(keepPlainTextPort: true)) { server in
            let shortLived = try fixture.ca.issueClient(commonName: "short-lived", notAfter: Date().addingTimeInterval(2 * 86400))
            let metrics = TestMetrics()
            let client = try withMetricsFactory(metrics) {
                try RedisClient(
                    configuration: self.clientConfiguration(server, tls: .init(context: try fixture.context(identity: shortLived.identity))),
                    credentials: .fixed(RedisCredentials(username: "alice", password: fixture.password, version: "v1", expiresAt: Date().addingTimeInterval(20 * 86400)))
                )
            }
            try await withRunningClient(client) { client in
                var warnings: [String] = []
                for await event in client.events where event.kind == .expiryWarning {
                    warnings.append(event.detail)
                    if warnings.count == 2 { break }
                }
                #expect(warnings.contains { $0.contains("client certificate CN=short-lived") && $0.contains("in 2.0 days") }, "\(warnings)")
                #expect(warnings.contains { $0.contains("credential alice version v1") }, "\(warnings)")
                let subject = try #require(client.currentTLSContext?.clientCertificateChain.first?.subject)
                let left = try metrics.expectGauge(
                    "redis_rotation_seconds_until_expiry",
                    [("client", "reload"), ("item", "client certificate \(subject)")]
                ).lastValue
                #expect(left.map { $0 > 86400 && $0 <= 2 * 86400 } == true)
            }
        }
    }
}
