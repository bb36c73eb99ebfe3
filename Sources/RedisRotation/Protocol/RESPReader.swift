private import CHiredis
public import NIOCore

/// Parses RESP2 replies with hiredis 0.14.1's `redisReader`, building each reply directly as a
/// ``RESPValue`` through our own `redisReplyObjectFunctions`.
///
/// Feed it bytes as they arrive, in any split, then call ``next()`` until it returns `nil`. After a
/// thrown error the reader is unusable: the stream is out of sync and the connection must close.
///
/// Not thread-safe: one reader belongs to one connection's event loop.
public final class RESPReader {
    private let reader: UnsafeMutablePointer<redisReader>
    private let functions: UnsafeMutablePointer<redisReplyObjectFunctions>
    private let builder: ReplyBuilder
    private var failure: RedisError?

    /// The limits this reader enforces.
    public var limits: RESPReaderLimits { self.builder.limits }

    public init(limits: RESPReaderLimits = RESPReaderLimits()) {
        self.builder = ReplyBuilder(limits: limits)
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

    /// Appends the readable bytes of `buffer` to the reader's input.
    public func feed(_ buffer: ByteBuffer) throws(RedisError) {
        if let failure = self.failure { throw failure }
        let status = buffer.withUnsafeReadableBytes { bytes -> Int32 in
            guard let base = bytes.baseAddress, bytes.count > 0 else { return REDIS_OK }
            return redisReaderFeed(self.reader, base.assumingMemoryBound(to: CChar.self), bytes.count)
        }
        if status != REDIS_OK { throw self.fail(with: self.readerError()) }
    }

    /// The next complete reply, or `nil` when the input so far holds no complete reply.
    public func next() throws(RedisError) -> RESPValue? {
        if let failure = self.failure { throw failure }
        var reply: UnsafeMutableRawPointer?
        if redisReaderGetReply(self.reader, &reply) != REDIS_OK {
            throw self.fail(with: self.builder.rejection ?? self.readerError())
        }
        if reply != nil {
            guard let value = self.builder.takeCompleted() else {
                preconditionFailure("hiredis reported a reply that the builder did not complete")
            }
            return value
        }
        if let error = self.checkIncompleteItem() { throw self.fail(with: error) }
        return nil
    }

    private func fail(with error: RedisError) -> RedisError {
        self.failure = error
        return error
    }

    private func readerError() -> RedisError {
        let text = withUnsafeBytes(of: self.reader.pointee.errstr) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        return RedisError(code: .protocolError, message: "malformed reply from the server: \(text)")
    }

    /// Bounds what hiredis buffers for an item that has not arrived completely: a bulk string whose
    /// announced length exceeds the limit is refused as soon as its header is in, not after its bytes.
    private func checkIncompleteItem() -> RedisError? {
        let ridx = Int(self.reader.pointee.ridx)
        guard ridx >= 0, let buf = self.reader.pointee.buf else { return nil }
        let pending = self.reader.pointee.len - self.reader.pointee.pos
        guard pending > 0 else { return nil }
        let type = withUnsafeBytes(of: self.reader.pointee.rstack) { raw in
            raw.load(fromByteOffset: ridx * MemoryLayout<redisReadTask>.stride, as: redisReadTask.self).type
        }
        let limits = self.builder.limits
        // hiredis has consumed the type byte of the current item: what is pending is its header line
        // (digits of a length or count) or its text, then, for a bulk string, the payload.
        let headerLimit = 32
        switch type {
        case REDIS_REPLY_STRING:
            let header = UnsafeRawBufferPointer(start: buf + self.reader.pointee.pos, count: min(pending, headerLimit))
            guard let end = header.firstIndex(of: UInt8(ascii: "\r")) else {
                return pending >= headerLimit ? protocolError("bulk string length line is too long") : nil
            }
            if let length = Int(String(decoding: header[..<end], as: UTF8.self)), length > limits.maximumBulkLength {
                return limitExceeded("bulk string of \(length) bytes", limit: "\(limits.maximumBulkLength) bytes")
            }
            return nil
        case REDIS_REPLY_ARRAY:
            return pending >= headerLimit ? protocolError("array length line is too long") : nil
        case REDIS_REPLY_STATUS, REDIS_REPLY_ERROR, REDIS_REPLY_INTEGER:
            return pending > limits.maximumLineLength + 1
                ? limitExceeded("line longer than \(limits.maximumLineLength) bytes", limit: "\(limits.maximumLineLength) bytes")
                : nil
        default:
            return nil
        }
    }
}

private func protocolError(_ what: String) -> RedisError {
    RedisError(code: .protocolError, message: "malformed reply from the server: \(what)")
}

private func limitExceeded(_ what: String, limit: String) -> RedisError {
    RedisError(
        code: .protocolError,
        message: "reply exceeds a configured limit: \(what) (limit \(limit)); the connection is closed"
    )
}

/// Assembles the values hiredis announces, depth first, into one ``RESPValue``.
private final class ReplyBuilder {
    struct OpenArray {
        var elements: [RESPValue]
        let expected: Int
    }

