public import Tracing
/// How a ``RedisClient`` reaches its server, sizes its pool, and rotates credentials.
public struct RedisClientConfiguration: Sendable {
    /// TLS for the pool: a fixed context, or files that are watched and hot-reloaded.
    public struct TLS: Sendable {
        enum Mode: Sendable {
            case fixed(RedisTLSContext)
            case reloading(RedisTLSConfiguration, pollInterval: Duration, debounce: Duration)
        }

        let mode: Mode
        /// The DNS name or IP address the server's certificate must carry; `nil` uses the host.
        public var serverName: String?
        /// With reloading: connections of an older TLS generation are replaced one after another over
        /// this window after a reload. Default: 60 seconds.
        public var rolloverWindow: Duration

        /// A fixed context, shared by every connection.
        public init(context: RedisTLSContext, serverName: String? = nil) {
            self.mode = .fixed(context)
            self.serverName = serverName
            self.rolloverWindow = .seconds(60)
        }

        /// TLS material from files (`.file` sources in `configuration`), watched (directory watch, poll
        /// every `pollInterval`, debounce) and reloaded: each valid change becomes a new context
        /// generation used by new connections at once and by existing ones after a jittered roll-over;
        /// an invalid change is rejected with an event and the last good generation stays.
        public static func reloading(
            _ configuration: RedisTLSConfiguration,
            serverName: String? = nil,
            pollInterval: Duration = .seconds(30),
            debounce: Duration = .milliseconds(100),
            rolloverWindow: Duration = .seconds(60)
        ) -> TLS {
            var tls = TLS(mode: .reloading(configuration, pollInterval: pollInterval, debounce: debounce), serverName: serverName)
            tls.rolloverWindow = rolloverWindow
            return tls
        }

        private init(mode: Mode, serverName: String?) {
            self.mode = mode
            self.serverName = serverName
            self.rolloverWindow = .seconds(60)
        }
    }

    /// Expiry warnings and replacement ahead of certificate expiry.
    public struct Expiry: Sendable, Hashable {
        /// Warn when this little time is left (and once expired). Default: 30, 7 and 1 days.
        public var warningThresholds: [Duration]
        /// Replace a connection this long before its client or server certificate expires. Default: 1 hour.
        public var replaceConnectionsBeforeCertificateExpiry: Duration

        public init(
            warningThresholds: [Duration] = [.seconds(30 * 86400), .seconds(7 * 86400), .seconds(86400)],
            replaceConnectionsBeforeCertificateExpiry: Duration = .seconds(3600)
        ) {
            self.warningThresholds = warningThresholds
            self.replaceConnectionsBeforeCertificateExpiry = replaceConnectionsBeforeCertificateExpiry
        }
    }

    /// Pool sizing and connection lifetimes.
    public struct Pool: Sendable, Hashable {
        /// Connections kept open even when idle. Default: 1.
        public var minimumConnections: Int
        /// Connections open at most. Default: 16.
        public var maximumConnections: Int
        /// Connection handshakes in progress at most: a pool killed at once reconnects a few at a time.
        /// Default: 4.
        public var maximumConcurrentHandshakes: Int
        /// Idle connections above the minimum close after this long. Default: 60 seconds.
        public var idleTimeout: Duration
        /// Connections are replaced after this age, shortened at random by up to
        /// `maximumConnectionAgeJitter` of it; `nil` keeps them. Default: 30 minutes.
        public var maximumConnectionAge: Duration?
        /// See `maximumConnectionAge`. Default: 0.2.
        public var maximumConnectionAgeJitter: Double
        /// How long a command waits for a free connection. Default: 5 seconds.
        public var leaseTimeout: Duration
        /// First and largest pause between connection attempts after failures (decorrelated jitter).
        /// Defaults: 20 ms and 5 seconds.
        public var reconnectBackoffBase: Duration
        public var reconnectBackoffCap: Duration
        /// Idle connections are checked with `PING` after this long unused; `nil` never. Default: 30 s.
        public var healthCheckInterval: Duration?
        /// Ordinary commands (those that leave no state on the connection and do not block) share pooled
        /// connections, pipelined with other callers' commands; at most this many are in flight on one
        /// connection. One connection fills up to this before the next takes any, so that commands are
        /// pipelined (many replies per read) and idle connections stay free for exclusive use. Transactions, blocking
        /// commands and ``RedisClient/withConnection(_:)`` hold a connection of their own. Default: 32.
        public var maximumSharedCommandsPerConnection: Int

