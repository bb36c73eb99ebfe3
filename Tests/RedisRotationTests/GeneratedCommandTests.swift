import NIOCore
import Testing

@testable import RedisRotation

/// The generated command values (`scripts/command-spec/generate_api.py`): what each sends, and that
/// the generated list agrees with the specification table.
@Suite("Generated commands")
struct GeneratedCommandTests {
    /// The arguments a command puts on the wire, decoded back from its RESP encoding.
    func argv(_ command: some RedisTypedCommand) throws -> [String] {
        var buffer = try command.command.encoded
        var result: [String] = []
        guard buffer.readString(length: 1) == "*", let countLine = readLine(&buffer), let count = Int(countLine) else {
            Issue.record("not a RESP array")
            return []
        }
        for _ in 0..<count {
            guard buffer.readString(length: 1) == "$", let lengthLine = readLine(&buffer), let length = Int(lengthLine),
                let value = buffer.readString(length: length)
            else {
                Issue.record("not a RESP bulk string")
                return result
            }
            result.append(value)
            buffer.moveReaderIndex(forwardBy: 2)
        }
        #expect(buffer.readableBytes == 0)
        return result
    }

    private func readLine(_ buffer: inout ByteBuffer) -> String? {
        guard let end = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\r")) else { return nil }
        let line = buffer.readString(length: end - buffer.readerIndex)
        buffer.moveReaderIndex(forwardBy: 2)
        return line
    }

    @Test("optional flags, one-of groups and repeated blocks are written in the specification's order")
    func zadd() throws {
        let plain = RedisCommands.ZADD(key: "z", scoreMembers: [.init(score: 1.5, member: "a"), .init(score: -2, member: "b")])
        #expect(try self.argv(plain) == ["ZADD", "z", "1.5", "a", "-2.0", "b"])
        let options = RedisCommands.ZADD(
            key: "z",
            condition: .xx,
            comparison: .gt,
            change: true,
            increment: true,
            scoreMembers: [.init(score: .infinity, member: "a")]
        )
        #expect(try self.argv(options) == ["ZADD", "z", "XX", "GT", "CH", "INCR", "inf", "a"])
    }

    @Test("numkeys is computed from the keys that follow it")
    func numkeys() throws {
        #expect(try self.argv(RedisCommands.EVAL(script: "return 1", keys: ["a", "b"], args: ["x"])) == ["EVAL", "return 1", "2", "a", "b", "x"])
        #expect(try self.argv(RedisCommands.EVAL(script: "return 1")) == ["EVAL", "return 1", "0"])
        #expect(try self.argv(RedisCommands.SINTERCARD(keys: ["a"], limit: 5)) == ["SINTERCARD", "1", "a", "LIMIT", "5"])
        #expect(
            try self.argv(RedisCommands.ZUNIONSTORE(destination: "d", keys: ["a", "b"], weights: [2, 3], aggregate: .max))
                == ["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "2.0", "3.0", "AGGREGATE", "MAX"]
        )
    }

