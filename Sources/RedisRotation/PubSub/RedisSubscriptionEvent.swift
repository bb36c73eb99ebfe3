#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// One element of a ``RedisClient`` subscription: a message, or word that messages may have been missed.
public enum RedisSubscriptionEvent: Sendable, Hashable {
    /// A message published to a subscribed channel (or one matching a subscribed pattern).
    case message(RedisPubSubMessage)
    /// The subscriber connection was lost (killed, reset, a server restart) and a new one confirmed the
    /// subscriptions again: messages published between `from` and `to` may not have arrived. Messages
    /// after the gap arrive as before. Never sent for a planned replacement (a rotation), which misses
    /// nothing.
    case gap(from: Date, to: Date)

    /// The message, when this is one.
    public var message: RedisPubSubMessage? {
        if case .message(let message) = self { return message }
        return nil
    }
}

/// The events of a subscription made through ``RedisClient``: its messages in the order the server
/// sent them, each once, across credential and TLS rotations; and a ``RedisSubscriptionEvent/gap(from:to:)``
/// after a forced disconnect.
///
/// Ending the iteration ends the subscription: when the iterating task is cancelled, or the
/// subscription and its iterator are gone, the client unsubscribes from whatever no other subscription
/// uses. The sequence throws ``RedisError/Code/clientShutdown`` when the client stops running. Events
/// wait in memory until they are read.
public struct RedisClientSubscription: AsyncSequence, Sendable {
    public typealias Element = RedisSubscriptionEvent

    let stream: AsyncThrowingStream<RedisSubscriptionEvent, any Error>

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<RedisSubscriptionEvent, any Error>.AsyncIterator

        public mutating func next() async throws -> RedisSubscriptionEvent? {
            try await self.base.next()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: self.stream.makeAsyncIterator())
    }
}