        public init(
            minimumConnections: Int = 1,
            maximumConnections: Int = 16,
            maximumConcurrentHandshakes: Int = 4,
            idleTimeout: Duration = .seconds(60),
            maximumConnectionAge: Duration? = .seconds(30 * 60),
            maximumConnectionAgeJitter: Double = 0.2,
            leaseTimeout: Duration = .seconds(5),
            reconnectBackoffBase: Duration = .milliseconds(20),
            reconnectBackoffCap: Duration = .seconds(5),
            healthCheckInterval: Duration? = .seconds(30),
            maximumSharedCommandsPerConnection: Int = 32
        ) {
            precondition(maximumConnections >= 1 && minimumConnections >= 0 && minimumConnections <= maximumConnections)
            precondition(maximumConcurrentHandshakes >= 1)
            precondition(maximumSharedCommandsPerConnection >= 1)
            precondition((0...1).contains(maximumConnectionAgeJitter))
            self.minimumConnections = minimumConnections
            self.maximumConnections = maximumConnections
            self.maximumConcurrentHandshakes = maximumConcurrentHandshakes
            self.idleTimeout = idleTimeout
            self.maximumConnectionAge = maximumConnectionAge
            self.maximumConnectionAgeJitter = maximumConnectionAgeJitter
            self.leaseTimeout = leaseTimeout
            self.reconnectBackoffBase = reconnectBackoffBase
            self.reconnectBackoffCap = reconnectBackoffCap
            self.healthCheckInterval = healthCheckInterval
            self.maximumSharedCommandsPerConnection = maximumSharedCommandsPerConnection
        }
    }

    /// Credential rotation.
    public struct Rotation: Sendable, Hashable {
        /// First and largest pause between probes of a pending credential. Defaults: 250 ms, 30 s.
        public var probeBackoffBase: Duration
        public var probeBackoffCap: Duration
        /// Probes of one pending credential before giving up until it changes (or a reload). Default: 12.
        public var maximumProbeAttempts: Int
        /// How long the previous credential stays a candidate after a promotion. Default: 10 minutes.
        public var previousGracePeriod: Duration

        public init(
            probeBackoffBase: Duration = .milliseconds(250),
            probeBackoffCap: Duration = .seconds(30),
            maximumProbeAttempts: Int = 12,
            previousGracePeriod: Duration = .seconds(600)
        ) {
            self.probeBackoffBase = probeBackoffBase
            self.probeBackoffCap = probeBackoffCap
            self.maximumProbeAttempts = maximumProbeAttempts
            self.previousGracePeriod = previousGracePeriod
        }
    }

