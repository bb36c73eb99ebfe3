#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Something that happened during rotation, for dashboards, alerts and tests. Never carries a secret.
public struct RedisRotationEvent: Sendable, Hashable, CustomStringConvertible {
    /// What happened. New kinds may be added: do not switch exhaustively.
    public struct Kind: Sendable, Hashable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// The credential source reported new credentials; they are pending until a probe succeeds.
        public static let credentialSourceChanged = Kind("credentialSourceChanged")
        /// The credential source changed, but its content cannot be used (empty, partial, oversized,
        /// a failing provider). The last good credentials stay in use.
        public static let credentialSourceRejected = Kind("credentialSourceRejected")
        /// A probe connection authenticated with the pending credentials.
        public static let probeSucceeded = Kind("probeSucceeded")
        /// A probe connection could not authenticate with the pending credentials; traffic continues on
        /// the current ones and the probe is retried with backoff (`detail` says when).
        public static let probeFailed = Kind("probeFailed")
        /// The pending credentials became current.
        public static let promoted = Kind("promoted")
        /// A connection switched to the current credentials in place, without reconnecting.
        public static let connectionReauthenticated = Kind("connectionReauthenticated")
        /// A connection was replaced: it closed (killed, reset, aged out, failed re-authentication).
        public static let connectionReplaced = Kind("connectionReplaced")
        /// The server rejected credentials when a connection was opened (`WRONGPASS`).
        public static let credentialRejected = Kind("credentialRejected")
        /// The server rejected the current credentials while the previous ones still work (a password
        /// rolled back, a server restarted with an unsaved ACL): the previous ones are current again and
        /// the rejected ones are probed with backoff. `credentialVersion` is the rejected version.
        public static let credentialDemoted = Kind("credentialDemoted")
        /// The previous credentials' grace period ended.
        public static let previousCredentialDiscarded = Kind("previousCredentialDiscarded")
        /// Changed TLS files validated and became a new TLS context generation (`detail` names it).
        public static let tlsMaterialReloaded = Kind("tlsMaterialReloaded")
        /// Changed TLS files were rejected (malformed PEM, key mismatch, expired or unfit certificate);
        /// the last good generation stays in use. `detail` has the error code and reason.
        public static let tlsMaterialRejected = Kind("tlsMaterialRejected")
        /// Every pooled connection now uses the newest TLS generation.
        public static let tlsGenerationRolled = Kind("tlsGenerationRolled")
        /// Something expires within a warning threshold (or has expired): `detail` says what and when.
        public static let expiryWarning = Kind("expiryWarning")

        public var description: String { self.name }
    }

    /// What happened.
    public var kind: Kind
    /// When.
    public var date: Date
    /// The credential version concerned, if any.
    public var credentialVersion: String?
    /// The pooled connection concerned, if any.
    public var connectionID: Int?
    /// A human-readable detail (reasons, versions); no secrets.
    public var detail: String

    public init(kind: Kind, date: Date = Date(), credentialVersion: String? = nil, connectionID: Int? = nil, detail: String = "") {
        self.kind = kind
        self.date = date
        self.credentialVersion = credentialVersion
        self.connectionID = connectionID
        self.detail = detail
    }

    public var description: String {
        var parts = ["\(self.kind)"]
        if let version = self.credentialVersion { parts.append("version=\(version)") }
        if let id = self.connectionID { parts.append("connection=\(id)") }
        if !self.detail.isEmpty { parts.append(self.detail) }
        return parts.joined(separator: " ")
    }
}
