import ArgumentParser
import Foundation
import RedisRotation
import RedisRotationAdmin

/// The server connection options shared by the operator commands.
struct AdminTarget: ParsableArguments {
    @Option(help: "Server host (the primary, or any node: replicas are discovered).") var host = "127.0.0.1"
    @Option(help: "Server port.") var port = 6379
    @Flag(help: "Connect with TLS.") var tls = false
    @Option(help: "PEM file of the CA(s) to trust (with --tls; also for verifying a new server certificate).") var caFile: String?
    @Option(help: "Client certificate for mutual TLS.") var certFile: String?
    @Option(help: "Client key for mutual TLS.") var keyFile: String?
    @Option(help: "Name the server certificate must carry (default: the host).") var serverName: String?
    @Option(help: "ACL user with the rights to change users (ACL, CLIENT, CONFIG, ROLE, INFO).") var adminUser: String
    @Option(help: "File holding the admin password.") var adminPasswordFile: String

    /// How the administrator connects, from the options.
    func connectionConfiguration() throws -> RedisConnectionConfiguration {
        let password: RedisSecret
        do {
            password = try RedisCredentialFile.read(from: self.adminPasswordFile).password
        } catch {
            throw RunFailure(description: "--admin-password-file: \(error.message)", exitCode: 2)
        }
        var tls: RedisConnectionConfiguration.TLS?
        if self.tls {
            let identity = self.certFile.map { RedisTLSClientIdentity(certificateChain: .file($0), privateKey: .file(self.keyFile ?? $0)) }
            do {
                let context = try RedisTLSContext(configuration: .init(trustAnchors: self.caFile.map { [.file($0)] } ?? [], clientIdentity: identity))
                tls = .init(context: context, serverName: self.serverName)
            } catch {
                throw RunFailure(description: error.message, exitCode: 2)
            }
        }
        return RedisConnectionConfiguration(
            host: self.host,
            port: self.port,
            username: self.adminUser,
            password: password,
            name: "redis-rotation-admin",
            tls: tls
        )
    }

    /// The node named by the options alone (no replica discovery).
    func connect() async throws -> RedisServerAdmin {
        let configuration = try self.connectionConfiguration()
        do {
            return try await RedisServerAdmin.connect(configuration: configuration)
        } catch let error as RedisAdminError {
            throw RunFailure(description: error.message, exitCode: 1)
        }
    }
}

/// Refuses a node of a Redis Cluster when `--cluster` was not given: a rotation there must reach every
/// node the cluster lists, and the operator should say so (see docs/DECISIONS.md).
func refuseClusterWithoutFlag(_ configuration: RedisConnectionConfiguration) async throws {
    let node = try await RedisServerAdmin.connect(configuration: configuration)
    let members: [RedisClusterMember]?
    do {
        members = try await node.clusterMembers()
    } catch {
        await node.close()
        throw error
    }
    await node.close()
    if let members {
        throw RedisAdminError(
            code: .unexpectedTopology,
            message: "\(configuration.host):\(configuration.port) is a Redis Cluster node (\(members.count) nodes): ACLs are per node, so pass --cluster to rotate on every one of them. Nothing was changed"
        )
    }
}

/// The arguments of this run, quoted for a shell, without the flags that must not repeat.
func resumeCommand(dropping: Set<String> = ["--dry-run"]) -> String {
    let arguments = ["redis-rotation"] + CommandLine.arguments.dropFirst().filter { !dropping.contains($0) }
    return arguments.map { argument in
        argument.allSatisfy({ $0.isLetter || $0.isNumber || "-_./:=@,".contains($0) }) ? argument : "'" + argument.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }.joined(separator: " ")
}
