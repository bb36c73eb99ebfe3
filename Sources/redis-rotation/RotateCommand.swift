import ArgumentParser
import Foundation
import RedisRotation

/// The server connection options shared by the operator commands.
struct AdminTarget: ParsableArguments {
    @Option(help: "Server host.") var host = "127.0.0.1"
    @Option(help: "Server port.") var port = 6379
    @Flag(help: "Connect with TLS.") var tls = false
    @Option(help: "PEM file of the CA(s) to trust (with --tls).") var caFile: String?
    @Option(help: "Client certificate for mutual TLS.") var certFile: String?
    @Option(help: "Client key for mutual TLS.") var keyFile: String?
    @Option(help: "Name the server certificate must carry (default: the host).") var serverName: String?
    @Option(help: "ACL user with the rights to change users (ACL, CLIENT, CONFIG).") var adminUser: String
    @Option(help: "File holding the admin password.") var adminPasswordFile: String

    /// Runs `command` on a fresh admin connection.
    @discardableResult
    func send(_ command: RedisCommand) async throws -> RESPValue {
        let password: RedisSecret
        do {
            let text = try String(contentsOfFile: self.adminPasswordFile, encoding: .utf8)
            password = RedisSecret(text.hasSuffix("\n") ? String(text.dropLast()) : text)
        } catch {
            throw RunFailure(description: "cannot read --admin-password-file \(self.adminPasswordFile)", exitCode: 2)
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
        do {
            let connection = try await RedisConnection.connect(
                configuration: RedisConnectionConfiguration(
                    host: self.host,
                    port: self.port,
                    username: self.adminUser,
                    password: password,
                    name: "redis-rotation-admin",
                    tls: tls
                )
            )
            defer { Task { await connection.close() } }
            let reply = try await connection.send(command)
            await connection.close()
            return reply
        } catch let error as RedisError {
            throw RunFailure(description: error.message, exitCode: 1)
        }
    }
}

/// `redis-rotation rotate`: the operator side of a rotation on open-source Redis or Valkey.
struct RotateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate",
        abstract: "Rotate a user's password or the server certificate, the way the library expects.",
        subcommands: [RotatePasswordCommand.self, RotateServerCertificateCommand.self]
    )
}

struct RotatePasswordCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "password",
        abstract: "Add a new password, publish it, wait until no client connection uses the old one, remove it.",
        discussion: """
            Steps: ACL SETUSER <user> >new; write the password file (atomic rename, with the new version);
            wait until every connection of the user named <prefix>@<version> (RedisRotation clients name
            their connections so) is on the new version; then ACL SETUSER <user> resetpass >new, which leaves
            the new password only (also removing any left by an earlier, unfinished rotation). Connections
            still on an old version when --wait runs out are killed with --kill-stragglers; otherwise the old
            password stays and the command exits 1.
            """
    )

    @OptionGroup var target: AdminTarget
    @Option(help: "The user whose password rotates.") var user: String
    @Option(help: "The password file the clients watch (it holds the current password; rewritten).") var passwordFile: String
    @Option(help: "The version label of the new password (default: a timestamp).") var version: String?
    @Option(help: "Seconds to wait for clients to move to the new version.") var wait = 300
    @Flag(help: "After the wait, kill connections still on an old version, then remove the old password.") var killStragglers = false

    func run() async throws {
        // The file must be readable: it is what the clients watch.
        guard FileManager.default.isReadableFile(atPath: self.passwordFile) else {
            throw RunFailure(description: "cannot read --password-file \(self.passwordFile)", exitCode: 2)
        }
        let version = self.version ?? "r\(Int(Date().timeIntervalSince1970))"
        guard RedisCredentials.isValidVersion(version) else {
            throw RunFailure(description: "--version must be 1 to 64 printable characters without spaces", exitCode: 2)
        }
        let new = PasswordRotation.randomPassword()
        try await self.target.send(RedisCommand("ACL", "SETUSER", .string(self.user), .secret(RedisSecret(">" + new))))
        print("added a new password for \(self.user) (version \(version))")
        try RedisCredentialFile(password: RedisSecret(new), version: version).write(to: self.passwordFile)
        print("published it to \(self.passwordFile)")

        let deadline = ContinuousClock.now + .seconds(self.wait)
        var stragglers: [(id: String, name: String)] = []
        repeat {
            stragglers = try await self.connectionsOnOtherVersions(than: version)
            if stragglers.isEmpty { break }
            try await Task.sleep(for: .milliseconds(200))
        } while ContinuousClock.now < deadline
        if !stragglers.isEmpty {
            guard self.killStragglers else {
                throw RunFailure(
                    description: "\(stragglers.count) connection(s) of \(self.user) are still on an old version after \(self.wait) s (\(stragglers.map(\.name).joined(separator: ", "))); the old password stays. Use --kill-stragglers to disconnect them.",
                    exitCode: 1
                )
            }
            for straggler in stragglers {
                try await self.target.send(RedisCommand("CLIENT", "KILL", "ID", .string(straggler.id)))
            }
            print("killed \(stragglers.count) connection(s) still on an old version")
        } else {
            print("every connection of \(self.user) is on version \(version)")
        }
        // One atomic step leaves only the new password: also any left by an earlier, unfinished rotation.
        try await self.target.send(
            RedisCommand("ACL", "SETUSER", .string(self.user), "resetpass", .secret(RedisSecret(">" + new)))
        )
        print("removed the old password(s): \(self.user) now has only the new one")
    }

    /// Connections of the user whose `<prefix>@<version>` name carries another version.
    private func connectionsOnOtherVersions(than version: String) async throws -> [(id: String, name: String)] {
        let list = try await self.target.send(RedisCommand("CLIENT", "LIST")).string ?? ""
        return list.split(whereSeparator: \.isNewline).compactMap { (line: Substring) -> (id: String, name: String)? in
            var fields: [String: String] = [:]
            for field in line.split(separator: " ") {
                let parts = field.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
            }
            guard fields["user"] == self.user, let name = fields["name"], let id = fields["id"],
                let named = name.split(separator: "@").last.map(String.init), name.contains("@")
            else { return nil }
            // Probe connections are short-lived; they do not hold the old password.
            if named.hasSuffix("-probe") { return nil }
            return named == version ? nil : (id, name)
        }
    }
}

struct RotateServerCertificateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server-certificate",
        abstract: "Switch the server to a new certificate and key with CONFIG SET (paths as the server sees them).",
        discussion: "Existing connections keep their sessions; new handshakes see the new certificate. Use --kill-user to make a user's clients reconnect now."
    )

    @OptionGroup var target: AdminTarget
    @Option(help: "The new certificate file, as a path on the server.") var newCertFile: String
    @Option(help: "The new key file, as a path on the server.") var newKeyFile: String
    @Option(help: "Afterwards, disconnect this user's connections so that they handshake again.") var killUser: String?

    func run() async throws {
        try await self.target.send(RedisCommand("CONFIG", "SET", "tls-cert-file", .string(self.newCertFile), "tls-key-file", .string(self.newKeyFile)))
        print("the server now presents \(self.newCertFile)")
        if let user = self.killUser {
            try await self.target.send(RedisCommand("CLIENT", "KILL", "USER", .string(user)))
            print("disconnected the connections of \(user)")
        }
    }
}
