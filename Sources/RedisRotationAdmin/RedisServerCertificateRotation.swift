#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
public import RedisRotation

/// Switching a node's server certificate without breaking a handshake:
///
/// 1. ``check(certificateFile:keyFile:serverName:now:)`` refuses, before anything changes, a key that
///    does not match the certificate, a certificate that is expired or not yet valid, and one whose
///    names do not cover the name clients verify.
/// 2. ``apply(certificateFile:keyFile:certificate:on:verifyWith:report:)`` sets the pair with `CONFIG SET`, then opens a fresh TLS
///    connection and requires the server to present the new certificate; otherwise it restores the
///    previous pair. Then it persists with `CONFIG REWRITE` when the server has a configuration file.
///
/// The files are named as the server sees them; the checks read them too, so run the tool where the
/// same paths hold the same files.
public enum RedisServerCertificateRotation {
    /// Checks the pair; returns the certificate that will be presented.
    ///
    /// - Parameters:
    ///   - certificateFile: The new certificate chain (PEM), leaf first.
    ///   - keyFile: The new private key (PEM).
    ///   - serverName: The name (DNS name or IP address) clients verify.
    ///   - now: The time the certificate must be valid at.
    /// - Throws: ``RedisAdminError`` `certificateRefused`, saying which check failed.
    public static func check(certificateFile: String, keyFile: String, serverName: String, now: Date = Date()) throws -> RedisCertificate {
        let chain: [RedisCertificate]
        do {
            chain = try RedisCertificate.load(.file(certificateFile))
        } catch {
            throw RedisAdminError(code: .certificateRefused, message: "\(certificateFile) cannot be used: \(error.message); nothing was changed", underlying: error)
        }
        guard let leaf = chain.first else {
            throw RedisAdminError(code: .certificateRefused, message: "\(certificateFile) holds no certificate; nothing was changed")
        }
        // RedisTLSContext compares key and certificate before its client-only checks (validity, client
        // EKU), so only its key errors speak about the pair; the other checks are done here for a server.
        do {
            _ = try RedisTLSContext(configuration: RedisTLSConfiguration(clientIdentity: .init(certificateChain: .file(certificateFile), privateKey: .file(keyFile))))
        } catch let error where error.code == .tlsKeyMismatch {
            throw RedisAdminError(
                code: .certificateRefused,
                message: "the key in \(keyFile) does not match the certificate in \(certificateFile) (\(leaf.subject)); nothing was changed",
                underlying: error
            )
        } catch let error where error.code == .tlsMalformedPEM {
            throw RedisAdminError(code: .certificateRefused, message: "\(error.message); nothing was changed", underlying: error)
        } catch {
            // Expiry and extended key usage are judged below, as a server's.
        }
        if now < leaf.notBefore {
            throw RedisAdminError(code: .certificateRefused, message: "\(leaf.subject) in \(certificateFile) is not valid before \(leaf.notBefore); nothing was changed")
        }
        if now >= leaf.notAfter {
            throw RedisAdminError(code: .certificateRefused, message: "\(leaf.subject) in \(certificateFile) expired at \(leaf.notAfter); nothing was changed")
        }
        if let usages = leaf.extendedKeyUsages, !usages.contains("TLS Web Server Authentication"), !usages.contains("Any Extended Key Usage") {
            throw RedisAdminError(
                code: .certificateRefused,
                message: "\(leaf.subject) in \(certificateFile) lacks the TLS Web Server Authentication extended key usage (it has \(usages.joined(separator: ", "))); nothing was changed"
            )
        }
        guard Self.covers(leaf, serverName) else {
            let names = leaf.dnsNames + leaf.ipAddresses
            throw RedisAdminError(
                code: .certificateRefused,
                message: "\(leaf.subject) in \(certificateFile) does not cover \(serverName) (its names: \(names.isEmpty ? "none" : names.joined(separator: ", "))); clients would fail hostname verification; nothing was changed"
            )
        }
        return leaf
    }

