import NIOCore
import Testing

@testable import RedisRotation

/// A hostile review of the reader's reused short-string buffer (`ReplyRecord.materialize`): a value
/// kept in any form (whole, an element of an array, a view, a slice, a copy changed in place) keeps
/// its bytes however many batches follow, of whatever size and split.
@Suite("Reply arena review")
struct ReplyArenaReviewTests {
    /// The start of the storage a string value's bytes live in.
    static func storage(_ value: RESPValue) -> UInt? {
        let buffer: ByteBuffer
        switch value {
        case .bulkString(let bytes), .simpleString(let bytes), .error(let bytes): buffer = bytes
        default: return nil
        }
        return buffer.withVeryUnsafeBytes { UInt(bitPattern: $0.baseAddress) }
    }

    static func bulk(_ bytes: [UInt8]) -> [UInt8] { Array("$\(bytes.count)\r\n".utf8) + bytes + Array("\r\n".utf8) }

    /// How a test holds on to (part of) a reply.
    enum Kept {
        case value(RESPValue, expected: RESPValue)
        case bytes(ByteBuffer, expected: [UInt8])
        case view(ByteBufferView, expected: [UInt8])

        var intact: Bool {
            switch self {
            case .value(let value, let expected): return value == expected
            case .bytes(let buffer, let expected): return Array(buffer.readableBytesView) == expected
            case .view(let view, let expected): return Array(view) == expected
            }
        }
    }

    static func payload(_ count: Int, _ fill: UInt8) -> [UInt8] { (0..<count).map { fill &+ UInt8(truncatingIfNeeded: $0) } }

