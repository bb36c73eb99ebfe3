import Foundation
import NIOCore
import RedisRotation
import RedisRotationTesting
import Testing

/// The generated typed API against a real server, one test per command group, through the pooled
/// client as an application uses it (and a single connection for session commands).
@Suite("Generated commands against redis-server", .timeLimit(.minutes(2)))
struct GeneratedCommandIntegrationTests {
    func strings(_ buffers: [ByteBuffer]) -> [String] { buffers.map { String(buffer: $0) } }

    @Test("the generated list agrees with COMMAND LIST of the running server, both ways")
    func coverageAgainstServer() async throws {
        try await withOneConnectionClient { (_, client) async throws in
            let listed = Set(try await client.send(RedisCommand("COMMAND", "LIST"), as: [String].self).map {
                $0.uppercased().replacingOccurrences(of: "|", with: " ")
            })
            let containers = Set(listed.filter { $0.contains(" ") }.map { String($0.split(separator: " ")[0]) })
            let generated = Set(RedisCommands.generatedNames)
            let missing = listed.subtracting(generated).subtracting(RedisCommands.offeredElsewhere.keys).subtracting(containers)
            #expect(missing.isEmpty, "commands of the server without a typed value: \(missing.sorted())")
            let unknown = generated.subtracting(listed)
            #expect(unknown.isEmpty, "typed values the server does not know: \(unknown.sorted())")
            #expect(generated.count >= 300)
        }
    }

    @Test("strings")
    func stringCommands() async throws {
        try await withOneConnectionClient { (_, client) async throws in
            let key = uniqueKey("s")
            #expect(try await client.append(key, value: "Hello") == 5)
            #expect(try await client.append(key, value: " World") == 11)
            #expect(try await client.strlen(key) == 11)
            #expect(String(buffer: try await client.getrange(key, start: 0, end: 4)) == "Hello")
            #expect(try await client.setrange(key, offset: 6, value: "Redis") == 11)
            #expect(try await client.get(key, as: String.self) == "Hello Redis")
            let counter = uniqueKey("n")
            #expect(try await client.decrby(counter, decrement: 5) == -5)
            #expect(try await client.incrbyfloat(counter, increment: 0.5) == -4.5)
            #expect(try await client.getex(counter, expiration: .milliseconds(60_000)).map { String(buffer: $0) } == "-4.5")
            #expect(try await client.pttl(counter) > 0)
            #expect(try await client.getdel(counter).map { String(buffer: $0) } == "-4.5")
            #expect(try await client.getdel(counter) == nil)
            let a = uniqueKey("a")
            let b = uniqueKey("b")
            #expect(try await client.msetnx(keyValues: [.init(key: a, value: "ohmytext"), .init(key: b, value: "mynewtext")]))
            #expect(try await client.msetnx(keyValues: [.init(key: a, value: "x")]) == false)
            #expect(try await client.lcs(a, key2: b, len: true).int == 6)
        }
    }

    @Test("JSON values: set(_:json:) and get(_:json:); a value of another shape is unexpectedReply naming the field, not the value")
    func jsonValues() async throws {
        struct User: Codable, Equatable {
            var name: String
            var visits: Int
        }
        struct Other: Codable {
            var name: Int
        }
        try await withOneConnectionClient { (_, client) async throws in
            let key = uniqueKey("json")
            let user = User(name: "ada-secret-name", visits: 3)
            #expect(try await client.set(key, json: user, expiration: .seconds(60)))
            #expect(try await client.get(key, json: User.self) == user)
            #expect(try await client.get(uniqueKey("none"), json: User.self) == nil)
            let error = await #expect(throws: RedisError.self) { try await client.get(key, json: Other.self) }
            #expect(error?.code == .unexpectedReply)
            #expect(error?.message.contains(".name") == true, "\(error?.message ?? "")")
            #expect(error?.message.contains("ada-secret-name") == false)
        }
    }

    @Test("hashes")
    func hashCommands() async throws {
        try await withOneConnectionClient { (_, client) async throws in
            let hash = uniqueKey("h")
            #expect(try await client.hsetnx(hash, field: "name", value: "ada"))
            #expect(try await client.hsetnx(hash, field: "name", value: "bob") == false)
            #expect(try await client.hincrby(hash, field: "visits", increment: 3) == 3)
            #expect(try await client.hincrbyfloat(hash, field: "score", increment: 1.25) == 1.25)
            #expect(try await client.hlen(hash) == 3)
            #expect(try await client.hexists(hash, field: "visits"))
            #expect(Set(self.strings(try await client.hkeys(hash))) == ["name", "visits", "score"])
            #expect(Set(self.strings(try await client.hvals(hash))) == ["ada", "3", "1.25"])
            #expect(try await client.hmget(hash, fields: ["name", "nope"]).map { $0.map { String(buffer: $0) } } == ["ada", nil])
            #expect(try await client.hdel(hash, fields: ["score", "nope"]) == 1)
            #expect(try await client.hrandfield(hash, options: .init(count: 5, withvalues: true)).array?.count == 4)
        }
    }

