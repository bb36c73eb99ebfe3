private import CHiredis
public import NIOCore

/// Parses RESP2 replies with hiredis 0.14.1's `redisReader`, building each reply directly as a
/// ``RESPValue`` through our own `redisReplyObjectFunctions`.
///
/// Feed it bytes as they arrive, in any split, then call ``next()`` until it returns `nil`. Bytes are
/// checked against the RESP2 grammar and the ``RESPReaderLimits`` as they are fed, before hiredis sees
/// them, so a malformed or oversized reply fails at the byte that shows it, not after more bytes are
/// buffered: ``feed(_:)`` throws, or, when whole replies came before the bad bytes, ``next()`` returns
/// those first and then throws. After a thrown error the reader is unusable: the stream is out of sync
/// and the connection must close.
///
/// Not thread-safe: one reader belongs to one connection's event loop.
public final class RESPReader {
    private let reader: UnsafeMutablePointer<redisReader>
    private let functions: UnsafeMutablePointer<redisReplyObjectFunctions>
    private let builder: ReplyBuilder
    private var framer: RESPFramer
    /// Fed bytes not checked yet: they follow a complete reply that ``next()`` has not taken. hiredis
    /// is given at most one reply at a time, so its buffer never holds the bytes of later replies.
    private var unchecked = CircularBuffer<ByteBuffer>()
    /// Whether hiredis holds a complete reply.
    private var replyReady = false
    /// The checker's `itemsCompleted` when hiredis last parsed: hiredis runs only when it can progress,
    /// so it never rescans an incomplete item for nothing.
    private var itemsParsed = 0
    private var failure: RedisError?
    /// How often hiredis was asked for a reply (`redisReaderGetReply`), for tests.
    private(set) var parseCount = 0

    /// The limits this reader enforces.
    public var limits: RESPReaderLimits { self.framer.limits }

    /// Bytes looked at one by one by the checker, for tests: each at most once, bulk payloads skipped.
    var bytesInspected: Int { self.framer.bytesInspected }

    /// Bytes hiredis holds that it has not consumed yet, for tests.
    var bytesBufferedInHiredis: Int { self.reader.pointee.len - self.reader.pointee.pos }

    public init(limits: RESPReaderLimits = RESPReaderLimits()) {
        self.builder = ReplyBuilder()
        self.framer = RESPFramer(limits: limits)
        self.functions = .allocate(capacity: 1)
        self.functions.initialize(
            to: redisReplyObjectFunctions(
                createString: replyCreateString,
                createArray: replyCreateArray,
                createInteger: replyCreateInteger,
                createNil: replyCreateNil,
                freeObject: replyFreeObject
            )
        )
        guard let reader = redisReaderCreateWithFunctions(self.functions) else {
            fatalError("hiredis could not allocate a reader: out of memory")
        }
        self.reader = reader
        // The builder lives as long as the reader; hiredis hands this pointer to every callback.
        self.reader.pointee.privdata = Unmanaged.passUnretained(self.builder).toOpaque()
    }

    deinit {
        redisReaderFree(self.reader)
        self.functions.deinitialize(count: 1)
        self.functions.deallocate()
    }

    /// Appends the readable bytes of `buffer` to the reader's input and checks them.
    ///
    /// - Throws: `protocolError` when the bytes can never form a valid reply within the limits (and no
    ///   complete reply comes before them), or when the reader failed before.
    public func feed(_ buffer: ByteBuffer) throws(RedisError) {
        if let failure = self.failure { throw failure }
        guard buffer.readableBytes > 0 else { return }
        self.unchecked.append(buffer)
        if !self.replyReady { try self.checkUntilReplyEnds() }
    }

    /// The next complete reply, or `nil` when the input so far holds no complete reply.
    public func next() throws(RedisError) -> RESPValue? {
        if let failure = self.failure { throw failure }
        if !self.replyReady { try self.checkUntilReplyEnds() }
        if self.replyReady {
            guard let value = try self.parse() else {
                throw self.fail(with: Self.disagreement("hiredis found no reply where the checker saw one end"))
            }
            self.replyReady = false
            return value
        }
        // Let hiredis build what is complete so far and drop those bytes from its buffer.
        if self.framer.itemsCompleted > self.itemsParsed, try self.parse() != nil {
            throw self.fail(with: Self.disagreement("hiredis completed a reply the checker did not"))
        }
        return nil
    }

    /// Checks unchecked bytes and hands them to hiredis, up to the end of the next reply.
    private func checkUntilReplyEnds() throws(RedisError) {
        while !self.replyReady, var buffer = self.unchecked.first {
            let outcome: (consumed: Int, replyEnded: Bool)
            do {
                outcome = try buffer.withUnsafeReadableBytes { bytes throws(RedisError) in
                    let outcome = try self.framer.scan(bytes)
                    // Only checked bytes reach hiredis; hiredis copies them into its own buffer.
                    let status = redisReaderFeed(
                        self.reader,
                        bytes.baseAddress!.assumingMemoryBound(to: CChar.self),
                        outcome.consumed
                    )
                    if status != REDIS_OK { throw self.readerError() }
                    return outcome
                }
            } catch {
                throw self.fail(with: error)
            }
            buffer.moveReaderIndex(forwardBy: outcome.consumed)
            if buffer.readableBytes == 0 {
                self.unchecked.removeFirst()
            } else {
                self.unchecked[self.unchecked.startIndex] = buffer
            }
            self.replyReady = outcome.replyEnded
        }
    }

