/// A channel or pattern name as the server knows it: bytes. Swift compares `String`s by Unicode
/// canonical equivalence, so "café" precomposed and decomposed would be one key, while they are two
/// channels on the server; every place that matches, counts or confirms names keys on this instead.
struct PubSubName: Hashable, Sendable, Comparable, ExpressibleByStringLiteral, CustomStringConvertible {
    let bytes: [UInt8]

    init(bytes: some Sequence<UInt8>) {
        self.bytes = Array(bytes)
    }

    /// The name's UTF-8 bytes, as a command argument written from this string sends them.
    init(_ string: String) {
        self.bytes = Array(string.utf8)
    }

    init(stringLiteral value: String) {
        self.init(value)
    }

    /// The bytes as text (invalid UTF-8 is repaired): for the public API's `String` names.
    var string: String { String(decoding: self.bytes, as: UTF8.self) }

    func hasPrefix(_ prefix: PubSubName) -> Bool { self.bytes.starts(with: prefix.bytes) }

    static func < (lhs: PubSubName, rhs: PubSubName) -> Bool { lhs.bytes.lexicographicallyPrecedes(rhs.bytes) }

    /// Sizes only: names are user data.
    var description: String { "\(self.bytes.count) bytes" }
}

extension PubSubStateMachine.Kind {
    /// `names` in the groups one command may carry: shard channels one slot per command (a cluster node
    /// refuses an `SSUBSCRIBE`/`SUNSUBSCRIBE` across slots with `CROSSSLOT`, and one connection may serve
    /// shard channels of several slots of its node), other names all at once. Order kept within a group.
    func commandGroups(_ names: [PubSubName]) -> [[PubSubName]] {
        guard self == .shardChannel, names.count > 1 else { return names.isEmpty ? [] : [names] }
        var groups: [[PubSubName]] = []
        var index: [Int: Int] = [:]
        for name in names {
            let slot = RedisClusterSlot.slot(for: name.bytes)
            if let existing = index[slot] {
                groups[existing].append(name)
            } else {
                index[slot] = groups.count
                groups.append([name])
            }
        }
        return groups
    }
}
