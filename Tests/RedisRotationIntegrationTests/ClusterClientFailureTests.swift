import Foundation
import NIOCore
import RedisRotation
import RedisRotationTesting
import Testing

/// RedisClusterClient when nodes die, seeds are dead, no node answers, slots move, and commands are
/// about the whole keyspace.
@Suite("Cluster client: failures, discovery and keyless commands", .serialized, .timeLimit(.minutes(3)))
struct ClusterClientFailureTests {
    static func nodeConfiguration(leaseTimeout: Duration = .seconds(5)) -> RedisClientConfiguration {
        testClusterNodeConfiguration(name: "cluster-review", leaseTimeout: leaseTimeout)
    }

    /// A cluster client over `seeds` (the live cluster's first node when nil), run for the body.
    func withClusterClient(
        seeds: [RedisClusterConfiguration.Endpoint]? = nil,
        minimumRefreshInterval: Duration = .milliseconds(100),
        _ body: @Sendable (RedisClusterProcess, RedisClusterClient, RedisSecret) async throws -> Void
    ) async throws {
        try await withTestClusterClient(seeds: seeds, node: Self.nodeConfiguration(), minimumRefreshInterval: minimumRefreshInterval, body)
    }

    /// Polls `condition` every 10 ms for at most `timeout`, without recording anything.
    static func poll(timeout: Duration, _ condition: () -> Bool) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition()
    }

    /// One key per shard of the initial 3-primary layout (slots 0-5460, 5461-10921, 10922-16383).
    static func keyPerShard(prefix: String) -> [String] {
        var found: [Int: String] = [:]
        var index = 0
        while found.count < 3 {
            let key = "\(prefix):\(index)"
            let shard = min(RedisClusterSlot.slot(for: RedisKey(key)) / (RedisClusterSlot.count / 3), 2)
            if found[shard] == nil { found[shard] = key }
            index += 1
        }
        return (0..<3).map { found[$0]! }
    }

    // MARK: A primary that dies

    @Test("a primary killed with SIGKILL: a read with a 20 s deadline succeeds once its replica is promoted")
    func sigkilledPrimaryRecoveredWithinDeadline() async throws {
        try await self.withClusterClient { cluster, client, _ in
            let key = RedisKey("crash:key")
            try await client.set(key, to: "kept")
            try await waitUntilReplicated(key, in: cluster)
            let victim = try await cluster.primary(forSlot: RedisClusterSlot.slot(for: key))
            victim.kill()
            let clock = ContinuousClock()
            let start = clock.now
            let result: Result<RESPValue, any Error>
            do {
                result = .success(try await client.send(RedisCommand("GET", .key(key)), timeout: .seconds(20)))
            } catch {
                result = .failure(error)
            }
            let elapsed = clock.now - start
            // cluster-node-timeout is 2 s: the replica is promoted after about 3-4 s, well within 20 s.
            switch result {
            case .success(let value):
                #expect(value.string == "kept")
            case .failure(let error):
                Issue.record("the read failed after \(elapsed) although its deadline was 20 s and a replica took over: \(error)")
            }
        }
    }

    @Test("one dead seed among several: the first command is not held beyond its deadline, and no pool is kept for the dead seed")
    func deadSeedDoesNotStallDiscovery() async throws {
        let deadPort = try RedisServerProcess.freeLoopbackPort()
        let password = makePassword()
        try await RedisClusterProcess.withCluster(.init(users: [.init(name: "alice", passwords: [password])])) { cluster in
            let dead = RedisClusterConfiguration.Endpoint(host: "127.0.0.1", port: deadPort)
            let client = try RedisClusterClient(
                configuration: RedisClusterConfiguration(
                    seeds: [dead, .init(host: "127.0.0.1", port: cluster.nodes[1].port)],
                    node: Self.nodeConfiguration()
                ),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                let clock = ContinuousClock()
                let start = clock.now
                let reply = try? await client.send(RedisCommand("PING"), timeout: .seconds(2))
                let elapsed = clock.now - start
                #expect(elapsed < .seconds(3), "a PING with a 2 s deadline took \(elapsed): discovery waited on the dead seed's pool")
                #expect(reply?.string == "PONG", "a live seed was available: the PING should succeed within its deadline")
                _ = await eventually("the topology is known") { client.topology != nil }
                try await Task.sleep(for: .seconds(1))
                #expect(client.connectionsByCredentialVersion[dead] == nil, "a pool of the dead seed, not part of the cluster, is kept (and reconnects) forever")
                group.cancelAll()
            }
        }
    }

    // MARK: Waiting for the first topology

    @Test("no node answers: a command fails by its deadline instead of waiting for a topology forever")
    func commandHonoursDeadlineWithoutTopology() async throws {
        let client = try RedisClusterClient(
            configuration: RedisClusterConfiguration(
                seeds: [.init(host: "127.0.0.1", port: try RedisServerProcess.freeLoopbackPort()), .init(host: "127.0.0.1", port: try RedisServerProcess.freeLoopbackPort())],
                node: Self.nodeConfiguration(leaseTimeout: .milliseconds(300))
            ),
            credentials: .fixed(RedisCredentials(username: "alice", password: makePassword(), version: "v1"))
        )
        let run = Task { try await client.run() }
        let clock = ContinuousClock()
        let start = clock.now
        let outcome = Task { () -> String in
            do {
                _ = try await client.send(RedisCommand("PING"), timeout: .seconds(1))
                return "answered"
            } catch {
                return "failed: \(error)"
            }
        }
        // Give it far more than its deadline; then shut the client down, which ends any wait.
        let done = Locked<ContinuousClock.Instant?>(nil)
        let watcher = Task { _ = await outcome.value; done.withLock { $0 = clock.now } }
        _ = await Self.poll(timeout: .seconds(6)) { done.withLock { $0 } != nil }
        run.cancel()
        let result = await outcome.value
        await watcher.value
        let elapsed = (done.withLock { $0 } ?? clock.now) - start
        #expect(elapsed < .seconds(5), "a PING with a 1 s deadline was still waiting after \(elapsed) (\(result)); only the shutdown ended it")
        _ = try? await run.value
    }

    @Test("cancelling a command that waits for the first topology ends it promptly")
    func cancellingCommandWaitingForTopology() async throws {
        let client = try RedisClusterClient(
            configuration: RedisClusterConfiguration(
                seeds: [.init(host: "127.0.0.1", port: try RedisServerProcess.freeLoopbackPort())],
                node: Self.nodeConfiguration(leaseTimeout: .milliseconds(300))
            ),
            credentials: .fixed(RedisCredentials(username: "alice", password: makePassword(), version: "v1"))
        )
        let run = Task { try await client.run() }
        let finished = Locked<ContinuousClock.Instant?>(nil)
        let command = Task {
            defer { finished.withLock { $0 = ContinuousClock.now } }
            _ = try await client.send(RedisCommand("PING"), timeout: nil)
        }
        try await Task.sleep(for: .milliseconds(300))
        let cancelledAt = ContinuousClock.now
        command.cancel()
        _ = await Self.poll(timeout: .seconds(3)) { finished.withLock { $0 } != nil }
        let took = finished.withLock { $0 }.map { $0 - cancelledAt }
        #expect(took != nil && took! < .seconds(1), "the cancelled command was still waiting 3 s later (the topology wait ignores cancellation)")
        run.cancel()
        _ = try? await command.value
        _ = try? await run.value
    }

    // MARK: Keyless commands

    @Test("commands about the whole keyspace answer for the cluster: DBSIZE sums, KEYS joins, SCAN visits every primary, RANDOMKEY finds a key, FLUSHALL empties every primary; a raw SCAN cursor is refused")
    func wholeKeyspaceCommandsCoverEveryShard() async throws {
        try await self.withClusterClient { _, client, _ in
            let keys = (0..<30).map { "ks:\($0)" }
            for key in keys { try await client.set(RedisKey(key), to: "1") }
            // Sanity: the keys span all three shards.
            let shards = Set(keys.map { min(RedisClusterSlot.slot(for: RedisKey($0)) / (RedisClusterSlot.count / 3), 2) })
            try #require(shards.count == 3)

            #expect(try await client.dbsize() == 30)
            #expect(Set(try await client.keys(pattern: "ks:*").map { String(buffer: $0) }) == Set(keys))
            var scanned = Set<String>()
            for try await key in client.scan(matching: "ks:*", count: 5) { scanned.insert(String(buffer: key)) }
            #expect(scanned == Set(keys))
            #expect(try await client.randomkey().map { String(buffer: $0) }.map(keys.contains) == true)
            let raw = await #expect(throws: RedisError.self) { try await client.send(RedisCommand("SCAN", "0")) }
            #expect(raw?.code == .invalidArgument)

            try await client.flushall()
            #expect(try await client.dbsize() == 0)
            #expect(try await client.randomkey() == nil)
        }
    }

    @Test("a cluster SCAN goes on through a failover: every key present the whole time comes at least once")
    func scanThroughFailover() async throws {
        try await self.withClusterClient { cluster, client, _ in
            let keys = (0..<300).map { "sf:\($0)" }
            for key in keys { try await client.set(RedisKey(key), to: "1") }
            for key in Self.keyPerShard(prefix: "sf") { try await waitUntilReplicated(RedisKey(key), in: cluster) }
            var iterator = client.scan(matching: "sf:*", count: 10).makeAsyncIterator()
            var scanned = Set<String>()
            // A few pages of the first shard, then its primary is replaced.
            for _ in 0..<15 {
                if let key = try await iterator.next() { scanned.insert(String(buffer: key)) }
            }
            let topology = try await cluster.topology()
            let replicaID = try #require(topology.shard(forSlot: 0)?.replicas.first?.id)
            let replica = try #require(cluster.node(id: replicaID))
            try await cluster.failover(to: replica)
            while let key = try await iterator.next() { scanned.insert(String(buffer: key)) }
            #expect(scanned == Set(keys))
        }
    }

    @Test("a script loaded through the cluster client runs with EVALSHA on a key of any shard")
    func scriptLoadReachesEveryShard() async throws {
        try await self.withClusterClient { _, client, _ in
            let sha = try await client.scriptLoad(script: "return redis.call('GET', KEYS[1])")
            for key in Self.keyPerShard(prefix: "sc") {
                try await client.set(RedisKey(key), to: "v")
                do {
                    let value = try await client.evalsha(sha1: .string(sha), keys: [RedisKey(key)])
                    #expect(value.string == "v")
                } catch {
                    Issue.record("EVALSHA on \(key) (slot \(RedisClusterSlot.slot(for: RedisKey(key)))) failed: \(error)")
                }
            }
        }
    }

    @Test("a script load refused by one primary says how many primaries applied it, and the others have it")
    func scriptLoadPartlyRefused() async throws {
        try await self.withClusterClient { cluster, client, _ in
            let topology = try await cluster.topology()
            let refusingID = try #require(topology.shard(forSlot: 0)?.primary?.id)
            let refusing = try #require(cluster.node(id: refusingID))
            try await refusing.admin("ACL", "SETUSER", "alice", "-script|load")
            let error = await #expect(throws: RedisError.self) {
                try await client.scriptLoad(script: "return 7")
            }
            #expect(error?.serverErrorPrefix == "NOPERM")
            #expect(error?.message.contains("reached 2 of 3 primaries") == true, "\(String(describing: error))")
            // The two others hold it: EVALSHA works on their keys.
            let sha = "\(RedisScript("return 7").sha1)"
            for key in Self.keyPerShard(prefix: "partial") where RedisClusterSlot.slot(for: RedisKey(key)) > 5460 {
                #expect(try await client.evalsha(sha1: .string(sha), keys: [RedisKey(key)]).int == 7)
            }
        }
    }

    // MARK: Migration

    @Test("a multi-key read answered TRYAGAIN after ASK (slot importing, keys split) is retried within its deadline")
    func tryAgainAfterAskIsRetried() async throws {
        try await self.withClusterClient { cluster, client, _ in
            let a = RedisKey("{tg}a")
            let b = RedisKey("{tg}b")  // never written
            let slot = RedisClusterSlot.slot(for: a)
            try await client.set(a, to: "1")
            let source = try await cluster.primary(forSlot: slot)
            let topology = try await cluster.topology()
            let targetID = try #require(topology.shards.compactMap(\.primary?.id).first { cluster.node(id: $0) !== source })
            let target = try #require(cluster.node(id: targetID))
            let sourceID = try #require(cluster.nodeIDs[cluster.nodes.firstIndex { $0 === source }!] as String?)
            let sourceAdmin = try await source.adminConnection()
            let targetAdmin = try await target.adminConnection()
            _ = try await targetAdmin.send(RedisCommand("CLUSTER", "SETSLOT", .integer(slot), "IMPORTING", .string(sourceID)))
            _ = try await sourceAdmin.send(RedisCommand("CLUSTER", "SETSLOT", .integer(slot), "MIGRATING", .string(targetID)))
            _ = try await sourceAdmin.send(
                RedisCommand(
                    "MIGRATE",
                    arguments: ["127.0.0.1", .integer(target.port), "", 0, 10_000, "AUTH2", .string(target.adminUsername), .secret(target.adminPassword), "KEYS", .key(a)]
                )
            )
            // The migration finishes 700 ms later, as a reshard would.
            let finish = Task {
                try await Task.sleep(for: .milliseconds(700))
                _ = try await targetAdmin.send(RedisCommand("CLUSTER", "SETSLOT", .integer(slot), "NODE", .string(targetID)))
                _ = try await sourceAdmin.send(RedisCommand("CLUSTER", "SETSLOT", .integer(slot), "NODE", .string(targetID)))
                for shard in topology.shards {
                    guard let id = shard.primary?.id, id != targetID, id != sourceID, let node = cluster.node(id: id) else { continue }
                    let admin = try await node.adminConnection()
                    _ = try await admin.send(RedisCommand("CLUSTER", "SETSLOT", .integer(slot), "NODE", .string(targetID)))
                    await admin.close()
                }
            }
            do {
                let values = try await client.send(RedisCommand("MGET", .key(a), .key(b)), timeout: .seconds(5))
                #expect(values.array?.first?.string == "1")
            } catch {
                Issue.record("MGET during the migration failed instead of being retried within its 5 s deadline: \(error)")
            }
            try await finish.value
            await sourceAdmin.close()
            await targetAdmin.close()
        }
    }

    // MARK: Rotation shard by shard

    @Test("mid-rotation (new password on two shards, only the old one on the third), a replica promoted in the third shard is served with the old password the client still holds")
    func poolCreatedMidRotationKnowsTheOldPassword() async throws {
        let password = makePassword()
        try await RedisClusterProcess.withCluster(.init(users: [.init(name: "alice", passwords: [password])])) { cluster in
            let file = cluster.nodes[0].directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: password))\nversion=v1\n", to: file)
            let client = try RedisClusterClient(
                configuration: RedisClusterConfiguration(seeds: [.init(host: "127.0.0.1", port: cluster.nodes[0].port)], node: Self.nodeConfiguration()),
                credentials: .file(file, username: "alice", pollInterval: .milliseconds(200))
            )
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                let keys = Self.keyPerShard(prefix: "mid")
                for key in keys { try await client.set(RedisKey(key), to: "v") }
                let topology = try await cluster.topology()
                let lateShard = try #require(topology.shard(forSlot: RedisClusterSlot.slot(for: RedisKey(keys[2]))))
                let lateIDs = Set([lateShard.primary?.id].compactMap { $0 } + lateShard.replicas.map(\.id))
                // The rotation reached two shards: there the user has only the new password.
                let new = makePassword()
                for (index, node) in cluster.nodes.enumerated() where !lateIDs.contains(cluster.nodeIDs[index]) {
                    let admin = try await node.adminConnection()
                    _ = try await admin.send(RedisCommand("ACL", "SETUSER", "alice", .string(">\(text(of: new))"), .string("<\(text(of: password))")))
                    await admin.close()
                }
                try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
                try await Task.sleep(for: .seconds(2))
                // Every shard still serves: the late shard's pool keeps its v1 connections.
                for key in keys {
                    do { _ = try await client.get(RedisKey(key)) } catch { Issue.record("before the failover, \(key) failed: \(error)") }
                }
                // The late shard fails over (its replica, like its primary, has only the old password).
                let replica = try #require(lateShard.replicas.first.flatMap { cluster.node(id: $0.id) })
                try await cluster.failover(to: replica)
                do {
                    let value = try await client.send(RedisCommand("GET", .key(RedisKey(keys[2]))), timeout: .seconds(10))
                    #expect(value.string == "v")
                } catch {
                    Issue.record("after the failover of the shard the rotation has not reached yet, its keys fail: \(error)")
                }
                group.cancelAll()
            }
        }
    }

    @Test("after a SIGKILLed primary's replica took over, commands reach the new primary without waiting for the periodic refresh (30 s)")
    func routesToPromotedReplicaAfterCrash() async throws {
        try await self.withClusterClient { cluster, client, _ in
            let key = RedisKey("crash2:key")
            try await client.set(key, to: "kept")
            try await waitUntilReplicated(key, in: cluster)
            let slot = RedisClusterSlot.slot(for: key)
            let victim = try await cluster.primary(forSlot: slot)
            let victimID = cluster.nodeIDs[cluster.nodes.firstIndex { $0 === victim }!]
            victim.kill()
            // The application keeps sending meanwhile; these may fail (the shard has no primary yet).
            _ = try? await client.send(RedisCommand("GET", .key(key)), timeout: .seconds(1))
            // Wait until the cluster itself says a replica took over.
            var promoted = false
            for _ in 0..<100 {
                if let id = try? await cluster.topology().shard(forSlot: slot)?.primary?.id, id != victimID { promoted = true; break }
                try await Task.sleep(for: .milliseconds(200))
            }
            try #require(promoted, "the replica was not promoted within 20 s")
            try await cluster.waitUntilHealthy(timeout: .seconds(20))
            do {
                let value = try await client.send(RedisCommand("GET", .key(key)), timeout: .seconds(3))
                #expect(value.string == "kept")
            } catch {
                Issue.record("the cluster has a new primary for the slot, yet the client still fails: \(error)")
            }
        }
    }

    @Test("a MOVED reply re-routes its slot at once: later commands on that slot go straight to the new owner, before any refresh")
    func movedPatchesTheSlotMap() async throws {
        // Refreshes asked for by redirections wait two minutes: only the patched slot map can route.
        try await self.withClusterClient(minimumRefreshInterval: .seconds(120)) { cluster, client, _ in
            let key = RedisKey("patched")
            try await client.set(key, to: "1")
            let slot = RedisClusterSlot.slot(for: key)
            let owner = try await cluster.primary(forSlot: slot)
            let otherID = try #require(try await cluster.topology().shards.compactMap(\.primary).first { cluster.node(id: $0.id) !== owner }?.id)
            let target = try #require(cluster.node(id: otherID))
            try await cluster.migrate(slots: slot...slot, to: target)
            for _ in 0..<20 {
                #expect(try await client.get(key, as: String.self) == "1")
            }
            #expect(client.redirectionsFollowed.moved == 1, "\(client.redirectionsFollowed)")
            // Another key of another slot still goes where the topology says, without a redirection.
            try await client.set(RedisKey("elsewhere:\(slot)"), to: "2")
            #expect(client.redirectionsFollowed.moved == 1, "\(client.redirectionsFollowed)")
        }
    }

    @Test("a slot nobody serves for a while (CLUSTERDOWN from its node): a read waits within its deadline and succeeds once the slot is served again")
    func clusterDownForAWhile() async throws {
        try await self.withClusterClient { cluster, client, _ in
            let key = RedisKey("down:1")
            try await client.set(key, to: "kept")
            let slot = RedisClusterSlot.slot(for: key)
            let owner = try await cluster.primary(forSlot: slot)
            let admin = try await owner.adminConnection()
            _ = try await admin.send(RedisCommand("CLUSTER", "DELSLOTS", .integer(slot)))
            let before = try await errorCount("CLUSTERDOWN", on: admin)
            let read = Task { try await client.send(RedisCommand("GET", .key(key)), timeout: .seconds(20)).string }
            // The node refuses the read (CLUSTERDOWN) at least once before the slot comes back.
            try await eventually("the owner answered CLUSTERDOWN to the client", timeout: .seconds(10)) {
                try await errorCount("CLUSTERDOWN", on: admin) > before
            }
            _ = try await admin.send(RedisCommand("CLUSTER", "ADDSLOTS", .integer(slot)))
            #expect(try await read.value == "kept")
            await admin.close()
        }
    }

    @Test("a slot patched by MOVED to a node that then dies goes back to the topology's answer: a read follows the failover instead of retrying the dead node until its deadline")
    func patchedSlotToDeadNode() async throws {
        // Refreshes asked for wait two minutes: the patch and the redirections are all the client has.
        try await self.withClusterClient(minimumRefreshInterval: .seconds(120)) { cluster, client, _ in
            let key = RedisKey("patched:dies")
            try await client.set(key, to: "kept")
            let slot = RedisClusterSlot.slot(for: key)
            let owner = try await cluster.primary(forSlot: slot)
            let otherID = try #require(try await cluster.topology().shards.compactMap(\.primary).first { cluster.node(id: $0.id) !== owner }?.id)
            let target = try #require(cluster.node(id: otherID))
            try await cluster.migrate(slots: slot...slot, to: target)
            #expect(try await client.get(key, as: String.self) == "kept")  // MOVED: the slot is patched to the target.
            try await waitUntilReplicated(key, in: cluster)
            target.kill()
            let value = try await client.send(RedisCommand("GET", .key(key)), timeout: .seconds(20))
            #expect(value.string == "kept")
        }
    }

    @Test("a node configuration with a database other than 0 (which Redis Cluster refuses) is reported, not a silent hang")
    func nonZeroDatabaseIsRefused() async throws {
        let password = makePassword()
        try await RedisClusterProcess.withCluster(.init(users: [.init(name: "alice", passwords: [password])])) { cluster in
            var node = Self.nodeConfiguration(leaseTimeout: .milliseconds(500))
            node.database = 1
            let client: RedisClusterClient
            do {
                client = try RedisClusterClient(
                    configuration: RedisClusterConfiguration(seeds: [.init(host: "127.0.0.1", port: cluster.nodes[0].port)], node: node),
                    credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
                )
            } catch {
                return  // Refused up front: good.
            }
            let run = Task { try await client.run() }
            let clock = ContinuousClock()
            let start = clock.now
            let done = Locked<String?>(nil)
            let command = Task {
                do { _ = try await client.send(RedisCommand("PING"), timeout: .seconds(2)); done.withLock { $0 = "answered" } } catch { done.withLock { $0 = "\(error)" } }
            }
            _ = await Self.poll(timeout: .seconds(6)) { done.withLock { $0 } != nil }
            let outcome = done.withLock { $0 }
            #expect(outcome != nil && clock.now - start < .seconds(5), "with database 1 a PING (2 s deadline) was still waiting after 6 s; the user is told nothing")
            if let outcome { #expect(outcome.contains("SELECT") || outcome.contains("database"), "the error does not say why: \(outcome)") }
            run.cancel()
            _ = await command.value
            _ = try? await run.value
        }
    }
}
