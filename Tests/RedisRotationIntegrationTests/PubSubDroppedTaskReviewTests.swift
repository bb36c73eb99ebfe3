import Foundation
import NIOCore
import NIOPosix
import RedisRotationTesting
import Testing

@testable import RedisRotation

/// Hostile review of the pub/sub waits that a dropped task answers (`DroppedTaskTicket`): cancellations
/// at every point of a subscribe among other subscriptions on one connection, and an event loop group
/// shut down under them.
@Suite("Pub/sub waits a dropped task answers (review)", .timeLimit(.minutes(3)))
struct PubSubDroppedTaskReviewTests {
    func numsub(_ channels: [String], on server: RedisServerProcess) async throws -> [Int] {
        let admin = try await server.adminConnection()
        defer { Task { await admin.close() } }
        let reply = try await admin.send(RedisCommand("PUBSUB", arguments: [.string("NUMSUB")] + channels.map { .string($0) }))
        let items = reply.array ?? []
        return stride(from: 1, to: items.count, by: 2).map { items[$0].int ?? -1 }
    }

    @Test("120 rounds of 6 subscribes to overlapping channels on one connection, each cancelled after 0 to 7 yields or dropped at once: no channel stays subscribed on the server, and the connection then subscribes and receives")
    func churn() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let configuration = RedisConnectionConfiguration(host: server.host, port: server.port, username: "alice", password: password)
            let connection = try await RedisConnection.connect(configuration: configuration)
            let channels = (0..<4).map { "churn-\($0)-\(UUID().uuidString)" }
            var random = SplitMix64(seed: 42)
            var outcomes: [String: Int] = [:]
            for _ in 0..<120 {
                var tasks: [(Task<String, Never>, Int)] = []
                for _ in 0..<6 {
                    let names = Array(channels.shuffled(using: &random).prefix(Int.random(in: 1...3, using: &random)))
                    let task = Task { () -> String in
                        do {
                            _ = try await connection.subscribe(to: names)
                            return "subscribed"
                        } catch let error as RedisError {
                            return "\(error.code)"
                        } catch {
                            return "\(type(of: error))"
                        }
                    }
                    tasks.append((task, Int.random(in: 0..<9, using: &random)))
                }
                for (task, yields) in tasks where yields < 8 {
                    for _ in 0..<yields { await Task.yield() }
                    task.cancel()
                }
                for (task, _) in tasks { outcomes[await task.value, default: 0] += 1 }
            }
            #expect(connection.isActive, "\(outcomes)")
            let drained = try await eventually("every channel unsubscribed", timeout: .seconds(10)) {
                try await self.numsub(channels, on: server).allSatisfy { $0 == 0 }
            }
            let left = try await self.numsub(channels, on: server)
            #expect(drained, "still subscribed: \(left); outcomes \(outcomes)")
            let subscription = try await connection.subscribe(to: [channels[0]])
            try await server.admin("PUBLISH", .string(channels[0]), "after")
            var iterator = subscription.makeAsyncIterator()
            #expect(try await iterator.next()?.string == "after")
            await connection.close()
        }
    }

    @Test("an event loop group shut down under 8 subscribes, a PING and a subscription command at every point (40 rounds): each returns, none hangs")
    func groupShutdownUnderWaits() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let configuration = RedisConnectionConfiguration(host: server.host, port: server.port, username: "alice", password: password)
            var outcomes: [String: Int] = [:]
            for round in 0..<40 {
                let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
                let connection = try await RedisConnection.connect(configuration: configuration, eventLoopGroup: group)
                let finished = Locked(0)
                var tasks: [Task<String, Never>] = []
                for index in 0..<10 {
                    tasks.append(Task {
                        defer { finished.withLock { $0 += 1 } }
                        do {
                            switch index {
                            case 8: try await connection.ping(timeout: .seconds(30)) {}
                            case 9: try await connection.sendSubscriptionCommand("SUBSCRIBE", [PubSubName("x-\(round)")], timeout: .seconds(30))
                            default: _ = try await connection.subscribe(to: ["s-\(index % 3)"])
                            }
                            return "ok"
                        } catch let error as RedisError {
                            return "\(error.code)"
                        } catch {
                            return "\(type(of: error))"
                        }
                    })
                }
                for _ in 0..<(round % 8) { await Task.yield() }
                try await group.shutdownGracefully()
                let clock = ContinuousClock()
                let end = clock.now + .seconds(5)
                while clock.now < end, finished.withLock({ $0 }) < tasks.count { try await Task.sleep(for: .milliseconds(5)) }
                #expect(finished.withLock { $0 } == tasks.count, "round \(round): \(tasks.count - finished.withLock { $0 }) waits never returned")
                guard finished.withLock({ $0 }) == tasks.count else { return }
                for task in tasks { outcomes[await task.value, default: 0] += 1 }
                await connection.close()
            }
            #expect(outcomes.count > 0, "\(outcomes)")
        }
    }
}
