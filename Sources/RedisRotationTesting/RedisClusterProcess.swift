import Foundation
import NIOCore
public import RedisRotation

/// A real Redis Cluster on loopback for tests and the demo: `primaries` primaries with
/// `replicasPerPrimary` replicas each, every node a ``RedisServerProcess`` with the ACL users you ask
/// for, formed with `CLUSTER MEET`, `CLUSTER ADDSLOTSRANGE` and `CLUSTER REPLICATE`, and stopped by its
/// PIDs.
///
/// In open-source Redis, ACL users are per node: each node has its own administrator password (see
/// ``RedisServerProcess/adminPassword``), and the users you pass are created on every node alike.
/// Replicas authenticate to their primary as a `replicator` user (`masteruser`/`masterauth`) that every
/// node has, so that replication survives failovers.
///
/// Prefer ``withCluster(_:_:)``: it stops every node when the body returns or throws.
public final class RedisClusterProcess: Sendable {
    /// How the cluster starts.
    public struct Configuration: Sendable {
        public var primaries: Int
        public var replicasPerPrimary: Int
        /// ACL users on every node, besides the administrator and the replicator.
        public var users: [RedisServerProcess.User]
        /// Extra `redis.conf` lines for every node.
        public var extraConfiguration: [String]
        /// `cluster-node-timeout` in milliseconds: how soon a silent node counts as failed. Default:
        /// 2000, short so that failure tests do not wait long.
        public var nodeTimeoutMilliseconds: Int
        /// TLS everywhere (`tls-cluster yes`, `tls-replication yes`, no plain-text port): each node gets a
        /// certificate for localhost/127.0.0.1 from this authority, usable as server and as client (the
        /// nodes' bus and replication connections present it). `nil`: plain TCP.
        public var tlsAuthority: TestCertificateAuthority?
        /// Whether node `i` announces the host name ``hostname(ofNode:)`` (`cluster-announce-hostname`;
        /// clients still connect to its IP address). With ``tlsAuthority``, its certificate then names
        /// only that host name, no address: a client must verify each node against its own announced
        /// name. Default: no.
        public var announcesHostnames: Bool

        public init(
            primaries: Int = 3,
            replicasPerPrimary: Int = 1,
            users: [RedisServerProcess.User] = [],
            extraConfiguration: [String] = [],
            nodeTimeoutMilliseconds: Int = 2000,
            tlsAuthority: TestCertificateAuthority? = nil,
            announcesHostnames: Bool = false
        ) {
            precondition(primaries >= 1 && replicasPerPrimary >= 0)
            self.primaries = primaries
            self.replicasPerPrimary = replicasPerPrimary
            self.users = users
            self.extraConfiguration = extraConfiguration
            self.nodeTimeoutMilliseconds = nodeTimeoutMilliseconds
            self.tlsAuthority = tlsAuthority
            self.announcesHostnames = announcesHostnames
        }

        /// The host name node `index` announces when ``announcesHostnames`` is set.
        public static func hostname(ofNode index: Int) -> String { "node\(index).redis-cluster.test" }
    }

    /// The nodes: the initial primaries first, then their replicas in order (replica `r` of primary
    /// `p` is at `primaries + p * replicasPerPrimary + r`). Roles change with failovers; ask
    /// ``topology()``.
    public let nodes: [RedisServerProcess]
    /// Each node's cluster identifier, in the order of ``nodes``.
    public let nodeIDs: [String]

    init(nodes: [RedisServerProcess], nodeIDs: [String]) {
        self.nodes = nodes
        self.nodeIDs = nodeIDs
    }

