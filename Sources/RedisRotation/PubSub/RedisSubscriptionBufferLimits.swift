import Synchronization

/// How much a subscription may hold that its reader has not taken yet: at most `maximumMessages`
/// messages and `maximumBytes` bytes of payload (a single message larger than that is still let through
/// when nothing else waits).
///
/// Without a bound, a reader that stops reading makes the client hold every message published to its
/// channels, and the server's own guard (`client-output-buffer-limit pubsub`, 32 MB by default) never
/// trips because the client keeps draining the socket. What happens at the bound:
/// - On a ``RedisConnection`` the subscription ends with ``RedisError/Code/slowConsumer`` (what it holds
///   can still be read first), and the channels only it used are unsubscribed.
/// - On a ``RedisClient`` the subscription stays (it is the client's job to keep it alive): further
///   messages are dropped until the reader has taken half of what waits, then a
///   ``RedisSubscriptionEvent/gap(from:to:)`` says when messages were dropped, before the next message.
public struct RedisSubscriptionBufferLimits: Sendable, Hashable, CustomStringConvertible {
    /// Messages waiting to be read. Default: 100,000.
    public var maximumMessages: Int
    /// Payload bytes waiting to be read. Default: 16 MiB.
    public var maximumBytes: Int

    public init(maximumMessages: Int = 100_000, maximumBytes: Int = 16 << 20) {
        precondition(maximumMessages > 0 && maximumBytes > 0, "a subscription must be able to hold a message")
        self.maximumMessages = maximumMessages
        self.maximumBytes = maximumBytes
    }

    public var description: String { "\(self.maximumMessages) messages or \(self.maximumBytes) bytes" }
}

/// What one subscription's reader has not taken yet: counted up by the one producer (the connection's
/// event loop, or the client's subscriber under its lock) and down by the reader.
final class SubscriptionBacklog: Sendable {
    let limits: RedisSubscriptionBufferLimits
    private let messages = Atomic<Int>(0)
    private let bytes = Atomic<Int>(0)

    init(limits: RedisSubscriptionBufferLimits) {
        self.limits = limits
    }

    /// Counts in a message of `size` payload bytes when it fits; `false` (nothing counted) when it does
    /// not. One producer, so nothing else adds between the check and the count.
    func admit(_ size: Int) -> Bool {
        let messages = self.messages.load(ordering: .relaxed)
        let bytes = self.bytes.load(ordering: .relaxed)
        guard messages == 0 || (messages < self.limits.maximumMessages && bytes + size <= self.limits.maximumBytes) else { return false }
        self.messages.add(1, ordering: .relaxed)
        self.bytes.add(size, ordering: .relaxed)
        return true
    }

    /// The reader took a message of `size` payload bytes.
    func taken(_ size: Int) {
        self.messages.subtract(1, ordering: .relaxed)
        self.bytes.subtract(size, ordering: .relaxed)
    }

    /// At most half of each limit waits: room again after messages were dropped.
    var isHalfEmpty: Bool {
        self.messages.load(ordering: .relaxed) <= self.limits.maximumMessages / 2
            && self.bytes.load(ordering: .relaxed) <= self.limits.maximumBytes / 2
    }
}
