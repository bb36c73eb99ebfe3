internal import COpenSSL

/// Maps what OpenSSL reports about a failed handshake (or a failed first read, where TLS 1.3 delivers a
/// server's rejection of our certificate) to a ``RedisError`` whose code says what went wrong and whose
/// message says what to do. Pure: it reads only the values it is given.
struct TLSFailureClassifier {
    var verifyResult: Int32
    var verifiesPeer: Bool
    /// The server's chain, leaf first.
    var peerChain: [RedisCertificate]
    var serverName: String
    var hasClientCertificate: Bool
    var handshakeCompleted: Bool
    var entries: [OpenSSLErrorEntry]

    func error() -> RedisError {
        if self.verifiesPeer && self.verifyResult != X509_V_OK {
            return self.verificationError()
        }
        let reasons = Set(self.entries.filter { $0.library == ERR_LIB_SSL }.map(\.reason))
        let detail = OpenSSLErrors.summary(self.entries)

        if reasons.contains(SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED)
            || (!self.hasClientCertificate && !reasons.isDisjoint(with: Self.clientCertificateAlerts))
        {
            return RedisError(
                code: .tlsClientCertificateRequired,
                message: "the server requires a client certificate (mutual TLS, tls-auth-clients) and none is configured: set a client identity"
            )
        }
        if let alert = reasons.intersection(Self.clientCertificateAlerts).first, self.hasClientCertificate {
            return RedisError(
                code: .tlsClientCertificateRejected,
                message: "the server rejected our client certificate (\(Self.alertName(alert))): check that it is valid and issued by a CA in the server's tls-ca-cert-file"
            )
        }
        if !self.handshakeCompleted && !reasons.isDisjoint(with: Self.notTLSReasons) {
            return RedisError(
                code: .tlsNotATLSEndpoint,
                message: "\(self.serverName) did not answer with TLS (\(detail)): is this the server's plain-text port rather than its tls-port?"
            )
        }
        if reasons.contains(SSL_R_UNEXPECTED_EOF_WHILE_READING) {
            return self.handshakeCompleted
                ? RedisError(code: .connectionClosed, message: "the server closed the TLS connection without close_notify")
                : RedisError(code: .tlsHandshakeFailed, message: "the server closed the connection during the TLS handshake")
        }
        if self.handshakeCompleted {
            // Records that do not decrypt or parse: the stream is corrupt.
            return RedisError(code: .protocolError, message: "TLS error on the connection to \(self.serverName): \(detail)")
        }
        return RedisError(code: .tlsHandshakeFailed, message: "TLS handshake with \(self.serverName) failed: \(detail)")
    }

    private func verificationError() -> RedisError {
        let leaf = self.peerChain.first
        let subject = leaf?.subject ?? "(no certificate)"
        let reason = String(cString: X509_verify_cert_error_string(Int(self.verifyResult)))
        switch self.verifyResult {
        case X509_V_ERR_CERT_HAS_EXPIRED:
            let notAfter = leaf.map { "\($0.notAfter)" } ?? "an unknown date"
            return RedisError(
                code: .tlsServerCertificateExpired,
                message: "the server certificate \(subject) expired at \(notAfter): the server needs a renewed certificate (CONFIG SET tls-cert-file / tls-key-file)"
            )
        case X509_V_ERR_CERT_NOT_YET_VALID:
            let notBefore = leaf.map { "\($0.notBefore)" } ?? "an unknown date"
            return RedisError(
                code: .tlsServerCertificateNotYetValid,
                message: "the server certificate \(subject) is valid only from \(notBefore): check the clocks of client and server"
            )
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN,
            X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
            X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
            let issuer = self.peerChain.last?.issuer ?? "an unknown issuer"
            return RedisError(
                code: .tlsUntrustedServerCertificate,
                message: "the server certificate \(subject) was issued by \(issuer), which is not among the trust anchors (\(reason)): add that CA, as a pending trust anchor during a CA rollover"
            )
        case X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH:
            let names = (leaf?.dnsNames ?? []) + (leaf?.ipAddresses ?? [])
            return RedisError(
                code: .tlsHostnameMismatch,
                message: "the server certificate \(subject) is for \(names.isEmpty ? "no DNS name or IP address" : names.joined(separator: ", ")), not \(self.serverName): connect by a name it carries, or set the TLS server name"
            )
        default:
            return RedisError(
                code: .tlsHandshakeFailed,
                message: "the server certificate \(subject) failed verification: \(reason) (X509 error \(self.verifyResult))"
            )
        }
    }

    /// Alerts a server sends about the client's certificate.
    static let clientCertificateAlerts: Set<Int32> = [
        SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED, SSL_R_TLSV1_ALERT_UNKNOWN_CA, SSL_R_SSLV3_ALERT_BAD_CERTIFICATE,
        SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED, SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN,
        SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE, SSL_R_TLSV1_ALERT_ACCESS_DENIED,
        SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE,
    ]

    /// What OpenSSL reports when the peer's bytes are not TLS records.
    static let notTLSReasons: Set<Int32> = [
        SSL_R_WRONG_VERSION_NUMBER, SSL_R_PACKET_LENGTH_TOO_LONG, SSL_R_HTTP_REQUEST, SSL_R_HTTPS_PROXY_REQUEST,
        SSL_R_UNKNOWN_PROTOCOL,
    ]

    static func alertName(_ reason: Int32) -> String {
        switch reason {
        case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED: return "certificate expired"
        case SSL_R_TLSV1_ALERT_UNKNOWN_CA: return "unknown CA"
        case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE: return "bad certificate"
        case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED: return "certificate revoked"
        case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN: return "certificate unknown"
        case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE: return "unsupported certificate"
        case SSL_R_TLSV1_ALERT_ACCESS_DENIED: return "access denied"
        case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE: return "handshake failure"
        default: return "alert \(reason)"
        }
    }
}
