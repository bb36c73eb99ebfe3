#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Where one ``RedisClient`` subscription's events go, and what its reader has not taken yet.
///
/// A reader that falls behind by more than the limits loses messages; the gap that says so is yielded
/// as soon as the reader has taken half of what waited, by the reader itself, so that it hears of the
/// loss without waiting for more traffic (which may never come). Everything still waiting then was
/// yielded before the first dropped message, so the gap sits in order.
final class ClientSubscriptionSink: Sendable {
    let continuation: AsyncThrowingStream<RedisSubscriptionEvent, any Error>.Continuation
    let backlog: SubscriptionBacklog
    /// Messages are dropped since then. Guards the producer's and the reader's yields against each other.
    private let droppingSince = Lock<Date?>(nil)

    init(continuation: AsyncThrowingStream<RedisSubscriptionEvent, any Error>.Continuation, backlog: SubscriptionBacklog) {
        self.continuation = continuation
        self.backlog = backlog
    }

    /// Yields `event`, unless the reader is too far behind: then messages are dropped until it has taken
    /// half of what waits.
    func yield(_ event: RedisSubscriptionEvent, at now: Date) {
        self.droppingSince.withLock { since in
            if case .message(let message) = event {
                if let start = since {
                    guard self.backlog.isHalfEmpty else { return }
                    self.continuation.yield(.gap(from: start, to: now))
                    since = nil
                }
                if self.backlog.admit(message.payload.readableBytes) {
                    self.continuation.yield(event)
                } else {
                    since = now
                }
            } else {
                // A gap of the subscriber's own: one for the dropped messages comes first, in order.
                if let start = since.take() { self.continuation.yield(.gap(from: start, to: now)) }
                self.continuation.yield(event)
            }
        }
    }

    /// The reader took a message of `size` payload bytes; once half of what waited is taken after
    /// messages were dropped, the gap for them follows what still waits.
    func taken(_ size: Int) {
        self.backlog.taken(size)
        self.droppingSince.withLock { since in
            guard let start = since, self.backlog.isHalfEmpty else { return }
            self.continuation.yield(.gap(from: start, to: Date()))
            since = nil
        }
    }
}
