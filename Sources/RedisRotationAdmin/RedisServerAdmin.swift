#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
public import RedisRotation
import Synchronization

/// The server side of rotation on one node: one administrator connection and the steps an operator
/// performs (passwords, persistence, connections, certificates). Used by `redis-rotation rotate`, the
/// demo, the load test and the tests; link it for your own automation.
///
/// The connection is reopened once when it was closed under it. Close it with ``close()``.
public final class RedisServerAdmin: Sendable {
    /// How this node is reached as the administrator.
    public let configuration: RedisConnectionConfiguration
    private let connection: Lock<RedisConnection>

    /// `host:port` of the node.
    public var address: String { "\(self.configuration.host):\(self.configuration.port)" }

    private init(configuration: RedisConnectionConfiguration, connection: RedisConnection) {
        self.configuration = configuration
        self.connection = Lock(connection)
    }

    /// Connects to a node as the administrator.
    ///
    /// - Throws: ``RedisAdminError`` `nodeUnreachable`, with the reason (refused, TLS, credentials).
    public static func connect(configuration: RedisConnectionConfiguration) async throws -> RedisServerAdmin {
        var configuration = configuration
        if configuration.name == nil { configuration.name = "redis-rotation-admin" }
        do {
            return RedisServerAdmin(configuration: configuration, connection: try await RedisConnection.connect(configuration: configuration))
        } catch {
            throw RedisAdminError(
                code: .nodeUnreachable,
                message: "cannot reach \(configuration.host):\(configuration.port) as \(configuration.username ?? "default"): \(Self.reason(error))",
                underlying: error
            )
        }
    }

    /// Closes the administrator connection.
    public func close() async {
        await self.connection.withLock { $0 }.close()
    }

    /// The server's id of the administrator connection (never counted as anybody's straggler).
    public var ownClientID: Int? { self.connection.withLock { $0.clientID } }

    /// Sends `command`, reconnecting once if the connection was closed.
    @discardableResult
    public func send(_ command: RedisCommand) async throws -> RESPValue {
        let connection = self.connection.withLock { $0 }
        do {
            return try await connection.send(command)
        } catch let error as RedisError where !connection.isActive && error.code != .serverError {
            let fresh: RedisConnection
            do {
                fresh = try await RedisConnection.connect(configuration: self.configuration)
            } catch {
                throw RedisAdminError(code: .nodeUnreachable, message: "lost the connection to \(self.address): \(Self.reason(error))", underlying: error)
            }
            self.connection.withLock { $0 = fresh }
            return try await self.checked(command, on: fresh)
        } catch let error as RedisError {
            throw Self.refusal(command, at: self.address, error)
        }
    }

    private func checked(_ command: RedisCommand, on connection: RedisConnection) async throws -> RESPValue {
        do {
            return try await connection.send(command)
        } catch let error as RedisError {
            throw Self.refusal(command, at: self.address, error)
        }
    }

    static func refusal(_ command: RedisCommand, at address: String, _ error: RedisError) -> RedisAdminError {
        RedisAdminError(code: .serverRefused, message: "\(address) refused \(command.name): \(Self.reason(error))", underlying: error)
    }

    /// An error's message with the server's prefix (`NOPERM`, `ERR`), never its arguments.
    static func reason(_ error: any Error) -> String {
        guard let error = error as? RedisError else { return "\(error)" }
        if let prefix = error.serverErrorPrefix, !error.message.hasPrefix(prefix) { return "\(prefix): \(error.message)" }
        return error.message
    }

    // MARK: Users and passwords

    /// The SHA-256 hashes of the user's passwords (as `ACL GETUSER` lists them); `nil` when the user
    /// does not exist.
    public func passwordHashes(of user: String) async throws -> [String]? {
        try await self.aclUser(user)?.passwordHashes
    }

