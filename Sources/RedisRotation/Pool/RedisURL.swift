/// A client configuration and credential source from a URL:
/// `redis://[user[:password]@]host[:port][/database][?options]`, or `rediss://...` for TLS.
///
/// Options (query parameters): `password_file` (the recommended way: a file a secret manager
/// rotates), `ca_file`, `cert_file` and `key_file` (PEM files, watched and reloaded), `server_name`
/// (the name the server certificate must carry), `name` (the connection name prefix). A password in
/// the URL is accepted, but it cannot rotate and sits in whatever holds the URL (environment, process
/// list, shell history): prefer `password_file`. The password never appears in descriptions or errors.
///
/// ```swift
/// let url = try RedisURL("rediss://app@redis.internal:6380/0?password_file=/run/secrets/redis&ca_file=/etc/redis/ca.crt")
/// let client = try RedisClient(configuration: url.configuration, credentials: url.credentials)
/// ```
public struct RedisURL: Sendable, CustomStringConvertible {
    public var configuration: RedisClientConfiguration
    public var credentials: RedisCredentialSource
    /// The ACL user (`default` when the URL names none).
    public let username: String
    /// The `password_file` option, if the URL has one.
    public let passwordFile: String?
    /// The URL with the password replaced by `<redacted>`.
    public let description: String

    public init(_ string: String) throws(RedisError) {
        func invalid(_ reason: String) -> RedisError {
            RedisError(code: .invalidArgument, message: "invalid Redis URL: \(reason)")
        }
        let tls: Bool
        var rest: Substring
        if string.hasPrefix("redis://") {
            (tls, rest) = (false, string.dropFirst("redis://".count))
        } else if string.hasPrefix("rediss://") {
            (tls, rest) = (true, string.dropFirst("rediss://".count))
        } else {
            throw invalid("it must start with redis:// or rediss://")
        }
        // A `?` or `/` left unencoded in a password splits it: the rest of it then reads as a path or a
        // query. When an `@` follows such a split and none precedes it, nothing after the split is
        // repeated in an error.
        let split = rest.firstIndex(where: { $0 == "?" || $0 == "/" })
        let mayHoldPassword = split.map { !rest[..<$0].contains("@") && rest[$0...].contains("@") } ?? false
        var query: Substring = ""
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        var path: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        var username = "default"
        var password: RedisSecret?
        var redactedUserInfo = ""
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userInfo.firstIndex(of: ":") {
                let user = try Self.decode(userInfo[..<colon], what: "user name")
                if !user.isEmpty { username = user }
                password = RedisSecret(try Self.decode(userInfo[userInfo.index(after: colon)...], what: "password"))
                redactedUserInfo = "\(user):<redacted>@"
            } else {
                let user = try Self.decode(userInfo, what: "user name")
                if !user.isEmpty { username = user }
                redactedUserInfo = "\(user)@"
            }
        }
        // Host and port; an IPv6 address is in brackets.
        var host: Substring
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw invalid("an IPv6 address needs its closing bracket") }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty { throw invalid("unexpected text after the address") }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        } else {
            host = rest
        }
        guard !host.isEmpty else { throw invalid("the host is missing") }
        guard rest.hasPrefix("[") || !host.contains(":") else { throw invalid("an IPv6 address goes in brackets: redis://[::1]:6379") }
        var port = tls ? 6380 : 6379
        if let portText {
            guard let value = Int(portText), (1...65535).contains(value) else { throw invalid("the port must be a number from 1 to 65535") }
            port = value
        }
        var database: Int?
        if !path.isEmpty {
            guard let value = Int(path), value >= 0 else { throw invalid("the path must be a database number") }
            database = value
        }
        var options: [String: String] = [:]
        for pair in query.split(separator: "&") where !pair.isEmpty {
            let parts = pair.split(separator: "=", maxSplits: 1)
            let key = try Self.decode(parts[0], what: "option")
            guard ["password_file", "ca_file", "cert_file", "key_file", "server_name", "name"].contains(key) else {
                if mayHoldPassword {
                    throw invalid("an unknown option, and an @ after it: a ?, / or # in a user name or password must be percent-encoded (%3F, %2F, %23)")
                }
                throw invalid("unknown option \(key) (known: password_file, ca_file, cert_file, key_file, server_name, name)")
            }
            options[key] = parts.count == 2 ? try Self.decode(parts[1], what: key) : ""
        }
        if password != nil && options["password_file"] != nil {
            throw invalid("give either a password or password_file, not both")
        }
        var tlsConfiguration: RedisClientConfiguration.TLS?
        if tls {
            var identity: RedisTLSClientIdentity?
            switch (options["cert_file"], options["key_file"]) {
            case (let certificate?, let key?): identity = RedisTLSClientIdentity(certificateChain: .file(certificate), privateKey: .file(key))
            case (let combined?, nil): identity = .combined(.file(combined))
            case (nil, .some): throw invalid("key_file needs cert_file")
            case (nil, nil): identity = nil
            }
            tlsConfiguration = .reloading(
                RedisTLSConfiguration(trustAnchors: options["ca_file"].map { [.file($0)] } ?? [], clientIdentity: identity),
                serverName: options["server_name"]
            )
        } else if ["ca_file", "cert_file", "key_file", "server_name"].contains(where: { options[$0] != nil }) {
            throw invalid("TLS options need a rediss:// URL")
        }
        self.configuration = RedisClientConfiguration(
            host: String(host),
            port: port,
            database: database,
            name: options["name"] ?? "redis-rotation",
            tls: tlsConfiguration
        )
        self.username = username
        self.passwordFile = options["password_file"]
        if let file = options["password_file"] {
            self.credentials = .file(file, username: username)
        } else {
            // A URL's password cannot rotate: version "url".
            self.credentials = .fixed(RedisCredentials(username: username, password: password ?? RedisSecret(""), version: "url"))
        }
        let scheme = tls ? "rediss" : "redis"
        let hostText = host.contains(":") ? "[\(host)]" : String(host)
        self.description = "\(scheme)://\(redactedUserInfo)\(hostText):\(port)\(database.map { "/\($0)" } ?? "")\(query.isEmpty ? "" : "?\(query)")"
    }

    /// Percent-decodes a URL component.
    private static func decode(_ text: Substring, what: String) throws(RedisError) -> String {
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(Self.hexValue), let low = iterator.next().flatMap(Self.hexValue) else {
                throw RedisError(code: .invalidArgument, message: "invalid Redis URL: a % in the \(what) must be followed by two hex digits")
            }
            bytes.append(high << 4 | low)
        }
        guard let decoded = String(validating: bytes, as: UTF8.self) else {
            throw RedisError(code: .invalidArgument, message: "invalid Redis URL: the \(what) is not UTF-8 once decoded")
        }
        return decoded
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
