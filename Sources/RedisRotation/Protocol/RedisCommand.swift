import NIOCore
private import CHiredis

/// A command ready to send: its name and its arguments, encoded once as RESP by hiredis
/// (`redisFormatCommandArgv`, binary-safe; no format strings).
///
/// An argument longer than the server accepts (512 MiB), or a command too long for hiredis to encode,
/// is not encoded: sending the command throws ``RedisError/Code/invalidArgument`` and writes nothing.
///
/// Its description names the command and counts its arguments; it never shows them.
public struct RedisCommand: Sendable, CustomStringConvertible {
    /// Everything but the resend mark, in one shared box: a command is copied on every hop of its way
    /// (into arrays, closures, retries), and a copy then costs one retain instead of one per field. A
    /// short encoding (at most ``inlineEncodingLimit`` bytes: `GET`, a `SET` of a small value) is kept
    /// in the box itself and copied on the event loop into the connection's outbound buffer, so such a
    /// command costs one allocation instead of three (the box, a buffer and its bytes).
    private let storage: Storage

    private final class Storage: Sendable {
        let name: String
        let argumentCount: Int
        /// A short encoding: its bytes, the first `inlineCount` of `inlineBytes`.
        let inlineBytes: InlineEncoding
        let inlineCount: Int
        /// A longer encoding, in a buffer of its own, written as it is (no copy); `nil` for a short one.
        let encodedBytes: ByteBuffer?
        let encodedSecret: RedisSecret?
        let encodingError: RedisError?
        let isSensitive: Bool
        let isReadOnly: Bool
        let sessionEffect: SessionEffect
        let routingArguments: [RedisArgument]
        let sensitiveSlot: Result<Int?, RedisError>?
        let blockDuration: BlockDuration?
        let pubSubCommand: PubSubStateMachine.Command?

        init(
            name: String,
            argumentCount: Int,
            inlineBytes: InlineEncoding,
            inlineCount: Int,
            encodedBytes: ByteBuffer?,
            encodedSecret: RedisSecret?,
            encodingError: RedisError?,
            isSensitive: Bool,
            isReadOnly: Bool,
            sessionEffect: SessionEffect,
            routingArguments: [RedisArgument],
            sensitiveSlot: Result<Int?, RedisError>?,
            blockDuration: BlockDuration?,
            pubSubCommand: PubSubStateMachine.Command?
        ) {
            self.name = name
            self.argumentCount = argumentCount
            self.inlineBytes = inlineBytes
            self.inlineCount = inlineCount
            self.encodedBytes = encodedBytes
            self.encodedSecret = encodedSecret
            self.encodingError = encodingError
            self.isSensitive = isSensitive
            self.isReadOnly = isReadOnly
            self.sessionEffect = sessionEffect
            self.routingArguments = routingArguments
            self.sensitiveSlot = sensitiveSlot
            self.blockDuration = blockDuration
            self.pubSubCommand = pubSubCommand
        }
    }

