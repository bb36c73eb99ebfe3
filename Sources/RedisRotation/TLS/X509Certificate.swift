#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
internal import COpenSSL
private import COpenSSLShims
import Synchronization

/// Owns one OpenSSL `X509`.
// Safe because the certificate is never modified after parsing, and OpenSSL's reference counting and
// read-only accessors on an X509 are thread-safe.
final class X509Certificate: @unchecked Sendable {
    let pointer: OpaquePointer

    /// Takes ownership of `pointer` (one reference).
    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    /// Adds a reference to `pointer` and owns that one.
    init(retaining pointer: OpaquePointer) {
        X509_up_ref(pointer)
        self.pointer = pointer
    }

    deinit {
        X509_free(self.pointer)
    }

    /// Parses every certificate in `bytes`. An empty input, a truncated or corrupt block, or a
    /// `BEGIN CERTIFICATE` that did not parse is a ``RedisError/Code/tlsMalformedPEM`` naming `source`.
    /// `pem` is a secret because a combined identity file holds the private key too.
    static func parseAll(pem: RedisSecret, source: String) throws(RedisError) -> [X509Certificate] {
        let expected = pem.withUnsafeBytes { bytes in
            countOccurrences(of: Array("-----BEGIN CERTIFICATE-----".utf8), in: bytes)
                + countOccurrences(of: Array("-----BEGIN TRUSTED CERTIFICATE-----".utf8), in: bytes)
        }
        guard expected > 0 else {
            throw RedisError(code: .tlsMalformedPEM, message: "no PEM certificate in \(source)")
        }
        OpenSSLErrors.clear()
        var certificates: [X509Certificate] = []
        let failure: [OpenSSLErrorEntry]? = pem.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return [] }
            defer { BIO_free(bio) }
            while true {
                guard let certificate = PEM_read_bio_X509(bio, nil, nil, nil) else {
                    let errors = OpenSSLErrors.drain()
                    // The end of input shows as "no start line"; anything else is a broken block.
                    let atEnd = errors.allSatisfy { $0.library == ERR_LIB_PEM && $0.reason == PEM_R_NO_START_LINE }
                    return atEnd ? nil : errors
                }
                certificates.append(X509Certificate(taking: certificate))
            }
        }
        if let failure {
            throw RedisError(
                code: .tlsMalformedPEM,
                message: "malformed certificate in \(source): \(OpenSSLErrors.summary(failure))"
            )
        }
        guard certificates.count == expected else {
            throw RedisError(
                code: .tlsMalformedPEM,
                message: "\(source) holds \(expected) certificate blocks but only \(certificates.count) parsed"
            )
        }
        return certificates
    }

    /// This certificate as a value for users.
    var info: RedisCertificate { RedisCertificate(self) }

    func notAfter() -> Double? { Self.seconds(X509_get0_notAfter(self.pointer)) }
    func notBefore() -> Double? { Self.seconds(X509_get0_notBefore(self.pointer)) }

    /// Seconds since 1970 for an ASN.1 time.
    static func seconds(_ time: UnsafePointer<ASN1_TIME>?) -> Double? {
        guard let time else { return nil }
        var parts = tm()
        guard ASN1_TIME_to_tm(time, &parts) == 1 else { return nil }
        return Double(timegm(&parts))
    }

    /// The RFC 2253 rendering of a name (`CN=redis,O=Example`).
    static func render(name: OpaquePointer?) -> String {
        guard let name, let bio = BIO_new(BIO_s_mem()) else { return "" }
        defer { BIO_free(bio) }
        guard X509_NAME_print_ex(bio, name, 0, rr_XN_FLAG_RFC2253()) >= 0 else { return "" }
        return drainBIO(bio).map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    /// Whether the extended key usage allows TLS client authentication: no EKU at all, or one that lists
    /// clientAuth or anyExtendedKeyUsage.
    var allowsClientAuthentication: Bool {
        let usages = self.extendedKeyUsageNIDs()
        return usages == nil || usages!.contains(NID_client_auth) || usages!.contains(NID_anyExtendedKeyUsage)
    }

    /// The NIDs of the extended key usage extension; `nil` when the certificate has none.
    func extendedKeyUsageNIDs() -> [Int32]? {
        guard let raw = X509_get_ext_d2i(self.pointer, NID_ext_key_usage, nil, nil) else { return nil }
        let usages = OpaquePointer(raw)
        defer { rr_EXTENDED_KEY_USAGE_free(usages) }
        return (0..<rr_sk_ASN1_OBJECT_num(usages)).map { OBJ_obj2nid(rr_sk_ASN1_OBJECT_value(usages, $0)) }
    }
}

/// Every byte a memory BIO holds.
func drainBIO(_ bio: OpaquePointer) -> [UInt8]? {
    let pending = BIO_ctrl_pending(bio)
    guard pending > 0 else { return [] }
    var bytes = [UInt8](repeating: 0, count: Int(pending))
    let read = bytes.withUnsafeMutableBytes { BIO_read(bio, $0.baseAddress, Int32($0.count)) }
    guard read >= 0 else { return nil }
    return Array(bytes.prefix(Int(read)))
}

func countOccurrences(of needle: [UInt8], in haystack: UnsafeRawBufferPointer) -> Int {
    guard !needle.isEmpty, haystack.count >= needle.count else { return 0 }
    var count = 0
    var index = 0
    let first = needle[0]
    while index <= haystack.count - needle.count {
        if haystack[index] == first && haystack[index..<index + needle.count].elementsEqual(needle) {
            count += 1
            index += needle.count
        } else {
            index += 1
        }
    }
    return count
}

/// The servers' certificates as values, by their DER encoding: building a ``RedisCertificate`` (names,
/// dates, fingerprint, usages) costs some 230 K instructions, more than the rest of a connect; a
/// context's connections meet the same few certificates again and again (every resumed session
/// presents the original one). A pure function of the DER bytes, so a cached value is the same value.
final class PeerCertificateCache: Sendable {
    /// Enough for the nodes of a large cluster; emptied when full (a rotation brings new ones).
    static let capacity = 256

    private let certificates = Mutex<[DER: RedisCertificate]>([:])

    /// DER bytes as a key, hashed as one block (an array of bytes hashes byte by byte).
    private struct DER: Hashable, Sendable {
        let bytes: [UInt8]
        func hash(into hasher: inout Hasher) { self.bytes.withUnsafeBytes { hasher.combine(bytes: $0) } }
    }

    /// The value of `pointer` (an `X509` the caller holds a reference to).
    func certificate(of pointer: OpaquePointer) -> RedisCertificate {
        let length = i2d_X509(pointer, nil)
        guard length > 0 else { return X509Certificate(retaining: pointer).info }
        var der = [UInt8](repeating: 0, count: Int(length))
        let written = der.withUnsafeMutableBufferPointer { buffer -> Int32 in
            var cursor = buffer.baseAddress
            return i2d_X509(pointer, &cursor)
        }
        guard written == length else { return X509Certificate(retaining: pointer).info }
        let key = DER(bytes: der)
        if let known = self.certificates.withLock({ $0[key] }) { return known }
        let certificate = X509Certificate(retaining: pointer).info
        self.certificates.withLock { certificates in
            if certificates.count >= Self.capacity { certificates.removeAll(keepingCapacity: true) }
            certificates[key] = certificate
        }
        return certificate
    }
}