    @Test("a repeated name takes its token's name; tokens precede their values")
    func tokens() throws {
        #expect(
            try self.argv(RedisCommands.LCS(key1: "a", key2: "b", idx: true, minmatchlen: 4, withmatchlen: true))
                == ["LCS", "a", "b", "IDX", "MINMATCHLEN", "4", "WITHMATCHLEN"]
        )
        let georadius = RedisCommands.GEORADIUS(
            key: "g", longitude: 13.5, latitude: 52.5, radius: 10, unit: .km, count: .init(count: 3, any: true), store: "out"
        )
        #expect(try self.argv(georadius) == ["GEORADIUS", "g", "13.5", "52.5", "10.0", "KM", "COUNT", "3", "ANY", "STORE", "out"])
    }

    @Test("a choice made of tokens only (REPLICAOF NO ONE) carries no value")
    func payloadlessChoice() throws {
        #expect(try self.argv(RedisCommands.REPLICAOF(args: .noOne)) == ["REPLICAOF", "NO", "ONE"])
        #expect(
            try self.argv(RedisCommands.REPLICAOF(args: .hostPort(.init(host: "127.0.0.1", port: 6380))))
                == ["REPLICAOF", "127.0.0.1", "6380"]
        )
    }

    @Test("subcommands are written after their container's name")
    func subcommands() throws {
        #expect(try self.argv(RedisCommands.CONFIG.GET(parameters: ["maxmemory", "save"])) == ["CONFIG", "GET", "maxmemory", "save"])
        #expect(try self.argv(RedisCommands.CLIENT.SETNAME(connectionName: "n")) == ["CLIENT", "SETNAME", "n"])
        #expect(
            try self.argv(RedisCommands.XGROUP.CREATE(key: "s", groupname: "g", id: .newId, mkstream: true))
                == ["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"]
        )
    }

    @Test("stream trimming: a one-of inside a block, with an optional approximation token")
    func xadd() throws {
        let command = RedisCommands.XADD(
            key: "s",
            trim: .init(strategy: .maxlen, operator: .approximately, threshold: "1000", count: 10),
            idOrAuto: .autoId,
            fieldValues: [.init(field: "f", value: "v")]
        )
        #expect(try self.argv(command) == ["XADD", "s", "MAXLEN", "~", "1000", "LIMIT", "10", "*", "f", "v"])
    }

    @Test("multiple_token arguments repeat their token before each value")
    func multipleToken() throws {
        let sort = RedisCommands.SORT(key: "l", pattern: "w_*", offsetCount: .init(offset: 0, count: 5), patterns: ["#", "o_*"], order: .desc, sorting: true)
        #expect(try self.argv(sort) == ["SORT", "l", "BY", "w_*", "LIMIT", "0", "5", "GET", "#", "GET", "o_*", "DESC", "ALPHA"])
    }

    @Test("every generated command is in the specification table, and every table entry is generated or offered elsewhere")
    func coverage() {
        let generated = Set(RedisCommands.generatedNames)
        #expect(generated.count == RedisCommands.generatedNames.count, "a command generated twice")
        #expect(generated.count >= 300)
        for name in generated {
            let parts = name.split(separator: " ", maxSplits: 1).map(String.init)
            #expect(RedisCommandInfo.lookup(parts[0], subcommand: parts.count > 1 ? parts[1] : nil) != nil, "\(name) is not in the table")
        }
        let containers = Set(RedisCommandInfo.all.filter { $0.name.contains(" ") }.map { String($0.name.split(separator: " ")[0]) })
        for info in RedisCommandInfo.all where !containers.contains(info.name) {
            #expect(
                generated.contains(info.name) || RedisCommands.offeredElsewhere[info.name] != nil,
                "\(info.name) is in the specification but neither generated nor offered elsewhere"
            )
        }
        #expect(RedisCommands.HINCRBY.info?.group == "hash")
        #expect(RedisCommands.CLIENT.SETNAME.info?.name == "CLIENT SETNAME")
    }

    @Test("the commands that change a connection's session are exactly those offered on RedisConnection only")
    func connectionOnly() {
        for name in RedisCommands.generatedNames {
            let parts = name.split(separator: " ").map { RedisArgument.string(String($0)) }
            let command = RedisCommand(name.split(separator: " ")[0].uppercased(), arguments: Array(parts.dropFirst()))
            #expect(
                command.sessionEffect.changesSession == RedisCommands.connectionOnlyNames.contains(name),
                "\(name): changes the session \(command.sessionEffect.changesSession), connection-only \(RedisCommands.connectionOnlyNames.contains(name))"
            )
        }
    }

    @Test("a pipeline's typed handles read their own results")
    func queuedHandles() throws {
        var pipeline = RedisPipeline()
        let count = pipeline.incr("a")
        let value = pipeline.hget("h", field: "f")
        let members = pipeline.smembers("s")
        #expect(pipeline.commands.map(\.name) == ["INCR", "HGET", "SMEMBERS"])
        let results = RedisCommandResults(results: [
            .success(.integer(3)),
            .failure(RedisError(code: .serverError, message: "WRONGTYPE")),
            .success(.array([.bulkString(ByteBuffer(string: "m"))])),
        ])
        #expect(try results[count] == 3)
        #expect(throws: RedisError.self) { try results[value] }
        #expect(try results[members].map { String(buffer: $0) } == ["m"])
    }

    @Test("a field/value reply decodes as a dictionary; an odd one is refused")
    func dictionary() throws {
        let reply = RESPValue.array([.bulkString(ByteBuffer(string: "a")), .bulkString(ByteBuffer(string: "1"))])
        #expect(try [String: Int](fromRESP: reply) == ["a": 1])
        #expect(throws: RedisError.self) { try [String: Int](fromRESP: .array([.bulkString(ByteBuffer(string: "a"))])) }
    }

    @Test("score bounds take exclusive and infinite bounds; weights take fractions")
    func scoreBoundsAndWeights() throws {
        #expect(try self.argv(RedisCommands.ZCOUNT(key: "z", min: "(1.5", max: "+inf")) == ["ZCOUNT", "z", "(1.5", "+inf"])
        #expect(try self.argv(RedisCommands.ZRANGEBYSCORE(key: "z", min: "-inf", max: .double(2.5))) == ["ZRANGEBYSCORE", "z", "-inf", "2.5"])
        #expect(try self.argv(RedisCommands.ZREVRANGEBYSCORE(key: "z", max: "(5", min: 1)) == ["ZREVRANGEBYSCORE", "z", "(5", "1"])
        #expect(try self.argv(RedisCommands.ZREMRANGEBYSCORE(key: "z", min: 0, max: "(1")) == ["ZREMRANGEBYSCORE", "z", "0", "(1"])
        #expect(
            try self.argv(RedisCommands.ZUNIONSTORE(destination: "d", keys: ["a", "b"], weights: [0.5, 2]))
                == ["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "0.5", "2.0"]
        )
        #expect(try self.argv(RedisCommands.ZINTER(keys: ["a"], weights: [0.25])) == ["ZINTER", "1", "a", "WEIGHTS", "0.25"])
    }

    @Test("commands whose documentation lists no arguments take them as they are (COMMAND GETKEYS, DEBUG)")
    func undocumentedArguments() throws {
        #expect(
            try self.argv(RedisCommands.COMMAND.GETKEYS(arguments: ["SET", "k", "v"])) == ["COMMAND", "GETKEYS", "SET", "k", "v"]
        )
        #expect(try self.argv(RedisCommands.DEBUG(arguments: ["SLEEP", "0"])) == ["DEBUG", "SLEEP", "0"])
    }

    @Test("CLIENT REPLY OFF/SKIP and HELLO 3 cannot be sent; CLIENT REPLY ON and HELLO 2 can")
    func unsupportedCommands() throws {
        for command in [RedisCommands.CLIENT.REPLY(onOffSkip: .off).command, RedisCommands.CLIENT.REPLY(onOffSkip: .skip).command] {
            #expect(command.encodingError?.code == .invalidArgument)
        }
        #expect(RedisCommands.CLIENT.REPLY(onOffSkip: .on).command.encodingError == nil)
        #expect(RedisCommands.HELLO(arguments: .init(protover: 3)).command.encodingError?.code == .invalidArgument)
        #expect(RedisCommands.HELLO(arguments: .init(protover: 2)).command.encodingError == nil)
        #expect(RedisCommands.HELLO().command.encodingError == nil)
    }

    @Test("a handle read from another batch is an error, not a crash")
    func foreignHandle() {
        var pipeline = RedisPipeline()
        _ = pipeline.incr("a")
        let second = pipeline.incr("b")
        let results = RedisCommandResults(results: [.success(.integer(1))])
        let error = #expect(throws: RedisError.self) { try results[second] }
        #expect(error?.code == .invalidArgument)
    }
}