    /// A failure to form the cluster, or a wait that ran out.
    public struct ClusterError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Starts the nodes, forms the cluster and waits until every node reports it healthy.
    public static func start(_ configuration: Configuration = Configuration()) async throws -> RedisClusterProcess {
        let replicatorPassword = RedisSecret("replicator-\(UUID().uuidString)")
        let count = configuration.primaries * (1 + configuration.replicasPerPrimary)
        var nodes: [RedisServerProcess] = []
        do {
            for index in 0..<count {
                let hostname = configuration.announcesHostnames ? Configuration.hostname(ofNode: index) : nil
                let busPort = try RedisServerProcess.freeLoopbackPort()
                let lines = [
                    "cluster-enabled yes",
                    "cluster-config-file nodes.conf",
                    "cluster-port \(busPort)",
                    "cluster-node-timeout \(configuration.nodeTimeoutMilliseconds)",
                    "cluster-require-full-coverage yes",
                    "masteruser replicator",
                    "masterauth \(replicatorPassword.withUnsafeBytes { String(decoding: $0, as: UTF8.self) })",
                ]
                let announced = hostname.map { ["cluster-announce-hostname \($0)"] } ?? []
                let users = configuration.users + [.init(name: "replicator", passwords: [replicatorPassword], rules: "+psync +replconf +ping")]
                var tls: RedisServerProcess.TLS?
                var tlsLines: [String] = []
                if let authority = configuration.tlsAuthority {
                    tls = RedisServerProcess.TLS(
                        // Nodes connect to each other with the certificate they serve with: both usages.
                        certificate: try hostname.map {
                            try authority.issue(commonName: $0, usage: .serverAndClient, dnsNames: [$0], ipAddresses: [])
                        } ?? authority.issue(commonName: "cluster-node", usage: .serverAndClient),
                        clientCertificateAuthorities: [authority.certificate],
                        adminTLS: RedisTLSConfiguration(trustAnchors: [authority.certificate.certificateSource]),
                        adminServerName: hostname
                    )
                    tlsLines = ["tls-cluster yes", "tls-replication yes"]
                }
                nodes.append(
                    try await RedisServerProcess.start(.init(users: users, extraConfiguration: lines + announced + tlsLines + configuration.extraConfiguration, tls: tls))
                )
            }
            let cluster = try await Self.form(nodes: nodes, configuration: configuration)
            try await cluster.waitUntilHealthy(timeout: .seconds(30))
            return cluster
        } catch {
            for node in nodes { await node.stop() }
            throw error
        }
    }

    /// Starts a cluster, runs `body` with it, and stops every node whether `body` returns or throws.
    public static func withCluster<Result>(
        _ configuration: Configuration = Configuration(),
        _ body: (RedisClusterProcess) async throws -> Result
    ) async throws -> Result {
        let cluster = try await Self.start(configuration)
        do {
            let result = try await body(cluster)
            await cluster.stop()
            return result
        } catch {
            await cluster.stop()
            throw error
        }
    }

    /// Stops every node.
    public func stop() async {
        for node in self.nodes { await node.stop() }
    }

    private static func form(nodes: [RedisServerProcess], configuration: Configuration) async throws -> RedisClusterProcess {
        var ids: [String] = []
        var busPorts: [Int] = []
        for node in nodes {
            let admin = try await node.adminConnection()
            ids.append(try await admin.send(RedisCommand("CLUSTER", "MYID"), as: String.self))
            let info = try await admin.send(RedisCommand("CONFIG", "GET", "cluster-port"), as: [String].self)
            busPorts.append(Int(info.last ?? "") ?? node.port + 10000)
            await admin.close()
        }
        let first = try await nodes[0].adminConnection()
        for index in nodes.indices.dropFirst() {
            _ = try await first.send(RedisCommand("CLUSTER", "MEET", "127.0.0.1", .integer(nodes[index].port), .integer(busPorts[index])))
        }
        await first.close()
        // Slots in equal ranges over the primaries.
        let per = RedisClusterSlot.count / configuration.primaries
        for primary in 0..<configuration.primaries {
            let start = primary * per
            let end = primary == configuration.primaries - 1 ? RedisClusterSlot.count - 1 : start + per - 1
            let admin = try await nodes[primary].adminConnection()
            _ = try await admin.send(RedisCommand("CLUSTER", "ADDSLOTSRANGE", .integer(start), .integer(end)))
            await admin.close()
        }
        let cluster = RedisClusterProcess(nodes: nodes, nodeIDs: ids)
        // Every node must know every other before a replica can name its primary.
        try await cluster.waitFor("every node to know all \(nodes.count)", timeout: .seconds(20)) { node in
            let lines = try await node.send(RedisCommand("CLUSTER", "NODES"), as: String.self).split(whereSeparator: \.isNewline)
            return lines.count == nodes.count && !lines.contains { $0.contains("handshake") || $0.contains("noaddr") }
        }
        for primary in 0..<configuration.primaries {
            for replica in 0..<configuration.replicasPerPrimary {
                let index = configuration.primaries + primary * configuration.replicasPerPrimary + replica
                let admin = try await nodes[index].adminConnection()
                _ = try await admin.send(RedisCommand("CLUSTER", "REPLICATE", .string(ids[primary])))
                await admin.close()
            }
        }
        return cluster
    }

