#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

extension RedisClusterClient {
    /// Subscribes to `channels` (`SUBSCRIBE`) through one node of the cluster and returns once that node
    /// confirmed them. In a cluster `PUBLISH` reaches every node, so any node serves the subscription:
    /// all subscriptions of the client go to the same node while it serves them (one subscriber
    /// connection), through that node's pool.
    ///
    /// The sequence keeps the single-node guarantees: each message once and in the order the node
    /// received it, a ``RedisSubscriptionEvent/gap(from:to:)`` where messages may be missing. Within the
    /// node, credential promotions and TLS reloads replace the subscriber connection make-before-break
    /// (no gap), and a forced disconnect reconnects with a gap, as ``RedisClient/subscribe(to:)``. When
    /// the node stays unreachable (killed, partitioned) for a second, or leaves the topology, the
    /// subscription moves to another node: the old one's messages stop, the new one's start once it has
    /// confirmed, and a gap covers the time between. Across nodes there is no common order to split the
    /// streams at (each node hears the others' publishes over the cluster bus), so a move always
    /// signals a gap; a message could only arrive twice if the cluster bus delivered it to the new node
    /// later than the whole move took (see the decisions log).
    ///
    /// Ending the iteration ends the subscription and unsubscribes. The sequence throws
    /// ``RedisError/Code/clientShutdown`` when the cluster client stops, and the server's error
    /// (`NOPERM`) when the user's ACL refuses a channel.
    ///
    /// - Throws: ``RedisError`` with `serverError` (`NOPERM`), `commandTimeout` or `leaseTimeout` when no
    ///   node confirmed within the lease timeout, `clientShutdown`.
    public func subscribe(to channels: [String]) async throws -> RedisClientSubscription {
        try await self.clusterSubscribe(.channel, channels, slot: nil)
    }

    /// Subscribes to the channels matching `patterns` (`PSUBSCRIBE`) through one node, as
    /// ``subscribe(to:)``; messages carry the pattern.
    public func psubscribe(to patterns: [String]) async throws -> RedisClientSubscription {
        try await self.clusterSubscribe(.pattern, patterns, slot: nil)
    }

    /// Subscribes to sharded channels (`SSUBSCRIBE`, Redis 7) on the primary that serves their slot:
    /// `SPUBLISH` reaches only the nodes of that shard.
    ///
    /// Every channel of one call must hash to one slot (use a hash tag: `{orders}:eu`, `{orders}:us`).
    /// When the slot moves to another primary (a resharding; the old owner ends the subscription with
    /// `sunsubscribe`) or the primary is lost and the topology names another one, the subscription is
    /// made again on the new owner (following `MOVED` when the topology is behind) and a
    /// ``RedisSubscriptionEvent/gap(from:to:)`` covers the time between. Nothing is delivered twice: a
    /// shard's messages all come from its one primary, and the old subscription has ended before the new
    /// one is made. Rotations within the node are make-before-break, as ``RedisClient/ssubscribe(to:)``.
    ///
    /// - Throws: ``RedisError/Code/invalidArgument`` when the channels hash to different slots (nothing
    ///   is sent); otherwise as ``subscribe(to:)``.
    public func ssubscribe(to channels: [String]) async throws -> RedisClientSubscription {
        try await self.clusterSubscribe(.shardChannel, channels, slot: try Self.shardSlot(of: channels))
    }

    /// The one slot of shard channels `channels`.
    static func shardSlot(of channels: [String]) throws(RedisError) -> Int {
        var slot: Int?
        for channel in channels {
            let channelSlot = RedisClusterSlot.slot(for: Array(channel.utf8))
            if let slot, slot != channelSlot {
                throw RedisError(
                    code: .invalidArgument,
                    message: "SSUBSCRIBE: the channels hash to different slots (\(slot) and \(channelSlot)); in a cluster one subscription's shard channels must share one: give them a common hash tag, as {orders}:eu and {orders}:us; nothing was sent"
                )
            }
            slot = channelSlot
        }
        guard let slot else { throw RedisError(code: .invalidArgument, message: "SSUBSCRIBE needs at least one channel") }
        return slot
    }

