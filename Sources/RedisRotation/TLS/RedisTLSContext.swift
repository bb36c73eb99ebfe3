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
internal import COpenSSL
private import COpenSSLShims
import Synchronization

/// An immutable OpenSSL client context (`SSL_CTX`) built once from a ``RedisTLSConfiguration`` and
/// shared by every connection made with it.
///
/// Building it validates the material and fails with an error naming the file and the reason: every PEM
/// must parse completely, the key must match the certificate, and the client certificate must be valid
/// now and, when it has an extended key usage, allow TLS Web Client Authentication.
///
/// TLS sessions are cached per context and never offered to another one: a resumed session skips
/// certificate verification, so a session from an older context could bypass a newer trust set.
public final class RedisTLSContext: Sendable {
    /// A number unique to this context in the process; a new context is a new generation.
    public let generation: UInt64
    /// What the context was built from.
    public let configuration: RedisTLSConfiguration
    /// Every trust anchor (current and pending, without duplicates); empty when the system store is used.
    public let trustAnchors: [RedisCertificate]
    /// The client certificate chain, leaf first; empty without a client identity.
    public let clientCertificateChain: [RedisCertificate]

    let handle: SSLContextHandle
    let sessions: TLSSessionCache
    /// The servers' certificates met by this context's connections, as values.
    let peerCertificates = PeerCertificateCache()

    private static let nextGeneration = Atomic<UInt64>(0)

    /// Builds and validates a context.
    ///
    /// - Parameters:
    ///   - configuration: The trust anchors, client identity and protocol settings.
    ///   - now: The time the client certificate must be valid at (tests pass a fixed one).
    /// - Throws: ``RedisError`` with `tlsMalformedPEM`, `tlsKeyMismatch`, `tlsClientCertificateExpired`,
    ///   `tlsClientCertificateNotYetValid`, `tlsClientCertificateMissingClientAuth` or `tlsInvalidConfiguration`.
    public convenience init(configuration: RedisTLSConfiguration, now: Date = Date()) throws(RedisError) {
        try self.init(building: configuration, recording: configuration, now: now)
    }

    /// Builds from `material` and keeps `configuration` as what the context was built from: the
    /// material watcher builds from the bytes it read, and keeps the file-based configuration, so that
    /// no context holds a private key for its lifetime. The two differ only in where PEM comes from.
    init(building material: RedisTLSConfiguration, recording configuration: RedisTLSConfiguration, now: Date = Date()) throws(RedisError) {
        precondition(
            material.verification == configuration.verification && material.minimumVersion == configuration.minimumVersion
                && material.maximumVersion == configuration.maximumVersion && material.sessionResumption == configuration.sessionResumption,
            "a context records the configuration it was built with, apart from where its PEM came from"
        )
        guard let context = SSL_CTX_new(TLS_client_method()) else {
            throw RedisError(code: .tlsInvalidConfiguration, message: "OpenSSL could not create a TLS context: \(OpenSSLErrors.summary(OpenSSLErrors.drain()))")
        }
        let handle = SSLContextHandle(taking: context)
        guard rr_SSL_CTX_set_min_proto_version(context, material.minimumVersion.rawValue) == 1,
            rr_SSL_CTX_set_max_proto_version(context, material.maximumVersion?.rawValue ?? 0) == 1
        else {
            throw RedisError(code: .tlsInvalidConfiguration, message: "OpenSSL refused the protocol version range")
        }
        SSL_CTX_set_options(context, rr_SSL_OP_NO_RENEGOTIATION() | rr_SSL_OP_NO_COMPRESSION())
        SSL_CTX_set_verify(context, material.verification.verifiesPeer ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nil)

        // Trust anchors: the union of current and pending, each certificate once.
        var anchors: [X509Certificate] = []
        var fingerprints = Set<String>()
        for source in material.trustAnchors + material.pendingTrustAnchors {
            for certificate in try X509Certificate.parseAll(pem: source.read(), source: source.name)
            where fingerprints.insert(certificate.info.sha256Fingerprint).inserted {
                anchors.append(certificate)
            }
        }
        if anchors.isEmpty {
            SSL_CTX_set_default_verify_paths(context)
        } else {
            let store = SSL_CTX_get_cert_store(context)
            for anchor in anchors where X509_STORE_add_cert(store, anchor.pointer) != 1 {
                throw RedisError(code: .tlsInvalidConfiguration, message: "OpenSSL refused trust anchor \(anchor.info.subject): \(OpenSSLErrors.summary(OpenSSLErrors.drain()))")
            }
        }

        var chain: [X509Certificate] = []
        if let identity = material.clientIdentity {
            chain = try Self.installIdentity(identity, in: context, now: now)
        }

        if material.sessionResumption {
            _ = rr_SSL_CTX_set_session_cache_mode(context, Int(SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE))
            SSL_CTX_sess_set_new_cb(context, tlsNewSessionCallback)
        }

        self.generation = Self.nextGeneration.add(1, ordering: .relaxed).newValue
        self.configuration = configuration
        self.trustAnchors = anchors.map(\.info)
        self.clientCertificateChain = chain.map(\.info)
        self.handle = handle
        self.sessions = TLSSessionCache()
    }