    @Test("lists")
    func listCommands() async throws {
        try await withOneConnectionClient { (_, client) async throws in
            let list = uniqueKey("l")
            #expect(try await client.rpush(list, elements: ["a", "b", "c"]) == 3)
            #expect(try await client.linsert(list, where: .before, pivot: "b", element: "x") == 4)
            #expect(try await client.llen(list) == 4)
            #expect(try await client.lindex(list, index: 1).map { String(buffer: $0) } == "x")
            #expect(try await client.lpos(list, element: "c").int == 3)
            try await client.lset(list, index: 0, element: "z")
            #expect(try await client.lrem(list, count: 0, element: "x") == 1)
            let other = uniqueKey("l2")
            #expect(try await client.lmove(list, destination: other, wherefrom: .left, whereto: .right).map { String(buffer: $0) } == "z")
            try await client.ltrim(list, start: 0, stop: 0)
            #expect(self.strings(try await client.lrange(list, from: 0, to: -1)) == ["b"])
            #expect(try await client.lpop(list, count: 2).array?.count == 1)
            let popped = try await client.blpop(keys: [uniqueKey("empty"), other], timeout: 1)
            #expect(popped.array?.last?.string == "z")
        }
    }

    @Test("sets")
    func setCommands() async throws {
        try await withOneConnectionClient { (_, client) async throws in
            let a = uniqueKey("{s}a")
            let b = uniqueKey("{s}b")
            #expect(try await client.sadd(a, members: ["1", "2", "3"]) == 3)
            #expect(try await client.sadd(b, members: ["3", "4"]) == 2)
            #expect(try await client.scard(a) == 3)
            #expect(try await client.sismember(a, member: "2"))
            #expect(try await client.smismember(a, members: ["1", "9"]) == [true, false])
            #expect(self.strings(try await client.sinter(keys: [a, b])) == ["3"])
            #expect(Set(self.strings(try await client.sunion(keys: [a, b]))) == ["1", "2", "3", "4"])
            #expect(Set(self.strings(try await client.sdiff(keys: [a, b]))) == ["1", "2"])
            #expect(try await client.sintercard(keys: [a, b], limit: 10) == 1)
            #expect(try await client.smove(a, destination: b, member: "1"))
            #expect(try await client.srem(b, members: ["1", "4"]) == 2)
            #expect(Set(self.strings(try await client.smembers(b))) == ["3"])
        }
    }

    @Test("sorted sets")
    func sortedSetCommands() async throws {
        try await withOneConnectionClient { (_, client) async throws in
            let z = uniqueKey("z")
            #expect(try await client.zadd(z, scoreMembers: [.init(score: 1, member: "a"), .init(score: 2, member: "b"), .init(score: 3, member: "c")]).int == 3)
            #expect(try await client.zadd(z, condition: .xx, change: true, scoreMembers: [.init(score: 5, member: "a")]).int == 1)
            #expect(try await client.zscore(z, member: "a") == 5)
            #expect(try await client.zscore(z, member: "nope") == nil)
            #expect(try await client.zincrby(z, increment: 2, member: "b") == 4)
            #expect(try await client.zrank(z, member: "c") == 0)
            #expect(try await client.zrank(z, member: "nope") == nil)
            #expect(try await client.zcard(z) == 3)
            #expect(try await client.zcount(z, min: 3, max: 4) == 2)
            #expect(try await client.zmscore(z, members: ["c", "x"]) == [3, nil])
            let range = try await client.zrange(z, start: "0", stop: "-1", withscores: true)
            #expect(range.array?.compactMap(\.string) == ["c", "3", "b", "4", "a", "5"])
            let byScore = try await client.zrange(z, start: "(3", stop: "+inf", sortby: .byscore, rev: false)
            #expect(byScore.array?.compactMap(\.string) == ["b", "a"])
            let union = uniqueKey("zu")
            #expect(try await client.zunionstore(union, keys: [z], weights: [2], aggregate: .sum) == 3)
            #expect(try await client.zscore(union, member: "a") == 10)
            #expect(try await client.zrem(z, members: ["a", "nope"]) == 1)
            #expect(try await client.zpopmin(z).array?.first?.string == "c")
        }
    }

