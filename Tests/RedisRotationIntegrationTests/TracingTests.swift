import Foundation
import InMemoryTracing
import RedisRotationTesting
import Testing
import Tracing

@testable import RedisRotation

@Suite("Tracing", .timeLimit(.minutes(1)))
struct TracingTests {
    @Test("one client span per command with the database, operation, server and credential version; never an argument or a value")
    func spans() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let tracer = InMemoryTracer()
            let client = try RedisClient(
                configuration: RedisClientConfiguration(
                    host: server.host,
                    port: server.port,
                    name: "traced",
                    pool: .init(leaseTimeout: .seconds(20)),  // a starved test process may take a while to connect
                    tracer: tracer
                ),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v7"))
            )
            try await withRunningClient(client) { client in
                try await client.set("traced:key", to: "secret-value")
                _ = try await client.get("traced:key", as: String.self)
                await #expect(throws: RedisError.self) { try await client.send(RedisCommand("LPUSH", "traced:key", "x")) }
                _ = try await client.pipeline { p in p.queue(RedisCommand("GET", "traced:key")) }
                _ = try await client.transaction { tx in tx.queue(RedisCommand("GET", "traced:key")) }
            }
            let spans = tracer.finishedSpans
            #expect(spans.map(\.operationName) == ["SET", "GET", "LPUSH", "PIPELINE", "MULTI"])
            for span in spans {
                #expect(span.kind == .client)
                #expect(span.attributes["db.system"]?.toSpanAttribute() == "redis")
                #expect(span.attributes["db.operation"]?.toSpanAttribute() == .string(span.operationName))
                #expect(span.attributes["server.address"]?.toSpanAttribute() == .string(server.host))
                #expect(span.attributes["server.port"]?.toSpanAttribute() == .int64(Int64(server.port)))
                if span.operationName != "PIPELINE" && span.operationName != "MULTI" {
                    #expect(span.attributes["redis.credential_version"]?.toSpanAttribute() == "v7")
                }
                // No argument, value or password anywhere in the span.
                let everything = "\(span.attributes) \(span.events) \(span.errors)"
                #expect(!everything.contains("secret-value") && !everything.contains("traced:key") && !everything.contains(text(of: password)))
            }
            #expect(spans[2].errors.count == 1)
            #expect(spans[0].errors.isEmpty && spans[1].errors.isEmpty)
        }
    }
}
