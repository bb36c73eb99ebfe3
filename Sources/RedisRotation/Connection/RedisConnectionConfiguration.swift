/// How to reach and authenticate to one Redis server.
///
/// Printing, dumping or reflecting a configuration never shows the password: it is a ``RedisSecret``.
public struct RedisConnectionConfiguration: Sendable {
    /// TLS for a connection: the shared context and the name to verify.
    public struct TLS: Sendable {
        /// The context (trust anchors, client identity, session cache) the connection uses.
        public var context: RedisTLSContext
        /// The DNS name or IP address the server's certificate must carry, also sent as SNI when it is a
        /// DNS name; `nil` uses the connection's ``RedisConnectionConfiguration/host``.
        public var serverName: String?

        public init(context: RedisTLSContext, serverName: String? = nil) {
            self.context = context
            self.serverName = serverName
        }
    }

    /// The server's host name or IP address. Default: `127.0.0.1`.
    public var host: String
    /// The server's TCP port. Default: 6379.
    public var port: Int
    /// The ACL user to authenticate as; `nil` means `default`. Used only with a password.
    public var username: String?
    /// The password; `nil` connects without authenticating.
    public var password: RedisSecret?
    /// The database to `SELECT` after authenticating; `nil` or 0 keeps database 0.
    public var database: Int?
    /// The connection's name on the server (`CLIENT SETNAME`), shown by `CLIENT LIST`. Default: none.
    public var name: String?
    /// How long establishing the TCP connection may take. Default: 5 seconds.
    public var connectTimeout: Duration
    /// How long the handshake (authentication, name, database) may take once connected. Default: 5 seconds.
    public var handshakeTimeout: Duration
    /// How long a command may wait for its reply, unless the call names another deadline.
    /// Default: 5 seconds.
    public var commandTimeout: Duration
    /// Bounds on reply sizes; exceeding one closes the connection with a protocol error.
    public var readerLimits: RESPReaderLimits
    /// TLS settings; `nil` connects over plain TCP. The TLS handshake counts toward `handshakeTimeout`.
    public var tls: TLS?
    /// How many unread messages each ``RedisConnection/subscribe(to:)`` subscription may hold before it
    /// ends with ``RedisError/Code/slowConsumer``. Default: 100,000 messages or 16 MiB of payload.
    public var subscriptionBufferLimits: RedisSubscriptionBufferLimits
    /// Whether the handshake sends `READONLY` (set by ``RedisClusterClient`` for replica reads).
    var readOnly = false

    public init(
        host: String = "127.0.0.1",
        port: Int = 6379,
        username: String? = nil,
        password: RedisSecret? = nil,
        database: Int? = nil,
        name: String? = nil,
        connectTimeout: Duration = .seconds(5),
        handshakeTimeout: Duration = .seconds(5),
        commandTimeout: Duration = .seconds(5),
        readerLimits: RESPReaderLimits = RESPReaderLimits(),
        tls: TLS? = nil,
        subscriptionBufferLimits: RedisSubscriptionBufferLimits = RedisSubscriptionBufferLimits()
    ) {
        self.subscriptionBufferLimits = subscriptionBufferLimits
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.name = name
        self.connectTimeout = connectTimeout
        self.handshakeTimeout = handshakeTimeout
        self.commandTimeout = commandTimeout
        self.readerLimits = readerLimits
        self.tls = tls
    }

    /// The name TLS verifies: the configured server name, else the host.
    var tlsServerName: String { self.tls?.serverName ?? self.host }

    /// Checks what the server would otherwise reject in confusing ways.
    func validate() throws(RedisError) {
        guard (1...65535).contains(self.port) else {
            throw RedisError(code: .invalidArgument, message: "port \(self.port) is not between 1 and 65535")
        }
        if let name = self.name, name.isEmpty || name.contains(where: { $0 == " " || $0.isNewline }) {
            throw RedisError(code: .invalidArgument, message: "a connection name must be non-empty and contain no spaces or newlines")
        }
        if self.tls != nil, self.tlsServerName.isEmpty {
            throw RedisError(code: .tlsInvalidConfiguration, message: "the TLS server name is empty: nothing could be verified")
        }
        if let database = self.database, database < 0 {
            throw RedisError(code: .invalidArgument, message: "database \(database) is negative")
        }
        // One by one, not a loop over an array of them: every connect validates, and the array was an
        // allocation per connect.
        if self.connectTimeout <= .zero { throw Self.notPositive("connectTimeout") }
        if self.handshakeTimeout <= .zero { throw Self.notPositive("handshakeTimeout") }
        if self.commandTimeout <= .zero { throw Self.notPositive("commandTimeout") }
    }

    private static func notPositive(_ label: String) -> RedisError {
        RedisError(code: .invalidArgument, message: "\(label) must be positive")
    }
}