    @Test("streams")
    func streamCommands() async throws {
        try await withOneConnectionClient { (_, client) async throws in
            let stream = uniqueKey("x")
            let first = try #require(try await client.xadd(stream, idOrAuto: .autoId, fieldValues: [.init(field: "n", value: "1")]))
            _ = try await client.xadd(stream, trim: .init(strategy: .maxlen, operator: .equal, threshold: "10"), idOrAuto: .autoId, fieldValues: [.init(field: "n", value: "2")])
            #expect(try await client.xlen(stream) == 2)
            #expect(try await client.xadd(uniqueKey("none"), nomkstream: true, idOrAuto: .autoId, fieldValues: [.init(field: "n", value: "1")]) == nil)
            #expect(try await client.xrange(stream, start: "-", end: "+", count: 1).array?.first?.array?.first?.string == first)
            #expect(try await client.xgroupCreate(stream, groupname: "g", id: .id("0")) == "OK")
            let read = try await client.xreadgroup(
                groupConsumer: .init(group: "g", consumer: "c1"),
                count: 10,
                streams: .init(keys: [stream], ids: [">"])
            )
            #expect(read.array?.first?.array?.last?.array?.count == 2)
            #expect(try await client.xack(stream, group: "g", ids: [.string(first)]) == 1)
            #expect(try await client.xtrim(stream, trim: .init(strategy: .maxlen, threshold: "1")) == 1)
            #expect(try await client.xdel(stream, ids: [.string(first)]) == 0)
            #expect(try await client.xinfoStream(stream).array != nil)
        }
    }

    @Test("geo")
    func geoCommands() async throws {
        try await withOneConnectionClient { (_, client) async throws in
            let geo = uniqueKey("g")
            let added = try await client.geoadd(geo, longitudeLatitudeMembers: [
                .init(longitude: 13.361389, latitude: 38.115556, member: "Palermo"),
                .init(longitude: 15.087269, latitude: 37.502669, member: "Catania"),
            ])
            #expect(added == 2)
            let distance = try #require(try await client.geodist(geo, member1: "Palermo", member2: "Catania", unit: .km))
            #expect(abs(distance - 166.2742) < 0.01)
            #expect(try await client.geohash(geo, members: ["Palermo", "nope"]).map { $0.map { String(buffer: $0) } } == ["sqc8b49rny0", nil])
            let near = try await client.geosearch(geo, from: .longitudeLatitude(.init(longitude: 15, latitude: 37)), by: .circle(.init(radius: 100, unit: .km)), order: .asc)
            #expect(near.array?.compactMap(\.string) == ["Catania"])
            #expect(try await client.geopos(geo, members: ["Palermo"]).array?.first?.array?.count == 2)
        }
    }

    @Test("hyperloglog and bitmaps")
    func hyperLogLogAndBitmaps() async throws {
        try await withOneConnectionClient { (_, client) async throws in
            let a = uniqueKey("{hll}a")
            let b = uniqueKey("{hll}b")
            #expect(try await client.pfadd(a, elements: ["x", "y", "z"]))
            #expect(try await client.pfadd(a, elements: ["x"]) == false)
            #expect(try await client.pfadd(b, elements: ["z", "w"]))
            #expect(try await client.pfcount(keys: [a, b]) == 4)
            try await client.pfmerge(a, sourcekeys: [b])
            #expect(try await client.pfcount(keys: [a]) == 4)

            let bits = uniqueKey("bits")
            #expect(try await client.setbit(bits, offset: 7, value: 1) == 0)
            #expect(try await client.getbit(bits, offset: 7) == 1)
            #expect(try await client.bitcount(bits) == 1)
            #expect(try await client.bitpos(bits, bit: 1) == 7)
            let field = try await client.bitfield(bits, operations: [.encodingOffset(.init(encoding: "u8", offset: 0))])
            #expect(field == [1])
        }
    }

