import Foundation
import RedisRotation
import RedisRotationTesting
import Testing

/// Pub/sub through RedisClusterClient against a real 3 + 3 cluster: numbered messages published while
/// the subscribed node dies, the shard channel's slot moves, and the password rotates on every node.
@Suite("Cluster client: pub/sub", .serialized, .timeLimit(.minutes(3)))
struct ClusterPubSubTests {
    func withClusterClient(
        passwordFile: Bool = false,
        rules: String = "~* &* +@all",
        _ body: @Sendable (RedisClusterProcess, RedisClusterClient, RedisSecret) async throws -> Void
    ) async throws {
        let password = makePassword()
        try await RedisClusterProcess.withCluster(.init(users: [.init(name: "alice", passwords: [password], rules: rules)])) { cluster in
            let file = cluster.nodes[0].directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: password))\nversion=v1\n", to: file)
            let client = try Self.makeClient(cluster, password: password, file: passwordFile ? file : nil)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                try await body(cluster, client, password)
                group.cancelAll()
            }
        }
    }

    static func makeClient(_ cluster: RedisClusterProcess, password: RedisSecret, file: String? = nil) throws -> RedisClusterClient {
        try RedisClusterClient(
            configuration: RedisClusterConfiguration(
                seeds: [.init(host: "127.0.0.1", port: cluster.nodes[0].port)],
                node: RedisClientConfiguration(
                    host: "127.0.0.1",
                    port: 0,
                    name: "cluster-pubsub",
                    connectTimeout: .seconds(2),
                    pool: .init(minimumConnections: 1, maximumConnections: 8, leaseTimeout: .seconds(10))
                )
            ),
            credentials: file.map { .file($0, username: "alice", pollInterval: .milliseconds(200)) }
                ?? .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
        )
    }

    /// A shard channel whose slot the initial layout gives to primary `shard` (0, 1 or 2), with `tag`.
    static func shardChannel(_ tag: String, shard: Int) -> String {
        for index in 0..<100_000 {
            let channel = "{\(tag)\(index)}:numbers"
            if min(RedisClusterSlot.slot(for: Array(channel.utf8)) / (RedisClusterSlot.count / 3), 2) == shard { return channel }
        }
        fatalError("no channel found")
    }

    // MARK: Node lost, and slot moved

    @Test("the subscribed node SIGKILLed: channel, pattern and shard subscriptions move (a failover for the shard), each message at most once, in order, every loss inside a signalled gap")
    func subscriptionsMoveWhenTheirNodeDies() async throws {
        try await self.withClusterClient { cluster, client, password in
            // The channel subscriptions go to the first primary (slots from 0); the shard channel's slot is
            // served by that primary too, so one kill moves them all.
            let shardChannel = Self.shardChannel("kill", shard: 0)
            let channels = try await client.subscribe(to: ["ps:kill"])
            let patterns = try await client.psubscribe(to: ["ps:k*"])
            let shard = try await client.ssubscribe(to: [shardChannel])
            let victim = try await cluster.primary(forSlot: RedisClusterSlot.slot(for: Array(shardChannel.utf8)))
            #expect(try await Self.subscribers(on: victim, "NUMSUB", "ps:kill") == 1, "the channel subscription is on the first primary")
            #expect(try await Self.subscribers(on: victim, "SHARDNUMSUB", shardChannel) == 1)

            let received = [Collector(channels), Collector(patterns), Collector(shard)]
            // Channel messages go through a node that survives (another primary's pool of the cluster
            // client), so that what is published while the subscription moves is acknowledged and
            // missed: the gaps must cover it.
            let survivor = try #require(try await client.primaryClients().last)
            let published = Publisher(client: client, channel: "ps:kill", sharded: false, through: survivor)
            let shardPublished = Publisher(client: client, channel: shardChannel, sharded: true)
            await published.waitForAcknowledged(100)
            await shardPublished.waitForAcknowledged(100)
            let (beforeKill, shardBeforeKill) = (published.lastAcknowledged, shardPublished.lastAcknowledged)
            victim.kill()
            // The channel subscriptions leave the dead node; the shard one waits for the replica's promotion.
            #expect(await eventually("messages after the kill", timeout: .seconds(30)) {
                received.allSatisfy { $0.gaps >= 1 } && received[0].last > beforeKill && received[1].last > beforeKill
                    && received[2].last > shardBeforeKill
            })
            await published.waitForAcknowledged(100)
            await shardPublished.waitForAcknowledged(100)
            let acknowledged = await published.finish()
            let shardAcknowledged = await shardPublished.finish()
            #expect(await eventually("the last acknowledged messages arrive", timeout: .seconds(10)) {
                received[0].last == acknowledged.lastNumber && received[1].last == acknowledged.lastNumber && received[2].last == shardAcknowledged.lastNumber
            })

            for (index, collector) in received.enumerated() {
                let problems = collector.check(acknowledged: index == 2 ? shardAcknowledged : acknowledged)
                #expect(problems.isEmpty, "subscription \(index): \(problems.prefix(5))")
            }
            // The channel subscriptions did miss what was published while they moved (the check above
            // found it inside their gaps).
            #expect(received[0].count < acknowledged.count)
            // They now live on a surviving node, and the shard one on its new primary.
            let newPrimary = try await cluster.primary(forSlot: RedisClusterSlot.slot(for: Array(shardChannel.utf8)))
            #expect(newPrimary !== victim)
            #expect(try await Self.subscribers(on: newPrimary, "SHARDNUMSUB", shardChannel) == 1)
            var channelSubscribers = 0
            for node in cluster.nodes where node.isRunning {
                channelSubscribers += try await Self.subscribers(on: node, "NUMSUB", "ps:kill")
            }
            #expect(channelSubscribers == 1)
            _ = password
        }
    }

    @Test("the shard channel's slot migrated mid-traffic: the node's sunsubscribe moves the subscription to the new owner with a gap, nothing twice; another slot's subscription on the same node is untouched")
    func shardSubscriptionFollowsItsSlot() async throws {
        try await self.withClusterClient { cluster, client, _ in
            let moving = Self.shardChannel("move", shard: 0)
            let staying = Self.shardChannel("stay", shard: 0)
            let slot = RedisClusterSlot.slot(for: Array(moving.utf8))
            let source = try await cluster.primary(forSlot: slot)
            let target = try await cluster.primary(forSlot: 16000)
            let movingSubscription = try await client.ssubscribe(to: [moving])
            let stayingSubscription = try await client.ssubscribe(to: [staying])
            let received = Collector(movingSubscription)
            let stayed = Collector(stayingSubscription)
            let published = Publisher(client: client, channel: moving, sharded: true)
            let stayPublished = Publisher(client: client, channel: staying, sharded: true)
            await published.waitForAcknowledged(100)
            try await cluster.migrate(slots: slot...slot, to: target)
            #expect(await eventually("the subscription is on the new owner", timeout: .seconds(20)) {
                (try? await Self.subscribers(on: target, "SHARDNUMSUB", moving)) == 1
            })
            await published.waitForAcknowledged(200)
            await stayPublished.waitForAcknowledged(100)
            let acknowledged = await published.finish()
            let stayAcknowledged = await stayPublished.finish()
            #expect(await eventually("the last acknowledged messages arrive", timeout: .seconds(10)) {
                received.last == acknowledged.lastNumber && stayed.last == stayAcknowledged.lastNumber
            })

            #expect(received.check(acknowledged: acknowledged).isEmpty, "\(received.check(acknowledged: acknowledged).prefix(5))")
            #expect(received.gaps >= 1, "the move is signalled")
            #expect(try await Self.subscribers(on: source, "SHARDNUMSUB", moving) == 0)
            // The other slot's subscription shared the node's subscriber connection and kept it.
            #expect(stayed.check(acknowledged: stayAcknowledged).isEmpty)
            #expect(stayed.gaps == 0)
            #expect(stayed.count == stayAcknowledged.count)
            #expect(try await Self.subscribers(on: source, "SHARDNUMSUB", staying) == 1)
        }
    }

    @Test("the shard's primary failed over (coordinated): the shard subscription ends on the new primary (the demoted one would miss messages silently); a channel subscription elsewhere is untouched; at most once, in order, losses inside gaps")
    func subscriptionsThroughACoordinatedFailover() async throws {
        try await self.coordinatedFailover(rules: "~* &* +@all")
    }

    @Test("the same failover for a user who may not run CLUSTER NODES (the owner check is refused): the shard subscription follows the refreshed topology instead")
    func coordinatedFailoverWithoutTheOwnerCheck() async throws {
        try await self.coordinatedFailover(rules: "~* &* +@all -cluster|nodes")
    }

    func coordinatedFailover(rules: String) async throws {
        try await self.withClusterClient(rules: rules) { cluster, client, _ in
            // Shard 1 fails over; the channel subscription and the PUBLISH node (the first primary) stay
            // put. (A PUBLISH node that changes mid-stream lets the cluster bus reorder messages: the
            // cluster orders PUBLISH per publishing node only.)
            let shardChannel = Self.shardChannel("fo", shard: 1)
            let slot = RedisClusterSlot.slot(for: Array(shardChannel.utf8))
            let channels = Collector(try await client.subscribe(to: ["ps:fo"]))
            let shard = Collector(try await client.ssubscribe(to: [shardChannel]))
            let published = Publisher(client: client, channel: "ps:fo", sharded: false)
            let shardPublished = Publisher(client: client, channel: shardChannel, sharded: true)
            await published.waitForAcknowledged(100)
            await shardPublished.waitForAcknowledged(100)
            let old = try await cluster.primary(forSlot: slot)
            let replicaID = try #require(try await cluster.topology().shard(forSlot: slot)?.replicas.first?.id)
            let replica = try #require(cluster.node(id: replicaID))
            try await cluster.failover(to: replica)
            #expect(await eventually("the shard subscription is on the new primary", timeout: .seconds(20)) {
                (try? await Self.subscribers(on: replica, "SHARDNUMSUB", shardChannel)) == 1
            })
            await published.waitForAcknowledged(100)
            await shardPublished.waitForAcknowledged(100)
            let acknowledged = await published.finish()
            let shardAcknowledged = await shardPublished.finish()
            #expect(await eventually("the last acknowledged messages arrive", timeout: .seconds(10)) {
                channels.last == acknowledged.lastNumber && shard.last == shardAcknowledged.lastNumber
            })
            #expect(channels.check(acknowledged: acknowledged).isEmpty, "\(channels.check(acknowledged: acknowledged).prefix(5))")
            #expect(shard.check(acknowledged: shardAcknowledged).isEmpty, "\(shard.check(acknowledged: shardAcknowledged).prefix(5))")
            #expect(shard.gaps >= 1, "the move is signalled")
            #expect(try await Self.subscribers(on: old, "SHARDNUMSUB", shardChannel) == 0)
            #expect(channels.gaps == 0)
            #expect(channels.count == acknowledged.count)
            #expect(try await Self.subscribers(on: cluster.nodes[0], "NUMSUB", "ps:fo") == 1)
        }
    }

    // MARK: Rotation

    @Test("the password rotated node by node (per-node ACLs): every subscriber connection replaced make-before-break, no message lost or repeated, no gap")
    func subscriptionsSurviveRotationOnEveryNode() async throws {
        try await self.withClusterClient(passwordFile: true) { cluster, client, password in
            // Subscriptions on two nodes; two shard channels of different slots share one node's
            // subscriber connection (its replacement subscribes them one slot per command).
            let first = Self.shardChannel("rot", shard: 1)
            let second = Self.shardChannel("rot-b", shard: 1)
            #expect(RedisClusterSlot.slot(for: Array(first.utf8)) != RedisClusterSlot.slot(for: Array(second.utf8)))
            let received = [
                Collector(try await client.subscribe(to: ["ps:rot"])),
                Collector(try await client.ssubscribe(to: [first])),
                Collector(try await client.ssubscribe(to: [second])),
            ]
            let publishers = [
                Publisher(client: client, channel: "ps:rot", sharded: false),
                Publisher(client: client, channel: first, sharded: true),
                Publisher(client: client, channel: second, sharded: true),
            ]
            for publisher in publishers { await publisher.waitForAcknowledged(100) }
            let before = try await Self.pubSubConnectionIDs(cluster)
            #expect(before.count == 2, "\(before)")

            let new = makePassword()
            for node in cluster.nodes {
                try await node.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
            }
            let file = cluster.nodes[0].directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
            #expect(await eventually("every subscriber connection was replaced", timeout: .seconds(30)) {
                let now = (try? await Self.pubSubConnectionIDs(cluster)) ?? []
                return now.count == 2 && now.isDisjoint(with: before)
            })
            for node in cluster.nodes {
                try await node.admin("ACL", "SETUSER", "alice", .string("<\(text(of: password))"))
            }
            for publisher in publishers { await publisher.waitForAcknowledged(100) }
            var acknowledged: [[Published]] = []
            for publisher in publishers { acknowledged.append(await publisher.finish()) }
            // Every acknowledged message arrives (bounded wait), none twice, and no gap was needed.
            #expect(await eventually("every acknowledged message arrived", timeout: .seconds(10)) {
                zip(received, acknowledged).allSatisfy { $0.count >= $1.count }
            })
            for (index, (collector, sent)) in zip(received, acknowledged).enumerated() {
                #expect(collector.check(acknowledged: sent).isEmpty, "subscription \(index): \(collector.check(acknowledged: sent).prefix(5))")
                #expect(collector.gaps == 0, "subscription \(index)")
                #expect(collector.count == sent.count, "subscription \(index)")
            }
        }
    }

    // MARK: Ending

    @Test("cancelling the reader unsubscribes on the node and closes the subscriber connection; shard channels across slots are refused before anything is sent; shutdown ends subscriptions")
    func endingSubscriptions() async throws {
        try await self.withClusterClient { cluster, client, password in
            let refused = await #expect(throws: RedisError.self) { try await client.ssubscribe(to: ["ps:a", "ps:b"]) }
            #expect(refused?.code == .invalidArgument)
            #expect(refused?.message.contains("hash tag") == true)
            #expect(try await Self.pubSubConnectionIDs(cluster).isEmpty, "nothing was sent")

            let shardChannel = Self.shardChannel("end", shard: 2)
            let owner = try await cluster.primary(forSlot: RedisClusterSlot.slot(for: Array(shardChannel.utf8)))
            let channels = try await client.subscribe(to: ["ps:end"])
            let shard = try await client.ssubscribe(to: [shardChannel])
            let reader = Task {
                var count = 0
                for try await event in channels where event.message != nil { count += 1 }
                return count
            }
            let shardReader = Task {
                for try await _ in shard {}
            }
            #expect(try await Self.subscribers(on: cluster.nodes[0], "NUMSUB", "ps:end") == 1)
            #expect(try await Self.subscribers(on: owner, "SHARDNUMSUB", shardChannel) == 1)
            _ = try await client.publish("one", to: "ps:end")
            reader.cancel()
            shardReader.cancel()
            #expect(await eventually("unsubscribed on the nodes, subscriber connections closed", timeout: .seconds(10)) {
                let channelSubscribers = try? await Self.subscribers(on: cluster.nodes[0], "NUMSUB", "ps:end")
                let shardSubscribers = try? await Self.subscribers(on: owner, "SHARDNUMSUB", shardChannel)
                let connections = try? await Self.pubSubConnectionIDs(cluster)
                return channelSubscribers == 0 && shardSubscribers == 0 && connections?.isEmpty == true
            })

            // A second client, stopped while its subscription is read: the sequence ends with clientShutdown.
            let stopping = try Self.makeClient(cluster, password: password)
            let run = Task { try await stopping.run() }
            let subscription = try await stopping.subscribe(to: ["ps:stop"])
            let stopped = Task { () -> RedisError? in
                do {
                    for try await _ in subscription {}
                    return nil
                } catch {
                    return error as? RedisError
                }
            }
            run.cancel()
            let error = await stopped.value
            #expect(error?.code == .clientShutdown, "\(String(describing: error))")
            #expect(await eventually("its subscriber connection is closed", timeout: .seconds(10)) {
                (try? await Self.subscribers(on: cluster.nodes[0], "NUMSUB", "ps:stop")) == 0
            })
            await #expect(throws: RedisError.self) { try await stopping.subscribe(to: ["ps:late"]) }
        }
    }

    @Test("readers cancelled while messages stream in, 40 times: each cancellation returns and unsubscribes (no deadlock between the cancelled task and a delivery)")
    func cancellingReadersMidTraffic() async throws {
        try await self.withClusterClient { cluster, client, _ in
            let flood = Task {
                for number in 1...1_000_000 where !Task.isCancelled {
                    _ = try? await client.publish(.string("\(number)"), to: "ps:flood")
                }
            }
            for _ in 0..<40 {
                let subscription = try await client.subscribe(to: ["ps:flood"])
                let reader = Task {
                    var count = 0
                    for try await _ in subscription { count += 1 }
                    return count
                }
                try await Task.sleep(for: .milliseconds(20))
                reader.cancel()
                _ = try? await reader.value
            }
            flood.cancel()
            await flood.value
            #expect(await eventually("every reader's subscription is gone", timeout: .seconds(10)) {
                (try? await Self.subscribers(on: cluster.nodes[0], "NUMSUB", "ps:flood")) == 0
            })
        }
    }

    // MARK: Helpers

    /// `PUBSUB NUMSUB` or `SHARDNUMSUB` of `channel` on `node`.
    static func subscribers(on node: RedisServerProcess, _ subcommand: String, _ channel: String) async throws -> Int {
        let admin = try await node.adminConnection()
        defer { Task { await admin.close() } }
        let reply = try await admin.send(RedisCommand("PUBSUB", .string(subcommand), .string(channel)))
        await admin.close()
        return reply.array?.last?.int ?? -1
    }

    /// The ids of alice's pub/sub connections on every running node (`CLIENT LIST TYPE pubsub`).
    static func pubSubConnectionIDs(_ cluster: RedisClusterProcess) async throws -> Set<String> {
        var ids: Set<String> = []
        for node in cluster.nodes where node.isRunning {
            let admin = try await node.adminConnection()
            let list = try await admin.send(RedisCommand("CLIENT", "LIST", "TYPE", "pubsub"), as: String.self)
            await admin.close()
            for line in list.split(separator: "\n") where line.contains(" user=alice ") {
                if let id = line.split(separator: " ").first(where: { $0.hasPrefix("id=") }) { ids.insert("\(node.port):\(id)") }
            }
        }
        return ids
    }
}

