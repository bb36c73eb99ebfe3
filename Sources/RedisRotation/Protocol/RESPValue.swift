public import NIOCore

/// A RESP2 reply as the server sent it.
///
/// hiredis 0.14.1 speaks RESP2 only, so these six shapes are all a reply can be. A null bulk string
/// (`$-1`) and a null array (`*-1`) are both ``null``.
public enum RESPValue: Sendable, Hashable {
    /// A simple string (`+OK`).
    case simpleString(ByteBuffer)
    /// An error reply (`-ERR ...`), as bytes; commands turn it into a thrown ``RedisError``.
    case error(ByteBuffer)
    /// An integer (`:42`).
    case integer(Int64)
    /// A bulk string (`$5 hello`): binary-safe bytes.
    case bulkString(ByteBuffer)
    /// A null bulk string or a null array.
    case null
    /// An array, whose elements may be arrays themselves.
    case array([RESPValue])
}

extension RESPValue {
    /// The bytes of a simple or bulk string; `nil` for other values.
    public var bytes: ByteBuffer? {
        switch self {
        case .simpleString(let buffer), .bulkString(let buffer): return buffer
        default: return nil
        }
    }

    /// The bytes of a simple or bulk string as UTF-8 text (invalid sequences are repaired);
    /// `nil` for other values.
    public var string: String? {
        self.bytes.map { String(buffer: $0) }
    }

    /// The integer, or a simple or bulk string that holds a decimal integer; `nil` otherwise.
    public var int: Int? {
        switch self {
        case .integer(let value): return Int(exactly: value)
        case .simpleString(let buffer), .bulkString(let buffer): return Int(String(buffer: buffer))
        default: return nil
        }
    }

    /// The elements of an array; `nil` for other values.
    public var array: [RESPValue]? {
        if case .array(let elements) = self { return elements }
        return nil
    }

    /// Whether this is ``null``.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }
}

extension RESPValue: CustomStringConvertible {
    /// The shape of the value and its size, never its contents: replies may hold user data.
    public var description: String {
        switch self {
        case .simpleString(let buffer): return "simpleString(\(buffer.readableBytes) bytes)"
        case .error(let buffer): return "error(\(buffer.readableBytes) bytes)"
        case .integer(let value): return "integer(\(value))"
        case .bulkString(let buffer): return "bulkString(\(buffer.readableBytes) bytes)"
        case .null: return "null"
        case .array(let elements): return "array(\(elements.count) elements)"
        }
    }
}
