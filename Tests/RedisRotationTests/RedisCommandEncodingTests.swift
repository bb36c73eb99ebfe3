import NIOCore
import Testing

@testable import RedisRotation

@Suite("Command encoding (hiredis)")
struct RedisCommandEncodingTests {
    @Test("arguments are encoded as RESP bulk strings")
    func encoding() throws {
        let command = RedisCommand("SET", "key", .integer(-12), .bytes([]))
        #expect(String(buffer: try command.encoded) == "*4\r\n$3\r\nSET\r\n$3\r\nkey\r\n$3\r\n-12\r\n$0\r\n\r\n")
        #expect(command.name == "SET")
        #expect(command.argumentCount == 3)
    }

    @Test("all 256 byte values survive encoding, and decode back from a bulk reply")
    func everyByte() throws {
        let command = RedisCommand("SET", "k", .bytes(allByteValues))
        let expected = Array("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$256\r\n".utf8) + allByteValues + Array("\r\n".utf8)
        #expect(Array(try command.encoded.readableBytesView) == expected)

        // The argument's own bytes, framed as a bulk reply, parse back to the same bytes.
        let reader = RESPReader()
        var reply = ByteBuffer(string: "$256\r\n")
        reply.writeBytes(allByteValues)
        reply.writeString("\r\n")
        try reader.feed(reply)
        #expect(try reader.next()?.bytes.map { Array($0.readableBytesView) } == allByteValues)
    }

    @Test("text arguments are UTF-8, byte buffers are taken from their reader index")
    func textAndBuffers() throws {
        var buffer = ByteBuffer(string: "xxpayload")
        buffer.moveReaderIndex(forwardBy: 2)
        let command = RedisCommand("ECHO", .bytes(buffer))
        #expect(String(buffer: try command.encoded) == "*2\r\n$4\r\nECHO\r\n$7\r\npayload\r\n")
        let unicode = RedisCommand("ECHO", "grüß")
        #expect(String(buffer: try unicode.encoded) == "*2\r\n$4\r\nECHO\r\n$6\r\ngrüß\r\n")
    }

    @Test("a secret argument goes on the wire as its bytes")
    func secretArgument() throws {
        let command = RedisCommand("AUTH", "alice", .secret("pw"))
        #expect(String(buffer: try command.encoded) == "*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$2\r\npw\r\n")
    }