    /// The user's password hashes and flags (`on`, `nopass`, ...) as `ACL GETUSER` lists them; `nil`
    /// when the user does not exist.
    public func aclUser(_ user: String) async throws -> (passwordHashes: [String], flags: [String])? {
        let reply = try await self.send(RedisCommand("ACL", "GETUSER", .string(user)))
        if reply.isNull { return nil }
        guard let fields = reply.array else {
            throw RedisAdminError(code: .unexpectedState, message: "\(self.address) answered ACL GETUSER with something that is not a list")
        }
        var hashes: [String] = []
        var flags: [String] = []
        var index = 0
        while index + 1 < fields.count {
            switch fields[index].string {
            case "passwords": hashes = fields[index + 1].array?.compactMap(\.string) ?? []
            case "flags": flags = fields[index + 1].array?.compactMap(\.string) ?? []
            default: break
            }
            index += 2
        }
        return (hashes, flags)
    }

    /// Adds a password to an existing user (`ACL SETUSER user >password`); the others stay valid.
    public func addPassword(_ password: RedisSecret, to user: String) async throws {
        try await self.send(RedisCommand("ACL", "SETUSER", .string(user), .secret(Self.prefixed(">", password))))
    }

    /// Removes one password of a user (`ACL SETUSER user <password`). Open connections stay.
    public func removePassword(_ password: RedisSecret, from user: String) async throws {
        try await self.send(RedisCommand("ACL", "SETUSER", .string(user), .secret(Self.prefixed("<", password))))
    }

    /// Leaves `password` as the user's only one in one atomic step (`resetpass >password`). Open
    /// connections stay authenticated.
    public func keepOnlyPassword(_ password: RedisSecret, of user: String) async throws {
        try await self.send(RedisCommand("ACL", "SETUSER", .string(user), "resetpass", .secret(Self.prefixed(">", password))))
    }

    private static func prefixed(_ prefix: String, _ password: RedisSecret) -> RedisSecret {
        password.withUnsafeBytes { RedisSecret(bytes: Array(prefix.utf8) + $0) }
    }

    /// Whether `password` logs `user` in on a fresh connection to this node (with this node's TLS
    /// settings), which is what a client will do next.
    public func verifyLogin(user: String, password: RedisSecret, name: String = "redis-rotation-verify") async -> Result<Void, RedisAdminError> {
        var configuration = self.configuration
        configuration.username = user
        configuration.password = password
        configuration.name = name
        do {
            let connection = try await RedisConnection.connect(configuration: configuration)
            await connection.close()
            return .success(())
        } catch {
            return .failure(
                RedisAdminError(code: .verificationFailed, message: "\(user) cannot log in to \(self.address) with the new password: \(Self.reason(error))", underlying: error)
            )
        }
    }

    /// Why the administrator may not run `command` (`ACL DRYRUN <admin user> ...`), `nil` when it
    /// may. Throws `serverRefused` when the server cannot tell (`ACL DRYRUN` came with Redis 7).
    public func permissionDenial(for command: [String]) async throws -> String? {
        let user = self.configuration.username ?? "default"
        let reply = try await self.send(RedisCommand("ACL", arguments: ["DRYRUN", .string(user)] + command.map { .string($0) }))
        guard let text = reply.string, text != "OK" else { return nil }
        return text
    }

    // MARK: Persistence

    /// How this node persists ACL changes.
    public func aclPersistence() async throws -> RedisACLPersistence {
        let aclFile = try await self.send(RedisCommand("CONFIG", "GET", "aclfile")).array?.last?.string ?? ""
        let info = try await self.send(RedisCommand("INFO", "server")).string ?? ""
        let configFile = info.split(whereSeparator: \.isNewline)
            .first { $0.hasPrefix("config_file:") }
            .map { String($0.dropFirst("config_file:".count)) } ?? ""
        return RedisACLPersistence.decide(aclFile: aclFile, configFile: configFile)
    }

