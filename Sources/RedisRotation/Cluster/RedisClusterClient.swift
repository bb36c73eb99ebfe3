public import Logging
public import NIOCore
import NIOPosix
public import ServiceLifecycle
import Synchronization

/// How a ``RedisClusterClient`` finds the cluster and configures the pool of each node.
public struct RedisClusterConfiguration: Sendable {
    /// A node's address.
    public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        public var description: String { "\(self.host):\(self.port)" }
    }

    /// Where read-only commands go: the slot's primary, or its replicas.
    public struct ReadRouting: Sendable, Hashable, CustomStringConvertible {
        enum Base: Hashable { case primary, replicas }
        let base: Base

        /// Every command goes to the primary of its slot, so reads see every acknowledged write. The
        /// default.
        public static let primary = ReadRouting(base: .primary)
        /// Read-only commands (by the command table: `GET`, `HGETALL`, `EXISTS`, ...) go to the replicas
        /// of their slot's shard in turn, every connection having sent `READONLY`; to the primary when
        /// the shard has no online replica, and for the rest of a command's attempts once a replica
        /// failed it. Replication is asynchronous: a read may not see the latest acknowledged writes.
        public static let replicas = ReadRouting(base: .replicas)

        public var description: String { self.base == .primary ? "primary" : "replicas" }
    }

    /// Nodes to ask for the topology first; any node of the cluster will do.
    public var seeds: [Endpoint]
    /// The configuration of every node's pool: its `host` and `port` are replaced by the node's, the
    /// rest (name, TLS, pool size, timeouts, rotation) applies to each node alike.
    public var node: RedisClientConfiguration
    /// How many `MOVED` or `ASK` redirections one command follows before it fails. Default: 5.
    public var maximumRedirects: Int
    /// The shortest time between two topology refreshes asked for by redirections or failures (a
    /// resharding answers many commands with `MOVED` at once). Default: 100 ms.
    public var minimumRefreshInterval: Duration
    /// How often the topology is refreshed without a reason. Default: 30 seconds.
    public var refreshInterval: Duration
    /// Where read-only commands go. Default: ``ReadRouting/primary``.
    public var reads: ReadRouting

    public init(
        seeds: [Endpoint],
        node: RedisClientConfiguration,
        maximumRedirects: Int = 5,
        minimumRefreshInterval: Duration = .milliseconds(100),
        refreshInterval: Duration = .seconds(30),
        reads: ReadRouting = .primary
    ) {
        precondition(!seeds.isEmpty, "a cluster client needs at least one seed node")
        self.seeds = seeds
        self.node = node
        self.maximumRedirects = maximumRedirects
        self.minimumRefreshInterval = minimumRefreshInterval
        self.refreshInterval = refreshInterval
        self.reads = reads
    }
}

/// A client for Redis Cluster: discovers the topology from seed nodes (`CLUSTER SHARDS`), keeps one
/// rotation-aware ``RedisClient`` pool per node, and sends each command to the primary that serves its
/// keys' slot, following `MOVED` (refreshing the topology) and `ASK` (`ASKING`, then the command, once).
///
/// Like ``RedisClient`` it is a `Service`: it works only while ``run()`` runs. Each node's pool runs the
/// same rotation machinery as a single-node client (probing, promotion and re-authentication per node,
/// since ACLs are per node and differ while a rotation moves through the cluster).
///
/// Commands about the whole keyspace answer for the cluster: `DBSIZE` sums every primary's, `KEYS`
/// joins them, `RANDOMKEY` asks primaries in random order, `FLUSHALL`/`FLUSHDB` reach every primary, and
/// ``scan(matching:type:count:)`` visits every primary in turn (a raw `SCAN`, whose cursor is one
/// node's, is refused). Scripts and functions (`SCRIPT LOAD`, `SCRIPT FLUSH`, `FUNCTION LOAD`, ...) go
/// to every primary.
public final class RedisClusterClient: Service, RedisCommandExecutor, Sendable {
    typealias Endpoint = RedisClusterConfiguration.Endpoint

    private struct Pool {
        var client: RedisClient
        var task: Task<Void, Never>?
        /// The name the node's certificate was verified against (TLS only).
        var serverName: String?
    }