    /// Waits (at most `timeout`) until every node says `cluster_state:ok`, every replica's link to its
    /// primary is up, and all nodes report the same topology.
    public func waitUntilHealthy(timeout: Duration = .seconds(30)) async throws {
        try await self.waitFor("the cluster to be healthy", timeout: timeout) { node in
            let info = try await node.send(RedisCommand("CLUSTER", "INFO"), as: String.self)
            guard info.contains("cluster_state:ok") else { return false }
            let replication = try await node.send(RedisCommand("INFO", "replication"), as: String.self)
            return !replication.contains("role:slave") || replication.contains("master_link_status:up")
        }
        let views = try await self.eachNode { node in
            try RedisClusterTopology.fromShards(try await node.send(RedisCommand("CLUSTER", "SHARDS")))
        }
        let summaries = views.map { view in view.shards.map { "\($0.slots) \($0.primary?.id ?? "-") \($0.replicas.map(\.id).sorted())" } }
        guard Set(summaries.map { $0.joined(separator: ";") }).count == 1 else {
            // Gossip may still be spreading a change: one more round.
            try await Task.sleep(for: .milliseconds(200))
            return try await self.waitUntilHealthy(timeout: timeout - .milliseconds(200))
        }
    }

    /// The topology as the first reachable node describes it (`CLUSTER SHARDS`).
    public func topology() async throws -> RedisClusterTopology {
        var lastError: (any Error)?
        for node in self.nodes where node.isRunning {
            do {
                let admin = try await node.adminConnection()
                defer { Task { await admin.close() } }
                let topology = try RedisClusterTopology.fromShards(try await admin.send(RedisCommand("CLUSTER", "SHARDS")))
                await admin.close()
                return topology
            } catch {
                lastError = error
            }
        }
        throw lastError ?? ClusterError(description: "no node is running")
    }

    /// The node process with cluster identifier `id`.
    public func node(id: String) -> RedisServerProcess? {
        self.nodeIDs.firstIndex(of: id).map { self.nodes[$0] }
    }

    /// The node process that serves `slot` as primary now.
    public func primary(forSlot slot: Int) async throws -> RedisServerProcess {
        guard let id = try await self.topology().shard(forSlot: slot)?.primary?.id, let node = self.node(id: id) else {
            throw ClusterError(description: "no primary serves slot \(slot)")
        }
        return node
    }

    /// Promotes the replica `replica` with `CLUSTER FAILOVER` (coordinated, no data lost) and waits
    /// until the cluster is healthy with it as primary.
    public func failover(to replica: RedisServerProcess) async throws {
        let admin = try await replica.adminConnection()
        _ = try await admin.send(RedisCommand("CLUSTER", "FAILOVER"))
        await admin.close()
        try await self.waitFor("the replica on port \(replica.port) to be primary", timeout: .seconds(30), nodes: [replica]) { node in
            try await node.send(RedisCommand("INFO", "replication"), as: String.self).contains("role:master")
        }
        try await self.waitUntilHealthy()
    }