    /// The command's name in upper case (`GET`, `SET`, `CLIENT`).
    public var name: String { self.storage.name }
    /// The number of arguments after the name.
    public var argumentCount: Int { self.storage.argumentCount }
    /// A long encoding's own buffer; `nil` for a short one (kept inline), when ``encodingError`` is set,
    /// or when the command is sensitive: then the bytes live only in `encodedSecret`, wiped when the
    /// last copy goes away.
    private var encodedBytes: ByteBuffer? { self.storage.encodedBytes }
    private var encodedSecret: RedisSecret? { self.storage.encodedSecret }
    /// Why the command cannot be sent: an argument or the whole command is too large, or the command
    /// would break the one-reply-per-command protocol this client speaks (`CLIENT REPLY OFF|SKIP`,
    /// `HELLO 3`).
    var encodingError: RedisError? { self.storage.encodingError }
    /// Whether the command carries a secret (a ``RedisArgument/secret(_:)`` argument, or a command such
    /// as `AUTH`, `HELLO`, `ACL`, `CONFIG` or `MIGRATE` whose arguments may be credentials). The server's
    /// message in reply to such a command is never kept, since servers echo arguments in errors.
    public var isSensitive: Bool { self.storage.isSensitive }
    /// Whether sending the command twice has the same effect as once, so that the pooled client may
    /// resend it when the connection dies before its reply arrives. True for commands the server's
    /// specification flags read-only, commands that change nothing (`PING`, `INFO`, `CONFIG GET`, ...),
    /// and a documented set of writes (`SET` without `GET`/`NX`/`XX`/`EX`/`PX`, `MSET`, `HSET`, `DEL`,
    /// `UNLINK`, `SADD`, `SREM`, `ZREM`, `HDEL`, `PERSIST`, unconditional `EXPIREAT`/`PEXPIREAT`); a resent
    /// write's reply reflects the resend (a `DEL` may answer 0). Override with ``idempotent(_:)``
    /// (`INCR` is not idempotent; a `SET ... NX` you know is safe to repeat can be marked).
    public private(set) var isIdempotent: Bool
    /// Whether the command runs a script or function, whose error replies are the script's own (one can
    /// write and then return an error that looks like a server state).
    var isScript: Bool { Self.scriptNames.contains(self.name) }
    static let scriptNames: Set<String> = ["EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"]
    /// Whether the command only reads: its effect does not depend on how often it ran.
    var isReadOnly: Bool { self.storage.isReadOnly }
    /// What the command does to its connection's session (transaction, database, name, blocking).
    var sessionEffect: SessionEffect { self.storage.sessionEffect }
    /// The arguments after the name, kept for routing by key (Redis Cluster); empty for a sensitive
    /// command, whose arguments may be credentials: its slot is found once, here, instead.
    var routingArguments: [RedisArgument] { self.storage.routingArguments }
    /// The slot of a sensitive command (`MIGRATE ... AUTH`, a `SET` of a secret value), found when it
    /// was built so that its arguments need not be kept.
    var sensitiveSlot: Result<Int?, RedisError>? { self.storage.sensitiveSlot }
    /// How long a blocking command may wait on the server, from its own timeout argument; `nil` for
    /// commands that do not block (or whose timeout is not a number: the server refuses those).
    var blockDuration: BlockDuration? { self.storage.blockDuration }
    /// What the command is to the pub/sub reader (a subscribe or unsubscribe of some kind, `RESET`), if
    /// anything: found once, not on every write.
    var pubSubCommand: PubSubStateMachine.Command? { self.storage.pubSubCommand }

    /// Room for a short encoding in a command's storage (256 bytes, 8-byte aligned).
    struct InlineEncoding: Sendable {
        static let capacity = 256
        // swift-format-ignore
        var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                    UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                    UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                    UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

        init() {}

        init(_ bytes: UnsafeRawBufferPointer) {
            precondition(bytes.count <= Self.capacity, "an inline encoding holds at most \(Self.capacity) bytes")
            withUnsafeMutableBytes(of: &self.words) { $0.copyMemory(from: bytes) }
        }
    }

    /// The longest encoding kept in a command's storage and copied into the connection's outbound
    /// buffer; a longer one keeps a buffer of its own and is written without a copy.
    static let inlineEncodingLimit = InlineEncoding.capacity

    /// The longest argument accepted: the default `proto-max-bulk-len` of the server, which refuses a
    /// longer one with a protocol error and closes the connection.
    static let maximumArgumentLength = 512 * 1024 * 1024
    /// The longest command hiredis 0.14.1 can encode: `redisFormatCommandArgv` counts in `int` and
    /// allocates one byte more, so a longer one would overflow (a trap at 2 GiB, a heap overflow at 4).
    static let maximumEncodedLength = Int(Int32.max) - 1

    /// Commands whose arguments can be credentials even when passed as plain strings.
    static let sensitiveNames: Set<String> = ["AUTH", "HELLO", "ACL", "CONFIG", "MIGRATE"]