    let limits: RESPReaderLimits
    var open: [OpenArray] = []
    var completed: RESPValue?
    var rejection: RedisError?

    init(limits: RESPReaderLimits) {
        self.limits = limits
    }

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

    func beginArray(count: Int, depth: Int) -> Bool {
        if depth > self.limits.maximumNestingDepth {
            self.rejection = limitExceeded(
                "arrays nested \(depth) deep",
                limit: "\(self.limits.maximumNestingDepth) levels"
            )
            return false
        }
        if count > self.limits.maximumArrayElements {
            self.rejection = limitExceeded(
                "array of \(count) elements",
                limit: "\(self.limits.maximumArrayElements) elements"
            )
            return false
        }
        if count == 0 {
            self.add(.array([]))
        } else {
            // Reserve only a little: the announced count is the server's claim, not bytes received.
            var elements: [RESPValue] = []
            elements.reserveCapacity(min(count, 1024))
            self.open.append(OpenArray(elements: elements, expected: count))
        }
        return true
    }

    func reset() {
        self.open.removeAll()
        self.completed = nil
    }
}

// MARK: hiredis callbacks. They return the builder's address as the (opaque) object hiredis keeps;
// returning NULL makes hiredis stop with an error, which `next()` reports as the builder's rejection.

private func builder(of task: UnsafePointer<redisReadTask>?) -> ReplyBuilder {
    Unmanaged<ReplyBuilder>.fromOpaque(task!.pointee.privdata!).takeUnretainedValue()
}

private func depth(of task: UnsafePointer<redisReadTask>?) -> Int {
    var depth = 0
    var parent = task?.pointee.parent
    while let current = parent {
        depth += 1
        parent = current.pointee.parent
    }
    return depth
}

private func replyCreateString(
    _ task: UnsafePointer<redisReadTask>?,
    _ bytes: UnsafeMutablePointer<CChar>?,
    _ length: Int
) -> UnsafeMutableRawPointer? {
    let builder = builder(of: task)
    let type = task!.pointee.type
    if type == REDIS_REPLY_STRING, length > builder.limits.maximumBulkLength {
        builder.rejection = limitExceeded(
            "bulk string of \(length) bytes",
            limit: "\(builder.limits.maximumBulkLength) bytes"
        )
        return nil
    }
    if type != REDIS_REPLY_STRING, length > builder.limits.maximumLineLength {
        builder.rejection = limitExceeded(
            "line longer than \(builder.limits.maximumLineLength) bytes",
            limit: "\(builder.limits.maximumLineLength) bytes"
        )
        return nil
    }
    // hiredis 0.14.1 skips the two bytes after a bulk string without looking at them; a stream whose
    // bulk string is not followed by CRLF is out of sync, and every later reply would be misread.
    if type == REDIS_REPLY_STRING, let bytes, bytes[length] != 0x0D || bytes[length + 1] != 0x0A {
        builder.rejection = protocolError("bulk string not followed by CRLF")
        return nil
    }
    var buffer = ByteBufferAllocator().buffer(capacity: length)
    if length > 0, let bytes {
        buffer.writeBytes(UnsafeRawBufferPointer(start: bytes, count: length))
    }
    switch type {
    case REDIS_REPLY_STATUS: builder.add(.simpleString(buffer))
    case REDIS_REPLY_ERROR: builder.add(.error(buffer))
    default: builder.add(.bulkString(buffer))
    }
    return task!.pointee.privdata
}

private func replyCreateArray(_ task: UnsafePointer<redisReadTask>?, _ count: Int32) -> UnsafeMutableRawPointer? {
    let builder = builder(of: task)
    guard builder.beginArray(count: Int(count), depth: depth(of: task) + 1) else { return nil }
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
