import Foundation
import RedisRotation
import RedisRotationTesting

/// A CA, a server certificate for localhost/127.0.0.1 and an administrator client certificate: what a
/// TLS test needs to start a server and talk to it.
struct TLSFixture {
    let ca: TestCertificateAuthority
    let serverCertificate: TestCertificate
    let adminClient: TestCertificate
    let password = makePassword()

    init() throws {
        self.ca = try TestCertificateAuthority(name: "Test Root CA \(UUID().uuidString.prefix(6))")
        self.serverCertificate = try self.ca.issueServer()
        self.adminClient = try self.ca.issueClient(commonName: "rr-admin")
    }

    /// A server with `alice` (password ``password``) serving TLS with `serverCertificate` (default: the
    /// fixture's); client certificates from `clientCAs` (default: the fixture's CA).
    func serverConfiguration(
        serverCertificate: TestCertificate? = nil,
        clientCAs: [TestCertificate]? = nil,
        clientAuthentication: RedisServerProcess.TLS.ClientAuthentication = .none,
        protocols: String? = nil,
        keepPlainTextPort: Bool = false
    ) -> RedisServerProcess.Configuration {
        RedisServerProcess.Configuration(
            users: [.init(name: "alice", passwords: [self.password])],
            tls: RedisServerProcess.TLS(
                certificate: serverCertificate ?? self.serverCertificate,
                clientCertificateAuthorities: clientCAs ?? [self.ca.certificate],
                clientAuthentication: clientAuthentication,
                adminTLS: RedisTLSConfiguration(
                    trustAnchors: [self.ca.certificate.certificateSource],
                    clientIdentity: self.adminClient.identity
                ),
                keepPlainTextPort: keepPlainTextPort,
                protocols: protocols
            )
        )
    }

    /// A context trusting the fixture's CA (or `anchors`), with `identity` for mutual TLS.
    func context(
        anchors: [RedisPEMSource]? = nil,
        pending: [RedisPEMSource] = [],
        identity: RedisTLSClientIdentity? = nil,
        maximumVersion: RedisTLSVersion? = nil
    ) throws -> RedisTLSContext {
        try RedisTLSContext(
            configuration: RedisTLSConfiguration(
                trustAnchors: anchors ?? [self.ca.certificate.certificateSource],
                pendingTrustAnchors: pending,
                clientIdentity: identity,
                maximumVersion: maximumVersion
            )
        )
    }

    /// A configuration for `alice` on `server` over TLS with `context`.
    func aliceConfiguration(
        _ server: RedisServerProcess,
        context: RedisTLSContext,
        host: String = "127.0.0.1",
        serverName: String? = nil
    ) -> RedisConnectionConfiguration {
        var configuration = server.connectionConfiguration(
            username: "alice",
            password: self.password,
            tls: .init(context: context, serverName: serverName)
        )
        configuration.host = host
        configuration.handshakeTimeout = .seconds(5)
        return configuration
    }
}