    private struct State {
        var topology: RedisClusterTopology?
        var pools: [Endpoint: Pool] = [:]
        var topologyWaiters: [Int: CheckedContinuation<RedisClusterTopology, any Error>] = [:]
        var nextWaiter = 0
        var lastRefresh: ContinuousClock.Instant?
        var lastRefreshError: String?
        var running = false
        var shutDown = false
        /// Nodes whose last command failed as unreachable: until one succeeds, an attempt there gets at
        /// most a second, so a dead node cannot take a command's whole deadline.
        var suspects: Set<Endpoint> = []
        /// Slots a `MOVED` reply placed elsewhere since the last topology: followed at once by every
        /// command, so a reshard costs one redirection per slot rather than one per command until the
        /// refresh. Cleared by each new topology.
        var movedSlots: [Int: Endpoint] = [:]
    }

    public let configuration: RedisClusterConfiguration
    /// The credential source, read and watched once for every node's pool.
    private let credentials: SharedCredentialFeed
    private let eventLoopGroup: any EventLoopGroup
    let logger: Logger
    private let state = Mutex(State())
    private let redirections = Atomic<Int>(0)
    /// Each node's latest account of itself (`CLUSTER NODES`), shared by every subscription on it.
    let nodeReports = Mutex<[Endpoint: NodeReportEntry]>([:])
    /// Turns replica reads take across a shard's replicas.
    private let replicaTurn = Atomic<Int>(0)
    private let askRedirections = Atomic<Int>(0)
    /// Reads a replica answered "missing", confirmed by the primary.
    private let replicaReadsConfirmed = Atomic<Int>(0)
    /// Reads a replica could not serve (an error, a timeout), served by the primary.
    private let replicaReadsFailedOver = Atomic<Int>(0)
    private let refreshRequests: AsyncStream<Void>
    private let refreshContinuation: AsyncStream<Void>.Continuation

    /// Commands about the whole keyspace: each primary answers for its own keys.
    static let wholeKeyspaceCommands: Set<String> = ["DBSIZE", "KEYS", "SCAN", "RANDOMKEY", "FLUSHALL", "FLUSHDB"]
    /// Why `command` is not sent as it is (in a pipeline or transaction, or `SCAN`, whose cursor belongs
    /// to one node): one node's answer would pass for the cluster's.
    static func wholeKeyspaceRefusal(_ command: RedisCommand) -> RedisError? {
        guard Self.wholeKeyspaceCommands.contains(command.name) else { return nil }
        let instead = command.name == "SCAN" ? "use scan(matching:type:count:), which visits every primary" : "send it on its own (the cluster client asks every primary) or ask each primary through primaryClients()"
        return RedisError(
            code: .invalidArgument,
            message: "\(command.name) answers for one node's keys in a cluster: \(instead); nothing was sent"
        )
    }

    /// The pause before attempt `failures + 1` after a node failure or a retryable refusal.
    static func retryPause(after failures: Int) -> Duration {
        .milliseconds(min(500, 25 << min(failures, 5)))
    }

    /// Commands that change what every primary must hold alike (scripts and functions).
    static let everyPrimaryCommands: Set<String> = [
        "SCRIPT LOAD", "SCRIPT FLUSH", "FUNCTION LOAD", "FUNCTION DELETE", "FUNCTION FLUSH", "FUNCTION RESTORE",
    ]

