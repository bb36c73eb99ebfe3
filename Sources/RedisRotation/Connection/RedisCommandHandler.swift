#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import NIOCore

/// Writes commands as they are issued (pipelining), reads the replies with a ``RESPReader`` and matches
/// them to waiters in FIFO order.
///
/// Lives on its channel's event loop; the connection reaches it through `NIOLoopBound`. Decisions are
/// made by a ``CommandQueueStateMachine``; this shell performs them: writes, completes promises,
/// schedules the deadline timer and closes the channel. A malformed or oversized reply closes the
/// channel with that `RedisError`: the stream cannot be resynchronised. (Reading here rather than in a
/// handler of its own saves every reply a boxed `NIOAny`, a cast and a trip through the pipeline.)
final class RedisCommandHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    typealias Entry = CommandQueueStateMachine<ReplyWaiter>.Entry

    // The state every command and reply touches skips the run-time exclusivity check in release builds
    // (`@exclusivity(unchecked)`: about 90 instructions per access, 5 % of a command; see "Exclusivity
    // checks" in docs/DECISIONS.md). It is touched only on the event loop, and no access to it spans a
    // call out of the handler; debug builds, which the tests run, keep the check and would trap on an
    // overlapping access.
    #if DEBUG
    private var queue = CommandQueueStateMachine<ReplyWaiter>()
    #else
    @exclusivity(unchecked) private var queue = CommandQueueStateMachine<ReplyWaiter>()
    #endif
    /// Takes subscribe confirmations and published messages out of the reply stream.
    #if DEBUG
    private var pubSub = PubSubStateMachine()
    #else
    @exclusivity(unchecked) private var pubSub = PubSubStateMachine()
    #endif
    /// Who hears the connection's pub/sub pushes (messages) and its close, on the event loop.
    var pushReceiver: (any PubSubPushReceiver)?
    #if DEBUG
    private var context: ChannelHandlerContext?
    #else
    @exclusivity(unchecked) private var context: ChannelHandlerContext?
    #endif
    #if DEBUG
    private var timer: Scheduled<Void>?
    #else
    @exclusivity(unchecked) private var timer: Scheduled<Void>?
    #endif
    /// Why the channel is closing, when we know better than "the server closed it".
    private var closeReason: RedisError?
    private let logger: Logger
    /// Since when replies have been owed without one arriving (read by the pool, off the event loop).
    let progress = ReplyProgress()

    private let reader: RESPReader
    /// The reply stream could not be read: nothing after it is.
    #if DEBUG
    private var readFailed = false
    #else
    @exclusivity(unchecked) private var readFailed = false
    #endif
    /// A flush is queued on the event loop (see `scheduleFlush(context:)`).
    #if DEBUG
    private var flushScheduled = false
    #else
    @exclusivity(unchecked) private var flushScheduled = false
    #endif
    /// Short commands of this turn of the loop (see ``Payload/inline``). One stored property: a class's
    /// stored properties are checked for exclusive access at run time, once per access.
    #if DEBUG
    private var outbound = OutboundBuffer()
    #else
    @exclusivity(unchecked) private var outbound = OutboundBuffer()
    #endif

    /// What ``enqueue(_:entries:pubSubCommands:flushesAtOnce:)`` writes.
    enum Payload: Sendable {
        /// Encoded commands in a buffer of their own, written as it is.
        case bytes(ByteBuffer)
        /// One command whose short encoding (``RedisCommand/PlainEncoding/inline``) is copied into the
        /// handler's outbound buffer: no buffer of its own per command.
        case inline(RedisCommand)

        /// How `command` is written when its bytes are kept in ordinary memory: copied into the
        /// outbound buffer when short, from its own buffer (no copy) when long; `nil` for a sensitive
        /// command (or one that cannot be sent), which its caller encodes into a buffer it wipes.
        init?(plain command: RedisCommand) {
            switch command.plainEncoding {
            case .inline?: self = .inline(command)
            case .buffer(let encoded)?: self = .bytes(encoded)
            case nil: return nil
            }
        }
    }

    init(logger: Logger, readerLimits: RESPReaderLimits = RESPReaderLimits()) {
        self.logger = logger
        self.reader = RESPReader(limits: readerLimits)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // Callers on other threads hand their commands over through the progress's mailbox.
        self.progress.attach(NIOLoopBound(self, eventLoop: context.eventLoop))
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.failAll(self.closeReason ?? Self.closedByServer)
        self.context = nil
    }

    /// Writes `payload` (one or more encoded commands) and registers their waiters, in order.
    /// `pubSubCommands`, when not empty, says for each command whether it is of the subscribe family.
    /// `flushesAtOnce` for a payload that holds a password: its caller wipes it once the replies are in,
    /// or at once when cancelled, and a write still waiting for the turn's flush would keep the bytes
    /// the wipe must reach (the wipe would reach a copy).
    func enqueue(
        _ payload: ByteBuffer,
        entries: some Collection<Entry>,
        pubSubCommands: [PubSubStateMachine.Command?] = [],
        flushesAtOnce: Bool = false
    ) {
        self.enqueue(.bytes(payload), entries: entries, pubSubCommands: pubSubCommands, flushesAtOnce: flushesAtOnce)
    }

    /// ``enqueue(_:entries:pubSubCommands:flushesAtOnce:)`` for either kind of payload.
    func enqueue(
        _ payload: Payload,
        entries: some Collection<Entry>,
        pubSubCommands: [PubSubStateMachine.Command?] = [],
        flushesAtOnce: Bool = false
    ) {
        guard let context = self.context else {
            var error = self.closeReason ?? Self.closedByServer
            error.commandWasNotSent = true
            for entry in entries { entry.promise?.fail(error) }
            return
        }
        switch self.queue.commandsEnqueued(entries) {
        case .fail(var error):
            error.commandWasNotSent = true
            for entry in entries { entry.promise?.fail(error) }
        case .write(let deadline):
            if pubSubCommands.isEmpty {
                self.pubSub.ordinaryCommandsEnqueued(entries.count)
            } else {
                self.pubSub.commandsEnqueued(pubSubCommands)
            }
            if let deadline { self.scheduleTimer(at: deadline, context: context) }
            self.progress.commandsWritten()
            switch payload {
            case .inline(let command):
                self.outbound.append(command)
            case .bytes(let bytes):
                // After what is waiting in the outbound buffer: commands leave in the order they came.
                self.writeOutbound(context: context)
                context.write(self.wrapOutboundOut(bytes), promise: nil)
            }
            if flushesAtOnce {
                self.writeOutbound(context: context)
                context.flush()
            } else {
                self.scheduleFlush(context: context)
            }
        }
    }

    /// Why a command handed over now would not be written (the connection closed), as not sent;
    /// `nil` while commands are written. What ``enqueue(_:entries:pubSubCommands:flushesAtOnce:)``
    /// would fail them with.
    var refusal: RedisError? {
        var error: RedisError
        if self.context == nil {
            error = self.closeReason ?? Self.closedByServer
        } else if let closed = self.queue.closedError {
            error = closed
        } else {
            return nil
        }
        error.commandWasNotSent = true
        return error
    }

    /// Writes what is gathered and flushes now: what `flushesAtOnce` does, for a caller that must
    /// first let go of the payload it enqueued (a failed flush fails its waiters at once).
    func flushNow() {
        guard let context = self.context else { return }
        self.writeOutbound(context: context)
        context.flush()
    }

    /// Hands the commands gathered in `outbound` to the channel, as one write.
    private func writeOutbound(context: ChannelHandlerContext) {
        guard let bytes = self.outbound.take() else { return }
        context.write(self.wrapOutboundOut(bytes), promise: nil)
    }

    /// Flushes once the event loop has run what is queued on it now: the commands of every caller that
    /// reached this turn of the loop go out in one system call (and, over TLS, one record), instead of
    /// one per caller. A sequential caller waits no longer: nothing else is queued.
    private func scheduleFlush(context: ChannelHandlerContext) {
        guard !self.flushScheduled else { return }
        self.flushScheduled = true
        context.eventLoop.assumeIsolated().execute {
            self.flushScheduled = false
            guard let context = self.context else { return }
            self.writeOutbound(context: context)
            context.flush()
        }
    }

    /// Installs who hears pushes and the close; tells `receiver` at once when the connection has closed.
    func installPushReceiver(_ receiver: any PubSubPushReceiver) {
        guard self.context != nil, self.queue.isOpen else {
            receiver.connectionClosed(self.closeReason ?? Self.closedByServer)
            return
        }
        precondition(self.pushReceiver == nil, "a connection has one receiver of pub/sub pushes")
        self.pushReceiver = receiver
    }

    /// The caller of command `id` stopped waiting.
    func cancel(id: UInt64) {
        let action = self.queue.commandCancelled(id: id)
        action.fail?.fail(CancellationError())
        if action.close, let context = self.context {
            self.closeWith(
                RedisError(code: .connectionClosed, message: "the connection was closed because a blocking command on it was cancelled"),
                context: context
            )
        }
    }

    /// Closes the channel at the caller's request; outstanding commands fail with `connectionClosed`.
    func close() {
        if self.closeReason == nil {
            self.closeReason = RedisError(code: .connectionClosed, message: "the connection was closed by the client")
        }
        self.context?.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.readFailed else { return }
        let buffer = self.unwrapInboundIn(data)
        do throws(RedisError) {
            try self.reader.feed(buffer)
            while let value = try self.reader.next() {
                self.valueReceived(value, context: context)
            }
        } catch {
            self.readFailed = true
            self.closeWith(error, context: context)
        }
    }

    /// One value of the reply stream: a reply to the oldest command, or a pub/sub push.
    private func valueReceived(_ value: RESPValue, context: ChannelHandlerContext) {
        var value = value
        switch self.pubSub.valueReceived(value) {
        case .reply(let reply):
            // Told before the command's caller hears the reply.
            for (kind, name) in self.pubSub.takeUnsubscribedByCommand() {
                self.pushReceiver?.unsubscribedByCommand(kind, name: name)
            }
            value = reply
        case .consumed:
            return
        case .push(let push):
            self.pushReceiver?.received(push)
            return
        case .close(let error):
            self.closeWith(error, context: context)
            return
        }
        let result = self.queue.replyReceived()
        self.progress.replyReceived(outstanding: self.queue.outstandingCount)
        switch result {
        case .succeed(let promise):
            promise.succeed(value)
        case .drop:
            break
        case .close(let error):
            self.closeWith(error, context: context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let reason: RedisError
        if let error = error as? RedisError {
            reason = error
        } else if let error = error as? IOError, error.errnoCode == ECONNRESET {
            reason = RedisError(code: .connectionClosed, message: "the server reset the connection", underlying: error)
        } else {
            reason = RedisError(code: .connectionClosed, message: "the connection failed: \(error)", underlying: error)
        }
        self.closeWith(reason, context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.failAll(self.closeReason ?? Self.closedByServer)
        context.fireChannelInactive()
    }

    private func closeWith(_ error: RedisError, context: ChannelHandlerContext) {
        if self.closeReason == nil {
            self.closeReason = error
            self.logger.debug("closing connection", metadata: [LoggingKeys.error: "\(error)"])
        }
        self.failAll(self.closeReason!)
        context.close(promise: nil)
    }

    private func failAll(_ error: RedisError) {
        self.progress.closed(because: error)
        self.timer?.cancel()
        self.timer = nil
        for promise in self.queue.connectionClosed(error) {
            promise.fail(error)
        }
        // Told once: the receiver is let go with it.
        self.pushReceiver.take()?.connectionClosed(error)
    }

    private func scheduleTimer(at deadline: NIODeadline, context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.timerFired()
        }
    }

    private func timerFired() {
        self.timer = nil
        let action = self.queue.timerFired(now: .now())
        if action.close {
            self.closeReason = self.closeReason
                ?? RedisError(code: .commandTimeout, message: "the server stopped answering; the connection was closed")
        }
        for (promise, error) in action.fail {
            promise.fail(error)
        }
        if action.close, let context = self.context {
            self.logger.debug("server stopped answering: closing connection")
            context.close(promise: nil)
        } else if let deadline = action.scheduleTimer, let context = self.context {
            self.scheduleTimer(at: deadline, context: context)
        }
    }

    private static let closedByServer = RedisError(code: .connectionClosed, message: "the server closed the connection")
}

/// The short commands gathered in one turn of the event loop, copied from their storage into one buffer
/// that is handed to the channel as one write, before anything else is written and at the flush. The
/// buffer is written again in a later turn: its storage is reused when the channel has let go of it
/// (written by then, as it usually is), and otherwise the next command gets a new one.
struct OutboundBuffer {
    /// Largest buffer kept for the next turn; a larger one goes with its write.
    static let keptCapacity = 64 * 1024

    private var bytes = ByteBuffer()
    /// `bytes` was handed to the channel: the next command starts over.
    private var handedOff = false

    /// Appends an ordinary command's short encoding.
    mutating func append(_ command: RedisCommand) {
        if self.handedOff {
            self.handedOff = false
            // Reused when the channel has let go of it; otherwise new storage sized for this command,
            // not the held buffer's capacity (`clear()` copies that: while a slow reader holds every
            // write, each turn's lone GET would pin up to 64 KiB).
            self.bytes.clear(minimumCapacity: command.encodedCount)
        }
        command.appendInlineEncoding(to: &self.bytes)
    }

    /// What was gathered since the last call, if anything, to be written.
    mutating func take() -> ByteBuffer? {
        guard !self.handedOff, self.bytes.readableBytes > 0 else { return nil }
        let taken = self.bytes
        if self.bytes.capacity > Self.keptCapacity {
            self.bytes = ByteBuffer()
        } else {
            self.handedOff = true
        }
        return taken
    }
}
