import NIOCore
import Testing

@testable import RedisRotation

/// A reply as it appears on the wire, with the value it must parse to.
struct WireSample: Sendable, CustomTestStringConvertible {
    let name: String
    let wire: [UInt8]
    let value: RESPValue

    init(_ name: String, _ wire: String, _ value: RESPValue) {
        self.name = name
        self.wire = Array(wire.utf8)
        self.value = value
    }

    init(_ name: String, bytes: [UInt8], _ value: RESPValue) {
        self.name = name
        self.wire = bytes
        self.value = value
    }

    var testDescription: String { self.name }
}

func buffer(_ string: String) -> ByteBuffer { ByteBuffer(string: string) }

let allByteValues: [UInt8] = Array(0...255)

let wireSamples: [WireSample] = [
    WireSample("simple string", "+OK\r\n", .simpleString(buffer("OK"))),
    WireSample("empty simple string", "+\r\n", .simpleString(buffer(""))),
    WireSample("error", "-WRONGPASS invalid username-password pair\r\n", .error(buffer("WRONGPASS invalid username-password pair"))),
    WireSample("integer", ":42\r\n", .integer(42)),
    WireSample("negative integer", ":-7\r\n", .integer(-7)),
    WireSample("zero", ":0\r\n", .integer(0)),
    WireSample("largest integer", ":9223372036854775807\r\n", .integer(Int64.max)),
    WireSample("smallest integer", ":-9223372036854775808\r\n", .integer(Int64.min)),
    WireSample("bulk string", "$5\r\nhello\r\n", .bulkString(buffer("hello"))),
    WireSample("empty bulk string", "$0\r\n\r\n", .bulkString(buffer(""))),
    WireSample("bulk string holding CRLF", "$4\r\n\r\n\r\n\r\n", .bulkString(buffer("\r\n\r\n"))),
    WireSample("null bulk string", "$-1\r\n", .null),
    WireSample("null array", "*-1\r\n", .null),
    WireSample("empty array", "*0\r\n", .array([])),
    WireSample(
        "array of every type",
        "*6\r\n+OK\r\n-ERR no\r\n:1\r\n$3\r\nfoo\r\n$-1\r\n*0\r\n",
        .array([
            .simpleString(buffer("OK")), .error(buffer("ERR no")), .integer(1), .bulkString(buffer("foo")), .null,
            .array([]),
        ])
    ),
    WireSample(
        "nested arrays",
        "*3\r\n*2\r\n:1\r\n:2\r\n*0\r\n*1\r\n*-1\r\n",
        .array([.array([.integer(1), .integer(2)]), .array([]), .array([.null])])
    ),
    WireSample(
        "arrays nested seven deep",
        "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:7\r\n",
        .array([.array([.array([.array([.array([.array([.array([.integer(7)])])])])])])])
    ),
    WireSample(
        "every byte value in a bulk string",
        bytes: Array("$256\r\n".utf8) + allByteValues + Array("\r\n".utf8),
        .bulkString(ByteBuffer(bytes: allByteValues))
    ),
]

@Suite("RESP reader (hiredis)")
struct RESPReaderTests {
    @Test("parses each reply type when fed whole", arguments: wireSamples)
    func parsesWhole(sample: WireSample) throws {
        let reader = RESPReader()
        try reader.feed(ByteBuffer(bytes: sample.wire))
        #expect(try reader.next() == sample.value)
        #expect(try reader.next() == nil)
    }

    @Test("parses each reply fed one byte at a time", arguments: wireSamples)
    func parsesByteByByte(sample: WireSample) throws {
        let reader = RESPReader()
        var values: [RESPValue] = []
        for (index, byte) in sample.wire.enumerated() {
            try reader.feed(ByteBuffer(bytes: [byte]))
            while let value = try reader.next() {
                values.append(value)
                #expect(index == sample.wire.count - 1, "a reply completed before its last byte")
            }
        }
        #expect(values == [sample.value])
    }

