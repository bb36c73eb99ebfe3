import Foundation
import RedisRotation
import RedisRotationTesting
import Testing

@Suite("redis-rotation rotate ca", .timeLimit(.minutes(2)))
struct CARolloverTests {
    @Test("rotate ca under traffic: both CAs, clients reconnect, new server certificate, new CA only; no command fails")
    func rollover() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(keepPlainTextPort: true)) { server in
            let folder = server.directory
            let bundle = folder.appendingPathComponent("trusted.pem").path
            try fixture.ca.certificate.certificatePEM.write(toFile: bundle, atomically: true, encoding: .utf8)
            let newCA = try TestCertificateAuthority(name: "Next Root \(UUID().uuidString.prefix(6))")
            let newCAFile = folder.appendingPathComponent("next-ca.pem").path
            try newCA.certificate.certificatePEM.write(toFile: newCAFile, atomically: true, encoding: .utf8)
            let serverFiles = try newCA.issueServer(commonName: "issued-by-next").write(to: folder, name: "next-server")
            let adminFile = folder.appendingPathComponent("admin.password").path
            try text(of: server.adminPassword).write(toFile: adminFile, atomically: true, encoding: .utf8)
            let arguments = [
                "rotate", "ca", "--port", "\(try #require(server.plainTextPort))", "--admin-user", server.adminUsername,
                "--admin-password-file", adminFile, "--bundle-file", bundle, "--new-ca-file", newCAFile,
                "--new-cert-file", serverFiles.certificate, "--new-key-file", serverFiles.privateKey,
                "--server-name", "localhost", "--user", "alice", "--wait", "30", "--reload-grace", "1",
            ]

            // A server certificate from the old CA is refused before anything changes.
            let wrongIssuer = try fixture.ca.issueServer(commonName: "old-ca").write(to: folder, name: "old-ca-server")
            let refused = try await runTool(arguments.map { $0 == serverFiles.certificate ? wrongIssuer.certificate : $0 == serverFiles.privateKey ? wrongIssuer.privateKey : $0 })
            #expect(refused.status == 2, "\(refused.stdout)\(refused.stderr)")
            #expect(refused.stderr.contains("not by the new CA"), "\(refused.stderr)")
            #expect(try RedisCertificate.load(.file(bundle)).count == 1)

            let client = try RedisClient(
                configuration: RedisClientConfiguration(
                    host: server.host,
                    port: server.port,
                    name: "app",
                    tls: .reloading(
                        RedisTLSConfiguration(trustAnchors: [.file(bundle)]),
                        serverName: "localhost",
                        pollInterval: .seconds(1),
                        debounce: .milliseconds(20),
                        rolloverWindow: .milliseconds(500)
                    ),
                    pool: .init(minimumConnections: 2, maximumConnections: 4)
                ),
                credentials: .fixed(RedisCredentials(username: "alice", password: fixture.password, version: "v1"))
            )
            try await withRunningClient(client) { client in
                await eventually("the pool is up") { client.connectionsByCredentialVersion["v1", default: 0] >= 2 }
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 4, prefix: "ca", stop: stop) }
                await stop.waitForProgress(100, "before the rollover")

                let result = try await runTool(arguments)
                #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
                #expect(result.stdout.contains("[verify]"), "\(result.stdout)")
                let anchors = try RedisCertificate.load(.file(bundle))
                #expect(anchors.map(\.sha256Fingerprint) == (try RedisCertificate.load(.file(newCAFile))).map(\.sha256Fingerprint), "the bundle ends with the new CA only")

                await stop.waitForProgress(100, "after the rollover")
                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty, "\(report)")
            }
            // A fresh handshake trusting only the new CA sees the new certificate.
            let context = try fixture.context(anchors: [.file(newCAFile)])
            let connection = try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: context, serverName: "localhost"))
            #expect(connection.tlsInfo?.peerCertificate?.subject.contains("CN=issued-by-next") == true)
            await connection.close()
        }
    }
}
