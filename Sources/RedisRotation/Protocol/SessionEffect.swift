/// What a command does to the state its connection carries on the server: the things that would leak
/// into the next lease if a pooled connection were handed on without undoing them.
enum SessionEffect: Hashable, Sendable {
    /// Nothing beyond the command itself.
    case none
    /// `MULTI`: commands are queued until `EXEC` or `DISCARD`.
    case beginsTransaction
    /// `EXEC` or `DISCARD`: ends a transaction and any `WATCH`.
    case endsTransaction
    /// `WATCH`.
    case watches
    /// `UNWATCH`.
    case unwatches
    /// `SELECT`: later commands go to another database.
    case selectsDatabase
    /// `CLIENT SETNAME`: the name operators read versions from.
    case renames
    /// Blocks until data arrives (`BLPOP`, `XREAD ... BLOCK`, `WAIT`): a caller that stops waiting must
    /// not leave it running, or the element it takes reaches nobody.
    case blocks
    /// Changes the session in a way the client does not undo (identity, protocol, subscriptions,
    /// monitoring, reply mode): the connection is closed rather than handed on. Carries the command's
    /// name for error messages.
    case irreversible(String)

    /// Commands that block the connection until data arrives or their timeout passes.
    static let blockingNames: Set<String> = [
        "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP", "WAIT", "WAITAOF",
    ]

    /// Commands after which the client cannot restore the session it had.
    static let irreversibleNames: Set<String> = [
        "AUTH", "HELLO", "RESET", "QUIT", "MONITOR", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE",
        "PUNSUBSCRIBE", "SUNSUBSCRIBE", "READONLY", "READWRITE", "SYNC", "PSYNC", "REPLCONF",
    ]

    /// `CLIENT` subcommands after which the client cannot restore the session.
    private static let irreversibleClientSubcommands: Set<String> = ["REPLY", "TRACKING", "NO-EVICT", "NO-TOUCH"]

    /// Classifies a command from its upper-cased name and its arguments. Arguments are looked at only
    /// for `CLIENT` and `SCRIPT` (the subcommand) and `XREAD`/`XREADGROUP` (`BLOCK`): no other argument
    /// is copied.
    init(name: String, arguments: [RedisArgument]) {
        let keywords = (name == "CLIENT" || name == "SCRIPT" || name == "XREAD" || name == "XREADGROUP") ? arguments.map(\.keyword) : []
        self.init(name: name, keywords: keywords)
    }

    /// Classifies a command from its upper-cased name and the upper-cased text of its short arguments
    /// (`nil` for arguments that are not short text).
    init(name: String, keywords: [String?]) {
        switch name {
        case "MULTI": self = .beginsTransaction
        case "EXEC", "DISCARD": self = .endsTransaction
        case "WATCH": self = .watches
        case "UNWATCH": self = .unwatches
        case "SELECT": self = .selectsDatabase
        case "XREAD", "XREADGROUP":
            self = BlockDuration.blockOptionIndex(name: name, keywords: keywords) != nil ? .blocks : .none
        case "SCRIPT":
            // SCRIPT DEBUG YES|SYNC turns the connection's next EVAL into a debugging session (SYNC
            // blocks the whole server): nothing to hand on to the next lease.
            self = (keywords.first ?? nil) == "DEBUG" ? .irreversible("SCRIPT DEBUG") : .none
        case "CLIENT":
            switch keywords.first ?? nil {
            case "SETNAME": self = .renames
            case let subcommand? where Self.irreversibleClientSubcommands.contains(subcommand):
                self = .irreversible("CLIENT \(subcommand)")
            default: self = .none
            }
        default:
            if Self.blockingNames.contains(name) {
                self = .blocks
            } else if Self.irreversibleNames.contains(name) {
                self = .irreversible(name)
            } else {
                self = .none
            }
        }
    }

    /// Whether the command changes session state, so that it has no place on a pooled connection
    /// outside ``RedisClient/withConnection(_:)``.
    var changesSession: Bool {
        switch self {
        case .none, .blocks: return false
        default: return true
        }
    }
}
