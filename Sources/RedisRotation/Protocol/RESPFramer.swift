#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Checks the reply stream against the RESP2 grammar and the reader's limits before hiredis sees a
/// byte of it, and finds where each reply ends.
///
/// hiredis 0.14.1 looks for the CRLF of a header or line by scanning everything it has buffered, again
/// on every call, so bytes that never form a line are buffered without bound and rescanned each time.
/// This checker keeps its place instead: each byte of a header, a line or a CRLF is looked at once, and
/// the payload of a bulk string is skipped by count. Whatever can no longer become a valid reply fails
/// at the byte that shows it.
///
/// Grammar, stricter than hiredis but agreeing with it on everything Redis sends:
/// - `$`, `*`, `:` headers: an optional `-`, then `0` or a digit 1-9 followed by digits (Redis's
///   `string2ll`, which hiredis applies once the line is complete), within 64 bits, then CRLF. So a
///   header has at most 20 characters before its CR. `$` and `*` are at least -1.
/// - `+` and `-` lines: any bytes but CR, at most `maximumLineLength` of them, then CRLF.
/// - a bulk string's payload is followed by CRLF (hiredis skips those two bytes unchecked).
///
/// A header that is whole in the bytes at hand (and a bulk string's payload and CRLF after it) is
/// checked in one pass over the bytes, not one call per byte: its digits, its CRLF and the limits, with
/// the same outcome as byte by byte. Anything unusual (a minus sign, a leading zero, 19 or more digits,
/// a limit reached, a header cut off by the end of the bytes) takes the byte-by-byte way from its type
/// byte, which reports it precisely. (A `HELLO` reply, thirty short strings, cost 9 K instructions byte
/// by byte.)
struct RESPFramer {
    private enum Header {
        case bulkString, array, integer

        var name: String {
            switch self {
            case .bulkString: return "bulk string length"
            case .array: return "array length"
            case .integer: return "integer"
            }
        }
    }

    private enum State {
        /// Can move to: header, line.
        case typeByte
        /// `value` is negative for a negative header. Can move to: headerLineFeed.
        case header(Header, negative: Bool, digits: Int, value: Int64)
        /// Can move to: typeByte, payload, payloadCarriageReturn.
        case headerLineFeed(Header, value: Int64)
        /// Can move to: lineLineFeed.
        case line(length: Int)
        /// Can move to: typeByte.
        case lineLineFeed
        /// Can move to: payloadCarriageReturn.
        case payload(remaining: Int)
        /// Can move to: payloadLineFeed.
        case payloadCarriageReturn
        /// Can move to: typeByte.
        case payloadLineFeed
    }

    let limits: RESPReaderLimits
    /// Every header byte one by one, as the grammar is written (tests compare the two ways).
    let byteByByte: Bool
    private var state = State.typeByte
    /// Elements still to come in each array open in the current reply, outermost first.
    private var open: [Int] = []
    private var replyBytes = 0
    private var replyElements = 0
    /// Items (values and array headers) complete so far: a parser that has seen fewer can make progress.
    private(set) var itemsCompleted = 0
    /// Bytes looked at one by one: every byte except the payloads of bulk strings, each at most once.
    private(set) var bytesInspected = 0

    init(limits: RESPReaderLimits, byteByByte: Bool = false) {
        self.limits = limits
        self.byteByByte = byteByByte
    }

    /// Checks `bytes` from the start until a reply ends or the bytes run out.
    ///
    /// - Returns: How many bytes belong to what was checked, and whether a reply ended with the last of them.
    /// - Throws: `protocolError` at the first byte that breaks the grammar or a limit.
    mutating func scan(_ bytes: UnsafeRawBufferPointer) throws(RedisError) -> (consumed: Int, replyEnded: Bool) {
        var index = 0
        while index < bytes.count {
            switch self.state {
            case .payload(let remaining):
                let taken = min(remaining, bytes.count - index)
                index += taken
                self.replyBytes += taken
                self.state = taken == remaining ? .payloadCarriageReturn : .payload(remaining: remaining - taken)
            case .line(let length):
                index += try self.scanLine(bytes, from: index, length: length)
            case .typeByte where !self.byteByByte:
                if let (consumed, replyEnded) = try self.wholeItem(bytes, from: index) {
                    index += consumed
                    if replyEnded { return (index, true) }
                } else {
                    let byte = bytes[index]
                    index += 1
                    if try self.step(byte) { return (index, true) }
                }
            default:
                let byte = bytes[index]
                index += 1
                if try self.step(byte) { return (index, true) }
            }
        }
        return (index, false)
    }