    @Test("parses a stream of every reply in random splits")
    func parsesRandomSplits() throws {
        let stream = wireSamples.flatMap(\.wire)
        var generator = SplitMix64(seed: 0x5EED)
        for _ in 0..<300 {
            let reader = RESPReader()
            var values: [RESPValue] = []
            var position = 0
            while position < stream.count {
                let length = Int.random(in: 1...max(1, min(64, stream.count - position)), using: &generator)
                try reader.feed(ByteBuffer(bytes: stream[position..<position + length]))
                position += length
                while let value = try reader.next() { values.append(value) }
            }
            #expect(values == wireSamples.map(\.value))
        }
    }

    @Test("a 1 MiB bulk string fed in 1000-byte pieces")
    func parsesLargeBulkInPieces() throws {
        var generator = SplitMix64(seed: 7)
        let payload = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let wire = Array("$\(payload.count)\r\n".utf8) + payload + Array("\r\n".utf8)
        let reader = RESPReader()
        var values: [RESPValue] = []
        var position = 0
        while position < wire.count {
            let end = min(wire.count, position + 1000)
            try reader.feed(ByteBuffer(bytes: wire[position..<end]))
            position = end
            while let value = try reader.next() { values.append(value) }
        }
        #expect(values == [.bulkString(ByteBuffer(bytes: payload))])
    }

    static let malformed: [(String, String)] = [
        ("unknown type byte", "?foo\r\n"),
        ("letters in a bulk length", "$abc\r\n"),
        ("bulk length below -1", "$-2\r\n"),
        ("letters in an integer", ":12a\r\n"),
        ("letters in an array length", "*x\r\n"),
        ("array length below -1", "*-5\r\n"),
        ("bulk string without CRLF after its bytes", "$3\r\nfooXY"),
        ("arrays nested deeper than hiredis allows", String(repeating: "*1\r\n", count: 9) + ":1\r\n"),
    ]

    @Test("replies fed together are built as a batch: long and short strings, arrays, random splits up to 64 KiB, values intact after later batches")
    func batches() throws {
        // Strings on both sides of the short-string limit, empty ones, nested arrays, integers.
        var generator = SplitMix64(seed: 0xBA7C4)
        var wire: [UInt8] = []
        var expected: [RESPValue] = []
        for index in 0..<3000 {
            switch index % 6 {
            case 0:
                let length = [0, 1, 4095, 4096, 4097, 20_000][index / 6 % 6]
                let payload = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
                wire += Array("$\(length)\r\n".utf8) + payload + Array("\r\n".utf8)
                expected.append(.bulkString(ByteBuffer(bytes: payload)))
            case 1:
                wire += Array("+OK\(index)\r\n".utf8)
                expected.append(.simpleString(buffer("OK\(index)")))
            case 2:
                wire += Array("*3\r\n$1\r\na\r\n*2\r\n:\(index)\r\n$-1\r\n-ERR e\(index)\r\n".utf8)
                expected.append(.array([.bulkString(buffer("a")), .array([.integer(Int64(index)), .null]), .error(buffer("ERR e\(index)"))]))
            case 3:
                wire += Array(":\(index)\r\n".utf8)
                expected.append(.integer(Int64(index)))
            case 4:
                wire += Array("*0\r\n".utf8)
                expected.append(.array([]))
            default:
                wire += Array("$5\r\nv\(String(index % 10_000).padding(toLength: 4, withPad: "_", startingAt: 0))\r\n".utf8)
                expected.append(.bulkString(buffer("v\(String(index % 10_000).padding(toLength: 4, withPad: "_", startingAt: 0))")))
            }
        }
        for round in 0..<20 {
            let reader = RESPReader()
            var values: [RESPValue] = []
            var position = 0
            while position < wire.count {
                let length = round == 0 ? wire.count : Int.random(in: 1...min(64 * 1024, wire.count - position), using: &generator)
                try reader.feed(ByteBuffer(bytes: wire[position..<position + length]))
                position += length
                while let value = try reader.next() { values.append(value) }
            }
            // Compared at the end: values taken early are still intact after later batches were built.
            #expect(values == expected, "round \(round)")
        }
    }

