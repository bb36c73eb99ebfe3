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
    /// The callbacks hiredis builds replies with: the same for every reader, so made once, not
    /// allocated per connection. `nonisolated(unsafe)`: written once, by the initializer, then only
    /// read (hiredis never writes through it).
    nonisolated(unsafe) private static let functions: UnsafeMutablePointer<redisReplyObjectFunctions> = {
        let functions = UnsafeMutablePointer<redisReplyObjectFunctions>.allocate(capacity: 1)
        functions.initialize(
            to: redisReplyObjectFunctions(
                createString: replyCreateString,
                createArray: replyCreateArray,
                createInteger: replyCreateInteger,
                createNil: replyCreateNil,
                freeObject: replyFreeObject
            )
        )
        return functions
    }()
    private let builder: ReplyBuilder
    // Checked for exclusive access in debug builds only, as `RedisCommandHandler`'s state is (see
    // "Exclusivity checks" in docs/DECISIONS.md): one reader belongs to one event loop, and no access
    // spans a call into hiredis, whose callbacks write the builder.
    #if DEBUG
    private var framer: RESPFramer
    #else
    @exclusivity(unchecked) private var framer: RESPFramer
    #endif
    /// Fed bytes not checked yet: they follow a complete reply that ``next()`` has not taken. hiredis
    /// is given at most one reply at a time, so its buffer never holds the bytes of later replies.
    #if DEBUG
    private var unchecked = CircularBuffer<ByteBuffer>()
    #else
    @exclusivity(unchecked) private var unchecked = CircularBuffer<ByteBuffer>()
    #endif
    /// Whether hiredis holds a complete reply.
    #if DEBUG
    private var replyReady = false
    #else
    @exclusivity(unchecked) private var replyReady = false
    #endif
    /// The checker's `itemsCompleted` when hiredis last parsed: hiredis runs only when it can progress,
    /// so it never rescans an incomplete item for nothing.
    #if DEBUG
    private var itemsParsed = 0
    #else
    @exclusivity(unchecked) private var itemsParsed = 0
    #endif
    #if DEBUG
    private var failure: RedisError?
    #else
    @exclusivity(unchecked) private var failure: RedisError?
    #endif
    /// Replies built and not taken yet (a batch: see ``next()``).
    #if DEBUG
    private var ready = CircularBuffer<RESPValue>(initialCapacity: 16)
    #else
    @exclusivity(unchecked) private var ready = CircularBuffer<RESPValue>(initialCapacity: 16)
    #endif
    /// How often hiredis was asked for a reply (`redisReaderGetReply`), for tests.
    #if DEBUG
    private(set) var parseCount = 0
    #else
    @exclusivity(unchecked) private(set) var parseCount = 0
    #endif

    /// The limits this reader enforces.
    public var limits: RESPReaderLimits { self.framer.limits }

    /// Bytes looked at one by one by the checker, for tests: each at most once, bulk payloads skipped.
    var bytesInspected: Int { self.framer.bytesInspected }

    /// Bytes hiredis holds that it has not consumed yet, for tests.
    var bytesBufferedInHiredis: Int { self.reader.pointee.len - self.reader.pointee.pos }

    public init(limits: RESPReaderLimits = RESPReaderLimits()) {
        self.builder = ReplyBuilder()
        self.framer = RESPFramer(limits: limits)
        guard let reader = redisReaderCreateWithFunctions(Self.functions) else {
            fatalError("hiredis could not allocate a reader: out of memory")
        }
        self.reader = reader
        // The builder lives as long as the reader; hiredis hands this pointer to every callback.
        self.reader.pointee.privdata = Unmanaged.passUnretained(self.builder).toOpaque()
    }

    deinit {
        redisReaderFree(self.reader)
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
    ///
    /// Replies already fed in full are built together: hiredis still gets them one at a time, but
    /// their short strings are copied into one buffer, of which each string value is a slice (one
    /// allocation for a batch instead of one per string; see `ReplyBuilder`). A string value kept by
    /// the application keeps that buffer alive: the short strings (up to 4 KiB each; a longer one has a
    /// buffer of its own) of its batch, which takes no further reply once it holds 64 KiB of them.
    public func next() throws(RedisError) -> RESPValue? {
        if let value = self.ready.popFirst() { return value }
        if let failure = self.failure { throw failure }
        if !self.replyReady { try self.checkUntilReplyEnds() }
        if self.replyReady {
            try self.parseReady()
            // More complete replies already fed join the batch, within its bounds. A malformed reply
            // after them is recorded as the failure, thrown once the batch has been taken.
            while self.builder.record.takesMore {
                do {
                    try self.checkUntilReplyEnds()
                    guard self.replyReady else { break }
                    try self.parseReady()
                } catch {
                    break
                }
            }
            return self.builder.record.materialize(rest: &self.ready)
        }
        // Let hiredis build what is complete so far and drop those bytes from its buffer.
        if self.framer.itemsCompleted > self.itemsParsed, try self.parse() {
            throw self.fail(with: Self.disagreement("hiredis completed a reply the checker did not"))
        }
        return nil
    }

    /// Has hiredis build the reply the checker saw end.
    private func parseReady() throws(RedisError) {
        guard try self.parse() else {
            throw self.fail(with: Self.disagreement("hiredis found no reply where the checker saw one end"))
        }
        self.replyReady = false
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
    /// Returns whether a reply completed (the builder holds it until ``ReplyRecord/materialize(rest:)``).
    private func parse() throws(RedisError) -> Bool {
        self.parseCount += 1
        self.itemsParsed = self.framer.itemsCompleted
        var reply: UnsafeMutableRawPointer?
        let completedBefore = self.builder.record.completedReplies
        if redisReaderGetReply(self.reader, &reply) != REDIS_OK {
            throw self.fail(with: self.readerError())
        }
        guard reply != nil else { return false }
        precondition(self.builder.record.completedReplies == completedBefore + 1, "hiredis reported a reply that the builder did not complete")
        return true
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

/// Records the values hiredis announces, depth first, and builds them into ``RESPValue``s a batch of
/// complete replies at a time. Limits are not its concern: hiredis only ever sees bytes that
/// ``RESPFramer`` accepted.
///
/// A string's bytes cannot be a slice of a buffer still being written (a write to a shared buffer
/// copies it), so a batch is first recorded: its values in ``tape`` (depth first), the bytes of its
/// short strings one after another in ``shortBytes``. ``materialize(rest:)`` then copies those bytes
/// into one buffer of their exact size, and every short string becomes a slice of it: one buffer per
/// batch instead of one per string (an `HGETALL`, the `HELLO` map of every connect, 64 pipelined `GET`s
/// arriving in one read). A string longer than ``shortStringLimit`` gets a buffer of its own, so a
/// small value kept by the application keeps at most a batch of short strings alive. A batch takes
/// more replies only while it has fewer than ``batchNodes`` values and ``batchBytes`` bytes.
private final class ReplyBuilder {
    /// Everything in one stored property: a class's stored properties are checked for exclusive access
    /// at run time, once per access, and each recorded value touches several of them. (In debug
    /// builds only: see ``RESPReader``'s state.)
    #if DEBUG
    var record = ReplyRecord()
    #else
    @exclusivity(unchecked) var record = ReplyRecord()
    #endif
}

/// The state and logic of ``ReplyBuilder``, as a value.
private struct ReplyRecord {
    /// One value of a reply, depth first: an array is followed by its elements.
    struct Node {
        enum Kind: UInt8 {
            case bulk, simple, error, longBulk, longSimple, longError, integer, null, array
        }

        /// The integer; the offset of a short string in `shortBytes`; the index of a long one in
        /// `longStrings`; the element count of an array.
        var value: Int64
        /// The length of a short string.
        var length: UInt32
        var kind: Kind
    }

    static let shortStringLimit = 4096
    static let batchNodes = 4096
    static let batchBytes = 64 * 1024

    /// Largest arena kept for the next batch (see `materialize`); a larger one goes with its values.
    static let keptArenaCapacity = 16 * 1024

    private var tape: [Node]
    private var shortBytes: [UInt8]
    /// The last batch's buffer of short strings, written again by the next batch when no value of
    /// this one is alive any more (an application usually drops a reply before the next arrives):
    /// then a batch allocates nothing. While one is alive, the next batch gets a new buffer, so no
    /// value ever sees its bytes change.
    private var arena = ByteBuffer()
    private var longStrings: [ByteBuffer] = []
    /// The elements still to come of each array being built, innermost last.
    private var remaining: [Int]

    init() {
        // Room for the usual replies (the handshake's, a pipeline's) without growing.
        self.tape = []
        self.tape.reserveCapacity(64)
        self.shortBytes = []
        self.shortBytes.reserveCapacity(1024)
        self.remaining = []
        self.remaining.reserveCapacity(RESPReaderLimits.hiredisMaximumNestingDepth)
    }
    /// Replies complete on the tape, and where the tape, the short bytes and the long strings of the
    /// incomplete one (if any) begin.
    private(set) var completedReplies = 0
    private var completedEnd = (tape: 0, shortBytes: 0, longStrings: 0)

    /// Whether the batch takes another reply.
    var takesMore: Bool { self.tape.count < Self.batchNodes && self.shortBytes.count < Self.batchBytes }

    mutating func addString(_ bytes: UnsafeRawBufferPointer, type: Int32) {
        if bytes.count <= Self.shortStringLimit {
            let kind: Node.Kind = type == REDIS_REPLY_STATUS ? .simple : type == REDIS_REPLY_ERROR ? .error : .bulk
            self.tape.append(Node(value: Int64(self.shortBytes.count), length: UInt32(bytes.count), kind: kind))
            self.shortBytes.append(contentsOf: bytes)
        } else {
            let kind: Node.Kind = type == REDIS_REPLY_STATUS ? .longSimple : type == REDIS_REPLY_ERROR ? .longError : .longBulk
            self.tape.append(Node(value: Int64(self.longStrings.count), length: 0, kind: kind))
            self.longStrings.append(ByteBuffer(bytes: bytes))
        }
        self.valueAdded()
    }

    mutating func addInteger(_ value: Int64) {
        self.tape.append(Node(value: value, length: 0, kind: .integer))
        self.valueAdded()
    }

    mutating func addNull() {
        self.tape.append(Node(value: 0, length: 0, kind: .null))
        self.valueAdded()
    }

    mutating func beginArray(count: Int) {
        self.tape.append(Node(value: Int64(count), length: 0, kind: .array))
        if count == 0 {
            self.valueAdded()
        } else {
            self.remaining.append(count)
        }
    }

    /// A value was recorded: it may complete the arrays around it, and then the reply.
    private mutating func valueAdded() {
        while let last = self.remaining.indices.last {
            self.remaining[last] -= 1
            guard self.remaining[last] == 0 else { return }
            self.remaining.removeLast()
        }
        self.completedReplies += 1
        self.completedEnd = (self.tape.count, self.shortBytes.count, self.longStrings.count)
    }

    /// Builds the complete replies and forgets them (an incomplete reply stays): returns the first and
    /// appends the others to `rest`, in order.
    mutating func materialize(rest: inout CircularBuffer<RESPValue>) -> RESPValue? {
        guard self.completedReplies > 0 else { return nil }
        let arena: ByteBuffer
        let shortCount = self.completedEnd.shortBytes
        if shortCount > 0 {
            // `clear` reuses the storage only when nothing else references it (no slice of it is
            // alive); otherwise it allocates a new one of this batch's size.
            self.arena.clear(minimumCapacity: shortCount)
            _ = self.shortBytes.withUnsafeBytes { self.arena.writeBytes(UnsafeRawBufferPointer(rebasing: $0[..<shortCount])) }
            arena = self.arena
            if self.arena.capacity > Self.keptArenaCapacity { self.arena = ByteBuffer() }
        } else {
            arena = ByteBuffer()
        }
        var index = 0
        let first = self.value(at: &index, arena: arena)
        for _ in 1..<self.completedReplies {
            rest.append(self.value(at: &index, arena: arena))
        }
        assert(index == self.completedEnd.tape, "a batch's values and its tape disagree")
        if self.completedEnd.tape == self.tape.count {
            // Usually nothing follows the batch: keep the space.
            self.tape.removeAll(keepingCapacity: true)
            self.shortBytes.removeAll(keepingCapacity: true)
            self.longStrings.removeAll(keepingCapacity: true)
        } else {
            self.tape.removeFirst(self.completedEnd.tape)
            self.shortBytes.removeFirst(self.completedEnd.shortBytes)
            self.longStrings.removeFirst(self.completedEnd.longStrings)
        }
        self.completedReplies = 0
        self.completedEnd = (0, 0, 0)
        // A huge reply does not leave its scratch space behind.
        if self.tape.isEmpty && self.tape.capacity > 4 * Self.batchNodes { self.tape = [] }
        if self.shortBytes.isEmpty && self.shortBytes.capacity > 4 * Self.batchBytes { self.shortBytes = [] }
        if self.longStrings.isEmpty && self.longStrings.capacity > 64 { self.longStrings = [] }
        return first
    }

    private func value(at index: inout Int, arena: ByteBuffer) -> RESPValue {
        let node = self.tape[index]
        index += 1
        switch node.kind {
        case .bulk: return .bulkString(arena.getSlice(at: Int(node.value), length: Int(node.length))!)
        case .simple: return .simpleString(arena.getSlice(at: Int(node.value), length: Int(node.length))!)
        case .error: return .error(arena.getSlice(at: Int(node.value), length: Int(node.length))!)
        case .longBulk: return .bulkString(self.longStrings[Int(node.value)])
        case .longSimple: return .simpleString(self.longStrings[Int(node.value)])
        case .longError: return .error(self.longStrings[Int(node.value)])
        case .integer: return .integer(node.value)
        case .null: return .null
        case .array:
            let count = Int(node.value)
            guard count > 0 else { return .array([]) }
            var elements: [RESPValue] = []
            elements.reserveCapacity(count)
            for _ in 0..<count { elements.append(self.value(at: &index, arena: arena)) }
            return .array(elements)
        }
    }

    /// hiredis dropped the reply it was building (a protocol error, or the reader is freed): forget
    /// its values; complete replies stay.
    mutating func dropIncomplete() {
        self.tape.removeSubrange(self.completedEnd.tape...)
        self.shortBytes.removeSubrange(self.completedEnd.shortBytes...)
        self.longStrings.removeSubrange(self.completedEnd.longStrings...)
        self.remaining.removeAll()
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
    builder.record.addString(UnsafeRawBufferPointer(start: length > 0 ? bytes : nil, count: length > 0 && bytes != nil ? length : 0), type: task!.pointee.type)
    return task!.pointee.privdata
}

private func replyCreateArray(_ task: UnsafePointer<redisReadTask>?, _ count: Int32) -> UnsafeMutableRawPointer? {
    builder(of: task).record.beginArray(count: Int(count))
    return task!.pointee.privdata
}

private func replyCreateInteger(_ task: UnsafePointer<redisReadTask>?, _ value: Int64) -> UnsafeMutableRawPointer? {
    let builder = builder(of: task)
    builder.record.addInteger(value)
    return task!.pointee.privdata
}

private func replyCreateNil(_ task: UnsafePointer<redisReadTask>?) -> UnsafeMutableRawPointer? {
    let builder = builder(of: task)
    builder.record.addNull()
    return task!.pointee.privdata
}

private func replyFreeObject(_ object: UnsafeMutableRawPointer?) {
    // hiredis frees only the root object, on a protocol error or when the reader is freed.
    guard let object else { return }
    Unmanaged<ReplyBuilder>.fromOpaque(object).takeUnretainedValue().record.dropIncomplete()
}
