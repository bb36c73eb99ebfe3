#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// One element of a ``RedisClient`` subscription: a message, or word that messages may have been missed.
public enum RedisSubscriptionEvent: Sendable, Hashable {
    /// A message published to a subscribed channel (or one matching a subscribed pattern).
    case message(RedisPubSubMessage)
    /// Messages published between `from` and `to` may not have arrived: the subscriber connection was
    /// lost (killed, reset, a server restart) and a new one confirmed the subscriptions again, or was
    /// replaced without the marker channel its ACL refuses, or the reader fell behind by more than
    /// ``RedisClientConfiguration/subscriptionBufferLimits`` and messages were dropped. Messages after
    /// the gap arrive as before, and none before it is repeated after it. Never sent for a planned
    /// replacement with the marker channel (a rotation), which misses nothing.
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
/// uses. The sequence throws ``RedisError/Code/clientShutdown`` when the client stops running, the
/// server's error (`NOPERM`, or `MOVED` from a cluster node that no longer serves a shard channel) when
/// subscribing again after a reconnect is refused, and ``RedisError/Code/subscriptionEnded`` when the
/// server ends one of its subscriptions on its own (a cluster node sends `sunsubscribe` when a shard
/// channel's slot moves away; ``RedisClusterClient/ssubscribe(to:)`` follows the slot instead). Events wait in
/// memory until they are read, within ``RedisClientConfiguration/subscriptionBufferLimits``: beyond
/// them messages are dropped and a gap says so.
public struct RedisClientSubscription: AsyncSequence, Sendable {
    public typealias Element = RedisSubscriptionEvent

    let stream: AsyncThrowingStream<RedisSubscriptionEvent, any Error>
    let sink: ClientSubscriptionSink

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<RedisSubscriptionEvent, any Error>.AsyncIterator
        let sink: ClientSubscriptionSink

        public mutating func next() async throws -> RedisSubscriptionEvent? {
            let event = try await self.base.next()
            if case .message(let message) = event { self.sink.taken(message.payload.readableBytes) }
            return event
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: self.stream.makeAsyncIterator(), sink: self.sink)
    }
}
