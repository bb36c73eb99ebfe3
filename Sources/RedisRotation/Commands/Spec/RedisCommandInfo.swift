/// What the server's own command specification (`COMMAND INFO`, `COMMAND DOCS` of the pinned
/// redis-server, in `spec/`) says about a command: its arity, flags, ACL categories and where its keys
/// are. Generated into ``RedisCommandInfo/all`` by `scripts/command-spec/generate.py`.
///
/// Retries use the flags (a read-only command may be resent), and Redis Cluster routing uses the key
/// specifications: ``keyIndices(in:)`` finds the keys of any invocation, movable keys included.
public struct RedisCommandInfo: Sendable, Hashable {
    /// Upper-cased; a subcommand as `CONFIG GET`.
    public let name: String
    /// The number of arguments including the name (and, for a subcommand, the subcommand): exact when
    /// positive, a minimum when negative (`-2`: at least 2).
    public let arity: Int
    /// `readonly`, `write`, `denyoom`, `admin`, `pubsub`, `noscript`, `blocking`, `loading`, `stale`,
    /// `skip_monitor`, `fast`, `no_auth`, `may_replicate`, `movablekeys`, ...
    public let flags: Set<String>
    /// `@read`, `@write`, `@keyspace`, `@string`, `@dangerous`, ...
    public let aclCategories: Set<String>
    public let keySpecs: [RedisKeySpec]
    /// `string`, `hash`, `list`, `set`, `sorted-set`, `stream`, `geo`, `hyperloglog`, `bitmap`,
    /// `scripting`, `generic`, `server`, `connection`, `pubsub`, `transactions`, `cluster`, `sentinel`.
    public let group: String
    public let summary: String
    /// The server version that introduced it.
    public let since: String
    public let complexity: String?

    public init(
        name: String,
        arity: Int,
        flags: Set<String>,
        aclCategories: Set<String>,
        keySpecs: [RedisKeySpec],
        group: String,
        summary: String,
        since: String,
        complexity: String?
    ) {
        self.name = name
        self.arity = arity
        self.flags = flags
        self.aclCategories = aclCategories
        self.keySpecs = keySpecs
        self.group = group
        self.summary = summary
        self.since = since
        self.complexity = complexity
    }

    public var isReadOnly: Bool { self.flags.contains("readonly") }
    public var isWrite: Bool { self.flags.contains("write") }
    public var isBlocking: Bool { self.flags.contains("blocking") }
    public var isPubSub: Bool { self.flags.contains("pubsub") }
    public var isAdmin: Bool { self.flags.contains("admin") }
    /// Whether the key positions depend on the arguments (`EVAL`'s `numkeys`, `SORT ... STORE`).
    public var hasMovableKeys: Bool { self.flags.contains("movablekeys") }

    /// The specification of command `name` (case-insensitive), or of its subcommand when `name` is a
    /// container (`CONFIG`, `CLIENT`, `XINFO`, ...) and `subcommand` names one.
    public static func lookup(_ name: String, subcommand: String? = nil) -> RedisCommandInfo? {
        if subcommand == nil, let info = Self.byName[name] { return info }
        let upper = name.uppercased()
        if let subcommand, let info = Self.byName["\(upper) \(subcommand.uppercased())"] { return info }
        return Self.byName[upper]
    }

    /// Commands that have subcommands (`CONFIG`, `CLIENT`, `XINFO`, ...).
    static let containers: Set<String> = Set(Self.all.compactMap { $0.name.split(separator: " ").count == 2 ? String($0.name.split(separator: " ")[0]) : nil })

    private static let byName: [String: RedisCommandInfo] = Dictionary(
        Self.all.map { ($0.name, $0) },
        uniquingKeysWith: { first, _ in first }
    )

    /// The indices in `argv` (the name at 0, then the arguments) of the command's keys, in the order of
    /// its key specifications; `nil` when a specification cannot find them (its type is unknown to the
    /// server too, or the arguments do not match it: the server would refuse the command).
    ///
    /// - Parameter argv: The command as the server sees it; only the arguments a specification looks
    ///   at (keywords, key counts) are read.
    public func keyIndices(in argv: [String]) -> [Int]? {
        if self.name == "SORT" || self.name == "SORT_RO" { return Self.sortKeyIndices(in: argv, store: self.name == "SORT") }
        if self.name == "MIGRATE" { return Self.migrateKeyIndices(in: argv) }
        var indices: [Int] = []
        for spec in self.keySpecs {
            switch spec.indices(in: argv) {
            case .some(let found): indices += found
            case .none: return nil
            }
        }
        return indices
    }

