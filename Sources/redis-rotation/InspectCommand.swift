import ArgumentParser
import Foundation
import RedisRotation
import RedisRotationAdmin

/// `redis-rotation inspect`: what the configured credentials and certificates are, and what needs
/// attention before it breaks.
struct InspectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show versions, fingerprints and expiry dates of credentials and certificates, with warnings.",
        discussion: """
            Warnings: the default user in use, a password file older than the rotation policy, anything \
            expiring within --warn-days (or expired), a CA file entry that is not a CA, a client \
            certificate without the TLS Web Client Authentication extended key usage, a key that does not \
            match its certificate. With --cluster (and --admin-user/--admin-password-file), every node \
            CLUSTER NODES lists, seen from --host/--port: its role (primary with its slot count, or the \
            primary it replicates), the connections of --user by credential version (the <name>@<version> \
            connection names), and how many passwords the user holds there; warnings when the nodes hold \
            different passwords or more than one (a rotation under way or interrupted). With --tls, \
            --ca-file is trusted and --cert-file/--key-file are presented. Exit status: 0 without \
            warnings, 1 with warnings (a cluster node failed or unreachable among them), 2 for a usage or \
            configuration error. Passwords are never printed.
            """
    )

    @Option(help: "ACL user of the password file (with --cluster, whose connections and passwords are shown).") var user = "default"
    @Option(help: "Password file (plain, or password=/version=/expires= lines).") var passwordFile: String?
    @Option(help: "PEM file of trusted CA(s) (repeatable).") var caFile: [String] = []
    @Option(help: "PEM file of the client certificate chain.") var certFile: String?
    @Option(help: "PEM file of the client key.") var keyFile: String?
    @Option(help: "Warn when something expires within this many days.") var warnDays = 30
    @Option(help: "Warn when the password file is older than this many days (rotation policy).") var passwordMaxAgeDays = 90
    @Flag(help: "Show every node of the Redis Cluster that --host/--port belongs to: role, connections of --user by version, passwords held.") var cluster = false
    @Option(help: "With --cluster: any node of the cluster.") var host = "127.0.0.1"
    @Option(help: "With --cluster: its port.") var port = 6379
    @Flag(help: "With --cluster: connect with TLS (trusting --ca-file, presenting --cert-file/--key-file).") var tls = false
    @Option(help: "With --cluster: the name the first node's certificate must carry (default: the host; the others are verified against their announced addresses).") var serverName: String?
    @Option(help: "With --cluster: ACL user that may run CLUSTER NODES, CLIENT LIST, ACL GETUSER, INFO.") var adminUser: String?
    @Option(help: "With --cluster: file holding the admin password.") var adminPasswordFile: String?
    @Flag(help: "Print one JSON object (credentials, trust anchors, client certificate, cluster, warnings) instead of text.") var json = false

    func validate() throws {
        if (self.certFile == nil) != (self.keyFile == nil) { throw ValidationError("--cert-file and --key-file go together") }
        if self.cluster {
            guard self.adminUser != nil, self.adminPasswordFile != nil else { throw ValidationError("--cluster needs --admin-user and --admin-password-file") }
        } else if self.adminUser != nil || self.adminPasswordFile != nil || self.tls || self.serverName != nil {
            throw ValidationError("--admin-user, --admin-password-file, --tls and --server-name go with --cluster")
        }
        if self.passwordFile == nil && self.caFile.isEmpty && self.certFile == nil && !self.cluster {
            throw ValidationError("name something to inspect: --password-file, --ca-file, --cert-file/--key-file or --cluster")
        }
        guard self.warnDays >= 0, self.passwordMaxAgeDays > 0 else { throw ValidationError("--warn-days and --password-max-age-days must be positive") }
    }

    func run() async throws {
        var warnings: [String] = []
        var report: [String: Any] = [:]
        let now = Date()
        let json = self.json
        func print(_ text: String) {
            if !json { Swift.print(text) }
        }
        func fields(_ certificate: RedisCertificate) -> [String: Any] {
            var object: [String: Any] = [
                "subject": certificate.subject, "issuer": certificate.issuer,
                "names": certificate.dnsNames + certificate.ipAddresses,
                "not_before": ISO8601DateFormatter().string(from: certificate.notBefore),
                "not_after": ISO8601DateFormatter().string(from: certificate.notAfter),
                "days_left": (certificate.notAfter.timeIntervalSince(now) / 86400 * 10).rounded() / 10,
                "sha256": certificate.sha256Fingerprint,
                "is_ca": certificate.isCertificateAuthority,
            ]
            if let usages = certificate.extendedKeyUsages { object["extended_key_usages"] = usages }
            return object
        }
        func days(until date: Date) -> String { String(format: "%.1f days", date.timeIntervalSince(now) / 86400) }
        func checkExpiry(_ what: String, _ date: Date) {
            if date <= now {
                warnings.append("\(what) expired \(String(format: "%.1f", now.timeIntervalSince(date) / 86400)) days ago (\(date))")
            } else if date.timeIntervalSince(now) <= Double(self.warnDays) * 86400 {
                warnings.append("\(what) expires in \(days(until: date)) (\(date))")
            }
        }
        func describe(_ certificate: RedisCertificate, indent: String = "  ") {
            print("\(indent)subject:     \(certificate.subject)")
            print("\(indent)issuer:      \(certificate.issuer)")
            if !certificate.dnsNames.isEmpty || !certificate.ipAddresses.isEmpty {
                print("\(indent)names:       \((certificate.dnsNames + certificate.ipAddresses).joined(separator: ", "))")
            }
            print("\(indent)valid:       \(certificate.notBefore) to \(certificate.notAfter) (\(days(until: certificate.notAfter)) left)")
            print("\(indent)SHA-256:     \(certificate.sha256Fingerprint)")
            if let usages = certificate.extendedKeyUsages { print("\(indent)key usage:   \(usages.joined(separator: ", "))") }
        }

        if let path = self.passwordFile {
            let credentials: RedisCredentials?
            do {
                credentials = try RedisCredentialSource.file(path, username: self.user).currentCredentials()
            } catch {
                throw RunFailure(description: error.message, exitCode: 2)
            }
            guard let credentials else { throw RunFailure(description: "no credentials in \(path)", exitCode: 2) }
            var credentialsObject: [String: Any] = ["file": path, "user": credentials.username, "version": credentials.version, "password_bytes": credentials.password.count]
            defer { report["credentials"] = credentialsObject }
            print("credentials (\(path)):")
            print("  user:        \(credentials.username)")
            print("  version:     \(credentials.version)")
            print("  password:    \(credentials.password.count) bytes (not shown)")
            if credentials.username == "default" {
                warnings.append("the default user is in use: give the application an ACL user of its own")
            }
            if let expiresAt = credentials.expiresAt {
                print("  expires:     \(expiresAt) (\(days(until: expiresAt)) left)")
                credentialsObject["expires"] = ISO8601DateFormatter().string(from: expiresAt)
                checkExpiry("the password (version \(credentials.version))", expiresAt)
            }
            if let modified = try? FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date {
                let age = now.timeIntervalSince(modified) / 86400
                print("  file age:    \(String(format: "%.1f", age)) days")
                credentialsObject["file_age_days"] = (age * 10).rounded() / 10
                if age > Double(self.passwordMaxAgeDays) {
                    warnings.append("the password file is \(Int(age)) days old, beyond the \(self.passwordMaxAgeDays)-day rotation policy")
                }
            }
        }

        for path in self.caFile {
            let certificates: [RedisCertificate]
            do {
                certificates = try RedisCertificate.load(.file(path))
            } catch {
                throw RunFailure(description: error.message, exitCode: 2)
            }
            print("trust anchors (\(path)): \(certificates.count)")
            report["trust_anchors", default: [[String: Any]]()] = (report["trust_anchors"] as? [[String: Any]] ?? []) + certificates.map { fields($0).merging(["file": path]) { a, _ in a } }
            for certificate in certificates {
                describe(certificate)
                if !certificate.isCertificateAuthority { warnings.append("\(certificate.subject) in \(path) is not a CA certificate") }
                checkExpiry("trust anchor \(certificate.subject)", certificate.notAfter)
                print("")
            }
        }

        if let certFile = self.certFile, let keyFile = self.keyFile {
            let chain: [RedisCertificate]
            do {
                chain = try RedisCertificate.load(.file(certFile))
            } catch {
                throw RunFailure(description: error.message, exitCode: 2)
            }
            print("client certificate (\(certFile)):")
            report["client_certificate"] = fields(chain[0]).merging(["file": certFile, "chain_length": chain.count]) { a, _ in a }
            describe(chain[0])
            if !chain[0].allowsClientAuthentication {
                warnings.append("the client certificate \(chain[0].subject) lacks the TLS Web Client Authentication extended key usage")
            }
            checkExpiry("the client certificate \(chain[0].subject)", chain[0].notAfter)
            for intermediate in chain.dropFirst() { checkExpiry("chain certificate \(intermediate.subject)", intermediate.notAfter) }
            // The same validation a client performs: key match, validity, EKU, chain.
            do {
                _ = try RedisTLSContext(
                    configuration: RedisTLSConfiguration(clientIdentity: .init(certificateChain: .file(certFile), privateKey: .file(keyFile)))
                )
            } catch let error where [.tlsKeyMismatch, .tlsClientCertificateChainInvalid, .tlsMalformedPEM].contains(error.code) {
                warnings.append(error.message)
            } catch {
                // Validity and EKU are already reported above.
            }
            print("")
        }

        if self.cluster {
            let (object, found) = try await self.inspectCluster(print: print)
            report["cluster"] = object
            warnings += found
        }

        if json {
            report["warnings"] = warnings
            let data = try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys])
            Swift.print(String(decoding: data, as: UTF8.self))
            if !warnings.isEmpty { throw ExitCode(1) }
            return
        }
        if warnings.isEmpty {
            print("no warnings")
        } else {
            print("warnings:")
            for warning in warnings { print("  - \(warning)") }
            throw ExitCode(1)
        }
    }

    /// Every node of the cluster: role, connections of the user by version, passwords held. Returns the
    /// JSON object and the warnings.
    private func inspectCluster(print: (String) -> Void) async throws -> ([String: Any], [String]) {
        let password: RedisSecret
        do {
            password = try RedisCredentialFile.read(from: self.adminPasswordFile ?? "").password
        } catch {
            throw RunFailure(description: "--admin-password-file: \(error.message)", exitCode: 2)
        }
        var tls: RedisConnectionConfiguration.TLS?
        if self.tls {
            let identity = self.certFile.map { RedisTLSClientIdentity(certificateChain: .file($0), privateKey: .file(self.keyFile ?? $0)) }
            do {
                let context = try RedisTLSContext(configuration: .init(trustAnchors: self.caFile.map { .file($0) }, clientIdentity: identity))
                tls = .init(context: context, serverName: self.serverName)
            } catch {
                throw RunFailure(description: error.message, exitCode: 2)
            }
        }
        let configuration = RedisConnectionConfiguration(
            host: self.host, port: self.port, username: self.adminUser, password: password, name: "redis-rotation-admin", tls: tls
        )
        // Every node the first one lists, each on a connection of its own: a node that is failed or
        // cannot be reached is shown as such (and warned about) rather than hiding the others.
        let members: [RedisClusterMember]
        var tlsPorts: [String: Int] = [:]
        do {
            let seed = try await RedisServerAdmin.connect(configuration: configuration)
            do {
                guard let listed = try await seed.clusterMembers() else {
                    await seed.close()
                    throw RunFailure(description: "\(self.host):\(self.port) is not in cluster mode (cluster_enabled:0): leave out --cluster", exitCode: 2)
                }
                members = listed
                if tls != nil { tlsPorts = try await seed.clusterTLSPorts() }
            } catch {
                await seed.close()
                throw error
            }
            await seed.close()
        } catch let error as RedisAdminError {
            throw RunFailure(description: error.message, exitCode: 2)
        }
        var warnings: [String] = []
        var nodes: [[String: Any]] = []
        var hashSets: Set<[String]> = []
        let addressByID = Dictionary(members.map { ($0.id, $0.address) }) { first, _ in first }
        // Shard by shard: each primary, then its replicas.
        var ordered: [RedisClusterMember] = []
        for primary in members.filter(\.isPrimary).sorted(by: { $0.address < $1.address }) {
            ordered.append(primary)
            ordered += members.filter { $0.primaryID == primary.id }.sorted { $0.address < $1.address }
        }
        ordered += members.filter { member in !ordered.contains { $0.id == member.id } }
        print("cluster (\(members.count) nodes, seen from \(self.host):\(self.port)), user \(self.user):")
        for member in ordered {
            var object: [String: Any] = ["address": member.address, "id": member.id, "role": member.isPrimary ? "primary" : "replica", "flags": member.flags]
            let role: String
            if member.isPrimary {
                object["slots"] = member.slotCount
                role = "primary, \(member.slotCount) slot(s)"
            } else {
                let primary = member.primaryID.flatMap { addressByID[$0] } ?? member.primaryID ?? "?"
                object["primary"] = primary
                role = "replica of \(primary)"
            }
            defer { nodes.append(object) }
            if let reason = member.unusableReason {
                object["error"] = reason
                warnings.append("the cluster node \(member.address) is \(reason): a rotation would refuse to start")
                print("  \(member.address)  \(role)  \(reason)")
                continue
            }
            let node: RedisServerAdmin
            do {
                node = try await RedisServerAdmin.connect(configuration: RedisAdminTopology.configuration(of: member, from: configuration, tlsPorts: tlsPorts))
            } catch let error as RedisAdminError {
                object["error"] = error.message
                warnings.append("the cluster node \(member.address) cannot be reached (\(error.message)): a rotation would refuse to start")
                print("  \(member.address)  \(role)  cannot be reached: \(error.message)")
                continue
            }
            do {
                let counts = try await node.connectionCountsByVersion(of: self.user)
                let hashes = try await node.passwordHashes(of: self.user)
                await node.close()
                object["connections"] = counts
                object["user_exists"] = hashes != nil
                let versions = counts.isEmpty ? "none" : counts.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }.joined(separator: ", ")
                if let hashes {
                    object["passwords"] = hashes.count
                    hashSets.insert(hashes.sorted())
                    if hashes.count > 1 {
                        warnings.append("\(member.address) holds \(hashes.count) passwords for \(self.user): a rotation is under way or was interrupted (running rotate password --cluster again finishes it)")
                    }
                    print("  \(member.address)  \(role)  passwords: \(hashes.count)  connections: \(versions)")
                } else {
                    warnings.append("the user \(self.user) does not exist on \(member.address)")
                    print("  \(member.address)  \(role)  user \(self.user) does not exist  connections: \(versions)")
                }
            } catch let error as RedisAdminError {
                await node.close()
                object["error"] = error.message
                warnings.append("\(member.address): \(error.message)")
                print("  \(member.address)  \(role)  \(error.message)")
            }
        }
        if hashSets.count > 1 {
            warnings.append("the nodes do not hold the same passwords for \(self.user): a client may log in on some nodes and not on others")
        }
        print("")
        return (["seed": "\(self.host):\(self.port)", "user": self.user, "nodes": nodes], warnings)
    }
}
