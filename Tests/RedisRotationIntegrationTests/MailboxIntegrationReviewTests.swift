import Foundation
import NIOPosix
import RedisRotationTesting
import Testing

@testable import RedisRotation

/// Review of the per-connection mailbox against a real server: a blocking command cancelled at every
/// point of its way (posted and not drained, drained, blocked on the server) among other callers'
/// commands never stays blocked on the server for a caller that is gone, and its caller returns.
@Suite("Mailbox review against a real redis-server", .timeLimit(.minutes(3)))
struct MailboxIntegrationReviewTests {
    @Test("BLPOP 0 cancelled at every point of its way amid 6 callers' GETs, 120 rounds: it returns CancellationError or connectionClosed; no BLPOP stays blocked; an element pushed afterwards is still there")
    func cancelledBlockingPops() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let configuration = RedisConnectionConfiguration(host: server.host, port: server.port, username: "alice", password: password)
            let list = uniqueKey("mailbox")
            var connection = try await RedisConnection.connect(configuration: configuration)
            var outcomes: [String: Int] = [:]
            for round in 0..<120 {
                // The last round's cancelled BLPOP failed its caller and then closed the connection, in
                // one task on the loop: a task queued now runs after that close, so `isActive` below is
                // settled (read at once, it could still say open, and this round's BLPOP would then
                // never block on the server).
                try await connection.eventLoop.submit {}.get()
                if !connection.isActive {
                    await connection.close()
                    connection = try await RedisConnection.connect(configuration: configuration)
                    outcomes["reconnects", default: 0] += 1
                }
                let current = connection
                let gets = (0..<6).map { index in
                    Task { try await current.send(RedisCommand("GET", .key(RedisKey("test:mailbox:\(round):\(index)")))) }
                }
                let pop = Task { try await current.send(RedisCommand("BLPOP", .key(list), "0")) }
                switch round % 3 {
                case 0: break  // at once: posted, not drained yet
                case 1: for _ in 0..<(round % 40) { await Task.yield() }  // somewhere on its way
                default: try await server.waitForBlockedClients(1)  // blocked on the server
                }
                pop.cancel()
                // The cancelled caller returns (bounded: 10 s).
                let finished = Locked<Result<RESPValue, any Error>?>(nil)
                Task {
                    let result = await pop.result
                    finished.withLock { $0 = result }
                }
                let clock = ContinuousClock()
                let end = clock.now + .seconds(10)
                while clock.now < end, finished.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(2)) }
                switch finished.withLock({ $0 }) {
                case nil:
                    Issue.record("round \(round): the cancelled BLPOP's caller never returned")
                    await current.close()
                case .success(let value)?:
                    Issue.record("round \(round): BLPOP on an empty list answered \(value)")
                case .failure(let error)?:
                    if error is CancellationError {
                        outcomes["cancelled", default: 0] += 1
                    } else if let error = error as? RedisError, error.code == .connectionClosed {
                        outcomes["closed", default: 0] += 1
                    } else {
                        Issue.record("round \(round): \(error)")
                    }
                }
                for get in gets { _ = await get.result }
            }
            await connection.close()
            // No BLPOP left blocked on the server: an element pushed now stays in the list.
            try await server.waitForBlockedClients(0)
            _ = try await server.admin("RPUSH", .key(list), "element")
            #expect(try await server.admin("LLEN", .key(list)) == .integer(1))
            // A BLPOP cancelled while blocked closes its connection (every third round at least).
            #expect(outcomes["reconnects", default: 0] >= 39)
            print("mailbox cancelled pops: \(outcomes)")
        }
    }

    final class WeakHandler: @unchecked Sendable {
        weak var value: RedisCommandHandler?
    }

    /// Connects, sends commands through the mailbox, has the connection closed by `closer`, and lets go of
    /// it; returns a weak reference to its command handler.
    func handlerAfterUse(_ configuration: RedisConnectionConfiguration, server: RedisServerProcess, closer: String) async throws -> WeakHandler {
        let connection = try await RedisConnection.connect(configuration: configuration)
        for index in 0..<20 { _ = try await connection.send(RedisCommand("ECHO", .string("m\(index)"))) }
        let weak = WeakHandler()
        let handler = connection.handler
        try await connection.eventLoop.submit { weak.value = handler.value }.get()
        switch closer {
        case "client":
            await connection.close()
        default:
            let id = try #require(connection.clientID)
            _ = try await server.admin("CLIENT", "KILL", "ID", .string("\(id)"))
            await connection.waitUntilClosed()
        }
        return weak
    }

    @Test("a connection closed by the client or by the server after commands went through its mailbox, then let go: its command handler is freed (the mailbox's cycle handler -> progress -> handler is broken)", arguments: ["client", "server"])
    func handlerFreedAfterClose(closer: String) async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let configuration = RedisConnectionConfiguration(host: server.host, port: server.port, username: "alice", password: password)
            let weak = try await self.handlerAfterUse(configuration, server: server, closer: closer)
            // NIO lets go of the channel's pipeline once its close has run its course (bounded: 10 s).
            let clock = ContinuousClock()
            let end = clock.now + .seconds(10)
            while clock.now < end, weak.value != nil { try await Task.sleep(for: .milliseconds(5)) }
            #expect(weak.value == nil, "the command handler outlived its closed connection")
        }
    }

    @Test("subscribe, a subscription command and a PING on a connection whose event loop group has shut down: each fails with connectionClosed, not sent, instead of waiting for ever")
    func pubSubAfterLoopShutdown() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await Self.connectionOnAShutDownLoop(server, password)
            let finished = Locked<[String: String]>([:])
            let tasks = [
                Task {
                    do {
                        _ = try await connection.subscribe(to: ["news"])
                        finished.withLock { $0["subscribe"] = "subscribed" }
                    } catch {
                        finished.withLock { $0["subscribe"] = Self.describe(error) }
                    }
                },
                Task {
                    do {
                        try await connection.sendSubscriptionCommand("UNSUBSCRIBE", [PubSubName("news")], timeout: .seconds(5))
                        finished.withLock { $0["unsubscribe"] = "sent" }
                    } catch {
                        finished.withLock { $0["unsubscribe"] = Self.describe(error) }
                    }
                },
                Task {
                    do {
                        try await connection.ping(timeout: .seconds(5)) {}
                        finished.withLock { $0["ping"] = "answered" }
                    } catch {
                        finished.withLock { $0["ping"] = Self.describe(error) }
                    }
                },
            ]
            // Bounded: 5 s for all three.
            let clock = ContinuousClock()
            let end = clock.now + .seconds(5)
            while clock.now < end, finished.withLock({ $0.count }) < tasks.count { try await Task.sleep(for: .milliseconds(5)) }
            let outcomes = finished.withLock { $0 }
            for name in ["subscribe", "unsubscribe", "ping"] {
                #expect(outcomes[name] == "connectionClosed, not sent", "\(name): \(outcomes[name] ?? "never returned")")
            }
            for task in tasks { task.cancel() }
        }
    }

    final class NoReceiver: PubSubPushReceiver, Sendable {
        func received(_ push: PubSubStateMachine.Push) {}
        func unsubscribedByCommand(_ kind: PubSubStateMachine.Kind, name: PubSubName) {}
        func connectionClosed(_ error: RedisError) {}
    }

    @Test("the client's push receiver installed on a connection whose event loop group has shut down: the install returns instead of waiting for ever (it waited on a task the loop dropped)")
    func pushReceiverAfterLoopShutdown() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await Self.connectionOnAShutDownLoop(server, password)
            let returned = Locked(false)
            let install = Task {
                await connection.installPushReceiver(NoReceiver())
                returned.withLock { $0 = true }
            }
            await eventually("installPushReceiver returns", timeout: .seconds(5)) { returned.withLock { $0 } }
            install.cancel()
        }
    }

    /// A connection whose event loop group (of its own) has shut down since it connected.
    static func connectionOnAShutDownLoop(_ server: RedisServerProcess, _ password: RedisSecret) async throws -> RedisConnection {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let configuration = RedisConnectionConfiguration(host: server.host, port: server.port, username: "alice", password: password)
        let connection = try await RedisConnection.connect(configuration: configuration, eventLoopGroup: group)
        try await group.shutdownGracefully()
        return connection
    }

    static func describe(_ error: any Error) -> String {
        guard let error = error as? RedisError else { return "\(error)" }
        return error.code == .connectionClosed && error.commandWasNotSent ? "connectionClosed, not sent" : "\(error)"
    }
}
