import Foundation
import RedisRotation
import RedisRotationTesting
import Testing

@Suite("redis-rotation rotate", .timeLimit(.minutes(3)))
struct RotateCommandTests {
    @Test("rotate password: the running client moves to the new version, then the old password stops working")
    func rotatePassword() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { server in
            let passwordFile = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: passwordFile)
            let adminFile = server.directory.appendingPathComponent("admin.password").path
            try text(of: server.adminPassword).write(toFile: adminFile, atomically: true, encoding: .utf8)
            let client = try RedisClient(
                configuration: RedisClientConfiguration(host: server.host, port: server.port, name: "app", pool: .init(minimumConnections: 4, maximumConnections: 4)),
                credentials: .file(passwordFile, username: "alice", pollInterval: .seconds(60))
            )
            try await withRunningClient(client) { client in
                await eventually("four connections on v1") { client.connectionsByCredentialVersion == ["v1": 4] }
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 8, prefix: "rotate", stop: stop) }

                // A connection of another process that never learns the new password.
                let straggler = try await RedisConnection.connect(
                    configuration: server.connectionConfiguration(username: "alice", password: old, name: "other@v1")
                )
                let common = [
                    "rotate", "password", "--port", "\(server.port)", "--admin-user", server.adminUsername,
                    "--admin-password-file", adminFile, "--user", "alice", "--password-file", passwordFile,
                ]
                let blocked = try await runTool(common + ["--version", "v2", "--wait", "2"])
                #expect(blocked.status == 1)
                #expect(blocked.stderr.contains("other@v1"), "\(blocked.stderr)")
                // The client moves even though another one does not (on a loaded machine, maybe after the wait).
                await eventually("the client moved to v2") { client.currentCredentialVersion == "v2" }
                // The old password still works: the straggler is not cut off without --kill-stragglers.
                let stillOld = try await RedisConnection.connect(configuration: server.connectionConfiguration(username: "alice", password: old))
                await stillOld.close()

                let rotated = try await runTool(common + ["--version", "v3", "--wait", "2", "--kill-stragglers"])
                #expect(rotated.status == 0, "\(rotated.stdout)\(rotated.stderr)")
                await straggler.waitUntilClosed()
                #expect(!straggler.isActive, "the straggler was disconnected")
                await eventually("every client connection on v3") { client.connectionsByCredentialVersion.keys.sorted() == ["v3"] }
                let names = try await server.clients(of: "alice").compactMap { $0["name"] }.filter { !$0.hasSuffix("-probe") }
                #expect(names.allSatisfy { $0 == "app@v3" }, "\(names)")
                // Only the newest password is left: v1's (kept when v2 could not complete) is gone too.
                let error = await #expect(throws: RedisError.self) {
                    try await RedisConnection.connect(configuration: server.connectionConfiguration(username: "alice", password: old))
                }
                #expect(error?.code == .authenticationFailed)

                stop.stop()
                let report = await traffic.value
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty && report.outcomeUnknown == 0, "\(report)")
            }
        }
    }

    @Test("rotate server-certificate: new handshakes see the new certificate")
    func rotateServerCertificate() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(keepPlainTextPort: true)) { server in
            let adminFile = server.directory.appendingPathComponent("admin.password").path
            try text(of: server.adminPassword).write(toFile: adminFile, atomically: true, encoding: .utf8)
            let files = try fixture.ca.issueServer(commonName: "rotated-by-tool").write(to: server.directory, name: "rotated")
            let caFile = server.directory.appendingPathComponent("ca.pem").path
            try fixture.ca.certificate.certificatePEM.write(toFile: caFile, atomically: true, encoding: .utf8)
            let result = try await runTool([
                "rotate", "server-certificate", "--port", "\(try #require(server.plainTextPort))", "--admin-user", server.adminUsername,
                "--admin-password-file", adminFile, "--new-cert-file", files.certificate, "--new-key-file", files.privateKey,
                "--kill-user", "alice", "--ca-file", caFile, "--server-name", "localhost",
            ])
            #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
            let connection = try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: try fixture.context()))
            #expect(connection.tlsInfo?.peerCertificate?.subject.contains("CN=rotated-by-tool") == true)
            await connection.close()
        }
    }
}