    @Test("a batch's buffer is written again only when no value of it is alive: kept values stay intact, dropped ones free it")
    func arenaReuse() throws {
        var generator = SplitMix64(seed: 0xA7E4A)
        let reader = RESPReader()
        var kept: [(RESPValue, RESPValue)] = []
        for index in 0..<2000 {
            // Short strings of varying size, one or several replies per read (a batch), some arrays.
            let count = Int.random(in: 1...4, using: &generator)
            var wire: [UInt8] = []
            var expected: [RESPValue] = []
            for part in 0..<count {
                let length = Int.random(in: 0...[8, 300, 5000][index % 3], using: &generator)
                let payload = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
                if part % 2 == 0 {
                    wire += Array("$\(length)\r\n".utf8) + payload + Array("\r\n".utf8)
                    expected.append(.bulkString(ByteBuffer(bytes: payload)))
                } else {
                    wire += Array("*2\r\n+S\(index)\r\n$\(length)\r\n".utf8) + payload + Array("\r\n".utf8)
                    expected.append(.array([.simpleString(buffer("S\(index)")), .bulkString(ByteBuffer(bytes: payload))]))
                }
            }
            try reader.feed(ByteBuffer(bytes: wire))
            for want in expected {
                let value = try #require(try reader.next())
                #expect(value == want, "read \(index)")
                // Every fifth value is kept by the "application"; the others are dropped at once.
                if Int.random(in: 0..<5, using: &generator) == 0 { kept.append((value, want)) }
            }
            #expect(try reader.next() == nil)
        }
        for (value, want) in kept { #expect(value == want) }
    }

    @Test("complete replies fed together with malformed bytes after them are returned first; then the error, for good")
    func batchThenMalformed() throws {
        let reader = RESPReader()
        try reader.feed(buffer("+OK\r\n:1\r\n*2\r\n$3\r\nabc\r\n$0\r\n\r\n?bad\r\n"))
        #expect(try reader.next() == .simpleString(buffer("OK")))
        #expect(try reader.next() == .integer(1))
        #expect(try reader.next() == .array([.bulkString(buffer("abc")), .bulkString(buffer(""))]))
        let error = #expect(throws: RedisError.self) { try reader.next() }
        #expect(error?.code == .protocolError)
        #expect(throws: RedisError.self) { try reader.next() }
        #expect(throws: RedisError.self) { try reader.feed(buffer("+OK\r\n")) }
    }

    @Test("a reply begun in an earlier read, completed in a batch with others: each whole and in order")
    func incompleteReplyThenBatch() throws {
        let reader = RESPReader()
        try reader.feed(buffer("*3\r\n$3\r\nfoo\r\n"))
        #expect(try reader.next() == nil)
        try reader.feed(buffer("$3\r\nbar\r\n:7\r\n+OK\r\n$0\r\n\r\n*2\r\n$1\r\nx"))
        #expect(try reader.next() == .array([.bulkString(buffer("foo")), .bulkString(buffer("bar")), .integer(7)]))
        #expect(try reader.next() == .simpleString(buffer("OK")))
        #expect(try reader.next() == .bulkString(buffer("")))
        #expect(try reader.next() == nil)
        try reader.feed(buffer("\r\n$1\r\ny\r\n"))
        #expect(try reader.next() == .array([.bulkString(buffer("x")), .bulkString(buffer("y"))]))
        #expect(try reader.next() == nil)
    }

    @Test("malformed input is a protocol error", arguments: malformed)
    func malformedInput(name: String, wire: String) throws {
        let reader = RESPReader()
        let error = #expect(throws: RedisError.self) {
            try reader.feed(buffer(wire))
            while try reader.next() != nil {}
        }
        #expect(error?.code == .protocolError)
        // The stream is out of sync: the reader keeps failing.
        #expect(throws: RedisError.self) { try reader.next() }
        #expect(throws: RedisError.self) { try reader.feed(buffer("+OK\r\n")) }
    }