/// Publishes "1", "2", ... to a channel through the cluster client, about every 2 ms, until ``finish()``
/// (at most 100,000); remembers which numbers were acknowledged, and when.
final class Publisher: Sendable {
    private let acknowledged = Locked<[Published]>([])
    private let stop = StopFlag()
    private let task = Locked<Task<Void, Never>?>(nil)

    /// Publishes through `client`, or through `node` (one node's pool of the cluster client) when given.
    init(client: RedisClusterClient, channel: String, sharded: Bool, through node: RedisClient? = nil) {
        let (stop, acknowledged) = (self.stop, self.acknowledged)
        let task = Task {
            for number in 1...100_000 where !stop.isStopped {
                let sent = Date()
                do {
                    if let node {
                        try await node.publish(.string("\(number)"), to: channel)
                    } else if sharded {
                        try await client.spublish(.string("\(number)"), to: channel)
                    } else {
                        try await client.publish(.string("\(number)"), to: channel)
                    }
                    acknowledged.withLock { $0.append(Published(number: number, sent: sent, acknowledged: Date())) }
                } catch {
                    // Not acknowledged (a node died in flight): it may or may not arrive.
                }
                try? await Task.sleep(for: .milliseconds(2))
            }
        }
        self.task.withLock { $0 = task }
    }

