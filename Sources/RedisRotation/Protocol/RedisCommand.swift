import NIOCore
private import CHiredis

/// A command ready to send: its name and its arguments, encoded once as RESP by hiredis
/// (`redisFormatCommandArgv`, binary-safe; no format strings).
///
/// Its description names the command and counts its arguments; it never shows them.
public struct RedisCommand: Sendable, CustomStringConvertible {
    /// The command's name in upper case (`GET`, `SET`, `CLIENT`).
    public let name: String
    /// The number of arguments after the name.
    public let argumentCount: Int
    /// The RESP bytes that go on the wire.
    let encoded: ByteBuffer
    /// Whether the command carries a secret (a ``RedisArgument/secret(_:)`` argument, or a command such
    /// as `AUTH`, `HELLO`, `ACL`, `CONFIG` or `MIGRATE` whose arguments may be credentials). The server's
    /// message in reply to such a command is never kept, since servers echo arguments in errors.
    public let isSensitive: Bool
    /// Whether sending the command twice has the same effect as once, so that the pooled client may
    /// resend it when the connection dies before its reply arrives. True for read-only commands; mark
    /// others with ``idempotent(_:)`` (a plain `SET key value` is, `INCR` is not).
    public private(set) var isIdempotent: Bool
    /// Whether the command only reads: its effect does not depend on how often it ran.
    var isReadOnly: Bool { Self.readOnlyNames.contains(self.name) }
    /// What the command does to its connection's session (transaction, database, name, blocking).
    let sessionEffect: SessionEffect

    /// Commands that only read, so resending them is harmless.
    static let readOnlyNames: Set<String> = [
        "GET", "MGET", "EXISTS", "TTL", "PTTL", "TYPE", "STRLEN", "GETRANGE", "HGET", "HMGET", "HGETALL",
        "HEXISTS", "HLEN", "HKEYS", "HVALS", "HSTRLEN", "LRANGE", "LLEN", "LINDEX", "SMEMBERS", "SISMEMBER",
        "SMISMEMBER", "SCARD", "SRANDMEMBER", "ZRANGE", "ZSCORE", "ZMSCORE", "ZCARD", "ZRANK", "ZREVRANK",
        "ZCOUNT", "ZRANGEBYSCORE", "ZREVRANGE", "ZREVRANGEBYSCORE", "PING", "ECHO", "DBSIZE", "TIME",
        "SCAN", "HSCAN", "SSCAN", "ZSCAN", "KEYS", "RANDOMKEY", "BITCOUNT", "GETBIT", "PFCOUNT",
        "XRANGE", "XREVRANGE", "XLEN", "GEOPOS", "GEODIST", "OBJECT", "MEMORY", "LPOS", "SUBSTR",
    ]

    /// Commands whose arguments can be credentials even when passed as plain strings.
    private static let sensitiveNames: Set<String> = ["AUTH", "HELLO", "ACL", "CONFIG", "MIGRATE"]

    /// A command from its name and arguments: `RedisCommand("SET", "key", .bytes(data))`.
    public init(_ name: String, _ arguments: RedisArgument...) {
        self.init(name, arguments: arguments)
    }

    /// A command from its name and arguments.
    public init(_ name: String, arguments: [RedisArgument]) {
        precondition(!name.isEmpty, "a command needs a name")
        var all = [RedisArgument.string(name)]
        all.append(contentsOf: arguments)
        self.name = name.uppercased()
        self.argumentCount = arguments.count
        self.isSensitive = Self.sensitiveNames.contains(self.name) || arguments.contains(where: \.isSecret)
        self.isIdempotent = Self.readOnlyNames.contains(self.name)
        self.sessionEffect = SessionEffect(name: self.name, keywords: arguments.map(\.keyword))
        self.encoded = Self.encode(all, sensitive: self.isSensitive)
    }

    /// This command, marked as safe (or not) to resend after a lost connection.
    public func idempotent(_ isIdempotent: Bool = true) -> RedisCommand {
        var command = self
        command.isIdempotent = isIdempotent
        return command
    }

    public var description: String {
        "RedisCommand(\(self.name), \(self.argumentCount) argument\(self.argumentCount == 1 ? "" : "s"))"
    }

    /// Encodes with hiredis's binary-safe formatter. The arguments are gathered into one scratch buffer
    /// so that all of their addresses stay valid for the call; both that buffer and hiredis's output are
    /// wiped afterwards when the command carries a secret.
    private static func encode(_ arguments: [RedisArgument], sensitive: Bool) -> ByteBuffer {
        let total = arguments.reduce(0) { $0 + $1.byteCount }
        var scratch = ByteBufferAllocator().buffer(capacity: total)
        var lengths: [Int] = []
        lengths.reserveCapacity(arguments.count)
        for argument in arguments {
            let before = scratch.writerIndex
            argument.write(to: &scratch)
            lengths.append(scratch.writerIndex - before)
        }
        defer {
            if sensitive { scratch.withUnsafeMutableReadableBytes { wipe($0) } }
        }
        return scratch.withUnsafeReadableBytes { bytes -> ByteBuffer in
            // An empty scratch buffer may have no address; any valid address serves for empty arguments.
            let base = (bytes.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!).assumingMemoryBound(to: CChar.self)
            var pointers: [UnsafePointer<CChar>?] = []
            pointers.reserveCapacity(arguments.count)
            var offset = 0
            for length in lengths {
                pointers.append(base + offset)
                offset += length
            }
            var target: UnsafeMutablePointer<CChar>?
            let written = pointers.withUnsafeMutableBufferPointer { argv in
                lengths.withUnsafeBufferPointer { argvlen in
                    redisFormatCommandArgv(&target, Int32(arguments.count), argv.baseAddress, argvlen.baseAddress)
                }
            }
            guard written >= 0, let target else { fatalError("hiredis could not format a command: out of memory") }
            defer {
                if sensitive { wipe(UnsafeMutableRawBufferPointer(start: target, count: Int(written))) }
                redisFreeCommand(target)
            }
            return ByteBuffer(bytes: UnsafeRawBufferPointer(start: target, count: Int(written)))
        }
    }
}