    /// Asks hiredis for a reply: it parses what it has, which the checker has already validated.
    private func parse() throws(RedisError) -> RESPValue? {
        self.parseCount += 1
        self.itemsParsed = self.framer.itemsCompleted
        var reply: UnsafeMutableRawPointer?
        if redisReaderGetReply(self.reader, &reply) != REDIS_OK {
            throw self.fail(with: self.readerError())
        }
        guard reply != nil else { return nil }
        guard let value = self.builder.takeCompleted() else {
            preconditionFailure("hiredis reported a reply that the builder did not complete")
        }
        return value
    }

    private func fail(with error: RedisError) -> RedisError {
        self.failure = error
        self.unchecked.removeAll()
        return error
    }

    private func readerError() -> RedisError {
        let text = withUnsafeBytes(of: self.reader.pointee.errstr) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        return RESPFramer.malformed(text)
    }

    /// hiredis and the checker read the same bytes differently: a bug of ours, reported as a protocol
    /// error so that the connection closes instead of misreading replies.
    private static func disagreement(_ what: String) -> RedisError {
        assertionFailure(what)
        return RESPFramer.malformed(what)
    }
}

/// Assembles the values hiredis announces, depth first, into one ``RESPValue``. Limits are not its
/// concern: hiredis only ever sees bytes that ``RESPFramer`` accepted.
private final class ReplyBuilder {
    struct OpenArray {
        var elements: [RESPValue]
        let expected: Int
    }

    var open: [OpenArray] = []
    var completed: RESPValue?

    func takeCompleted() -> RESPValue? {
        defer { self.completed = nil }
        return self.completed
    }

    func add(_ value: RESPValue) {
        var value = value
        while let last = self.open.indices.last {
            self.open[last].elements.append(value)
            guard self.open[last].elements.count == self.open[last].expected else { return }
            value = .array(self.open.removeLast().elements)
        }
        self.completed = value
    }

    func beginArray(count: Int) {
        if count == 0 {
            self.add(.array([]))
        } else {
            // Reserve only a little: the announced count is the server's claim, not bytes received.
            var elements: [RESPValue] = []
            elements.reserveCapacity(min(count, 1024))
            self.open.append(OpenArray(elements: elements, expected: count))
        }
    }

    func reset() {
        self.open.removeAll()
        self.completed = nil
    }
}

// MARK: hiredis callbacks. They return the builder's address as the (opaque) object hiredis keeps;
// they never return NULL, which would make hiredis stop with an out-of-memory error.

private func builder(of task: UnsafePointer<redisReadTask>?) -> ReplyBuilder {
    Unmanaged<ReplyBuilder>.fromOpaque(task!.pointee.privdata!).takeUnretainedValue()
}

private func replyCreateString(
    _ task: UnsafePointer<redisReadTask>?,
    _ bytes: UnsafeMutablePointer<CChar>?,
    _ length: Int
) -> UnsafeMutableRawPointer? {
    let builder = builder(of: task)
    var buffer = ByteBufferAllocator().buffer(capacity: length)
    if length > 0, let bytes {
        buffer.writeBytes(UnsafeRawBufferPointer(start: bytes, count: length))
    }
    switch task!.pointee.type {
    case REDIS_REPLY_STATUS: builder.add(.simpleString(buffer))
    case REDIS_REPLY_ERROR: builder.add(.error(buffer))
    default: builder.add(.bulkString(buffer))
    }
    return task!.pointee.privdata
}

private func replyCreateArray(_ task: UnsafePointer<redisReadTask>?, _ count: Int32) -> UnsafeMutableRawPointer? {
    builder(of: task).beginArray(count: Int(count))
    return task!.pointee.privdata
}

private func replyCreateInteger(_ task: UnsafePointer<redisReadTask>?, _ value: Int64) -> UnsafeMutableRawPointer? {
    let builder = builder(of: task)
    builder.add(.integer(value))
    return task!.pointee.privdata
}

private func replyCreateNil(_ task: UnsafePointer<redisReadTask>?) -> UnsafeMutableRawPointer? {
    let builder = builder(of: task)
    builder.add(.null)
    return task!.pointee.privdata
}

private func replyFreeObject(_ object: UnsafeMutableRawPointer?) {
    // hiredis frees only the root object, on a protocol error or when the reader is freed.
    guard let object else { return }
    Unmanaged<ReplyBuilder>.fromOpaque(object).takeUnretainedValue().reset()
}