    func waitForAcknowledged(_ count: Int) async {
        let start = self.acknowledged.withLock { $0.count }
        await eventually("\(count) messages published", timeout: .seconds(30)) { self.acknowledged.withLock { $0.count } >= start + count }
    }

    /// The highest number acknowledged so far.
    var lastAcknowledged: Int {
        self.acknowledged.withLock { $0.last?.number ?? 0 }
    }

    func finish() async -> [Published] {
        self.stop.stop()
        await self.task.withLock { $0 }?.value
        return self.acknowledged.withLock { $0 }
    }
}

/// A message the server acknowledged: it was published between `sent` and `acknowledged`.
struct Published: Sendable {
    var number: Int
    var sent: Date
    var acknowledged: Date
}

extension [Published] {
    var lastNumber: Int? { self.last?.number }
}

/// Reads a subscription into memory until it ends.
final class Collector: Sendable {
    private let events = Locked<[RedisSubscriptionEvent]>([])
    private let task: Task<Void, Never>

    init(_ subscription: RedisClientSubscription) {
        let events = self.events
        self.task = Task {
            do {
                for try await event in subscription { events.withLock { $0.append(event) } }
            } catch {}
        }
    }

    deinit { self.task.cancel() }

    var gaps: Int { self.events.withLock { $0.filter { if case .gap = $0 { return true } else { return false } }.count } }
    var count: Int { self.events.withLock { $0.filter { $0.message != nil }.count } }
    var last: Int { self.events.withLock { $0.last { $0.message != nil }?.message.flatMap { Int($0.string) } ?? 0 } }

    /// What breaks the guarantees: a number twice or out of order; an acknowledged number missing that
    /// was not published (between its PUBLISH being sent and acknowledged) within a signalled gap's
    /// `from...to` ("messages published between from and to may not have arrived").
    func check(acknowledged: [Published]) -> [String] {
        let events = self.events.withLock { $0 }
        var problems: [String] = []
        var previous = 0
        var received: Set<Int> = []
        var gaps: [(from: Date, to: Date)] = []
        for event in events {
            switch event {
            case .gap(let from, let to):
                gaps.append((from, to))
            case .message(let message):
                guard let number = Int(message.string) else {
                    problems.append("not a number")
                    continue
                }
                if number <= previous { problems.append("\(number) after \(previous)") }
                received.insert(number)
                previous = max(previous, number)
            }
        }
        for message in acknowledged where message.number < previous && !received.contains(message.number) {
            if !gaps.contains(where: { $0.from <= message.acknowledged && message.sent <= $0.to }) {
                problems.append("\(message.number) missing outside a gap")
            }
        }
        return problems
    }
}
