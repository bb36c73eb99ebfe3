/// One thing an administrative procedure did (or found), reported as it happens.
public struct RedisAdminStep: Sendable, Hashable, Codable, CustomStringConvertible {
    /// A short word: `check`, `resume`, `add`, `persist`, `verify`, `publish`, `wait`, `kill`, `remove`,
    /// `set`, `rollback`, `done`.
    public var name: String
    /// The node concerned, `host:port`, if one.
    public var node: String?
    /// What happened, in words; never a secret.
    public var message: String

    public init(name: String, node: String? = nil, message: String) {
        self.name = name
        self.node = node
        self.message = message
    }

    public var description: String { "[\(self.name)]\(self.node.map { " \($0):" } ?? "") \(self.message)" }
}
