#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The contents of a password file, parsed.
///
/// Two formats:
/// - **Plain**: the whole file is the password; one trailing newline is ignored.
/// - **Keyed**: lines `password=...`, optionally `username=...`, `version=...`, `expires=...` (ISO 8601
///   or seconds since 1970), every line ending with a newline. A file is keyed when its first line
///   starts with one of these keys. A missing final newline means the file is still being written.
struct CredentialFile: Hashable {
    var username: String?
    var password: RedisSecret
    var version: String?
    var expiresAt: Date?

    /// Files larger than this are not password files.
    static let maximumSize = 64 * 1024
    static let keys = ["password", "username", "version", "expires"]

    /// Why a file's contents cannot be used (never quoting them).
    struct Rejection: Error, Hashable, CustomStringConvertible {
        let description: String
    }

    /// Parses the contents of a file as read, without copying them anywhere but into the password.
    static func parse(_ contents: RedisSecret) -> Result<CredentialFile, Rejection> {
        contents.withUnsafeBytes { Self.parse($0) }
    }

    static func parse<Bytes: BidirectionalCollection<UInt8>>(_ bytes: Bytes) -> Result<CredentialFile, Rejection> {
        if bytes.isEmpty { return .failure(Rejection(description: "the file is empty")) }
        if bytes.count > Self.maximumSize {
            return .failure(Rejection(description: "the file is larger than \(Self.maximumSize) bytes"))
        }
        let firstLine = bytes.prefix(while: { $0 != UInt8(ascii: "\n") })
        let isKeyed = Self.keys.contains { key in firstLine.starts(with: Array("\(key)=".utf8)) }
        return isKeyed ? Self.parseKeyed(bytes) : Self.parsePlain(bytes)
    }

    private static func parsePlain<Bytes: BidirectionalCollection<UInt8>>(_ bytes: Bytes) -> Result<CredentialFile, Rejection> {
        var password = bytes[...]
        if password.last == UInt8(ascii: "\n") { password = password.dropLast() }
        if password.last == UInt8(ascii: "\r") { password = password.dropLast() }
        if password.isEmpty { return .failure(Rejection(description: "the file holds only a newline")) }
        if password.contains(UInt8(ascii: "\n")) {
            return .failure(Rejection(description: "a plain password file holds one line; use password=... lines for more"))
        }
        return .success(CredentialFile(username: nil, password: RedisSecret(bytes: password), version: nil, expiresAt: nil))
    }

    private static func parseKeyed<Bytes: BidirectionalCollection<UInt8>>(_ bytes: Bytes) -> Result<CredentialFile, Rejection> {
        guard bytes.last == UInt8(ascii: "\n") else {
            return .failure(Rejection(description: "the last line has no newline: the file is incomplete (still being written?)"))
        }
        var file = CredentialFile(username: nil, password: RedisSecret(""), version: nil, expiresAt: nil)
        var sawPassword = false
        for rawLine in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
            var line = rawLine
            if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
            guard let equals = line.firstIndex(of: UInt8(ascii: "=")) else {
                return .failure(Rejection(description: "a line has no '='"))
            }
            let key = String(decoding: line[line.startIndex..<equals], as: UTF8.self)
            let value = line[line.index(after: equals)...]
            switch key {
            case "password":
                guard !value.isEmpty else { return .failure(Rejection(description: "the password is empty")) }
                file.password = RedisSecret(bytes: value)
                sawPassword = true
            case "username":
                file.username = String(decoding: value, as: UTF8.self)
            case "version":
                let version = String(decoding: value, as: UTF8.self)
                guard RedisCredentials.isValidVersion(version) else {
                    return .failure(Rejection(description: "the version is not 1 to 64 printable characters without spaces"))
                }
                file.version = version
            case "expires":
                let text = String(decoding: value, as: UTF8.self)
                if let seconds = Self.secondsSince1970(value) {
                    file.expiresAt = Date(timeIntervalSince1970: seconds)
                } else if let date = try? Date.ISO8601FormatStyle().parse(text), Self.expiryRange.contains(date.timeIntervalSince1970) {
                    file.expiresAt = date
                } else {
                    return .failure(Rejection(description: "expires is neither ISO 8601 nor seconds since 1970"))
                }
            default:
                return .failure(Rejection(description: "unknown key '\(key)'"))
            }
        }
        guard sawPassword else { return .failure(Rejection(description: "there is no password= line")) }
        return .success(file)
    }

    /// The expiries accepted, in seconds since 1970: from 1970 to the end of year 9999, in either
    /// spelling, so that every accepted expiry can be written in both.
    static let expiryRange = 0.0...253_402_300_799

    /// Digits with an optional fraction. Not `Double(text)`: that accepts `inf` and `nan` (a NaN date
    /// crashes `Date.description`), exponents, hex, signs and anything after a NUL.
    private static func secondsSince1970<Text: Collection<UInt8>>(_ text: Text) -> Double? {
        let digits = UInt8(ascii: "0")...UInt8(ascii: "9")
        let parts = text.split(separator: UInt8(ascii: "."), maxSplits: 1, omittingEmptySubsequences: false)
        guard
            !text.isEmpty, text.count <= 32,
            parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy(digits.contains) }),
            let seconds = Double(String(decoding: text, as: UTF8.self)),
            Self.expiryRange.contains(seconds)
        else { return nil }
        return seconds
    }
}
