/// The TLS protocol versions RedisRotation can require.
public struct RedisTLSVersion: Sendable, Hashable, Comparable, CustomStringConvertible {
    let rawValue: Int32

    /// TLS 1.2 (the minimum RedisRotation allows).
    public static let tls12 = RedisTLSVersion(rawValue: 0x0303)
    /// TLS 1.3.
    public static let tls13 = RedisTLSVersion(rawValue: 0x0304)

    public static func < (lhs: RedisTLSVersion, rhs: RedisTLSVersion) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { self == .tls13 ? "TLSv1.3" : "TLSv1.2" }
}

/// How the server's certificate is checked.
public struct RedisTLSVerification: Sendable, Hashable, CustomStringConvertible {
    private enum Base: Sendable, Hashable {
        case full
        case insecureNoVerification
    }

    private let base: Base

    /// The certificate must chain to a trust anchor, be valid now, and name the server (DNS name or IP
    /// address). The default.
    public static let full = RedisTLSVerification(base: .full)
    /// Nothing is checked: anyone on the path can read and change the traffic. For local experiments only.
    public static let insecureNoVerification = RedisTLSVerification(base: .insecureNoVerification)

    var verifiesPeer: Bool { self.base == .full }

    public var description: String { self.base == .full ? "full" : "insecureNoVerification" }
}

/// The client's certificate chain and private key, for mutual TLS.
public struct RedisTLSClientIdentity: Sendable, Hashable {
    /// The leaf certificate first, then any intermediates.
    public var certificateChain: RedisPEMSource
    /// The private key of the leaf certificate (unencrypted PEM: PKCS#8, PKCS#1 or SEC 1).
    public var privateKey: RedisPEMSource

    /// A chain and a key from two sources.
    public init(certificateChain: RedisPEMSource, privateKey: RedisPEMSource) {
        self.certificateChain = certificateChain
        self.privateKey = privateKey
    }

    /// One PEM holding the chain and the key, the format that makes a rotation atomic.
    public static func combined(_ source: RedisPEMSource) -> RedisTLSClientIdentity {
        RedisTLSClientIdentity(certificateChain: source, privateKey: source)
    }
}

/// What a ``RedisTLSContext`` is built from.
public struct RedisTLSConfiguration: Sendable, Hashable {
    /// CA certificates the server's certificate must chain to; a source may hold several. Empty means
    /// the system's trust store.
    public var trustAnchors: [RedisPEMSource]
    /// CA certificates trusted together with ``trustAnchors`` during a CA rollover.
    public var pendingTrustAnchors: [RedisPEMSource]
    /// The client certificate and key for mutual TLS; `nil` sends none.
    public var clientIdentity: RedisTLSClientIdentity?
    /// How the server's certificate is checked. Default: ``RedisTLSVerification/full``.
    public var verification: RedisTLSVerification
    /// The oldest protocol version accepted. Default and minimum: TLS 1.2.
    public var minimumVersion: RedisTLSVersion
    /// The newest protocol version offered; `nil` offers the newest OpenSSL supports.
    public var maximumVersion: RedisTLSVersion?
    /// Whether connections resume TLS sessions of earlier connections made with the same context.
    /// Default: on. Sessions never cross contexts.
    public var sessionResumption: Bool

    public init(
        trustAnchors: [RedisPEMSource] = [],
        pendingTrustAnchors: [RedisPEMSource] = [],
        clientIdentity: RedisTLSClientIdentity? = nil,
        verification: RedisTLSVerification = .full,
        minimumVersion: RedisTLSVersion = .tls12,
        maximumVersion: RedisTLSVersion? = nil,
        sessionResumption: Bool = true
    ) {
        precondition(minimumVersion >= .tls12, "TLS 1.2 is the oldest version RedisRotation allows")
        if let maximumVersion {
            precondition(maximumVersion >= minimumVersion, "maximumVersion must not be below minimumVersion")
        }
        self.trustAnchors = trustAnchors
        self.pendingTrustAnchors = pendingTrustAnchors
        self.clientIdentity = clientIdentity
        self.verification = verification
        self.minimumVersion = minimumVersion
        self.maximumVersion = maximumVersion
        self.sessionResumption = sessionResumption
    }
}
