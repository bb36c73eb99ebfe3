import NIOCore
import Synchronization

/// What a connection's command handler shares with the threads off its event loop:
///
/// - since when the connection has been waiting for a reply without getting one: written by the handler
///   on the event loop, read by the pool when it picks a connection for a shared command. A connection
///   whose server holds a command back (`CLIENT PAUSE WRITE` during a failover, a slow command) would
///   otherwise go on taking commands that all queue behind it (head-of-line blocking);
/// - why it closed, once it has;
/// - the commands callers on other threads hand to the event loop (its mailbox; see
///   ``post(_:entries:pubSubCommands:flushesAtOnce:)``).
final class ReplyProgress: Sendable {
    /// Uptime nanoseconds of the last reply (or of the write that found nothing outstanding); 0 when
    /// nothing is outstanding.
    private let waitingSince = Atomic<UInt64>(0)

    /// Commands were written; `now` is read only when nothing was outstanding before.
    func commandsWritten() {
        if self.waitingSince.load(ordering: .relaxed) == 0 {
            self.waitingSince.store(Self.stamp(.now()), ordering: .relaxed)
        }
    }

    /// A reply arrived; `outstanding` replies are still owed.
    func replyReceived(outstanding: Int) {
        self.waitingSince.store(outstanding == 0 ? 0 : Self.stamp(.now()), ordering: .relaxed)
    }

    /// Commands handed to the event loop from other threads, and why the connection closed.
    private let mailbox = Mutex(Mailbox())
    /// Set once the close reason is: every command reads this, only a closed connection's take the lock.
    private let isClosed = Atomic<Bool>(false)

    /// A command (or a pipeline) handed to the event loop: what ``RedisCommandHandler/enqueue(_:entries:pubSubCommands:flushesAtOnce:)`` takes.
    struct Delivery: Sendable {
        enum Entries: Sendable {
            case one(RedisCommandHandler.Entry)
            case many([RedisCommandHandler.Entry])

            /// Fails the waiters. Never while their payload is still held here: a failed caller
            /// resumes (on another thread) and wipes its payload at once, which would then reach a copy.
            func fail(_ error: any Error) {
                switch self {
                case .one(let entry): entry.promise?.fail(error)
                case .many(let entries): for entry in entries { entry.promise?.fail(error) }
                }
            }
        }

        var payload: RedisCommandHandler.Payload
        var entries: Entries
        /// The first waiter's id, which names the delivery (ids are unique).
        var id: UInt64? {
            switch self.entries {
            case .one(let entry): entry.id
            case .many(let entries): entries.first?.id
            }
        }
        var pubSubCommands: [PubSubStateMachine.Command?]
        var flushesAtOnce: Bool
    }

    private struct Mailbox {
        /// Where deliveries go; set on the event loop when the handler joins its pipeline, `nil` again
        /// once the connection has closed (which ends the cycle handler -> progress -> handler).
        var handler: NIOLoopBound<RedisCommandHandler>?
        /// In the order callers handed them over. An element is `nil`ed as it is delivered, so that a
        /// delivered payload's only owners are its caller and the channel (see `drain()`).
        var pending: [Delivery?] = []
        /// The last drained array, empty, kept for its capacity: no allocation per drain.
        var spare: [Delivery?] = []
        /// A drain is queued on the event loop.
        var drainScheduled = false
        /// Why the connection closed, once it has: what a command written to it now fails with.
        var closeReason: RedisError?
    }

    /// Longest array of deliveries kept for the next drain (a burst of commands leaves no large array).
    private static let keptDeliveries = 256

    /// On the event loop, as the handler joins its pipeline: where deliveries go from now on.
    func attach(_ handler: NIOLoopBound<RedisCommandHandler>) {
        self.mailbox.withLock { mailbox in
            if mailbox.closeReason == nil { mailbox.handler = handler }
        }
    }

    /// Off the event loop: hands a payload and its waiters to the handler, in the order of these calls.
    /// One task drains whatever callers have handed over by the time it runs, so a burst of callers
    /// costs one task on the loop, and no caller allocates anything to be carried there. Returns why
    /// nothing can be delivered when the connection has closed (or no handler is attached); the caller
    /// fails its waiters with that, as not sent.
    ///
    /// An event loop that has shut down drops the tasks scheduled on it (NIO prints an error and releases
    /// them unrun). It closes its channels before it stops taking tasks, and the handler's close fails
    /// every delivery still here (``closed(because:)``), so a dropped drain strands nobody.
    func post(
        _ payload: RedisCommandHandler.Payload,
        entries: some Collection<RedisCommandHandler.Entry>,
        pubSubCommands: [PubSubStateMachine.Command?],
        flushesAtOnce: Bool
    ) -> RedisError? {
        let delivery = Delivery(
            payload: payload,
            entries: entries.count == 1 ? .one(entries.first!) : .many(Array(entries)),
            pubSubCommands: pubSubCommands,
            flushesAtOnce: flushesAtOnce
        )
        let outcome = self.mailbox.withLock { mailbox -> (schedule: (any EventLoop)?, refused: RedisError?) in
            if let reason = mailbox.closeReason { return (nil, reason) }
            guard let handler = mailbox.handler else {
                return (nil, RedisError(code: .connectionClosed, message: "the connection has no command handler"))
            }
            mailbox.pending.append(delivery)
            guard !mailbox.drainScheduled else { return (nil, nil) }
            mailbox.drainScheduled = true
            return (handler.eventLoop, nil)
        }
        // The closure's only capture is `self`: no allocation for it.
        outcome.schedule?.execute { self.drain() }
        return outcome.refused
    }

