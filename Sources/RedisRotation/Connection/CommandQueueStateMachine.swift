import NIOCore

/// The commands written on one connection whose replies have not arrived, in reply order, and the
/// decisions about them: which waiter a reply belongs to, which deadlines have passed, and when the
/// connection must close. Pure: no I/O, no clock reads; the shell passes `now` in.
///
/// Deadlines: each command has its caller's deadline and a silence deadline (never earlier: the
/// caller's, or the connection's command timeout after the write, whichever is later). When a caller's
/// deadline passes, only that command fails (``RedisError/Code/commandTimeout``) and its reply is
/// dropped when it arrives, so the remaining replies stay matched and a caller with a short timeout
/// never costs a healthy connection. When the silence deadline of the oldest unanswered command passes,
/// the server is not answering: every waiter fails and the connection must close, since its reply
/// stream can no longer be trusted.
///
/// States: `open` (can move to: closed), `closed` (final).
struct CommandQueueStateMachine<Promise> {
    struct Entry {
        let id: UInt64
        /// `nil` once the waiter has been failed (deadline or cancellation): the reply is dropped.
        var promise: Promise?
        let deadline: NIODeadline
        /// When an unanswered reply means the server stopped answering; never before `deadline`.
        let silenceDeadline: NIODeadline
        /// A blocking command (`BLPOP`, ...): when its caller stops waiting, the connection closes, so the
        /// server unblocks it instead of handing the element it pops to nobody.
        let closesIfAbandoned: Bool

        init(id: UInt64, promise: Promise?, deadline: NIODeadline, silenceDeadline: NIODeadline? = nil, closesIfAbandoned: Bool = false) {
            self.id = id
            self.promise = promise
            self.deadline = deadline
            self.silenceDeadline = max(deadline, silenceDeadline ?? deadline)
            self.closesIfAbandoned = closesIfAbandoned
        }
    }

    private enum State {
        case open
        case closed(RedisError)
    }

    private var state: State = .open
    private var queue = CircularBuffer<Entry>(initialCapacity: 16)
    /// The deadline of the timer the shell has scheduled, if any.
    private var timer: NIODeadline?

    /// Number of commands whose replies have not arrived (including dropped ones).
    var outstandingCount: Int { self.queue.count }

    var isOpen: Bool {
        if case .open = self.state { return true }
        return false
    }

    /// Why the queue closed, once it has: what commands enqueued now fail with.
    var closedError: RedisError? {
        if case .closed(let error) = self.state { return error }
        return nil
    }

    enum EnqueueAction {
        /// Write the commands; if `scheduleTimer` is set, (re)schedule the timer for it.
        case write(scheduleTimer: NIODeadline?)
        /// The connection is closed: fail these waiters with the error; write nothing.
        case fail(RedisError)
    }

    /// Commands are about to be written, in this order.
    mutating func commandsEnqueued(_ entries: some Collection<Entry>) -> EnqueueAction {
        guard case .open = self.state else {
            guard case .closed(let error) = self.state else { fatalError("unreachable") }
            return .fail(error)
        }
        var earliest: NIODeadline?
        for entry in entries {
            self.queue.append(entry)
            if earliest.map({ entry.deadline < $0 }) ?? true { earliest = entry.deadline }
        }
        guard let earliest else { return .write(scheduleTimer: nil) }
        if let timer = self.timer, timer <= earliest { return .write(scheduleTimer: nil) }
        self.timer = earliest
        return .write(scheduleTimer: earliest)
    }

    enum ReplyAction {
        /// Complete this waiter with the reply.
        case succeed(Promise)
        /// The waiter already failed (deadline or cancellation): drop the reply.
        case drop
        /// A reply for no command: the stream is out of sync. Close with this error.
        case close(RedisError)
    }

