import CoreMetrics
import Foundation
import MetricsTestKit
import RedisRotation
import RedisRotationTesting
import Testing

@Suite("Rotation-aware client: metrics", .timeLimit(.minutes(2)))
struct ClientMetricsTests {
    @Test("connections per credential version, re-auths, connects and lease waits are recorded")
    func metrics() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { server in
            let file = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: file)
            let metrics = TestMetrics()
            let client = try withMetricsFactory(metrics) {
                try RedisClient(
                    configuration: RedisClientConfiguration(
                        host: server.host,
                        port: server.port,
                        name: "metered",
                        pool: .init(minimumConnections: 3, maximumConnections: 3, maximumConnectionAge: nil)
                    ),
                    credentials: .file(file, username: "alice")
                )
            }
            try await withRunningClient(client) { client in
                await eventually("three connections on v1") { client.connectionsByCredentialVersion == ["v1": 3] }
                try await client.ping()
                let new = makePassword()
                try await server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
                try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
                await eventually("three connections on v2") { client.connectionsByCredentialVersion == ["v2": 3] }
                try await client.ping()

                let dimensionsV1 = [("client", "metered"), ("credential_version", "v1")]
                let dimensionsV2 = [("client", "metered"), ("credential_version", "v2")]
                #expect(try metrics.expectGauge("redis_rotation_connections", dimensionsV1).lastValue == 0)
                #expect(try metrics.expectGauge("redis_rotation_connections", dimensionsV2).lastValue == 3)
                #expect(try metrics.expectCounter("redis_rotation_reauthentications", [("client", "metered")]).totalValue == 3)
                #expect(try metrics.expectCounter("redis_rotation_connects", [("client", "metered")]).totalValue >= 3)
                #expect(try !metrics.expectTimer("redis_rotation_lease_wait", [("client", "metered")]).values.isEmpty)
                #expect(try !metrics.expectTimer("redis_rotation_handshake_duration", [("client", "metered")]).values.isEmpty)
            }
        }
    }
}
