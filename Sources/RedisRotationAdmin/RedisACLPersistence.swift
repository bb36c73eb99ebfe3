/// How a node keeps its ACL changes across a restart. ACL changes live in memory only until saved:
/// without this, a restart brings back the old passwords while the clients hold only the new one.
public struct RedisACLPersistence: Sendable, Hashable, CustomStringConvertible {
    private enum Base: Hashable, Sendable {
        case aclSave
        case configRewrite
        case none
    }

    private let base: Base
    private init(_ base: Base) { self.base = base }

    /// Users live in an ACL file (`CONFIG GET aclfile` is set): `ACL SAVE` writes it.
    public static let aclSave = RedisACLPersistence(.aclSave)
    /// Users live in the configuration file: `CONFIG REWRITE` writes them there.
    public static let configRewrite = RedisACLPersistence(.configRewrite)
    /// The server has neither an ACL file nor a configuration file: a change is lost on restart.
    public static let none = RedisACLPersistence(.none)

    /// Decides from `CONFIG GET aclfile` and the `config_file` field of `INFO server`.
    public static func decide(aclFile: String, configFile: String) -> RedisACLPersistence {
        if !aclFile.isEmpty { return .aclSave }
        if !configFile.isEmpty { return .configRewrite }
        return .none
    }

    public var description: String {
        switch self.base {
        case .aclSave: return "ACL SAVE"
        case .configRewrite: return "CONFIG REWRITE"
        case .none: return "none"
        }
    }
}
