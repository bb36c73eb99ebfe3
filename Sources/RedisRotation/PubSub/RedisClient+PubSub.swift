extension RedisClient {
    /// Subscribes to `channels` and returns once the server confirmed them: every message published to
    /// them from then on is in the returned sequence, once and in order, across credential promotions
    /// and TLS reloads (the subscriber connection is replaced make-before-break; see
    /// ``RedisSubscriptionEvent``). After a forced disconnect the client reconnects with backoff,
    /// subscribes again and puts a ``RedisSubscriptionEvent/gap(from:to:)`` in the sequence.
    ///
    /// All subscriptions of a client share one dedicated connection outside the pool; a channel is
    /// subscribed on the server while any subscription uses it. Needs ``run()``.
    ///
    /// ```swift
    /// let orders = try await client.subscribe(to: ["orders"])
    /// for try await event in orders {
    ///     switch event {
    ///     case .message(let message): print(message.channel, message.string)
    ///     case .gap(let from, let to): print("messages between \(from) and \(to) may be missing")
    ///     }
    /// }
    /// ```
    ///
    /// - Throws: ``RedisError`` with `serverError` (`NOPERM` for a channel the user may not read),
    ///   `commandTimeout` when no confirmation came within the lease timeout, `clientShutdown`.
    public func subscribe(to channels: [String]) async throws -> RedisClientSubscription {
        try await self.subscriberHub.subscribe(.channel, channels, timeout: self.configuration.pool.leaseTimeout, limits: self.configuration.subscriptionBufferLimits)
    }

    /// Subscribes to the channels matching `patterns` (`PSUBSCRIBE`); messages carry the pattern.
    public func psubscribe(to patterns: [String]) async throws -> RedisClientSubscription {
        try await self.subscriberHub.subscribe(.pattern, patterns, timeout: self.configuration.pool.leaseTimeout, limits: self.configuration.subscriptionBufferLimits)
    }

    /// Subscribes to sharded channels (`SSUBSCRIBE`, Redis 7). Against one node of a Redis Cluster the
    /// subscription ends with ``RedisError/Code/subscriptionEnded`` when a channel's slot moves away (the
    /// node sends `sunsubscribe`); ``RedisClusterClient/ssubscribe(to:)`` follows the slot instead.
    public func ssubscribe(to channels: [String]) async throws -> RedisClientSubscription {
        try await self.subscriberHub.subscribe(.shardChannel, channels, timeout: self.configuration.pool.leaseTimeout, limits: self.configuration.subscriptionBufferLimits)
    }
}

extension RedisCommandExecutor {
    /// Publishes `message` to `channel` (`PUBLISH`); returns how many subscribers received it.
    ///
    /// Not resent after a connection dies in flight (a second delivery would be a duplicate): then it
    /// fails with ``RedisError/Code/outcomeUnknown``.
    @discardableResult
    public func publish(_ message: RedisArgument, to channel: String) async throws -> Int {
        try await self.send(RedisCommand("PUBLISH", .string(channel), message), as: Int.self)
    }

    /// Publishes `message` to the sharded channel `channel` (`SPUBLISH`, Redis 7); returns how many
    /// subscribers received it.
    @discardableResult
    public func spublish(_ message: RedisArgument, to channel: String) async throws -> Int {
        try await self.send(RedisCommand("SPUBLISH", .string(channel), message), as: Int.self)
    }
}