    private func clusterSubscribe(_ kind: PubSubStateMachine.Kind, _ names: [String], slot: Int?) async throws -> RedisClientSubscription {
        precondition(!names.isEmpty, "a subscription needs at least one channel or pattern")
        try Task.checkCancellation()
        guard !self.isShutDown else { throw ClusterSubscription.shutdownError }
        let subscription = ClusterSubscription(cluster: self, kind: kind, names: names, slot: slot)
        let first = try await subscription.place(excluding: [], within: self.configuration.node.pool.leaseTimeout)
        return subscription.start(first)
    }
}

/// One subscription of a ``RedisClusterClient``: a subscription on one node's ``RedisClient`` (its
/// placement) whose events are forwarded to the user's sequence, and moved to another node when its node
/// is lost or, for shard channels, no longer serves the slot.
///
/// A task forwards the placement's events and, beside it, a watchdog looks every 100 ms at the node (is
/// it still delivering? still in the topology?). Whichever finds the placement over ends both: the old
/// placement's iteration is cancelled (its node unsubscribes), which is the cut: nothing of it is
/// forwarded after. Then a new placement is made (with backoff, until it works, the user cancels, or the
/// cluster client stops), and a gap from the old placement's last sign of life to the new one's
/// confirmation comes before its first event.
final class ClusterSubscription: Sendable {
    typealias Kind = PubSubStateMachine.Kind
    typealias Endpoint = RedisClusterConfiguration.Endpoint

    /// A subscription on one node.
    struct Placement: Sendable {
        let endpoint: Endpoint
        let subscription: RedisClientSubscription
        let hub: SubscriberHub
        /// The topology when it was made (a later one may name another owner).
        let topology: RedisClusterTopology?
    }

    /// How one placement ended.
    private enum Outcome: Sendable {
        /// The user stopped reading (or the placement's task was cancelled).
        case cancelled
        /// The subscription cannot go on: the sequence ends with this error.
        case failed(any Error)
        /// Move to another node. `leaving`: the node to avoid when another can serve (it is lost).
        case move(leaving: Endpoint?)
    }

    /// How long a node may stay without a delivering connection before a channel or pattern
    /// subscription leaves it for another node (a reconnect after a kill takes milliseconds).
    static let moveAfterLoss: Duration = .seconds(1)
    static let watchInterval: Duration = .milliseconds(100)
    /// How much earlier than its last sign of life a channel subscription's gap starts: the cluster bus
    /// may bring a node a message later than one published after it through the node itself.
    static let clusterBusDelay: TimeInterval = 1
    /// How often a shard subscription's node is asked whether it still serves the slot.
    static let ownerCheckInterval: Duration = .milliseconds(250)

    static var shutdownError: RedisError {
        RedisError(code: .clientShutdown, message: "the cluster client stopped running; its subscriptions ended")
    }

    let cluster: RedisClusterClient
    let kind: Kind
    let names: [String]
    /// The slot of shard channels; `nil` for channels and patterns (any node serves them).
    let slot: Int?
    /// The placement's last sign of life: when it was confirmed, last forwarded something (channels and
    /// patterns), or was last found serving the slot (shard channels). A move's gap starts here.
    private let lastSign = Lock<Date>(Date())
    /// The ACL refused the owner check (warned once).
    private let ownerCheckRefused = Lock<Bool>(false)

    init(cluster: RedisClusterClient, kind: Kind, names: [String], slot: Int?) {
        self.cluster = cluster
        self.kind = kind
        self.names = names
        self.slot = slot
    }

    /// The user's sequence, fed from `first` and the placements after it.
    func start(_ first: Placement) -> RedisClientSubscription {
        let (stream, continuation) = AsyncThrowingStream<RedisSubscriptionEvent, any Error>.makeStream()
        let sink = ClientSubscriptionSink(
            continuation: continuation,
            backlog: SubscriptionBacklog(limits: self.cluster.configuration.node.subscriptionBufferLimits)
        )
        // The task holds the subscription until it ends; the reader's end cancels it.
        let task = Task { await self.run(first, sink: sink) }
        continuation.onTermination = { _ in task.cancel() }
        return RedisClientSubscription(stream: stream, sink: sink)
    }