    /// A `$`, `*` or `:` header starting at `start` (a type byte) when it is whole in `bytes`, ordinary
    /// (no sign, no leading zero, at most 18 digits) and within every limit, checked in one pass: with a
    /// bulk string's payload and CRLF too when they are there. Returns the bytes it took and whether a
    /// reply ended; `nil` (with nothing changed) for anything else, which the byte-by-byte way takes.
    private mutating func wholeItem(_ bytes: UnsafeRawBufferPointer, from start: Int) throws(RedisError) -> (Int, Bool)? {
        let type = bytes[start]
        guard type == UInt8(ascii: "$") || type == UInt8(ascii: "*") || type == UInt8(ascii: ":") else { return nil }
        var index = start + 1
        var value: Int64 = 0
        let end = min(bytes.count, index + 19)
        while index < end {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit <= 9 else { break }
            value = value &* 10 &+ Int64(digit)
            index += 1
        }
        let digits = index - start - 1
        // At most 18 digits: no overflow above. A leading zero is only "0" itself.
        guard digits > 0, digits <= 18, digits == 1 || bytes[start + 1] != UInt8(ascii: "0") else { return nil }
        guard index + 1 < bytes.count, bytes[index] == 0x0D, bytes[index + 1] == 0x0A else { return nil }
        let headerLength = index + 2 - start
        guard headerLength <= self.limits.maximumReplyBytes - self.replyBytes else { return nil }
        switch type {
        case UInt8(ascii: "$"):
            guard value <= Int64(self.limits.maximumBulkLength) else { return nil }
            let length = Int(value)
            guard length + 2 <= self.limits.maximumReplyBytes - self.replyBytes - headerLength else { return nil }
            let payloadEnd = index + 2 + length
            if payloadEnd + 1 < bytes.count, bytes[payloadEnd] == 0x0D, bytes[payloadEnd + 1] == 0x0A {
                self.bytesInspected += headerLength + 2
                self.replyBytes += headerLength + length + 2
                return (payloadEnd + 2 - start, self.itemCompleted())
            }
            self.bytesInspected += headerLength
            self.replyBytes += headerLength
            self.state = length == 0 ? .payloadCarriageReturn : .payload(remaining: length)
            return (headerLength, false)
        case UInt8(ascii: "*"):
            guard value <= Int64(self.limits.maximumArrayElements) else { return nil }
            self.bytesInspected += headerLength
            self.replyBytes += headerLength
            return (headerLength, try self.headerCompleted(.array, value: value))
        default:
            self.bytesInspected += headerLength
            self.replyBytes += headerLength
            return (headerLength, self.itemCompleted())
        }
    }

    /// Looks for the CR of a `+` or `-` line with `memchr`, never past the line limit.
    private mutating func scanLine(_ bytes: UnsafeRawBufferPointer, from index: Int, length: Int) throws(RedisError) -> Int {
        // One byte past the limit, to see the CR or the excess (`maximumLineLength - length + 1` would
        // overflow for a maximumLineLength of Int.max).
        let window = min(bytes.count - index - 1, self.limits.maximumLineLength - length) + 1
        let start = bytes.baseAddress! + index
        let consumed: Int
        if let carriageReturn = memchr(start, 0x0D, window) {
            consumed = UnsafeRawPointer(carriageReturn) - start + 1
            self.state = .lineLineFeed
        } else {
            consumed = window
            guard length + window <= self.limits.maximumLineLength else {
                throw Self.overLimit(
                    "line longer than \(self.limits.maximumLineLength) bytes",
                    limit: "\(self.limits.maximumLineLength) bytes"
                )
            }
            self.state = .line(length: length + window)
        }
        self.bytesInspected += consumed
        try self.count(bytes: consumed)
        return consumed
    }

    /// One byte of a type, a header or a CRLF. Returns whether a reply ended with it.
    private mutating func step(_ byte: UInt8) throws(RedisError) -> Bool {
        self.bytesInspected += 1
        try self.count(bytes: 1)
        switch self.state {
        case .typeByte:
            switch byte {
            case UInt8(ascii: "+"), UInt8(ascii: "-"): self.state = .line(length: 0)
            case UInt8(ascii: ":"): self.state = .header(.integer, negative: false, digits: 0, value: 0)
            case UInt8(ascii: "$"): self.state = .header(.bulkString, negative: false, digits: 0, value: 0)
            case UInt8(ascii: "*"): self.state = .header(.array, negative: false, digits: 0, value: 0)
            default: throw Self.malformed("unknown reply type byte")
            }
            return false
        case .header(let header, let negative, let digits, let value):
            try self.headerByte(byte, header: header, negative: negative, digits: digits, value: value)
            return false
        case .headerLineFeed(let header, let value):
            guard byte == 0x0A else { throw Self.malformed("CR not followed by LF after the \(header.name)") }
            return try self.headerCompleted(header, value: value)
        case .lineLineFeed:
            guard byte == 0x0A else { throw Self.malformed("CR not followed by LF in a status or error line") }
            return self.itemCompleted()
        case .payloadCarriageReturn:
            guard byte == 0x0D else { throw Self.malformed("bulk string not followed by CRLF") }
            self.state = .payloadLineFeed
            return false
        case .payloadLineFeed:
            guard byte == 0x0A else { throw Self.malformed("bulk string not followed by CRLF") }
            return self.itemCompleted()
        case .line, .payload:
            preconditionFailure("lines and payloads are scanned in runs, not byte by byte")
        }
    }

