import Testing

@testable import RedisRotation

/// Parsing, key positions and idempotency cases a hostile review found wrong (each failed before its fix).
@Suite("Client features: parsing, positions, idempotency (review findings)")
struct ClientFeatureReviewUnitTests {
    @Test("XREADGROUP whose consumer is named 'block' still gets its BLOCK timeout")
    func consumerNamedBlock() {
        let command = RedisCommand("XREADGROUP", "GROUP", "g", "block", "BLOCK", "5000", "STREAMS", "s", ">")
        #expect(command.blockDuration == .upTo(.seconds(5)))
    }

    @Test("XREAD without BLOCK whose stream key is named 'block' is not a blocking command")
    func streamKeyNamedBlock() {
        let command = RedisCommand("XREAD", "COUNT", "10", "STREAMS", "block", "0")
        #expect(command.sessionEffect == .none)
        #expect(command.blockDuration == nil)
    }

    @Test("a BLPOP timeout written with more than 16 characters is still read")
    func longTimeoutText() {
        #expect(RedisCommand("BLPOP", "a", "10.00000000000000").blockDuration == .upTo(.seconds(10)))
    }

    @Test("an unbracketed IPv6 address is refused, not read as host '::' port 1")
    func unbracketedIPv6() {
        #expect(throws: RedisError.self) { try RedisURL("redis://::1") }
    }

    @Test("a password with an unencoded '?' never appears in the error")
    func passwordWithQuestionMark() {
        do {
            _ = try RedisURL("redis://app:abc?TOPSECRET@host")
            Issue.record("accepted")
        } catch {
            #expect(!error.message.contains("TOPSECRET"), "\(error.message)")
        }
    }

    /// Expected indices from `COMMAND GETKEYS` of redis-server 7.0.15 (run by the reviewer).
    @Test("key positions agree with COMMAND GETKEYS", arguments: [
        (["GEORADIUS", "src", "0", "0", "1", "km", "STORE", "dst"], [1, 7]),
        (["GEORADIUS", "src", "0", "0", "1", "km", "STORE", "d1", "STOREDIST", "d2"], [1, 7, 9]),
        (["XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "STREAMS", "s1", "s2", ">", ">"], [7, 8]),
        (["XREADGROUP", "GROUP", "g", "c", "STREAMS", "streams", "a", "0", "0"], [5, 6]),
        (["XREAD", "STREAMS", "streams", "x", "0", "0"], [2, 3]),
        (["EVAL", "x", "0"], []),
        (["EVAL", "x", "2", "a", "b", "c"], [3, 4]),
        (["LMPOP", "2", "a", "b", "LEFT"], [2, 3]),
        (["BLMPOP", "0", "2", "a", "b", "LEFT"], [3, 4]),
        (["SORT", "k", "STORE", "d1", "STORE", "d2"], [1, 5]),
        (["SORT", "k", "GET", "#", "STORE", "d"], [1, 5]),
        (["SORT", "k", "GET", "STORE", "STORE", "d"], [1, 5]),
        (["ZUNION", "2", "a", "b", "WEIGHTS", "1", "2"], [2, 3]),
        (["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"], [1, 3, 4]),
        (["GEOSEARCHSTORE", "d", "s", "FROMMEMBER", "m", "BYRADIUS", "1", "km"], [1, 2]),
        (["FCALL", "f", "1", "a", "x"], [3]),
        (["MIGRATE", "h", "6379", "k", "0", "5000"], [3]),
        // The server skips the empty key argument when KEYS is given
        (["MIGRATE", "h", "6379", "", "0", "5000", "KEYS", "a", "b"], [7, 8]),
        // The server reads AUTH's password, so the keys start after the first KEYS
        (["MIGRATE", "h", "6379", "", "0", "5000", "AUTH", "KEYS", "KEYS", "KEYS", "a"], [9, 10]),
    ])
    func keyPositions(argv: [String], expected: [Int]) throws {
        let info = try #require(RedisCommandInfo.lookup(argv[0]))
        #expect(info.keyIndices(in: argv) == expected)
    }

    /// Checks that passed at review time (kept as regression guards).
    @Test("idempotency: the forms that must not be resent are not, and plain ones are")
    func idempotencyTable() {
        #expect(!RedisCommand("set", "k", "v", "get").isIdempotent)
        #expect(!RedisCommand("SET", "k", "v", .bytes(Array("Get".utf8))).isIdempotent)
        #expect(!RedisCommand("SET", "k", "v", "KEEPTTL", "px", "5").isIdempotent)
        #expect(RedisCommand("SET", "k", "EX").isIdempotent)
        #expect(RedisCommand("SET", "k", "GET").isIdempotent)
        #expect(!RedisCommand("EXPIREAT", "k", "123", "nx").isIdempotent)
        #expect(RedisCommand("EXPIREAT", "k", "123").isIdempotent)
        #expect(!RedisCommand("CLIENT", "KILL", "ID", "5").isIdempotent)
        #expect(!RedisCommand("config", "set", "maxmemory", "1").isIdempotent)
        #expect(RedisCommand("CONFIG", "GET", "maxmemory").isIdempotent)
        #expect(!RedisCommand("EVAL", "return 1", "0").isIdempotent)
        #expect(RedisCommand("EVAL_RO", "return 1", "0").isIdempotent)
        #expect(!RedisCommand("FUNCTION", "LOAD", "x").isIdempotent)
        #expect(!RedisCommand("SCRIPT", "FLUSH").isIdempotent)
        #expect(!RedisCommand("PUBLISH", "c", "m").isIdempotent)
        #expect(!RedisCommand("XADD", "s", "*", "f", "v").isIdempotent)
        #expect(!RedisCommand("XREADGROUP", "GROUP", "g", "c", "BLOCK", "0", "STREAMS", "s", ">").isIdempotent)
        #expect(!RedisCommand("BLPOP", "k", "0").isIdempotent)
        #expect(!RedisCommand("WAIT", "1", "0").isIdempotent)
        #expect(!RedisCommand("INCR", "k").isIdempotent)
        #expect(!RedisCommand("GETEX", "k", "EX", "5").isIdempotent)
        #expect(!RedisCommand("SPOP", "k").isIdempotent)
    }
}
