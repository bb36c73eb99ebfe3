public import RedisRotation

/// Every node a change must reach: ACL users and passwords are per node (neither replication nor the
/// cluster bus copies them), so a rotation applies and persists on the primary and each replica.
public struct RedisAdminTopology: Sendable {
    /// The root primary first, then its replicas, level by level.
    public let nodes: [RedisServerAdmin]
    /// In a Redis Cluster found by ``discoverCluster(configuration:)``, each node's `CLUSTER NODES`
    /// entry by its address (``RedisServerAdmin/address``); empty otherwise.
    public let clusterMembers: [String: RedisClusterMember]

    public init(nodes: [RedisServerAdmin], clusterMembers: [String: RedisClusterMember] = [:]) {
        precondition(!nodes.isEmpty, "a topology has at least one node")
        self.nodes = nodes
        self.clusterMembers = clusterMembers
    }

    /// Whether these are the nodes of a Redis Cluster.
    public var isCluster: Bool { !self.clusterMembers.isEmpty }

    /// `host:port` of every node.
    public var addresses: [String] { self.nodes.map(\.address) }

    /// How far up a chain of replicas discovery climbs, and how many nodes it connects to at most.
    static let maximumDepth = 8
    static let maximumNodes = 64

    /// Connects to the node `configuration` names, climbs to the root primary when it is a replica
    /// (through replicas of replicas, `ROLE`), and descends to every replica each node reports
    /// (`INFO replication`), all with the same administrator credentials and TLS settings. A replica
    /// that is down is listed by nobody: compare the count with what you expect
    /// (``RedisPasswordRotation/Options/expectedNodeCount``). Replicas are addressed as the primary sees
    /// them (`replica-announce-ip`/`-port`). A node in cluster mode is handed to
    /// ``discoverCluster(configuration:)``, with its checks.
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
            if try await first.clusterMembers() != nil {
                for (_, node) in connected { await node.close() }
                connected = []
                return try await Self.discoverCluster(configuration: configuration)
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

    /// Every node of the Redis Cluster that the node `configuration` names belongs to, as its
    /// `CLUSTER NODES` lists them (primaries and replicas, itself included), each reached at its
    /// announced address with the same administrator credentials and TLS settings. With TLS, each node's
    /// certificate is verified against its announced hostname (`cluster-announce-hostname`), else its
    /// announced IP address (`serverName` of `configuration` is for the first node only), on the TLS
    /// port `CLUSTER SHARDS` reports when it differs from the one `CLUSTER NODES` shows.
    ///
    /// Every node must be usable: one marked `fail`, `fail?`, `handshake` or `noaddr`, one that cannot
    /// be reached, or one whose own `CLUSTER NODES` lists other nodes than the first one's refuses the
    /// whole discovery: ACLs are per node, and a node left out would keep the old password. Nodes come
    /// shard by shard: each primary, then its replicas.
    ///
    /// - Throws: ``RedisAdminError`` `unexpectedTopology` when the node is not in cluster mode or the
    ///   nodes disagree or one is marked failed; `nodeUnreachable` naming a node that cannot be reached.
    public static func discoverCluster(configuration: RedisConnectionConfiguration) async throws -> RedisAdminTopology {
        let seed = try await RedisServerAdmin.connect(configuration: configuration)
        let members: [RedisClusterMember]
        var tlsPorts: [String: Int] = [:]
        do {
            guard let listed = try await seed.clusterMembers() else {
                throw RedisAdminError(
                    code: .unexpectedTopology,
                    message: "\(seed.address) is not in cluster mode (cluster_enabled:0); nothing was changed. Leave out --cluster for a standalone server and its replicas"
                )
            }
            members = listed
            if configuration.tls != nil { tlsPorts = try await seed.clusterTLSPorts() }
        } catch {
            await seed.close()
            throw error
        }
        await seed.close()
        for member in members {
            if let reason = member.unusableReason {
                throw RedisAdminError(
                    code: .unexpectedTopology,
                    message: "the cluster node \(member.address) is \(reason); ACLs are per node and it would miss the change, so nothing was changed. Bring it back (or remove it with CLUSTER FORGET), then run again"
                )
            }
        }
        if members.count > Self.maximumNodes {
            throw RedisAdminError(code: .unexpectedTopology, message: "the cluster has \(members.count) nodes, more than \(Self.maximumNodes); nothing was changed")
        }
        // Shard by shard: each primary (by address), then its replicas.
        let primaries = members.filter(\.isPrimary).sorted { $0.address < $1.address }
        var ordered: [RedisClusterMember] = []
        for primary in primaries {
            ordered.append(primary)
            ordered += members.filter { $0.primaryID == primary.id }.sorted { $0.address < $1.address }
        }
        ordered += members.filter { member in !ordered.contains { $0.id == member.id } }

        var reached: [RedisServerAdmin] = []
        var byAddress: [String: RedisClusterMember] = [:]
        do {
            let expected = Set(members.map(\.id))
            for member in ordered {
                let admin: RedisServerAdmin
                do {
                    admin = try await RedisServerAdmin.connect(configuration: Self.configuration(of: member, from: configuration, tlsPorts: tlsPorts))
                } catch let error as RedisAdminError {
                    throw RedisAdminError(
                        code: .nodeUnreachable,
                        message: "the cluster node \(member.address) cannot be reached (\(error.message)); ACLs are per node, so nothing was changed",
                        underlying: error
                    )
                }
                reached.append(admin)
                byAddress[admin.address] = member
                // Every node must see the same cluster: a node the first one does not know yet (or
                // one it lost) would otherwise be missed.
                let seen = try await admin.clusterMembers() ?? []
                if Set(seen.map(\.id)) != expected {
                    throw RedisAdminError(
                        code: .unexpectedTopology,
                        message: "\(admin.address) lists \(seen.count) cluster node(s), \(configuration.host):\(configuration.port) lists \(members.count): the nodes do not agree on the cluster, so one could miss the change. Nothing was changed; run again once CLUSTER NODES agrees"
                    )
                }
                if let failing = seen.first(where: { $0.unusableReason != nil }) {
                    throw RedisAdminError(
                        code: .unexpectedTopology,
                        message: "\(admin.address) sees the cluster node \(failing.address) \(failing.unusableReason ?? ""); it would miss the change, so nothing was changed"
                    )
                }
            }
        } catch {
            for node in reached { await node.close() }
            throw error
        }
        return RedisAdminTopology(nodes: reached, clusterMembers: byAddress)
    }

    /// For a cluster: checks that no node joined or left since discovery, as every node's
    /// `CLUSTER NODES` lists them now (a node added during a rotation would keep only the old password
    /// while the others lose it). Does nothing for a standalone server and its replicas.
    ///
    /// - Throws: ``RedisAdminError`` `unexpectedTopology` naming the nodes that joined or left.
    public func checkClusterMembership() async throws {
        guard self.isCluster else { return }
        let known = Set(self.clusterMembers.values.map(\.id))
        var joined: [String: String] = [:]
        var left: Set<String> = []
        for node in self.nodes {
            guard let seen = try await node.clusterMembers() else { continue }
            for member in seen where !known.contains(member.id) { joined[member.id] = member.address }
            left.formUnion(known.subtracting(seen.map(\.id)))
        }
        guard joined.isEmpty && left.isEmpty else {
            let leftAddresses = self.clusterMembers.values.filter { left.contains($0.id) }.map(\.address).sorted()
            var changes: [String] = []
            if !joined.isEmpty { changes.append("joined: \(joined.values.sorted().joined(separator: ", "))") }
            if !leftAddresses.isEmpty { changes.append("left: \(leftAddresses.joined(separator: ", "))") }
            throw RedisAdminError(
                code: .unexpectedTopology,
                message: "the cluster changed during the rotation (\(changes.joined(separator: "; "))): ACLs are per node, so run the rotation again to cover every node"
            )
        }
    }

    /// How the administrator reaches `member`: `configuration` with the member's announced address,
    /// its TLS port from `tlsPorts` (``RedisServerAdmin/clusterTLSPorts()``) when listed, and, with TLS,
    /// its certificate verified against its announced hostname, else its announced IP address.
    public static func configuration(
        of member: RedisClusterMember,
        from configuration: RedisConnectionConfiguration,
        tlsPorts: [String: Int] = [:]
    ) -> RedisConnectionConfiguration {
        var node = configuration
        node.host = member.host
        node.port = configuration.tls == nil ? member.port : tlsPorts[member.id] ?? member.port
        node.tls?.serverName = member.hostname
        return node
    }

    /// Closes every administrator connection.
    public func close() async {
        for node in self.nodes { await node.close() }
    }
}
