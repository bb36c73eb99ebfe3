public import RedisRotation

/// Every node a change must reach: ACL users and passwords are per node (neither replication nor the
/// cluster bus copies them), so a rotation applies and persists on the primary and each replica.
public struct RedisAdminTopology: Sendable {
    /// The root primary first, then its replicas, level by level.
    public let nodes: [RedisServerAdmin]

    public init(nodes: [RedisServerAdmin]) {
        precondition(!nodes.isEmpty, "a topology has at least one node")
        self.nodes = nodes
    }

    /// `host:port` of every node.
    public var addresses: [String] { self.nodes.map(\.address) }

    /// How far up a chain of replicas discovery climbs, and how many nodes it connects to at most.
    static let maximumDepth = 8
    static let maximumNodes = 64

    /// Connects to the node `configuration` names, climbs to the root primary when it is a replica
    /// (through replicas of replicas, `ROLE`), and descends to every replica each node reports
    /// (`INFO replication`), all with the same administrator credentials and TLS settings. A replica
    /// that is down is listed by nobody: compare the count with what you expect
    /// (``RedisPasswordRotation/Options/expectedNodeCount``). Replicas are addressed as the primary sees them (`replica-announce-ip`/`-port`). In a
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
            // A replica may itself replicate from a replica (cascading replication): climb to the
            // root, then descend through every node's replicas (each lists only its direct ones).
            var root = first
            for _ in 0..<Self.maximumDepth {
                guard let address = try await root.primary() else { break }
                if let known = connected.first(where: { $0.address == "\(address.host):\(address.port)" }) {
                    root = known
                    break
                }
                var primaryConfiguration = configuration
                (primaryConfiguration.host, primaryConfiguration.port) = (address.host, address.port)
                do {
                    root = try await RedisServerAdmin.connect(configuration: primaryConfiguration)
                } catch let error as RedisAdminError {
                    throw RedisAdminError(
                        code: .nodeUnreachable,
                        message: "\(root.address) replicates from \(address.host):\(address.port), which cannot be reached (\(error.message)); ACLs are per node, so nothing was changed",
                        underlying: error
                    )
                }
                connected.append(root)
            }
            var ordered = [root]
            var index = 0
            while index < ordered.count && ordered.count <= Self.maximumNodes {
                let node = ordered[index]
                index += 1
                for replica in try await node.replicas() where !ordered.contains(where: { $0.address == "\(replica.host):\(replica.port)" }) {
                    if let known = connected.first(where: { $0.address == "\(replica.host):\(replica.port)" }) {
                        ordered.append(known)
                        continue
                    }
                    var replicaConfiguration = configuration
                    (replicaConfiguration.host, replicaConfiguration.port) = (replica.host, replica.port)
                    do {
                        let admin = try await RedisServerAdmin.connect(configuration: replicaConfiguration)
                        connected.append(admin)
                        ordered.append(admin)
                    } catch let error as RedisAdminError {
                        throw RedisAdminError(
                            code: .nodeUnreachable,
                            message: "\(node.address) reports the replica \(replica.host):\(replica.port), which cannot be reached (\(error.message)); ACLs are per node, so nothing was changed",
                            underlying: error
                        )
                    }
                }
            }
            // A node reached on the way but not in the tree (it named a primary that does not list
            // it) still gets the change.
            for node in connected where !ordered.contains(where: { $0 === node }) { ordered.append(node) }
            connected = ordered
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
