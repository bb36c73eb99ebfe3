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
        self.storage = Storage(copying: string.utf8)
    }

    /// A secret holding `bytes`. Passwords are binary-safe in Redis.
    public init(bytes: some Sequence<UInt8>) {
        self.storage = Storage(copying: bytes)
    }

    /// A secret whose bytes `read` writes, at most `limit` of them: each call fills some of the buffer
    /// it is given and returns how many bytes it wrote, 0 at the end. For reading files that hold
    /// secrets: no buffer along the way is left unwiped.
    init<Failure: Error>(
        limit: Int,
        reading read: (UnsafeMutableRawBufferPointer) throws(Failure) -> Int
    ) throws(Failure) {
        let storage = Storage(capacity: min(limit, 4096))
        // On a throw, `storage` is released here, and wipes what it holds.
        while storage.count < limit {
            if storage.count == storage.capacity { storage.grow(to: min(limit, storage.capacity * 2)) }
            let written = try read(storage.spareCapacity)
            if written <= 0 { break }
            storage.count += written
        }
        self.storage = storage
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
    /// Owns the secret's bytes and wipes them on deinit, and every buffer it outgrows while being filled.
    // Safe because the fields change only while the storage is being filled, before the RedisSecret
    // that owns it exists; afterwards it is only read.
    private final class Storage: @unchecked Sendable {
        private(set) var pointer: UnsafeMutablePointer<UInt8>
        private(set) var capacity: Int
        var count = 0

        init(capacity: Int) {
            self.capacity = max(capacity, 1)
            self.pointer = .allocate(capacity: self.capacity)
        }

        /// Copies `bytes` straight into the storage: no intermediate array holds them.
        convenience init(copying bytes: some Sequence<UInt8>) {
            self.init(capacity: bytes.underestimatedCount)
            let copied: Void? = bytes.withContiguousStorageIfAvailable { source in
                self.reserve(source.count)
                if let base = source.baseAddress { (self.pointer + self.count).initialize(from: base, count: source.count) }
                self.count += source.count
            }
            if copied == nil {
                for byte in bytes {
                    self.reserve(1)
                    self.pointer[self.count] = byte
                    self.count += 1
                }
            }
        }

        var buffer: UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(start: self.pointer, count: self.count) }

        /// The allocated bytes after `count`.
        var spareCapacity: UnsafeMutableRawBufferPointer {
            UnsafeMutableRawBufferPointer(start: self.pointer + self.count, count: self.capacity - self.count)
        }

        /// Makes room for `more` bytes after `count`.
        private func reserve(_ more: Int) {
            if self.count + more > self.capacity { self.grow(to: max(self.count + more, self.capacity * 2)) }
        }

        /// Moves the bytes to a larger buffer and wipes the old one.
        func grow(to capacity: Int) {
            let larger = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
            larger.initialize(from: self.pointer, count: self.count)
            wipe(UnsafeMutableRawBufferPointer(start: self.pointer, count: self.capacity))
            self.pointer.deallocate()
            self.pointer = larger
            self.capacity = capacity
        }

        deinit {
            wipe(UnsafeMutableRawBufferPointer(start: self.pointer, count: self.capacity))
            self.pointer.deallocate()
        }
    }
}

/// Overwrites `bytes` with zeros in a way the optimiser may not remove.
func wipe(_ bytes: UnsafeMutableRawBufferPointer) {
    guard let base = bytes.baseAddress, bytes.count > 0 else { return }
    OPENSSL_cleanse(base, bytes.count)
}
