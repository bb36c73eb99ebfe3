import NIOCore
import Testing

@testable import RedisRotation

/// Feeds `buffer` and takes every reply it completes; a thrown error comes from either step.
func feedAndDrain(_ reader: RESPReader, _ buffer: ByteBuffer) throws(RedisError) -> [RESPValue] {
    try reader.feed(buffer)
    var values: [RESPValue] = []
    while let value = try reader.next() { values.append(value) }
    return values
}

@Suite("RESP reader bounds: header grammar, line limits and per-reply budgets")
struct RESPReaderBoundsTests {
    /// Prefixes that can never become valid, whatever follows: each must fail as soon as it is fed.
    static let brokenPrefixes: [(String, String)] = [
        ("a bulk length whose CR is not followed by LF", "$5\rX"),
        ("an array length whose CR is not followed by LF", "*3\rX"),
        ("an integer whose CR is not followed by LF", ":12\rX"),
        ("a letter after bulk length digits", "$5x"),
        ("a letter after array length digits", "*1a"),
        ("a space before a bulk length", "$ 5"),
        ("a plus sign before an integer", ":+5"),
        ("a minus sign alone in a bulk length", "$-\r"),
        ("no digits before CRLF in a bulk length", "$\r"),
        ("no digits before CRLF in an integer", ":\r"),
        ("a bulk length below -1", "$-2"),
        ("an array length of minus zero", "*-0"),
        ("a leading zero in a bulk length", "$03"),
        ("a leading zero in an integer", ":-01"),
        ("an integer of minus zero", ":-0\r"),
        ("an integer beyond 64 bits", ":9223372036854775808"),
        ("an integer below 64 bits", ":-9223372036854775809"),
        ("a status line whose CR is not followed by LF", "+OK\rX"),
        ("an error line with a lone CR inside", "-ERR a\rb"),
        ("a bulk string not followed by CR", "$3\r\nfooX"),
        ("a bulk string whose CR is not followed by LF", "$3\r\nfoo\rX"),
        ("an unknown type byte inside an array", "*2\r\n:1\r\n?"),
    ]

    @Test("a prefix that cannot become valid fails at once, without waiting for more bytes", arguments: brokenPrefixes)
    func brokenPrefixFailsAtOnce(name: String, wire: String) {
        let reader = RESPReader()
        let error = #expect(throws: RedisError.self) { _ = try feedAndDrain(reader, buffer(wire)) }
        #expect(error?.code == .protocolError)
        #expect(throws: RedisError.self) { _ = try feedAndDrain(reader, buffer("+OK\r\n")) }
    }

