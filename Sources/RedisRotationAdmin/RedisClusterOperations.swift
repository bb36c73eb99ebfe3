public import RedisRotation

/// What an operator does to a Redis Cluster besides rotating: promoting a replica (`CLUSTER FAILOVER`)
/// and moving slots with their keys between primaries (as `redis-cli --cluster reshard` does), through
/// the administrator connections of a discovered ``RedisAdminTopology``. Used by
/// `redis-rotation loadtest --cluster` and `demo --cluster` to do both under live traffic.
///
/// The administrator user must exist with the same password on every node (ACLs are per node), and
/// needs `CLUSTER`, `INFO`, `MIGRATE` and the keys (`~*`) of the slots it moves.
public struct RedisClusterOperations: Sendable {
    /// Every node, with the administrator connection that reaches it.
    public let topology: RedisAdminTopology
    /// Each node's cluster identifier (`CLUSTER MYID`), in the order of the topology's nodes.
    public let nodeIDs: [String]

    private init(topology: RedisAdminTopology, nodeIDs: [String]) {
        self.topology = topology
        self.nodeIDs = nodeIDs
    }

    /// Asks every node of `topology` for its cluster identifier.
    ///
    /// - Throws: ``RedisAdminError`` when a node refuses `CLUSTER MYID` (cluster mode off, or no right).
    public init(topology: RedisAdminTopology) async throws {
        var ids: [String] = []
        for node in topology.nodes {
            guard let id = try await node.send(RedisCommand("CLUSTER", "MYID")).string, !id.isEmpty else {
                throw RedisAdminError(code: .unexpectedState, message: "\(node.address) gave no cluster node id")
            }
            ids.append(id)
        }
        self.init(topology: topology, nodeIDs: ids)
    }

    /// Discovers the cluster from the node `configuration` names (``RedisAdminTopology/discover(configuration:)``).
    /// Close it with ``close()``.
    public static func connect(configuration: RedisConnectionConfiguration) async throws -> RedisClusterOperations {
        let topology = try await RedisAdminTopology.discover(configuration: configuration)
        do {
            return try await RedisClusterOperations(topology: topology)
        } catch {
            await topology.close()
            throw error
        }
    }

    /// Closes every administrator connection.
    public func close() async {
        await self.topology.close()
    }

    /// The administrator connection of the node with cluster identifier `id`.
    public func admin(id: String) -> RedisServerAdmin? {
        self.nodeIDs.firstIndex(of: id).map { self.topology.nodes[$0] }
    }

    /// The shards as the first node that answers describes them (`CLUSTER SHARDS`).
    public func shards() async throws -> RedisClusterTopology {
        var lastError: (any Error)?
        for node in self.topology.nodes {
            do {
                return try RedisClusterTopology.fromShards(try await node.send(RedisCommand("CLUSTER", "SHARDS")))
            } catch {
                lastError = error
            }
        }
        throw lastError ?? RedisAdminError(code: .nodeUnreachable, message: "no node of the cluster answered")
    }

    // MARK: Failover

    /// Promotes a replica of the first shard (in slot order) that has one online: `CLUSTER FAILOVER`
    /// sent to the replica (coordinated: the primary stops taking writes until the replica caught up,
    /// so nothing acknowledged is lost), then waits until every node shows it as the shard's primary.
    ///
    /// - Returns: The addresses of the former primary and of the promoted replica.
    /// - Throws: ``RedisAdminError`` `unexpectedTopology` when no shard has an online replica;
    ///   `unexpectedState` when the promotion is not seen everywhere within `timeout`.
    @discardableResult
    public func failoverSomeShard(timeout: Duration = .seconds(30)) async throws -> (from: String, to: String) {
        let shards = try await self.shards()
        for shard in shards.shards.sorted(by: { ($0.slots.first?.lowerBound ?? 0) < ($1.slots.first?.lowerBound ?? 0) }) {
            guard let primary = shard.primary, let replica = shard.replicas.first(where: { $0.health == nil || $0.health == "online" }),
                let replicaAdmin = self.admin(id: replica.id)
            else { continue }
            try await self.failover(to: replica.id, timeout: timeout)
            return (self.admin(id: primary.id)?.address ?? primary.description, replicaAdmin.address)
        }
        throw RedisAdminError(code: .unexpectedTopology, message: "no shard has an online replica to promote")
    }

    /// Promotes the replica with cluster identifier `replicaID` (`CLUSTER FAILOVER` sent to it) and waits
    /// until every node reports it as its shard's primary and `cluster_state:ok`, at most `timeout`.
    public func failover(to replicaID: String, timeout: Duration = .seconds(30)) async throws {
        guard let replica = self.admin(id: replicaID) else {
            throw RedisAdminError(code: .unexpectedTopology, message: "no node of the cluster has the id \(replicaID)")
        }
        try await replica.send(RedisCommand("CLUSTER", "FAILOVER"))
        try await self.waitEverywhere("\(replica.address) to be primary on every node", timeout: timeout) { view in
            view.shards.contains { $0.primary?.id == replicaID }
        }
    }

    // MARK: Slot migration

