#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
private import COpenSSL
private import COpenSSLShims

/// What a certificate says about itself: for users, the `inspect` command and error messages.
public struct RedisCertificate: Sendable, Hashable, CustomStringConvertible {
    /// The subject, RFC 2253 (`CN=redis.example.com,O=Example`).
    public var subject: String
    /// The issuer, RFC 2253.
    public var issuer: String
    /// DNS names of the subject alternative name extension.
    public var dnsNames: [String]
    /// IP addresses of the subject alternative name extension, as text.
    public var ipAddresses: [String]
    /// Start of validity.
    public var notBefore: Date
    /// End of validity.
    public var notAfter: Date
    /// SHA-256 of the DER encoding, upper-case hex pairs joined by colons (as `openssl x509 -fingerprint`).
    public var sha256Fingerprint: String
    /// The extended key usages by name (`TLS Web Client Authentication`, ...); `nil` without the extension.
    public var extendedKeyUsages: [String]?
    /// Whether this is a CA certificate (basic constraints CA:TRUE).
    public var isCertificateAuthority: Bool

    /// Whether the certificate may authenticate a TLS client: it has no extended key usage, or one that
    /// includes TLS Web Client Authentication (or any extended key usage).
    public var allowsClientAuthentication: Bool

    init(_ certificate: X509Certificate) {
        let pointer = certificate.pointer
        self.subject = X509Certificate.render(name: X509_get_subject_name(pointer))
        self.issuer = X509Certificate.render(name: X509_get_issuer_name(pointer))
        self.notBefore = Date(timeIntervalSince1970: certificate.notBefore() ?? 0)
        self.notAfter = Date(timeIntervalSince1970: certificate.notAfter() ?? 0)
        self.isCertificateAuthority = X509_check_ca(pointer) > 0
        self.allowsClientAuthentication = certificate.allowsClientAuthentication
        self.extendedKeyUsages = certificate.extendedKeyUsageNIDs()?.map { nid in
            OBJ_nid2ln(nid).map { String(cString: $0) } ?? "nid \(nid)"
        }

        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        _ = digest.withUnsafeMutableBufferPointer { X509_digest(pointer, EVP_sha256(), $0.baseAddress, &length) }
        self.sha256Fingerprint = digest.prefix(Int(length)).map { hex($0) }.joined(separator: ":")

        var dnsNames: [String] = []
        var ipAddresses: [String] = []
        if let raw = X509_get_ext_d2i(pointer, NID_subject_alt_name, nil, nil) {
            let names = OpaquePointer(raw)
            defer { rr_GENERAL_NAMES_free(names) }
            for index in 0..<rr_sk_GENERAL_NAME_num(names) {
                var type: Int32 = 0
                guard let value = GENERAL_NAME_get0_value(rr_sk_GENERAL_NAME_value(names, index), &type) else { continue }
                let string = value.assumingMemoryBound(to: ASN1_STRING.self)
                let count = Int(ASN1_STRING_length(string))
                guard let data = ASN1_STRING_get0_data(string) else { continue }
                let bytes = Array(UnsafeBufferPointer(start: data, count: count))
                switch type {
                case GEN_DNS: dnsNames.append(String(decoding: bytes, as: UTF8.self))
                case GEN_IPADD: ipAddresses.append(formatIPAddress(bytes))
                default: break
                }
            }
        }
        self.dnsNames = dnsNames
        self.ipAddresses = ipAddresses
    }

    /// Every certificate in a PEM file or buffer, in order.
    ///
    /// - Throws: ``RedisError/Code/tlsMalformedPEM`` naming the source when it is missing, empty,
    ///   truncated or not PEM.
    public static func load(_ source: RedisPEMSource) throws(RedisError) -> [RedisCertificate] {
        try X509Certificate.parseAll(pem: source.read(), source: source.name).map(\.info)
    }

    /// Seconds from `now` until `notAfter`; negative once expired.
    public func timeUntilExpiry(from now: Date = Date()) -> Double {
        self.notAfter.timeIntervalSince(now)
    }

    /// Subject, validity and fingerprint, on one line.
    public var description: String {
        "\(self.subject) (issuer \(self.issuer); valid \(self.notBefore) to \(self.notAfter); SHA-256 \(self.sha256Fingerprint))"
    }
}

private func hex(_ byte: UInt8) -> String {
    let digits = Array("0123456789ABCDEF")
    return String([digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]])
}

/// Dotted quad for 4 bytes, RFC 5952-style (no compression) groups for 16.
private func formatIPAddress(_ bytes: [UInt8]) -> String {
    if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") }
    guard bytes.count == 16 else { return bytes.map { hex($0) }.joined() }
    return stride(from: 0, to: 16, by: 2).map { String((UInt16(bytes[$0]) << 8) | UInt16(bytes[$0 + 1]), radix: 16) }
        .joined(separator: ":")
}
