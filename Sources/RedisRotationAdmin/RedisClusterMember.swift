/// One node of a Redis Cluster as a line of `CLUSTER NODES` describes it:
/// `<id> <ip:port@cport[,hostname]> <flags> <primary id|-> <ping> <pong> <epoch> <link> <slot>...`.
public struct RedisClusterMember: Sendable, Hashable, CustomStringConvertible {
    /// The node's cluster identifier.
    public var id: String
    /// The announced address (`cluster-announce-ip`, else the address the bus saw).
    public var host: String
    /// The announced client port (with `tls-cluster yes` on Redis 7.0, the TLS port).
    public var port: Int
    /// The announced hostname (`cluster-announce-hostname`), when set.
    public var hostname: String?
    /// `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, `noaddr`, ...
    public var flags: [String]
    /// The primary a replica replicates (`nil` for a primary).
    public var primaryID: String?
    /// How many slots the node serves (0 for a replica).
    public var slotCount: Int

    public init(id: String, host: String, port: Int, hostname: String? = nil, flags: [String], primaryID: String? = nil, slotCount: Int = 0) {
        self.id = id
        self.host = host
        self.port = port
        self.hostname = hostname
        self.flags = flags
        self.primaryID = primaryID
        self.slotCount = slotCount
    }

    /// Parses one line of `CLUSTER NODES`; `nil` for a line that is not one.
    public init?<Line: StringProtocol>(clusterNodesLine line: Line) {
        let fields = String(line).split(separator: " ")
        guard fields.count >= 8 else { return nil }
        let addressAndHostname = fields[1].split(separator: "," as Character, maxSplits: 1, omittingEmptySubsequences: false)
        let address = addressAndHostname[0].split(separator: "@").first ?? ""
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else { return nil }
        self.id = String(fields[0])
        self.host = String(address[..<colon])
        self.port = port
        self.hostname = addressAndHostname.count > 1 && !addressAndHostname[1].isEmpty ? String(addressAndHostname[1]) : nil
        self.flags = fields[2].split(separator: ",").map(String.init)
        self.primaryID = fields[3] == "-" ? nil : String(fields[3])
        var slots = 0
        for range in fields.dropFirst(8) where !range.hasPrefix("[") {
            // `0-5460`, or one slot; `[slot->-id]` marks a migration in progress, not an owned slot.
            let bounds = range.split(separator: "-").compactMap { Int($0) }
            if bounds.count == 2 { slots += bounds[1] - bounds[0] + 1 } else if bounds.count == 1 { slots += 1 }
        }
        self.slotCount = slots
    }

    /// Whether this is the node that answered.
    public var isMyself: Bool { self.flags.contains("myself") }
    /// Whether the node is a primary (`master`).
    public var isPrimary: Bool { self.flags.contains("master") }
    /// `host:port` as announced.
    public var address: String { "\(self.host):\(self.port)" }

    /// Why the node cannot take a change now (`fail`, `fail?`, `handshake`, `noaddr`, no address),
    /// `nil` when it can.
    public var unusableReason: String? {
        let bad = self.flags.filter { ["fail", "fail?", "handshake", "noaddr"].contains($0) }
        if !bad.isEmpty { return "marked \(bad.joined(separator: ","))" }
        if self.host.isEmpty || self.port == 0 { return "without an announced address" }
        return nil
    }

    /// `primary, 5461 slot(s)` or `replica of <primary id>`.
    public var roleDescription: String {
        self.isPrimary ? "primary, \(self.slotCount) slot(s)" : "replica of \(self.primaryID ?? "?")"
    }

    public var description: String { "\(self.address) (\(self.roleDescription))" }
}
