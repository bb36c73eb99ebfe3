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
}
