public import NIOCore

/// A message published to a channel the connection or client is subscribed to.
///
/// Channel and pattern names are bytes on the server: ``channelBytes`` and ``patternBytes`` are exactly
/// what it sent, and two messages are equal only when those bytes are. ``channel`` and ``pattern`` are
/// the same names as text, for convenience (names that differ only in Unicode normalization are
/// different channels, though their `String`s compare equal).
///
/// Its description shows the channel's and payload's sizes, never their contents (they are user data).
public struct RedisPubSubMessage: Sendable, Hashable, CustomStringConvertible {
    /// The channel the message was published to, exactly as the server sent it.
    public var channelBytes: [UInt8]
    /// The pattern that matched the channel, exactly as the server sent it; `nil` unless `psubscribe`d.
    public var patternBytes: [UInt8]?
    /// Whether it came through sharded pub/sub (`SPUBLISH` to an `ssubscribe`d channel).
    public var isSharded: Bool
    /// The payload, as published (binary-safe).
    public var payload: ByteBuffer

    /// The channel the message was published to, as UTF-8 text (invalid sequences are repaired).
    public var channel: String {
        get { String(decoding: self.channelBytes, as: UTF8.self) }
        set { self.channelBytes = Array(newValue.utf8) }
    }

    /// The pattern that matched ``channel``, for subscriptions made with `psubscribe`; `nil` otherwise.
    public var pattern: String? {
        get { self.patternBytes.map { String(decoding: $0, as: UTF8.self) } }
        set { self.patternBytes = newValue.map { Array($0.utf8) } }
    }

    /// The payload as UTF-8 text (invalid sequences are repaired).
    public var string: String { String(buffer: self.payload) }

    public init(channel: String, pattern: String? = nil, isSharded: Bool = false, payload: ByteBuffer) {
        self.channelBytes = Array(channel.utf8)
        self.patternBytes = pattern.map { Array($0.utf8) }
        self.isSharded = isSharded
        self.payload = payload
    }

    public var description: String {
        "RedisPubSubMessage(channel: \(self.channelBytes.count) bytes\(self.patternBytes == nil ? "" : ", pattern")\(self.isSharded ? ", sharded" : ""), payload: \(self.payload.readableBytes) bytes)"
    }

    init(kind: PubSubStateMachine.Kind, channel: PubSubName, pattern: PubSubName?, payload: ByteBuffer) {
        self.channelBytes = channel.bytes
        self.patternBytes = pattern?.bytes
        self.isSharded = kind == .shardChannel
        self.payload = payload
    }
}
