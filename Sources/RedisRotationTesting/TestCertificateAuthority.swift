#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
public import Foundation
private import COpenSSL
private import COpenSSLShims
public import RedisRotation

/// A real X.509 certificate authority for tests, built in process with OpenSSL: P-256 keys, SHA-256
/// signatures, the extensions a real CA sets. It issues server certificates (for `localhost` and
/// `127.0.0.1` by default), client certificates with or without the client-auth extended key usage, and
/// certificates valid in the past or the future.
public final class TestCertificateAuthority: Sendable {
    /// The CA's own certificate and key.
    public let certificate: TestCertificate
    /// The CA's common name.
    public let name: String

    /// A new self-signed root CA, valid from an hour ago for `validDays` days.
    public init(name: String = "RedisRotation Test CA", validDays: Int = 365) throws {
        let now = Date()
        self.name = name
        self.certificate = try Issuer.issue(
            commonName: name,
            usage: .certificateAuthority,
            dnsNames: [],
            ipAddresses: [],
            notBefore: now.addingTimeInterval(-3600),
            notAfter: now.addingTimeInterval(Double(validDays) * 86400),
            issuer: nil
        )
    }

    /// What a certificate may be used for.
    public struct Usage: Sendable, Hashable {
        enum Base: Sendable, Hashable {
            case certificateAuthority, server, client, clientWithoutClientAuth, clientWithoutExtendedKeyUsage, serverAndClient
        }

        let base: Base

        /// A TLS server (extended key usage serverAuth).
        public static let server = Usage(base: .server)
        /// A TLS client (extended key usage clientAuth).
        public static let client = Usage(base: .client)
        /// A client certificate whose extended key usage lacks clientAuth (it has serverAuth only).
        public static let clientWithoutClientAuth = Usage(base: .clientWithoutClientAuth)
        /// A client certificate with no extended key usage extension at all (acceptable for clients).
        public static let clientWithoutExtendedKeyUsage = Usage(base: .clientWithoutExtendedKeyUsage)
        /// Both (serverAuth and clientAuth): a cluster node, which connects to the others with the
        /// certificate it serves with.
        public static let serverAndClient = Usage(base: .serverAndClient)
        static let certificateAuthority = Usage(base: .certificateAuthority)
    }

    /// Issues a certificate signed by this CA.
    ///
    /// - Parameters:
    ///   - commonName: The subject's common name.
    ///   - usage: What the certificate is for (server, client, both, or a deliberately odd usage).
    ///   - dnsNames: Subject alternative DNS names.
    ///   - ipAddresses: Subject alternative IP addresses.
    ///   - notBefore: Default: an hour ago.
    ///   - notAfter: Default: 30 days from now. A past date makes an expired certificate.
    public func issue(
        commonName: String,
        usage: Usage,
        dnsNames: [String] = ["localhost"],
        ipAddresses: [String] = ["127.0.0.1"],
        notBefore: Date? = nil,
        notAfter: Date? = nil
    ) throws -> TestCertificate {
        let now = Date()
        return try Issuer.issue(
            commonName: commonName,
            usage: usage,
            dnsNames: dnsNames,
            ipAddresses: ipAddresses,
            notBefore: notBefore ?? now.addingTimeInterval(-3600),
            notAfter: notAfter ?? now.addingTimeInterval(30 * 86400),
            issuer: self.certificate
        )
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    public func issueServer(
        commonName: String = "redis-server",
        dnsNames: [String] = ["localhost"],
        ipAddresses: [String] = ["127.0.0.1"],
        notBefore: Date? = nil,
        notAfter: Date? = nil
    ) throws -> TestCertificate {
        try self.issue(
            commonName: commonName,
            usage: .server,
            dnsNames: dnsNames,
            ipAddresses: ipAddresses,
            notBefore: notBefore,
            notAfter: notAfter
        )
    }

    /// A client certificate with the client-auth extended key usage.
    public func issueClient(
        commonName: String = "redis-client",
        usage: Usage = .client,
        notBefore: Date? = nil,
        notAfter: Date? = nil
    ) throws -> TestCertificate {
        try self.issue(
            commonName: commonName,
            usage: usage,
            dnsNames: [],
            ipAddresses: [],
            notBefore: notBefore,
            notAfter: notAfter
        )
    }
}

/// A certificate and its private key, as PEM.
public struct TestCertificate: Sendable {
    /// The certificate, PEM.
    public let certificatePEM: String
    /// The unencrypted PKCS#8 private key, PEM.
    public let privateKeyPEM: String

