/// One node of a Redis Cluster as the cluster describes it.
public struct RedisClusterNode: Sendable, Hashable, CustomStringConvertible {
    public enum Role: String, Sendable, Hashable {
        case primary
        case replica
    }

    /// The node's 40-character identifier.
    public var id: String
    /// Where clients connect: the announced endpoint (an IP address or, with
    /// `cluster-preferred-endpoint-type hostname`, a name).
    public var endpoint: String
    /// The plain-text port, `nil` when the node serves TLS only.
    public var port: Int?
    /// The TLS port, when the node announces one (`tls-cluster yes`).
    public var tlsPort: Int?
    /// The announced host name, for TLS verification, when there is one.
    public var hostname: String?
    public var role: Role
    /// `online`, `failed` or `loading` (from `CLUSTER SHARDS`); `nil` from `CLUSTER SLOTS`.
    public var health: String?

    public init(id: String, endpoint: String, port: Int?, tlsPort: Int? = nil, hostname: String? = nil, role: Role, health: String? = nil) {
        self.id = id
        self.endpoint = endpoint
        self.port = port
        self.tlsPort = tlsPort
        self.hostname = hostname
        self.role = role
        self.health = health
    }

    public var description: String {
        "\(self.role) \(self.endpoint):\(self.port.map(String.init) ?? "-")\(self.tlsPort.map { " tls \($0)" } ?? "") \(self.id.prefix(8))"
    }
}

/// A primary, its replicas and the slots it serves.
public struct RedisClusterShard: Sendable, Hashable {
    /// The slot ranges, both ends included.
    public var slots: [ClosedRange<Int>]
    public var primary: RedisClusterNode?
    public var replicas: [RedisClusterNode]

    public init(slots: [ClosedRange<Int>], primary: RedisClusterNode?, replicas: [RedisClusterNode]) {
        self.slots = slots
        self.primary = primary
        self.replicas = replicas
    }
}

/// Which shard serves each slot, from `CLUSTER SHARDS` (Redis 7) or `CLUSTER SLOTS` (older servers).
public struct RedisClusterTopology: Sendable, Hashable {
    /// The shards that serve slots, ordered by their first slot.
    public private(set) var shards: [RedisClusterShard]
    /// Nodes of shards that serve no slot (a node just added, a primary emptied by a reshard): no
    /// command goes to them, but a password rotation must reach them too.
    public private(set) var nodesWithoutSlots: [RedisClusterNode]
    /// The index in ``shards`` of each slot's shard; `-1` for a slot nobody serves.
    private var owners: [Int16]

    public init(shards: [RedisClusterShard]) {
        let serving = shards.filter { !$0.slots.isEmpty }.sorted { ($0.slots.map(\.lowerBound).min() ?? 0) < ($1.slots.map(\.lowerBound).min() ?? 0) }
        var owners = [Int16](repeating: -1, count: RedisClusterSlot.count)
        for (index, shard) in serving.enumerated() {
            for range in shard.slots where range.lowerBound >= 0 && range.upperBound < RedisClusterSlot.count {
                for slot in range { owners[slot] = Int16(index) }
            }
        }
        self.shards = serving
        self.nodesWithoutSlots = shards.filter(\.slots.isEmpty).flatMap { ($0.primary.map { [$0] } ?? []) + $0.replicas }
        self.owners = owners
    }

    /// The shard that serves `slot`, or `nil` when no shard does (the cluster is down for it).
    public func shard(forSlot slot: Int) -> RedisClusterShard? {
        guard (0..<RedisClusterSlot.count).contains(slot) else { return nil }
        let owner = Int(self.owners[slot])
        return owner < 0 ? nil : self.shards[owner]
    }

    /// The topology with `host` as the address of nodes that announce none (`""` or `?`): a node that
    /// only sent `CLUSTER MEET`s and was never met does not know its own address, and lists itself so;
    /// `host` is the address of the node that was asked.
    func resolvingUnknownEndpoints(to host: String) -> RedisClusterTopology {
        func resolved(_ node: RedisClusterNode) -> RedisClusterNode {
            var node = node
            if node.endpoint.isEmpty || node.endpoint == "?" { node.endpoint = host }
            return node
        }
        var copy = self
        copy.shards = self.shards.map { RedisClusterShard(slots: $0.slots, primary: $0.primary.map(resolved), replicas: $0.replicas.map(resolved)) }
        copy.nodesWithoutSlots = self.nodesWithoutSlots.map(resolved)
        return copy
    }

    /// Whether every slot is served.
    public var coversAllSlots: Bool { !self.owners.contains(-1) }

    /// Every node of a shard that serves slots, primaries first.
    public var nodes: [RedisClusterNode] {
        self.shards.compactMap(\.primary) + self.shards.flatMap(\.replicas)
    }

