import Foundation
import RedisRotation
import RedisRotationTesting
import Testing

@Suite("redis-rotation inspect", .timeLimit(.minutes(2)))
struct InspectCommandTests {
    let directory: URL

    init() throws {
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("rr-inspect-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
    }

    func path(_ name: String) -> String { self.directory.appendingPathComponent(name).path }

    @Test("healthy material gives no warnings and exit 0; the password is never printed")
    func healthy() async throws {
        defer { try? FileManager.default.removeItem(at: self.directory) }
        let ca = try TestCertificateAuthority(name: "Inspect Root")
        let client = try ca.issueClient(commonName: "orders-api", notAfter: Date().addingTimeInterval(200 * 86400))
            .write(to: self.directory, name: "client")
        try ca.certificate.certificatePEM.write(toFile: self.path("ca.pem"), atomically: true, encoding: .utf8)
        let secret = "s3cret-\(UUID().uuidString)"
        try "password=\(secret)\nversion=v3\n".write(toFile: self.path("app.password"), atomically: true, encoding: .utf8)
        let result = try await runTool([
            "inspect", "--user", "app", "--password-file", self.path("app.password"), "--ca-file", self.path("ca.pem"),
            "--cert-file", client.certificate, "--key-file", client.privateKey,
        ])
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("version:     v3"))
        #expect(result.stdout.contains("CN=orders-api"))
        #expect(result.stdout.contains("SHA-256:"))
        #expect(result.stdout.contains("no warnings"))
        #expect(!result.stdout.contains(secret) && !result.stderr.contains(secret))
    }

    @Test("the default user, a password expiring soon, a non-CA anchor and a certificate without client-auth EKU are warned about")
    func warnings() async throws {
        defer { try? FileManager.default.removeItem(at: self.directory) }
        let ca = try TestCertificateAuthority(name: "Inspect Root")
        let serverOnly = try ca.issueClient(commonName: "wrong-usage", usage: .clientWithoutClientAuth).write(to: self.directory, name: "client")
        try (ca.certificate.certificatePEM + (try ca.issueServer().certificatePEM)).write(toFile: self.path("ca.pem"), atomically: true, encoding: .utf8)
        let soon = ISO8601DateFormatter().string(from: Date().addingTimeInterval(5 * 86400))
        try "password=hunter2\nversion=v9\nexpires=\(soon)\n".write(toFile: self.path("default.password"), atomically: true, encoding: .utf8)
        let result = try await runTool([
            "inspect", "--password-file", self.path("default.password"), "--ca-file", self.path("ca.pem"),
            "--cert-file", serverOnly.certificate, "--key-file", serverOnly.privateKey,
        ])
        #expect(result.status == 1)
        #expect(result.stdout.contains("the default user is in use"))
        #expect(result.stdout.contains("the password (version v9) expires in"))
        #expect(result.stdout.contains("is not a CA certificate"))
        #expect(result.stdout.contains("lacks the TLS Web Client Authentication"))
        #expect(!result.stdout.contains("hunter2"))
    }

    @Test("--json gives one object with the same facts and warnings, and never the password")
    func json() async throws {
        defer { try? FileManager.default.removeItem(at: self.directory) }
        let ca = try TestCertificateAuthority(name: "Inspect Root")
        let client = try ca.issueClient(commonName: "orders-api").write(to: self.directory, name: "client")
        try ca.certificate.certificatePEM.write(toFile: self.path("ca.pem"), atomically: true, encoding: .utf8)
        let secret = "s3cret-\(UUID().uuidString)"
        try "password=\(secret)\nversion=v4\n".write(toFile: self.path("default.password"), atomically: true, encoding: .utf8)
        let result = try await runTool([
            "inspect", "--json", "--password-file", self.path("default.password"), "--ca-file", self.path("ca.pem"),
            "--cert-file", client.certificate, "--key-file", client.privateKey,
        ])
        #expect(result.status == 1, "the default user is a warning: \(result.stdout)\(result.stderr)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], "\(result.stdout)")
        #expect((object["credentials"] as? [String: Any])?["version"] as? String == "v4")
        #expect((object["trust_anchors"] as? [[String: Any]])?.first?["is_ca"] as? Bool == true)
        #expect(((object["client_certificate"] as? [String: Any])?["subject"] as? String)?.contains("CN=orders-api") == true)
        #expect((object["warnings"] as? [String])?.contains { $0.contains("the default user is in use") } == true)
        #expect(!result.stdout.contains(secret))
    }

    @Test("a missing file is a configuration error naming it")
    func missingFile() async throws {
        defer { try? FileManager.default.removeItem(at: self.directory) }
        let result = try await runTool(["inspect", "--ca-file", "/nonexistent/ca.pem"])
        #expect(result.status == 2)
        #expect(result.stderr.contains("/nonexistent/ca.pem"))
    }
}
