import Foundation
import NIOCore
import NIOPosix
import RedisRotation
import RedisRotationTesting
import Synchronization
import Testing

/// A Lua script that keeps the server busy for `milliseconds`, then increments `KEYS[1]`: a command whose
/// reply certainly takes longer than a millisecond, and whose running can be counted afterwards.
func slowIncrement(milliseconds: Int) -> String {
    """
    local t = redis.call('TIME')
    repeat local n = redis.call('TIME') until (n[1] - t[1]) * 1000000 + (n[2] - t[2]) >= \(milliseconds * 1000)
    return redis.call('INCR', KEYS[1])
    """
}

/// Defects found by a second review of the fixes in 71e86cd, shown against a real redis-server (and
/// against the fault proxy the fault-injection suite relies on). They fail on the reviewed head.
@Suite("Second review findings against a real redis-server", .timeLimit(.minutes(2)))
struct SecondReviewFindingsTests {
    // RedisClient.send gives each attempt `max(deadline - now, 1 ms)`. A lease that arrives after the
    // command's deadline (lease waits are bounded by leaseTimeout, not by the deadline) still writes the
    // command, with a 1 ms timeout. The server runs it; the reply takes longer than 1 ms; the command is
    // the oldest unanswered one on its connection, so CommandQueueStateMachine decides "the server
    // stopped answering" and closes a healthy connection. The caller gets outcomeUnknown for a command
    // that was written after it had already given up.
    @Test("a command whose deadline passed while it waited for a lease is not written and closes no connection")
    func lateLeaseNeitherWritesNorCloses() async throws {
        try await withOneConnectionClient { server, client in
            let counter = uniqueKey("late")
            let held = StopFlag()
            let holder = Task {
                try await client.withConnection { connection in
                    let id = try await connection.send(RedisCommand("CLIENT", "ID")).int
                    held.recordSuccess()
                    try await Task.sleep(for: .milliseconds(500))
                    return id
                }
            }
            await eventually("the only connection is leased") { held.successes == 1 }
            var thrown: RedisError?
            do {
                _ = try await client.send(
                    RedisCommand("EVAL", .string(slowIncrement(milliseconds: 30)), "1", .key(counter)),
                    timeout: .milliseconds(100)
                )
            } catch let error as RedisError {
                thrown = error
            }
            let idBefore = try await holder.value
            #expect(thrown != nil, "the command succeeded long after its 100 ms deadline")
            #expect(thrown?.code == .commandTimeout || thrown?.code == .leaseTimeout, "\(String(describing: thrown))")
            let runs = try await server.admin("GET", .key(counter)).string
            #expect(runs == nil, "the command was written after its deadline and ran \(runs ?? "0") time(s)")
            let idAfter = try await client.withConnection { try await $0.send(RedisCommand("CLIENT", "ID")).int }
            #expect(idAfter == idBefore, "the pool's only connection (a healthy one) was closed and replaced")
        }
    }

    // The same rule under ordinary saturation: more callers than connections, a healthy server, command
    // deadlines shorter than the queue. Every caller that gets its lease late (or with less time left than
    // the server needs) has its connection closed under it, and the pool reconnects again and again: a
    // reconnect storm against a server that never failed. Before 71e86cd each attempt had the full timeout.
    @Test("a saturated pool on a healthy server closes and reopens no connection")
    func saturatedPoolDoesNotReconnect() async throws {
        try await withOneConnectionClient(minimumConnections: 2, maximumConnections: 2) { server, client in
            await eventually("2 connections") { client.connectionsByCredentialVersion == ["v1": 2] }
            let openedBefore = client.statistics.connectionsOpened
            let counter = uniqueKey("saturated")
            let script = slowIncrement(milliseconds: 5)
            let outcomes = await withTaskGroup(of: String.self) { group in
                for _ in 0..<24 {
                    group.addTask {
                        do {
                            _ = try await client.send(RedisCommand("EVAL", .string(script), "1", .key(counter)), timeout: .milliseconds(40))
                            return "ok"
                        } catch let error as RedisError {
                            return "\(error.code)"
                        } catch {
                            return "\(error)"
                        }
                    }
                }
                return await group.reduce(into: [String: Int]()) { $0[$1, default: 0] += 1 }
            }
            try await Task.sleep(for: .milliseconds(200))
            let reopened = client.statistics.connectionsOpened - openedBefore
            let runs = try await server.admin("GET", .key(counter)).string ?? "0"
            #expect(reopened == 0, "\(reopened) connections reopened; outcomes \(outcomes); the server ran \(runs) of 24")
        }
    }
}