    /// Parses a `CLUSTER SHARDS` reply (RESP2: each shard and node is a flat array of names and values).
    public static func fromShards(_ reply: RESPValue) throws(RedisError) -> RedisClusterTopology {
        guard let shardReplies = reply.array else { throw Self.malformed("CLUSTER SHARDS", "not an array") }
        var shards: [RedisClusterShard] = []
        for shardReply in shardReplies {
            let fields = try Self.fields(shardReply, "CLUSTER SHARDS")
            guard let slotValues = fields["slots"]?.array, slotValues.count % 2 == 0 else {
                throw Self.malformed("CLUSTER SHARDS", "a shard without an even list of slots")
            }
            var slots: [ClosedRange<Int>] = []
            var index = 0
            while index < slotValues.count {
                guard let start = slotValues[index].int, let end = slotValues[index + 1].int, 0 <= start, start <= end, end < RedisClusterSlot.count else {
                    throw Self.malformed("CLUSTER SHARDS", "a slot range out of bounds")
                }
                slots.append(start...end)
                index += 2
            }
            var primaries: [RedisClusterNode] = []
            var replicas: [RedisClusterNode] = []
            for nodeReply in fields["nodes"]?.array ?? [] {
                let node = try Self.fields(nodeReply, "CLUSTER SHARDS")
                guard let id = node["id"]?.string, let endpoint = node["endpoint"]?.string ?? node["ip"]?.string, let role = node["role"]?.string else {
                    throw Self.malformed("CLUSTER SHARDS", "a node without id, endpoint or role")
                }
                let parsed = RedisClusterNode(
                    id: id,
                    endpoint: endpoint == "?" ? (node["ip"]?.string ?? endpoint) : endpoint,
                    port: node["port"]?.int,
                    tlsPort: node["tls-port"]?.int,
                    hostname: node["hostname"]?.string.flatMap { $0.isEmpty ? nil : $0 },
                    role: role == "master" ? .primary : .replica,
                    health: node["health"]?.string
                )
                if parsed.role == .primary { primaries.append(parsed) } else { replicas.append(parsed) }
            }
            // Since 7.2 (and in Valkey) a failed former primary stays in its shard, still flagged
            // master, next to the replica that took over: the one that is not failed serves.
            let primary = primaries.first { $0.health != "fail" && $0.health != "failed" } ?? primaries.first
            shards.append(RedisClusterShard(slots: slots, primary: primary, replicas: replicas))
        }
        return RedisClusterTopology(shards: shards)
    }

    /// Parses a `CLUSTER SLOTS` reply: `[start, end, [ip, port, id, {metadata}], [replica...]...]` per
    /// range; ranges served by the same primary are merged into one shard.
    public static func fromSlots(_ reply: RESPValue, tls: Bool = false) throws(RedisError) -> RedisClusterTopology {
        guard let ranges = reply.array else { throw Self.malformed("CLUSTER SLOTS", "not an array") }
        var byPrimary: [String: RedisClusterShard] = [:]
        var order: [String] = []
        for range in ranges {
            guard let parts = range.array, parts.count >= 3, let start = parts[0].int, let end = parts[1].int,
                0 <= start, start <= end, end < RedisClusterSlot.count
            else { throw Self.malformed("CLUSTER SLOTS", "a range without bounds and a primary") }
            var nodes: [RedisClusterNode] = []
            for (offset, nodeReply) in parts.dropFirst(2).enumerated() {
                guard let node = nodeReply.array, node.count >= 3, let endpoint = node[0].string, let port = node[1].int, let id = node[2].string else {
                    throw Self.malformed("CLUSTER SLOTS", "a node without address, port and id")
                }
                let metadata = node.count > 3 ? (try? Self.fields(node[3], "CLUSTER SLOTS")) ?? [:] : [:]
                nodes.append(
                    RedisClusterNode(
                        id: id,
                        endpoint: endpoint,
                        port: tls ? nil : port,
                        tlsPort: tls ? port : nil,
                        hostname: metadata["hostname"]?.string,
                        role: offset == 0 ? .primary : .replica
                    )
                )
            }
            let primary = nodes[0]
            if byPrimary[primary.id] == nil {
                byPrimary[primary.id] = RedisClusterShard(slots: [], primary: primary, replicas: Array(nodes.dropFirst()))
                order.append(primary.id)
            }
            byPrimary[primary.id]!.slots.append(start...end)
        }
        return RedisClusterTopology(shards: order.map { byPrimary[$0]! })
    }

    private static func fields(_ value: RESPValue, _ command: String) throws(RedisError) -> [String: RESPValue] {
        guard let flat = value.array, flat.count % 2 == 0 else { throw Self.malformed(command, "an entry that is not a list of names and values") }
        var result: [String: RESPValue] = [:]
        var index = 0
        while index < flat.count {
            guard let name = flat[index].string else { throw Self.malformed(command, "a field name that is not a string") }
            result[name] = flat[index + 1]
            index += 2
        }
        return result
    }

    private static func malformed(_ command: String, _ reason: String) -> RedisError {
        RedisError(code: .unexpectedReply, message: "\(command) answered \(reason)")
    }
}
