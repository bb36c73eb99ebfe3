public import NIOCore

/// A key: text or arbitrary bytes. Write `"user:42"` or `"user:\(id)"` where a key is expected.
public struct RedisKey: Sendable, Hashable, ExpressibleByStringLiteral, ExpressibleByStringInterpolation,
    CustomStringConvertible
{
    let argument: RedisArgument

    /// The UTF-8 bytes of `string`.
    public init(_ string: String) { self.argument = .string(string) }
    /// The readable bytes of `buffer`: keys are binary-safe.
    public init(_ buffer: ByteBuffer) { self.argument = .bytes(buffer) }
    public init(stringLiteral value: String) { self.init(value) }

    /// Keys can hold user data, so only their length is shown.
    public var description: String { self.argument.description }
}
