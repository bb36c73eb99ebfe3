/// Upper bounds on what one reply may contain. A reply that exceeds one is a protocol error: the
/// connection closes with a ``RedisError/Code/protocolError`` instead of allocating without bound.
///
/// hiredis 0.14.1 predates the fix for CVE-2021-32765 and trusts server-sent lengths; these limits are
/// checked as the bytes arrive, before hiredis sees them and before any memory is reserved for what a
/// length announces.
public struct RESPReaderLimits: Sendable, Hashable {
    /// The longest bulk string accepted, in bytes. Default: 512 MiB, Redis's own `proto-max-bulk-len`.
    public var maximumBulkLength: Int
    /// The most elements one array may announce. Default: 16,777,216. At most `Int32.max`, what hiredis
    /// 0.14.1 can count.
    public var maximumArrayElements: Int
    /// The deepest nesting of arrays accepted; an array of scalars has depth 1. Default and upper bound: 7,
    /// the most hiredis 0.14.1 can parse.
    public var maximumNestingDepth: Int
    /// The longest simple string or error line accepted, in bytes. Default: 64 KiB. (Integers, bulk
    /// string lengths and array lengths have at most 20 characters, as Redis writes them.)
    public var maximumLineLength: Int
    /// The most bytes one whole reply may take on the wire, framing included. Default: 1 GiB, room for
    /// two bulk strings of the largest default size (an `MGET` of two 512 MiB values). A bulk string
    /// counts towards this too: raise both to accept longer ones.
    public var maximumReplyBytes: Int
    /// The most elements one whole reply may hold: the announced lengths of all its arrays, at every
    /// depth, added up. Default: 16,777,216, the same as ``maximumArrayElements``, so nesting arrays
    /// never makes a reply hold more values than the largest single array may.
    public var maximumReplyElements: Int

    /// The nesting depth hiredis 0.14.1 supports at most.
    public static let hiredisMaximumNestingDepth = 7

    public init(
        maximumBulkLength: Int = 512 * 1024 * 1024,
        maximumArrayElements: Int = 1 << 24,
        maximumNestingDepth: Int = RESPReaderLimits.hiredisMaximumNestingDepth,
        maximumLineLength: Int = 64 * 1024,
        maximumReplyBytes: Int = 1 << 30,
        maximumReplyElements: Int = 1 << 24
    ) {
        precondition(maximumBulkLength >= 0, "maximumBulkLength must not be negative")
        precondition(
            (0...Int(Int32.max)).contains(maximumArrayElements),
            "maximumArrayElements must be between 0 and \(Int32.max)"
        )
        precondition(
            (1...Self.hiredisMaximumNestingDepth).contains(maximumNestingDepth),
            "maximumNestingDepth must be between 1 and \(Self.hiredisMaximumNestingDepth)"
        )
        precondition(maximumLineLength >= 16, "maximumLineLength must be at least 16")
        precondition(maximumReplyBytes >= 16, "maximumReplyBytes must be at least 16")
        precondition(maximumReplyElements >= 0, "maximumReplyElements must not be negative")
        self.maximumBulkLength = maximumBulkLength
        self.maximumArrayElements = maximumArrayElements
        self.maximumNestingDepth = maximumNestingDepth
        self.maximumLineLength = maximumLineLength
        self.maximumReplyBytes = maximumReplyBytes
        self.maximumReplyElements = maximumReplyElements
    }
}