    /// `count` readable bytes whose memory is reserved but never written: large sizes cost no RAM.
    static func reservedBuffer(count: Int) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: count)
        buffer.moveWriterIndex(forwardBy: count)
        return buffer
    }

    static let mebibyte = 1024 * 1024

    @Test("an argument of 512 MiB + 1 byte is refused by its size, without being encoded")
    func oversizedArgument() {
        let command = RedisCommand("SET", "key", .bytes(Self.reservedBuffer(count: 512 * Self.mebibyte + 1)))
        let error = #expect(throws: RedisError.self) { try command.encoded }
        #expect(error?.code == .invalidArgument)
        #expect(error?.message == "argument 2 of SET is 536870913 bytes; the server accepts at most 512 MiB")
        #expect(command.encodingError == error)
    }

    @Test("512 MiB per argument is the limit, counted from the first argument after the name")
    func argumentLimit() {
        let limit = 512 * Self.mebibyte
        #expect(RedisCommand.sizeProblem(name: "SET", lengths: [3, 3, limit]) == nil)
        #expect(
            RedisCommand.sizeProblem(name: "SET", lengths: [3, limit + 1, 5])?.message
                == "argument 1 of SET is 536870913 bytes; the server accepts at most 512 MiB"
        )
    }

    @Test("a command longer than hiredis can encode (Int32.max - 1 bytes) is refused, one byte over and not before")
    func encodedLengthLimit() {
        let limit = 512 * Self.mebibyte
        // "*5\r\n" + "$3\r\nSET\r\n" + 3 * "$536870912\r\n<512 MiB>\r\n" + "$536870841\r\n<...>\r\n"
        // = 4 + 9 + 3 * 536870926 + 536870855 = 2,147,483,646 bytes.
        #expect(RedisCommand.sizeProblem(name: "SET", lengths: [3, limit, limit, limit, 536_870_841]) == nil)
        let error = RedisCommand.sizeProblem(name: "SET", lengths: [3, limit, limit, limit, 536_870_842])
        #expect(error?.code == .invalidArgument)
        #expect(
            error?.message
                == "SET with 4 arguments needs more than 2147483646 bytes on the wire, the most hiredis encodes in one command"
        )
    }

    @Test("four 512 MiB values in one MSET (over 2 GiB encoded) fail with invalidArgument instead of reaching hiredis")
    func overTwoGibibytes() {
        // One reservation shared by all four arguments: 512 MiB of address space, none of it touched.
        let value = RedisArgument.bytes(Self.reservedBuffer(count: 512 * Self.mebibyte))
        let command = RedisCommand("MSET", "a", value, "b", value, "c", value, "d", value)
        #expect(command.encodingError?.code == .invalidArgument)
        #expect(command.encodingError?.message.hasPrefix("MSET with 8 arguments needs more than") == true)
    }

    @Test("a command that carries a password keeps its encoding only in wiped storage, and still encodes the same bytes")
    func sensitiveEncodingInWipedStorage() throws {
        let auth = RedisCommand("AUTH", "alice", .secret(RedisSecret("pw")))
        #expect(!auth.keepsPlainEncoding)
        #expect(String(buffer: try auth.encoded) == "*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$2\r\npw\r\n")
        #expect(auth.encodedCount == (try auth.encoded).readableBytes)
        let hello = RedisCommand("HELLO", "2", "AUTH", "alice", "plain-text-password")
        #expect(!hello.keepsPlainEncoding, "HELLO's arguments may be credentials even as plain strings")
        #expect(RedisCommand("GET", "k").keepsPlainEncoding)
    }

    @Test("a handshake step's commands go into one buffer of their exact size: a kilobyte token does not make it grow, which would leave its bytes in freed storage")
    func handshakePayloadDoesNotGrow() throws {
        let token = RedisSecret(String(repeating: "t", count: 1500))
        let commands = [
            RedisCommand("HELLO", "2", "AUTH", "alice", .secret(token), "SETNAME", "n"),
            RedisCommand("CLIENT", "SETINFO", "LIB-NAME", "redis-rotation"),
            RedisCommand("SELECT", "1"),
        ]
        let payload = try RedisConnection.encodeOnce(commands)
        // Reserved at the commands' counted size, which is what they wrote: never reallocated while the
        // password was in it.
        #expect(commands.reduce(0) { $0 + $1.encodedCount } == payload.readableBytes)
        #expect(payload.capacity >= payload.readableBytes)
        #expect(Array(payload.readableBytesView) == (try commands.flatMap { Array(try $0.encoded.readableBytesView) }))
    }

    @Test("every kind of argument side by side, empty ones between, and a password too large for the stack: the same bytes as written one by one")
    func mixedArgumentsThroughTheScratchArea() throws {
        var offsetBuffer = ByteBuffer(string: "--tail")
        offsetBuffer.moveReaderIndex(forwardBy: 2)
        let bigSecret = String((0..<300_000).map { Character(UnicodeScalar(UInt8(33 + $0 % 90))) })
        let small = "small-password"
        let arguments: [RedisArgument] = [
            "", .bytes(ByteBuffer()), .integer(Int.min), .integer(0), "grüß", .bytes(offsetBuffer), .secret(RedisSecret(small)),
            "", .secret(RedisSecret(bigSecret)), .bytes(ByteBuffer(bytes: allByteValues)), .secret(RedisSecret("")),
        ]
        func expected(_ name: String) -> [UInt8] {
            var bytes = Array("*\(arguments.count + 1)\r\n$\(name.utf8.count)\r\n\(name)\r\n".utf8)
            for argument in arguments {
                var buffer = ByteBuffer()
                argument.write(to: &buffer)
                bytes += Array("$\(buffer.readableBytes)\r\n".utf8) + Array(buffer.readableBytesView) + Array("\r\n".utf8)
            }
            return bytes
        }
        // Sensitive by its name and by its arguments; and a plain one with a name only.
        for name in ["AUTH", "ECHO", "X"] {
            let command = RedisCommand(name, arguments: arguments)
            #expect(command.isSensitive)
            #expect(Array(try command.encoded.readableBytesView) == expected(name), "\(name)")
        }
        #expect(String(buffer: try RedisCommand("PING").encoded) == "*1\r\n$4\r\nPING\r\n")
        #expect(String(buffer: try RedisCommand("ECHO", "").encoded) == "*2\r\n$4\r\nECHO\r\n$0\r\n\r\n")
    }
}