    /// Creates a cluster client. Nothing connects until ``run()`` runs.
    ///
    /// - Throws: ``RedisError`` when the credential source cannot give credentials now.
    public init(
        configuration: RedisClusterConfiguration,
        credentials: RedisCredentialSource,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "RedisRotation", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws {
        if let database = configuration.node.database, database != 0 {
            throw RedisError(code: .invalidArgument, message: "Redis Cluster has only database 0, and node.database is \(database)")
        }
        self.configuration = configuration
        // Fails fast on credentials, as RedisClient does.
        self.credentials = try SharedCredentialFeed(source: credentials)
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        (self.refreshRequests, self.refreshContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        // Fails fast on the rest of the node configuration (TLS files), as RedisClient does.
        var probe = configuration.node
        probe.host = configuration.seeds[0].host
        probe.port = configuration.seeds[0].port
        _ = try RedisClient(configuration: probe, credentials: .fixed(RedisCredentials(username: "probe", password: RedisSecret(""), version: "probe")), eventLoopGroup: eventLoopGroup, logger: logger)
    }

    /// Runs the node pools and keeps the topology fresh, until cancelled or shut down gracefully.
    public func run() async throws {
        let pending = self.state.withLock { state -> [Endpoint] in
            precondition(!state.running && !state.shutDown, "RedisClusterClient.run() may be called once")
            state.running = true
            return Array(state.pools.keys)
        }
        for endpoint in pending { self.startPool(endpoint) }
        await withDiscardingTaskGroup { group in
            group.addTask { await self.credentials.run() }
            group.addTask { await self.refreshLoop() }
            self.refreshContinuation.yield()
            let graceful = await waitForShutdownSignal()
            self.finishShutdown(graceful: graceful)
            group.cancelAll()
        }
        // The pools drain (a graceful shutdown) or close; cancelling `run()` meanwhile closes them at once.
        let tasks = self.state.withLock { state in state.pools.values.compactMap(\.task) }
        await withTaskCancellationHandler {
            for task in tasks { await task.value }
        } onCancel: {
            for task in tasks { task.cancel() }
        }
    }

    /// Stops routing and the node pools. `graceful` (a `ServiceGroup`'s shutdown): each node's pool lets
    /// the commands already sent get their replies, for at most the command timeout, as a
    /// ``RedisClient`` does; otherwise (the task was cancelled) every connection closes at once.
    private func finishShutdown(graceful: Bool) {
        let (waiters, pools) = self.state.withLock { state -> ([CheckedContinuation<RedisClusterTopology, any Error>], [Pool]) in
            state.shutDown = true
            defer { state.topologyWaiters = [:] }
            return (Array(state.topologyWaiters.values), Array(state.pools.values))
        }
        for waiter in waiters { waiter.resume(throwing: RedisError(code: .clientShutdown, message: "the cluster client shut down")) }
        for pool in pools {
            if graceful { pool.client.gracefulStop.request() } else { pool.task?.cancel() }
        }
        self.refreshContinuation.finish()
    }

    /// The topology the client routes by, once it has one.
    public var topology: RedisClusterTopology? { self.state.withLock { $0.topology } }

    /// How many pooled connections of each node are authenticated with each credential version.
    public var connectionsByCredentialVersion: [RedisClusterConfiguration.Endpoint: [String: Int]] {
        self.state.withLock { $0.pools }.mapValues(\.client.connectionsByCredentialVersion)
    }

    /// Asks the credential source to look again now (once for the whole cluster), and every node's
    /// pool to retry a pending credential's probe at once and re-read reloading TLS files. See
    /// ``RedisClient/reloadCredentials()``.
    public func reloadCredentials() {
        self.credentials.reload()
        for pool in self.state.withLock({ Array($0.pools.values) }) { pool.client.reloadTLSAndRetry() }
    }

    /// How many `MOVED` and `ASK` redirections commands have followed since the client was created.
    public var redirectionsFollowed: (moved: Int, ask: Int) {
        (self.redirections.load(ordering: .relaxed), self.askRedirections.load(ordering: .relaxed))
    }

    /// With ``RedisClusterConfiguration/ReadRouting/replicas``: how many reads went to a primary after a
    /// replica, since the client was created. `confirmed`: the replica answered that the key is missing
    /// (it may not know of a slot's migration yet), and the primary was asked. `failedOver`: the replica
    /// could not serve the read (an error such as `LOADING` or `MASTERDOWN`, a timeout, a connection
    /// that failed), and the primary served it.
    public var replicaReadFallbacks: (confirmed: Int, failedOver: Int) {
        (self.replicaReadsConfirmed.load(ordering: .relaxed), self.replicaReadsFailedOver.load(ordering: .relaxed))
    }

    /// The pool of every primary, for what must be asked of each node (`DBSIZE`, `SCAN`, `KEYS`).
    ///
    /// - Parameter timeout: How long to wait for the first topology; `nil` uses the lease timeout.
    public func primaryClients(timeout: Duration? = nil) async throws -> [RedisClient] {
        let topology = try await self.currentTopology(within: timeout ?? self.configuration.node.pool.leaseTimeout)
        return try topology.shards.compactMap(\.primary).map { try self.client(for: self.endpoint(of: $0)) }
    }

    // MARK: Sending

    /// Sends `command` to the primary that serves its keys (any primary for a keyless command),
    /// following redirections. See ``RedisClient/send(_:timeout:)`` for deadlines and retries within a
    /// node; a command answered `MOVED`, `ASK` or `TRYAGAIN` did not run, so it is always sent again;
    /// when a node cannot be reached, the command waits for the topology to name another, within its
    /// deadline (`timeout`, else the command timeout).
    ///
    /// - Throws: ``RedisError/Code/invalidArgument`` for keys in different slots and for a raw `SCAN`
    ///   (before anything is sent); the node's errors otherwise (for a command sent to every primary,
    ///   saying how many applied it); `serverError` with `MOVED`/`ASK` after
    ///   ``RedisClusterConfiguration/maximumRedirects`` redirections.
    public func send(_ command: RedisCommand, timeout: Duration?) async throws -> RESPValue {
        let specificationName = RedisCommandIdempotency.specificationName(command.name, arguments: command.routingArguments)
        switch command.name {
        case "DBSIZE":
            return .integer(Int64(try await self.sendToEveryPrimary(command, timeout: timeout).reduce(0) { $0 + ($1.int ?? 0) }))
        case "KEYS":
            return .array(try await self.sendToEveryPrimary(command, timeout: timeout).flatMap { $0.array ?? [] })
        case "FLUSHALL", "FLUSHDB":
            return try await self.sendToEveryPrimary(command, timeout: timeout)[0]
        case "RANDOMKEY":
            return try await self.randomKey(command, timeout: timeout)
        case "SCAN":
            throw Self.wholeKeyspaceRefusal(command)!
        default:
            break
        }
        if Self.everyPrimaryCommands.contains(specificationName) {
            return try await self.sendToEveryPrimary(command, timeout: timeout)[0]
        }
        return try await self.send(command, slot: try command.clusterSlot(), timeout: timeout)
    }

    /// Sends `command` to the node serving `slot` (any primary for `nil`), following redirections and
    /// node failures within its deadline.
    func send(_ command: RedisCommand, slot: Int?, timeout: Duration?, replicaAllowed: Bool = true) async throws -> RESPValue {
        let clock = ContinuousClock()
        let deadline = clock.now + (timeout ?? self.configuration.node.commandTimeout)
        var redirects = 0
        var redirect: (endpoint: Endpoint, asking: Bool)?
        var failures = 0
        // A read-only command goes to a replica, if so configured, until one fails it.
        var replicaRead = replicaAllowed && self.configuration.reads == .replicas && command.isReadOnly
        while true {
            let endpoint: Endpoint
            var atReplica = false
            if let redirect {
                endpoint = redirect.endpoint
            } else {
                do {
                    (endpoint, atReplica) = try await self.route(
                        forSlot: slot,
                        within: timeout ?? self.configuration.node.pool.leaseTimeout,
                        replica: replicaRead
                    )
                } catch let error as RedisError where error.serverErrorPrefix == "CLUSTERDOWN" {
                    // No primary serves the slot in the topology we have (a failover under way): ask
                    // again within the deadline.
                    failures += 1
                    let pause = Self.retryPause(after: failures)
                    guard clock.now + pause < deadline else { throw error }
                    try await Task.sleep(for: pause)
                    continue
                }
            }
            let client = try self.client(for: endpoint)
            // After a failure, an attempt gets only what is left of the deadline; at a node that just
            // failed, at most a second of it.
            var attemptTimeout = failures == 0 ? timeout : max(deadline - clock.now, .milliseconds(1))
            let suspect = self.state.withLock { $0.suspects.contains(endpoint) }
            if suspect {
                attemptTimeout = min(attemptTimeout ?? .seconds(1), .seconds(1))
            }
            if atReplica {
                // A replica gets at most half of what is left, so its primary can still answer.
                attemptTimeout = min(attemptTimeout ?? self.configuration.node.commandTimeout, max((deadline - clock.now) / 2, .milliseconds(1)))
            }
            do {
                let reply: RESPValue
                if redirect?.asking == true {
                    reply = try await client.withConnection { connection in
                        let replies = try await connection.pipeline([RedisCommand("ASKING"), command], timeout: attemptTimeout)
                        return try replies[1].get()
                    }
                } else {
                    reply = try await client.send(command, timeout: attemptTimeout)
                }
                if suspect { self.state.withLock { _ = $0.suspects.remove(endpoint) } }
                if atReplica, case .null = reply, slot != nil {
                    // A replica does not know its primary's migrations: a key already moved to the
                    // importing node reads as missing there. The primary confirms (or redirects).
                    self.replicaReadsConfirmed.add(1, ordering: .relaxed)
                    replicaRead = false
                    continue
                }
                return reply
            } catch let error as RedisError where atReplica && error.serverErrorPrefix != "MOVED" && error.serverErrorPrefix != "ASK"
                && (error.isTransientServerState || [.commandTimeout, .leaseTimeout, .connectionFailed, .connectionClosed, .clientShutdown].contains(error.code))
            {
                // The replica could not serve the read (stopped, cut off from its primary: MASTERDOWN,
                // still loading): the primary serves it, at once. The command only reads.
                self.logger.debug(
                    "a replica could not serve a read: the primary serves it",
                    metadata: [LoggingKeys.host: "\(endpoint.host)", LoggingKeys.port: "\(endpoint.port)", LoggingKeys.error: "\(error)"]
                )
                self.replicaReadsFailedOver.add(1, ordering: .relaxed)
                if !error.isTransientServerState { self.nodeFailed(endpoint) }
                replicaRead = false
            } catch let error as RedisError where error.serverErrorPrefix == "MOVED" || error.serverErrorPrefix == "ASK" {
                redirects += 1
                guard redirects <= self.configuration.maximumRedirects, let target = Self.redirectTarget(error, askedHost: endpoint.host) else {
                    throw error
                }
                if error.serverErrorPrefix == "MOVED" {
                    self.recordMoved(error, to: target)
                    self.requestRefresh()
                    redirect = (target, false)
                } else {
                    self.askRedirections.add(1, ordering: .relaxed)
                    redirect = (target, true)
                }
            } catch let error as RedisError where error.serverErrorPrefix == "TRYAGAIN" || Self.nodeUnreachable(error, command: command, shutDown: self.isShutDown) {
                // A slot being migrated with keys on both sides (TRYAGAIN), or a node gone (a failover,
                // a restart): start again from the topology after a pause, within the deadline.
                failures += 1
                if error.serverErrorPrefix != "TRYAGAIN" {
                    self.nodeFailed(endpoint)
                    replicaRead = false
                    // A redirection to a node that then failed (its shard failing over) is not a loop of
                    // redirections: the pauses and the deadline bound these rounds.
                    redirects = 0
                }
                let pause = Self.retryPause(after: failures)
                guard clock.now + pause < deadline else { throw error }
                redirect = nil
                try await Task.sleep(for: pause)
            }
        }
    }

    var isShutDown: Bool { self.state.withLock { $0.shutDown } }

    /// Whether the command never reached a node that is now unreachable, or may be repeated.
    static func nodeUnreachable(_ error: RedisError, command: RedisCommand, shutDown: Bool) -> Bool {
        switch error.code {
        case .connectionFailed, .credentialsRejected, .leaseTimeout: return true
        case .clientShutdown: return !shutDown  // a node's pool retired after it left the cluster
        case .connectionClosed, .commandTimeout: return error.commandWasNotSent || command.isIdempotent
        default: return false
        }
    }

    /// Sends `command` to every primary at once and returns their replies (in topology order). When
    /// some primaries fail, the error says how many applied it (a script load or a flush is then done
    /// on those only: send it again, both are safe to repeat).
    func sendToEveryPrimary(_ command: RedisCommand, timeout: Duration?) async throws -> [RESPValue] {
        let topology = try await self.currentTopology(within: timeout ?? self.configuration.node.pool.leaseTimeout)
        let endpoints = topology.shards.compactMap(\.primary).map(self.endpoint(of:))
        guard !endpoints.isEmpty else { throw RedisError(code: .serverError, message: "the cluster has no primary", serverErrorPrefix: "CLUSTERDOWN") }
        let clients = try endpoints.map { try self.client(for: $0) }
        let results = await withTaskGroup(of: (Int, Result<RESPValue, RedisError>).self) { group in
            for (index, client) in clients.enumerated() {
                group.addTask {
                    do {
                        return (index, .success(try await client.send(command, timeout: timeout)))
                    } catch {
                        return (index, .failure((error as? RedisError) ?? RedisError(code: .cancelled, message: "\(command.name) was cancelled")))
                    }
                }
            }
            var results = [Result<RESPValue, RedisError>?](repeating: nil, count: clients.count)
            for await (index, result) in group { results[index] = result }
            return results.map { $0! }
        }
        let failures = results.enumerated().compactMap { index, result -> (Endpoint, RedisError)? in
            if case .failure(let error) = result { return (endpoints[index], error) }
            return nil
        }
        guard let (endpoint, firstFailure) = failures.first else { return try results.map { try $0.get() } }
        throw RedisError(
            code: firstFailure.code,
            message: "\(command.name) reached \(results.count - failures.count) of \(results.count) primaries; \(endpoint) and \(failures.count - 1) other(s) failed: \(firstFailure.message)",
            serverErrorPrefix: firstFailure.serverErrorPrefix,
            serverMessage: firstFailure.serverMessage,
            underlying: firstFailure
        )
    }

    /// The node a `MOVED 3999 127.0.0.1:6381` or `ASK ...` reply names; an empty host (the server's
    /// `unknown-endpoint`) means the host that was asked.
    static func redirectTarget(_ error: RedisError, askedHost: String? = nil) -> Endpoint? {
        guard let message = error.serverMessage else { return nil }
        let words = message.split(separator: " ")
        guard words.count >= 3, let address = words.last, let colon = address.lastIndex(of: ":"),
            let port = Int(address[address.index(after: colon)...]), (1...65535).contains(port)
        else {
            return nil
        }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host.isEmpty || host == "?" {
            guard let askedHost else { return nil }
            host = askedHost
        }
        return .init(host: host, port: port)
    }

    /// Notes that `endpoint` could not serve a command: later attempts there get at most a second until
    /// it answers again, slots patched to it go back to the topology's answer, and a refresh is asked for.
    func nodeFailed(_ endpoint: Endpoint) {
        self.state.withLock { state in
            state.suspects.insert(endpoint)
            state.movedSlots = state.movedSlots.filter { $0.value != endpoint }
        }
        self.requestRefresh()
    }

    /// Counts a `MOVED` redirection followed, and remembers the slot it names as served by `target`
    /// until the next topology.
    func recordMoved(_ error: RedisError, to target: Endpoint) {
        self.redirections.add(1, ordering: .relaxed)
        guard let message = error.serverMessage else { return }
        let words = message.split(separator: " ")
        guard words.count >= 3, let slot = Int(words[1]), (0..<RedisClusterSlot.count).contains(slot) else { return }
        self.state.withLock { $0.movedSlots[slot] = target }
    }

    /// The node for a command on `slot` (any primary for `nil`): the primary, or with `replica` one of
    /// the shard's online replicas in turn (the primary when it has none).
    func endpoint(forSlot slot: Int?, within wait: Duration, replica: Bool = false) async throws -> Endpoint {
        try await self.route(forSlot: slot, within: wait, replica: replica).endpoint
    }

    /// ``endpoint(forSlot:within:replica:)``, and whether the node is a replica.
    func route(forSlot slot: Int?, within wait: Duration, replica: Bool = false) async throws -> (endpoint: Endpoint, replica: Bool) {
        // One lock for both: a slot moved since the topology, else the topology.
        let known = self.state.withLock { state -> (moved: Endpoint?, topology: RedisClusterTopology?, suspects: Set<Endpoint>) in
            if let slot, let moved = state.movedSlots[slot] { return (moved, nil, []) }
            return (nil, state.topology, slot == nil ? state.suspects : [])
        }
        if let moved = known.moved { return (moved, false) }
        let topology: RedisClusterTopology
        if let current = known.topology {
            topology = current
        } else {
            topology = try await self.currentTopology(within: wait)
        }
        // A keyless command: the first primary that did not just fail.
        let shard = slot.map { topology.shard(forSlot: $0) }
            ?? topology.shards.first { $0.primary.map { !known.suspects.contains(self.endpoint(of: $0)) } ?? false }
            ?? topology.shards.first
        if replica, let replicas = shard?.replicas, !replicas.isEmpty {
            let online = replicas.filter { $0.health == nil || $0.health == "online" }
            if !online.isEmpty {
                let turn = self.replicaTurn.add(1, ordering: .relaxed).oldValue
                return (self.endpoint(of: online[turn % online.count]), true)
            }
            // Replicas still loading (a first sync): the primary serves, and a refresh (at most one per
            // minimumRefreshInterval) tells when they are online.
            self.requestRefresh()
        }
        guard let primary = shard?.primary else {
            self.requestRefresh()
            throw RedisError(code: .serverError, message: "no primary serves slot \(slot.map(String.init) ?? "-") (the cluster is down for it)", serverErrorPrefix: "CLUSTERDOWN")
        }
        return (self.endpoint(of: primary), false)
    }

    func endpoint(of node: RedisClusterNode) -> Endpoint {
        let port = self.configuration.node.tls != nil ? (node.tlsPort ?? node.port ?? 0) : (node.port ?? 0)
        return .init(host: node.endpoint, port: port)
    }

    /// The name a node's certificate is verified against: the host name it announces
    /// (`cluster-announce-hostname`), else the configured `tls.serverName`, else (`nil`) its address.
    private func serverName(of endpoint: Endpoint, in topology: RedisClusterTopology?) -> String? {
        guard self.configuration.node.tls != nil else { return nil }
        let node = topology.flatMap { topology in
            (topology.nodes + topology.nodesWithoutSlots).first { self.endpoint(of: $0) == endpoint }
        }
        return node?.hostname ?? self.configuration.node.tls?.serverName
    }

    /// The pool of `endpoint`, created (and run while ``run()`` runs) on first use.
    func client(for endpoint: Endpoint) throws -> RedisClient {
        if let existing = self.state.withLock({ $0.pools[endpoint]?.client }) { return existing }
        var configuration = self.configuration.node
        configuration.host = endpoint.host
        configuration.port = endpoint.port
        let serverName = self.state.withLock { self.serverName(of: endpoint, in: $0.topology) }
        configuration.tls?.serverName = serverName
        // Replicas serve reads only after READONLY; a primary ignores it, and every pool may serve a
        // replica after a failover.
        configuration.readOnly = self.configuration.reads == .replicas
        // A node that cannot be reached fails commands at once: the cluster client looks elsewhere
        // (the topology, a redirection) within the command's deadline.
        configuration.failsLeasesWhenUnreachable = true
        // Mid-rotation, nodes accept different passwords: a new node's pool starts from what the
        // existing pools use (the source's newest, if different, is probed as in any rotation), so a
        // replica promoted in a shard the rotation has not reached yet is served at once.
        // A pool that has pending credentials is on a node the rotation has not reached: its current
        // ones are the older credentials still in use somewhere, and the newest come from the source.
        let seed = self.state.withLock { state in
            state.pools.values.lazy.compactMap(\.client.credentialsBehind).first
                ?? state.pools.values.lazy.compactMap(\.client.currentCredentials).first
        }
        let created = try RedisClient(
            configuration: configuration,
            credentials: self.credentials.source,
            seedCredentials: seed,
            eventLoopGroup: self.eventLoopGroup,
            logger: self.logger
        )
        let found = self.state.withLock { state -> RedisClient? in
            if let existing = state.pools[endpoint] { return existing.client }
            // A pool made now would never run: its commands would wait forever (a redirection during a
            // graceful shutdown's drain, a command sent after it, to a node without a pool yet).
            if state.shutDown { return nil }
            state.pools[endpoint] = Pool(client: created, task: nil, serverName: serverName)
            // Started under the same lock: a shutdown between adding the pool and starting it would
            // find no task to stop, and the pool would then never start, its first command waiting forever.
            if state.running { Self.startPool(endpoint, in: &state) }
            return created
        }
        guard let found else { throw RedisError(code: .clientShutdown, message: "the cluster client shut down") }
        return found
    }

    private func startPool(_ endpoint: Endpoint) {
        self.state.withLock { state in Self.startPool(endpoint, in: &state) }
    }

    private static func startPool(_ endpoint: Endpoint, in state: inout State) {
        guard var pool = state.pools[endpoint], pool.task == nil, !state.shutDown else { return }
        let client = pool.client
        // Detached: a task made with `Task {}` inherits the task locals of whoever asked for the node
        // first, among them a `ServiceGroup`'s graceful shutdown of that caller's service; the pool
        // would drain and close when that service stops, while the cluster client and the other
        // services still use it. The pool stops with the cluster client only (`finishShutdown`).
        pool.task = Task.detached { try? await client.run() }
        state.pools[endpoint] = pool
    }

    // MARK: Topology

    /// The topology, waiting for the first one at most `wait` (and never past cancellation).
    func currentTopology(within wait: Duration) async throws -> RedisClusterTopology {
        if let topology = self.state.withLock({ $0.topology }) { return topology }
        let id = self.state.withLock { state -> Int in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        let timer = Task {
            try await Task.sleep(for: wait)
            let reason = self.state.withLock { $0.lastRefreshError }
            self.failWaiter(id, RedisError(code: .leaseTimeout, message: "no node gave the cluster's topology within \(wait)\(reason.map { " (last: \($0))" } ?? "")"))
        }
        defer { timer.cancel() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let ready = self.state.withLock { state -> Result<RedisClusterTopology, RedisError>? in
                    if let topology = state.topology { return .success(topology) }
                    if state.shutDown { return .failure(RedisError(code: .clientShutdown, message: "the cluster client shut down")) }
                    state.topologyWaiters[id] = continuation
                    return nil
                }
                if let ready { continuation.resume(with: ready) }
                if Task.isCancelled { self.failWaiter(id, CancellationError()) }
            }
        } onCancel: {
            self.failWaiter(id, CancellationError())
        }
    }

    private func failWaiter(_ id: Int, _ error: any Error) {
        let waiter = self.state.withLock { $0.topologyWaiters.removeValue(forKey: id) }
        waiter?.resume(throwing: error)
    }

    /// Refreshes the topology now and returns once it is done (or failed).
    func refreshNow() async {
        await self.refresh()
    }

    /// Asks for a refresh; requests while one is pending collapse into it.
    func requestRefresh() {
        self.refreshContinuation.yield()
    }

    private func refreshLoop() async {
        await withDiscardingTaskGroup { group in
            group.addTask {
                // Refresh now and then without a reason, until shutdown.
                while !Task.isCancelled {
                    try? await Task.sleep(for: self.configuration.refreshInterval)
                    self.requestRefresh()
                }
            }
            for await _ in self.refreshRequests {
                if let last = self.state.withLock({ $0.lastRefresh }) {
                    let wait = self.configuration.minimumRefreshInterval - (ContinuousClock.now - last)
                    if wait > .zero { try? await Task.sleep(for: wait) }
                }
                await self.refresh()
            }
            group.cancelAll()
        }
    }

    /// Asks the known nodes and the seeds at once for `CLUSTER SHARDS` (`CLUSTER SLOTS` on older
    /// servers); the first answer wins. Pools of endpoints that are not part of the cluster (a dead or
    /// foreign seed) are retired.
    private func refresh() async {
        let known = self.state.withLock { state -> [Endpoint] in
            state.lastRefresh = ContinuousClock.now
            return state.topology.map { $0.nodes.filter { $0.role == .primary }.map(self.endpoint(of:)) } ?? []
        }
        let wait = self.configuration.node.connectTimeout + self.configuration.node.commandTimeout
        // The known primaries first; the seeds only when none of them answers (a seed that is not part
        // of the cluster would otherwise get a pool at every refresh).
        var found = await self.askFirst(known, timeout: wait)
        if case .failure = found {
            found = await self.askFirst(self.configuration.seeds.filter { !known.contains($0) }, timeout: wait)
        }
        switch found {
        case .success(let topology):
            let members = Set((topology.nodes + topology.nodesWithoutSlots).map(self.endpoint(of:)))
            let (waiters, retired) = self.state.withLock { state -> ([CheckedContinuation<RedisClusterTopology, any Error>], [Task<Void, Never>]) in
                state.topology = topology
                state.movedSlots = [:]
                state.lastRefreshError = nil
                let waiters = Array(state.topologyWaiters.values)
                state.topologyWaiters = [:]
                var retired: [Task<Void, Never>] = []
                // Pools of nodes that left, and pools that verify a node by another name than the one it
                // announces now (created from a seed or a redirection before the topology named it).
                for (endpoint, pool) in state.pools
                where !members.contains(endpoint) || (self.configuration.node.tls != nil && pool.serverName != self.serverName(of: endpoint, in: topology)) {
                    state.pools[endpoint] = nil
                    if let task = pool.task { retired.append(task) }
                }
                return (waiters, retired)
            }
            for task in retired { task.cancel() }
            for waiter in waiters { waiter.resume(returning: topology) }
        case .failure(let error):
            self.state.withLock { $0.lastRefreshError = "\(error)" }
            self.logger.warning("no node answered the topology request", metadata: ["error": "\(error)"])
            // Try again soon: commands may be waiting or being redirected.
            try? await Task.sleep(for: self.configuration.minimumRefreshInterval)
            self.requestRefresh()
        }
    }

    /// Asks every endpoint at once; the first topology that serves slots wins.
    private func askFirst(_ endpoints: [Endpoint], timeout: Duration) async -> Result<RedisClusterTopology, any Error> {
        await withTaskGroup(of: Result<RedisClusterTopology, any Error>.self) { group in
            for endpoint in endpoints {
                group.addTask {
                    do {
                        return .success(try await self.askTopology(endpoint, timeout: timeout))
                    } catch {
                        return .failure(error)
                    }
                }
            }
            var lastError: any Error = RedisError(code: .connectionFailed, message: "no node to ask")
            for await result in group {
                switch result {
                case .success(let topology) where !topology.shards.isEmpty:
                    group.cancelAll()
                    return .success(topology)
                case .success:
                    lastError = RedisError(code: .serverError, message: "a node answered with a cluster that serves no slot", serverErrorPrefix: "CLUSTERDOWN")
                case .failure(let error):
                    lastError = error
                }
            }
            return .failure(lastError)
        }
    }

    private func askTopology(_ endpoint: Endpoint, timeout: Duration) async throws -> RedisClusterTopology {
        let client = try self.client(for: endpoint)
        do {
            return try RedisClusterTopology.fromShards(try await client.send(RedisCommand("CLUSTER", "SHARDS"), timeout: timeout))
                .resolvingUnknownEndpoints(to: endpoint.host)
        } catch let error as RedisError where error.code == .serverError && error.serverErrorPrefix == "ERR" {
            return try RedisClusterTopology.fromSlots(
                try await client.send(RedisCommand("CLUSTER", "SLOTS"), timeout: timeout),
                tls: self.configuration.node.tls != nil
            ).resolvingUnknownEndpoints(to: endpoint.host)
        }
    }
}
