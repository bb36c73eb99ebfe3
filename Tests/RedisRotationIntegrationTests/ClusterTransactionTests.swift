import Foundation
import RedisRotation
import RedisRotationTesting
import Testing

/// Optimistic transactions (`WATCH`) through the cluster client: confined to one slot, retried on a
/// conflict, and sent again to the new owner when the slot moved before anything ran.
@Suite("Cluster client: transactions watching keys", .serialized, .timeLimit(.minutes(3)))
struct ClusterTransactionTests {
    @Test("WATCH, read, transaction on one slot; a conflicting write makes it run again; keys of two slots are refused before anything is sent")
    func watchingOneSlot() async throws {
        try await withTestClusterClient { _, client, _ in
            try await client.set("{acct:1}:balance", to: .integer(100))
            let runs = Locked(0)
            let results = try await client.transaction(watching: ["{acct:1}:balance"]) { connection in
                let run = runs.withLock { value -> Int in
                    value += 1
                    return value
                }
                let balance = try await connection.get("{acct:1}:balance", as: Int.self) ?? 0
                if run == 1 {
                    // Someone else changes the watched key between the read and EXEC.
                    try await client.set("{acct:1}:balance", to: .integer(balance + 1))
                }
                var tx = RedisTransaction()
                tx.queue(RedisCommand("SET", "{acct:1}:balance", .integer(Int64(balance + 10))))
                tx.queue(RedisCommand("INCR", "{acct:1}:transfers"))
                return tx
            }
            #expect(runs.withLock { $0 } == 2)
            #expect(results.results.count == 2)
            #expect(try await client.get("{acct:1}:balance", as: Int.self) == 111)
            #expect(try await client.get("{acct:1}:transfers", as: Int.self) == 1)

            let spread = await #expect(throws: RedisError.self) {
                try await client.transaction(watching: ["{acct:1}:balance", "{acct:2}:balance"]) { _ in RedisTransaction() }
            }
            #expect(spread?.code == .invalidArgument)

            // A transaction that leaves the watched slot is refused before EXEC; nothing of it ran.
            let leaving = await #expect(throws: RedisError.self) {
                try await client.transaction(watching: ["{acct:1}:balance"]) { _ in
                    var tx = RedisTransaction()
                    tx.queue(RedisCommand("SET", "{acct:1}:balance", 0))
                    tx.queue(RedisCommand("SET", "{acct:2}:balance", 0))
                    return tx
                }
            }
            #expect(leaving?.code == .invalidArgument)
            #expect(try await client.get("{acct:1}:balance", as: Int.self) == 111)
            #expect(try await client.get("{acct:2}:balance", as: Int.self) == nil)
        }
    }

    @Test("the watched slot moved and the client does not know yet: the WATCH is redirected, and the transaction runs once on the new owner")
    func watchedSlotMoved() async throws {
        // Refreshes wait two minutes: only the redirection can tell the client where the slot went.
        try await withTestClusterClient(minimumRefreshInterval: .seconds(120)) { cluster, client, _ in
            let key = RedisKey("{moving}:counter")
            try await client.set(key, to: .integer(1))
            let slot = RedisClusterSlot.slot(for: key)
            let owner = try await cluster.primary(forSlot: slot)
            let otherID = try #require(try await cluster.topology().shards.compactMap(\.primary).first { cluster.node(id: $0.id) !== owner }?.id)
            try await cluster.migrate(slots: slot...slot, to: try #require(cluster.node(id: otherID)))

            let runs = Locked(0)
            let results = try await client.transaction(watching: [key]) { connection in
                runs.withLock { $0 += 1 }
                let value = try await connection.get(key, as: Int.self) ?? 0
                var tx = RedisTransaction()
                tx.queue(RedisCommand("SET", .key(key), .integer(Int64(value * 10))))
                return tx
            }
            #expect(results.results.count == 1)
            #expect(runs.withLock { $0 } == 1, "the body runs only where the WATCH held")
            #expect(try await client.get(key, as: Int.self) == 10)
            #expect(client.redirectionsFollowed.moved == 1, "\(client.redirectionsFollowed)")

            // A built transaction on the same slot goes straight to the new owner.
            var tx = RedisTransaction()
            tx.queue(RedisCommand("INCR", .key(key)))
            #expect(try await client.transaction(tx).results.count == 1)
            #expect(try await client.get(key, as: Int.self) == 11)
        }
    }
}