@Suite("Blocking command timeouts")
struct BlockDurationTests {
    @Test("each blocking command's timeout is read from the right argument and unit")
    func parsing() {
        #expect(RedisCommand("BLPOP", "a", "b", "1.5").blockDuration == .upTo(.milliseconds(1500)))
        #expect(RedisCommand("brpop", "a", 2).blockDuration == .upTo(.seconds(2)))
        #expect(RedisCommand("BLPOP", "a", "0").blockDuration == .indefinitely)
        #expect(RedisCommand("BLMOVE", "a", "b", "LEFT", "RIGHT", "3").blockDuration == .upTo(.seconds(3)))
        #expect(RedisCommand("BRPOPLPUSH", "a", "b", "4").blockDuration == .upTo(.seconds(4)))
        #expect(RedisCommand("BLMPOP", "2.5", "1", "a", "LEFT").blockDuration == .upTo(.milliseconds(2500)))
        #expect(RedisCommand("BZMPOP", "0", "1", "a", "MIN").blockDuration == .indefinitely)
        #expect(RedisCommand("BZPOPMIN", "a", "1e1").blockDuration == .upTo(.seconds(10)))
        #expect(RedisCommand("WAIT", "1", "250").blockDuration == .upTo(.milliseconds(250)))
        #expect(RedisCommand("WAITAOF", "1", "0", "100").blockDuration == .upTo(.milliseconds(100)))
        #expect(RedisCommand("XREAD", "COUNT", "2", "block", "1500", "STREAMS", "s", "$").blockDuration == .upTo(.milliseconds(1500)))
        #expect(RedisCommand("XREADGROUP", "GROUP", "g", "c", "BLOCK", "0", "STREAMS", "s", ">").blockDuration == .indefinitely)
        // Not blocking, or a timeout the server refuses: nothing to extend.
        #expect(RedisCommand("XREAD", "STREAMS", "s", "$").blockDuration == nil)
        #expect(RedisCommand("GET", "a").blockDuration == nil)
        #expect(RedisCommand("BLPOP", "a", "-1").blockDuration == nil)
        #expect(RedisCommand("BLPOP", "a", "inf").blockDuration == nil)
        #expect(RedisCommand("BLPOP", "a", "nan").blockDuration == nil)
        #expect(RedisCommand("BLPOP", "a", "0x10").blockDuration == nil)
        #expect(RedisCommand("XREAD", "BLOCK").blockDuration == nil)
        // Absurd timeouts are capped, far from any overflow.
        #expect(RedisCommand("BLPOP", "a", "1e300").blockDuration == .upTo(.seconds(30 * 365 * 86400)))
    }

    @Test("the reply deadline is the block plus the command timeout; 0 waits indefinitely")
    func replyTimeout() {
        #expect(BlockDuration.upTo(.seconds(2)).replyTimeout(commandTimeout: .seconds(1)) == .seconds(3))
        #expect(BlockDuration.indefinitely.replyTimeout(commandTimeout: .seconds(1)) == BlockDuration.indefiniteWait)
    }
}

@Suite("Idempotency from the specification")
struct IdempotencyTests {
    @Test("read-only and side-effect-free commands, and the documented writes, are resent; conditional and relative forms are not")
    func table() {
        for command in [
            RedisCommand("GET", "k"), RedisCommand("HGETALL", "h"), RedisCommand("XRANGE", "s", "-", "+"), RedisCommand("PING"),
            RedisCommand("CONFIG", "GET", "maxmemory"), RedisCommand("client", "list"), RedisCommand("OBJECT", "ENCODING", "k"),
            RedisCommand("SET", "k", "v"), RedisCommand("SET", "k", "v", "EXAT", "1900000000"), RedisCommand("SET", "k", "v", "KEEPTTL"),
            RedisCommand("MSET", "a", "1", "b", "2"), RedisCommand("HSET", "h", "f", "v"), RedisCommand("DEL", "k"),
            RedisCommand("UNLINK", "k"), RedisCommand("SADD", "s", "m"), RedisCommand("EXPIREAT", "k", "1900000000"),
            RedisCommand("XREAD", "BLOCK", "10", "STREAMS", "s", "0-0"), RedisCommand("SORT_RO", "k"), RedisCommand("EVAL_RO", "return 1", "0"),
        ] {
            #expect(command.isIdempotent, "\(command.name)")
        }
        for command in [
            RedisCommand("INCR", "k"), RedisCommand("LPUSH", "l", "v"), RedisCommand("SET", "k", "v", "NX"), RedisCommand("SET", "k", "v", "GET"),
            RedisCommand("SET", "k", "v", "EX", "10"), RedisCommand("set", "k", "v", "px", "10"), RedisCommand("EXPIREAT", "k", "1900000000", "GT"),
            RedisCommand("EXPIRE", "k", "10"), RedisCommand("PUBLISH", "c", "m"), RedisCommand("EVAL", "return 1", "0"),
            RedisCommand("BLPOP", "l", "1"), RedisCommand("CONFIG", "SET", "maxmemory", "1"), RedisCommand("CLIENT", "KILL", "ID", "1"),
            RedisCommand("FLUSHALL"), RedisCommand("XADD", "s", "*", "f", "v"), RedisCommand("XREAD", "BLOCK", "10", "STREAMS", "s", "$"),
        ] {
            #expect(!command.isIdempotent, "\(command.name)")
        }
        #expect(RedisCommand("GET", "k").isReadOnly && RedisCommand("PING").isReadOnly && !RedisCommand("SET", "k", "v").isReadOnly)
        #expect(!RedisCommand("SET", "k", "v").idempotent(false).isIdempotent)
        #expect(RedisCommand("INCR", "k").idempotent().isIdempotent)
    }
}
