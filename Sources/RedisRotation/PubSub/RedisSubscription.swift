/// The messages of a subscription on one ``RedisConnection``, in the order the server sent them.
///
/// Ending the iteration ends the subscription: when the iterating task is cancelled, or the
/// subscription and its iterator are gone, the connection unsubscribes from every channel or pattern
/// no other subscription on it still uses. The sequence throws the connection's error when the
/// connection closes. Messages wait in memory until they are read, within
/// ``RedisConnectionConfiguration/subscriptionBufferLimits``: a reader that falls further behind gets
/// ``RedisError/Code/slowConsumer`` after what was held.
public struct RedisSubscription: AsyncSequence, Sendable {
    public typealias Element = RedisPubSubMessage

    let stream: AsyncThrowingStream<RedisPubSubMessage, any Error>
    let backlog: SubscriptionBacklog

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<RedisPubSubMessage, any Error>.AsyncIterator
        let backlog: SubscriptionBacklog

        public mutating func next() async throws -> RedisPubSubMessage? {
            let message = try await self.base.next()
            if let message { self.backlog.taken(message.payload.readableBytes) }
            return message
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: self.stream.makeAsyncIterator(), backlog: self.backlog)
    }
}
