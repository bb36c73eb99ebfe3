import Foundation
import RedisRotation
import RedisRotationTesting
import Testing

/// `rotate server-certificate`: nothing changes unless the new pair is right, and a pair the next
/// handshake does not show is rolled back.
@Suite("redis-rotation rotate server-certificate", .timeLimit(.minutes(2)))
struct ServerCertificateRotationTests {
    struct Setup {
        let fixture: TLSFixture
        let server: RedisServerProcess
        let adminFile: String
        let caFile: String

        func run(certificate: String, key: String, _ extra: [String] = []) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await runTool([
                "rotate", "server-certificate", "--port", "\(try #require(self.server.plainTextPort))", "--admin-user", self.server.adminUsername,
                "--admin-password-file", self.adminFile, "--new-cert-file", certificate, "--new-key-file", key,
                "--ca-file", self.caFile, "--server-name", "localhost",
            ] + extra)
        }

        /// The subject a fresh handshake sees.
        func presented() async throws -> String? {
            let connection = try await RedisConnection.connect(configuration: self.fixture.aliceConfiguration(self.server, context: try self.fixture.context()))
            defer { Task { await connection.close() } }
            let subject = connection.tlsInfo?.peerCertificate?.subject
            await connection.close()
            return subject
        }

        func configuredCertificate() async throws -> String? {
            try await self.server.admin("CONFIG", "GET", "tls-cert-file").array?.last?.string
        }
    }

    func withSetup(_ body: (Setup) async throws -> Void) async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(serverCertificate: try fixture.ca.issueServer(commonName: "original"), keepPlainTextPort: true)) { server in
            let adminFile = server.directory.appendingPathComponent("admin.password").path
            try text(of: server.adminPassword).write(toFile: adminFile, atomically: true, encoding: .utf8)
            let caFile = server.directory.appendingPathComponent("ca.pem").path
            try fixture.ca.certificate.certificatePEM.write(toFile: caFile, atomically: true, encoding: .utf8)
            try await body(Setup(fixture: fixture, server: server, adminFile: adminFile, caFile: caFile))
        }
    }

    @Test("a key that does not match, an expired certificate, or names that do not cover the server are refused; nothing changes")
    func refusals() async throws {
        try await self.withSetup { setup in
            let before = try await setup.configuredCertificate()
            let a = try setup.fixture.ca.issueServer(commonName: "pair-a").write(to: setup.server.directory, name: "a")
            let b = try setup.fixture.ca.issueServer(commonName: "pair-b").write(to: setup.server.directory, name: "b")
            let mismatched = try await setup.run(certificate: a.certificate, key: b.privateKey)
            #expect(mismatched.status == 2, "\(mismatched.stdout)\(mismatched.stderr)")
            #expect(mismatched.stderr.contains("does not match the certificate"), "\(mismatched.stderr)")

            let expired = try setup.fixture.ca.issueServer(commonName: "expired", notBefore: Date().addingTimeInterval(-7200), notAfter: Date().addingTimeInterval(-3600))
                .write(to: setup.server.directory, name: "expired")
            let old = try await setup.run(certificate: expired.certificate, key: expired.privateKey)
            #expect(old.status == 2, "\(old.stdout)\(old.stderr)")
            #expect(old.stderr.contains("expired at"), "\(old.stderr)")

            let elsewhere = try setup.fixture.ca.issueServer(commonName: "elsewhere", dnsNames: ["redis.example.com"], ipAddresses: [])
                .write(to: setup.server.directory, name: "elsewhere")
            let uncovered = try await setup.run(certificate: elsewhere.certificate, key: elsewhere.privateKey)
            #expect(uncovered.status == 2, "\(uncovered.stdout)\(uncovered.stderr)")
            #expect(uncovered.stderr.contains("does not cover localhost") && uncovered.stderr.contains("redis.example.com"), "\(uncovered.stderr)")

            #expect(try await setup.configuredCertificate() == before)
            #expect(try await setup.presented()?.contains("CN=original") == true)
        }
    }

    @Test("a pair the next handshake does not show (untrusted issuer) is rolled back")
    func rollback() async throws {
        try await self.withSetup { setup in
            let before = try await setup.configuredCertificate()
            let stranger = try TestCertificateAuthority(name: "Stranger CA")
            let files = try stranger.issueServer(commonName: "untrusted").write(to: setup.server.directory, name: "untrusted")
            let result = try await setup.run(certificate: files.certificate, key: files.privateKey)
            #expect(result.status == 1, "\(result.stdout)\(result.stderr)")
            #expect(result.stdout.contains("[rollback]"), "\(result.stdout)")
            #expect(result.stderr.contains("was restored"), "\(result.stderr)")
            #expect(try await setup.configuredCertificate() == before)
            #expect(try await setup.presented()?.contains("CN=original") == true)
        }
    }

    @Test("a good pair is presented by the next handshake and survives a restart (CONFIG REWRITE)")
    func rotatesAndPersists() async throws {
        try await self.withSetup { setup in
            let files = try setup.fixture.ca.issueServer(commonName: "renewed").write(to: setup.server.directory, name: "renewed")
            let result = try await setup.run(certificate: files.certificate, key: files.privateKey, ["--json"])
            #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
            #expect(result.stdout.contains("\"step\":\"verify\""), "\(result.stdout)")
            #expect(try await setup.presented()?.contains("CN=renewed") == true)
            try await setup.server.restart()
            #expect(try await setup.presented()?.contains("CN=renewed") == true, "the rewritten configuration keeps the new pair")
        }
    }

    @Test("with --json a switch that is rolled back still ends with a failed result")
    func jsonResultOnFailure() async throws {
        try await self.withSetup { setup in
            let stranger = try TestCertificateAuthority(name: "Stranger CA")
            let files = try stranger.issueServer(commonName: "untrusted").write(to: setup.server.directory, name: "untrusted")
            let result = try await setup.run(certificate: files.certificate, key: files.privateKey, ["--json"])
            #expect(result.status == 1, "\(result.stdout)\(result.stderr)")
            let last = try JSONSerialization.jsonObject(with: Data(try #require(result.stdout.split(separator: "\n").last).utf8)) as? [String: Any]
            #expect(last?["type"] as? String == "result" && last?["result"] as? String == "failed", "\(result.stdout)")
            #expect(last?["code"] as? String == "verificationFailed", "\(result.stdout)")
        }
    }

    @Test("relative certificate paths are refused: the server would resolve them against its own directory")
    func relativePathsRefused() async throws {
        try await self.withSetup { setup in
            let before = try await setup.configuredCertificate()
            _ = try setup.fixture.ca.issueServer(commonName: "relative").write(to: setup.server.directory, name: "relative")
            let result = try await setup.run(certificate: "relative.crt", key: "relative.key")
            #expect(result.status == 2, "\(result.stdout)\(result.stderr)")
            #expect(result.stderr.contains("--new-cert-file must be an absolute path"), "\(result.stderr)")
            #expect(try await setup.configuredCertificate() == before)
        }
    }

    @Test("a CONFIG REWRITE that fails after the switch says the new pair is live but not saved")
    func rewriteFailureSaysLiveNotSaved() async throws {
        try await self.withSetup { setup in
            let password = makePassword()
            try await setup.server.admin("ACL", "SETUSER", "certadmin", "on", .string(">\(text(of: password))"), "~*", "&*", "+@all", "-config|rewrite")
            let adminFile = setup.server.directory.appendingPathComponent("certadmin.password").path
            try text(of: password).write(toFile: adminFile, atomically: true, encoding: .utf8)
            let files = try setup.fixture.ca.issueServer(commonName: "unsaved").write(to: setup.server.directory, name: "unsaved")
            let result = try await setup.run(certificate: files.certificate, key: files.privateKey, ["--admin-user", "certadmin", "--admin-password-file", adminFile])
            #expect(result.status == 1, "\(result.stdout)\(result.stderr)")
            #expect(result.stderr.contains("presents the new pair") && result.stderr.contains("live and not saved"), "\(result.stderr)")
            #expect(try await setup.presented()?.contains("CN=unsaved") == true)
        }
    }
}
