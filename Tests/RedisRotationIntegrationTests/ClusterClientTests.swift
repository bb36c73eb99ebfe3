import Foundation
import RedisRotation
import RedisRotationTesting
import ServiceLifecycle
import Synchronization
import Testing

/// RedisClusterClient against a real 3 + 3 cluster on loopback.
@Suite("Cluster client", .timeLimit(.minutes(3)))
struct ClusterClientTests {
    func withClusterClient(
        passwordFile: Bool = false,
        _ body: @Sendable (RedisClusterProcess, RedisClusterClient, RedisSecret) async throws -> Void
    ) async throws {
        try await withTestClusterClient(node: testClusterNodeConfiguration(leaseTimeout: .seconds(10)), passwordFile: passwordFile, body)
    }

    @Test("commands go to the primary of their keys' slot; keys across slots are refused; keyless commands run anywhere")
    func routing() async throws {
        try await self.withClusterClient { cluster, client, password in
            for index in 0..<200 {
                try await client.set(RedisKey("route:\(index)"), to: .integer(index))
            }
            for index in 0..<200 {
                #expect(try await client.get(RedisKey("route:\(index)"), as: Int.self) == index)
            }
            // Each key is on the node that serves its slot, not only reachable through redirections.
            let slot = RedisClusterSlot.slot(for: RedisKey("route:7"))
            let owner = try await cluster.primary(forSlot: slot)
            let direct = try await RedisConnection.connect(configuration: owner.connectionConfiguration(username: "alice", password: password))
            #expect(try await direct.get("route:7", as: Int.self) == 7)
            await direct.close()

            try await client.mset(keyValues: [.init(key: "{user:1}:a", value: "1"), .init(key: "{user:1}:b", value: "2")])
            #expect(try await client.mget(["{user:1}:a", "{user:1}:b"]).count == 2)
            let crossSlot = await #expect(throws: RedisError.self) {
                try await client.mset(keyValues: [.init(key: "a", value: "1"), .init(key: "b", value: "2")])
            }
            #expect(crossSlot?.code == .invalidArgument)
            #expect(try await client.ping() == "PONG")
            #expect(client.topology?.coversAllSlots == true)
        }
    }

    @Test("a TLS cluster (tls-cluster, tls-replication, no plain-text port): routing by slot, a failover, and every node's certificate verified")
    func tlsCluster() async throws {
        let authority = try TestCertificateAuthority(name: "Cluster CA \(UUID().uuidString.prefix(6))")
        let password = makePassword()
        try await RedisClusterProcess.withCluster(.init(users: [.init(name: "alice", passwords: [password])], tlsAuthority: authority)) { cluster in
            let context = try RedisTLSContext(configuration: RedisTLSConfiguration(trustAnchors: [authority.certificate.certificateSource]))
            let client = try RedisClusterClient(
                configuration: RedisClusterConfiguration(
                    seeds: [.init(host: "127.0.0.1", port: cluster.nodes[0].port)],
                    node: RedisClientConfiguration(host: "127.0.0.1", port: 0, name: "cluster-tls", tls: .init(context: context))
                ),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                for index in 0..<100 {
                    try await client.set(RedisKey("tls:\(index)"), to: .integer(index))
                }
                let topology = try await cluster.topology()
                #expect(topology.nodes.allSatisfy { $0.tlsPort != nil })
                let replicaID = try #require(topology.shard(forSlot: 0)?.replicas.first?.id)
                let replica = try #require(cluster.node(id: replicaID))
                try await cluster.failover(to: replica)
                for index in 0..<100 {
                    #expect(try await client.send(RedisCommand("GET", .key(RedisKey("tls:\(index)"))), timeout: .seconds(10)).int == index)
                }
                // Connections went to the TLS ports the cluster announced.
                #expect(client.connectionsByCredentialVersion.keys.allSatisfy { endpoint in cluster.nodes.contains { $0.port == endpoint.port } })
                group.cancelAll()
            }
            // A client that trusts another CA gets nowhere: the nodes' certificates are verified.
            let stranger = try TestCertificateAuthority(name: "Other CA \(UUID().uuidString.prefix(6))")
            let untrusting = try RedisClusterClient(
                configuration: RedisClusterConfiguration(
                    seeds: [.init(host: "127.0.0.1", port: cluster.nodes[0].port)],
                    node: RedisClientConfiguration(
                        host: "127.0.0.1",
                        port: 0,
                        name: "cluster-tls-untrusting",
                        tls: .init(context: try RedisTLSContext(configuration: RedisTLSConfiguration(trustAnchors: [stranger.certificate.certificateSource]))),
                        pool: .init(leaseTimeout: .seconds(1))
                    )
                ),
                credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
            )
            await withTaskGroup(of: Void.self) { group in
                group.addTask { try? await untrusting.run() }
                let error = await #expect(throws: RedisError.self) { try await untrusting.get("tls:1") }
                #expect(error?.message.contains("topology") == true || error?.code == .tlsUntrustedServerCertificate, "\(String(describing: error))")
                group.cancelAll()
            }
        }
    }

    @Test("nodes announcing host names (cluster-announce-hostname) over TLS: each node's certificate, which names only its host name, is verified against the name that node announces")
    func announcedHostnames() async throws {
        let authority = try TestCertificateAuthority(name: "Hostname CA \(UUID().uuidString.prefix(6))")
        let password = makePassword()
        try await RedisClusterProcess.withCluster(
            .init(users: [.init(name: "alice", passwords: [password])], tlsAuthority: authority, announcesHostnames: true)
        ) { cluster in
            let topology = try await cluster.topology()
            #expect(Set(topology.nodes.compactMap(\.hostname)) == Set((0..<6).map(RedisClusterProcess.Configuration.hostname(ofNode:))))
            let context = try RedisTLSContext(configuration: RedisTLSConfiguration(trustAnchors: [authority.certificate.certificateSource]))
            func makeClient(seedName: String?) throws -> RedisClusterClient {
                try RedisClusterClient(
                    configuration: RedisClusterConfiguration(
                        seeds: [.init(host: "127.0.0.1", port: cluster.nodes[0].port)],
                        node: RedisClientConfiguration(
                            host: "127.0.0.1",
                            port: 0,
                            name: "cluster-hostnames",
                            // The seed is known by its address only: its name is given for it.
                            tls: .init(context: context, serverName: seedName),
                            pool: .init(leaseTimeout: .seconds(3))
                        )
                    ),
                    credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
                )
            }
            let client = try makeClient(seedName: RedisClusterProcess.Configuration.hostname(ofNode: 0))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                // Keys on every shard: every primary's certificate verified by its own name.
                for index in 0..<60 {
                    try await client.set(RedisKey("named:\(index)"), to: .integer(index))
                    #expect(try await client.get(RedisKey("named:\(index)"), as: Int.self) == index)
                }
                #expect(client.connectionsByCredentialVersion.count >= 3)
                group.cancelAll()
            }
            // Without a name for the seed, its address is checked, which its certificate does not carry.
            let unnamed = try makeClient(seedName: nil)
            await withTaskGroup(of: Void.self) { group in
                group.addTask { try? await unnamed.run() }
                await #expect(throws: RedisError.self) { try await unnamed.get("named:1") }
                group.cancelAll()
            }
        }
    }

    @Test("one credential source for the whole cluster: a provider is called once for every node's pool, and a rotation through it reaches them all")
    func sharedCredentialSource() async throws {
        let password = makePassword()
        try await RedisClusterProcess.withCluster(.init(users: [.init(name: "alice", passwords: [password])])) { cluster in
            let current = Locked(RedisCredentials(username: "alice", password: password, version: "v1"))
            let fetches = Locked(0)
            let client = try RedisClusterClient(
                configuration: RedisClusterConfiguration(
                    seeds: [.init(host: "127.0.0.1", port: cluster.nodes[0].port)],
                    node: testClusterNodeConfiguration()
                ),
                credentials: .provider(refreshEvery: .seconds(3600)) {
                    fetches.withLock { $0 += 1 }
                    return current.withLock { $0 }
                }
            )
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                for index in 0..<60 {
                    try await client.set(RedisKey("shared:\(index)"), to: .integer(index))
                }
                // The seed's pool and one per primary, one provider call.
                #expect(client.connectionsByCredentialVersion.count >= 3)
                #expect(fetches.withLock { $0 } == 1)

                let new = makePassword()
                for node in cluster.nodes {
                    try await node.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
                }
                current.withLock { $0 = RedisCredentials(username: "alice", password: new, version: "v2") }
                client.reloadCredentials()
                await eventually("every node's pool is on v2") {
                    client.connectionsByCredentialVersion.values.allSatisfy { !$0.isEmpty && $0.keys.allSatisfy { $0 == "v2" } }
                }
                #expect(fetches.withLock { $0 } == 2)
                for index in 0..<60 {
                    #expect(try await client.get(RedisKey("shared:\(index)"), as: Int.self) == index)
                }
                group.cancelAll()
            }
        }
    }

    @Test("a pipeline split by node and reassembled in order; a transaction on one slot; keys across slots fail only themselves")
    func batches() async throws {
        try await self.withClusterClient { _, client, _ in
            var pipeline = RedisPipeline()
            var handles: [RedisQueued<Int>] = []
            for index in 0..<30 {
                handles.append(pipeline.incrby(RedisKey("batch:\(index)"), increment: index))
            }
            let crossSlot = pipeline.mset(keyValues: [.init(key: "a", value: "1"), .init(key: "b", value: "2")])
            let size = pipeline.dbsize()
            let last = pipeline.get("batch:29")
            let results = try await client.pipeline(pipeline)
            for (index, handle) in handles.enumerated() {
                #expect(try results[handle] == index)
            }
            #expect(throws: RedisError.self) { try results[crossSlot] }
            #expect(throws: RedisError.self) { try results[size] }
            #expect(try results[last].map { String(buffer: $0) } == "29")

            var tx = RedisTransaction()
            let first = tx.incr("{order:9}:count")
            tx.expire("{order:9}:count", seconds: 60)
            let second = tx.incr("{order:9}:count")
            let committed = try await client.transaction(tx)
            #expect(try committed[first] == 1)
            #expect(try committed[second] == 2)

            var spread = RedisTransaction()
            spread.incr("a")
            spread.incr("b")
            let refused = await #expect(throws: RedisError.self) { try await client.transaction(spread) }
            #expect(refused?.code == .invalidArgument)
        }
    }

    @Test("100 slots migrated and a replica promoted mid-traffic: no idempotent command fails, every acknowledged write is on a primary")
    func migrationAndFailoverUnderTraffic() async throws {
        try await self.withClusterClient { cluster, client, password in
            let traffic = ClusterTraffic(client: client, prefix: "mt", readBack: true)
            let stop = traffic.stop
            await stop.waitForProgress(200, "before the migration")
            let topology = try await cluster.topology()
            let target = try await cluster.primary(forSlot: 6000)
            // Slots 0...99 hold keys by now (mt:* hash all over the slot space).
            try await cluster.migrate(slots: 0...99, to: target)
            await stop.waitForProgress(200, "after the migration")
            let shard = try #require(topology.shard(forSlot: 12000))
            let replicaID = try #require(shard.replicas.first?.id)
            let replica = try #require(cluster.node(id: replicaID))
            try await cluster.failover(to: replica)
            await stop.waitForProgress(200, "after the failover")
            let (acknowledged, failures) = await traffic.finish()

            #expect(failures.isEmpty, "\(failures.prefix(5))")
            // The migration and the failover were seen as redirections, not hidden by a lucky refresh.
            #expect(client.redirectionsFollowed.moved > 0, "\(client.redirectionsFollowed)")
            // Every acknowledged key is on the primary that serves its slot now.
            #expect(try await keysOnPrimaries(cluster, password: password) == acknowledged.count)
        }
    }
}

