/// Whether a command may be sent again after its connection died before the reply, without asking the
/// caller: derived from the server's specification where it decides (commands flagged `readonly`),
/// plus two documented tables (docs/DECISIONS.md, "Idempotency"). ``RedisCommand/idempotent(_:)``
/// overrides the result either way.
enum RedisCommandIdempotency {
    /// Commands that change nothing although the specification does not flag them `readonly` (they
    /// touch no keys, so the flag does not apply to them).
    static let sideEffectFree: Set<String> = [
        "PING", "ECHO", "TIME", "INFO", "LASTSAVE", "ROLE", "DBSIZE",
        "COMMAND", "COMMAND COUNT", "COMMAND DOCS", "COMMAND INFO", "COMMAND LIST", "COMMAND GETKEYS", "COMMAND GETKEYSANDFLAGS",
        "CLIENT ID", "CLIENT INFO", "CLIENT GETNAME", "CLIENT LIST", "CLIENT TRACKINGINFO", "CLIENT GETREDIR",
        "CONFIG GET", "ACL WHOAMI", "ACL CAT", "ACL LIST", "ACL USERS", "ACL GETUSER", "ACL GENPASS",
        "MEMORY STATS", "MEMORY USAGE", "MEMORY DOCTOR", "MEMORY MALLOC-STATS",
        "SCRIPT EXISTS", "SCRIPT LOAD", "FUNCTION LIST", "FUNCTION DUMP", "FUNCTION STATS",
        "PUBSUB CHANNELS", "PUBSUB NUMSUB", "PUBSUB NUMPAT", "PUBSUB SHARDCHANNELS", "PUBSUB SHARDNUMSUB",
        "SLOWLOG GET", "SLOWLOG LEN", "LATENCY LATEST", "LATENCY HISTORY", "LATENCY DOCTOR", "LATENCY GRAPH", "LATENCY HISTOGRAM",
        "CLUSTER INFO", "CLUSTER NODES", "CLUSTER SLOTS", "CLUSTER SHARDS", "CLUSTER MYID", "CLUSTER KEYSLOT",
        "CLUSTER COUNTKEYSINSLOT", "CLUSTER GETKEYSINSLOT", "CLUSTER LINKS", "CLUSTER REPLICAS", "CLUSTER SLAVES", "MODULE LIST",
    ]

    /// Writes whose second run leaves the data as the first left it (their reply may differ: a resent
    /// `DEL` answers 0 for a key the first attempt deleted). Conditional or relative forms are excluded
    /// below.
    static let idempotentWrites: Set<String> = [
        "SET", "MSET", "HSET", "HMSET", "DEL", "UNLINK", "HDEL", "SADD", "SREM", "ZREM", "PERSIST", "EXPIREAT", "PEXPIREAT",
    ]

    /// Options that make a write's effect depend on what an earlier run did (`NX`, `XX`, `GT`, `LT`), on
    /// when it runs (`EX`, `PX`: relative expiry), or its reply on it (`GET`).
    static let excludingOptions: [String: Set<String>] = [
        "SET": ["GET", "NX", "XX", "EX", "PX"],
        "EXPIREAT": ["NX", "XX", "GT", "LT"],
        "PEXPIREAT": ["NX", "XX", "GT", "LT"],
    ]

    /// The name the specification knows the command by (`CONFIG GET` for a subcommand).
    static func specificationName(_ name: String, arguments: [RedisArgument]) -> String {
        guard RedisCommandInfo.containers.contains(name), let subcommand = arguments.first?.keyword else { return name }
        return "\(name) \(subcommand)"
    }

    /// Whether the command only reads (or changes nothing at all).
    static func isReadOnly(_ specificationName: String) -> Bool {
        RedisCommandInfo.lookup(specificationName)?.isReadOnly == true
            || Self.sideEffectFree.contains(specificationName)
            || specificationName.hasSuffix(" HELP")
    }

    static func isIdempotent(_ specificationName: String, arguments: [RedisArgument]) -> Bool {
        // `XREAD ... $` means "entries after now": a resend would skip an entry whose reply was lost.
        if specificationName == "XREAD", arguments.contains(where: { $0.keyword == "$" }) { return false }
        if Self.isReadOnly(specificationName) { return true }
        guard Self.idempotentWrites.contains(specificationName) else { return false }
        guard let excluded = Self.excludingOptions[specificationName] else { return true }
        return Self.hasNoneOf(excluded, in: arguments)
    }

    /// Whether none of the arguments after the key and the value (or time) spells an option in
    /// `excluded`: any short argument that spells one counts, so an odd value errs on the safe side
    /// (not resent).
    static func hasNoneOf(_ excluded: Set<String>, in arguments: [RedisArgument]) -> Bool {
        !arguments.dropFirst(2).contains { $0.keyword.map(excluded.contains) == true }
    }
}