    // MARK: Placing

    /// Subscribes on the node that should serve the subscription, within `wait`: the slot's primary
    /// (following `MOVED`), or for channels and patterns the first node of the topology that is not
    /// failed and not in `excluding` (so that all such subscriptions share one node).
    func place(excluding: Set<Endpoint>, within wait: Duration) async throws -> Placement {
        let clock = ContinuousClock()
        let deadline = clock.now + wait
        var redirect: Endpoint?
        var excluded = excluding
        var failures = 0
        // Bounded by the deadline; the count only guards against a redirection loop.
        for _ in 0..<1000 {
            guard !self.cluster.isShutDown else { throw Self.shutdownError }
            let remaining = deadline - clock.now
            let endpoint: Endpoint
            if let redirect {
                endpoint = redirect
            } else {
                do {
                    endpoint = try await self.target(excluding: excluded, within: max(remaining, .milliseconds(1)))
                } catch let error as RedisError where Self.isTransient(error, shutDown: self.cluster.isShutDown) {
                    // No node serves the slot yet (CLUSTERDOWN): ask again within the wait.
                    failures += 1
                    self.cluster.requestRefresh()
                    let pause = RedisClusterClient.retryPause(after: failures)
                    guard clock.now + pause < deadline else { throw error }
                    try await Task.sleep(for: pause)
                    continue
                }
            }
            redirect = nil
            let client = try self.cluster.client(for: endpoint)
            // A node that cannot be reached (or a paused one) would keep the attempt for the whole wait:
            // at most half of what is left, and at most the connect timeout, so another node can answer.
            let attempt = min(max(remaining / 2, .milliseconds(1)), self.cluster.configuration.node.connectTimeout)
            do {
                let subscription = try await client.subscriberHub.subscribe(
                    self.kind,
                    self.names,
                    timeout: attempt,
                    limits: self.cluster.configuration.node.subscriptionBufferLimits
                )
                self.lastSign.withLock { $0 = Date() }
                return Placement(endpoint: endpoint, subscription: subscription, hub: client.subscriberHub, topology: self.cluster.topology)
            } catch let error as RedisError where error.serverErrorPrefix == "MOVED" {
                // The topology is behind (a slot just moved): the node names the owner.
                self.cluster.requestRefresh()
                guard let target = RedisClusterClient.redirectTarget(error, askedHost: endpoint.host) else { throw error }
                redirect = target
                continue
            } catch let error as RedisError where Self.isTransient(error, shutDown: self.cluster.isShutDown) {
                failures += 1
                if error.code == .serverError {
                    self.cluster.requestRefresh()
                } else {
                    // The node did not answer: commands too look elsewhere for a while.
                    self.cluster.nodeFailed(endpoint)
                }
                // A channel subscription tries another node next; a shard channel waits for the topology
                // to name the slot's new owner.
                if self.slot == nil { excluded.insert(endpoint) }
                let pause = RedisClusterClient.retryPause(after: failures)
                guard clock.now + pause < deadline else { throw error }
                try await Task.sleep(for: pause)
            }
        }
        throw RedisError(code: .serverError, message: "\(self.kind.subscribeCommand): too many redirections", serverErrorPrefix: "MOVED")
    }

    /// Whether the topology marks `node` failed (`CLUSTER SHARDS` says `failed`; `fail` elsewhere).
    static func isFailed(_ node: RedisClusterNode) -> Bool {
        node.health == "failed" || node.health == "fail"
    }

    /// Failures after which another attempt (elsewhere, or after a refresh) may work.
    private static func isTransient(_ error: RedisError, shutDown: Bool) -> Bool {
        switch error.code {
        case .connectionFailed, .connectionClosed, .commandTimeout, .leaseTimeout, .credentialsRejected: return true
        case .clientShutdown: return !shutDown  // a node's pool retired after it left the cluster
        case .serverError: return ["ASK", "TRYAGAIN", "CLUSTERDOWN", "LOADING"].contains(error.serverErrorPrefix ?? "")
        default: return false
        }
    }

