import NIOCore
import Testing

@testable import RedisRotation

@Suite("Command encoding (hiredis)")
struct RedisCommandEncodingTests {
    @Test("arguments are encoded as RESP bulk strings")
    func encoding() {
        let command = RedisCommand("SET", "key", .integer(-12), .bytes([]))
        #expect(String(buffer: command.encoded) == "*4\r\n$3\r\nSET\r\n$3\r\nkey\r\n$3\r\n-12\r\n$0\r\n\r\n")
        #expect(command.name == "SET")
        #expect(command.argumentCount == 3)
    }

    @Test("all 256 byte values survive encoding, and decode back from a bulk reply")
    func everyByte() throws {
        let command = RedisCommand("SET", "k", .bytes(allByteValues))
        let expected = Array("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$256\r\n".utf8) + allByteValues + Array("\r\n".utf8)
        #expect(Array(command.encoded.readableBytesView) == expected)

        // The argument's own bytes, framed as a bulk reply, parse back to the same bytes.
        let reader = RESPReader()
        var reply = ByteBuffer(string: "$256\r\n")
        reply.writeBytes(allByteValues)
        reply.writeString("\r\n")
        try reader.feed(reply)
        #expect(try reader.next()?.bytes.map { Array($0.readableBytesView) } == allByteValues)
    }

    @Test("text arguments are UTF-8, byte buffers are taken from their reader index")
    func textAndBuffers() {
        var buffer = ByteBuffer(string: "xxpayload")
        buffer.moveReaderIndex(forwardBy: 2)
        let command = RedisCommand("ECHO", .bytes(buffer))
        #expect(String(buffer: command.encoded) == "*2\r\n$4\r\nECHO\r\n$7\r\npayload\r\n")
        let unicode = RedisCommand("ECHO", "grüß")
        #expect(String(buffer: unicode.encoded) == "*2\r\n$4\r\nECHO\r\n$6\r\ngrüß\r\n")
    }

    @Test("a secret argument goes on the wire as its bytes")
    func secretArgument() {
        let command = RedisCommand("AUTH", "alice", .secret("pw"))
        #expect(String(buffer: command.encoded) == "*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$2\r\npw\r\n")
    }
}
