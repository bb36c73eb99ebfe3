import NIOCore
import Synchronization

/// Who waits for one command's reply: a promise (the handshake, which runs its steps on the event
/// loop, and pub/sub commands sent from there) or a ``ReplyBox`` (a caller's task, off the loop).
///
/// Completed once, on the event loop, by ``RedisCommandHandler`` (its queue forgets a waiter once it
/// has failed it, so a second completion cannot happen).
enum ReplyWaiter {
    case promise(EventLoopPromise<RESPValue>)
    case box(ReplyBox)

    /// The box, when a task waits in one.
    var box: ReplyBox? {
        if case .box(let box) = self { return box }
        return nil
    }

    func succeed(_ value: RESPValue) {
        switch self {
        case .promise(let promise): promise.succeed(value)
        case .box(let box): box.complete(.success(value))
        }
    }

    func fail(_ error: any Error) {
        switch self {
        case .promise(let promise): promise.fail(error)
        case .box(let box): box.complete(.failure(error))
        }
    }
}

/// One reply handed from the event loop to the task that waits for it, without a promise.
///
/// A promise's `get()` costs a future (whose generic metadata is looked up at run time, in NIO's
/// module), a callback closure and a second trip to the event loop to register that callback; this box
/// is one object and a lock. The reply may arrive before the task waits for it (kept until then) or
/// after (resumes the waiting task).
final class ReplyBox: Sendable {
    private enum State {
        case pending
        case waiting(UnsafeContinuation<RESPValue, any Error>)
        case done(Result<RESPValue, any Error>)
        case taken
    }

    private let state = Mutex<State>(.pending)

    /// The reply, or the failure; at most once, and only by the task the box was made for.
    func value() async throws -> RESPValue {
        try await withUnsafeThrowingContinuation { continuation in
            let ready = self.state.withLock { state -> Result<RESPValue, any Error>? in
                switch state {
                case .pending:
                    state = .waiting(continuation)
                    return nil
                case .done(let result):
                    state = .taken
                    return result
                case .waiting, .taken:
                    preconditionFailure("a reply box is waited for once")
                }
            }
            if let ready { continuation.resume(with: ready) }
        }
    }

    /// Hands over the reply; the waiting task, if any, resumes (outside the lock). The first completion
    /// counts; a later one is ignored, as a promise ignores it (a cancelled caller on a connection that
    /// has closed is failed by its own task too, in case the event loop is gone and never will).
    func complete(_ result: Result<RESPValue, any Error>) {
        let waiting = self.state.withLock { state -> UnsafeContinuation<RESPValue, any Error>? in
            switch state {
            case .pending:
                state = .done(result)
                return nil
            case .waiting(let continuation):
                state = .taken
                return continuation
            case .done, .taken:
                return nil
            }
        }
        waiting?.resume(with: result)
    }
}

/// Commands on their way from a caller's task to the handler on its event loop.
///
/// An event loop that has shut down drops what is scheduled on it (NIO prints an error and releases
/// the task without running it), and the commands' boxes would then wait forever: no handler knows
/// them. The ticket is the task's only capture, so a dropped task releases it unrun, and its `deinit`
/// fails the boxes as not sent, which they were not. A ticket that ran was released on the loop after
/// `deliver()` (the last release synchronises with that write), so its `deinit` finds nothing to do.
final class EnqueueTicket<Entries: Collection<RedisCommandHandler.Entry> & Sendable>: @unchecked Sendable {
    private let handler: NIOLoopBound<RedisCommandHandler>
    /// `nil` once delivered: the ticket lives on until NIO's whole batch of tasks has run, and a
    /// cancelled caller resumed meanwhile wipes a password in the payload; a reference kept here would
    /// make that wipe copy the bytes first and leave the password in the original storage.
    private var payload: ByteBuffer?
    /// `nil` once delivered.
    private var entries: Entries?
    private let pubSubCommands: [PubSubStateMachine.Command?]
    private let progress: ReplyProgress?
    private let flushesAtOnce: Bool

    init(
        handler: NIOLoopBound<RedisCommandHandler>,
        payload: ByteBuffer,
        entries: Entries,
        pubSubCommands: [PubSubStateMachine.Command?],
        progress: ReplyProgress?,
        flushesAtOnce: Bool = false
    ) {
        self.handler = handler
        self.payload = payload
        self.entries = entries
        self.pubSubCommands = pubSubCommands
        self.progress = progress
        self.flushesAtOnce = flushesAtOnce
    }

    /// On the event loop: hands the commands to the handler.
    func deliver() {
        guard let entries = self.entries, let payload = self.payload else { return }
        self.entries = nil
        self.payload = nil
        self.handler.value.enqueue(payload, entries: entries, pubSubCommands: self.pubSubCommands, flushesAtOnce: self.flushesAtOnce)
    }

    deinit {
        guard let entries = self.entries else { return }
        var error = self.progress?.closeReason
            ?? RedisError(code: .connectionClosed, message: "the connection's event loop has shut down")
        error.commandWasNotSent = true
        for entry in entries { entry.promise?.box?.complete(.failure(error)) }
    }
}
