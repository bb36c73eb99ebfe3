#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Ways in for the fuzz targets in `Fuzz/`, not API: the parsers that have no public entry point
/// short of a file on disk. Reached with `@_spi(Fuzzing) import RedisRotation`; nothing else uses them.
@_spi(Fuzzing)
public enum RedisFuzzing {
    /// Parses the contents of a password file exactly as a ``RedisCredentialSource/file(_:username:pollInterval:debounce:)``
    /// source does; `nil` when the source would reject them.
    public static func parseCredentialFile(
        _ bytes: [UInt8]
    ) -> (username: String?, password: RedisSecret, version: String?, expiresAt: Date?)? {
        guard case .success(let file) = CredentialFile.parse(bytes) else { return nil }
        return (file.username, file.password, file.version, file.expiresAt)
    }

    /// Parses the first private key of a PEM buffer as a client identity's key is parsed.
    public static func parsePrivateKey(pem bytes: [UInt8]) throws(RedisError) {
        _ = try PrivateKey.parse(.pem(bytes: bytes, name: "fuzz input"))
    }
}