    /// The server's host name or IP address. Default: `127.0.0.1`.
    public var host: String
    /// The server's port. Default: 6379.
    public var port: Int
    /// The database to `SELECT`; `nil` keeps 0.
    public var database: Int?
    /// The prefix of connection names: each connection is named `<name>@<credential version>` on the
    /// server (`CLIENT LIST`), so an operator sees which password every connection uses. Default:
    /// `redis-rotation`.
    public var name: String
    /// TLS; `nil` for plain TCP.
    public var tls: TLS?
    /// Expiry warnings and early replacement of connections whose certificates expire.
    public var expiry: Expiry
    /// Deadlines for establishing a connection, its handshake, and each command.
    public var connectTimeout: Duration
    public var handshakeTimeout: Duration
    public var commandTimeout: Duration
    /// How many times a command is tried when connections die under it (idempotent commands, and any
    /// command that was never written). Default: 3.
    public var maximumCommandAttempts: Int
    /// Bounds on reply sizes.
    public var readerLimits: RESPReaderLimits
    public var pool: Pool
    public var rotation: Rotation
    /// The `client` label of this client's metrics. Default: the connection name prefix.
    public var metricsLabel: String?
    /// Where the client's spans go (one per command, pipeline and transaction: `db.system` redis,
    /// `db.operation`, `server.address`, `server.port`, `redis.credential_version`; never arguments or
    /// values). Default: the process's `InstrumentationSystem.tracer` (a no-op until bootstrapped).
    public var tracer: (any Tracer)?
    /// How many unread messages each subscription made with ``RedisClient/subscribe(to:)`` may hold;
    /// beyond that messages are dropped and a ``RedisSubscriptionEvent/gap(from:to:)`` says so once the
    /// reader has caught up by half. Default: 100,000 messages or 16 MiB of payload.
    public var subscriptionBufferLimits: RedisSubscriptionBufferLimits
    /// Whether every connection sends `READONLY` after authenticating: set by ``RedisClusterClient`` when
    /// replicas serve reads (``RedisClusterConfiguration/reads``).
    var readOnly = false
    /// Whether leases fail at once while the server cannot be reached (see the pool's configuration):
    /// set by ``RedisClusterClient``, which retries elsewhere in the cluster.
    var failsLeasesWhenUnreachable = false

    public init(
        host: String = "127.0.0.1",
        port: Int = 6379,
        database: Int? = nil,
        name: String = "redis-rotation",
        tls: TLS? = nil,
        connectTimeout: Duration = .seconds(5),
        handshakeTimeout: Duration = .seconds(5),
        commandTimeout: Duration = .seconds(5),
        maximumCommandAttempts: Int = 3,
        readerLimits: RESPReaderLimits = RESPReaderLimits(),
        pool: Pool = Pool(),
        rotation: Rotation = Rotation(),
        expiry: Expiry = Expiry(),
        metricsLabel: String? = nil,
        tracer: (any Tracer)? = nil,
        subscriptionBufferLimits: RedisSubscriptionBufferLimits = RedisSubscriptionBufferLimits()
    ) {
        self.subscriptionBufferLimits = subscriptionBufferLimits
        precondition(maximumCommandAttempts >= 1)
        self.host = host
        self.port = port
        self.database = database
        self.name = name
        self.tls = tls
        self.connectTimeout = connectTimeout
        self.handshakeTimeout = handshakeTimeout
        self.commandTimeout = commandTimeout
        self.maximumCommandAttempts = maximumCommandAttempts
        self.readerLimits = readerLimits
        self.pool = pool
        self.rotation = rotation
        self.expiry = expiry
        self.metricsLabel = metricsLabel
        self.tracer = tracer
    }

    /// The configuration of one connection authenticated with `credentials`, over TLS with `context`.
    func connectionConfiguration(
        for credentials: RedisCredentials,
        tlsContext: RedisTLSContext?,
        suffix: String = ""
    ) -> RedisConnectionConfiguration {
        var configuration = RedisConnectionConfiguration(
            host: self.host,
            port: self.port,
            username: credentials.username,
            password: credentials.password,
            database: self.database,
            name: self.connectionName(version: credentials.version) + suffix,
            connectTimeout: self.connectTimeout,
            handshakeTimeout: self.handshakeTimeout,
            commandTimeout: self.commandTimeout,
            readerLimits: self.readerLimits,
            tls: tlsContext.map { RedisConnectionConfiguration.TLS(context: $0, serverName: self.tls?.serverName) },
            subscriptionBufferLimits: self.subscriptionBufferLimits
        )
        configuration.readOnly = self.readOnly
        return configuration
    }

    func connectionName(version: String) -> String {
        "\(self.name)@\(version)"
    }
}
