import Foundation
import RedisRotation
import Synchronization

/// What a load run drives: one server's pool (``RedisClient``) or a cluster (``RedisClusterClient``).
/// The workload only sends commands; what differs is how the run watches the connections and counts
/// the writes afterwards.
protocol LoadTarget: RedisCommandExecutor {
    /// Runs the client (a `Service`) until cancelled.
    func run() async throws
    /// Feeds the pools' rotation events into `recorder` until cancelled.
    func forwardEvents(to recorder: LoadRecorder) async
    /// Commands resent after a connection failure, over all pools.
    func retriedCommands() async -> Int
    /// Pooled connections per credential version, over all pools.
    var connectionsByVersion: [String: Int] { get }
    /// The same per node (`host:port`), for a cluster; `nil` for one server.
    var connectionsByNode: [String: [String: Int]]? { get }
    /// The connections part of the progress line.
    var progressConnections: String { get }
    /// Checks that every acknowledged write is on the server(s).
    func verify(_ writes: AcknowledgedWrites) async throws -> WriteVerification
    /// The single-node client, for what only it supports here (pub/sub load).
    var singleNode: RedisClient? { get }
}

extension RedisClient: LoadTarget {
    func forwardEvents(to recorder: LoadRecorder) async {
        for await event in self.events {
            recorder.event("\(event.kind)", "\(event)")
        }
    }

    func retriedCommands() async -> Int { self.statistics.commandsRetried }

    var connectionsByVersion: [String: Int] { self.connectionsByCredentialVersion }

    var connectionsByNode: [String: [String: Int]]? { nil }

    var progressConnections: String {
        let versions = self.connectionsByCredentialVersion.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ",")
        let generations = self.connectionsByTLSGeneration.sorted { $0.key < $1.key }.map { "g\($0.key):\($0.value)" }.joined(separator: ",")
        return "credentials \(versions.isEmpty ? "-" : versions)  tls \(generations.isEmpty ? "-" : generations)"
    }

    /// Counts how many of the acknowledged writes' keys exist on the server.
    func verify(_ writes: AcknowledgedWrites) async throws -> WriteVerification {
        var found = 0
        try await writes.forEachBatch(of: 500) { keys in
            found += try await self.send(RedisCommand("EXISTS", arguments: keys.map { .string($0) }), as: Int.self)
        }
        let acknowledged = writes.total
        return WriteVerification(acknowledged: acknowledged, found: found, lost: acknowledged - found)
    }

    var singleNode: RedisClient? { self }
}

extension RedisClusterClient: LoadTarget {
    /// Every node pool's events. Pools are created as the topology changes (a promoted replica), so
    /// the primaries are looked at every half second and each new pool's stream (one consumer each) is
    /// followed from then on.
    func forwardEvents(to recorder: LoadRecorder) async {
        await withDiscardingTaskGroup { group in
            var followed: Set<ObjectIdentifier> = []
            while !Task.isCancelled {
                for client in (try? await self.primaryClients(timeout: .seconds(1))) ?? [] where followed.insert(ObjectIdentifier(client)).inserted {
                    group.addTask {
                        for await event in client.events {
                            recorder.event("\(event.kind)", "\(event)")
                        }
                    }
                }
                try? await Task.sleep(for: .milliseconds(500))
            }
            group.cancelAll()
        }
    }

    /// Commands resent within the pools of the current primaries (a pool of a node that left keeps its
    /// count to itself), plus the redirections followed.
    func retriedCommands() async -> Int {
        let pools = ((try? await self.primaryClients(timeout: .seconds(1))) ?? []).reduce(0) { $0 + $1.statistics.commandsRetried }
        let redirections = self.redirectionsFollowed
        return pools + redirections.moved + redirections.ask
    }

    var connectionsByVersion: [String: Int] {
        var total: [String: Int] = [:]
        for (_, versions) in self.connectionsByCredentialVersion {
            for (version, count) in versions { total[version, default: 0] += count }
        }
        return total
    }

    var connectionsByNode: [String: [String: Int]]? {
        Dictionary(uniqueKeysWithValues: self.connectionsByCredentialVersion.map { ($0.key.description, $0.value) })
    }

    /// Per node, by port: `:7001 v2×4 v3×1  :7002 v2×5`.
    var progressConnections: String {
        let nodes = self.connectionsByCredentialVersion.sorted { ($0.key.port, $0.key.host) < ($1.key.port, $1.key.host) }
        let parts = nodes.map { endpoint, versions in
            let counts = versions.filter { $0.value > 0 }.sorted { $0.key < $1.key }.map { "\($0.key)×\($0.value)" }
            return ":\(endpoint.port) " + (counts.isEmpty ? "-" : counts.joined(separator: " "))
        }
        return "nodes " + (parts.isEmpty ? "-" : parts.joined(separator: "  "))
    }

    /// Checks each acknowledged key through the cluster (`EXISTS` per key, pipelined and split per
    /// node), then counts the run's keys on every primary (`SCAN MATCH` per primary): both must equal
    /// the acknowledged writes.
    func verify(_ writes: AcknowledgedWrites) async throws -> WriteVerification {
        var found = 0
        try await writes.forEachBatch(of: 500) { keys in
            var pipeline = RedisPipeline()
            for key in keys { _ = pipeline.queue(RedisCommand("EXISTS", .string(key))) }
            let results = try await self.pipeline(pipeline)
            for index in 0..<results.count { found += try results.value(at: index, as: Int.self) }
        }
        let acknowledged = writes.total
        let onPrimaries = try await self.countOnPrimaries(matching: "\(writes.keyPrefix):w:*")
        return WriteVerification(acknowledged: acknowledged, found: found, lost: acknowledged - found, on_primaries: onPrimaries)
    }

    /// Keys matching `pattern`, summed over the primaries. The topology the client routes by may
    /// still name a demoted primary right after a failover: every pool asked must say `ROLE` master,
    /// else the count is taken again once the topology caught up (at most 10 seconds).
    private func countOnPrimaries(matching pattern: String) async throws -> Int {
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(10)
        while true {
            let primaries = try await self.primaryClients()
            var allPrimary = true
            for client in primaries {
                let role = try await client.send(RedisCommand("ROLE")).array?.first?.string
                if role != "master" { allPrimary = false }
            }
            if !allPrimary {
                // Something routed to a demoted node answers MOVED, which refreshes the topology.
                _ = try? await self.send(RedisCommand("EXISTS", .string("\(pattern):refresh")), timeout: .seconds(1))
                guard clock.now < deadline else {
                    throw RunFailure(description: "the cluster client's topology still names a replica as primary after 10 seconds", exitCode: 1)
                }
                try await Task.sleep(for: .milliseconds(200))
                continue
            }
            var total = 0
            for client in primaries {
                var cursor = "0"
                // Bounded: at most a million rounds of (about) 1,000 keys.
                for _ in 0..<1_000_000 {
                    let reply = try await client.send(RedisCommand("SCAN", .string(cursor), "MATCH", .string(pattern), "COUNT", 1000)).array ?? []
                    guard reply.count == 2, let next = reply[0].string else {
                        throw RunFailure(description: "SCAN gave an unexpected reply", exitCode: 1)
                    }
                    total += reply[1].array?.count ?? 0
                    cursor = next
                    if cursor == "0" { break }
                }
            }
            return total
        }
    }

    var singleNode: RedisClient? { nil }
}
