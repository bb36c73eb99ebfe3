import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
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

    /// One HTTP request to the example app; nil when it does not answer (yet).
    func http(_ method: String, _ port: Int, _ path: String) async -> String? {
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)\(path)")!)
        request.httpMethod = method
        request.timeoutInterval = 5
        guard let (data, response) = try? await URLSession.shared.data(for: request),
            (response as? HTTPURLResponse)?.statusCode == 200
        else { return nil }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test("HummingbirdApp: requests are served through a password rotation; SIGTERM shuts the HTTP server and the client down")
    func hummingbirdApp() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let passwordFile = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: password))\nversion=v1\n", to: passwordFile)
            let httpPort = try RedisServerProcess.freeLoopbackPort()
            let (status, stdout, stderr) = try await runTool(
                [passwordFile, "\(server.port)", "alice", "\(httpPort)"],
                executable: "HummingbirdApp",
                timeout: .seconds(60)
            ) { tool in
                await eventually("the app answers") { await self.http("GET", httpPort, "/health") != nil }
                #expect(await self.http("POST", httpPort, "/visits/home") == "1")
                #expect(await self.http("POST", httpPort, "/visits/home") == "2")
                // The password rotated under the running app: added on the server, then published in the file.
                let new = makePassword()
                try await server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
                try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: passwordFile)
                await eventually("the app's pool moved to v2") {
                    await self.http("GET", httpPort, "/health")?.hasPrefix("redis v2 connections v2=") == true
                }
                try await server.admin("ACL", "SETUSER", "alice", .string("<\(text(of: password))"))
                #expect(await self.http("POST", httpPort, "/visits/home") == "3")
                #expect(await self.http("GET", httpPort, "/visits/home") == "3")
                #expect(tool.terminate())
            }
            #expect(status == 0, "stdout: \(stdout)\nstderr: \(stderr)")
            #expect(!(stdout + stderr).contains(text(of: password)))
        }
    }
}
