import Foundation
import NIOCore
import RedisRotation
import RedisRotationTesting
import Testing

@Suite("TLS against a real redis-server", .timeLimit(.minutes(3)))
struct TLSTests {
    @Test("commands over TLS, by host name and by IP, with 1 MiB values both ways")
    func commandsOverTLS() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration()) { server in
            let context = try fixture.context()
            for host in ["localhost", "127.0.0.1"] {
                let connection = try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: context, host: host))
                #expect(try await connection.ping() == "PONG")
                let info = try #require(connection.tlsInfo)
                #expect(info.protocolVersion == "TLSv1.3")
                #expect(info.peerCertificate?.subject.contains("CN=redis-server") == true)
                #expect(info.contextGeneration == context.generation)

                var generator = SystemRandomNumberGenerator()
                let large = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
                let key = uniqueKey("tls-large")
                try await connection.set(key, to: .bytes(large))
                #expect(try await connection.get(key).map { Array($0.readableBytesView) } == large)
                // Replies around the sizes of the plaintext buffers (one TLS record holds 16 KiB), many
                // in one pipeline, so that they arrive in every split across reads and records.
                let sizes = [0, 1, 200, 255, 257, 16_383, 16_384, 16_385, 40_000]
                let values = sizes.map { size in (0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) } }
                for (index, value) in values.enumerated() { try await connection.set("\(key):\(index)", to: .bytes(value)) }
                let gets = (0..<300).map { RedisCommand("GET", .key("\(key):\($0 % values.count)")) }
                let replies = try await connection.pipeline(gets)
                for (index, reply) in replies.enumerated() {
                    #expect(try reply.get().bytes.map { Array($0.readableBytesView) } == values[index % values.count], "reply \(index)")
                }
                await connection.close()
            }
        }
    }

    @Test("the server's certificate, met again by a context's connections (full and resumed handshakes), is the same value as one parsed afresh")
    func peerCertificateMetAgain() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration()) { server in
            // Parsed afresh, from the PEM the server uses: the trust anchors of a context made from it.
            let parsed = try RedisTLSContext(
                configuration: RedisTLSConfiguration(trustAnchors: [.pem(fixture.serverCertificate.certificatePEM, name: "server certificate")])
            ).trustAnchors
            let expected = try #require(parsed.first)
            let context = try fixture.context()
            var reused = 0
            for _ in 0..<4 {
                let connection = try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: context))
                let info = try #require(connection.tlsInfo)
                #expect(info.peerCertificate == expected, "\(String(describing: info.peerCertificate)) vs \(expected)")
                if info.sessionReused { reused += 1 }
                await connection.close()
            }
            #expect(reused > 0, "later connections resume the first one's session")
        }
    }

    @Test("mutual TLS with the identity from two files, from one combined file, and over TLS 1.2")
    func mutualTLS() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(clientAuthentication: .required)) { server in
            let client = try fixture.ca.issueClient(commonName: "orders-api")
            let directory = server.directory
            let files = try client.write(to: directory, name: "client")
            let combined = directory.appendingPathComponent("client-combined.pem").path
            try client.combinedPEM.write(toFile: combined, atomically: true, encoding: .utf8)

            let identities: [(RedisTLSClientIdentity, RedisTLSVersion?)] = [
                (RedisTLSClientIdentity(certificateChain: .file(files.certificate), privateKey: .file(files.privateKey)), nil),
                (.combined(.file(combined)), nil),
                (client.identity, .tls12),
            ]
            for (identity, maximumVersion) in identities {
                let context = try fixture.context(identity: identity, maximumVersion: maximumVersion)
                #expect(context.clientCertificateChain.first?.subject.contains("CN=orders-api") == true)
                let connection = try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: context))
                #expect(try await connection.ping() == "PONG")
                #expect(connection.tlsInfo?.protocolVersion == (maximumVersion == .tls12 ? "TLSv1.2" : "TLSv1.3"))
                await connection.close()
            }
        }
    }

    @Test("a trust set with two CAs accepts servers from either")
    func twoCAs() async throws {
        let first = try TLSFixture()
        let second = try TLSFixture()
        let bothAsCurrent = try first.context(anchors: [first.ca.certificate.certificateSource, second.ca.certificate.certificateSource])
        let currentAndPending = try first.context(pending: [second.ca.certificate.certificateSource])
        let bundle = try first.context(
            anchors: [.pem(first.ca.certificate.certificatePEM + second.ca.certificate.certificatePEM, name: "bundle.pem")]
        )
        // The same CA listed twice counts once.
        let duplicated = try first.context(
            anchors: [first.ca.certificate.certificateSource, first.ca.certificate.certificateSource],
            pending: [second.ca.certificate.certificateSource]
        )
        for context in [bothAsCurrent, currentAndPending, bundle, duplicated] {
            #expect(context.trustAnchors.count == 2)
        }
        for fixture in [first, second] {
            try await RedisServerProcess.withServer(fixture.serverConfiguration()) { server in
                for context in [bothAsCurrent, currentAndPending, bundle] {
                    var configuration = fixture.aliceConfiguration(server, context: context)
                    configuration.password = fixture.password
                    let connection = try await RedisConnection.connect(configuration: configuration)
                    #expect(try await connection.ping() == "PONG")
                    await connection.close()
                }
            }
        }
    }

    @Test("a certificate for another name is refused; one with the IP address is accepted by IP")
    func hostnameVerification() async throws {
        let fixture = try TLSFixture()
        let dnsOnly = try fixture.ca.issueServer(commonName: "dns-only", dnsNames: ["localhost"], ipAddresses: [])
        try await RedisServerProcess.withServer(fixture.serverConfiguration(serverCertificate: dnsOnly, keepPlainTextPort: true)) { server in
            let context = try fixture.context()
            // By IP, the certificate without the IP SAN does not match.
            let byIP = await #expect(throws: RedisError.self) {
                try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: context, host: "127.0.0.1"))
            }
            #expect(byIP?.code == .tlsHostnameMismatch)
            #expect(byIP?.message.contains("localhost") == true)
            // Another expected name: refused.
            let otherName = await #expect(throws: RedisError.self) {
                try await RedisConnection.connect(
                    configuration: fixture.aliceConfiguration(server, context: context, serverName: "redis.example.com")
                )
            }
            #expect(otherName?.code == .tlsHostnameMismatch)
            // Connecting to 127.0.0.1 while verifying the DNS name it carries: accepted.
            let connection = try await RedisConnection.connect(
                configuration: fixture.aliceConfiguration(server, context: context, serverName: "localhost")
            )
            #expect(try await connection.ping() == "PONG")
            await connection.close()
        }
        // The same kind of server with the IP SAN is accepted by IP.
        try await RedisServerProcess.withServer(fixture.serverConfiguration()) { server in
            let connection = try await RedisConnection.connect(
                configuration: fixture.aliceConfiguration(server, context: try fixture.context(), host: "127.0.0.1")
            )
            #expect(try await connection.ping() == "PONG")
            await connection.close()
        }
    }

    @Test("server certificates that are expired, not yet valid, or from an untrusted CA are refused")
    func serverCertificateErrors() async throws {
        let fixture = try TLSFixture()
        let now = Date()
        let untrusted = try TestCertificateAuthority(name: "Untrusted CA")
        let cases: [(TestCertificate, RedisError.Code)] = [
            (try fixture.ca.issueServer(notBefore: now.addingTimeInterval(-86400 * 10), notAfter: now.addingTimeInterval(-86400)), .tlsServerCertificateExpired),
            (try fixture.ca.issueServer(notBefore: now.addingTimeInterval(86400), notAfter: now.addingTimeInterval(86400 * 10)), .tlsServerCertificateNotYetValid),
            // Leaf only: X509 error 20 (unable to get local issuer).
            (try untrusted.issueServer(), .tlsUntrustedServerCertificate),
            // Leaf and its root, as redis-server setups often send: X509 error 19 (self-signed in chain).
            (try untrusted.issueServer().chained(with: untrusted), .tlsUntrustedServerCertificate),
        ]
        for (certificate, code) in cases {
            try await RedisServerProcess.withServer(fixture.serverConfiguration(serverCertificate: certificate, keepPlainTextPort: true)) { server in
                let error = await #expect(throws: RedisError.self) {
                    try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: try fixture.context()))
                }
                #expect(error?.code == code, "\(String(reflecting: error))")
            }
        }
    }

    @Test("verification can be switched off only by name, and then an untrusted server is accepted")
    func insecureMode() async throws {
        let fixture = try TLSFixture()
        let stranger = try TestCertificateAuthority(name: "Unknown CA").issueServer(dnsNames: ["elsewhere"], ipAddresses: [])
        try await RedisServerProcess.withServer(fixture.serverConfiguration(serverCertificate: stranger, keepPlainTextPort: true)) { server in
            let insecure = try RedisTLSContext(configuration: RedisTLSConfiguration(verification: .insecureNoVerification))
            let connection = try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: insecure))
            #expect(try await connection.ping() == "PONG")
            await connection.close()
        }
    }

    @Test("a server that requires a client certificate refuses a client without one", arguments: [nil, RedisTLSVersion.tls12])
    func clientCertificateRequired(maximumVersion: RedisTLSVersion?) async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(clientAuthentication: .required)) { server in
            let error = await #expect(throws: RedisError.self) {
                try await RedisConnection.connect(
                    configuration: fixture.aliceConfiguration(server, context: try fixture.context(maximumVersion: maximumVersion))
                )
            }
            #expect(error?.code == .tlsClientCertificateRequired, "\(String(reflecting: error))")
        }
    }

    @Test("a client certificate from a CA the server does not trust is rejected", arguments: [nil, RedisTLSVersion.tls12])
    func clientCertificateUnknownCA(maximumVersion: RedisTLSVersion?) async throws {
        let fixture = try TLSFixture()
        let stranger = try TestCertificateAuthority(name: "Stranger CA").issueClient()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(clientAuthentication: .required)) { server in
            let error = await #expect(throws: RedisError.self) {
                try await RedisConnection.connect(
                    configuration: fixture.aliceConfiguration(
                        server,
                        context: try fixture.context(identity: stranger.identity, maximumVersion: maximumVersion)
                    )
                )
            }
            #expect(error?.code == .tlsClientCertificateRejected, "\(String(reflecting: error))")
        }
    }

    @Test("a client certificate that expired after the context was built is rejected by the server")
    func clientCertificateExpiredAtServer() async throws {
        let fixture = try TLSFixture()
        let shortLived = try fixture.ca.issueClient(notAfter: Date().addingTimeInterval(2))
        let context = try fixture.context(identity: shortLived.identity)
        try await RedisServerProcess.withServer(fixture.serverConfiguration(clientAuthentication: .required)) { server in
            // Wait out the certificate's last two seconds: the server must see it expired.
            try await Task.sleep(for: .seconds(3))
            let error = await #expect(throws: RedisError.self) {
                try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: context))
            }
            #expect(error?.code == .tlsClientCertificateRejected, "\(String(reflecting: error))")
            #expect(error?.message.contains("expired") == true)
        }
    }

    @Test("a TLS client at the plain-text port fails within the handshake deadline")
    func plainTextPort() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(keepPlainTextPort: true)) { server in
            var configuration = fixture.aliceConfiguration(server, context: try fixture.context())
            configuration.port = try #require(server.plainTextPort)
            configuration.handshakeTimeout = .milliseconds(500)
            let error = await #expect(throws: RedisError.self) {
                try await RedisConnection.connect(configuration: configuration)
            }
            #expect(error?.code == .tlsHandshakeTimeout, "\(String(reflecting: error))")
        }
    }

    @Test("sessions resume within one context and never under another")
    func sessionResumption() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration()) { server in
            let first = try fixture.context()
            let second = try fixture.context()
            #expect(first.generation != second.generation)

            func connect(_ context: RedisTLSContext) async throws -> Bool {
                let connection = try await RedisConnection.connect(configuration: fixture.aliceConfiguration(server, context: context))
                let reused = try #require(connection.tlsInfo).sessionReused
                await connection.close()
                return reused
            }

            #expect(try await connect(first) == false, "the first connection has no session to resume")
            #expect(try await connect(first) == true, "a second connection with the same context resumes")
            #expect(try await connect(second) == false, "the other context must not use the first one's sessions")
            #expect(try await connect(second) == true, "the other context resumes its own sessions")
            #expect(try await connect(first) == true)
        }
    }
}