    @Test("a value kept in any form keeps its bytes across 50 later batches of the same size, which get other storage", arguments: 0..<6)
    func keptInAnyForm(mode: Int) throws {
        let reader = RESPReader()
        // One batch: two replies, a bulk string and an array [simple, [bulk, bulk]], all short strings.
        func batch(_ fill: UInt8) -> (wire: [UInt8], values: [RESPValue]) {
            let a = Self.payload(100, fill), b = Self.payload(50, fill &+ 1), c = Self.payload(70, fill &+ 2)
            let wire = Self.bulk(a) + Array("*2\r\n+S\(fill)\r\n*2\r\n".utf8) + Self.bulk(b) + Self.bulk(c)
            let values: [RESPValue] = [
                .bulkString(ByteBuffer(bytes: a)),
                .array([.simpleString(ByteBuffer(string: "S\(fill)")), .array([.bulkString(ByteBuffer(bytes: b)), .bulkString(ByteBuffer(bytes: c))])]),
            ]
            return (wire, values)
        }
        let first = batch(7)
        try reader.feed(ByteBuffer(bytes: first.wire))
        let one = try #require(try reader.next())
        let two = try #require(try reader.next())
        #expect([one, two] == first.values)
        let keptStorage = try #require(Self.storage(one))
        var kept: [Kept] = []
        switch mode {
        case 0:
            kept.append(.value(one, expected: first.values[0]))
        case 1:
            // Only an element deep inside the array: the array itself is dropped.
            let inner = try #require(two.array?[1].array?[1])
            kept.append(.value(inner, expected: first.values[1].array![1].array![1]))
        case 2:
            guard case .bulkString(let bytes) = one else { throw RedisError(code: .protocolError, message: "not bulk") }
            kept.append(.view(bytes.readableBytesView, expected: Self.payload(100, 7)))
        case 3:
            guard case .bulkString(let bytes) = one else { throw RedisError(code: .protocolError, message: "not bulk") }
            kept.append(.bytes(bytes.getSlice(at: bytes.readerIndex + 10, length: 20)!, expected: Array(Self.payload(100, 7)[10..<30])))
        case 4:
            // A copy changed in place: the write lands in its own storage, never in the reader's.
            guard case .bulkString(var bytes) = one else { throw RedisError(code: .protocolError, message: "not bulk") }
            bytes.writeString("tail")
            bytes.setBytes([0xEE, 0xEE], at: bytes.readerIndex)
            var expected = Self.payload(100, 7)
            expected[0] = 0xEE
            expected[1] = 0xEE
            kept.append(.bytes(bytes, expected: expected + Array("tail".utf8)))
            // The reply's other values, kept as well, do not see that write.
            kept.append(.value(two, expected: first.values[1]))
        default:
            // A value read back out of a dictionary and a string made from it.
            let dictionary: [String: RESPValue] = ["k": one]
            kept.append(.value(try #require(dictionary["k"]), expected: first.values[0]))
        }
        for round in 0..<50 {
            let next = batch(UInt8(truncatingIfNeeded: 100 + round))
            try reader.feed(ByteBuffer(bytes: next.wire))
            let a = try #require(try reader.next())
            let b = try #require(try reader.next())
            #expect([a, b] == next.values, "round \(round)")
            #expect(Self.storage(a) != keptStorage, "round \(round): a new batch was written into storage a kept value still uses")
            for entry in kept { #expect(entry.intact, "mode \(mode) round \(round): a kept value changed") }
        }
    }

    @Test("with every value dropped, the next batch writes the same storage again; with one kept, it does not")
    func reuseOnlyWhenFree() throws {
        let reader = RESPReader()
        let wire = Self.bulk(Self.payload(200, 1)) + Self.bulk(Self.payload(200, 2))
        try reader.feed(ByteBuffer(bytes: wire))
        // The values are dropped when this closure returns.
        let base = try { () throws -> UInt in
            let first = try #require(try reader.next())
            _ = try reader.next()
            return try #require(Self.storage(first))
        }()
        try reader.feed(ByteBuffer(bytes: wire))
        let again = try #require(try reader.next())
        #expect(Self.storage(again) == base, "dropped values: the buffer is reused")
        _ = try reader.next()
        try reader.feed(ByteBuffer(bytes: wire))
        let third = try #require(try reader.next())
        #expect(Self.storage(third) != base, "a kept value: the buffer is not reused")
        #expect(again == .bulkString(ByteBuffer(bytes: Self.payload(200, 1))))
    }

    @Test("a batch of more than 16 KiB of short strings, kept or dropped, and the batches after it")
    func largeBatches() throws {
        let reader = RESPReader()
        var kept: [Kept] = []
        for round in 0..<20 {
            // 12..40 strings of 300..1500 bytes in one read: 3.6 KiB to 60 KiB of short strings.
            let count = 12 + (round * 7) % 29
            let length = 300 + (round * 137) % 1200
            var wire: [UInt8] = []
            var expected: [RESPValue] = []
            for index in 0..<count {
                let bytes = Self.payload(length, UInt8(truncatingIfNeeded: round * 31 + index))
                wire += Self.bulk(bytes)
                expected.append(.bulkString(ByteBuffer(bytes: bytes)))
            }
            try reader.feed(ByteBuffer(bytes: wire))
            for (index, want) in expected.enumerated() {
                let value = try #require(try reader.next())
                #expect(value == want)
                if round % 3 == 0, index % 5 == 0 { kept.append(.value(value, expected: want)) }
            }
            #expect(try reader.next() == nil)
            for entry in kept { #expect(entry.intact, "round \(round)") }
        }
    }

    @Test("replies split at every byte across reads, with values of earlier batches kept")
    func splitAcrossReads() throws {
        let reader = RESPReader()
        var kept: [Kept] = []
        for round in 0..<30 {
            let a = Self.payload(5 + round * 3, UInt8(round)), b = Self.payload(4100 + round, UInt8(round) &+ 9)
            let wire = Self.bulk(a) + Array("*3\r\n+x\(round)\r\n".utf8) + Self.bulk(b) + Self.bulk(a) + Array("-ERR e\(round)\r\n".utf8)
            let expected: [RESPValue] = [
                .bulkString(ByteBuffer(bytes: a)),
                .array([.simpleString(ByteBuffer(string: "x\(round)")), .bulkString(ByteBuffer(bytes: b)), .bulkString(ByteBuffer(bytes: a))]),
                .error(ByteBuffer(string: "ERR e\(round)")),
            ]
            // Split into pieces of 1..(round + 1) bytes, reading after each piece.
            var received: [RESPValue] = []
            var offset = 0
            while offset < wire.count {
                let end = min(wire.count, offset + 1 + (offset % (round + 1)))
                try reader.feed(ByteBuffer(bytes: wire[offset..<end]))
                while let value = try reader.next() { received.append(value) }
                offset = end
                for entry in kept { #expect(entry.intact, "round \(round) at byte \(offset)") }
            }
            #expect(received == expected, "round \(round)")
            if let value = received.first { kept.append(.value(value, expected: expected[0])) }
            if let inner = received.dropFirst().first?.array?.first { kept.append(.value(inner, expected: .simpleString(ByteBuffer(string: "x\(round)")))) }
        }
    }

    /// A random reply (nested up to `depth`), its wire form and its value.
    static func reply(depth: Int, using generator: inout SplitMix64) -> ([UInt8], RESPValue) {
        switch Int.random(in: 0..<(depth > 0 ? 6 : 5), using: &generator) {
        case 0:
            let length = Int.random(in: 0...[0, 16, 600, 5000][Int.random(in: 0..<4, using: &generator)], using: &generator)
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            return (Self.bulk(bytes), .bulkString(ByteBuffer(bytes: bytes)))
        case 1:
            let text = String(repeating: "s", count: Int.random(in: 0...40, using: &generator))
            return (Array("+\(text)\r\n".utf8), .simpleString(ByteBuffer(string: text)))
        case 2:
            let text = "ERR " + String(repeating: "e", count: Int.random(in: 0...40, using: &generator))
            return (Array("-\(text)\r\n".utf8), .error(ByteBuffer(string: text)))
        case 3:
            let number = Int64.random(in: -1000...1000, using: &generator)
            return (Array(":\(number)\r\n".utf8), .integer(number))
        case 4:
            return (Array("$-1\r\n".utf8), .null)
        default:
            let count = Int.random(in: 0...5, using: &generator)
            var wire = Array("*\(count)\r\n".utf8)
            var elements: [RESPValue] = []
            for _ in 0..<count {
                let (elementWire, element) = Self.reply(depth: depth - 1, using: &generator)
                wire += elementWire
                elements.append(element)
            }
            return (wire, .array(elements))
        }
    }

    /// Every string value inside `value`, with its path, for keeping parts of replies.
    static func parts(of value: RESPValue) -> [RESPValue] {
        if case .array(let elements) = value { return [value] + elements.flatMap(Self.parts(of:)) }
        return [value]
    }

    @Test("random replies in random splits; random parts kept and let go at random times; every kept part checked after every read", arguments: [1, 2, 3])
    func randomized(seed: UInt64) throws {
        var generator = SplitMix64(seed: 0xA4E4A + seed)
        let reader = RESPReader()
        var kept: [Kept] = []
        var pending: [RESPValue] = []
        for step in 0..<1500 {
            let count = Int.random(in: 1...6, using: &generator)
            var wire: [UInt8] = []
            for _ in 0..<count {
                let (replyWire, value) = Self.reply(depth: 3, using: &generator)
                wire += replyWire
                pending.append(value)
            }
            // Fed in 1 to 3 pieces, each read at once: batches form across the pieces.
            var offset = 0
            while offset < wire.count {
                let end = Int.random(in: 0..<3, using: &generator) == 0 ? wire.count : min(wire.count, offset + Int.random(in: 1...max(1, wire.count / 2), using: &generator))
                try reader.feed(ByteBuffer(bytes: wire[offset..<end]))
                offset = end
                while let value = try reader.next() {
                    let expected = pending.removeFirst()
                    #expect(value == expected, "step \(step)")
                    // Keep a random part of some replies, in a random form.
                    if Int.random(in: 0..<4, using: &generator) == 0 {
                        let parts = Array(zip(Self.parts(of: value), Self.parts(of: expected)))
                        let (part, want) = parts.randomElement(using: &generator)!
                        switch (part, Int.random(in: 0..<3, using: &generator)) {
                        case (.bulkString(let bytes), 1): kept.append(.view(bytes.readableBytesView, expected: Array(want.bulkBytes!)))
                        case (.bulkString(let bytes), 2) where bytes.readableBytes > 2:
                            kept.append(.bytes(bytes.getSlice(at: bytes.readerIndex + 1, length: bytes.readableBytes - 2)!, expected: Array(want.bulkBytes!.dropFirst().dropLast())))
                        default: kept.append(.value(part, expected: want))
                        }
                    }
                    for entry in kept where !entry.intact {
                        Issue.record("step \(step): a kept value changed")
                        return
                    }
                }
            }
            // Let some go, so that buffers become free to write again.
            if !kept.isEmpty, Int.random(in: 0..<3, using: &generator) == 0 {
                kept.remove(at: Int.random(in: 0..<kept.count, using: &generator))
            }
        }
        #expect(pending.isEmpty)
        for entry in kept { #expect(entry.intact) }
    }
}

extension RESPValue {
    /// A bulk string's bytes.
    fileprivate var bulkBytes: [UInt8]? {
        if case .bulkString(let bytes) = self { return Array(bytes.readableBytesView) }
        return nil
    }
}
