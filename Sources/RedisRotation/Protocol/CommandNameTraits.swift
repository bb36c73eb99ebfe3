/// What a command's name alone decides about it, found with one dictionary lookup per command.
///
/// `RedisCommand.init` classifies every command it builds: sensitive, read-only, idempotent, what it
/// does to the session. Derived each time from the name sets and the server's specification, that was
/// about twenty set and dictionary lookups of the name per command (a fifth of the client's instructions
/// for a pipelined `GET`, issue 14). The table is built once, from those same derivations, for every
/// name the client knows; only where the arguments decide (a container's subcommand, `SET`'s options,
/// `XREAD`'s `$`, `CLIENT`/`SCRIPT`/`XREAD` for the session) are they looked at, by the same functions
/// as before. A name not in the table takes the full path. `CommandNameTraitsTests` checks the table
/// against the full path for every name in it.
struct CommandNameTraits: Sendable {
    enum Idempotence: Sendable, Equatable {
        case always
        case never
        /// Idempotent unless an argument after the key and the value spells one of these options.
        case unlessOptions(Set<String>)
        /// The subcommand (a container such as `CONFIG`) or another argument decides: the full path.
        case dependsOnArguments
    }

    /// `AUTH`, `HELLO`, `ACL`, `CONFIG`, `MIGRATE`: arguments may be credentials.
    let isSensitiveName: Bool
    /// Meaningful unless `idempotence` is `.dependsOnArguments`.
    let isReadOnly: Bool
    let idempotence: Idempotence
    /// `nil` where the arguments decide (`CLIENT`, `SCRIPT`, `XREAD`, `XREADGROUP`).
    let sessionEffect: SessionEffect?
    /// Whether the name is one of the subscribe family or `RESET` (what the pub/sub reader tracks).
    let isPubSub: Bool

    /// The traits of the upper-cased `name`, by the full derivation (with no arguments where they do
    /// not count).
    init(name: String) {
        self.isSensitiveName = RedisCommand.sensitiveNames.contains(name)
        if RedisCommandInfo.containers.contains(name) || name == "XREAD" {
            self.isReadOnly = false
            self.idempotence = .dependsOnArguments
        } else {
            self.isReadOnly = RedisCommandIdempotency.isReadOnly(name)
            if let excluded = RedisCommandIdempotency.excludingOptions[name], !self.isReadOnly,
                RedisCommandIdempotency.idempotentWrites.contains(name)
            {
                self.idempotence = .unlessOptions(excluded)
            } else {
                self.idempotence = RedisCommandIdempotency.isIdempotent(name, arguments: []) ? .always : .never
            }
        }
        let argumentsDecideSession = Self.sessionByArguments.contains(name)
        self.sessionEffect = argumentsDecideSession ? nil : SessionEffect(name: name, arguments: [])
        self.isPubSub = PubSubStateMachine.Command(name: name, argumentCount: 0) != nil
    }

    /// The commands whose effect on the session depends on their arguments (see `SessionEffect`).
    static let sessionByArguments: Set<String> = ["CLIENT", "SCRIPT", "XREAD", "XREADGROUP"]

    /// Every name the client knows: the specification's commands and containers, and the names of the
    /// client's own tables.
    static let table: [String: CommandNameTraits] = {
        var names = Set<String>()
        for info in RedisCommandInfo.all {
            names.insert(String(info.name.split(separator: " ")[0]))
        }
        names.formUnion(RedisCommandIdempotency.sideEffectFree.map { String($0.split(separator: " ")[0]) })
        names.formUnion(RedisCommandIdempotency.idempotentWrites)
        names.formUnion(SessionEffect.blockingNames)
        names.formUnion(SessionEffect.irreversibleNames)
        names.formUnion(RedisCommand.sensitiveNames)
        names.formUnion(RedisCommand.scriptNames)
        names.formUnion(["MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", "SELECT"])
        names.formUnion(Self.sessionByArguments)
        return Dictionary(uniqueKeysWithValues: names.map { ($0, CommandNameTraits(name: $0)) })
    }()

    /// `name` in upper case; without a copy when it already is (as every helper's name is).
    static func upperCased(_ name: String) -> String {
        for byte in name.utf8 where (byte >= 0x61 && byte <= 0x7A) || byte >= 0x80 {
            return name.uppercased()
        }
        return name
    }
}