    /// Whether the node's configuration file has `include` lines: `nil` when it has none configured or
    /// this process cannot read it (the tool runs elsewhere). `CONFIG REWRITE` writes every user into
    /// the main file; users also defined in an included file then exist twice and the server refuses
    /// to start.
    public func configFileIncludes() async throws -> Bool? {
        let info = try await self.send(RedisCommand("INFO", "server")).string ?? ""
        guard let path = info.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix("config_file:") }).map({ String($0.dropFirst("config_file:".count)) }),
            !path.isEmpty, let text = try? String(contentsOfFile: path, encoding: .utf8)
        else { return nil }
        return text.split(whereSeparator: \.isNewline).contains { line in
            line.drop { $0 == " " || $0 == "\t" }.lowercased().hasPrefix("include ")
        }
    }

    /// The user this node authenticates to its primary as (`masteruser`, or `default` when only
    /// `masterauth` is set); `nil` when it authenticates as nobody. Read even on a primary: after a
    /// failover it becomes a replica with the same settings.
    public func replicationUser() async throws -> String? {
        let user = try await self.configValue("masteruser")
        if !user.isEmpty { return user }
        // Only whether it is set; the value is a secret and goes nowhere.
        let authSet = try await !self.configValue("masterauth").isEmpty
        return authSet ? "default" : nil
    }

    /// Writes the node's in-memory ACL (or whole configuration) to disk, so that a restart keeps it.
    public func persist(_ persistence: RedisACLPersistence) async throws {
        do {
            switch persistence {
            case .aclSave: try await self.send(RedisCommand("ACL", "SAVE"))
            case .configRewrite: try await self.send(RedisCommand("CONFIG", "REWRITE"))
            default: return
            }
        } catch let error as RedisAdminError {
            throw RedisAdminError(code: .persistFailed, message: "\(persistence) failed on \(self.address): \(error.message)", underlying: error)
        }
    }

    // MARK: Connections

    /// Every connection of `user` on this node except the administrator's own and replication links
    /// (a replica's link is not a client: killing it breaks replication, and it does not move).
    public func connections(of user: String) async throws -> [RedisClientInfo] {
        let text = try await self.send(RedisCommand("CLIENT", "LIST")).string ?? ""
        let own = self.ownClientID
        return RedisClientInfo.parseList(text).filter { $0.user == user && $0.id != own && !$0.isReplicationLink }
    }

    /// How many connections of `user` are on each credential version (`(none)` for connections whose
    /// name carries no version).
    public func connectionCountsByVersion(of user: String) async throws -> [String: Int] {
        try await self.connections(of: user).reduce(into: [:]) { counts, info in
            counts[info.credentialVersion ?? "(none)", default: 0] += 1
        }
    }

    /// The id the server gave a connection opened now (a fresh administrator connection, closed at
    /// once). Ids only grow, so a connection with a smaller id was opened before this call.
    public func newestClientID() async throws -> Int {
        do {
            let connection = try await RedisConnection.connect(configuration: self.configuration)
            defer { Task { await connection.close() } }
            let id = connection.clientID
            await connection.close()
            if let id { return id }
            return try await self.send(RedisCommand("CLIENT", "ID")).int ?? 0
        } catch let error as RedisError {
            throw RedisAdminError(code: .nodeUnreachable, message: "cannot open a connection to \(self.address): \(Self.reason(error))", underlying: error)
        }
    }

    /// Closes one connection (`CLIENT KILL ID`); `false` when it was already gone.
    @discardableResult
    public func kill(clientID: Int) async throws -> Bool {
        let reply = try await self.send(RedisCommand("CLIENT", "KILL", "ID", .integer(clientID)))
        return (reply.int ?? 0) > 0
    }

    /// Closes every client connection of `user`, one `CLIENT KILL ID` each; returns how many. Not
    /// `CLIENT KILL USER`, which would also close a replica's link authenticated as that user (and
    /// this administrator connection, when it is that user).
    @discardableResult
    public func killConnections(of user: String) async throws -> Int {
        var killed = 0
        for connection in try await self.connections(of: user) where try await self.kill(clientID: connection.id) {
            killed += 1
        }
        return killed
    }

    // MARK: TLS material

    /// Switches the server certificate and key in one `CONFIG SET` (paths as the server sees them).
    public func setServerCertificate(certificateFile: String, keyFile: String) async throws {
        try await self.send(RedisCommand("CONFIG", "SET", "tls-cert-file", .string(certificateFile), "tls-key-file", .string(keyFile)))
    }

    /// Sets the CAs whose client certificates the server accepts (`tls-ca-cert-file`).
    public func setClientCertificateAuthorities(file: String) async throws {
        try await self.send(RedisCommand("CONFIG", "SET", "tls-ca-cert-file", .string(file)))
    }

    /// A configuration parameter's value (`CONFIG GET`), empty when unset.
    public func configValue(_ parameter: String) async throws -> String {
        try await self.send(RedisCommand("CONFIG", "GET", .string(parameter))).array?.last?.string ?? ""
    }

    // MARK: Replication

    /// The replicas the node reports as connected, as `(host, port)`: `slave<n>:ip=...,port=...` of
    /// `INFO replication`, which a replica with replicas of its own (cascading replication) reports
    /// too, unlike `ROLE`. ACLs are not replicated: every one of them needs the same change.
    public func replicas() async throws -> [(host: String, port: Int)] {
        let info = try await self.send(RedisCommand("INFO", "replication")).string ?? ""
        return info.split(whereSeparator: \.isNewline).compactMap { line in
            guard line.hasPrefix("slave"), let colon = line.firstIndex(of: ":"), Int(line[line.index(line.startIndex, offsetBy: 5)..<colon]) != nil else { return nil }
            var fields: [Substring: Substring] = [:]
            for field in line[line.index(after: colon)...].split(separator: ",") {
                guard let equals = field.firstIndex(of: "=") else { continue }
                fields[field[..<equals]] = field[field.index(after: equals)...]
            }
            guard let host = fields["ip"], let port = fields["port"].flatMap({ Int($0) }) else { return nil }
            return (String(host), port)
        }
    }

    /// The other nodes of a Redis Cluster (`CLUSTER NODES`), primaries and replicas, as `(host, port,
    /// flags)`; `nil` when cluster mode is off. ACLs are per node there too.
    public func clusterNodes() async throws -> [(host: String, port: Int, flags: [String])]? {
        try await self.clusterMembers()?.filter { !$0.isMyself }.map { ($0.host, $0.port, $0.flags) }
    }

    /// Every node of the Redis Cluster this node belongs to, itself included, as its `CLUSTER NODES`
    /// lists them; `nil` when cluster mode is off (`cluster_enabled:0`).
    public func clusterMembers() async throws -> [RedisClusterMember]? {
        let info = try await self.send(RedisCommand("INFO", "cluster")).string ?? ""
        guard info.split(whereSeparator: \.isNewline).contains(where: { $0 == "cluster_enabled:1" }) else { return nil }
        let text = try await self.send(RedisCommand("CLUSTER", "NODES")).string ?? ""
        return text.split(whereSeparator: \.isNewline).compactMap { RedisClusterMember(clusterNodesLine: $0) }
    }

    /// The TLS port of each cluster node by id, from `CLUSTER SHARDS` (Redis 7): with TLS, the port
    /// `CLUSTER NODES` shows may be the plain-text one (`tls-cluster no`). Empty when the server has no
    /// `CLUSTER SHARDS` or reports no TLS ports.
    public func clusterTLSPorts() async throws -> [String: Int] {
        let reply: RESPValue
        do {
            reply = try await self.send(RedisCommand("CLUSTER", "SHARDS"))
        } catch let error as RedisAdminError where error.code == .serverRefused {
            return [:]
        }
        guard let topology = try? RedisClusterTopology.fromShards(reply) else { return [:] }
        var ports: [String: Int] = [:]
        for node in topology.nodes + topology.nodesWithoutSlots {
            if let port = node.tlsPort { ports[node.id] = port }
        }
        return ports
    }

    /// The server's `run_id` (`INFO server`): what tells one server reached under two addresses
    /// (`localhost:6380` and `127.0.0.1:6380`) from two servers.
    public func runID() async throws -> String {
        let info = try await self.send(RedisCommand("INFO", "server")).string ?? ""
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("run_id:") {
            return String(line.dropFirst("run_id:".count))
        }
        throw RedisAdminError(code: .unexpectedState, message: "\(self.address) reports no run_id in INFO server")
    }

    /// The primary of a replica (`ROLE` of a replica), `nil` when the node is a primary.
    public func primary() async throws -> (host: String, port: Int)? {
        let role = try await self.send(RedisCommand("ROLE")).array ?? []
        guard role.first?.string == "slave", role.count >= 3, let host = role[1].string, let port = role[2].int else { return nil }
        return (host, port)
    }
}