    /// Loads and validates the client identity, then installs it: certificate first, so that a key that
    /// does not match fails with a clear error.
    private static func installIdentity(
        _ identity: RedisTLSClientIdentity,
        in context: OpaquePointer,
        now: Date
    ) throws(RedisError) -> [X509Certificate] {
        let chainSource = identity.certificateChain
        let chain = try X509Certificate.parseAll(pem: chainSource.read(), source: chainSource.name)
        let leaf = chain[0]
        let key = try PrivateKey.parse(identity.privateKey)
        let info = leaf.info

        guard X509_check_private_key(leaf.pointer, key.pointer) == 1 else {
            _ = OpenSSLErrors.drain()
            throw RedisError(
                code: .tlsKeyMismatch,
                message: "the private key in \(identity.privateKey.name) does not belong to the certificate \(info.subject) in \(chainSource.name) (if both files are being replaced, the pair may be mid-update)"
            )
        }
        if now > info.notAfter {
            throw RedisError(
                code: .tlsClientCertificateExpired,
                message: "the client certificate \(info.subject) in \(chainSource.name) expired at \(info.notAfter)"
            )
        }
        if now < info.notBefore {
            throw RedisError(
                code: .tlsClientCertificateNotYetValid,
                message: "the client certificate \(info.subject) in \(chainSource.name) is valid only from \(info.notBefore) (check the clocks)"
            )
        }
        guard info.allowsClientAuthentication else {
            throw RedisError(
                code: .tlsClientCertificateMissingClientAuth,
                message: "the client certificate \(info.subject) in \(chainSource.name) lacks the TLS Web Client Authentication extended key usage (it has: \((info.extendedKeyUsages ?? []).joined(separator: ", ")))"
            )
        }

        if chain.count > 1 { try Self.verifyChain(chain, source: chainSource.name, now: now) }

        OpenSSLErrors.clear()
        guard SSL_CTX_use_certificate(context, leaf.pointer) == 1 else {
            throw RedisError(code: .tlsInvalidConfiguration, message: "OpenSSL refused the client certificate in \(chainSource.name): \(OpenSSLErrors.summary(OpenSSLErrors.drain()))")
        }
        for intermediate in chain.dropFirst() {
            // add0 takes ownership of one reference: give it its own.
            X509_up_ref(intermediate.pointer)
            guard rr_SSL_CTX_add0_chain_cert(context, intermediate.pointer) == 1 else {
                X509_free(intermediate.pointer)
                throw RedisError(code: .tlsInvalidConfiguration, message: "OpenSSL refused an intermediate certificate in \(chainSource.name): \(OpenSSLErrors.summary(OpenSSLErrors.drain()))")
            }
        }
        guard SSL_CTX_use_PrivateKey(context, key.pointer) == 1, SSL_CTX_check_private_key(context) == 1 else {
            throw RedisError(code: .tlsKeyMismatch, message: "OpenSSL refused the private key in \(identity.privateKey.name): \(OpenSSLErrors.summary(OpenSSLErrors.drain()))")
        }
        return chain
    }
}

