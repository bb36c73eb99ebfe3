import Logging
import NIOCore
import NIOEmbedded
import NIOPosix
import Testing

@testable import RedisRotation

/// Review of the reply box (replies handed to a caller's task without a promise) and of the shared
/// storage of `RedisCommand`: every waiter completed exactly once on every path the handler has, and a
/// command's bytes and marks the same as the field-by-field command produced.
@Suite("Reply box and command storage review", .timeLimit(.minutes(1)))
struct ReplyBoxReviewTests {
    // MARK: - ReplyBox

    @Test("a reply handed over before, or racing with, the wait reaches the waiting task, 2000 times")
    func boxRaces() async throws {
        for round in 0..<2000 {
            let box = ReplyBox()
            if round % 3 == 0 { box.complete(.success(.integer(Int64(round)))) }
            let completer = Task.detached {
                if round % 3 != 0 {
                    if round % 2 == 0 {
                        box.complete(.success(.integer(Int64(round))))
                    } else {
                        box.complete(.failure(RedisError(code: .commandTimeout, message: "r\(round)")))
                    }
                }
            }
            do {
                let value = try await box.value()
                #expect(value == .integer(Int64(round)))
                #expect(round % 3 == 0 || round % 2 == 0)
            } catch let error as RedisError {
                #expect(round % 3 != 0 && round % 2 == 1)
                #expect(error.message == "r\(round)")
            }
            await completer.value
        }
    }

    // MARK: - Handler paths: each waiter completed once

    /// A handler on an embedded channel, with boxes as waiters.
    struct Harness {
        let channel: EmbeddedChannel
        let handler: RedisCommandHandler

        init() throws {
            self.handler = RedisCommandHandler(logger: Logger(label: "review"))
            self.channel = EmbeddedChannel(handler: self.handler)
            try self.channel.connect(to: .init(ipAddress: "127.0.0.1", port: 6379)).wait()
        }

        func enqueue(
            ids: ClosedRange<UInt64>,
            deadline: NIODeadline = .now() + .seconds(600),
            silenceDeadline: NIODeadline? = nil,
            blocking: Bool = false
        ) -> [ReplyBox] {
            let boxes = ids.map { _ in ReplyBox() }
            let entries = zip(ids, boxes).map { id, box in
                RedisCommandHandler.Entry(
                    id: id,
                    promise: .box(box),
                    deadline: deadline,
                    silenceDeadline: silenceDeadline,
                    closesIfAbandoned: blocking
                )
            }
            self.handler.enqueue(ByteBuffer(string: "*1\r\n$4\r\nPING\r\n"), entries: entries)
            return boxes
        }

        /// The reply as the server sends it (the handler reads bytes): only integers are used here.
        func reply(_ value: RESPValue) throws {
            guard case .integer(let number) = value else { preconditionFailure("the harness sends integer replies") }
            try self.channel.writeInbound(ByteBuffer(string: ":\(number)\r\n"))
        }
    }

    @Test("cancel after the reply, reply after the cancel, close after the cancel: each box completed once")
    func cancelAroundReplies() async throws {
        let harness = try Harness()
        let boxes = harness.enqueue(ids: 1...4)
        try harness.reply(.integer(1))
        harness.handler.cancel(id: 1)  // after its reply: nothing to do
        harness.handler.cancel(id: 2)  // before its reply
        harness.handler.cancel(id: 2)  // twice
        try harness.reply(.integer(2))  // dropped
        try harness.reply(.integer(3))
        harness.handler.cancel(id: 3)
        harness.handler.close()
        harness.handler.cancel(id: 4)  // after the close
        try? harness.reply(.integer(99))  // after the close: dropped
        #expect(try await boxes[0].value() == .integer(1))
        await #expect(throws: CancellationError.self) { try await boxes[1].value() }
        #expect(try await boxes[2].value() == .integer(3))
        let error = await #expect(throws: RedisError.self) { try await boxes[3].value() }
        #expect(error?.code == .connectionClosed)
        _ = try? harness.channel.finish()
    }

