import NIOCore
import Testing

@testable import RedisRotation

/// Hostile review of head-of-line steering (`ReplyProgress`, the pool's `isHeldBack` predicate) and
/// of the command-path allocation cuts (`plainEncoding`, the temporary allocations of `encode`).
@Suite("Head-of-line steering and command encoding review")
struct HeadOfLineReviewUnitTests {
    typealias Machine = PoolStateMachine
    typealias ConnectionID = Machine.ConnectionID

    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    // MARK: ReplyProgress

    @Test("ReplyProgress: stalled only while replies are owed and none came for longer than the threshold; a reply restamps, the last reply or a close clears")
    func replyProgress() {
        let progress = ReplyProgress()
        let far = NIODeadline.now() + .seconds(3600)
        #expect(!progress.isStalled(longerThan: .zero, now: far))
        progress.commandsWritten()
        let written = NIODeadline.now()
        #expect(progress.isStalled(longerThan: .milliseconds(5), now: far))
        // A `now` taken before the stamp (the pool reads its clock before its lock) is never stalled.
        #expect(!progress.isStalled(longerThan: .zero, now: written - .seconds(1)))
        // More writes while replies are owed keep the older stamp (nothing has answered since).
        progress.commandsWritten()
        #expect(progress.isStalled(longerThan: .milliseconds(5), now: far))
        progress.replyReceived(outstanding: 3)
        #expect(progress.isStalled(longerThan: .milliseconds(5), now: far))
        #expect(!progress.isStalled(longerThan: .seconds(1), now: NIODeadline.now()))
        progress.replyReceived(outstanding: 0)
        #expect(!progress.isStalled(longerThan: .zero, now: far))
        progress.commandsWritten()
        #expect(progress.closeReason == nil)
        progress.closed(because: RedisError(code: .connectionClosed, message: "closed"))
        #expect(progress.closeReason?.code == .connectionClosed)
        #expect(!progress.isStalled(longerThan: .zero, now: far))
    }

    // MARK: The pool's choice

    func pool(connections: Int, maximum: Int = 4, cap: Int = 4) -> Machine {
        var configuration = Machine.Configuration()
        configuration.minimumConnections = connections
        configuration.maximumConnections = maximum
        configuration.maximumSharedPerConnection = cap
        var pool = Machine(configuration: configuration)
        _ = pool.targetVersionChanged("v1", now: self.t0)
        for id in 0..<connections { _ = pool.connectionEstablished(ConnectionID(id), version: "v1", now: self.t0, random: 0) }
        precondition(pool.slots.count == connections, "the pool opened its minimum")
        return pool
    }