extension RedisTLSContext {
    /// Checks that each certificate of a client chain is signed by the next one (the issuers the chain
    /// file carries are trusted for this check only), so that a chain file mixed from two renewals is
    /// refused before a server refuses it.
    fileprivate static func verifyChain(_ chain: [X509Certificate], source: String, now: Date) throws(RedisError) {
        guard let store = X509_STORE_new(), let storeContext = X509_STORE_CTX_new() else {
            throw RedisError(code: .tlsInvalidConfiguration, message: "OpenSSL could not allocate a certificate store")
        }
        defer {
            X509_STORE_CTX_free(storeContext)
            X509_STORE_free(store)
        }
        for issuer in chain.dropFirst() { X509_STORE_add_cert(store, issuer.pointer) }
        // The chain need not reach a root: its last certificate is trusted as given.
        X509_STORE_set_flags(store, UInt(X509_V_FLAG_PARTIAL_CHAIN))
        OpenSSLErrors.clear()
        guard X509_STORE_CTX_init(storeContext, store, chain[0].pointer, nil) == 1 else {
            throw RedisError(code: .tlsInvalidConfiguration, message: "OpenSSL could not set up chain verification: \(OpenSSLErrors.summary(OpenSSLErrors.drain()))")
        }
        X509_STORE_CTX_set_time(storeContext, 0, time_t(now.timeIntervalSince1970))
        if X509_verify_cert(storeContext) != 1 {
            let code = X509_STORE_CTX_get_error(storeContext)
            _ = OpenSSLErrors.drain()
            throw RedisError(
                code: .tlsClientCertificateChainInvalid,
                message: "the client certificate chain in \(source) does not verify: \(String(cString: X509_verify_cert_error_string(Int(code)))) (check that the chain file holds the issuer of the certificate, not one from another renewal)"
            )
        }
    }
}

/// Owns one `SSL_CTX`.
// Safe because the context is fully configured in RedisTLSContext.init before it is shared, and is only
// read afterwards; OpenSSL creates SSL objects from one SSL_CTX on several threads safely.
final class SSLContextHandle: @unchecked Sendable {
    let pointer: OpaquePointer

    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit {
        SSL_CTX_free(self.pointer)
    }
}

/// Owns one private key (`EVP_PKEY`).
final class PrivateKey {
    let pointer: OpaquePointer

    private init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit {
        EVP_PKEY_free(self.pointer)
    }

    /// Parses the first private key in `source`. Its PEM bytes are read in place (OpenSSL's memory BIO
    /// does not copy them) and wiped when released: right here for a file, with the source for PEM in
    /// memory.
    static func parse(_ source: RedisPEMSource) throws(RedisError) -> PrivateKey {
        let pem = try source.read()
        let hasKeyBlock = pem.withUnsafeBytes { countOccurrences(of: Array("PRIVATE KEY-----".utf8), in: $0) > 0 }
        guard hasKeyBlock else {
            throw RedisError(code: .tlsMalformedPEM, message: "no PEM private key in \(source.name)")
        }
        OpenSSLErrors.clear()
        let key: OpaquePointer? = pem.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            // A callback that supplies no passphrase: an encrypted key fails instead of prompting a terminal.
            return PEM_read_bio_PrivateKey(bio, nil, { _, _, _, _ in 0 }, nil)
        }
        guard let key else {
            throw RedisError(
                code: .tlsMalformedPEM,
                message: "malformed or encrypted private key in \(source.name): \(OpenSSLErrors.summary(OpenSSLErrors.drain()))"
            )
        }
        return PrivateKey(taking: key)
    }
}