    /// A complete reply arrived.
    mutating func replyReceived() -> ReplyAction {
        guard case .open = self.state else { return .drop }
        guard let entry = self.queue.popFirst() else {
            return .close(RedisError(code: .protocolError, message: "the server sent a reply to no command"))
        }
        if let promise = entry.promise { return .succeed(promise) }
        return .drop
    }

    struct TimerAction {
        /// Fail each waiter with its error.
        var fail: [(Promise, RedisError)] = []
        /// Close the connection.
        var close = false
        /// Schedule the timer for this deadline.
        var scheduleTimer: NIODeadline?
    }

    /// The timer scheduled for the earliest deadline fired.
    mutating func timerFired(now: NIODeadline) -> TimerAction {
        self.timer = nil
        var action = TimerAction()
        guard case .open = self.state, let head = self.queue.first else { return action }

        if head.silenceDeadline <= now {
            return self.closeAll(now: now, because: "the server did not answer an earlier command in time", silence: true)
        }
        if self.queue.contains(where: { $0.promise != nil && $0.deadline <= now && $0.closesIfAbandoned }) {
            // A blocking command nobody waits for any more must not stay blocked on the server.
            return self.closeAll(now: now, because: "a blocking command on it passed its deadline")
        }

        // The oldest command's silence deadline is watched even when nobody waits for its reply.
        var next: NIODeadline? = head.silenceDeadline
        for index in self.queue.indices {
            guard let promise = self.queue[index].promise else { continue }
            let deadline = self.queue[index].deadline
            if deadline <= now {
                action.fail.append((promise, Self.timeoutError))
                self.queue[index].promise = nil
            } else if next.map({ deadline < $0 }) ?? true {
                next = deadline
            }
        }
        self.timer = next
        action.scheduleTimer = next
        return action
    }

    struct CancelAction {
        /// The waiter to fail with `CancellationError`, if it was still waiting.
        var fail: Promise?
        /// The command blocks on the server: close the connection (every other waiter fails).
        var close = false
    }

    /// Fails every waiter (those past their deadline with `commandTimeout`, the others with
    /// `connectionClosed` naming `reason`) and closes: the reply stream can no longer be trusted.
    /// `silence`: the server stopped answering; the waiters whose own deadline had not passed are told
    /// so (``RedisError/closedBySilenceOfAnother``).
    private mutating func closeAll(now: NIODeadline, because reason: String, silence: Bool = false) -> TimerAction {
        let cause = RedisError(code: .connectionClosed, message: "the connection was closed because \(reason)")
        var action = TimerAction(close: true)
        var others = cause
        others.closedBySilenceOfAnother = silence
        for entry in self.queue {
            guard let promise = entry.promise else { continue }
            action.fail.append((promise, entry.deadline <= now ? Self.timeoutError : others))
        }
        self.queue.removeAll()
        self.state = .closed(cause)
        return action
    }

    /// The caller stopped waiting for command `id` (its task was cancelled). Its reply will be dropped,
    /// unless the command blocks: then the connection must close.
    mutating func commandCancelled(id: UInt64) -> CancelAction {
        guard case .open = self.state else { return CancelAction() }
        guard let index = self.queue.firstIndex(where: { $0.id == id }) else { return CancelAction() }
        let promise = self.queue[index].promise
        self.queue[index].promise = nil
        return CancelAction(fail: promise, close: promise != nil && self.queue[index].closesIfAbandoned)
    }

    /// The connection closed, or must close, because of `error`. Returns every waiter, to be failed with
    /// the error. Later calls return nothing: the first reason wins.
    mutating func connectionClosed(_ error: RedisError) -> [Promise] {
        guard case .open = self.state else { return [] }
        self.state = .closed(error)
        let promises = self.queue.compactMap(\.promise)
        self.queue.removeAll()
        self.timer = nil
        return promises
    }

    private static var timeoutError: RedisError {
        RedisError(code: .commandTimeout, message: "the server did not answer the command within its deadline")
    }
}

extension CommandQueueStateMachine.Entry: Sendable where Promise: Sendable {}
