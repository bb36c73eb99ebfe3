import NIOCore
import RedisRotation

// Input: byte 0 picks the reader's limits, byte 1 how the stream is cut into reads, the rest is the
// stream. The stream is read three ways (whole; in pieces with next() drained after each; in pieces
// all fed before next() is called), which must give the same replies and fail alike. Each reply
// must re-encode to exactly the bytes it came from and keep within the limits.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRESPReader(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 2 else { return -1 }
    let limits = makeLimits(data[0])
    let stream = Array(UnsafeBufferPointer(start: data + 2, count: size - 2))
    let pieces = cuts(seed: data[1], count: stream.count)

    let whole = read(stream, pieces: [stream.count], limits: limits, drainEachPiece: true)
    let drained = read(stream, pieces: pieces, limits: limits, drainEachPiece: true)
    let pipelined = read(stream, pieces: pieces, limits: limits, drainEachPiece: false)
    check(whole == drained, "reading in pieces changed the outcome: \(whole) vs \(drained)")
    check(whole == pipelined, "feeding every piece before next() changed the outcome: \(whole) vs \(pipelined)")

    var offset = 0
    for value in whole.values {
        checkLimits(value, limits: limits)
        offset += checkEncoding(value, matches: stream, at: offset)
    }
    check(offset <= stream.count, "replies took more bytes than were fed")
    return 0
}

struct Outcome: Equatable, CustomStringConvertible {
    var values: [RESPValue] = []
    var failed = false

    var description: String { "\(self.values.count) replies\(self.failed ? ", then failed" : "")" }
}

/// Limits chosen by one byte: bits 0-4 shrink one limit each to a size a short input can reach,
/// bits 5-7 set the nesting depth (0 means the default, 7).
func makeLimits(_ byte: UInt8) -> RESPReaderLimits {
    let depth = Int(byte >> 5)
    return RESPReaderLimits(
        maximumBulkLength: byte & 0x01 != 0 ? 8 : 512 * 1024 * 1024,
        maximumArrayElements: byte & 0x02 != 0 ? 4 : 1 << 24,
        maximumNestingDepth: depth == 0 ? RESPReaderLimits.hiredisMaximumNestingDepth : depth,
        maximumLineLength: byte & 0x04 != 0 ? 16 : 64 * 1024,
        maximumReplyBytes: byte & 0x08 != 0 ? 64 : 1 << 30,
        maximumReplyElements: byte & 0x10 != 0 ? 6 : 1 << 24
    )
}

/// Piece sizes adding up to `count`: one byte each for seed 0, otherwise 1 to `seed` bytes from a
/// generator seeded with it.
func cuts(seed: UInt8, count: Int) -> [Int] {
    var pieces: [Int] = []
    var left = count
    var state = UInt32(seed) &* 2_654_435_761 | 1
    while left > 0 {
        state ^= state << 13
        state ^= state >> 17
        state ^= state << 5
        let piece = seed == 0 ? 1 : min(left, 1 + Int(state % UInt32(seed)))
        pieces.append(piece)
        left -= piece
    }
    return pieces
}

func read(_ stream: [UInt8], pieces: [Int], limits: RESPReaderLimits, drainEachPiece: Bool) -> Outcome {
    let reader = RESPReader(limits: limits)
    var outcome = Outcome()
    var start = 0
    do {
        for piece in pieces {
            try reader.feed(ByteBuffer(bytes: stream[start..<start + piece]))
            start += piece
            if drainEachPiece {
                while let value = try reader.next() { outcome.values.append(value) }
            }
        }
        while let value = try reader.next() { outcome.values.append(value) }
        let after = try reader.next()
        check(after == nil, "next() gave a reply after it had given nil")
    } catch {
        check(error.code == .protocolError, "the reader failed with \(error.code), not protocolError")
        outcome.failed = true
        // A reader that failed stays failed: the stream is out of sync.
        do {
            _ = try reader.next()
            check(false, "next() succeeded after the reader failed")
        } catch {}
    }
    return outcome
}

/// Walks a reply and checks every limit it is subject to.
func checkLimits(_ value: RESPValue, limits: RESPReaderLimits) {
    var elements = 0
    func walk(_ value: RESPValue, depth: Int) {
        switch value {
        case .simpleString(let bytes), .error(let bytes):
            check(bytes.readableBytes <= limits.maximumLineLength, "a line over maximumLineLength")
            check(!bytes.readableBytesView.contains(0x0D), "a CR inside a status or error line")
        case .bulkString(let bytes):
            check(bytes.readableBytes <= limits.maximumBulkLength, "a bulk string over maximumBulkLength")
        case .integer, .null:
            break
        case .array(let items):
            check(depth + 1 <= limits.maximumNestingDepth, "arrays nested deeper than maximumNestingDepth")
            check(items.count <= limits.maximumArrayElements, "an array over maximumArrayElements")
            elements += items.count
            for item in items { walk(item, depth: depth + 1) }
        }
    }
    walk(value, depth: 0)
    check(elements <= limits.maximumReplyElements, "a reply over maximumReplyElements")
}

/// Encodes `value` as RESP2 and compares it with the stream at `offset`; returns its length on the wire.
/// A null encodes as `$-1`; the stream may hold `*-1` there, which reads as the same value.
func checkEncoding(_ value: RESPValue, matches stream: [UInt8], at offset: Int) -> Int {
    var encoded: [UInt8] = []
    var nulls: Set<Int> = []
    encode(value, into: &encoded, nulls: &nulls)
    check(offset + encoded.count <= stream.count, "a reply re-encodes longer than the bytes left")
    for (index, byte) in encoded.enumerated() {
        let actual = stream[offset + index]
        check(
            actual == byte || (nulls.contains(index) && actual == UInt8(ascii: "*")),
            "a reply re-encodes differently at byte \(offset + index)"
        )
    }
    return encoded.count
}

func encode(_ value: RESPValue, into out: inout [UInt8], nulls: inout Set<Int>) {
    func line(_ type: Character, _ text: some Sequence<UInt8>) {
        out.append(type.asciiValue!)
        out.append(contentsOf: text)
        out.append(contentsOf: [0x0D, 0x0A])
    }
    switch value {
    case .simpleString(let bytes): line("+", bytes.readableBytesView)
    case .error(let bytes): line("-", bytes.readableBytesView)
    case .integer(let number): line(":", String(number).utf8)
    case .bulkString(let bytes):
        line("$", String(bytes.readableBytes).utf8)
        out.append(contentsOf: bytes.readableBytesView)
        out.append(contentsOf: [0x0D, 0x0A])
    case .null:
        nulls.insert(out.count)
        line("$", "-1".utf8)
    case .array(let items):
        line("*", String(items.count).utf8)
        for item in items { encode(item, into: &out, nulls: &nulls) }
    }
}

/// A broken invariant is a finding: abort, so that libFuzzer saves the input.
func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError("invariant broken: \(message())") }
}