    /// A command from its name and arguments: `RedisCommand("SET", "key", .bytes(data))`.
    public init(_ name: String, _ arguments: RedisArgument...) {
        self.init(name, arguments: arguments)
    }

    /// A command from its name and arguments.
    public init(_ name: String, arguments: [RedisArgument]) {
        precondition(!name.isEmpty, "a command needs a name")
        let givenName = name
        let name = CommandNameTraits.upperCased(name)
        // One lookup for a name the client knows (what the name alone decides, found once per name);
        // the arguments are looked at only where they decide.
        let traits = CommandNameTraits.table[name]
        let isSensitive = (traits?.isSensitiveName ?? Self.sensitiveNames.contains(name)) || arguments.contains(where: \.isSecret)
        let isReadOnly: Bool
        switch traits?.idempotence {
        case .always?, .never?:
            isReadOnly = traits!.isReadOnly
            self.isIdempotent = traits!.idempotence == .always
        case .unlessOptions(let excluded)?:
            isReadOnly = traits!.isReadOnly
            self.isIdempotent = RedisCommandIdempotency.hasNoneOf(excluded, in: arguments)
        case .dependsOnArguments?, nil:
            let specificationName = RedisCommandIdempotency.specificationName(name, arguments: arguments)
            isReadOnly = RedisCommandIdempotency.isReadOnly(specificationName)
            self.isIdempotent = RedisCommandIdempotency.isIdempotent(specificationName, arguments: arguments)
        }
        let sessionEffect = traits?.sessionEffect ?? SessionEffect(name: name, arguments: arguments)
        var sensitiveSlot: Result<Int?, RedisError>?
        if isSensitive {
            do throws(RedisError) {
                sensitiveSlot = .success(try Self.clusterSlot(name: name, arguments: arguments))
            } catch {
                sensitiveSlot = .failure(error)
            }
        }
        // Sizes are checked before anything is copied, so an oversized argument costs nothing here.
        let encodingError = Self.sizeProblem(name: name, count: arguments.count + 1) { $0 == 0 ? givenName.utf8.count : arguments[$0 - 1].byteCount }
            ?? Self.unsupported(name: name, arguments: arguments)
        var inlineBytes = InlineEncoding()
        var inlineCount = 0
        var encodedBytes: ByteBuffer?
        var encodedSecret: RedisSecret?
        if encodingError == nil {
            // The name goes out as given (the server matches names in any case).
            if isSensitive {
                // As typed bytes: a raw buffer offers no contiguous storage of `UInt8`, and the secret
                // then copied it byte by byte (6 K instructions for a `HELLO ... AUTH`, every connect).
                encodedSecret = Self.encode(name: givenName, arguments, sensitive: true) { RedisSecret(bytes: $0.assumingMemoryBound(to: UInt8.self)) }
            } else {
                (inlineBytes, inlineCount, encodedBytes) = Self.encode(name: givenName, arguments, sensitive: false) { bytes in
                    bytes.count <= Self.inlineEncodingLimit ? (InlineEncoding(bytes), bytes.count, nil) : (InlineEncoding(), 0, ByteBuffer(bytes: bytes))
                }
            }
        }
        self.storage = Storage(
            name: name,
            argumentCount: arguments.count,
            inlineBytes: inlineBytes,
            inlineCount: inlineCount,
            encodedBytes: encodedBytes,
            encodedSecret: encodedSecret,
            encodingError: encodingError,
            isSensitive: isSensitive,
            isReadOnly: isReadOnly,
            sessionEffect: sessionEffect,
            routingArguments: isSensitive ? [] : arguments,
            sensitiveSlot: sensitiveSlot,
            blockDuration: sessionEffect == .blocks ? BlockDuration(name: name, arguments: arguments) : nil,
            pubSubCommand: traits?.isPubSub == false ? nil : PubSubStateMachine.Command(name: name, argumentCount: arguments.count)
        )
    }

