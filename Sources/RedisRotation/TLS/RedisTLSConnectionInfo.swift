/// What the TLS handshake of a connection settled on.
public struct RedisTLSConnectionInfo: Sendable, Hashable {
    /// `TLSv1.3` or `TLSv1.2`.
    public var protocolVersion: String
    /// The cipher suite's OpenSSL name.
    public var cipher: String
    /// Whether the handshake resumed an earlier session (no certificate exchange).
    public var sessionReused: Bool
    /// The server's certificate. After a resumed handshake it is the one of the original session.
    public var peerCertificate: RedisCertificate?
    /// The ``RedisTLSContext/generation`` the connection was made with.
    public var contextGeneration: UInt64
}