    /// The node to subscribe on now.
    private func target(excluding: Set<Endpoint>, within wait: Duration) async throws -> Endpoint {
        if let slot = self.slot {
            return try await self.cluster.endpoint(forSlot: slot, within: wait)
        }
        // Waits for the first topology.
        let any = try await self.cluster.endpoint(forSlot: nil, within: wait)
        guard let topology = self.cluster.topology else { return any }
        let candidates = topology.nodes.filter { !Self.isFailed($0) }.map(self.cluster.endpoint(of:))
        return candidates.first { !excluding.contains($0) } ?? candidates.first ?? any
    }

    // MARK: Forwarding and moving

    private func run(_ first: Placement, sink: ClientSubscriptionSink) async {
        var placement = first
        // Bounded by the subscription's life: each round ends with a move, and the user's cancellation
        // or the cluster client's shutdown ends the loop.
        for _ in 0..<Int.max {
            let outcome = await self.forward(placement, to: sink)
            switch outcome {
            case .cancelled:
                return
            case .failed(let error):
                sink.continuation.finish(throwing: error)
                return
            case .move(let leaving):
                // A channel's last message proves less than its arrival time: a message published
                // elsewhere reaches this node over the cluster bus, later; one published just before the
                // last one arrived may still have been on its way (seen under load). The gap starts a
                // bus delay earlier for channels.
                let busDelay: TimeInterval = self.slot == nil ? Self.clusterBusDelay : 0
                let lostSince = min(self.lastSign.withLock { $0 }.addingTimeInterval(-busDelay), placement.hub.deliveryLostSince ?? Date())
                self.cluster.logger.debug("cluster subscription moving", metadata: ["node": "\(placement.endpoint)"])
                guard let next = await self.replace(leaving: leaving, sink: sink) else { return }
                placement = next
                // The old placement delivered nothing after the cut, the new one nothing before its
                // confirmation: what was published in between may be missing.
                sink.yield(.gap(from: lostSince, to: Date()), at: Date())
            }
        }
    }

    /// A new placement, with backoff until one works; `nil` when the subscription ended instead (the
    /// sequence is then finished, or its reader is gone).
    private func replace(leaving: Endpoint?, sink: ClientSubscriptionSink) async -> Placement? {
        var failures = 0
        let wait = self.cluster.configuration.node.connectTimeout + self.cluster.configuration.node.commandTimeout
        for _ in 0..<100_000 {
            if Task.isCancelled { return nil }
            if self.cluster.isShutDown {
                sink.continuation.finish(throwing: Self.shutdownError)
                return nil
            }
            do {
                let placement = try await self.place(excluding: leaving.map { [$0] } ?? [], within: wait)
                // Made as the reader left: dropping it ends it (its node unsubscribes).
                return Task.isCancelled ? nil : placement
            } catch is CancellationError {
                return nil
            } catch let error as RedisError where error.serverErrorPrefix == "NOPERM" || error.code == .clientShutdown && self.cluster.isShutDown {
                sink.continuation.finish(throwing: error)
                return nil
            } catch {
                self.cluster.logger.debug("cluster subscription could not be placed yet", metadata: ["error": "\(error)"])
                failures += 1
                self.cluster.requestRefresh()
                try? await Task.sleep(for: RedisClusterClient.retryPause(after: failures))
            }
        }
        sink.continuation.finish(throwing: RedisError(code: .connectionFailed, message: "the subscription could not be placed on any node"))
        return nil
    }

