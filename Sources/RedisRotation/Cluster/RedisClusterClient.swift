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

    public init(
        seeds: [Endpoint],
        node: RedisClientConfiguration,
        maximumRedirects: Int = 5,
        minimumRefreshInterval: Duration = .milliseconds(100),
        refreshInterval: Duration = .seconds(30)
    ) {
        precondition(!seeds.isEmpty, "a cluster client needs at least one seed node")
        self.seeds = seeds
        self.node = node
        self.maximumRedirects = maximumRedirects
        self.minimumRefreshInterval = minimumRefreshInterval
        self.refreshInterval = refreshInterval
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
/// Commands about the whole keyspace (`DBSIZE`, `KEYS`, `SCAN`, `RANDOMKEY`, `FLUSHALL`, `FLUSHDB`)
/// would answer for one node only: they are refused; ask each primary through ``primaryClients(timeout:)``.
/// Scripts and functions (`SCRIPT LOAD`, `SCRIPT FLUSH`, `FUNCTION LOAD`, ...) go to every primary.
public final class RedisClusterClient: Service, RedisCommandExecutor, Sendable {
    typealias Endpoint = RedisClusterConfiguration.Endpoint

    private struct Pool {
        var client: RedisClient
        var task: Task<Void, Never>?
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
    }

    public let configuration: RedisClusterConfiguration
    private let credentials: RedisCredentialSource
    private let eventLoopGroup: any EventLoopGroup
    let logger: Logger
    private let state = Mutex(State())
    private let redirections = Atomic<Int>(0)
    private let askRedirections = Atomic<Int>(0)
    private let refreshRequests: AsyncStream<Void>
    private let refreshContinuation: AsyncStream<Void>.Continuation

    /// Commands whose answer is about one node's keyspace only.
    static let wholeKeyspaceCommands: Set<String> = ["DBSIZE", "KEYS", "SCAN", "RANDOMKEY", "FLUSHALL", "FLUSHDB"]
    /// Why `command` is not sent through the cluster client: it is about one node's whole keyspace.
    static func wholeKeyspaceRefusal(_ command: RedisCommand) -> RedisError? {
        guard Self.wholeKeyspaceCommands.contains(command.name) else { return nil }
        return RedisError(
            code: .invalidArgument,
            message: "\(command.name) answers for one node's keys in a cluster: ask each primary through primaryClients(); nothing was sent"
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
        self.credentials = credentials
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        (self.refreshRequests, self.refreshContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        // Fail fast on credentials, as RedisClient does.
        var probe = configuration.node
        probe.host = configuration.seeds[0].host
        probe.port = configuration.seeds[0].port
        _ = try RedisClient(configuration: probe, credentials: credentials, eventLoopGroup: eventLoopGroup, logger: logger)
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
            group.addTask { await self.refreshLoop() }
            self.refreshContinuation.yield()
            await waitForShutdownSignal()
            self.finishShutdown()
            group.cancelAll()
        }
        let tasks = self.state.withLock { state in state.pools.values.compactMap(\.task) }
        for task in tasks { await task.value }
    }

    private func finishShutdown() {
        let (waiters, tasks) = self.state.withLock { state -> ([CheckedContinuation<RedisClusterTopology, any Error>], [Task<Void, Never>]) in
            state.shutDown = true
            defer { state.topologyWaiters = [:] }
            return (Array(state.topologyWaiters.values), state.pools.values.compactMap(\.task))
        }
        for waiter in waiters { waiter.resume(throwing: RedisError(code: .clientShutdown, message: "the cluster client shut down")) }
        for task in tasks { task.cancel() }
        self.refreshContinuation.finish()
    }

    /// The topology the client routes by, once it has one.
    public var topology: RedisClusterTopology? { self.state.withLock { $0.topology } }

    /// How many pooled connections of each node are authenticated with each credential version.
    public var connectionsByCredentialVersion: [RedisClusterConfiguration.Endpoint: [String: Int]] {
        self.state.withLock { $0.pools }.mapValues(\.client.connectionsByCredentialVersion)
    }

    /// How many `MOVED` and `ASK` redirections commands have followed since the client was created.
    public var redirectionsFollowed: (moved: Int, ask: Int) {
        (self.redirections.load(ordering: .relaxed), self.askRedirections.load(ordering: .relaxed))
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
    /// - Throws: ``RedisError/Code/invalidArgument`` for keys in different slots and for commands about
    ///   the whole keyspace (before anything is sent); the node's errors otherwise; `serverError` with
    ///   `MOVED`/`ASK` after ``RedisClusterConfiguration/maximumRedirects`` redirections.
    public func send(_ command: RedisCommand, timeout: Duration?) async throws -> RESPValue {
        let specificationName = RedisCommandIdempotency.specificationName(command.name, arguments: command.routingArguments)
        if let refusal = Self.wholeKeyspaceRefusal(command) { throw refusal }
        if Self.everyPrimaryCommands.contains(specificationName) {
            return try await self.sendToEveryPrimary(command, timeout: timeout)
        }
        let slot = try command.clusterSlot()
        let clock = ContinuousClock()
        let deadline = clock.now + (timeout ?? self.configuration.node.commandTimeout)
        var redirects = 0
        var redirect: (endpoint: Endpoint, asking: Bool)?
        var failures = 0
        while true {
            let endpoint: Endpoint
            if let redirect {
                endpoint = redirect.endpoint
            } else {
                do {
                    endpoint = try await self.endpoint(forSlot: slot, within: timeout ?? self.configuration.node.pool.leaseTimeout)
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
                return reply
            } catch let error as RedisError where error.serverErrorPrefix == "MOVED" || error.serverErrorPrefix == "ASK" {
                redirects += 1
                guard redirects <= self.configuration.maximumRedirects, let target = Self.redirectTarget(error, askedHost: endpoint.host) else {
                    throw error
                }
                if error.serverErrorPrefix == "MOVED" {
                    self.redirections.add(1, ordering: .relaxed)
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
                    self.state.withLock { _ = $0.suspects.insert(endpoint) }
                    self.requestRefresh()
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
    private static func nodeUnreachable(_ error: RedisError, command: RedisCommand, shutDown: Bool) -> Bool {
        switch error.code {
        case .connectionFailed, .credentialsRejected, .leaseTimeout: return true
        case .clientShutdown: return !shutDown  // a node's pool retired after it left the cluster
        case .connectionClosed, .commandTimeout: return error.commandWasNotSent || command.isIdempotent
        default: return false
        }
    }

    /// Sends a script or function change to every primary; the first primary's reply is returned.
    private func sendToEveryPrimary(_ command: RedisCommand, timeout: Duration?) async throws -> RESPValue {
        let clients = try await self.primaryClients(timeout: timeout)
        var first: RESPValue?
        for client in clients {
            let reply = try await client.send(command, timeout: timeout)
            if first == nil { first = reply }
        }
        guard let first else { throw RedisError(code: .serverError, message: "the cluster has no primary", serverErrorPrefix: "CLUSTERDOWN") }
        return first
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

    func endpoint(forSlot slot: Int?, within wait: Duration) async throws -> Endpoint {
        let topology = try await self.currentTopology(within: wait)
        let shard = slot.map { topology.shard(forSlot: $0) } ?? topology.shards.first
        guard let primary = shard?.primary else {
            self.requestRefresh()
            throw RedisError(code: .serverError, message: "no primary serves slot \(slot.map(String.init) ?? "-") (the cluster is down for it)", serverErrorPrefix: "CLUSTERDOWN")
        }
        return self.endpoint(of: primary)
    }

    func endpoint(of node: RedisClusterNode) -> Endpoint {
        let port = self.configuration.node.tls != nil ? (node.tlsPort ?? node.port ?? 0) : (node.port ?? 0)
        return .init(host: node.endpoint, port: port)
    }

    /// The pool of `endpoint`, created (and run while ``run()`` runs) on first use.
    func client(for endpoint: Endpoint) throws -> RedisClient {
        if let existing = self.state.withLock({ $0.pools[endpoint]?.client }) { return existing }
        var configuration = self.configuration.node
        configuration.host = endpoint.host
        configuration.port = endpoint.port
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
            credentials: self.credentials,
            seedCredentials: seed,
            eventLoopGroup: self.eventLoopGroup,
            logger: self.logger
        )
        let (client, start) = self.state.withLock { state -> (RedisClient, Bool) in
            if let existing = state.pools[endpoint] { return (existing.client, false) }
            if state.shutDown { return (created, false) }
            state.pools[endpoint] = Pool(client: created, task: nil)
            return (created, state.running)
        }
        if start { self.startPool(endpoint) }
        return client
    }

    private func startPool(_ endpoint: Endpoint) {
        self.state.withLock { state in
            guard var pool = state.pools[endpoint], pool.task == nil, !state.shutDown else { return }
            let client = pool.client
            pool.task = Task { try? await client.run() }
            state.pools[endpoint] = pool
        }
    }

    // MARK: Topology

    /// The topology, waiting for the first one at most `wait` (and never past cancellation).
    private func currentTopology(within wait: Duration) async throws -> RedisClusterTopology {
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
                state.lastRefreshError = nil
                let waiters = Array(state.topologyWaiters.values)
                state.topologyWaiters = [:]
                var retired: [Task<Void, Never>] = []
                for (endpoint, pool) in state.pools where !members.contains(endpoint) {
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
        } catch let error as RedisError where error.code == .serverError && error.serverErrorPrefix == "ERR" {
            return try RedisClusterTopology.fromSlots(
                try await client.send(RedisCommand("CLUSTER", "SLOTS"), timeout: timeout),
                tls: self.configuration.node.tls != nil
            )
        }
    }
}