extension ClusterClientTests {
    @Test("the password rotated on every node, the user's connections killed on every node, a failover, all mid-traffic: no failed command, nothing lost")
    func rotationAcrossTheCluster() async throws {
        try await self.withClusterClient(passwordFile: true) { cluster, client, password in
            let traffic = ClusterTraffic(client: client, prefix: "rot", readBack: false)
            let stop = traffic.stop
            await stop.waitForProgress(200, "before the rotation")
            // Per node, as in open-source Redis where ACLs do not propagate: add the new password
            // everywhere, publish it, wait until every pool moved, then remove the old one everywhere.
            let new = makePassword()
            for node in cluster.nodes {
                try await node.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
            }
            let file = cluster.nodes[0].directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: file)
            await eventually("every node's pool is on v2") {
                let versions = client.connectionsByCredentialVersion.values
                return !versions.isEmpty && versions.allSatisfy { $0.keys.allSatisfy { $0 == "v2" } && !$0.isEmpty }
            }
            for node in cluster.nodes {
                try await node.admin("ACL", "SETUSER", "alice", .string("<\(text(of: password))"))
            }
            await stop.waitForProgress(200, "after the rotation")
            for node in cluster.nodes {
                _ = try await node.admin("CLIENT", "KILL", "USER", "alice")
            }
            await stop.waitForProgress(200, "after the kills")
            let topology = try await cluster.topology()
            let replicaID = try #require(topology.shard(forSlot: 100)?.replicas.first?.id)
            let replica = try #require(cluster.node(id: replicaID))
            try await cluster.failover(to: replica)
            await stop.waitForProgress(200, "after the failover")
            let (acknowledged, failures) = await traffic.finish()

            #expect(failures.isEmpty, "\(failures.prefix(5))")
            #expect(try await keysOnPrimaries(cluster, password: new) == acknowledged.count)
            // Every node has exactly the new password.
            #expect(try await passwordHashes(in: cluster) == Array(repeating: [new.sha256Hex], count: cluster.nodes.count))
        }
    }
}

