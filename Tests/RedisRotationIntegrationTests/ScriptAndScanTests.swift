import Foundation
import NIOCore
import RedisRotationTesting
import Testing

@testable import RedisRotation

/// Scripts by digest with the source as fallback, functions, and the SCAN family as async sequences,
/// through the pool against a real server.
@Suite("Scripts and scans", .timeLimit(.minutes(2)))
struct ScriptAndScanTests {
    func withClient(_ body: @escaping @Sendable (RedisServerProcess, RedisClient) async throws -> Void) async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let client = try RedisClient(
                configuration: RedisClientConfiguration(host: server.host, port: server.port, name: "test", pool: .init(leaseTimeout: .seconds(20))),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            try await withRunningClient(client) { client in try await body(server, client) }
        }
    }

    @Test("a script runs by digest; the source goes only when the server lacks it (first use, after SCRIPT FLUSH)")
    func scriptByDigest() async throws {
        try await self.withClient { server, client in
            let script = RedisScript("return redis.call('INCRBY', KEYS[1], ARGV[1])")
            let loaded = try await server.admin("SCRIPT", "LOAD", .string(script.source)).string
            #expect(loaded == script.sha1)
            try await server.admin("SCRIPT", "FLUSH")
            let key = uniqueKey("script")
            #expect(try await client.eval(script, keys: [key], arguments: ["5"]).int == 5)
            // Loaded by the fallback: the next run goes by digest alone.
            #expect(try await server.admin("SCRIPT", "EXISTS", .string(script.sha1)).array?.first?.int == 1)
            #expect(try await client.eval(script, keys: [key], arguments: ["2"]).int == 7)
            try await server.admin("SCRIPT", "FLUSH")
            #expect(try await client.eval(script, keys: [key], arguments: ["1"]).int == 8)
            let read = RedisScript("return redis.call('GET', KEYS[1])")
            #expect(try await client.eval(read, keys: [key], readOnly: true).string == "8")
            // A script error is the script's own: thrown, not resent.
            await #expect(throws: RedisError.self) { try await client.eval(RedisScript("return redis.error_reply('nope')")) }
        }
    }

    @Test("a function of a loaded library runs with FCALL and FCALL_RO")
    func function() async throws {
        try await self.withClient { server, client in
            let library = """
                #!lua name=rrtest
                redis.register_function('rr_add', function(keys, args) return redis.call('INCRBY', keys[1], args[1]) end)
                redis.register_function{function_name='rr_get', callback=function(keys) return redis.call('GET', keys[1]) end, flags={'no-writes'}}
                """
            try await server.admin("FUNCTION", "LOAD", "REPLACE", .string(library))
            let key = uniqueKey("function")
            #expect(try await client.fcall("rr_add", keys: [key], arguments: ["3"]).int == 3)
            #expect(try await client.fcall("rr_get", keys: [key], readOnly: true).string == "3")
        }
    }

    @Test("SCAN, HSCAN, SSCAN and ZSCAN yield every element across pages, and stop")
    func scans() async throws {
        try await self.withClient { server, client in
            let prefix = "scan:\(UUID().uuidString):"
            let results = try await client.pipeline { p in
                for index in 0..<250 { p.queue(RedisCommand("SET", .string(prefix + "\(index)"), "x")) }
            }
            #expect(results.results.allSatisfy { (try? $0.get()) != nil })
            var keys: Set<String> = []
            for try await key in client.scan(matching: prefix + "*", count: 20) { keys.insert(String(buffer: key)) }
            #expect(keys == Set((0..<250).map { prefix + "\($0)" }))

            // More than 128 entries each: real hash tables, so the pages are real pages.
            let hash = uniqueKey("hash")
            let set = uniqueKey("set")
            let zset = uniqueKey("zset")
            _ = try await client.pipeline { p in
                for index in 0..<200 {
                    p.queue(RedisCommand("HSET", .key(hash), .string("f\(index)"), .string("v\(index)")))
                    p.queue(RedisCommand("SADD", .key(set), .string("m\(index)")))
                    p.queue(RedisCommand("ZADD", .key(zset), .string("\(index)"), .string("z\(index)")))
                }
            }
            var fields: [String: String] = [:]
            for try await (field, value) in client.hscan(hash, count: 10) { fields[String(buffer: field)] = String(buffer: value) }
            #expect(fields.count == 200 && fields["f7"] == "v7")
            var members: Set<String> = []
            for try await member in client.sscan(set, count: 10) { members.insert(String(buffer: member)) }
            #expect(members.count == 200)
            var scores: [String: Double] = [:]
            for try await (member, score) in client.zscan(zset, matching: "z1*", count: 10) { scores[String(buffer: member)] = score }
            #expect(scores.count == 111 && scores["z19"] == 19)
            // An empty match ends at once.
            var none = 0
            for try await _ in client.scan(matching: "nothing-matches-\(UUID().uuidString)") { none += 1 }
            #expect(none == 0)
        }
    }
}
