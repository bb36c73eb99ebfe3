#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// A password file, as ``RedisCredentialSource/file(_:username:pollInterval:debounce:)`` reads it: the
/// one reader and writer of the format, for tools that publish passwords (`redis-rotation rotate`,
/// a secret manager's hook, tests).
///
/// Reading accepts both formats (a plain one-line password, or `password=`/`username=`/`version=`/
/// `expires=` lines) with exactly the rules a client applies. Writing always produces the keyed
/// format and replaces the file the way a client can never see half of: see ``write(to:)``.
public struct RedisCredentialFile: Sendable, Hashable {
    /// The user named in the file, if any (`username=`).
    public var username: String?
    /// The password.
    public var password: RedisSecret
    /// The version label (`version=`), if any.
    public var version: String?
    /// When the password expires (`expires=`), if known.
    public var expiresAt: Date?

    public init(username: String? = nil, password: RedisSecret, version: String?, expiresAt: Date? = nil) {
        self.username = username
        self.password = password
        self.version = version
        self.expiresAt = expiresAt
    }

    /// Reads and parses the file at `path`.
    ///
    /// - Throws: ``RedisError`` with code `invalidArgument` naming the file and the reason (missing,
    ///   unreadable, empty, incomplete, malformed); never quoting its contents.
    public static func read(from path: String) throws(RedisError) -> RedisCredentialFile {
        let bytes: RedisSecret
        do {
            bytes = try readFile(path, limit: CredentialFile.maximumSize, truncating: true)
        } catch {
            throw RedisError(code: .invalidArgument, message: "cannot read the password file \(path): \(error.message)")
        }
        switch CredentialFile.parse(bytes) {
        case .success(let file):
            return RedisCredentialFile(username: file.username, password: file.password, version: file.version, expiresAt: file.expiresAt)
        case .failure(let rejection):
            throw RedisError(code: .invalidArgument, message: "the password file \(path) cannot be used: \(rejection)")
        }
    }

    /// The keyed text of this file, in a buffer that is wiped when released.
    func encoded() throws(RedisError) -> RedisSecret {
        let newline = UInt8(ascii: "\n")
        let hasNewline = self.password.withUnsafeBytes { $0.contains(newline) || $0.contains(UInt8(ascii: "\r")) }
        guard self.password.count > 0, !hasNewline else {
            throw RedisError(code: .invalidArgument, message: "a password to write must be non-empty and hold no line break")
        }
        if let version = self.version, !RedisCredentials.isValidVersion(version) {
            throw RedisError(code: .invalidArgument, message: "the version must be 1 to 64 printable characters without spaces")
        }
        if let username = self.username, username.isEmpty || username.contains(where: { $0.isNewline }) {
            throw RedisError(code: .invalidArgument, message: "the user name must be non-empty and hold no line break")
        }
        var head = ""
        if let username = self.username { head += "username=\(username)\n" }
        var tail = "\n"
        if let version = self.version { tail += "version=\(version)\n" }
        if let expiresAt = self.expiresAt { tail += "expires=\(Int(expiresAt.timeIntervalSince1970))\n" }
        return self.password.withUnsafeBytes { password in
            RedisSecret(bytes: Array(head.utf8) + Array("password=".utf8) + password + Array(tail.utf8))
        }
    }
}