/// `workers` tasks (8 unless told) writing unique keys (SET marked idempotent, and optionally reading the previous one back and checking it)
/// through a cluster client until ``finish()``; at most 200,000 writes per task.
struct ClusterTraffic: Sendable {
    let stop = StopFlag()
    private let acknowledged = Locked<Set<String>>([])
    private let failures = Locked<[String]>([])
    private let task: Task<Void, Never>

    init(client: RedisClusterClient, prefix: String, workers: Int = 8, readBack: Bool) {
        let (stop, acknowledged, failures) = (self.stop, self.acknowledged, self.failures)
        self.task = Task {
            await withTaskGroup(of: Void.self) { group in
                for worker in 0..<workers {
                    group.addTask {
                        var index = 0
                        while !stop.isStopped && index < 200_000 {
                            index += 1
                            let key = "\(prefix):\(worker):\(index)"
                            do {
                                try await client.send(RedisCommand("SET", .key(RedisKey(key)), .integer(index)).idempotent())
                                acknowledged.withLock { _ = $0.insert(key) }
                                // The previous write, acknowledged, must read back as written.
                                if readBack, index > 1 {
                                    let previous = try await client.get(RedisKey("\(prefix):\(worker):\(index - 1)"), as: Int.self)
                                    if previous != index - 1 { failures.withLock { $0.append("\(prefix):\(worker):\(index - 1) read back as \(String(describing: previous))") } }
                                }
                                stop.recordSuccess()
                            } catch {
                                failures.withLock { $0.append("\(key): \(error)") }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Stops the traffic; the keys acknowledged and the failures.
    func finish() async -> (acknowledged: Set<String>, failures: [String]) {
        self.stop.stop()
        await self.task.value
        return (self.acknowledged.withLock { $0 }, self.failures.withLock { $0 })
    }
}

/// A value shared by concurrent tasks.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { self.mutex = Mutex(value) }
    func withLock<Result>(_ body: (inout Value) -> Result) -> Result { self.mutex.withLock { body(&$0) } }
}