    @Test("headers as Redis writes them are accepted: 0, -1 and the integer extremes")
    func validHeaders() throws {
        let reader = RESPReader()
        let values = try feedAndDrain(
            reader,
            buffer("$0\r\n\r\n*-1\r\n$-1\r\n:0\r\n:-9223372036854775808\r\n:9223372036854775807\r\n*1\r\n:10\r\n")
        )
        #expect(
            values == [
                .bulkString(buffer("")), .null, .null, .integer(0), .integer(.min), .integer(.max), .array([.integer(10)]),
            ]
        )
    }

    @Test("after `$5\\r`, 100 MiB without LF fail on the first piece instead of being buffered")
    func lengthLineWithoutLineFeed() {
        let reader = RESPReader()
        let piece = ByteBuffer(repeating: UInt8(ascii: "x"), count: 64 * 1024)
        var failedAtPiece: Int?
        do {
            _ = try feedAndDrain(reader, buffer("$5\r"))
            #expect(reader.bytesBufferedInHiredis == 3)
            for index in 1...1600 {
                failedAtPiece = index
                _ = try feedAndDrain(reader, piece)
            }
            failedAtPiece = nil
        } catch {
            #expect(error.code == .protocolError)
        }
        #expect(failedAtPiece == 1)
        // The piece that failed never reached hiredis's buffer.
        #expect(reader.bytesBufferedInHiredis == 3)
    }

    @Test("a status line that never ends fails once it is longer than maximumLineLength", arguments: ["+", "-"])
    func endlessLine(type: String) {
        let reader = RESPReader(limits: RESPReaderLimits(maximumLineLength: 1024))
        var fed = 0
        let error = #expect(throws: RedisError.self) {
            _ = try feedAndDrain(reader, buffer(type))
            // Bounded: 1 MiB in 100-byte pieces, far past the limit.
            for _ in 0..<10_000 {
                fed += 100
                _ = try feedAndDrain(reader, ByteBuffer(repeating: UInt8(ascii: "a"), count: 100))
            }
        }
        #expect(error?.code == .protocolError)
        #expect(fed > 1024 && fed <= 1024 + 100)
    }

    @Test("nesting cannot multiply the element limit: arrays in one reply share one element budget")
    func nestedArraysShareTheElementBudget() {
        let reader = RESPReader()
        // Each array alone is within maximumArrayElements; together they announce 2 + 2 * 16 Mi elements.
        let error = #expect(throws: RedisError.self) {
            _ = try feedAndDrain(reader, buffer("*2\r\n*16777216\r\n"))
            for _ in 0..<16 { _ = try feedAndDrain(reader, buffer("$0\r\n\r\n")) }
        }
        #expect(error?.code == .protocolError)
    }

    @Test("replies that arrived whole before malformed bytes are still delivered, then the error")
    func validRepliesBeforeGarbage() throws {
        let reader = RESPReader()
        try reader.feed(buffer("+OK\r\n:5\r\n$5\rX"))
        #expect(try reader.next() == .simpleString(buffer("OK")))
        #expect(try reader.next() == .integer(5))
        let error = #expect(throws: RedisError.self) { try reader.next() }
        #expect(error?.code == .protocolError)
    }

    @Test("one reply may not exceed maximumReplyBytes, counted across all of its elements")
    func replyByteBudget() throws {
        let limits = RESPReaderLimits(maximumReplyBytes: 64)
        // 4 + 3 * 20 = 64 bytes: exactly the budget.
        let element = "$13\r\n" + String(repeating: "b", count: 13) + "\r\n"
        let fitting = RESPReader(limits: limits)
        let values = try feedAndDrain(fitting, buffer("*3\r\n" + String(repeating: element, count: 3)))
        #expect(values.first?.array?.count == 3)
        // The same again, but every element a byte longer: the third header announces too much and fails
        // before its payload is sent.
        let longer = "$14\r\n" + String(repeating: "b", count: 14) + "\r\n"
        let reader = RESPReader(limits: limits)
        let error = #expect(throws: RedisError.self) {
            try feedAndDrain(reader, buffer("*3\r\n" + longer + longer + "$14\r\n"))
        }
        #expect(error?.code == .protocolError)
        #expect(error?.message.contains("reply of more than 64 bytes") == true)
        // Lines count too, not only bulk strings.
        let lines = RESPReader(limits: limits)
        let lineError = #expect(throws: RedisError.self) {
            try feedAndDrain(lines, buffer("*9\r\n" + String(repeating: "+0123456789\r\n", count: 9)))
        }
        #expect(lineError?.code == .protocolError)
    }

    @Test("the budget is per reply: consecutive replies each get a fresh one")
    func budgetsArePerReply() throws {
        let reader = RESPReader(limits: RESPReaderLimits(maximumReplyBytes: 32, maximumReplyElements: 4))
        let reply = "*4\r\n:1\r\n:2\r\n:3\r\n:4\r\n"
        let values = try feedAndDrain(reader, buffer(String(repeating: reply, count: 100)))
        #expect(values.count == 100)
    }

    @Test("one reply may not hold more than maximumReplyElements, counted at every depth")
    func replyElementBudget() throws {
        let limits = RESPReaderLimits(maximumReplyElements: 6)
        // 2 + 2 + 2 = 6 elements: exactly the budget.
        let fitting = RESPReader(limits: limits)
        let values = try feedAndDrain(fitting, buffer("*2\r\n*2\r\n:1\r\n:2\r\n*2\r\n:3\r\n:4\r\n"))
        #expect(values == [.array([.array([.integer(1), .integer(2)]), .array([.integer(3), .integer(4)])])])
        // 2 + 2 + 3: the third array's header fails before any of its elements arrive.
        let reader = RESPReader(limits: limits)
        let error = #expect(throws: RedisError.self) {
            try feedAndDrain(reader, buffer("*2\r\n*2\r\n:1\r\n:2\r\n*3\r\n"))
        }
        #expect(error?.code == .protocolError)
        #expect(error?.message.contains("reply of more than 6 elements") == true)
    }

    @Test("a 64 MiB bulk string fed in 64 KiB pieces parses with one hiredis pass and its payload never inspected")
    func largeBulkIsLinear() throws {
        let size = 64 << 20
        var wire = ByteBufferAllocator().buffer(capacity: size + 32)
        wire.writeString("$\(size)\r\n")
        var payload = ByteBufferAllocator().buffer(capacity: size)
        for block in 0..<(size / 4096) {
            payload.writeRepeatingByte(UInt8(truncatingIfNeeded: block), count: 4096)
        }
        wire.writeImmutableBuffer(payload)
        wire.writeString("\r\n")

        let reader = RESPReader()
        var values: [RESPValue] = []
        var pieces = 0
        while let piece = wire.readSlice(length: min(64 << 10, wire.readableBytes)), piece.readableBytes > 0 {
            pieces += 1
            values += try feedAndDrain(reader, piece)
        }
        #expect(pieces == 1025)
        #expect(values == [.bulkString(payload)])
        // hiredis is asked once, when the whole reply is in: no rescans of a growing buffer.
        #expect(reader.parseCount == 1)
        // The header and the CRLF after the payload.
        #expect(reader.bytesInspected == "$\(size)\r\n".utf8.count + 2)
        #expect(reader.bytesBufferedInHiredis == 0)
    }

    @Test("a long status line fed one byte at a time is inspected once per byte and parsed once")
    func longLineByteByByteIsLinear() throws {
        let wire = Array(("+" + String(repeating: "s", count: 60_000) + "\r\n").utf8)
        let reader = RESPReader()
        var values: [RESPValue] = []
        for byte in wire {
            values += try feedAndDrain(reader, ByteBuffer(bytes: [byte]))
        }
        #expect(values.count == 1)
        #expect(reader.bytesInspected == wire.count)
        #expect(reader.parseCount == 1)
    }

    @Test("pipelined replies in one large buffer reach hiredis one reply at a time")
    func pipelinedRepliesAreHandedOverOneByOne() throws {
        let reader = RESPReader()
        let count = 10_000
        try reader.feed(buffer(String(repeating: ":1\r\n", count: count)))
        // Only the first reply is with hiredis; the rest waits, checked later.
        #expect(reader.bytesBufferedInHiredis == 4)
        var values = 0
        while try reader.next() != nil { values += 1 }
        #expect(values == count)
        #expect(reader.parseCount == count)
    }

    @Test("an array arriving in pieces is built as its elements arrive, hiredis running only when there is something new")
    func arrayInPieces() throws {
        let reader = RESPReader()
        #expect(try feedAndDrain(reader, buffer("*3\r\n$3\r\nfoo\r\n$3\r\nb")) == [])
        let afterFirst = reader.parseCount
        // Nothing completes: hiredis is not asked again.
        #expect(try feedAndDrain(reader, buffer("a")) == [])
        #expect(reader.parseCount == afterFirst)
        #expect(try feedAndDrain(reader, buffer("r\r\n:7\r\n")) == [.array([.bulkString(buffer("foo")), .bulkString(buffer("bar")), .integer(7)])])
    }
}