    /// A certificate and key from PEM text.
    public init(certificatePEM: String, privateKeyPEM: String) {
        self.certificatePEM = certificatePEM
        self.privateKeyPEM = privateKeyPEM
    }

    /// The same key with `authority`'s certificate appended to the certificate: a chain file such as
    /// redis-server setups often use, which makes the server send its root.
    public func chained(with authority: TestCertificateAuthority) -> TestCertificate {
        TestCertificate(
            certificatePEM: self.certificatePEM + authority.certificate.certificatePEM,
            privateKeyPEM: self.privateKeyPEM
        )
    }

    /// Certificate then key, in one PEM (the atomic format for rotation).
    public var combinedPEM: String { self.certificatePEM + self.privateKeyPEM }

    /// The certificate as a trust anchor or chain source.
    public var certificateSource: RedisPEMSource { .pem(self.certificatePEM, name: "test certificate") }

    /// This certificate and key as a client identity, from memory.
    public var identity: RedisTLSClientIdentity {
        RedisTLSClientIdentity(
            certificateChain: .pem(self.certificatePEM, name: "test client certificate"),
            privateKey: .pem(self.privateKeyPEM, name: "test client key")
        )
    }

    /// Writes `<name>.crt` and `<name>.key` (mode 0600) into `directory`; returns their paths.
    @discardableResult
    public func write(to directory: URL, name: String) throws -> (certificate: String, privateKey: String) {
        let certificatePath = directory.appendingPathComponent("\(name).crt").path
        let keyPath = directory.appendingPathComponent("\(name).key").path
        try self.certificatePEM.write(toFile: certificatePath, atomically: true, encoding: .utf8)
        try self.privateKeyPEM.write(toFile: keyPath, atomically: true, encoding: .utf8)
        chmod(keyPath, 0o600)
        return (certificatePath, keyPath)
    }
}

struct TestCertificateError: Error, CustomStringConvertible {
    let description: String
}

/// The OpenSSL calls that build and sign one certificate.
private enum Issuer {
    static func issue(
        commonName: String,
        usage: TestCertificateAuthority.Usage,
        dnsNames: [String],
        ipAddresses: [String],
        notBefore: Date,
        notAfter: Date,
        issuer: TestCertificate?
    ) throws -> TestCertificate {
        guard let key = rr_EVP_EC_gen("P-256") else { throw failure("generating a P-256 key") }
        defer { EVP_PKEY_free(key) }
        guard let certificate = X509_new() else { throw failure("allocating a certificate") }
        defer { X509_free(certificate) }

        X509_set_version(certificate, 2)
        let serial = UInt64.random(in: 1...UInt64(Int64.max))
        ASN1_INTEGER_set_uint64(X509_get_serialNumber(certificate), serial)
        ASN1_TIME_set(X509_getm_notBefore(certificate), time_t(notBefore.timeIntervalSince1970))
        ASN1_TIME_set(X509_getm_notAfter(certificate), time_t(notAfter.timeIntervalSince1970))

        guard let subject = X509_NAME_new() else { throw failure("allocating a name") }
        defer { X509_NAME_free(subject) }
        X509_NAME_add_entry_by_txt(subject, "O", MBSTRING_ASC, "RedisRotation tests", -1, -1, 0)
        X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, commonName, -1, -1, 0)
        X509_set_subject_name(certificate, subject)
        X509_set_pubkey(certificate, key)