    /// Forwards `placement`'s events until it is over, and says why.
    private func forward(_ placement: Placement, to sink: ClientSubscriptionSink) async -> Outcome {
        await withTaskGroup(of: Outcome?.self) { group in
            group.addTask {
                do {
                    for try await event in placement.subscription {
                        // A shard channel's message may come from a node that lost the slot (a demoted
                        // primary hears its new primary again after a hole): only the owner check says
                        // the node was still the owner.
                        if self.slot == nil { self.lastSign.withLock { $0 = Date() } }
                        sink.yield(event, at: Date())
                    }
                    return Task.isCancelled ? nil : .move(leaving: nil)
                } catch let error as RedisError {
                    switch error.code {
                    case .subscriptionEnded:
                        // The node ended it: a shard channel's slot moved away.
                        self.cluster.requestRefresh()
                        return .move(leaving: nil)
                    case .clientShutdown:
                        // The node's pool retired (it left the cluster), or the cluster client stopped.
                        return self.cluster.isShutDown ? .failed(Self.shutdownError) : .move(leaving: placement.endpoint)
                    case .serverError where error.serverErrorPrefix == "MOVED":
                        // The node's resubscribe after a reconnect was redirected: the slot moved away.
                        self.cluster.requestRefresh()
                        return .move(leaving: nil)
                    default:
                        // NOPERM: the ACL no longer allows it anywhere.
                        return .failed(error)
                    }
                } catch {
                    return Task.isCancelled ? nil : .failed(error)
                }
            }
            group.addTask {
                await self.watch(placement)
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first ?? .cancelled
        }
    }

    /// What the placement's node says of itself now (`CLUSTER NODES`, shared by every subscription on
    /// the node, at most once per ``ownerCheckInterval``). For a shard channel: whether it serves the
    /// slot (a primary demoted by a failover keeps its shard subscribers and tells them nothing; a slot
    /// migrated away is no longer listed); when it does, what is published from the time it was asked
    /// reaches it: the subscription's new sign of life.
    private enum NodeCheck { case serving, notServing, silent, refused }

    private func check(_ endpoint: Endpoint) async -> NodeCheck {
        let report = await self.cluster.nodeReport(of: endpoint, maxAge: Self.ownerCheckInterval)
        switch report.role {
        case .unknown:
            return .silent
        case .refused:
            let warn = self.ownerCheckRefused.withLock { refused in
                defer { refused = true }
                return !refused
            }
            if warn {
                self.cluster.logger.warning(
                    "the user may not run CLUSTER NODES: a failover or a paused node is noticed from the topology, refreshed every 2 s, and gaps after a move start at the subscription's last confirmation"
                )
            }
            return .refused
        case .replica:
            return self.slot == nil ? .serving : .notServing
        case .primary(let ranges):
            if let slot = self.slot, !ranges.contains(where: { $0.contains(slot) }) { return .notServing }
            if self.slot != nil { self.lastSign.withLock { $0 = max($0, report.sent) } }
            return .serving
        }
    }

    /// Looks at the placement's node until it should be left; `nil` when cancelled.
    private func watch(_ placement: Placement) async -> Outcome? {
        let clock = ContinuousClock()
        var lostNoticed: ContinuousClock.Instant?
        var lastCheck = clock.now
        var refusedChecks = 0
        // The node's last check went unanswered: as lost, until a check is answered.
        var silent = false
        while (try? await Task.sleep(for: Self.watchInterval)) != nil {
            if self.cluster.isShutDown { continue }  // the placement's sequence ends with clientShutdown
            if placement.hub.deliveryLostSince == nil, clock.now - lastCheck >= Self.ownerCheckInterval {
                lastCheck = clock.now
                switch await self.check(placement.endpoint) {
                case .notServing:
                    // A shard's primary demoted by a failover, or the slot migrated away.
                    self.cluster.requestRefresh()
                    return .move(leaving: nil)
                case .silent:
                    // No answer (a paused or unreachable node whose connections have not closed): as lost,
                    // and commands too look elsewhere for a while.
                    if !silent { self.cluster.nodeFailed(placement.endpoint) }
                    silent = true
                case .refused:
                    // Without the check, a newer topology that names another owner will do: asked for
                    // every 2 s (a demoted primary may keep accepting SPUBLISH, so nothing else need
                    // bring one).
                    if let slot = self.slot {
                        refusedChecks += 1
                        if refusedChecks % 8 == 0 { self.cluster.requestRefresh() }
                        if let topology = self.cluster.topology, topology != placement.topology,
                            let primary = topology.shard(forSlot: slot)?.primary, self.cluster.endpoint(of: primary) != placement.endpoint
                        {
                            return .move(leaving: nil)
                        }
                    }
                case .serving:
                    silent = false
                }
            }
            guard placement.hub.deliveryLostSince != nil || silent else {
                lostNoticed = nil
                continue
            }
            // Lost: the node may have failed over or died; ask the cluster (rate-limited by the client).
            self.cluster.requestRefresh()
            let now = clock.now
            let since = lostNoticed ?? now
            lostNoticed = since
            guard let topology = self.cluster.topology else { continue }
            if let slot = self.slot {
                // Another primary serves the slot now: resubscribe there. Otherwise the node's own
                // reconnects go on (a restart, a failover not yet decided).
                if let primary = topology.shard(forSlot: slot)?.primary, self.cluster.endpoint(of: primary) != placement.endpoint {
                    return .move(leaving: placement.endpoint)
                }
            } else {
                let node = topology.nodes.first { self.cluster.endpoint(of: $0) == placement.endpoint }
                if node == nil || node.map(Self.isFailed) == true || now - since >= Self.moveAfterLoss {
                    return .move(leaving: placement.endpoint)
                }
            }
        }
        return nil
    }
}

/// What a node says of itself in `CLUSTER NODES`, asked at `sent`.
struct NodeReport: Sendable {
    enum Role: Sendable {
        /// A primary serving these slots (slots being migrated away included).
        case primary([ClosedRange<Int>])
        case replica
        /// The user may not run `CLUSTER NODES`.
        case refused
        /// No answer within a second (a paused or unreachable node), or an unreadable one.
        case unknown
    }

