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
    /// A server is one node however it is reached: two addresses answering with the same `run_id`
    /// (`localhost` and `127.0.0.1`) are merged, so ``nodes`` counts each server once.
    ///
    /// - Throws: ``RedisAdminError`` `nodeUnreachable` naming the first node that cannot be reached:
    ///   a rotation must not start while one of them would miss it; `unexpectedTopology` when the tree
    ///   is deeper than 8 or larger than 64 nodes (discovery would stop before a node).
    public static func discover(configuration: RedisConnectionConfiguration) async throws -> RedisAdminTopology {
        // Every server reached so far, by run_id: one server is one node, whatever it was called.
        var connected: [(runID: String, node: RedisServerAdmin)] = []
        /// The node at `host:port`: the one already reached when it is the same server (same run_id),
        /// else a new connection. `unreachable` words the error when it cannot be reached.
        func reach(_ host: String, _ port: Int, unreachable: (RedisAdminError) -> String) async throws -> RedisServerAdmin {
            if let known = connected.first(where: { $0.node.address == "\(host):\(port)" }) { return known.node }
            var nodeConfiguration = configuration
            (nodeConfiguration.host, nodeConfiguration.port) = (host, port)
            let admin: RedisServerAdmin
            do {
                admin = try await RedisServerAdmin.connect(configuration: nodeConfiguration)
            } catch let error as RedisAdminError {
                throw RedisAdminError(code: .nodeUnreachable, message: unreachable(error), underlying: error)
            }
            let runID: String
            do {
                runID = try await admin.runID()
            } catch {
                await admin.close()
                throw error
            }
            if let known = connected.first(where: { $0.runID == runID }) {
                await admin.close()
                return known.node
            }
            connected.append((runID, admin))
            return admin
        }
        func tooLarge(_ what: String) -> RedisAdminError {
            RedisAdminError(
                code: .unexpectedTopology,
                message: "discovery stopped at \(what); a node past it would miss the change, so nothing was changed"
            )
        }
        do {
            let first = try await reach(configuration.host, configuration.port) { error in error.message }
            if let members = try await first.clusterNodes() {
                // A cluster lists every node, primaries and replicas, itself aside.
                for member in members {
                    if member.flags.contains("fail") || member.flags.contains("noaddr") || member.port == 0 {
                        throw RedisAdminError(
                            code: .nodeUnreachable,
                            message: "the cluster node \(member.host):\(member.port) is marked \(member.flags.joined(separator: ",")); ACLs are per node, so nothing was changed"
                        )
                    }
                    _ = try await reach(member.host, member.port) { error in
                        "the cluster node \(member.host):\(member.port) cannot be reached (\(error.message)); ACLs are per node, so nothing was changed"
                    }
                    if connected.count > Self.maximumNodes { throw tooLarge("\(Self.maximumNodes) nodes") }
                }
                return RedisAdminTopology(nodes: connected.map(\.node))
            }
            // A replica may itself replicate from a replica (cascading replication): climb to the
            // root, then descend through every node's replicas (each lists only its direct ones).
            var root = first
            var depth = 0
            while let address = try await root.primary() {
                depth += 1
                if depth > Self.maximumDepth { throw tooLarge("a chain of \(Self.maximumDepth) primaries") }
                let reached = connected.count
                root = try await reach(address.host, address.port) { error in
                    "\(root.address) replicates from \(address.host):\(address.port), which cannot be reached (\(error.message)); ACLs are per node, so nothing was changed"
                }
                // A server already reached: a loop of replicas; stop climbing.
                if connected.count == reached { break }
            }
            var ordered = [root]
            var index = 0
            while index < ordered.count {
                let node = ordered[index]
                index += 1
                for replica in try await node.replicas() {
                    let admin = try await reach(replica.host, replica.port) { error in
                        "\(node.address) reports the replica \(replica.host):\(replica.port), which cannot be reached (\(error.message)); ACLs are per node, so nothing was changed"
                    }
                    if !ordered.contains(where: { $0 === admin }) { ordered.append(admin) }
                    if ordered.count > Self.maximumNodes { throw tooLarge("\(Self.maximumNodes) nodes") }
                }
            }
            // A node reached on the way but not in the tree (it named a primary that does not list
            // it) still gets the change.
            for (_, node) in connected where !ordered.contains(where: { $0 === node }) { ordered.append(node) }
            return RedisAdminTopology(nodes: ordered)
        } catch {
            for (_, node) in connected { await node.close() }
            throw error
        }
    }

    /// Closes every administrator connection.
    public func close() async {
        for node in self.nodes { await node.close() }
    }
}