    private mutating func headerByte(
        _ byte: UInt8,
        header: Header,
        negative: Bool,
        digits: Int,
        value: Int64
    ) throws(RedisError) {
        if byte == 0x0D {
            guard digits > 0 else { throw Self.malformed("\(header.name) without digits") }
            self.state = .headerLineFeed(header, value: value)
            return
        }
        if byte == UInt8(ascii: "-"), digits == 0, !negative {
            self.state = .header(header, negative: true, digits: 0, value: 0)
            return
        }
        guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else {
            throw Self.malformed("a byte other than a digit in the \(header.name)")
        }
        let digit = Int64(byte - UInt8(ascii: "0"))
        // As Redis's string2ll: no leading zeros and no "-0", so every number has one spelling.
        if digits == 1, value == 0 { throw Self.malformed("a leading zero in the \(header.name)") }
        if negative, digit == 0, digits == 0 { throw Self.malformed("minus zero in the \(header.name)") }
        if negative, header != .integer, digits > 0 || digit != 1 {
            throw Self.malformed("a \(header.name) below -1")
        }
        let (shifted, overflowA) = value.multipliedReportingOverflow(by: 10)
        let (next, overflowB) = negative ? shifted.subtractingReportingOverflow(digit) : shifted.addingReportingOverflow(digit)
        if overflowA || overflowB { throw Self.malformed("\(header.name) beyond 64 bits") }
        switch header {
        case .bulkString where next > self.limits.maximumBulkLength:
            throw Self.overLimit("bulk string of more than \(self.limits.maximumBulkLength) bytes", limit: "\(self.limits.maximumBulkLength) bytes")
        case .array where next > self.limits.maximumArrayElements:
            throw Self.overLimit("array of more than \(self.limits.maximumArrayElements) elements", limit: "\(self.limits.maximumArrayElements) elements")
        default:
            break
        }
        self.state = .header(header, negative: negative, digits: digits + 1, value: next)
    }

    private mutating func headerCompleted(_ header: Header, value: Int64) throws(RedisError) -> Bool {
        switch header {
        case .integer:
            return self.itemCompleted()
        case .bulkString:
            guard value >= 0 else { return self.itemCompleted() }
            let length = Int(value)
            // The whole payload is announced now: refuse it before any of it is buffered. (`length + 2`
            // would overflow for a length near Int64.max, which a maximumBulkLength of Int.max lets through.)
            guard length <= self.limits.maximumReplyBytes - self.replyBytes - 2 else {
                throw Self.overLimit(
                    "reply of more than \(self.limits.maximumReplyBytes) bytes",
                    limit: "\(self.limits.maximumReplyBytes) bytes"
                )
            }
            self.state = length == 0 ? .payloadCarriageReturn : .payload(remaining: length)
            return false
        case .array:
            guard value >= 0 else { return self.itemCompleted() }
            let depth = self.open.count + 1
            guard depth <= self.limits.maximumNestingDepth else {
                throw Self.overLimit("arrays nested \(depth) deep", limit: "\(self.limits.maximumNestingDepth) levels")
            }
            guard value > 0 else { return self.itemCompleted() }
            let count = Int(value)
            guard count <= self.limits.maximumReplyElements - self.replyElements else {
                throw Self.overLimit(
                    "reply of more than \(self.limits.maximumReplyElements) elements",
                    limit: "\(self.limits.maximumReplyElements) elements"
                )
            }
            self.replyElements += count
            self.open.append(count)
            self.itemsCompleted += 1
            self.state = .typeByte
            return false
        }
    }

    /// A value is complete: it fills a slot of the innermost open array, which may complete that array,
    /// and so on outwards. Returns whether the reply ended.
    private mutating func itemCompleted() -> Bool {
        self.itemsCompleted += 1
        self.state = .typeByte
        while let innermost = self.open.indices.last {
            self.open[innermost] -= 1
            if self.open[innermost] > 0 { return false }
            self.open.removeLast()
        }
        self.replyBytes = 0
        self.replyElements = 0
        return true
    }

    private mutating func count(bytes: Int) throws(RedisError) {
        self.replyBytes += bytes
        guard self.replyBytes <= self.limits.maximumReplyBytes else {
            throw Self.overLimit(
                "reply of more than \(self.limits.maximumReplyBytes) bytes",
                limit: "\(self.limits.maximumReplyBytes) bytes"
            )
        }
    }

    static func malformed(_ what: String) -> RedisError {
        RedisError(code: .protocolError, message: "malformed reply from the server: \(what)")
    }

    static func overLimit(_ what: String, limit: String) -> RedisError {
        RedisError(
            code: .protocolError,
            message: "reply exceeds a configured limit: \(what) (limit \(limit)); the connection is closed"
        )
    }
}
