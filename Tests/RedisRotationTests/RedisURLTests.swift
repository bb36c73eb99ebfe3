import Testing

@testable import RedisRotation

@Suite("Redis URLs")
struct RedisURLTests {
    @Test("host, port, database, user, TLS files and options are read; the password never shows")
    func parsing() throws {
        let plain = try RedisURL("redis://cache.internal")
        #expect(plain.configuration.host == "cache.internal" && plain.configuration.port == 6379 && plain.configuration.database == nil)
        #expect(plain.configuration.tls == nil)

        let full = try RedisURL("redis://app:s%40cret%3A1@10.0.0.5:7000/3?name=orders")
        #expect(full.configuration.host == "10.0.0.5" && full.configuration.port == 7000 && full.configuration.database == 3)
        #expect(full.configuration.name == "orders")
        let credentials = try #require(try full.credentials.currentCredentials())
        #expect(credentials.username == "app" && credentials.password == RedisSecret("s@cret:1") && credentials.version == "url")
        #expect(full.description == "redis://app:<redacted>@10.0.0.5:7000/3?name=orders")
        #expect(!"\(full)".contains("cret"))

        let tls = try RedisURL("rediss://app@[::1]/0?password_file=/run/secrets/redis&ca_file=/etc/ca.crt&cert_file=/etc/c.crt&key_file=/etc/c.key&server_name=redis.internal")
        #expect(tls.configuration.host == "::1" && tls.configuration.port == 6380 && tls.configuration.database == 0)
        #expect(tls.configuration.tls?.serverName == "redis.internal")
        #expect("\(tls.credentials)".contains("/run/secrets/redis"))
        #expect(!"\(full.credentials)".contains("cret") && !String(reflecting: full.credentials).contains("cret"))
        #expect(tls.description.hasPrefix("rediss://app@[::1]:6380/0?"))
    }

    @Test("malformed URLs are refused with a reason, never echoing a password")
    func refusals() {
        for (url, reason) in [
            ("http://host", "must start with"),
            ("redis://", "host is missing"),
            ("redis://host:99999", "port"),
            ("redis://host:abc", "port"),
            ("redis://host/x", "database number"),
            ("redis://host?tls=yes", "unknown option tls"),
            ("redis://host?ca_file=/ca.crt", "need a rediss:// URL"),
            ("rediss://host?key_file=/k", "key_file needs cert_file"),
            ("redis://u:p@host?password_file=/f", "either a password or password_file"),
            ("redis://u:pa%zzss@host", "two hex digits"),
            ("redis://[::1:6379", "closing bracket"),
        ] {
            #expect {
                _ = try RedisURL(url)
            } throws: { error in
                guard let error = error as? RedisError else { return false }
                return error.code == .invalidArgument && error.message.contains(reason) && !error.message.contains("pa%zzss")
            }
        }
    }

    @Test("a password with an unencoded ? or / is refused without repeating any of it")
    func unencodedSeparatorInPassword() {
        for url in ["redis://alice:12?tail-of-the-password@127.0.0.1:6379", "redis://alice:12?x=tail@127.0.0.1", "redis://alice:12/tail@127.0.0.1"] {
            let error = #expect(throws: RedisError.self) { try RedisURL(url) }
            #expect(error.map { !$0.message.contains("tail") } == true, "\(error?.message ?? "")")
        }
        // An @ in a password file's path is no password.
        #expect((try? RedisURL("redis://127.0.0.1:6379/0?password_file=/run/secrets/app@prod"))?.passwordFile == "/run/secrets/app@prod")
    }
}
