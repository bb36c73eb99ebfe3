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
    /// The reply to command `index` of the first handshake step, which `connect` sends on the event loop.
    case handshake(HandshakeStepWaiter, index: Int)

    /// The box, when a task waits in one.
    var box: ReplyBox? {
        if case .box(let box) = self { return box }
        return nil
    }

    func succeed(_ value: RESPValue) {
        switch self {
        case .promise(let promise): promise.succeed(value)
        case .box(let box): box.complete(.success(value))
        case .handshake(let waiter, let index): waiter.complete(index, with: .success(value))
        }
    }

    func fail(_ error: any Error) {
        switch self {
        case .promise(let promise): promise.fail(error)
        case .box(let box): box.complete(.failure(error))
        case .handshake(let waiter, let index): waiter.complete(index, with: .failure(error))
        }
    }
}

/// What `connect` waits for, in one wait: the TCP connection (and the TLS handshake) coming up and the
/// replies to the first handshake step, which goes out on the event loop the moment the channel is up.
///
/// One object and one resumption of the task, however many commands the step has: no promise per
/// command, no future combining them and no `Result` array built by NIO's generic code (whose metadata
/// is looked up at run time on every connect).
final class HandshakeStepWaiter: Sendable {
    struct Outcome {
        var channel: any Channel
        /// When the step's replies are due.
        var deadline: NIODeadline
        /// Each command's reply or failure, in order.
        var replies: [Result<RESPValue, any Error>]
        /// What the TLS handshake settled on; `nil` without TLS.
        var tlsInfo: RedisTLSConnectionInfo?
    }

    private struct State {
        /// Command `index`'s reply once bit `index` of `received` is set (a placeholder until then).
        var replies: [Result<RESPValue, any Error>]
        var received: UInt64 = 0
        var remaining: Int
        /// The connection's handlers, from the channel initializer on (see `RedisConnection.connect`):
        /// the last channel's until the connect settles on one.
        var handlers: RedisConnection.Handlers?
        /// Handlers of channels the initializer ran on before the last: a host name with several
        /// addresses (Happy Eyeballs tries the next while the first is still connecting) makes one
        /// channel per attempt, and the one that connects need not be the last. Empty otherwise (no
        /// allocation).
        var earlier: [RedisConnection.Handlers] = []
        /// The caller's task was cancelled: the step is not sent, or its replies are not waited for.
        var cancelled = false
        var channel: (any Channel)?
        var deadline = NIODeadline.distantFuture
        /// Read on the event loop when the last reply is in: the TLS handshake is done by then.
        var tls: NIOLoopBound<TLSClientHandler>?
        var continuation: UnsafeContinuation<Outcome, any Error>?
        var result: Result<Outcome, any Error>?
    }

    private let state: Mutex<State>

    init(count: Int) {
        precondition(count > 0 && count <= 64, "a handshake step sends between 1 and 64 commands")
        self.state = Mutex(State(replies: Array(repeating: .failure(Self.placeholder), count: count), remaining: count))
    }

    /// What a reply slot holds until its reply is in (never handed out): boxed once, not per connect.
    private static let placeholder: any Error = CancellationError()

    /// On the event loop, in the channel initializer: the handlers installed on the channel.
    func install(_ handlers: RedisConnection.Handlers) {
        self.state.withLock { state in
            if let earlier = state.handlers { state.earlier.append(earlier) }
            state.handlers = handlers
        }
    }

    /// On the event loop, when the connect settled on `channel`: its handlers, from now on the only ones
    /// (`nil` if the initializer never ran on it).
    func settle(on channel: any Channel) -> RedisConnection.Handlers? {
        self.state.withLock { state in
            if let last = state.handlers, last.channel === channel {
                state.earlier = []
                return last
            }
            guard let index = state.earlier.firstIndex(where: { $0.channel === channel }) else { return nil }
            state.handlers = state.earlier[index]
            state.earlier = []
            return state.handlers
        }
    }

    /// The handlers, once installed.
    var handlers: RedisConnection.Handlers? {
        self.state.withLock { $0.handlers }
    }

    /// The caller's task was cancelled.
    func cancel() {
        self.state.withLock { $0.cancelled = true }
    }

    /// Whether the caller's task was cancelled.
    var isCancelled: Bool {
        self.state.withLock { $0.cancelled }
    }

    /// The outcome, once every reply is in or the connection failed; waited for once.
    func value() async throws -> Outcome {
        try await withUnsafeThrowingContinuation { continuation in
            let ready = self.state.withLock { state -> Result<Outcome, any Error>? in
                precondition(state.continuation == nil, "a handshake step is waited for once")
                if let result = state.result { return result }
                state.continuation = continuation
                return nil
            }
            if let ready { continuation.resume(with: ready) }
        }
    }

    /// On the event loop, before the step's commands are enqueued: the channel that came up, when the
    /// replies are due, and the TLS handler to ask what its handshake settled on. Returns whether the
    /// caller's task was cancelled meanwhile (then the step is not sent).
    @discardableResult
    func connected(_ channel: any Channel, deadline: NIODeadline, tls: NIOLoopBound<TLSClientHandler>?) -> Bool {
        self.state.withLock { state in
            state.channel = channel
            state.deadline = deadline
            state.tls = tls
            return state.cancelled
        }
    }

    /// On the event loop: command `index`'s reply or failure. The last one resumes the task.
    func complete(_ index: Int, with result: Result<RESPValue, any Error>) {
        let (waiting, outcome) = self.state.withLock { state -> (UnsafeContinuation<Outcome, any Error>?, Result<Outcome, any Error>?) in
            let bit = UInt64(1) << UInt64(index)
            guard state.result == nil, state.received & bit == 0 else { return (nil, nil) }
            state.received |= bit
            state.replies[index] = result
            state.remaining -= 1
            guard state.remaining == 0, let channel = state.channel else { return (nil, nil) }
            let outcome = Result<Outcome, any Error>.success(
                Outcome(channel: channel, deadline: state.deadline, replies: state.replies, tlsInfo: state.tls?.value.info)
            )
            return Self.finish(&state, with: outcome)
        }
        if let waiting, let outcome { waiting.resume(with: outcome) }
    }

    /// The connection failed before the step went out.
    func fail(_ error: any Error) {
        let (waiting, outcome) = self.state.withLock { state in
            state.result == nil ? Self.finish(&state, with: .failure(error)) : (nil, nil)
        }
        if let waiting, let outcome { waiting.resume(with: outcome) }
    }

    private static func finish(
        _ state: inout State,
        with result: Result<Outcome, any Error>
    ) -> (UnsafeContinuation<Outcome, any Error>?, Result<Outcome, any Error>?) {
        state.result = result
        state.tls = nil
        state.channel = nil
        guard let continuation = state.continuation else { return (nil, nil) }
        state.continuation = nil
        return (continuation, result)
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