    @Test("fill-first skips the connection it was filling once that one is held back, fills the next, and never returns to the held-back one while another has room")
    func heldBackIsPassedOver() {
        var pool = self.pool(connections: 3)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == 0)
        let held: (ConnectionID) -> Bool = { $0 == 0 }
        #expect(pool.sharedUseRequested(isHeldBack: held) == 1)
        // Fill-first on the new one (the held-back one has more users but is held back).
        #expect(pool.sharedUseRequested(isHeldBack: held) == 1)
        #expect(pool.sharedUseRequested(isHeldBack: held) == 1)
        #expect(pool.sharedUseRequested(isHeldBack: held) == 1)
        // 1 is full (cap 4): 2 has room and is not held back.
        #expect(pool.sharedUseRequested(isHeldBack: held) == 2)
        // Once nothing is held back, fill-first goes on where it is.
        #expect(pool.sharedUseRequested() == 2)
        #expect(pool.slots[0]?.sharedUsers == 2)
        #expect(pool.slots[1]?.sharedUsers == 4)
        #expect(pool.slots[2]?.sharedUsers == 2)
    }

    @Test("every connection held back: below the maximum the request waits for a new connection; at the maximum, the usual choice (fill-first)")
    func allHeldBack() {
        var below = self.pool(connections: 2)
        #expect(below.sharedUseRequested() == 0)
        #expect(below.sharedUseRequested(isHeldBack: { _ in true }) == nil, "a new connection can open for it")
        var atMaximum = self.pool(connections: 2, maximum: 2)
        #expect(atMaximum.sharedUseRequested() == 0)
        #expect(atMaximum.sharedUseRequested(isHeldBack: { _ in true }) == 0)
        #expect(atMaximum.sharedUseRequested(isHeldBack: { _ in true }) == 0)
        #expect(atMaximum.sharedUseRequested(isHeldBack: { _ in true }) == 0)
        #expect(atMaximum.sharedUseRequested(isHeldBack: { _ in true }) == 1, "0 is full")
        #expect(atMaximum.slots[0]?.sharedUsers == 4)
        #expect(atMaximum.slots[1]?.sharedUsers == 1)
    }

    @Test("at the maximum with a connection still opening, a request waits for it rather than take the held-back one")
    func connectionOpeningIsWorthWaitingFor() {
        var pool = self.pool(connections: 1, maximum: 2, cap: 2)
        #expect(pool.sharedUseRequested() == 0)
        // An exclusive request opens the pool's last connection (the shared one is not idle).
        #expect(pool.leaseRequested(9, deadline: self.t0 + .seconds(5), now: self.t0).contains(.createConnection(1)))
        // Before: every usable connection held back and the pool full (counting the one opening), so the
        // held-back one was handed out (found under CPU load in HeadOfLineReviewTests).
        #expect(pool.sharedUseRequested(isHeldBack: { $0 == 0 }) == nil)
        #expect(pool.sharedUseRequested(spread: true, isHeldBack: { $0 == 0 }) == nil)
    }

    @Test("a held-back connection with room is not handed out while one that answers is only full for now: the request waits and gets the answering one's next place")
    func heldBackNotHandedToWaiters() {
        var pool = self.pool(connections: 2, maximum: 2, cap: 2)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == 1)
        #expect(pool.sharedUseRequested() == 1)
        // Connection 0 is held back by the server; one of its callers gives up, freeing a place there.
        #expect(pool.sharedUseEnded(0, needsRestore: true, now: self.t0) == [])
        #expect(pool.sharedUseRequested(isHeldBack: { $0 == 0 }) == nil, "1 answers and frees a place soon")
        #expect(pool.leaseRequested(7, deadline: self.t0 + .seconds(5), shared: true, now: self.t0) == [.scheduleTimer(self.t0 + .seconds(5))])
        let actions = pool.sharedUseEnded(1, needsRestore: false, now: self.t0)
        #expect(actions.contains(.share(1, to: 7)) && !actions.contains(.share(0, to: 7)), "\(actions)")
    }

    @Test("spread: the least shared connection that is not held back, even with more users")
    func spreadPassesOverHeldBack() {
        var pool = self.pool(connections: 3, cap: 8)
        for _ in 0..<3 { _ = pool.sharedUseRequested() }  // 0 has 3
        #expect(pool.sharedUseRequested(spread: true, isHeldBack: { $0 != 0 }) == 0, "1 and 2 are idle but held back")
        #expect(pool.sharedUseRequested(spread: true) == 1)
        #expect(pool.sharedUseRequested(spread: true, isHeldBack: { $0 == 2 }) == 1)
        #expect(pool.slots[1]?.sharedUsers == 2)
    }

    // MARK: Encoding

    /// The RESP bytes of a command with these arguments, written out by hand.
    static func resp(_ parts: [[UInt8]]) -> [UInt8] {
        var bytes = Array("*\(parts.count)\r\n".utf8)
        for part in parts {
            bytes += Array("$\(part.count)\r\n".utf8) + part + Array("\r\n".utf8)
        }
        return bytes
    }

    static func written(_ command: RedisCommand) throws -> [UInt8] {
        var buffer = ByteBuffer()
        try command.write(to: &buffer)
        return Array(buffer.readableBytesView)
    }

    /// The bytes of a command's plain encoding, wherever they are kept.
    static func plainBytes(_ command: RedisCommand) -> [UInt8]? {
        switch command.plainEncoding {
        case .inline?:
            var buffer = ByteBuffer()
            command.appendInlineEncoding(to: &buffer)
            return Array(buffer.readableBytesView)
        case .buffer(let buffer)?:
            return Array(buffer.readableBytesView)
        case nil:
            return nil
        }
    }

    @Test("the temporary-allocation encoder: no, empty, many (past the stack) and binary arguments give exactly the RESP bytes; the plain encoding equals what write(to:) appends")
    func encodings() throws {
        let cases: [[[UInt8]]] = [
            [Array("PING".utf8)],
            [Array("SET".utf8), [], []],
            [Array("SET".utf8), [0, 13, 10, 36, 42, 255], Array("x".utf8)],
            [Array("RPUSH".utf8)] + (0..<3000).map { $0 % 5 == 0 ? [] : Array("element-\($0)".utf8) },
            // Either side of the inline limit (256 bytes: 255, 256, 257 on the wire): `*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$<n>\r\n<n bytes>\r\n`.
            [Array("SET".utf8), Array("k".utf8), Array(repeating: 7, count: RedisCommand.inlineEncodingLimit - 29)],
            [Array("SET".utf8), Array("k".utf8), Array(repeating: 7, count: RedisCommand.inlineEncodingLimit - 28)],
            [Array("SET".utf8), Array("k".utf8), Array(repeating: 7, count: RedisCommand.inlineEncodingLimit - 27)],
        ]
        for parts in cases {
            let command = RedisCommand(String(decoding: parts[0], as: UTF8.self), arguments: parts.dropFirst().map { .bytes($0) })
            let expected = Self.resp(parts)
            #expect(try Self.written(command) == expected)
            #expect(Self.plainBytes(command) == expected)
            if parts.count == 3, parts[2].count >= RedisCommand.inlineEncodingLimit - 29 {
                #expect(expected.count - RedisCommand.inlineEncodingLimit == parts[2].count - (RedisCommand.inlineEncodingLimit - 28))
            }
            #expect(command.encodedCount == expected.count)
            // Short encodings live with the command's fields; long ones in a buffer of their own.
            switch command.plainEncoding {
            case .inline?: #expect(expected.count <= RedisCommand.inlineEncodingLimit)
            case .buffer?: #expect(expected.count > RedisCommand.inlineEncodingLimit)
            case nil: Issue.record("an ordinary command has a plain encoding")
            }
        }
    }

    @Test("sensitive commands never have a plain encoding (they go through the wiped payload), nor do oversized ones; their bytes are still exact")
    func sensitiveCommandsHaveNoPlainEncoding() throws {
        let secret = RedisSecret("s3cr3t-\(UInt64.random(in: 0...UInt64.max))")
        let commands = [
            RedisCommand("AUTH", "alice", .secret(secret)),
            RedisCommand("auth", "alice", "plain-text-password"),
            RedisCommand("HELLO", "2", "AUTH", "alice", .secret(secret)),
            RedisCommand("CONFIG", "SET", "requirepass", "plain"),
            RedisCommand("ACL", "SETUSER", "bob", ">plain"),
            RedisCommand("SET", "k", .secret(secret)),
        ]
        for command in commands {
            #expect(command.isSensitive)
            #expect(command.plainEncoding == nil, "\(command.name) would be written from a shared, never wiped buffer")
        }
        let secretBytes = secret.withUnsafeBytes { Array($0) }
        #expect(try Self.written(commands[5]) == Self.resp([Array("SET".utf8), Array("k".utf8), secretBytes]))
    }
}
