private import COpenSSL

/// A secret such as a password: its bytes are reachable only through ``withUnsafeBytes(_:)``.
///
/// `description`, `debugDescription`, `dump` and `Mirror` all show `<redacted>`, so a secret stored in a
/// configuration never reaches a log line, an error message or a crash report by accident. The bytes
/// are wiped from memory when the last copy of the secret goes away. Two secrets compare equal in
/// constant time when their bytes are equal.
public struct RedisSecret: Sendable, Hashable, ExpressibleByStringLiteral, CustomStringConvertible,
    CustomDebugStringConvertible, CustomReflectable
{
    private let storage: Storage

    /// A secret holding the UTF-8 bytes of `string`.
    public init(_ string: String) {
        self.storage = Storage(Array(string.utf8))
    }

    /// A secret holding `bytes`. Passwords are binary-safe in Redis.
    public init(bytes: some Sequence<UInt8>) {
        self.storage = Storage(Array(bytes))
    }

    public init(stringLiteral value: String) {
        self.init(value)
    }

    /// The number of bytes in the secret.
    public var count: Int { self.storage.buffer.count }

    /// Whether the secret holds no bytes.
    public var isEmpty: Bool { self.storage.buffer.isEmpty }

    /// Calls `body` with the secret's bytes. Do not let them escape the closure.
    public func withUnsafeBytes<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result) rethrows -> Result {
        try body(UnsafeRawBufferPointer(self.storage.buffer))
    }

    public var description: String { "<redacted>" }
    public var debugDescription: String { "<redacted>" }
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }

    public static func == (lhs: RedisSecret, rhs: RedisSecret) -> Bool {
        lhs.withUnsafeBytes { left in
            rhs.withUnsafeBytes { right in
                guard left.count == right.count else { return false }
                if left.isEmpty { return true }
                return CRYPTO_memcmp(left.baseAddress, right.baseAddress, left.count) == 0
            }
        }
    }

    /// Hashes only the length, so that a hash value reveals nothing about the bytes.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(self.count)
    }
}

extension RedisSecret {
    /// Owns the secret's bytes and wipes them on deinit.
    // Safe because the buffer is written only in init and deinit; in between it is only read.
    private final class Storage: @unchecked Sendable {
        let pointer: UnsafeMutablePointer<UInt8>
        let count: Int

        init(_ bytes: [UInt8]) {
            var bytes = bytes
            self.count = bytes.count
            self.pointer = .allocate(capacity: max(bytes.count, 1))
            bytes.withUnsafeBufferPointer { source in
                if let base = source.baseAddress { self.pointer.initialize(from: base, count: source.count) }
            }
            // The temporary array held the secret too: wipe it before it is released.
            bytes.withUnsafeMutableBytes { wipe($0) }
        }

        var buffer: UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(start: self.pointer, count: self.count) }

        deinit {
            wipe(UnsafeMutableRawBufferPointer(start: self.pointer, count: self.count))
            self.pointer.deallocate()
        }
    }
}

/// Overwrites `bytes` with zeros in a way the optimiser may not remove.
func wipe(_ bytes: UnsafeMutableRawBufferPointer) {
    guard let base = bytes.baseAddress, bytes.count > 0 else { return }
    OPENSSL_cleanse(base, bytes.count)
}
