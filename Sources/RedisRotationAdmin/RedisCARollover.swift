#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
public import RedisRotation

/// A trust-anchor rollover, in the order that never fails a handshake:
///
/// 1. Publish a bundle with the old and the new CA to the file the clients trust (mode and owner kept).
/// 2. Wait until every connection of the named users was opened after the bundle changed (connection
///    ids only grow), then a grace for clients to finish reloading: RedisRotation clients roll every
///    connection onto the new trust generation within their roll-over window, so reconnected clients
///    are clients that reloaded. Stragglers are named, or killed when asked (they reconnect).
/// 3. Switch the server to a certificate issued by the new CA (``RedisServerCertificateRotation``:
///    checked, verified with a fresh handshake trusting only the new CA, rolled back otherwise).
/// 4. Publish a bundle with the new CA only.
///
/// The server side cannot see a connection's trust generation, so step 2 takes "reconnected since the
/// bundle changed" as the evidence; the grace covers the clients' reload delay.
public struct RedisCARollover: Sendable {
    public struct Options: Sendable {
        /// The CA bundle file the clients trust (rewritten twice).
        public var bundleFile: String
        /// The new CA certificate (PEM).
        public var newCAFile: String
        /// The server certificate and key issued by the new CA, as paths on the server.
        public var serverCertificateFile: String
        public var serverKeyFile: String
        /// The name clients verify.
        public var serverName: String
        /// Users whose connections must have reconnected after the bundle change.
        public var users: [String]
        /// How long to wait for them. Default: 5 minutes.
        public var clientWait: Duration
        /// How long clients may take to notice the bundle change. Default: 2 seconds.
        public var reloadGrace: Duration
        /// Whether connections older than the bundle change are killed after the wait.
        public var killStragglers: Bool

        public init(
            bundleFile: String,
            newCAFile: String,
            serverCertificateFile: String,
            serverKeyFile: String,
            serverName: String,
            users: [String],
            clientWait: Duration = .seconds(300),
            reloadGrace: Duration = .seconds(2),
            killStragglers: Bool = false
        ) {
            self.bundleFile = bundleFile
            self.newCAFile = newCAFile
            self.serverCertificateFile = serverCertificateFile
            self.serverKeyFile = serverKeyFile
            self.serverName = serverName
            self.users = users
            self.clientWait = clientWait
            self.reloadGrace = reloadGrace
            self.killStragglers = killStragglers
        }
    }

    public let node: RedisServerAdmin
    public let options: Options
    private let report: @Sendable (RedisAdminStep) -> Void

    public init(node: RedisServerAdmin, options: Options, report: @escaping @Sendable (RedisAdminStep) -> Void = { _ in }) {
        self.node = node
        self.options = options
        self.report = report
    }

    /// What was checked: the CAs in the bundle now, the new CA and the new server certificate.
    public struct Check: Sendable {
        public var currentAnchors: [RedisCertificate]
        public var newCA: RedisCertificate
        public var serverCertificate: RedisCertificate
        /// The PEM text of both bundles.
        var bundleBoth: String
        var bundleNew: String
    }

    /// Checks everything before a change: the bundle and the new CA parse, the new CA is a CA, the new
    /// server pair is right (``RedisServerCertificateRotation/check(certificateFile:keyFile:serverName:now:)``)
    /// and issued by the new CA.
    public func check() throws -> Check {
        func load(_ path: String) throws -> (String, [RedisCertificate]) {
            do {
                return (try String(contentsOfFile: path, encoding: .utf8), try RedisCertificate.load(.file(path)))
            } catch let error as RedisError {
                throw RedisAdminError(code: .certificateRefused, message: "\(path): \(error.message); nothing was changed", underlying: error)
            } catch {
                throw RedisAdminError(code: .certificateRefused, message: "cannot read \(path); nothing was changed", underlying: error)
            }
        }
        let (bundleText, anchors) = try load(self.options.bundleFile)
        let (newText, newCertificates) = try load(self.options.newCAFile)
        guard newCertificates.count == 1, let newCA = newCertificates.first, newCA.isCertificateAuthority else {
            throw RedisAdminError(code: .certificateRefused, message: "\(self.options.newCAFile) must hold exactly one CA certificate; nothing was changed")
        }
        let leaf = try RedisServerCertificateRotation.check(
            certificateFile: self.options.serverCertificateFile,
            keyFile: self.options.serverKeyFile,
            serverName: self.options.serverName
        )
        guard leaf.issuer == newCA.subject else {
            throw RedisAdminError(
                code: .certificateRefused,
                message: "the new server certificate is issued by \(leaf.issuer), not by the new CA \(newCA.subject); nothing was changed"
            )
        }
        let alreadyTrusted = anchors.contains { $0.sha256Fingerprint == newCA.sha256Fingerprint }
        let separator = bundleText.hasSuffix("\n") ? "" : "\n"
        return Check(
            currentAnchors: anchors,
            newCA: newCA,
            serverCertificate: leaf,
            bundleBoth: alreadyTrusted ? bundleText : bundleText + separator + newText,
            bundleNew: newText
        )
    }

