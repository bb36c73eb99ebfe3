import Foundation
import RedisRotation
import RedisRotationTesting
import Testing

/// The example programs, run as a user would run them against a real server, with the disruption
/// each one is about.
@Suite("Example programs", .timeLimit(.minutes(2)))
struct ExampleProgramTests {
    @Test("PubSubExample: its subscriber connection killed mid-stream, it reports the gap and no duplicate")
    func pubSubExample() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let passwordFile = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: password))\nversion=v1\n", to: passwordFile)
            let (status, stdout, stderr) = try await runTool(
                [passwordFile, "\(server.port)", "alice", "40"],
                executable: "PubSubExample",
                timeout: .seconds(60)
            ) { _ in
                // Once messages flow, kill the subscriber connection (not the publisher's).
                await eventually("the example subscribed") {
                    (try? await server.clients(of: "alice").contains { ($0["sub"].flatMap { Int($0) } ?? 0) > 0 }) == true
                }
                try await Task.sleep(for: .seconds(1))
                let subscriber = try #require(try await server.clients(of: "alice").first { ($0["sub"].flatMap { Int($0) } ?? 0) > 0 })
                try await server.admin("CLIENT", "KILL", "ID", .string(subscriber["id"] ?? "0"))
            }
            #expect(status == 0, "stdout: \(stdout)\nstderr: \(stderr)")
            #expect(stdout.contains("received 0"), "\(stdout)")
            #expect(stdout.contains("gap: messages published between"), "the kill is reported as a gap: \(stdout)")
            #expect(!stdout.contains("DUPLICATE"), "\(stdout)")
            #expect(stdout.contains("summary: "), "\(stdout)")
        }
    }

    @Test("MutualTLSHotReloadExample: a renewed client certificate is reloaded while it serves; Ctrl-C ends it cleanly")
    func mutualTLSExample() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(clientAuthentication: .required)) { server in
            let folder = server.directory
            let passwordFile = folder.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: fixture.password))\nversion=v1\n", to: passwordFile)
            let caFile = folder.appendingPathComponent("ca.pem").path
            try writeAtomically(fixture.ca.certificate.certificatePEM, to: caFile)
            let files = try fixture.ca.issueClient(commonName: "app").write(to: folder, name: "client")
            let (status, stdout, stderr) = try await runTool(
                [caFile, files.certificate, files.privateKey, passwordFile, "\(server.port)", "alice", "localhost"],
                executable: "MutualTLSHotReloadExample",
                timeout: .seconds(60)
            ) { tool in
                await eventually("the example connected") {
                    (try? await server.clients(of: "alice").contains { $0["name"]?.hasPrefix("mtls-example@") == true }) == true
                }
                let before = Set(try await server.clients(of: "alice").compactMap { $0["id"] })
                // Renewed as a certificate manager would: key and certificate, each written atomically.
                let renewed = try fixture.ca.issueClient(commonName: "app-renewed")
                try writeAtomically(renewed.privateKeyPEM, to: files.privateKey)
                try writeAtomically(renewed.certificatePEM, to: files.certificate)
                // Every connection is replaced by one of the new generation (over the 10 s roll-over).
                await eventually("the example's connections were replaced", timeout: .seconds(30)) {
                    let now = (try? await server.clients(of: "alice").compactMap { $0["id"] }) ?? []
                    return !now.isEmpty && before.isDisjoint(with: now)
                }
                #expect(tool.interrupt())
            }
            #expect(status == 0, "stdout: \(stdout)\nstderr: \(stderr)")
            #expect(stdout.contains("tlsMaterialReloaded"), "\(stdout)")
            #expect(!stdout.contains("command failed"), "\(stdout)")
        }
    }
}
