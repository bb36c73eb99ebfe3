import Foundation
import Logging
import Synchronization
import NIOCore
import NIOEmbedded
import Testing

@testable import RedisRotation

/// Review of the per-connection mailbox (`ReplyProgress.post` / `drain` / `closed(because:)`): a
/// password handed over through it is never held by the mailbox while its caller can resume and wipe
/// it (the wipe would reach a copy and leave the password in the original storage, freed unwiped).
///
/// A caller's task resumes on another thread, racing with whatever the event loop still holds; here the
/// caller's wipe runs synchronously in its waiter's failure callback (an `EventLoopPromise` on the
/// embedded loop), which is the worst case of that race.
@Suite("Mailbox review", .timeLimit(.minutes(1)))
struct MailboxReviewTests {
    /// A caller's encoded `AUTH`, wiped in place the moment its waiter fails.
    final class Secret: @unchecked Sendable {
        var payload: ByteBuffer
        let given: UInt
        /// Whether the wipe reached the bytes that were handed over (`nil`: not wiped yet).
        var wipedInPlace: Bool?
        /// What the waiter failed with.
        var error: (any Error)?

        init() {
            var payload = ByteBufferAllocator().buffer(capacity: 64)
            payload.writeString("*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$6\r\nsecret\r\n")
            self.given = payload.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
            self.payload = payload
        }

        func wipeNow() {
            let at = self.payload.withUnsafeMutableReadableBytes { bytes -> UInt in
                wipe(bytes)
                return UInt(bitPattern: bytes.baseAddress)
            }
            self.wipedInPlace = at == self.given
        }

        /// A waiter on `loop` whose failure resumes the caller, which wipes at once.
        func waiter(on loop: any EventLoop) -> ReplyWaiter {
            let promise = loop.makePromise(of: RESPValue.self)
            promise.futureResult.whenFailure { error in
                self.error = error
                self.wipeNow()
            }
            return .promise(promise)
        }
    }

    static func entry(_ id: UInt64, _ waiter: ReplyWaiter) -> RedisCommandHandler.Entry {
        RedisCommandHandler.Entry(id: id, promise: waiter, deadline: .now() + .seconds(600), silenceDeadline: nil, closesIfAbandoned: false)
    }