    var role: Role
    var sent: Date

    /// The `myself` line of a `CLUSTER NODES` reply.
    static func role(fromClusterNodes text: String) -> Role {
        for line in text.split(whereSeparator: \.isNewline) {
            let fields = line.split(separator: " ")
            guard fields.count >= 8, fields[2].split(separator: ",").contains("myself") else { continue }
            let flags = fields[2].split(separator: ",")
            if flags.contains("slave") || flags.contains("replica") { return .replica }
            guard flags.contains("master") else { return .unknown }
            var ranges: [ClosedRange<Int>] = []
            for field in fields.dropFirst(8) where !field.hasPrefix("[") {
                let bounds = field.split(separator: "-")
                if bounds.count == 1, let slot = Int(bounds[0]) {
                    ranges.append(slot...slot)
                } else if bounds.count == 2, let low = Int(bounds[0]), let high = Int(bounds[1]), low <= high {
                    ranges.append(low...high)
                }
            }
            return .primary(ranges)
        }
        return .unknown
    }
}

/// A node's report, or the request for it in flight, and when it was asked.
struct NodeReportEntry: Sendable {
    var asked: ContinuousClock.Instant
    var report: Task<NodeReport, Never>
}

extension RedisClusterClient {
    /// What `endpoint` says of itself, asked at most once per `maxAge` whatever the number of callers
    /// (every subscription on a node shares it).
    func nodeReport(of endpoint: Endpoint, maxAge: Duration) async -> NodeReport {
        let now = ContinuousClock.now
        let task = self.nodeReports.withLock { reports -> Task<NodeReport, Never> in
            if let entry = reports[endpoint], now - entry.asked < maxAge { return entry.report }
            let task = Task { await self.askNodeReport(endpoint) }
            reports[endpoint] = NodeReportEntry(asked: now, report: task)
            return task
        }
        return await task.value
    }

    private func askNodeReport(_ endpoint: Endpoint) async -> NodeReport {
        let sent = Date()
        do {
            let client = try self.client(for: endpoint)
            let text = try await client.send(RedisCommand("CLUSTER", "NODES"), timeout: .seconds(1)).string ?? ""
            return NodeReport(role: NodeReport.role(fromClusterNodes: text), sent: sent)
        } catch let error as RedisError where error.serverErrorPrefix == "NOPERM" {
            return NodeReport(role: .refused, sent: sent)
        } catch {
            return NodeReport(role: .unknown, sent: sent)
        }
    }
}