    /// Performs the rollover; `verifyWith` is how a fresh handshake reaches the node's TLS port: trust
    /// only the new CA there, so that the check proves the new chain.
    public func run(_ check: Check, verifyWith tls: RedisConnectionConfiguration.TLS) async throws {
        // Taken before the bundle changes: a client may reload and reconnect within milliseconds, and a
        // connection it opens then must count as new. (Ids only grow.)
        let marker = try await self.node.newestClientID()
        try self.publish(check.bundleBoth, "old and new CA (\(check.currentAnchors.count + 1) certificate(s))")
        try await self.waitForReconnects(since: ContinuousClock.now, marker: marker)

        try await RedisServerCertificateRotation.apply(
            certificateFile: self.options.serverCertificateFile,
            keyFile: self.options.serverKeyFile,
            certificate: check.serverCertificate,
            on: self.node,
            verifyWith: tls,
            report: self.report
        )
        try self.publish(check.bundleNew, "the new CA only")
        self.report(RedisAdminStep(name: "done", message: "clients trust \(check.newCA.subject); the server presents \(check.serverCertificate.subject)"))
    }

    private func publish(_ text: String, _ what: String) throws {
        let replacement: FileReplacement
        do {
            replacement = try replaceFileSafely(at: self.options.bundleFile, with: RedisSecret(text), what: "the CA bundle")
        } catch {
            throw RedisAdminError(code: .passwordFile, message: error.message, underlying: error)
        }
        self.report(RedisAdminStep(name: "publish", message: "wrote \(what) to \(self.options.bundleFile)"))
        // Renamed: the clients may already trust it, so it counts as written.
        if let warning = replacement.durabilityWarning {
            self.report(RedisAdminStep(name: "warn", message: "\(warning.message); its durability is unconfirmed"))
        }
    }

    /// Connections of the users opened before the connection whose id is `marker`.
    public func stragglers(before marker: Int) async throws -> [RedisClientInfo] {
        var found: [RedisClientInfo] = []
        for user in self.options.users {
            found += try await self.node.connections(of: user).filter { $0.id < marker }
        }
        return found
    }

    private func waitForReconnects(since moment: ContinuousClock.Instant, marker: Int) async throws {
        let deadline = moment + self.options.clientWait
        var lastCount = -1
        while true {
            let stragglers = try await self.stragglers(before: marker)
            if stragglers.isEmpty {
                self.report(RedisAdminStep(name: "wait", node: self.node.address, message: "every connection of \(self.options.users.joined(separator: ", ")) was opened after the new bundle"))
                // A client that opened a connection just before it noticed the new bundle notices it
                // within the grace; its established connections are unaffected by the switch.
                try await Task.sleep(for: self.options.reloadGrace)
                return
            }
            if stragglers.count != lastCount {
                lastCount = stragglers.count
                self.report(RedisAdminStep(name: "wait", node: self.node.address, message: "\(stragglers.count) connection(s) opened before the new bundle: \(stragglers.prefix(20).map(\.description).joined(separator: "; "))"))
            }
            if ContinuousClock.now >= deadline {
                guard self.options.killStragglers else {
                    throw RedisAdminError(
                        code: .stragglers,
                        message: "\(stragglers.count) connection(s) were opened before the bundle with both CAs and may trust only the old one: \(stragglers.prefix(20).map(\.description).joined(separator: "; ")); the server certificate was not changed. Kill them with --kill-stragglers or wait longer"
                    )
                }
                for straggler in stragglers {
                    try await self.node.kill(clientID: straggler.id)
                    self.report(RedisAdminStep(name: "kill", node: self.node.address, message: "killed \(straggler)"))
                }
                try await Task.sleep(for: self.options.reloadGrace)
                return
            }
            try await Task.sleep(for: .milliseconds(250))
        }
    }
}
