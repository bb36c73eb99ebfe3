/// Upper bounds on what one reply may contain. A reply that exceeds one is a protocol error: the
/// connection closes with a ``RedisError/Code/protocolError`` instead of allocating without bound.
///
/// hiredis 0.14.1 predates the fix for CVE-2021-32765 and trusts server-sent lengths; these limits are
/// checked before any memory is reserved for what a length announces.
public struct RESPReaderLimits: Sendable, Hashable {
    /// The longest bulk string accepted, in bytes. Default: 512 MiB, Redis's own `proto-max-bulk-len`.
    public var maximumBulkLength: Int
    /// The most elements one array may announce. Default: 16,777,216.
    public var maximumArrayElements: Int
    /// The deepest nesting of arrays accepted; an array of scalars has depth 1. Default and upper bound: 7,
    /// the most hiredis 0.14.1 can parse.
    public var maximumNestingDepth: Int
    /// The longest simple string, error or integer line accepted, in bytes. Default: 64 KiB.
    public var maximumLineLength: Int

    /// The nesting depth hiredis 0.14.1 supports at most.
    public static let hiredisMaximumNestingDepth = 7

    public init(
        maximumBulkLength: Int = 512 * 1024 * 1024,
        maximumArrayElements: Int = 1 << 24,
        maximumNestingDepth: Int = RESPReaderLimits.hiredisMaximumNestingDepth,
        maximumLineLength: Int = 64 * 1024
    ) {
        precondition(maximumBulkLength >= 0, "maximumBulkLength must not be negative")
        precondition(maximumArrayElements >= 0, "maximumArrayElements must not be negative")
        precondition(
            (1...Self.hiredisMaximumNestingDepth).contains(maximumNestingDepth),
            "maximumNestingDepth must be between 1 and \(Self.hiredisMaximumNestingDepth)"
        )
        precondition(maximumLineLength >= 16, "maximumLineLength must be at least 16")
        self.maximumBulkLength = maximumBulkLength
        self.maximumArrayElements = maximumArrayElements
        self.maximumNestingDepth = maximumNestingDepth
        self.maximumLineLength = maximumLineLength
    }
}