    @Test("a bulk string over the limit fails as soon as its header arrives")
    func bulkLimitOnHeader() throws {
        let reader = RESPReader(limits: RESPReaderLimits(maximumBulkLength: 1024))
        try reader.feed(buffer("$1024\r\n"))
        #expect(try reader.next() == nil)
        let reader2 = RESPReader(limits: RESPReaderLimits(maximumBulkLength: 1024))
        // 1 GiB announced, no payload sent: refused without buffering anything.
        let error = #expect(throws: RedisError.self) { try feedAndDrain(reader2, buffer("$1073741824\r\n")) }
        #expect(error?.code == .protocolError)
        #expect(error?.message.contains("limit") == true)
    }

    @Test("a bulk string over the limit fails when it arrives whole")
    func bulkLimitWhole() throws {
        let reader = RESPReader(limits: RESPReaderLimits(maximumBulkLength: 4))
        let error = #expect(throws: RedisError.self) {
            try feedAndDrain(reader, buffer("*2\r\n$4\r\nabcd\r\n$5\r\nabcde\r\n"))
        }
        #expect(error?.code == .protocolError)
    }

    @Test("an array with more elements than the limit fails")
    func arrayLimit() throws {
        let reader = RESPReader(limits: RESPReaderLimits(maximumArrayElements: 3))
        try reader.feed(buffer("*3\r\n:1\r\n:2\r\n:3\r\n"))
        #expect(try reader.next() == .array([.integer(1), .integer(2), .integer(3)]))
        // 2^31-1 elements announced: refused before reserving anything.
        let error = #expect(throws: RedisError.self) { try feedAndDrain(reader, buffer("*2147483647\r\n")) }
        #expect(error?.code == .protocolError)
    }

    @Test("nesting deeper than the limit fails", arguments: 1...6)
    func nestingLimit(depth: Int) throws {
        let allowed = String(repeating: "*1\r\n", count: depth) + ":1\r\n"
        let tooDeep = String(repeating: "*1\r\n", count: depth + 1) + ":1\r\n"
        let reader = RESPReader(limits: RESPReaderLimits(maximumNestingDepth: depth))
        try reader.feed(buffer(allowed))
        #expect(try reader.next() != nil)
        let error = #expect(throws: RedisError.self) { try feedAndDrain(reader, buffer(tooDeep)) }
        #expect(error?.code == .protocolError)
    }

    @Test("a line longer than the limit fails before its end arrives", arguments: ["+", "-", ":"])
    func lineLimit(type: String) throws {
        // Within the limit: accepted (integers must also fit in 64 bits).
        let reader = RESPReader(limits: RESPReaderLimits(maximumLineLength: 64))
        let fitting = type == ":" ? "-" + String(repeating: "1", count: 18) : String(repeating: "a", count: 64)
        try reader.feed(buffer(type + fitting + "\r\n"))
        #expect(try reader.next() != nil)
        let reader2 = RESPReader(limits: RESPReaderLimits(maximumLineLength: 64))
        let error = #expect(throws: RedisError.self) {
            try feedAndDrain(reader2, buffer(type + String(repeating: "1", count: 100)))
        }
        #expect(error?.code == .protocolError)
    }

    @Test("a bulk length line that never ends fails")
    func endlessLengthLine() throws {
        let reader = RESPReader()
        let error = #expect(throws: RedisError.self) {
            try feedAndDrain(reader, buffer("$" + String(repeating: "9", count: 40)))
        }
        #expect(error?.code == .protocolError)
    }

    @Test("an incomplete reply yields nothing and keeps its bytes")
    func incompleteReply() throws {
        let reader = RESPReader()
        try reader.feed(buffer("*2\r\n$3\r\nfoo\r\n$3\r\nba"))
        #expect(try reader.next() == nil)
        try reader.feed(buffer("r\r\n+OK\r\n"))
        #expect(try reader.next() == .array([.bulkString(buffer("foo")), .bulkString(buffer("bar"))]))
        #expect(try reader.next() == .simpleString(buffer("OK")))
        #expect(try reader.next() == nil)
    }
}

/// A small deterministic generator, so random splits are the same on every run.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
