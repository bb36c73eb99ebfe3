public import NIOCore

/// One argument of a Redis command: text, bytes, an integer, or a secret.
///
/// Arguments are binary-safe: a bulk string on the wire carries its length, so any byte value works.
/// Pass a password as ``secret(_:)``: the command is then treated as sensitive and the server's reply
/// to it is never copied into an error message.
public struct RedisArgument: Sendable, Hashable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByStringInterpolation
{
    enum Storage: Sendable, Hashable {
        case string(String)
        case bytes(ByteBuffer)
        case integer(Int64)
        case secret(RedisSecret)
    }

    let storage: Storage

    private init(_ storage: Storage) { self.storage = storage }

    /// The UTF-8 bytes of `string`.
    public static func string(_ string: String) -> RedisArgument { RedisArgument(.string(string)) }
    /// The readable bytes of `buffer`.
    public static func bytes(_ buffer: ByteBuffer) -> RedisArgument { RedisArgument(.bytes(buffer)) }
    /// The given bytes.
    public static func bytes(_ bytes: some Sequence<UInt8>) -> RedisArgument {
        RedisArgument(.bytes(ByteBuffer(bytes: bytes)))
    }
    /// The decimal text of `value`, as Redis expects integers.
    public static func integer(_ value: some BinaryInteger) -> RedisArgument {
        RedisArgument(.integer(Int64(value)))
    }
    /// A number as the server parses it (`1.5`, `-0.25`, `1e+20`, `inf`, `-inf`).
    public static func double(_ value: Double) -> RedisArgument {
        RedisArgument(.string(value.isInfinite ? (value < 0 ? "-inf" : "inf") : String(value)))
    }
    /// A key, as an argument of a command built by hand.
    public static func key(_ key: RedisKey) -> RedisArgument { key.argument }
    /// A secret (a password): its bytes go on the wire and nowhere else.
    public static func secret(_ secret: RedisSecret) -> RedisArgument { RedisArgument(.secret(secret)) }

    public init(stringLiteral value: String) { self.storage = .string(value) }
    public init(integerLiteral value: Int64) { self.storage = .integer(value) }

    var isSecret: Bool {
        if case .secret = self.storage { return true }
        return false
    }

    /// The value of an integer argument.
    var integerValue: Int64? {
        if case .integer(let value) = self.storage { return value }
        return nil
    }

    /// The text of a text argument of at most `maximumLength` bytes; `nil` for secrets, integers and
    /// longer arguments.
    func text(maximumLength: Int) -> String? {
        switch self.storage {
        case .string(let string) where string.utf8.count <= maximumLength: return string
        case .bytes(let buffer) where buffer.readableBytes <= maximumLength: return String(buffer: buffer)
        default: return nil
        }
    }

    /// The upper-cased text of a short text argument (a subcommand or an option such as `BLOCK`);
    /// `nil` otherwise. Secrets and long arguments are never looked at.
    var keyword: String? {
        switch self.storage {
        case .string(let string) where string.utf8.count <= 16: return string.uppercased()
        case .bytes(let buffer) where buffer.readableBytes <= 16: return String(buffer: buffer).uppercased()
        default: return nil
        }
    }

    /// The number of bytes the argument occupies on the wire (without framing).
    var byteCount: Int {
        switch self.storage {
        case .string(let string): return string.utf8.count
        case .bytes(let buffer): return buffer.readableBytes
        case .integer(let value): return String(value).utf8.count
        case .secret(let secret): return secret.count
        }
    }

    /// Copies the argument's bytes to the start of `target` (at least ``byteCount`` bytes long) and
    /// returns how many it copied.
    func copyBytes(to target: UnsafeMutableRawBufferPointer) -> Int {
        func copy(_ bytes: UnsafeRawBufferPointer) -> Int {
            precondition(bytes.count <= target.count, "an argument's bytes outgrew their count")
            if let source = bytes.baseAddress, bytes.count > 0 {
                target.baseAddress!.copyMemory(from: source, byteCount: bytes.count)
            }
            return bytes.count
        }
        switch self.storage {
        case .string(var string): return string.withUTF8 { copy(UnsafeRawBufferPointer($0)) }
        case .bytes(let bytes): return bytes.withUnsafeReadableBytes(copy)
        case .integer(let value):
            var text = String(value)
            return text.withUTF8 { copy(UnsafeRawBufferPointer($0)) }
        case .secret(let secret): return secret.withUnsafeBytes(copy)
        }
    }

    /// Appends the argument's bytes to `buffer`.
    func write(to buffer: inout ByteBuffer) {
        switch self.storage {
        case .string(let string): buffer.writeString(string)
        case .bytes(let bytes): buffer.writeImmutableBuffer(bytes)
        case .integer(let value): buffer.writeString(String(value))
        case .secret(let secret): secret.withUnsafeBytes { _ = buffer.writeBytes($0) }
        }
    }
}

extension RedisArgument: CustomStringConvertible {
    /// Never the contents: arguments may hold user data or secrets.
    public var description: String {
        self.isSecret ? "<redacted>" : "<\(self.byteCount) bytes>"
    }
}
