/// Where PEM-encoded material comes from: a file (read when a TLS context is built) or bytes in memory.
///
/// The ``name`` appears in error messages ("malformed PEM in /etc/redis/ca.pem: ..."), never the content.
/// PEM in memory may be a private key: it is kept like a ``RedisSecret``, wiped when the last copy of
/// the source goes away.
public struct RedisPEMSource: Sendable, Hashable, CustomStringConvertible {
    enum Storage: Sendable, Hashable {
        case file(String)
        case bytes(RedisSecret, name: String)
    }

    let storage: Storage

    /// A PEM file, read each time a TLS context is built from it.
    public static func file(_ path: String) -> RedisPEMSource {
        RedisPEMSource(storage: .file(path))
    }

    /// PEM text in memory; `name` labels it in error messages.
    public static func pem(_ text: String, name: String = "in-memory PEM") -> RedisPEMSource {
        RedisPEMSource(storage: .bytes(RedisSecret(text), name: name))
    }

    /// PEM bytes in memory; `name` labels it in error messages.
    public static func pem(bytes: [UInt8], name: String = "in-memory PEM") -> RedisPEMSource {
        RedisPEMSource(storage: .bytes(RedisSecret(bytes: bytes), name: name))
    }

    /// PEM bytes already read (from the file `name`), shared rather than copied.
    static func pem(contents: RedisSecret, name: String) -> RedisPEMSource {
        RedisPEMSource(storage: .bytes(contents, name: name))
    }

    /// The file's path, or the label of in-memory PEM.
    public var name: String {
        switch self.storage {
        case .file(let path): return path
        case .bytes(_, let name): return name
        }
    }

    /// The name only: the content may be a private key.
    public var description: String { self.name }

    /// The PEM bytes, wiped when the last holder lets go. A file that cannot be read is a
    /// ``RedisError/Code/tlsMalformedPEM`` naming the file.
    func read() throws(RedisError) -> RedisSecret {
        switch self.storage {
        case .bytes(let bytes, _):
            return bytes
        case .file(let path):
            do {
                return try readFile(path)
            } catch {
                throw RedisError(code: .tlsMalformedPEM, message: "cannot read \(path): \(error.message)")
            }
        }
    }
}