    /// Appends the RESP bytes to `buffer` (which, for a sensitive command, the caller wipes once sent).
    ///
    /// - Throws: ``encodingError``, an `invalidArgument`, when the command is too large to send.
    func write(to buffer: inout ByteBuffer) throws(RedisError) {
        if let error = self.encodingError { throw error }
        if let secret = self.encodedSecret {
            secret.withUnsafeBytes { _ = buffer.writeBytes($0) }
        } else if let encoded = self.encodedBytes {
            buffer.writeImmutableBuffer(encoded)
        } else {
            self.appendInlineEncoding(to: &buffer)
        }
    }

    /// Whether the encoding is kept in ordinary memory (never for a sensitive command).
    var keepsPlainEncoding: Bool { self.plainEncoding != nil }

    /// How the RESP bytes of a command that is neither sensitive nor unsendable are kept.
    enum PlainEncoding {
        /// Short: in the command's storage, copied into the connection's outbound buffer on the loop.
        case inline
        /// Long: in a buffer of its own, written as it is, without a copy.
        case buffer(ByteBuffer)
    }

    /// The RESP bytes when they are kept in ordinary memory (not for a sensitive command, nor one that
    /// cannot be sent).
    var plainEncoding: PlainEncoding? {
        guard self.encodingError == nil, self.encodedSecret == nil else { return nil }
        if let encoded = self.encodedBytes { return .buffer(encoded) }
        return .inline
    }

    /// Appends the short encoding kept in the command's storage (nothing when it is elsewhere).
    func appendInlineEncoding(to buffer: inout ByteBuffer) {
        let count = self.storage.inlineCount
        withUnsafeBytes(of: self.storage.inlineBytes.words) { _ = buffer.writeBytes(UnsafeRawBufferPointer(rebasing: $0[..<count])) }
    }

    /// The number of bytes ``write(to:)`` appends.
    var encodedCount: Int {
        if let secret = self.encodedSecret { return secret.withUnsafeBytes(\.count) }
        return self.encodedBytes?.readableBytes ?? self.storage.inlineCount
    }

    /// A copy of the RESP bytes, for tests (the connection uses ``write(to:)``, which makes no copy
    /// of a sensitive command's bytes that nobody wipes).
    ///
    /// - Throws: ``encodingError``, an `invalidArgument`, when the command is too large to send.
    var encoded: ByteBuffer {
        get throws(RedisError) {
            var buffer = ByteBuffer()
            try self.write(to: &buffer)
            return buffer
        }
    }

    /// Why a command whose name and arguments have `lengths` bytes (name first) cannot be sent, if so.
    /// Commands the client refuses to send: the server would answer them (and the commands after them)
    /// in a way that pairs replies with the wrong commands or that the RESP2 reader cannot read.
    ///
    /// Written with plain `if`s and a copy of the first argument: the `switch` with `where` clauses it
    /// replaces (`arguments[0].integerValue.map { String($0) } ?? arguments[0].keyword`) crashed Swift
    /// 6.3.1's optimizer ("Found ownership error", CopyPropagation) in release builds.
    static func unsupported(name: String, arguments: [RedisArgument]) -> RedisError? {
        if name == "CLIENT", arguments.count >= 2, arguments[0].keyword == "REPLY" {
            let mode = arguments[1].keyword
            if mode == "OFF" || mode == "SKIP" {
                return RedisError(
                    code: .invalidArgument,
                    message: "CLIENT REPLY OFF and SKIP are not supported: the client pairs every command with a reply (CLIENT REPLY ON is)"
                )
            }
        }
        if name == "HELLO", let first = arguments.first {
            var version = first.keyword
            if let integer = first.integerValue { version = String(integer) }
            if version != "2" {
                return RedisError(code: .invalidArgument, message: "HELLO with a protocol version other than 2: this client speaks RESP2")
            }
        }
        return nil
    }

    static func sizeProblem(name: String, lengths: [Int]) -> RedisError? {
        Self.sizeProblem(name: name, count: lengths.count) { lengths[$0] }
    }