    @Test("commands handed to a handler that never joined a pipeline (its event loop shut down first): they fail as not sent, not hang")
    func loopShutDownBeforeEnqueue() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let handler = try await loop.submit {
            NIOLoopBound(RedisCommandHandler(logger: Logger(label: "test")), eventLoop: loop)
        }.get()
        try await group.shutdownGracefully()
        // A handler that never joined a pipeline (its loop shut down first) is not attached to the
        // progress's mailbox: commands handed to it are refused at once, as not sent.
        var payload = ByteBuffer()
        for index in 0..<3 { try RedisCommand("ECHO", .string("e\(index)")).write(to: &payload) }
        let results = try await RedisConnection.exchange(
            .bytes(payload),
            count: 3,
            closesIfAbandoned: { _ in false },
            deadline: .now() + .seconds(30),
            handler: handler,
            progress: ReplyProgress()
        )
        #expect(results.count == 3)
        for result in results {
            guard case .failure(let error) = result else {
                Issue.record("a shut-down loop answered: \(result)")
                continue
            }
            #expect(error.code == .connectionClosed)
            #expect(error.commandWasNotSent)
        }
    }

    @Test("commands enqueued in one turn of the event loop leave together at its end, in order; a password leaves at once")
    func flushAtTheEndOfTheTurn() throws {
        let harness = try Harness()
        let boxes = harness.enqueue(ids: 1...2)
        let third = ReplyBox()
        harness.handler.enqueue(
            ByteBuffer(string: "*1\r\n$4\r\nINFO\r\n"),
            entries: CollectionOfOne(RedisCommandHandler.Entry(id: 3, promise: .box(third), deadline: .now() + .seconds(600), silenceDeadline: nil, closesIfAbandoned: false))
        )
        // Written, not flushed: nothing has left yet.
        #expect(try harness.channel.readOutbound(as: ByteBuffer.self) == nil)
        harness.channel.embeddedEventLoop.run()
        var sent = ByteBuffer()
        while var piece = try harness.channel.readOutbound(as: ByteBuffer.self) { sent.writeBuffer(&piece) }
        // (The harness writes one PING for its two waiters.)
        #expect(String(buffer: sent) == "*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nINFO\r\n")
        // A payload with a password is flushed at once, with what was written before it.
        let fourth = ReplyBox()
        _ = harness.enqueue(ids: 4...4)
        harness.handler.enqueue(
            ByteBuffer(string: "*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n"),
            entries: CollectionOfOne(RedisCommandHandler.Entry(id: 5, promise: .box(fourth), deadline: .now() + .seconds(600), silenceDeadline: nil, closesIfAbandoned: false)),
            flushesAtOnce: true
        )
        sent.clear()
        while var piece = try harness.channel.readOutbound(as: ByteBuffer.self) { sent.writeBuffer(&piece) }
        #expect(String(buffer: sent) == "*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n")
        _ = boxes
        _ = try? harness.channel.finish()
    }

    @Test("a drained delivery lets go of its payload: the caller's wipe of a password reaches the bytes it gave, not a copy")
    func drainedDeliveryReleasesItsPayload() throws {
        let harness = try Harness()
        var payload = ByteBufferAllocator().buffer(capacity: 64)
        payload.writeString("*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$6\r\nsecret\r\n")
        let given = payload.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        let box = ReplyBox()
        let entry = RedisCommandHandler.Entry(id: 1, promise: .box(box), deadline: .now() + .seconds(600), silenceDeadline: nil, closesIfAbandoned: false)
        let progress = harness.handler.progress
        // A payload with a password goes out at once.
        #expect(progress.post(.bytes(payload), entries: CollectionOfOne(entry), pubSubCommands: [], flushesAtOnce: true) == nil)
        progress.drain()
        // The write has left the channel.
        #expect(try harness.channel.readOutbound(as: ByteBuffer.self) != nil)
        // The mailbox keeps its drained array for the next drain: the delivery in it must be gone, or
        // the wipe below would copy the bytes first and leave the password in the original storage.
        let wiped = payload.withUnsafeMutableReadableBytes { bytes -> UInt in
            wipe(bytes)
            return UInt(bitPattern: bytes.baseAddress)
        }
        #expect(wiped == given, "the wipe reached a copy: the mailbox still holds the password's bytes")
        box.complete(.failure(CancellationError()))
        _ = try? harness.channel.finish()
    }

    @Test("deliveries posted and not drained when the connection closes fail as not sent; later ones are refused; a late drain finds nothing")
    func closeFailsUndrainedDeliveries() async throws {
        let harness = try Harness()
        let progress = harness.handler.progress
        func entry(_ id: UInt64, _ box: ReplyBox) -> RedisCommandHandler.Entry {
            RedisCommandHandler.Entry(id: id, promise: .box(box), deadline: .now() + .seconds(600), silenceDeadline: nil, closesIfAbandoned: false)
        }
        let single = ReplyBox()
        let pipelined = [ReplyBox(), ReplyBox()]
        #expect(progress.post(.bytes(ByteBuffer(string: "*1\r\n$4\r\nPING\r\n")), entries: CollectionOfOne(entry(1, single)), pubSubCommands: [], flushesAtOnce: false) == nil)
        #expect(
            progress.post(
                .bytes(ByteBuffer(string: "*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n")),
                entries: [entry(2, pipelined[0]), entry(3, pipelined[1])],
                pubSubCommands: [],
                flushesAtOnce: false
            ) == nil
        )
        // The drain is queued on the (embedded) loop, which has not run it: the connection closes first.
        harness.handler.close()
        for box in [single] + pipelined {
            let error = await #expect(throws: RedisError.self) { try await box.value() }
            #expect(error?.code == .connectionClosed)
            #expect(error?.commandWasNotSent == true, "never written, so never sent")
        }
        let refused = progress.post(.bytes(ByteBuffer(string: "*1\r\n$4\r\nPING\r\n")), entries: CollectionOfOne(entry(4, ReplyBox())), pubSubCommands: [], flushesAtOnce: false)
        #expect(refused?.code == .connectionClosed)
        // The queued drain runs now and writes nothing.
        harness.channel.embeddedEventLoop.run()
        #expect(try harness.channel.readOutbound(as: ByteBuffer.self) == nil)
        _ = try? harness.channel.finish()
    }

    @Test("a deadline fails a waiter, then its reply arrives and then the connection closes: completed once")
    func timerThenReplyThenClose() async throws {
        let harness = try Harness()
        let past = NIODeadline.now() - .seconds(1)
        // The server is not silent (the silence deadline is far away): only these two fail.
        let expired = harness.enqueue(ids: 10...11, deadline: past, silenceDeadline: .now() + .seconds(600))
        let alive = harness.enqueue(ids: 12...12)
        // The embedded loop's clock starts at zero: move it to the (real) deadline so the timer fires.
        harness.channel.embeddedEventLoop.advanceTime(to: past)
        for box in expired {
            let error = await #expect(throws: RedisError.self) { try await box.value() }
            #expect(error?.code == .commandTimeout)
        }
        try harness.reply(.integer(10))  // dropped
        try harness.reply(.integer(11))  // dropped
        harness.handler.cancel(id: 10)
        try harness.reply(.integer(12))
        #expect(try await alive[0].value() == .integer(12))
        harness.handler.close()
        _ = try? harness.channel.finish()
    }

    @Test("cancelling a blocking command closes: the others fail once, the cancelled one with CancellationError")
    func blockingCancelCloses() async throws {
        let harness = try Harness()
        let blocking = harness.enqueue(ids: 20...20, blocking: true)
        let others = harness.enqueue(ids: 21...23)
        harness.handler.cancel(id: 20)
        harness.handler.cancel(id: 22)  // after the close
        try? harness.reply(.integer(20))
        await #expect(throws: CancellationError.self) { try await blocking[0].value() }
        for box in others {
            let error = await #expect(throws: RedisError.self) { try await box.value() }
            #expect(error?.code == .connectionClosed)
        }
        // Enqueued after the close: failed at once, not sent.
        let late = harness.enqueue(ids: 24...24)
        let error = await #expect(throws: RedisError.self) { try await late[0].value() }
        #expect(error?.commandWasNotSent == true)
        _ = try? harness.channel.finish()
    }

    @Test("a reply to no command closes the connection and fails nobody twice")
    func strayReply() async throws {
        let harness = try Harness()
        let boxes = harness.enqueue(ids: 30...30)
        try harness.reply(.integer(30))
        try? harness.reply(.integer(31))  // to no command
        #expect(try await boxes[0].value() == .integer(30))
        let late = harness.enqueue(ids: 32...32)
        let error = await #expect(throws: RedisError.self) { try await late[0].value() }
        #expect(error?.code == .protocolError)
        _ = try? harness.channel.finish()
    }

    // MARK: - RedisCommand storage

    /// RESP for `parts` (name first), built by hand.
    static func resp(_ parts: [[UInt8]]) -> [UInt8] {
        var bytes = Array("*\(parts.count)\r\n".utf8)
        for part in parts {
            bytes += Array("$\(part.count)\r\n".utf8) + part + Array("\r\n".utf8)
        }
        return bytes
    }

    static func bytes(_ command: RedisCommand) throws -> [UInt8] {
        let buffer = try command.encoded
        return Array(buffer.readableBytesView)
    }

    @Test("encoded bytes of every argument kind are the RESP of the name as given and the arguments")
    func encodingOfEveryKind() throws {
        let secret = RedisSecret("s3cr\u{e9}t\r\n$")
        var binary = ByteBuffer()
        binary.writeBytes([0, 13, 10, 255, 36, 42])
        let cases: [(String, [RedisArgument], [[UInt8]])] = [
            ("get", ["key"], [Array("get".utf8), Array("key".utf8)]),
            ("PING", [], [Array("PING".utf8)]),
            ("Set", [.bytes(binary), .string("")], [Array("Set".utf8), [0, 13, 10, 255, 36, 42], []]),
            ("ECHO", [.string("h\u{e9}llo \u{1F600}")], [Array("ECHO".utf8), Array("h\u{e9}llo \u{1F600}".utf8)]),
            ("INCRBY", [.string("k"), .integer(Int64.min)], [Array("INCRBY".utf8), Array("k".utf8), Array("\(Int64.min)".utf8)]),
            ("INCRBY", [.string("k"), .integer(0)], [Array("INCRBY".utf8), Array("k".utf8), Array("0".utf8)]),
            ("SET", [.string("k"), .integer(Int64.max)], [Array("SET".utf8), Array("k".utf8), Array("\(Int64.max)".utf8)]),
            ("AUTH", [.string("alice"), .secret(secret)], [Array("AUTH".utf8), Array("alice".utf8), Array("s3cr\u{e9}t\r\n$".utf8)]),
            ("set", [.string("k"), .secret(secret)], [Array("set".utf8), Array("k".utf8), Array("s3cr\u{e9}t\r\n$".utf8)]),
            ("subscribe", ["a", "b"], [Array("subscribe".utf8), Array("a".utf8), Array("b".utf8)]),
        ]
        for (name, arguments, parts) in cases {
            let command = RedisCommand(name, arguments: arguments)
            #expect(try Self.bytes(command) == Self.resp(parts), "\(command)")
            #expect(command.encodedCount == Self.resp(parts).count)
            #expect(command.argumentCount == arguments.count)
            #expect(command.name == name.uppercased())
            // A sensitive command's bytes are never kept in a plain buffer.
            #expect((command.plainEncoding == nil) == command.isSensitive, "\(command)")
            #expect(!"\(command)".contains("s3cr"))
        }
        #expect(RedisCommand("set", .string("k"), .secret(secret)).isSensitive)
        #expect(RedisCommand("subscribe", "a", "b").pubSubCommand == .subscribe(.channel, count: 2))
        #expect(RedisCommand("GET", "a").pubSubCommand == nil)
        #expect(RedisCommand("reset").pubSubCommand == .reset)
    }

    @Test("idempotent(_:) marks a copy only; the copies share everything else")
    func idempotentCopies() throws {
        let original = RedisCommand("INCR", "counter")
        #expect(!original.isIdempotent)
        let marked = original.idempotent()
        #expect(marked.isIdempotent)
        #expect(!original.isIdempotent)
        let unmarked = marked.idempotent(false)
        #expect(!unmarked.isIdempotent)
        #expect(marked.isIdempotent)
        #expect(try Self.bytes(marked) == Self.bytes(original))
        #expect(marked.name == original.name && marked.sessionEffect == original.sessionEffect)
        let read = RedisCommand("GET", "k")
        #expect(read.isIdempotent)
        #expect(!read.idempotent(false).isIdempotent)
    }

    @Test("sizeProblem: an oversized argument is named even after the total is already too long")
    func sizeProblems() {
        let max = RedisCommand.maximumArgumentLength
        #expect(RedisCommand.sizeProblem(name: "SET", lengths: [3, 1, 10]) == nil)
        let argument = RedisCommand.sizeProblem(name: "SET", lengths: [3, 1, max + 1])
        #expect(argument?.message.contains("argument 2 of SET") == true)
        let name = RedisCommand.sizeProblem(name: "SET", lengths: [max + 1])
        #expect(name?.message.contains("the name of a command") == true)
        // Many arguments each within the limit, together beyond hiredis's: the total is named; but an
        // oversized one after the total overflowed is named instead (as before: arguments were checked first).
        let many = Array(repeating: max, count: RedisCommand.maximumEncodedLength / max + 2)
        #expect(RedisCommand.sizeProblem(name: "MSET", lengths: [4] + many)?.message.contains("bytes on the wire") == true)
        #expect(RedisCommand.sizeProblem(name: "MSET", lengths: [4] + many + [max + 1])?.message.contains("argument") == true)
        #expect(RedisCommand.sizeProblem(name: "MSET", lengths: [4] + many + [Int.max])?.message.contains("argument") == true)
    }
}