    /// `MIGRATE`'s keys, by the server's own rule: the key at 3, unless a `KEYS` option (found after
    /// the fixed arguments, skipping the passwords of `AUTH` and `AUTH2`) lists them instead.
    private static func migrateKeyIndices(in argv: [String]) -> [Int]? {
        guard argv.count > 3 else { return nil }
        var index = 6
        while index < argv.count {
            switch argv[index].uppercased() {
            case "AUTH2" where index + 2 < argv.count: index += 2
            case "AUTH" where index + 1 < argv.count: index += 1
            case "KEYS": return Array((index + 1)..<argv.count)
            default: break
            }
            index += 1
        }
        return [3]
    }

    /// `SORT`'s keys, whose specification is partly unknown to the server too: the sorted key, and the
    /// `STORE` destination wherever it is (the server's own rule: `LIMIT` skips two arguments, `BY` and
    /// `GET` one; the last `STORE` wins). `BY` and `GET` patterns name keys only through the sorted
    /// data, and the server does not report them either.
    private static func sortKeyIndices(in argv: [String], store: Bool) -> [Int]? {
        guard argv.count > 1 else { return nil }
        var indices = [1]
        guard store else { return indices }
        var destination: Int?
        var index = 2
        while index < argv.count {
            switch argv[index].uppercased() {
            case "LIMIT": index += 2
            case "BY", "GET": index += 1
            case "STORE" where index + 1 < argv.count: destination = index + 1
            default: break
            }
            index += 1
        }
        if let destination { indices.append(destination) }
        return indices
    }
}

/// Where a command's keys are, as the server specifies it: where to start looking, then how to find
/// the keys from there (see the Redis documentation on key specifications).
public struct RedisKeySpec: Sendable, Hashable {
    public enum BeginSearch: Sendable, Hashable {
        /// At this argument index.
        case index(Int)
        /// After `keyword`, searched from `startFrom` (backwards from the end when negative).
        case keyword(String, startFrom: Int)
        case unknown
    }

    public enum FindKeys: Sendable, Hashable {
        /// Keys from the start to `lastKey` (relative; `-1` the last argument, `-2` the one before), every
        /// `keyStep`; with `limit` > 1 and `lastKey` -1, only the first 1/`limit` of the remaining
        /// arguments (`XREAD ... STREAMS k1 k2 id1 id2`).
        case range(lastKey: Int, keyStep: Int, limit: Int)
        /// The number of keys is at `keyNumberIndex` (relative to the start); the first key at `firstKey`.
        case keyNumber(keyNumberIndex: Int, firstKey: Int, keyStep: Int)
        case unknown
    }

    public let beginSearch: BeginSearch
    public let findKeys: FindKeys
    /// `RO`, `RW`, `OW`, `RM`, `access`, `update`, `insert`, `delete`, `not_key`, `incomplete`,
    /// `variable_flags`.
    public let flags: Set<String>

    public init(beginSearch: BeginSearch, findKeys: FindKeys, flags: Set<String>) {
        self.beginSearch = beginSearch
        self.findKeys = findKeys
        self.flags = flags
    }

    /// The key indices this specification finds in `argv`: empty when its keyword is absent (an
    /// optional part), `nil` when it cannot be applied.
    func indices(in argv: [String]) -> [Int]? {
        let count = argv.count
        let first: Int
        switch self.beginSearch {
        case .index(let index):
            first = index
        case .keyword(let keyword, let startFrom):
            let forward = startFrom > 0
            var index = forward ? startFrom : count + startFrom
            var found: Int?
            while index >= 1 && index < count {
                if argv[index].caseInsensitiveEquals(keyword) {
                    found = index + 1
                    break
                }
                index += forward ? 1 : -1
            }
            guard let found else { return [] }
            first = found
        case .unknown:
            return nil
        }
        var start = first
        let last: Int
        let step: Int
        switch self.findKeys {
        case .range(let lastKey, let keyStep, let limit):
            if lastKey >= 0 {
                last = first + lastKey
            } else if limit <= 1 {
                last = count + lastKey
            } else {
                last = first + (count - first) / limit + lastKey
            }
            step = keyStep
        case .keyNumber(let keyNumberIndex, let firstKey, let keyStep):
            guard first + keyNumberIndex < count, let number = Int(argv[first + keyNumberIndex]), number >= 0 else { return nil }
            start = first + firstKey
            last = start + number - 1
            step = keyStep
        case .unknown:
            return nil
        }
        guard step > 0 else { return nil }
        var indices: [Int] = []
        var index = start
        while index <= last {
            // Fewer arguments than the specification expects: the server refuses such a command; the keys
            // found so far are what it reports too.
            guard index < count else { break }
            indices.append(index)
            index += step
        }
        return indices
    }
}

extension String {
    fileprivate func caseInsensitiveEquals(_ other: String) -> Bool {
        self.utf8.count == other.utf8.count && self.uppercased() == other.uppercased()
    }
}
