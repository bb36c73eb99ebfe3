#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// One username and password, labelled with a version.
///
/// The version names the credential in connection names (`CLIENT SETNAME app@v7`), events, logs and
/// metrics, so an operator can see on the server which connections still use which password. It never
/// contains the password. Printing credentials shows the username and version only.
public struct RedisCredentials: Sendable, Hashable, CustomStringConvertible {
    /// The ACL user.
    public var username: String
    /// The password.
    public var password: RedisSecret
    /// A label for this credential (`v7`, `2026-11`); printable ASCII without spaces, at most 64 bytes.
    public var version: String
    /// When the password stops working, if known (a 90-day policy, a vault lease).
    public var expiresAt: Date?

    public init(username: String, password: RedisSecret, version: String, expiresAt: Date? = nil) {
        precondition(Self.isValidVersion(version), "a credential version is 1 to 64 printable ASCII characters without spaces")
        self.username = username
        self.password = password
        self.version = version
        self.expiresAt = expiresAt
    }

    /// Whether `version` can label a credential (it becomes part of a `CLIENT SETNAME` name).
    public static func isValidVersion(_ version: String) -> Bool {
        !version.isEmpty && version.utf8.count <= 64 && version.utf8.allSatisfy { (0x21...0x7E).contains($0) }
    }

    /// Whether both hold the same username and password (the version label aside).
    func authenticatesLike(_ other: RedisCredentials) -> Bool {
        self.username == other.username && self.password == other.password
    }

    public var description: String {
        "RedisCredentials(username: \(self.username), version: \(self.version)\(self.expiresAt.map { ", expires: \($0)" } ?? ""))"
    }
}
