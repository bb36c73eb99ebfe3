import Foundation
import RedisRotationTesting
import Testing

@testable import RedisRotation

@Suite("Redis URLs against a real server", .timeLimit(.minutes(1)))
struct RedisURLIntegrationTests {
    @Test("a client from a URL with a password file, and one with the password in the URL, both serve on the chosen database")
    func urlClients() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let file = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: password))\nversion=v1\n", to: file)
            var fromFile = try RedisURL("redis://alice@\(server.host):\(server.port)/2?password_file=\(file)&name=url-test")
            // A starved test process may take a while to connect the first time.
            fromFile.configuration.pool.leaseTimeout = .seconds(20)
            try await withRunningClient(try RedisClient(configuration: fromFile.configuration, credentials: fromFile.credentials)) { client in
                try await client.set("url:key", to: "from-file")
                #expect(client.currentCredentialVersion == "v1")
            }
            let encoded = text(of: password).addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
            var inline = try RedisURL("redis://alice:\(encoded)@\(server.host):\(server.port)/2")
            inline.configuration.pool.leaseTimeout = .seconds(20)
            #expect(!inline.description.contains(encoded))
            try await withRunningClient(try RedisClient(configuration: inline.configuration, credentials: inline.credentials)) { client in
                let value = try await client.get("url:key", as: String.self)
                #expect(value == "from-file")
            }
            // The key went to database 2, not 0.
            #expect(try await server.admin("EXISTS", "url:key").int == 0)
        }
    }
}