    /// Whether the certificate's subject alternative names cover `name` (an IP address must be listed
    /// as one; a DNS name exactly or by a `*.` wildcard for its first label).
    public static func covers(_ certificate: RedisCertificate, _ name: String) -> Bool {
        let isIP = name.contains(":") || name.split(separator: ".").count == 4 && name.split(separator: ".").allSatisfy { UInt8($0) != nil }
        if isIP { return certificate.ipAddresses.contains(name) }
        let lowered = name.lowercased()
        return certificate.dnsNames.contains { pattern in
            let pattern = pattern.lowercased()
            if pattern == lowered { return true }
            guard pattern.hasPrefix("*."), let dot = lowered.firstIndex(of: ".") else { return false }
            return lowered[lowered.index(after: dot)...] == pattern.dropFirst(2) && lowered[..<dot].count > 0
        }
    }

    /// Sets the new pair on `node`, verifies with a fresh handshake (with `verifyWith`, a TLS
    /// configuration for the node's TLS port) that the node presents `certificate`, restores the
    /// previous pair when it does not, and persists with `CONFIG REWRITE` when possible.
    public static func apply(
        certificateFile: String,
        keyFile: String,
        certificate: RedisCertificate,
        on node: RedisServerAdmin,
        verifyWith tls: RedisConnectionConfiguration.TLS,
        report: @Sendable (RedisAdminStep) -> Void = { _ in }
    ) async throws {
        let oldCertificate = try await node.configValue("tls-cert-file")
        let oldKey = try await node.configValue("tls-key-file")
        let tlsPort = Int(try await node.configValue("tls-port")) ?? 0
        guard tlsPort > 0 else {
            throw RedisAdminError(code: .certificateRefused, message: "\(node.address) has no TLS port (tls-port is 0); nothing was changed")
        }
        try await node.setServerCertificate(certificateFile: certificateFile, keyFile: keyFile)
        report(RedisAdminStep(name: "set", node: node.address, message: "tls-cert-file \(certificateFile), tls-key-file \(keyFile)"))

        var configuration = node.configuration
        configuration.port = tlsPort
        configuration.tls = tls
        configuration.name = "redis-rotation-verify"
        var seen: String?
        var failure: String?
        do {
            let connection = try await RedisConnection.connect(configuration: configuration)
            seen = connection.tlsInfo?.peerCertificate?.sha256Fingerprint
            await connection.close()
        } catch {
            failure = RedisServerAdmin.reason(error)
        }
        if seen != certificate.sha256Fingerprint {
            let why = failure.map { "a fresh handshake failed: \($0)" } ?? "a fresh handshake saw another certificate"
            do {
                try await node.setServerCertificate(certificateFile: oldCertificate, keyFile: oldKey)
            } catch {
                throw RedisAdminError(
                    code: .verificationFailed,
                    message: "\(why), and restoring \(oldCertificate) failed too (\(error)); the server presents the new pair: check it now"
                )
            }
            report(RedisAdminStep(name: "rollback", node: node.address, message: "restored \(oldCertificate)"))
            throw RedisAdminError(code: .verificationFailed, message: "\(why); the previous certificate \(oldCertificate) was restored")
        }
        report(RedisAdminStep(name: "verify", node: node.address, message: "a fresh handshake on port \(tlsPort) presents \(certificate.subject) (SHA-256 \(certificate.sha256Fingerprint))"))
        if try await Self.hasConfigFile(node) {
            do {
                try await node.persist(.configRewrite)
            } catch let error as RedisAdminError {
                throw RedisAdminError(
                    code: .persistFailed,
                    message: "\(node.address) presents the new pair (\(certificate.subject), verified), but it is live and not saved: \(error.message). A restart brings back \(oldCertificate); fix that and run CONFIG REWRITE",
                    underlying: error
                )
            }
            report(RedisAdminStep(name: "persist", node: node.address, message: "saved with CONFIG REWRITE"))
        } else {
            report(RedisAdminStep(name: "persist", node: node.address, message: "the server has no configuration file: the change lasts until it restarts"))
        }
    }

    private static func hasConfigFile(_ node: RedisServerAdmin) async throws -> Bool {
        let info = try await node.send(RedisCommand("INFO", "server")).string ?? ""
        return info.split(whereSeparator: \.isNewline).contains { $0.hasPrefix("config_file:") && $0.count > "config_file:".count }
    }
}