        // The issuer: the CA's certificate and key, or this certificate itself for a root.
        var issuerCertificate: OpaquePointer? = nil
        var issuerKey: OpaquePointer? = nil
        defer {
            if let issuerCertificate { X509_free(issuerCertificate) }
            if let issuerKey { EVP_PKEY_free(issuerKey) }
        }
        if let issuer {
            issuerCertificate = try parseCertificate(issuer.certificatePEM)
            issuerKey = try parseKey(issuer.privateKeyPEM)
            X509_set_issuer_name(certificate, X509_get_subject_name(issuerCertificate))
        } else {
            X509_set_issuer_name(certificate, subject)
        }

        var context = X509V3_CTX()
        rr_X509V3_set_ctx_nodb(&context)
        X509V3_set_ctx(&context, issuerCertificate ?? certificate, certificate, nil, nil, 0)
        var extensions: [(Int32, String)] = []
        switch usage.base {
        case .certificateAuthority:
            extensions = [
                (NID_basic_constraints, "critical,CA:TRUE"),
                (NID_key_usage, "critical,keyCertSign,cRLSign"),
                (NID_subject_key_identifier, "hash"),
            ]
        case .server, .client, .clientWithoutClientAuth, .clientWithoutExtendedKeyUsage, .serverAndClient:
            extensions = [
                (NID_basic_constraints, "critical,CA:FALSE"),
                (NID_key_usage, "critical,digitalSignature"),
                (NID_subject_key_identifier, "hash"),
                (NID_authority_key_identifier, "keyid:always"),
            ]
            switch usage.base {
            case .server, .clientWithoutClientAuth: extensions.append((NID_ext_key_usage, "serverAuth"))
            case .client: extensions.append((NID_ext_key_usage, "clientAuth"))
            case .serverAndClient: extensions.append((NID_ext_key_usage, "serverAuth,clientAuth"))
            default: break
            }
            let names = dnsNames.map { "DNS:\($0)" } + ipAddresses.map { "IP:\($0)" }
            if !names.isEmpty { extensions.append((NID_subject_alt_name, names.joined(separator: ","))) }
        }
        for (nid, value) in extensions {
            guard let ext = X509V3_EXT_conf_nid(nil, &context, nid, value) else {
                throw failure("building extension \(value)")
            }
            defer { X509_EXTENSION_free(ext) }
            X509_add_ext(certificate, ext, -1)
        }

        guard X509_sign(certificate, issuerKey ?? key, EVP_sha256()) > 0 else { throw failure("signing") }
        return TestCertificate(certificatePEM: try pem { PEM_write_bio_X509($0, certificate) }, privateKeyPEM: try pem {
            PEM_write_bio_PrivateKey($0, key, nil, nil, 0, nil, nil)
        })
    }

    static func pem(_ write: (OpaquePointer) -> Int32) throws -> String {
        guard let bio = BIO_new(BIO_s_mem()) else { throw failure("allocating a BIO") }
        defer { BIO_free(bio) }
        guard write(bio) == 1 else { throw failure("writing PEM") }
        var bytes = [UInt8](repeating: 0, count: Int(BIO_ctrl_pending(bio)))
        let read = bytes.withUnsafeMutableBytes { BIO_read(bio, $0.baseAddress, Int32($0.count)) }
        return String(decoding: bytes.prefix(Int(max(0, read))), as: UTF8.self)
    }

    static func parseCertificate(_ pem: String) throws -> OpaquePointer {
        let bytes = Array(pem.utf8)
        let certificate = bytes.withUnsafeBytes { raw -> OpaquePointer? in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_X509(bio, nil, nil, nil)
        }
        guard let certificate else { throw failure("parsing the issuer certificate") }
        return certificate
    }

    static func parseKey(_ pem: String) throws -> OpaquePointer {
        let bytes = Array(pem.utf8)
        let key = bytes.withUnsafeBytes { raw -> OpaquePointer? in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
        }
        guard let key else { throw failure("parsing the issuer key") }
        return key
    }

    static func failure(_ step: String) -> TestCertificateError {
        var text = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(ERR_get_error(), &text, text.count)
        ERR_clear_error()
        let message = text.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return TestCertificateError(description: "test CA failed \(step): \(message)")
    }
}