@Suite("TLS material validation")
struct TLSMaterialTests {
    @Test("each kind of bad client material is refused with its own code, naming the file")
    func badMaterial() throws {
        let ca = try TestCertificateAuthority()
        let good = try ca.issueClient()
        let other = try ca.issueClient(commonName: "other")
        let now = Date()
        let truncated = String(good.certificatePEM.dropLast(40))
        let cases: [(RedisTLSClientIdentity, RedisError.Code)] = [
            (try ca.issueClient(usage: .clientWithoutClientAuth).identity, .tlsClientCertificateMissingClientAuth),
            (RedisTLSClientIdentity(certificateChain: good.identity.certificateChain, privateKey: other.identity.privateKey), .tlsKeyMismatch),
            (RedisTLSClientIdentity(certificateChain: .pem(truncated, name: "truncated.pem"), privateKey: good.identity.privateKey), .tlsMalformedPEM),
            (RedisTLSClientIdentity(certificateChain: .pem("", name: "empty.pem"), privateKey: good.identity.privateKey), .tlsMalformedPEM),
            (RedisTLSClientIdentity(certificateChain: good.identity.certificateChain, privateKey: .pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", name: "bad.key")), .tlsMalformedPEM),
            (RedisTLSClientIdentity(certificateChain: .file("/nonexistent/client.crt"), privateKey: good.identity.privateKey), .tlsMalformedPEM),
            (try ca.issueClient(notBefore: now.addingTimeInterval(-86400 * 2), notAfter: now.addingTimeInterval(-86400)).identity, .tlsClientCertificateExpired),
            (try ca.issueClient(notBefore: now.addingTimeInterval(86400), notAfter: now.addingTimeInterval(86400 * 2)).identity, .tlsClientCertificateNotYetValid),
        ]
        for (identity, code) in cases {
            let error = #expect(throws: RedisError.self) {
                try RedisTLSContext(configuration: RedisTLSConfiguration(trustAnchors: [ca.certificate.certificateSource], clientIdentity: identity))
            }
            #expect(error?.code == code, "\(String(reflecting: error))")
        }
        // The file's name is in the message, its contents are not.
        let missing = #expect(throws: RedisError.self) {
            try RedisTLSContext(configuration: RedisTLSConfiguration(trustAnchors: [.file("/nonexistent/ca.pem")]))
        }
        #expect(missing?.message.contains("/nonexistent/ca.pem") == true)
        let mismatch = #expect(throws: RedisError.self) {
            try RedisTLSContext(
                configuration: RedisTLSConfiguration(
                    clientIdentity: RedisTLSClientIdentity(certificateChain: good.identity.certificateChain, privateKey: other.identity.privateKey)
                )
            )
        }
        #expect(mismatch.map { $0.debugDescription.contains("PRIVATE KEY") } == false)
    }

    @Test("a chain whose next certificate is not the leaf's issuer is refused; the right one is accepted")
    func chainVerification() throws {
        let ca = try TestCertificateAuthority()
        let other = try TestCertificateAuthority(name: "Other CA")
        let leaf = try ca.issueClient()
        let mixed = RedisTLSClientIdentity(certificateChain: .pem(leaf.certificatePEM + other.certificate.certificatePEM, name: "mixed.pem"), privateKey: leaf.identity.privateKey)
        let error = #expect(throws: RedisError.self) { try RedisTLSContext(configuration: RedisTLSConfiguration(clientIdentity: mixed)) }
        #expect(error?.code == .tlsClientCertificateChainInvalid)
        #expect(error?.message.contains("mixed.pem") == true)
        let right = RedisTLSClientIdentity(certificateChain: .pem(leaf.certificatePEM + ca.certificate.certificatePEM, name: "chain.pem"), privateKey: leaf.identity.privateKey)
        let context = try RedisTLSContext(configuration: RedisTLSConfiguration(clientIdentity: right))
        #expect(context.clientCertificateChain.count == 2)
    }

    @Test("a client certificate without any extended key usage is acceptable")
    func noExtendedKeyUsage() throws {
        let ca = try TestCertificateAuthority()
        let identity = try ca.issueClient(usage: .clientWithoutExtendedKeyUsage).identity
        let context = try RedisTLSContext(configuration: RedisTLSConfiguration(clientIdentity: identity))
        #expect(context.clientCertificateChain.first?.extendedKeyUsages == nil)
    }

    @Test("certificate inspection reports subject, issuer, names, dates, fingerprint and usages")
    func inspection() throws {
        let ca = try TestCertificateAuthority(name: "Inspect CA")
        let server = try ca.issueServer(commonName: "cache-1", dnsNames: ["cache-1.internal", "localhost"], ipAddresses: ["127.0.0.1", "::1"])
        let certificates = try RedisCertificate.load(.pem(server.certificatePEM + ca.certificate.certificatePEM))
        #expect(certificates.count == 2)
        let leaf = certificates[0]
        #expect(leaf.subject == "CN=cache-1,O=RedisRotation tests")
        #expect(leaf.issuer == "CN=Inspect CA,O=RedisRotation tests")
        #expect(leaf.dnsNames == ["cache-1.internal", "localhost"])
        #expect(leaf.ipAddresses == ["127.0.0.1", "0:0:0:0:0:0:0:1"])
        #expect(leaf.extendedKeyUsages == ["TLS Web Server Authentication"])
        #expect(!leaf.allowsClientAuthentication)
        #expect(!leaf.isCertificateAuthority)
        #expect(certificates[1].isCertificateAuthority)
        #expect(leaf.sha256Fingerprint.split(separator: ":").count == 32)
        #expect(leaf.notBefore < Date() && leaf.notAfter > Date())
        #expect(leaf.timeUntilExpiry() > 0)
        #expect(try ca.issueClient().identity.certificateChain.name == "test client certificate")
    }
}