    /// As ``sizeProblem(name:lengths:)``, with the `count` lengths given one at a time (no array).
    static func sizeProblem(name: String, count: Int, length: (Int) -> Int) -> RedisError? {
        // A name is shown, but not one that is itself absurdly long.
        func shown(_ name: String) -> String { name.utf8.count <= 64 ? name : "a command" }
        // `*<count>\r\n`, then `$<length>\r\n<bytes>\r\n` for each.
        var total = 3 + Self.decimalDigits(count)
        var tooLong = false
        for index in 0..<count {
            let length = length(index)
            if length > Self.maximumArgumentLength {
                let what = index == 0 ? "the name of a command" : "argument \(index) of \(shown(name))"
                return RedisError(
                    code: .invalidArgument,
                    message: "\(what) is \(length) bytes; the server accepts at most \(Self.maximumArgumentLength / (1024 * 1024)) MiB"
                )
            }
            // Each length is at most 512 MiB once checked: the total cannot overflow before it is compared.
            if !tooLong {
                total += 5 + Self.decimalDigits(length) + length
                tooLong = total > Self.maximumEncodedLength
            }
        }
        if tooLong {
            return RedisError(
                code: .invalidArgument,
                message: "\(shown(name)) with \(count - 1) arguments needs more than \(Self.maximumEncodedLength) bytes on the wire, the most hiredis encodes in one command"
            )
        }
        return nil
    }

    /// The number of decimal digits of `value` (≥ 0), as RESP writes a length.
    static func decimalDigits(_ value: Int) -> Int {
        var digits = 1
        var rest = value
        while rest >= 10 {
            rest /= 10
            digits += 1
        }
        return digits
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

    /// Encodes with hiredis's binary-safe formatter. The arguments are gathered into one scratch area
    /// (on the stack when small: no allocation) so that all of their addresses stay valid for the call;
    /// both that area and hiredis's output are wiped afterwards when the command carries a secret.
    private static func encode<Encoded>(
        name: String,
        _ arguments: [RedisArgument],
        sensitive: Bool,
        keep: (UnsafeRawBufferPointer) -> Encoded
    ) -> Encoded {
        let count = arguments.count + 1
        let total = arguments.reduce(name.utf8.count) { $0 + $1.byteCount }
        // An empty area may have no address; any valid address serves for empty arguments, so it has at
        // least one byte.
        return withUnsafeTemporaryAllocation(byteCount: max(total, 1), alignment: 1) { scratch -> Encoded in
            defer {
                if sensitive { wipe(scratch) }
            }
            // The lengths and the argument pointers live on the stack too.
            return withUnsafeTemporaryAllocation(of: Int.self, capacity: count) { lengths -> Encoded in
                var name = name
                lengths[0] = name.withUTF8 { bytes in
                    if let source = bytes.baseAddress, bytes.count > 0 {
                        scratch.baseAddress!.copyMemory(from: source, byteCount: bytes.count)
                    }
                    return bytes.count
                }
                var offset = lengths[0]
                for index in 0..<arguments.count {
                    lengths[index + 1] = arguments[index].copyBytes(to: UnsafeMutableRawBufferPointer(rebasing: scratch[offset...]))
                    offset += lengths[index + 1]
                }
                let base = UnsafeRawPointer(scratch.baseAddress!).assumingMemoryBound(to: CChar.self)
                return withUnsafeTemporaryAllocation(of: UnsafePointer<CChar>?.self, capacity: count) { argv -> Encoded in
                    var offset = 0
                    for index in 0..<count {
                        argv[index] = base + offset
                        offset += lengths[index]
                    }
                    var target: UnsafeMutablePointer<CChar>?
                    let written = redisFormatCommandArgv(&target, Int32(count), argv.baseAddress, lengths.baseAddress)
                    guard written >= 0, let target else { fatalError("hiredis could not format a command: out of memory") }
                    defer {
                        if sensitive { wipe(UnsafeMutableRawBufferPointer(start: target, count: Int(written))) }
                        redisFreeCommand(target)
                    }
                    return keep(UnsafeRawBufferPointer(start: target, count: Int(written)))
                }
            }
        }
    }
}