    /// Drops every write (as a socket whose write failed does: NIO fails and releases the pending
    /// writes) and closes the channel at the flush.
    final class FailingSocket: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
        func flush(context: ChannelHandlerContext) {
            context.close(promise: nil)
        }
    }

    @Test("a password posted and not drained when the connection closes: failed as not sent, and its caller's wipe reaches the bytes it gave")
    func closeLetsGoOfStrandedPayloadBeforeFailing() throws {
        let handler = RedisCommandHandler(logger: Logger(label: "review"))
        let channel = EmbeddedChannel(handler: handler)
        try channel.connect(to: .init(ipAddress: "127.0.0.1", port: 6379)).wait()
        let secret = Secret()
        #expect(handler.progress.post(.bytes(secret.payload), entries: CollectionOfOne(Self.entry(1, secret.waiter(on: channel.eventLoop))), pubSubCommands: [], flushesAtOnce: true) == nil)
        // The drain is queued on the loop, which has not run it: the connection closes first.
        handler.close()
        #expect(secret.wipedInPlace == true, "the wipe reached a copy: the closing mailbox still held the password's bytes")
        #expect((secret.error as? RedisError)?.commandWasNotSent == true, "never written, so never sent")
        channel.embeddedEventLoop.run()
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        _ = try? channel.finish()
    }

    @Test("the connection closes while a drain delivers its batch: a password later in the batch fails as not sent, and its caller's wipe reaches the bytes it gave")
    func closeDuringDrainLetsGoOfLaterPayloads() throws {
        let handler = RedisCommandHandler(logger: Logger(label: "review"))
        let channel = EmbeddedChannel(handlers: [FailingSocket(), handler])
        try channel.connect(to: .init(ipAddress: "127.0.0.1", port: 6379)).wait()
        let firstOutcome = Mutex<Result<RESPValue, any Error>?>(nil)
        let firstPromise = channel.eventLoop.makePromise(of: RESPValue.self)
        firstPromise.futureResult.whenComplete { result in firstOutcome.withLock { $0 = result } }
        let secret = Secret()
        let progress = handler.progress
        // One batch: a command that flushes at once (its flush fails and closes the channel), then a password.
        #expect(progress.post(.bytes(ByteBuffer(string: "*1\r\n$4\r\nPING\r\n")), entries: CollectionOfOne(Self.entry(1, .promise(firstPromise))), pubSubCommands: [], flushesAtOnce: true) == nil)
        #expect(progress.post(.bytes(secret.payload), entries: CollectionOfOne(Self.entry(2, secret.waiter(on: channel.eventLoop))), pubSubCommands: [], flushesAtOnce: true) == nil)
        channel.embeddedEventLoop.run()
        #expect(secret.wipedInPlace == true, "the wipe reached a copy: the drain still held the password's bytes")
        #expect((secret.error as? RedisError)?.commandWasNotSent == true, "never written, so never sent")
        guard case .failure(let error as RedisError)? = firstOutcome.withLock({ $0 }) else {
            Issue.record("the first command's waiter did not fail with a RedisError")
            return
        }
        #expect(error.code == .connectionClosed)
        #expect(error.commandWasNotSent == false, "written before the flush failed: maybe sent")
        _ = try? channel.finish()
    }

    @Test("a password whose own flush fails and closes the connection: its caller's wipe reaches the bytes it gave")
    func failedFlushLetsGoOfPayload() throws {
        let handler = RedisCommandHandler(logger: Logger(label: "review"))
        let channel = EmbeddedChannel(handlers: [FailingSocket(), handler])
        try channel.connect(to: .init(ipAddress: "127.0.0.1", port: 6379)).wait()
        let secret = Secret()
        #expect(handler.progress.post(.bytes(secret.payload), entries: CollectionOfOne(Self.entry(1, secret.waiter(on: channel.eventLoop))), pubSubCommands: [], flushesAtOnce: true) == nil)
        channel.embeddedEventLoop.run()
        #expect(secret.wipedInPlace == true, "the wipe reached a copy: the drain still held the password's bytes")
        _ = try? channel.finish()
    }

    /// The embedded loop, with a hook that runs inside the next `execute` before its task is queued: a
    /// thread preempted between the mailbox's unlock and its call to `execute`.
    final class PausingLoop: EventLoop, @unchecked Sendable {
        let base: EmbeddedEventLoop
        var beforeNextExecute: (() -> Void)?

        init(_ base: EmbeddedEventLoop) { self.base = base }

        var inEventLoop: Bool { self.base.inEventLoop }
        func execute(_ task: @escaping @Sendable () -> Void) {
            if let hook = self.beforeNextExecute {
                self.beforeNextExecute = nil
                hook()
            }
            self.base.execute(task)
        }
        func scheduleTask<T>(deadline: NIODeadline, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
            self.base.scheduleTask(deadline: deadline, task)
        }
        func scheduleTask<T>(in delay: TimeAmount, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
            self.base.scheduleTask(in: delay, task)
        }
        func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable ((any Error)?) -> Void) {
            self.base.shutdownGracefully(queue: queue, callback)
        }
    }

    @Test("a BLPOP posted behind a drain that is scheduled but not yet queued, and cancelled at once: never written (or the connection closes), and its caller is told")
    func cancelBeforeTheScheduledDrainIsQueued() throws {
        let handler = RedisCommandHandler(logger: Logger(label: "review"))
        let channel = EmbeddedChannel(handler: handler)
        try channel.connect(to: .init(ipAddress: "127.0.0.1", port: 6379)).wait()
        let progress = handler.progress
        let loop = PausingLoop(channel.embeddedEventLoop)
        // Deliveries are scheduled through the pausing loop; everything else uses the channel's.
        progress.attach(NIOLoopBound(handler, eventLoop: loop))
        let connectionHandler = NIOLoopBound(handler, eventLoop: channel.eventLoop)
        let blpopOutcome = Mutex<Result<RESPValue, any Error>?>(nil)
        let blpopPromise = channel.eventLoop.makePromise(of: RESPValue.self)
        blpopPromise.futureResult.whenComplete { result in blpopOutcome.withLock { $0 = result } }
        let blpop = RedisCommandHandler.Entry(id: 2, promise: .promise(blpopPromise), deadline: .now() + .seconds(600), silenceDeadline: nil, closesIfAbandoned: true)
        loop.beforeNextExecute = {
            // Caller A has scheduled the drain and not queued it yet. Caller B posts a BLPOP (a drain is
            // scheduled: B queues none) and is cancelled at once.
            #expect(progress.post(.bytes(ByteBuffer(string: "*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n")), entries: CollectionOfOne(blpop), pubSubCommands: [], flushesAtOnce: false) == nil)
            RedisConnection.stopWaiting(for: CollectionOfOne(blpop), handler: connectionHandler, progress: progress)
        }
        let get = ReplyBox()
        #expect(progress.post(.bytes(ByteBuffer(string: "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")), entries: CollectionOfOne(Self.entry(1, .box(get))), pubSubCommands: [], flushesAtOnce: false) == nil)
        channel.embeddedEventLoop.run()
        var written = ByteBuffer()
        while var piece = try channel.readOutbound(as: ByteBuffer.self) { written.writeBuffer(&piece) }
        let blpopWritten = String(buffer: written).contains("BLPOP")
        // The BLPOP must not stay blocked on the server for a caller that is gone (it would pop an
        // element for nobody, or block the connection for ever with a timeout of 0).
        #expect(!blpopWritten || !channel.isActive, "the cancelled BLPOP was written and the connection stays open")
        switch blpopOutcome.withLock({ $0 }) {
        case .failure(let error)?:
            #expect(error is CancellationError || (error as? RedisError)?.code == .connectionClosed)
        case .success?, nil:
            Issue.record("the cancelled caller was never told: it waits for the BLPOP's reply")
        }
        _ = try? channel.finish()
    }

    @Test("a password taken back from the mailbox by its cancelled caller: never written, failed with CancellationError, and the caller's wipe reaches the bytes it gave")
    func withdrawnPasswordIsNeverWrittenNorKept() throws {
        let handler = RedisCommandHandler(logger: Logger(label: "review"))
        let channel = EmbeddedChannel(handler: handler)
        try channel.connect(to: .init(ipAddress: "127.0.0.1", port: 6379)).wait()
        let secret = Secret()
        let entry = Self.entry(7, secret.waiter(on: channel.eventLoop))
        #expect(handler.progress.post(.bytes(secret.payload), entries: CollectionOfOne(entry), pubSubCommands: [], flushesAtOnce: true) == nil)
        RedisConnection.stopWaiting(for: CollectionOfOne(entry), handler: NIOLoopBound(handler, eventLoop: channel.eventLoop), progress: handler.progress)
        #expect(secret.error is CancellationError)
        #expect(secret.wipedInPlace == true, "the wipe reached a copy: the mailbox still held the password's bytes")
        channel.embeddedEventLoop.run()
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil, "a command its caller took back was written")
        #expect(channel.isActive)
        _ = try? channel.finish()
    }
}
