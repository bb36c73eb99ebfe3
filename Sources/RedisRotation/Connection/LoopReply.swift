/// One result awaited from work scheduled on an event loop that may shut down meanwhile.
///
/// An event loop that has shut down drops the tasks scheduled on it unrun (NIO prints an error). A
/// caller waiting on a promise of that loop would wait for ever: NIO's `EventLoopFuture.get()`
/// registers its callback through such a task too, and a promise made off the loop cannot be completed
/// from off the loop either. So the caller waits here instead, the scheduled task carries a
/// ``Ticket``, and the result arrives once, from whichever comes first: the work (``resume(with:)``),
/// a cancellation, or the ticket released unrun.
final class LoopReply<Value: Sendable>: Sendable {
    private enum State {
        case pending
        case waiting(CheckedContinuation<Value, any Error>)
        case ready(Result<Value, any Error>)
        case delivered
    }

    private let state = Lock(State.pending)

    init() {}

    /// Delivers `result`, unless a result came first.
    func resume(with result: Result<Value, any Error>) {
        let waiter = self.state.withLock { state -> CheckedContinuation<Value, any Error>? in
            switch state {
            case .pending:
                state = .ready(result)
                return nil
            case .waiting(let continuation):
                state = .delivered
                return continuation
            case .ready, .delivered:
                return nil
            }
        }
        waiter?.resume(with: result)
    }

    /// Waits for the first result.
    func wait() async throws -> Value {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Value, any Error>) in
            let ready = self.state.withLock { state -> Result<Value, any Error>? in
                switch state {
                case .pending:
                    state = .waiting(continuation)
                    return nil
                case .ready(let result):
                    state = .delivered
                    return result
                case .waiting, .delivered:
                    preconditionFailure("a LoopReply is waited for once")
                }
            }
            if let ready { continuation.resume(with: ready) }
        }
    }

    /// For the task scheduled on the loop: it calls ``Ticket/ran()`` first; released without having
    /// run (dropped by a loop that has shut down), it delivers `ifDropped`'s result.
    func ticket(ifDropped: @escaping @Sendable () -> Result<Value, any Error>) -> Ticket {
        Ticket(reply: self, ifDropped: ifDropped)
    }

    final class Ticket: @unchecked Sendable {
        // `didRun` is read and written only by whoever holds the last reference: the scheduling thread
        // until the loop takes the task (NIO's lock orders the hand-over), the loop after.
        private let reply: LoopReply
        private let ifDropped: @Sendable () -> Result<Value, any Error>
        private var didRun = false

        fileprivate init(reply: LoopReply, ifDropped: @escaping @Sendable () -> Result<Value, any Error>) {
            self.reply = reply
            self.ifDropped = ifDropped
        }

        /// The task runs: from now on the work delivers the result.
        func ran() { self.didRun = true }

        deinit {
            if !self.didRun { self.reply.resume(with: self.ifDropped()) }
        }
    }
}