    /// Moves `count` slots from the primary that serves the most slots to the one that serves the
    /// fewest (the last `count` slots of the former's last range), with ``migrate(slots:to:timeout:)``.
    ///
    /// - Returns: The slots moved and the addresses of the source and target primaries.
    @discardableResult
    public func migrateSomeSlots(count: Int, timeout: Duration = .seconds(60)) async throws -> (slots: ClosedRange<Int>, from: String, to: String) {
        precondition(count >= 1)
        let shards = try await self.shards().shards.filter { $0.primary != nil }
        func size(_ shard: RedisClusterShard) -> Int { shard.slots.reduce(0) { $0 + $1.count } }
        guard shards.count >= 2, let source = shards.max(by: { size($0) < size($1) }),
            let target = shards.filter({ $0.primary?.id != source.primary?.id }).min(by: { size($0) < size($1) }),
            let range = source.slots.last(where: { $0.count >= count }), let sourceID = source.primary?.id, let targetID = target.primary?.id
        else {
            throw RedisAdminError(code: .unexpectedTopology, message: "no two primaries with \(count) contiguous slots to move between")
        }
        let slots = (range.upperBound - count + 1)...range.upperBound
        try await self.migrate(slots: slots, to: targetID, timeout: timeout)
        return (slots, self.admin(id: sourceID)?.address ?? sourceID, self.admin(id: targetID)?.address ?? targetID)
    }

    /// Moves `slots` with their keys to the primary `targetID`, as `redis-cli --cluster reshard` does:
    /// per slot `SETSLOT IMPORTING` on the target and `MIGRATING` on the source, `MIGRATE` of its keys in
    /// batches of 100 (authenticated as this administrator), then `SETSLOT NODE` on the target, the source
    /// and every other primary. Meanwhile clients see `ASK` for the slot's new keys and `MOVED`
    /// afterwards. Waits until every node assigns the slots to the target, at most `timeout`.
    public func migrate(slots: ClosedRange<Int>, to targetID: String, timeout: Duration = .seconds(60)) async throws {
        guard let target = self.admin(id: targetID) else {
            throw RedisAdminError(code: .unexpectedTopology, message: "no node of the cluster has the id \(targetID)")
        }
        let before = try await self.shards()
        guard before.shards.contains(where: { $0.primary?.id == targetID }) else {
            throw RedisAdminError(code: .unexpectedTopology, message: "\(target.address) is not a primary")
        }
        var authentication: [RedisArgument] = []
        if let password = target.configuration.password {
            authentication = ["AUTH2", .string(target.configuration.username ?? "default"), .secret(password)]
        }
        for slot in slots {
            guard let sourceID = before.shard(forSlot: slot)?.primary?.id else {
                throw RedisAdminError(code: .unexpectedTopology, message: "no primary serves slot \(slot)")
            }
            if sourceID == targetID { continue }
            guard let source = self.admin(id: sourceID) else {
                throw RedisAdminError(code: .unexpectedTopology, message: "the primary \(sourceID) of slot \(slot) was not discovered")
            }
            try await target.send(RedisCommand("CLUSTER", "SETSLOT", .integer(slot), "IMPORTING", .string(sourceID)))
            try await source.send(RedisCommand("CLUSTER", "SETSLOT", .integer(slot), "MIGRATING", .string(targetID)))
            // While the slot is migrating, the source takes no new keys in it (they are sent to the
            // target with ASK): once it lists none, none will appear. Bounded: 10,000 rounds of 100.
            var emptied = false
            for _ in 0..<10_000 {
                let keys = try await source.send(RedisCommand("CLUSTER", "GETKEYSINSLOT", .integer(slot), 100)).array ?? []
                if keys.isEmpty {
                    emptied = true
                    break
                }
                let names: [RedisArgument] = keys.compactMap { key in
                    if case .bulkString(let bytes) = key { return .bytes(bytes) }
                    return nil
                }
                let arguments: [RedisArgument] =
                    [.string(target.configuration.host), .integer(target.configuration.port), "", 0, 10_000] + authentication + ["KEYS"] + names
                try await source.send(RedisCommand("MIGRATE", arguments: arguments))
            }
            guard emptied else {
                throw RedisAdminError(code: .unexpectedState, message: "slot \(slot) still had keys on \(source.address) after 1,000,000 were moved")
            }
            // The target first, then the source, as redis-cli does; the other primaries below.
            try await target.send(RedisCommand("CLUSTER", "SETSLOT", .integer(slot), "NODE", .string(targetID)))
            try await source.send(RedisCommand("CLUSTER", "SETSLOT", .integer(slot), "NODE", .string(targetID)))
        }
        for shard in before.shards {
            guard let id = shard.primary?.id, id != targetID, let node = self.admin(id: id) else { continue }
            for slot in slots {
                try await node.send(RedisCommand("CLUSTER", "SETSLOT", .integer(slot), "NODE", .string(targetID)))
            }
        }
        try await self.waitEverywhere("every node to assign slots \(slots) to \(target.address)", timeout: timeout) { view in
            view.shard(forSlot: slots.lowerBound)?.primary?.id == targetID && view.shard(forSlot: slots.upperBound)?.primary?.id == targetID
        }
    }

    /// Polls every node every 50 ms until each says `cluster_state:ok` and its `CLUSTER SHARDS` view
    /// satisfies `condition`, at most `timeout`.
    private func waitEverywhere(_ what: String, timeout: Duration, _ condition: (RedisClusterTopology) -> Bool) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var lastProblem = "no answer yet"
        while clock.now < deadline {
            var all = true
            for node in self.topology.nodes {
                do {
                    let info = try await node.send(RedisCommand("CLUSTER", "INFO")).string ?? ""
                    guard info.contains("cluster_state:ok") else {
                        lastProblem = "\(node.address) says the cluster is not ok"
                        all = false
                        break
                    }
                    guard condition(try RedisClusterTopology.fromShards(try await node.send(RedisCommand("CLUSTER", "SHARDS")))) else {
                        lastProblem = "\(node.address) does not see it yet"
                        all = false
                        break
                    }
                } catch {
                    lastProblem = "\(node.address): \(error)"
                    all = false
                    break
                }
            }
            if all { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw RedisAdminError(code: .unexpectedState, message: "timed out after \(timeout) waiting for \(what) (\(lastProblem))")
    }
}
