/// One entry of `CLIENT LIST`: a connection as the server sees it.
public struct RedisClientInfo: Sendable, Hashable, CustomStringConvertible {
    /// The server's connection id (`CLIENT KILL ID` takes it).
    public var id: Int
    /// The peer address, `ip:port`.
    public var address: String
    /// The connection name (`CLIENT SETNAME`), empty when unnamed.
    public var name: String
    /// The ACL user the connection is authenticated as.
    public var user: String
    /// Seconds since the connection opened.
    public var ageSeconds: Int
    /// The `flags` field (`N` normal, `S` a replica's link, `M` the link to the primary, ...).
    public var flags: String

    public init(id: Int, address: String, name: String, user: String, ageSeconds: Int, flags: String = "N") {
        self.id = id
        self.address = address
        self.name = name
        self.user = user
        self.ageSeconds = ageSeconds
        self.flags = flags
    }

    /// A replication link (flags `S` or `M`), not a client.
    public var isReplicationLink: Bool { self.flags.contains("S") || self.flags.contains("M") }

    /// The credential version in a RedisRotation name (`<name>@<version>`, a probe's
    /// `<name>@<version>-probe`, or a subscriber's `<name>@<version>-sub`); `nil` for any other name,
    /// including none.
    public var credentialVersion: String? {
        guard let at = self.name.lastIndex(of: "@") else { return nil }
        var version = self.name[self.name.index(after: at)...]
        for suffix in ["-probe", "-sub"] where version.hasSuffix(suffix) { version = version.dropLast(suffix.count) }
        return version.isEmpty ? nil : String(version)
    }

    /// `id=12 addr=127.0.0.1:50514 name=app@v1 age=3s`, or `name=(none)`.
    public var description: String {
        "id=\(self.id) addr=\(self.address) name=\(self.name.isEmpty ? "(none)" : self.name) age=\(self.ageSeconds)s"
    }

    /// Parses the reply of `CLIENT LIST`.
    public static func parseList(_ text: String) -> [RedisClientInfo] {
        text.split(whereSeparator: \.isNewline).compactMap { line in
            var fields: [Substring: Substring] = [:]
            for field in line.split(separator: " ") {
                guard let equals = field.firstIndex(of: "=") else { continue }
                fields[field[..<equals]] = field[field.index(after: equals)...]
            }
            guard let id = fields["id"].flatMap({ Int($0) }) else { return nil }
            return RedisClientInfo(
                id: id,
                address: fields["addr"].map(String.init) ?? "?",
                name: fields["name"].map(String.init) ?? "",
                user: fields["user"].map(String.init) ?? "",
                ageSeconds: fields["age"].flatMap { Int($0) } ?? 0,
                flags: fields["flags"].map(String.init) ?? ""
            )
        }
    }
}