    /// On the event loop: hands what callers have posted to the handler, in order.
    func drain() {
        var batch: [Delivery?] = []
        let handler = self.mailbox.withLock { mailbox -> NIOLoopBound<RedisCommandHandler>? in
            mailbox.drainScheduled = false
            swap(&batch, &mailbox.pending)
            swap(&mailbox.pending, &mailbox.spare)
            return mailbox.handler
        }
        guard !batch.isEmpty else { return }
        guard let handler = handler?.value else {
            // Closed meanwhile: `closed(because:)` took the deliveries; nothing is left here.
            preconditionFailure("deliveries outlived their connection's close")
        }
        for index in batch.indices {
            if let refusal = handler.refusal {
                // The connection closed during this batch (a write failed): the rest fail as not sent,
                // each after its payload is let go (its caller resumes and wipes it at once).
                let entries = batch[index].take()?.entries
                entries?.fail(refusal)
                continue
            }
            let flushes: Bool
            do {
                // Taken out before it is delivered: a cancelled caller, resumed while this batch is still
                // being delivered, wipes its payload (a password) in place, not a copy of it.
                guard let delivery = batch[index].take() else { continue }
                flushes = delivery.flushesAtOnce
                switch delivery.entries {
                case .one(let entry):
                    handler.enqueue(delivery.payload, entries: CollectionOfOne(entry), pubSubCommands: delivery.pubSubCommands)
                case .many(let entries):
                    handler.enqueue(delivery.payload, entries: entries, pubSubCommands: delivery.pubSubCommands)
                }
            }
            // Flushed only once the delivery has let go of the payload: a flush that fails closes the
            // connection and fails the caller, who may wipe the password before this drain goes on.
            if flushes { handler.flushNow() }
        }
        guard batch.capacity <= Self.keptDeliveries else { return }
        batch.removeAll(keepingCapacity: true)
        self.mailbox.withLock { mailbox in
            if mailbox.closeReason == nil && mailbox.spare.capacity < batch.capacity { swap(&mailbox.spare, &batch) }
        }
    }

    /// Off the event loop, as the caller of the delivery whose first waiter is `id` stops waiting: when
    /// no drain has taken it yet, takes it back (it is never written) and fails its waiters with
    /// `CancellationError`; returns whether it did. Otherwise a drain has taken it (one running on the
    /// loop, or done), so a cancellation the caller then hands to the loop reaches the handler after
    /// the delivery. (A cancellation handed to the loop while the delivery still waits here could
    /// reach the loop first: the poster that schedules the drain queues it after its unlock, and one
    /// that finds a drain scheduled queues none. The handler would not know the command, and a `BLPOP`
    /// would then be written for a caller that is gone, who would wait for its reply.)
    func withdraw(id: UInt64) -> Bool {
        let withdrawn = self.mailbox.withLock { mailbox -> Delivery.Entries? in
            guard let index = mailbox.pending.lastIndex(where: { $0?.id == id }) else { return nil }
            // Its payload goes here, before its caller is failed (and wipes it).
            return mailbox.pending[index].take()?.entries
        }
        guard let withdrawn else { return false }
        withdrawn.fail(CancellationError())
        return true
    }

    /// On the event loop, before a caller there enqueues directly: what others handed over earlier goes
    /// first.
    func drainIfPending() {
        if self.mailbox.withLock({ !$0.pending.isEmpty }) { self.drain() }
    }

    /// The connection closed: nothing is waited for any more; deliveries not yet drained fail as not
    /// sent (they were not), and later ones are refused.
    func closed(because reason: RedisError) {
        self.waitingSince.store(0, ordering: .relaxed)
        var stranded = self.mailbox.withLock { mailbox -> [Delivery?] in
            mailbox.closeReason = mailbox.closeReason ?? reason
            mailbox.handler = nil
            mailbox.spare = []
            defer { mailbox.pending = [] }
            return mailbox.pending
        }
        self.isClosed.store(true, ordering: .releasing)
        guard !stranded.isEmpty, var error = self.closeReason else { return }
        error.commandWasNotSent = true
        for index in stranded.indices {
            // The payload goes before its caller is failed (and resumes, and wipes it).
            let entries = stranded[index].take()?.entries
            entries?.fail(error)
        }
    }

    /// Why the connection closed, `nil` while it is open. Read off the event loop: a command need not
    /// reach the loop to learn it (a loop that has shut down drops what is scheduled on it).
    var closeReason: RedisError? {
        guard self.isClosed.load(ordering: .acquiring) else { return nil }
        return self.mailbox.withLock { $0.closeReason }
    }

    /// Whether replies are owed and none has arrived for longer than `threshold` before `now`.
    func isStalled(longerThan threshold: TimeAmount, now: NIODeadline) -> Bool {
        let since = self.waitingSince.load(ordering: .relaxed)
        return since != 0 && now.uptimeNanoseconds > since && Int64(now.uptimeNanoseconds - since) > threshold.nanoseconds
    }

    private static func stamp(_ deadline: NIODeadline) -> UInt64 { max(deadline.uptimeNanoseconds, 1) }
}
