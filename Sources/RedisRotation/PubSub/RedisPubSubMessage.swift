public import NIOCore

/// A message published to a channel the connection or client is subscribed to.
///
/// Its description shows the channel's and payload's sizes, never their contents (they are user data).
public struct RedisPubSubMessage: Sendable, Hashable, CustomStringConvertible {
    /// The channel the message was published to.
    public var channel: String
    /// The pattern that matched ``channel``, for subscriptions made with `psubscribe`; `nil` otherwise.
    public var pattern: String?
    /// Whether it came through sharded pub/sub (`SPUBLISH` to an `ssubscribe`d channel).
    public var isSharded: Bool
    /// The payload, as published (binary-safe).
    public var payload: ByteBuffer

    /// The payload as UTF-8 text (invalid sequences are repaired).
    public var string: String { String(buffer: self.payload) }

    public init(channel: String, pattern: String? = nil, isSharded: Bool = false, payload: ByteBuffer) {
        self.channel = channel
        self.pattern = pattern
        self.isSharded = isSharded
        self.payload = payload
    }

    public var description: String {
        "RedisPubSubMessage(channel: \(self.channel.utf8.count) bytes\(self.pattern == nil ? "" : ", pattern")\(self.isSharded ? ", sharded" : ""), payload: \(self.payload.readableBytes) bytes)"
    }

    init(kind: PubSubStateMachine.Kind, channel: String, pattern: String?, payload: ByteBuffer) {
        self.init(channel: channel, pattern: pattern, isSharded: kind == .shardChannel, payload: payload)
    }
}
