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
public final class RedisClusterClient: Service, RedisCommandExecutor, Sendable {
    private struct State {
        var topology: RedisClusterTopology?
        var clients: [RedisClusterConfiguration.Endpoint: RedisClient] = [:]
        var topologyWaiters: [CheckedContinuation<RedisClusterTopology, any Error>] = []
        var lastRefresh: ContinuousClock.Instant?
        var refreshing = false
        var shutDown = false
    }

    public let configuration: RedisClusterConfiguration
    private let credentials: RedisCredentialSource
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger
    private let state = Mutex(State())
    private let redirections = Atomic<Int>(0)
    private let askRedirections = Atomic<Int>(0)
    private let starts: AsyncStream<RedisClient>
    private let startsContinuation: AsyncStream<RedisClient>.Continuation
    private let refreshRequests: AsyncStream<Void>
    private let refreshContinuation: AsyncStream<Void>.Continuation

    /// Creates a cluster client. Nothing connects until ``run()`` runs.
    ///
    /// - Throws: ``RedisError`` when the credential source cannot give credentials now.
    public init(
        configuration: RedisClusterConfiguration,
        credentials: RedisCredentialSource,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "RedisRotation", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws {
        self.configuration = configuration
        self.credentials = credentials
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        (self.starts, self.startsContinuation) = AsyncStream.makeStream()
        (self.refreshRequests, self.refreshContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        // Fail fast on credentials, as RedisClient does: build the first seed's pool now.
        _ = try self.client(for: configuration.seeds[0])
    }

    /// Runs the node pools and keeps the topology fresh, until cancelled or shut down gracefully.
    public func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.refreshLoop() }
            group.addTask {
                await self.waitForShutdownSignal()
                self.finishShutdown()
            }
            self.refreshContinuation.yield()
            for await client in self.starts {
                group.addTask { try? await client.run() }
            }
            group.cancelAll()
        }
    }

    private func finishShutdown() {
        let waiters = self.state.withLock { state -> [CheckedContinuation<RedisClusterTopology, any Error>] in
            state.shutDown = true
            defer { state.topologyWaiters = [] }
            return state.topologyWaiters
        }
        for waiter in waiters { waiter.resume(throwing: RedisError(code: .clientShutdown, message: "the cluster client shut down")) }
        self.refreshContinuation.finish()
        self.startsContinuation.finish()
    }

    private func waitForShutdownSignal() async {
        let (stream, continuation) = AsyncStream<Void>.makeStream()
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                for await _ in stream {}
            } onCancel: {
                continuation.finish()
            }
        } onGracefulShutdown: {
            continuation.finish()
        }
    }

    /// The topology the client routes by, once it has one.
    public var topology: RedisClusterTopology? { self.state.withLock { $0.topology } }

    /// How many pooled connections of each node are authenticated with each credential version.
    public var connectionsByCredentialVersion: [RedisClusterConfiguration.Endpoint: [String: Int]] {
        self.state.withLock { $0.clients }.mapValues(\.connectionsByCredentialVersion)
    }

    /// How many `MOVED` and `ASK` redirections commands have followed since the client was created.
    public var redirectionsFollowed: (moved: Int, ask: Int) {
        (self.redirections.load(ordering: .relaxed), self.askRedirections.load(ordering: .relaxed))
    }

    // MARK: Sending

    /// Sends `command` to the primary that serves its keys (any primary for a keyless command),
    /// following redirections. See ``RedisClient/send(_:timeout:)`` for deadlines and retries within a
    /// node; a command answered `MOVED` or `ASK` did not run, so it is always sent again at the target.
    ///
    /// - Throws: ``RedisError/Code/invalidArgument`` for keys in different slots (before anything is
    ///   sent); the node's errors otherwise; `serverError` with `MOVED`/`ASK` after
    ///   ``RedisClusterConfiguration/maximumRedirects`` redirections.
    public func send(_ command: RedisCommand, timeout: Duration?) async throws -> RESPValue {
        let slot = try command.clusterSlot()
        var redirects = 0
        var redirect: (endpoint: RedisClusterConfiguration.Endpoint, asking: Bool)?
        var failures = 0
        let clock = ContinuousClock()
        let start = clock.now
        while true {
            let endpoint: RedisClusterConfiguration.Endpoint
            if let redirect {
                endpoint = redirect.endpoint
            } else {
                endpoint = try await self.endpoint(forSlot: slot)
            }
            let client = try self.client(for: endpoint)
            do {
                if redirect?.asking == true {
                    return try await client.withConnection { connection in
                        let replies = try await connection.pipeline([RedisCommand("ASKING"), command], timeout: timeout)
                        return try replies[1].get()
                    }
                }
                return try await client.send(command, timeout: timeout)
            } catch let error as RedisError where error.serverErrorPrefix == "MOVED" || error.serverErrorPrefix == "ASK" {
                redirects += 1
                guard redirects <= self.configuration.maximumRedirects, let target = Self.redirectTarget(error) else { throw error }
                if error.serverErrorPrefix == "MOVED" {
                    self.redirections.add(1, ordering: .relaxed)
                    self.requestRefresh()
                    redirect = (target, false)
                } else {
                    self.askRedirections.add(1, ordering: .relaxed)
                    redirect = (target, true)
                }
            } catch let error as RedisError where Self.nodeUnreachable(error, command: command) {
                // The node is gone (a failover, a restart): the topology decides where to go next, within
                // the command's deadline.
                failures += 1
                let deadline = timeout ?? self.configuration.node.commandTimeout
                guard failures <= self.configuration.node.maximumCommandAttempts, clock.now - start < deadline else { throw error }
                redirect = nil
                self.requestRefresh()
                try await Task.sleep(for: .milliseconds(50 * failures))
            }
        }
    }

    /// Whether the command never reached a node that is now unreachable, or may be repeated.
    private static func nodeUnreachable(_ error: RedisError, command: RedisCommand) -> Bool {
        switch error.code {
        case .connectionFailed, .credentialsRejected: return true
        case .connectionClosed, .commandTimeout: return error.commandWasNotSent || command.isIdempotent
        default: return false
        }
    }

    /// The node a `MOVED 3999 127.0.0.1:6381` or `ASK ...` reply names.
    static func redirectTarget(_ error: RedisError) -> RedisClusterConfiguration.Endpoint? {
        guard let message = error.serverMessage else { return nil }
        let words = message.split(separator: " ")
        guard let address = words.last, let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            return nil
        }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return .init(host: host, port: port)
    }

    private func endpoint(forSlot slot: Int?) async throws -> RedisClusterConfiguration.Endpoint {
        let topology = try await self.currentTopology()
        let shard = slot.map { topology.shard(forSlot: $0) } ?? topology.shards.first
        guard let primary = shard?.primary else {
            self.requestRefresh()
            throw RedisError(code: .serverError, message: "no primary serves slot \(slot.map(String.init) ?? "-") (the cluster is down for it)", serverErrorPrefix: "CLUSTERDOWN")
        }
        return self.endpoint(of: primary)
    }

    private func endpoint(of node: RedisClusterNode) -> RedisClusterConfiguration.Endpoint {
        let port = self.configuration.node.tls != nil ? (node.tlsPort ?? node.port ?? 0) : (node.port ?? 0)
        return .init(host: node.endpoint, port: port)
    }

    /// The pool of `endpoint`, created (and started by ``run()``) on first use.
    private func client(for endpoint: RedisClusterConfiguration.Endpoint) throws -> RedisClient {
        if let existing = self.state.withLock({ $0.clients[endpoint] }) { return existing }
        var configuration = self.configuration.node
        configuration.host = endpoint.host
        configuration.port = endpoint.port
        let created = try RedisClient(configuration: configuration, credentials: self.credentials, eventLoopGroup: self.eventLoopGroup, logger: self.logger)
        let (client, isNew) = self.state.withLock { state -> (RedisClient, Bool) in
            if let existing = state.clients[endpoint] { return (existing, false) }
            state.clients[endpoint] = created
            return (created, true)
        }
        if isNew { self.startsContinuation.yield(client) }
        return client
    }

    // MARK: Topology

    private func currentTopology() async throws -> RedisClusterTopology {
        try await withCheckedThrowingContinuation { continuation in
            let ready = self.state.withLock { state -> Result<RedisClusterTopology, RedisError>? in
                if let topology = state.topology { return .success(topology) }
                if state.shutDown { return .failure(RedisError(code: .clientShutdown, message: "the cluster client shut down")) }
                state.topologyWaiters.append(continuation)
                return nil
            }
            if let ready { continuation.resume(with: ready) }
        }
    }

    /// Asks for a refresh; requests while one is pending collapse into it.
    private func requestRefresh() {
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

    /// Asks the known nodes, then the seeds, for `CLUSTER SHARDS` (`CLUSTER SLOTS` on older servers),
    /// until one answers.
    private func refresh() async {
        let known = self.state.withLock { state -> [RedisClusterConfiguration.Endpoint] in
            state.lastRefresh = ContinuousClock.now
            return state.topology.map { $0.nodes.map(self.endpoint(of:)) } ?? []
        }
        var lastError: (any Error)?
        for endpoint in known + self.configuration.seeds.filter({ !known.contains($0) }) {
            do {
                let client = try self.client(for: endpoint)
                let topology: RedisClusterTopology
                do {
                    topology = try RedisClusterTopology.fromShards(try await client.send(RedisCommand("CLUSTER", "SHARDS"), timeout: self.configuration.node.commandTimeout))
                } catch let error as RedisError where error.code == .serverError && error.serverErrorPrefix == "ERR" {
                    topology = try RedisClusterTopology.fromSlots(
                        try await client.send(RedisCommand("CLUSTER", "SLOTS"), timeout: self.configuration.node.commandTimeout),
                        tls: self.configuration.node.tls != nil
                    )
                }
                guard !topology.shards.isEmpty else { continue }
                let waiters = self.state.withLock { state -> [CheckedContinuation<RedisClusterTopology, any Error>] in
                    state.topology = topology
                    defer { state.topologyWaiters = [] }
                    return state.topologyWaiters
                }
                for waiter in waiters { waiter.resume(returning: topology) }
                return
            } catch {
                lastError = error
            }
        }
        self.logger.warning("no node answered the topology request", metadata: ["error": "\(lastError.map { "\($0)" } ?? "none")"])
        // Try again soon: commands are waiting or being redirected.
        try? await Task.sleep(for: self.configuration.minimumRefreshInterval)
        self.requestRefresh()
    }
}