    @Test("scripting and functions")
    func scripting() async throws {
        try await withOneConnectionClient { (_, client) async throws in
            let key = uniqueKey("k")
            #expect(try await client.evalRo(script: "return redis.call('EXISTS', KEYS[1])", keys: [key]).int == 0)
            let sha = try await client.scriptLoad(script: "return ARGV[1]")
            #expect(try await client.scriptExists(sha1s: [.string(sha), "0000000000000000000000000000000000000000"]) == [true, false])
            #expect(try await client.evalsha(sha1: .string(sha), args: ["hi"]).string == "hi")
            let library = "#!lua name=generated\nredis.register_function{function_name='gen_echo', callback=function(keys, args) return args[1] end, flags={'no-writes'}}"
            #expect(try await client.functionLoad(replace: true, functionCode: .string(library)) == "generated")
            #expect(try await client.fcallRo(function: "gen_echo", args: ["back"]).string == "back")
        }
    }

    @Test("keys")
    func keyCommands() async throws {
        try await withOneConnectionClient { (_, client) async throws in
            let key = uniqueKey("{k}1")
            let renamed = uniqueKey("{k}2")
            try await client.set(key, to: "v")
            #expect(try await client.type(key) == "string")
            #expect(try await client.objectEncoding(key) == "embstr")
            #expect(try await client.touch(keys: [key, uniqueKey("nope")]) == 1)
            #expect(try await client.pexpire(key, milliseconds: 100_000))
            #expect(try await client.pexpire(key, milliseconds: 1, condition: .gt) == false)
            #expect(try await client.expiretime(key) > 0)
            #expect(try await client.persist(key))
            try await client.rename(key, newkey: renamed)
            #expect(try await client.renamenx(renamed, newkey: renamed) == false)
            let dump = try #require(try await client.dump(renamed))
            let restored = uniqueKey("{k}3")
            try await client.restore(restored, ttl: 0, serializedValue: .bytes(dump))
            #expect(try await client.get(restored, as: String.self) == "v")
            #expect(try await client.copy(restored, destination: key))
            #expect(try await client.unlink(keys: [key, restored, renamed]) == 3)
            #expect(try await client.memoryUsage(uniqueKey("nope")) == nil)
        }
    }

    @Test("server and connection")
    func serverCommands() async throws {
        try await withOneConnectionClient { (server, client) async throws in
            #expect(try await client.dbsize() >= 0)
            #expect(String(buffer: try await client.info(sections: ["server"])).contains("redis_version:"))
            #expect(try await client.configGet(parameters: ["maxmemory-policy"]) .mapValues { String(buffer: $0) } == ["maxmemory-policy": "noeviction"])
            #expect(try await client.time().count == 2)
            #expect(String(buffer: try await client.echo(message: "hello")) == "hello")
            #expect(try await client.commandCount() > 200)
            #expect(try await client.aclWhoami() == "alice")
            #expect(try await client.clientId() > 0)
            #expect(String(buffer: try await client.clientInfo()).contains("name=test@v1"))
            #expect(try await client.lastsave() > 0)
            #expect(try await client.slowlogLen() >= 0)

            // Session commands are on a connection of one's own.
            let connection = try await RedisConnection.connect(configuration: server.adminConnectionConfiguration())
            try await connection.select(index: 1)
            let key = uniqueKey("db1")
            try await connection.set(key, to: "x")
            try await connection.select(index: 0)
            #expect(try await connection.exists(key) == 0)
            #expect(try await connection.multi().string == "OK")
            #expect(try await connection.send(RedisCommand("INCR", .key(key))) == .simpleString(ByteBuffer(string: "QUEUED")))
            #expect(try await connection.exec().array?.count == 1)
            await connection.close()
        }
    }

    @Test("typed pipelines and transactions through the pool, and on a single connection")
    func batches() async throws {
        try await withOneConnectionClient { (server, client) async throws in
            let counter = uniqueKey("c")
            let hash = uniqueKey("h")
            var tx = RedisTransaction()
            let visits = tx.incr(counter)
            tx.expire(counter, seconds: 60)
            let field = tx.hincrby(hash, field: "n", increment: 2)
            let results = try await client.transaction(tx)
            #expect(try results[visits] == 1)
            #expect(try results[field] == 2)

            var pipeline = RedisPipeline()
            let ttl = pipeline.pttl(counter)
            let wrong = pipeline.hlen(counter)
            let names = pipeline.hkeys(hash)
            let piped = try await client.pipeline(pipeline)
            #expect(try piped[ttl] > 0)
            #expect(throws: RedisError.self) { try piped[wrong] }
            #expect(self.strings(try piped[names]) == ["n"])

            let connection = try await RedisConnection.connect(configuration: server.adminConnectionConfiguration())
            let single = try #require(try await connection.transaction(tx))
            #expect(try single[visits] == 2)
            #expect(try await connection.pipeline(pipeline)[names].count == 1)
            await connection.close()
        }
    }
}
