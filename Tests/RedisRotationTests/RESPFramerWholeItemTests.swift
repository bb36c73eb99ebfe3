import Testing

@testable import RedisRotation

/// The framer checks a header that is whole in the bytes at hand in one pass (``RESPFramer`` "whole
/// item"), and every other byte one by one. Both ways must agree on everything a caller sees: how many
/// bytes each scan took, where replies end, the items and bytes counted, and the error, if any, with
/// its message. Compared here on random replies (valid, mutated and cut), random limits and random
/// splits of the stream, from a fixed seed so that a failure can be replayed.
@Suite("RESP framer: whole items agree with byte by byte")
struct RESPFramerWholeItemTests {
    /// One reply, as Redis writes it, nested at most `depth` deep.
    static func reply(depth: Int, using random: inout SplitMix64) -> [UInt8] {
        switch Int.random(in: 0..<(depth > 0 ? 7 : 6), using: &random) {
        case 0: return Array("+OK\r\n".utf8)
        case 1: return Array("-ERR something went wrong\r\n".utf8)
        case 2:
            let value: Int64 = [0, 1, -1, 42, Int64.max, Int64.min, Int64.random(in: -1_000_000...1_000_000, using: &random)].randomElement(using: &random)!
            return Array(":\(value)\r\n".utf8)
        case 3: return Array("$-1\r\n".utf8)
        case 4, 5:
            let length = [0, 1, 5, 17, 64, Int.random(in: 0...200, using: &random)].randomElement(using: &random)!
            let payload = (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
            return Array("$\(length)\r\n".utf8) + payload + Array("\r\n".utf8)
        default:
            if Bool.random(using: &random) && Int.random(in: 0..<8, using: &random) == 0 { return Array("*-1\r\n".utf8) }
            let count = Int.random(in: 0...5, using: &random)
            var bytes = Array("*\(count)\r\n".utf8)
            for _ in 0..<count { bytes += Self.reply(depth: depth - 1, using: &random) }
            return bytes
        }
    }

    /// Bytes that break headers in the ways the grammar cares about.
    static let mutations: [UInt8] = Array("0123456789-+$*:\r\nx ".utf8) + [0, 0xFF]

    static func limits(using random: inout SplitMix64) -> RESPReaderLimits {
        guard Bool.random(using: &random) else { return RESPReaderLimits() }
        return RESPReaderLimits(
            maximumBulkLength: Int.random(in: 0...120, using: &random),
            maximumArrayElements: Int.random(in: 0...6, using: &random),
            maximumNestingDepth: Int.random(in: 1...4, using: &random),
            maximumLineLength: Int.random(in: 16...40, using: &random),
            // Often small, so that a limit is crossed inside a header too, not only in a payload.
            maximumReplyBytes: Bool.random(using: &random) ? Int.random(in: 16...40, using: &random) : Int.random(in: 16...400, using: &random),
            maximumReplyElements: Int.random(in: 0...12, using: &random)
        )
    }

    /// What a framer reports for `stream` fed in `chunks`, scanned as ``RESPReader`` scans: again from
    /// where a reply ended, until a chunk is used up.
    static func trace(_ stream: [UInt8], chunks: [Int], limits: RESPReaderLimits, byteByByte: Bool) -> [String] {
        var framer = RESPFramer(limits: limits, byteByByte: byteByByte)
        var events: [String] = []
        var offset = 0
        for size in chunks {
            let chunk = Array(stream[offset..<min(stream.count, offset + size)])
            offset += chunk.count
            var position = 0
            while position < chunk.count {
                do {
                    let outcome = try chunk[position...].withUnsafeBytes { try framer.scan($0) }
                    position += outcome.consumed
                    events.append("\(outcome.consumed) \(outcome.replyEnded) items=\(framer.itemsCompleted) inspected=\(framer.bytesInspected)")
                    if !outcome.replyEnded { break }
                } catch {
                    events.append("error: \(error)")
                    return events
                }
            }
        }
        return events
    }

    @Test("20,000 random streams (a third of them mutated or cut, half with small limits), split at random: both ways report the same")
    func randomStreams() {
        var random = SplitMix64(seed: 0x5EED_F00D)
        var whole = 0
        var failed = 0
        for round in 0..<20_000 {
            var stream: [UInt8] = []
            for _ in 0..<Int.random(in: 1...4, using: &random) { stream += Self.reply(depth: 3, using: &random) }
            switch Int.random(in: 0..<6, using: &random) {
            case 0 where !stream.isEmpty:
                stream[Int.random(in: 0..<stream.count, using: &random)] = Self.mutations.randomElement(using: &random)!
            case 1 where !stream.isEmpty:
                stream.insert(Self.mutations.randomElement(using: &random)!, at: Int.random(in: 0...stream.count, using: &random))
            case 2:
                stream = Array(stream.prefix(Int.random(in: 0...stream.count, using: &random)))
            default:
                break
            }
            let limits = Self.limits(using: &random)
            var chunks: [Int] = []
            var left = stream.count
            while left > 0 {
                let size = Bool.random(using: &random) ? left : Int.random(in: 1...max(1, min(left, 24)), using: &random)
                chunks.append(size)
                left -= size
            }
            let fast = Self.trace(stream, chunks: chunks, limits: limits, byteByByte: false)
            let slow = Self.trace(stream, chunks: chunks, limits: limits, byteByByte: true)
            #expect(fast == slow, "round \(round): \(stream.map { $0 >= 32 && $0 < 127 ? String(UnicodeScalar($0)) : "\\\($0)" }.joined()) in \(chunks)")
            if fast != slow { return }
            if fast.last?.hasPrefix("error") == true { failed += 1 } else { whole += 1 }
        }
        // Both outcomes were exercised, many times.
        #expect(whole > 5_000 && failed > 2_000, "whole=\(whole) failed=\(failed)")
    }

    /// Limits as large as ``RESPReaderLimits`` allows, "no limit" in practice: the framer's arithmetic
    /// on them must not overflow (a trap is a crash a server can cause).
    static let hugeLimits = RESPReaderLimits(
        maximumBulkLength: .max,
        maximumArrayElements: Int(Int32.max),
        maximumNestingDepth: RESPReaderLimits.hiredisMaximumNestingDepth,
        maximumLineLength: .max,
        maximumReplyBytes: .max,
        maximumReplyElements: .max
    )

    /// Headers at the edges: numbers of 18, 19 and 20 digits around 64 bits, zero, empty strings and
    /// arrays, arrays that end together, bytes just below "0" and just above "9" next to the digits.
    static let corners: [String] = [
        "$0\r\n\r\n", "$0\r\n\rX", "*0\r\n", "*1\r\n*1\r\n*0\r\n", "*2\r\n*1\r\n:1\r\n*1\r\n$0\r\n\r\n",
        ":0\r\n", ":-0\r\n", ":00\r\n", ":01\r\n", ":-1\r\n", ":/\r\n", ":1/\r\n", ":1:\r\n", ":\r\n",
        ":999999999999999999\r\n", ":1000000000000000000\r\n", ":9223372036854775807\r\n",
        ":9223372036854775808\r\n", ":-9223372036854775808\r\n", ":-9223372036854775809\r\n",
        ":12345678901234567890\r\n", ":99999999999999999999\r\n",
        "$999999999999999999\r\n", "$1000000000000000000\r\n", "$9223372036854775806\r\n",
        "$9223372036854775807\r\n", "$9223372036854775808\r\n", "$-1\r\n", "$-2\r\n", "$\r\n", "$1\r\r\n",
        "*-1\r\n", "*2147483647\r\n", "*2147483648\r\n", "*999999999999999999\r\n", "*9223372036854775807\r\n",
        "$3\r\nabc\r\n", "$3\r\nabcXY", "$3\r\nab", "$3\r\nabc\r", "+OK\r\n", "-ERR x\r\n",
        "*3\r\n$1\r\na\r\n:7\r\n*1\r\n+OK\r\n",
    ]

    @Test("corner headers under small, default and huge limits, alone, before a line and inside an array, split at every byte: both ways report the same")
    func cornerStreams() {
        let limitSets = [
            RESPReaderLimits(),
            Self.hugeLimits,
            RESPReaderLimits(maximumBulkLength: 3, maximumArrayElements: 2, maximumNestingDepth: 2, maximumLineLength: 16, maximumReplyBytes: 24, maximumReplyElements: 3),
        ]
        var compared = 0
        for limits in limitSets {
            for corner in Self.corners {
                for stream in [corner, corner + "+OK\r\n", "*2\r\n" + corner + ":1\r\n"].map({ Array($0.utf8) }) {
                    var splits: [[Int]] = [[stream.count], Array(repeating: 1, count: stream.count)]
                    for cut in 1..<stream.count { splits.append([cut, stream.count - cut]) }
                    for chunks in splits {
                        let fast = Self.trace(stream, chunks: chunks, limits: limits, byteByByte: false)
                        let slow = Self.trace(stream, chunks: chunks, limits: limits, byteByByte: true)
                        #expect(fast == slow, "\(String(decoding: stream, as: UTF8.self).debugDescription) in \(chunks) under \(limits)")
                        if fast != slow { return }
                        compared += 1
                    }
                }
            }
        }
        #expect(compared > 3_000)
    }

    @Test("huge limits: a bulk string length near Int64.max is refused as over the reply limit (no overflow trap), an 18-digit one is awaited, and a status line is read, both ways")
    func hugeLimitsDoNotOverflow() throws {
        for byteByByte in [false, true] {
            for header in ["$9223372036854775807\r\n", "$9223372036854775806\r\n"] {
                var framer = RESPFramer(limits: Self.hugeLimits, byteByByte: byteByByte)
                let error = #expect(throws: RedisError.self) {
                    try Array(header.utf8).withUnsafeBytes { try framer.scan($0) }
                }
                #expect(error?.code == .protocolError && error?.message.contains("reply of more than") == true, "\(String(describing: error))")
            }
            var framer = RESPFramer(limits: Self.hugeLimits, byteByByte: byteByByte)
            let awaited = try Array("$999999999999999999\r\n".utf8).withUnsafeBytes { try framer.scan($0) }
            #expect(awaited.consumed == 21 && !awaited.replyEnded)
            var lines = RESPFramer(limits: Self.hugeLimits, byteByByte: byteByByte)
            let line = try Array("+OK\r\n".utf8).withUnsafeBytes { try lines.scan($0) }
            #expect(line.consumed == 5 && line.replyEnded)
        }
    }

    @Test("a HELLO reply (thirty short strings) is taken whole in one scan, both ways, with its fifteen items")
    func helloReply() throws {
        var wire = Array("*14\r\n".utf8)
        for word in ["server", "redis", "version", "7.0.15", "proto", "2", "id", "42", "mode", "standalone", "role", "master", "modules"] {
            wire += Array("$\(word.utf8.count)\r\n\(word)\r\n".utf8)
        }
        wire += Array("*0\r\n".utf8)
        for byteByByte in [false, true] {
            var framer = RESPFramer(limits: RESPReaderLimits(), byteByByte: byteByByte)
            let outcome = try wire.withUnsafeBytes { try framer.scan($0) }
            #expect(outcome.consumed == wire.count && outcome.replyEnded)
            #expect(framer.itemsCompleted == 15)
        }
    }
}