    /// Moves `slots` with their keys from their current primary to `target` (a primary), as
    /// `redis-cli --cluster reshard` does: `SETSLOT IMPORTING`/`MIGRATING`, `MIGRATE` of the keys in
    /// batches, then `SETSLOT NODE` on every primary. Commands on those keys meanwhile see `ASK` and
    /// `MOVED`, which is what a client under test must handle.
    public func migrate(slots: ClosedRange<Int>, to target: RedisServerProcess) async throws {
        guard let targetIndex = self.nodes.firstIndex(where: { $0 === target }) else { throw ClusterError(description: "not a node of this cluster") }
        let targetID = self.nodeIDs[targetIndex]
        let topology = try await self.topology()
        let targetAdmin = try await target.adminConnection()
        defer { Task { await targetAdmin.close() } }
        for slot in slots {
            guard let sourceID = topology.shard(forSlot: slot)?.primary?.id, let source = self.node(id: sourceID) else {
                throw ClusterError(description: "no primary serves slot \(slot)")
            }
            if sourceID == targetID { continue }
            let sourceAdmin = try await source.adminConnection()
            defer { Task { await sourceAdmin.close() } }
            _ = try await targetAdmin.send(RedisCommand("CLUSTER", "SETSLOT", .integer(slot), "IMPORTING", .string(sourceID)))
            _ = try await sourceAdmin.send(RedisCommand("CLUSTER", "SETSLOT", .integer(slot), "MIGRATING", .string(targetID)))
            // Bounded: at most 1,000 rounds of 100 keys.
            for _ in 0..<1000 {
                let keys = try await sourceAdmin.send(RedisCommand("CLUSTER", "GETKEYSINSLOT", .integer(slot), 100), as: [ByteBuffer].self)
                if keys.isEmpty { break }
                let arguments: [RedisArgument] = [
                    "127.0.0.1", .integer(target.port), "", 0, 10_000, "AUTH2", .string(target.adminUsername), .secret(target.adminPassword), "KEYS",
                ] + keys.map { .bytes($0) }
                _ = try await sourceAdmin.send(RedisCommand("MIGRATE", arguments: arguments))
            }
            // The target first, then the source, then everyone else, as redis-cli does.
            _ = try await targetAdmin.send(RedisCommand("CLUSTER", "SETSLOT", .integer(slot), "NODE", .string(targetID)))
            _ = try await sourceAdmin.send(RedisCommand("CLUSTER", "SETSLOT", .integer(slot), "NODE", .string(targetID)))
            await sourceAdmin.close()
        }
        for shard in topology.shards {
            guard let id = shard.primary?.id, id != targetID, let node = self.node(id: id) else { continue }
            let admin = try await node.adminConnection()
            for slot in slots {
                _ = try? await admin.send(RedisCommand("CLUSTER", "SETSLOT", .integer(slot), "NODE", .string(targetID)))
            }
            await admin.close()
        }
        await targetAdmin.close()
        try await self.waitUntilHealthy()
    }

    /// Runs `body` on an administrator connection to each running node.
    private func eachNode<Result>(_ body: (RedisConnection) async throws -> Result) async throws -> [Result] {
        var results: [Result] = []
        for node in self.nodes where node.isRunning {
            let admin = try await node.adminConnection()
            do {
                results.append(try await body(admin))
                await admin.close()
            } catch {
                await admin.close()
                throw error
            }
        }
        return results
    }

    /// Polls `condition` on every running node (or `nodes`) every 50 ms until it holds on all of them,
    /// at most `timeout`.
    private func waitFor(
        _ what: String,
        timeout: Duration,
        nodes: [RedisServerProcess]? = nil,
        _ condition: (RedisConnection) async throws -> Bool
    ) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var lastError: (any Error)?
        while clock.now < deadline {
            var all = true
            for node in (nodes ?? self.nodes) where node.isRunning {
                do {
                    let admin = try await node.adminConnection()
                    let holds = try await condition(admin)
                    await admin.close()
                    if !holds {
                        all = false
                        break
                    }
                } catch {
                    lastError = error
                    all = false
                    break
                }
            }
            if all { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw ClusterError(description: "timed out after \(timeout) waiting for \(what)\(lastError.map { ": \($0)" } ?? "")")
    }
}
