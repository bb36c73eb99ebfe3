public import RedisRotation

/// Every node a change must reach: ACL users and passwords are per node (neither replication nor the
/// cluster bus copies them), so a rotation applies and persists on the primary and each replica.
public struct RedisAdminTopology: Sendable {
    /// The primary first, then its replicas.
    public let nodes: [RedisServerAdmin]

    public init(nodes: [RedisServerAdmin]) {
        precondition(!nodes.isEmpty, "a topology has at least one node")
        self.nodes = nodes
    }

    /// `host:port` of every node.
    public var addresses: [String] { self.nodes.map(\.address) }

    /// Connects to the node `configuration` names, to its primary when it is a replica, and to every
    /// replica the primary reports (`ROLE`), all with the same administrator credentials and TLS
    /// settings. Replicas are addressed as the primary sees them (`replica-announce-ip`/`-port`). In a
    /// Redis Cluster, every node `CLUSTER NODES` lists instead (a node marked `fail` is refused).
    ///
    /// - Throws: ``RedisAdminError`` `nodeUnreachable` naming the first node that cannot be reached:
    ///   a rotation must not start while one of them would miss it.
    public static func discover(configuration: RedisConnectionConfiguration) async throws -> RedisAdminTopology {
        var connected: [RedisServerAdmin] = []
        do {
            let first = try await RedisServerAdmin.connect(configuration: configuration)
            connected.append(first)
            if let members = try await first.clusterNodes() {
                // A cluster lists every node, primaries and replicas, itself aside.
                for member in members where !connected.contains(where: { $0.address == "\(member.host):\(member.port)" }) {
                    if member.flags.contains("fail") || member.flags.contains("noaddr") || member.port == 0 {
                        throw RedisAdminError(
                            code: .nodeUnreachable,
                            message: "the cluster node \(member.host):\(member.port) is marked \(member.flags.joined(separator: ",")); ACLs are per node, so nothing was changed"
                        )
                    }
                    var memberConfiguration = configuration
                    (memberConfiguration.host, memberConfiguration.port) = (member.host, member.port)
                    do {
                        connected.append(try await RedisServerAdmin.connect(configuration: memberConfiguration))
                    } catch let error as RedisAdminError {
                        throw RedisAdminError(
                            code: .nodeUnreachable,
                            message: "the cluster node \(member.host):\(member.port) cannot be reached (\(error.message)); ACLs are per node, so nothing was changed",
                            underlying: error
                        )
                    }
                }
                return RedisAdminTopology(nodes: connected)
            }
            var primary = first
            if let address = try await first.primary() {
                var primaryConfiguration = configuration
                (primaryConfiguration.host, primaryConfiguration.port) = (address.host, address.port)
                primary = try await RedisServerAdmin.connect(configuration: primaryConfiguration)
                connected.insert(primary, at: 0)
            }
            for replica in try await primary.replicas() where !connected.contains(where: { $0.address == "\(replica.host):\(replica.port)" }) {
                var replicaConfiguration = configuration
                (replicaConfiguration.host, replicaConfiguration.port) = (replica.host, replica.port)
                do {
                    connected.append(try await RedisServerAdmin.connect(configuration: replicaConfiguration))
                } catch let error as RedisAdminError {
                    throw RedisAdminError(
                        code: .nodeUnreachable,
                        message: "\(primary.address) reports the replica \(replica.host):\(replica.port), which cannot be reached (\(error.message)); ACLs are per node, so nothing was changed",
                        underlying: error
                    )
                }
            }
            return RedisAdminTopology(nodes: connected)
        } catch {
            for node in connected { await node.close() }
            throw error
        }
    }

    /// Closes every administrator connection.
    public func close() async {
        for node in self.nodes { await node.close() }
    }
}
