import Foundation
import NIOCore
import RedisRotation
import RedisRotationTesting
import Testing

@Suite("Pub/sub on one connection against a real redis-server", .timeLimit(.minutes(2)))
struct PubSubConnectionTests {
    func connect(_ server: RedisServerProcess, _ password: RedisSecret) async throws -> RedisConnection {
        try await RedisConnection.connect(configuration: server.connectionConfiguration(username: "alice", password: password))
    }

    /// `PUBSUB NUMSUB channel`: how many connections the server has subscribed to it.
    func subscribers(of channel: String, on server: RedisServerProcess) async throws -> Int {
        try await server.admin("PUBSUB", "NUMSUB", .string(channel)).array?.last?.int ?? -1
    }

    @Test("messages arrive in order after subscribe returns; the channel, pattern and payload are as published")
    func subscribeAndReceive() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let subscriber = try await self.connect(server, password)
            let publisher = try await self.connect(server, password)
            let channels = try await subscriber.subscribe(to: ["orders", "payments"])
            let patterns = try await subscriber.psubscribe(to: ["news.*"])
            let shards = try await subscriber.ssubscribe(to: ["shard"])
            for index in 0..<5 {
                #expect(try await publisher.send(RedisCommand("PUBLISH", "orders", .string("o\(index)"))).int == 1)
            }
            try await publisher.send(RedisCommand("PUBLISH", "payments", .bytes([0, 255, 13, 10])))
            try await publisher.send(RedisCommand("PUBLISH", "news.today", "headline"))
            try await publisher.send(RedisCommand("SPUBLISH", "shard", "s-payload"))

            var iterator = channels.makeAsyncIterator()
            for index in 0..<5 {
                let message = try await iterator.next()
                #expect(message?.channel == "orders" && message?.string == "o\(index)" && message?.pattern == nil)
            }
            let binary = try await iterator.next()
            #expect(binary?.channel == "payments" && binary?.payload == ByteBuffer(bytes: [0, 255, 13, 10]))
            var patternIterator = patterns.makeAsyncIterator()
            let news = try await patternIterator.next()
            #expect(news?.channel == "news.today" && news?.pattern == "news.*" && news?.string == "headline")
            var shardIterator = shards.makeAsyncIterator()
            let sharded = try await shardIterator.next()
            #expect(sharded?.channel == "shard" && sharded?.isSharded == true && sharded?.string == "s-payload")
            // The description is safe to log: no channel name, no payload.
            #expect(!"\(sharded!)".contains("s-payload") && !"\(news!)".contains("news.today") && !"\(news!)".contains("headline"))
            await subscriber.close()
            await publisher.close()
        }
    }

    @Test("a raw SUBSCRIBE no longer kills the connection: its confirmations are one reply, PING still answers")
    func rawSubscribe() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await self.connect(server, password)
            let reply = try await connection.send(RedisCommand("SUBSCRIBE", "a", "b"))
            #expect(reply.array?.count == 2)
            #expect(reply.array?.last?.array?.last?.int == 2)
            // In RESP2 subscribed mode PING is answered with an array.
            let pong = try await connection.send(RedisCommand("PING"))
            #expect(pong.array?.first?.string == "pong")
            // Messages nobody listens to are dropped; the replies stay matched.
            try await server.admin("PUBLISH", "a", "unheard")
            let refused = await #expect(throws: RedisError.self) { try await connection.send(RedisCommand("GET", "k")) }
            #expect(refused?.code == .serverError)
            let unsubscribed = try await connection.send(RedisCommand("UNSUBSCRIBE"))
            #expect(unsubscribed.array?.count == 2)
            #expect(try await connection.send(RedisCommand("SET", "k", "v")).string == "OK")
            #expect(connection.isActive)
            await connection.close()
        }
    }

    @Test("a SUBSCRIBE inside MULTI is refused before anything is written (Redis answers it outside EXEC's reply)")
    func subscribeInsideMulti() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await self.connect(server, password)
            try await connection.send(RedisCommand("MULTI"))
            let refused = await #expect(throws: RedisError.self) { try await connection.send(RedisCommand("SUBSCRIBE", "a", "b")) }
            #expect(refused?.code == .invalidArgument && refused?.commandWasNotSent == true)
            try await connection.send(RedisCommand("INCR", "multi-counter"))
            #expect(try await connection.send(RedisCommand("EXEC")).array?.first?.int == 1)
            // In one pipeline too.
            let results = try? await connection.pipeline([RedisCommand("MULTI"), RedisCommand("PSUBSCRIBE", "p*"), RedisCommand("EXEC")])
            #expect(results == nil)
            #expect(try await self.subscribers(of: "a", on: server) == 0)
            #expect(try await connection.send(RedisCommand("PING")).string == "PONG")
            await connection.close()
        }
    }

    @Test("subscriptions sharing a channel: the server unsubscribes only when the last one ends")
    func sharedChannelIsReferenceCounted() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await self.connect(server, password)
            var first: RedisSubscription? = try await connection.subscribe(to: ["shared", "only-first"])
            let second = try await connection.subscribe(to: ["shared"])
            #expect(try await self.subscribers(of: "shared", on: server) == 1)
            first = nil
            await eventually("only-first is unsubscribed") { (try? await self.subscribers(of: "only-first", on: server)) == 0 }
            #expect(try await self.subscribers(of: "shared", on: server) == 1)
            #expect(first == nil)
            try await server.admin("PUBLISH", "shared", "still")
            var iterator = second.makeAsyncIterator()
            #expect(try await iterator.next()?.string == "still")
            await connection.close()
        }
    }

    @Test("cancelling the task that iterates unsubscribes on the server")
    func cancellationUnsubscribes() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await self.connect(server, password)
            let subscription = try await connection.subscribe(to: ["cancel-me"])
            let consumer = Task {
                var count = 0
                for try await _ in subscription { count += 1 }
                return count
            }
            try await server.admin("PUBLISH", "cancel-me", "one")
            #expect(try await self.subscribers(of: "cancel-me", on: server) == 1)
            consumer.cancel()
            _ = try? await consumer.value
            await eventually("the server has no subscriber left") { (try? await self.subscribers(of: "cancel-me", on: server)) == 0 }
            // Out of subscribed mode again: an ordinary command works.
            await eventually("the connection serves ordinary commands") {
                (try? await connection.send(RedisCommand("SET", "after", "1")))?.string == "OK"
            }
            await connection.close()
        }
    }

    @Test("a subscribe cancelled before its confirmation leaves nothing subscribed")
    func cancelledBeforeConfirmation() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            var configuration = server.connectionConfiguration(username: "alice", password: password)
            configuration.port = proxy.port
            let connection = try await RedisConnection.connect(configuration: configuration)
            // Already cancelled when it starts: nothing is written.
            let early = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                return try await connection.subscribe(to: ["early"])
            }
            await #expect(throws: CancellationError.self) { try await early.value }
            // Cancelled while its SUBSCRIBE is held on the way: the confirmation comes later and is
            // dropped, and the name is unsubscribed again.
            await proxy.setMode(.paused)
            let late = Task { try await connection.subscribe(to: ["late"]) }
            await eventually("the SUBSCRIBE is held") { await proxy.chunksInTransit(towardServer: true) > 0 }
            late.cancel()
            await #expect(throws: CancellationError.self) { try await late.value }
            await proxy.setMode(.forward)
            await eventually("nothing is subscribed") {
                let late = try? await self.subscribers(of: "late", on: server)
                let early = try? await self.subscribers(of: "early", on: server)
                return late == 0 && early == 0
            }
            #expect(try await connection.send(RedisCommand("SET", "k", "v")).string == "OK")
            await connection.close()
            await proxy.close()
        }
    }

    @Test("a channel the user may not read: NOPERM, and the connection keeps working")
    func subscribeRefused() async throws {
        let password = makePassword()
        try await RedisServerProcess.withServer(
            .init(users: [.init(name: "alice", passwords: [password], rules: "~* resetchannels &allowed +@all")])
        ) { server in
            let connection = try await self.connect(server, password)
            let error = await #expect(throws: RedisError.self) { try await connection.subscribe(to: ["forbidden"]) }
            #expect(error?.serverErrorPrefix == "NOPERM")
            let allowed = try await connection.subscribe(to: ["allowed"])
            try await server.admin("PUBLISH", "allowed", "yes")
            var iterator = allowed.makeAsyncIterator()
            #expect(try await iterator.next()?.string == "yes")
            await connection.close()
        }
    }

    @Test("a killed connection ends its subscriptions with connectionClosed")
    func killEndsSubscription() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await self.connect(server, password)
            let subscription = try await connection.subscribe(to: ["k"])
            try await server.admin("CLIENT", "KILL", "USER", "alice")
            let error = await #expect(throws: RedisError.self) { for try await _ in subscription {} }
            #expect(error?.code == .connectionClosed)
        }
    }

    @Test("a second subscription to a channel whose SUBSCRIBE is on its way returns only once the server confirmed it")
    func sameChannelWhileSubscribing() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let subscriber = try await self.connect(server, password)
            let publisher = try await self.connect(server, password)
            // The first SUBSCRIBE is written but waits on the server behind a BLPOP on the same connection.
            let blocker = Task { try? await subscriber.send(RedisCommand("BLPOP", "nothing-\(UUID().uuidString)", "1")) }
            try await Task.sleep(for: .milliseconds(100))
            let first = Task { try await subscriber.subscribe(to: ["a"]) }
            try await Task.sleep(for: .milliseconds(100))
            let second = try await subscriber.subscribe(to: ["a"])
            #expect(try await publisher.send(RedisCommand("PUBLISH", "a", "after-second-returned")).int == 1)
            var iterator = second.makeAsyncIterator()
            #expect(try await iterator.next()?.string == "after-second-returned")
            _ = await blocker.value
            _ = try await first.value
            await subscriber.close()
            await publisher.close()
        }
    }

    @Test("a second subscription to a channel whose SUBSCRIBE is on its way fails with the same refusal")
    func sameChannelWhileSubscribingRefused() async throws {
        let password = makePassword()
        try await RedisServerProcess.withServer(
            .init(users: [.init(name: "alice", passwords: [password], rules: "~* resetchannels &allowed +@all")])
        ) { server in
            let connection = try await self.connect(server, password)
            let blocker = Task { try? await connection.send(RedisCommand("BLPOP", "nothing", "1")) }
            try await Task.sleep(for: .milliseconds(100))
            let first = Task { try await connection.subscribe(to: ["forbidden"]) }
            try await Task.sleep(for: .milliseconds(100))
            let second = await #expect(throws: RedisError.self) { try await connection.subscribe(to: ["forbidden", "allowed"]) }
            #expect(second?.serverErrorPrefix == "NOPERM")
            let firstError = await #expect(throws: RedisError.self) { try await first.value }
            #expect(firstError?.serverErrorPrefix == "NOPERM")
            _ = await blocker.value
            // Nothing is left behind: a later subscription to the allowed channel works.
            let allowed = try await connection.subscribe(to: ["allowed"])
            try await server.admin("PUBLISH", "allowed", "yes")
            var iterator = allowed.makeAsyncIterator()
            #expect(try await iterator.next()?.string == "yes")
            await connection.close()
        }
    }

    @Test("RESET sent on the connection ends its subscriptions with subscriptionEnded; a new subscribe subscribes again")
    func resetEndsSubscriptions() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let subscriber = try await self.connect(server, password)
            let publisher = try await self.connect(server, password)
            let old = try await subscriber.subscribe(to: ["a"])
            let pattern = try await subscriber.psubscribe(to: ["p.*"])
            try await subscriber.send(RedisCommand("RESET"))
            for subscription in [old] {
                let error = await #expect(throws: RedisError.self) { for try await _ in subscription {} }
                #expect(error?.code == .subscriptionEnded)
            }
            let patternError = await #expect(throws: RedisError.self) { for try await _ in pattern {} }
            #expect(patternError?.code == .subscriptionEnded)
            // RESET also dropped the identity: authenticate again so that SUBSCRIBE is allowed.
            try await subscriber.authenticate(as: RedisCredentials(username: "alice", password: password, version: "v1"), name: nil)
            let new = try await subscriber.subscribe(to: ["a"])
            #expect(try await publisher.send(RedisCommand("PUBLISH", "a", "after-reset")).int == 1)
            var iterator = new.makeAsyncIterator()
            #expect(try await iterator.next()?.string == "after-reset")
            await subscriber.close()
            await publisher.close()
        }
    }

    @Test("a raw UNSUBSCRIBE ends the subscriptions of that channel only; a new subscribe subscribes again")
    func rawUnsubscribeEndsSubscriptions() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let subscriber = try await self.connect(server, password)
            let publisher = try await self.connect(server, password)
            let old = try await subscriber.subscribe(to: ["a"])
            let other = try await subscriber.subscribe(to: ["b"])
            try await subscriber.send(RedisCommand("UNSUBSCRIBE", "a"))
            let error = await #expect(throws: RedisError.self) { for try await _ in old {} }
            #expect(error?.code == .subscriptionEnded)
            let new = try await subscriber.subscribe(to: ["a"])
            #expect(try await publisher.send(RedisCommand("PUBLISH", "a", "after-raw-unsubscribe")).int == 1)
            #expect(try await publisher.send(RedisCommand("PUBLISH", "b", "still-there")).int == 1)
            var newIterator = new.makeAsyncIterator()
            #expect(try await newIterator.next()?.string == "after-raw-unsubscribe")
            var otherIterator = other.makeAsyncIterator()
            #expect(try await otherIterator.next()?.string == "still-there")
            // Unsubscribing everything ends the rest too.
            try await subscriber.send(RedisCommand("UNSUBSCRIBE"))
            for subscription in [new, other] {
                let error = await #expect(throws: RedisError.self) { for try await _ in subscription {} }
                #expect(error?.code == .subscriptionEnded)
            }
            await subscriber.close()
            await publisher.close()
        }
    }

    @Test("a reader that never reads: after the buffer limit the subscription ends with slowConsumer and the server unsubscribes")
    func slowConsumerEndsSubscription() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            var configuration = server.connectionConfiguration(username: "alice", password: password)
            configuration.subscriptionBufferLimits = RedisSubscriptionBufferLimits(maximumMessages: 1_000, maximumBytes: 8 << 20)
            // The client's limit is under test, not the server's: by default Redis closes a subscriber
            // whose output buffer passes 32 MB, which a loaded machine's reader can fall behind by.
            try await server.admin("CONFIG", "SET", "client-output-buffer-limit", "pubsub 0 0 0")
            let subscriber = try await RedisConnection.connect(configuration: configuration)
            let publisher = try await self.connect(server, password)
            let subscription = try await subscriber.subscribe(to: ["big"])
            // 64 MB published, nothing read.
            let payload = [UInt8](repeating: 0x5A, count: 1 << 20)
            for _ in 0..<64 {
                try await publisher.send(RedisCommand("PUBLISH", "big", .bytes(payload)))
            }
            let unsubscribed = await eventually("the server no longer sends to the subscriber") {
                (try? await self.subscribers(of: "big", on: server)) == 0
            }
            #expect(unsubscribed)
            // What was held (at most the limit) is read first, then the error.
            var held = 0
            let error = await #expect(throws: RedisError.self) {
                for try await message in subscription {
                    #expect(message.payload.readableBytes == 1 << 20)
                    held += 1
                }
            }
            #expect(error?.code == .slowConsumer)
            #expect(held >= 1 && held <= 8, "held \(held) MB")
            // The connection itself works on.
            #expect(try await subscriber.send(RedisCommand("PING")).string == "PONG")
            await subscriber.close()
            await publisher.close()
        }
    }

    /// Redis channel names are bytes, while Swift compares (and hashes) `String`s by Unicode canonical
    /// equivalence: "café" written precomposed (U+00E9) and decomposed (e + U+0301) are two channels on
    /// the server, and must be two subscriptions here too.
    static let precomposed = "caf\u{E9}"
    static let decomposed = "cafe\u{301}"

    @Test("RedisConnection: channels whose names differ only in Unicode normalization are two subscriptions")
    func connectionChannelNamesAreBytes() async throws {
        #expect(Array(Self.precomposed.utf8) != Array(Self.decomposed.utf8))
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let subscriber = try await RedisConnection.connect(configuration: server.connectionConfiguration(username: "alice", password: password))
            let first = try await subscriber.subscribe(to: [Self.precomposed])
            let second = try await subscriber.subscribe(to: [Self.decomposed])
            let receivers = try await server.admin("PUBSUB", "NUMSUB", .string(Self.decomposed)).array?.last?.int
            #expect(receivers == 1, "the server holds no subscription to the decomposed channel")
            try await server.admin("PUBLISH", .string(Self.precomposed), "for-first")
            try await server.admin("PUBLISH", .string(Self.decomposed), "for-second")
            var firstIterator = first.makeAsyncIterator()
            var secondIterator = second.makeAsyncIterator()
            #expect(try await firstIterator.next()?.string == "for-first")
            let received = try await secondIterator.next()
            #expect(received?.string == "for-second", "the second subscription got \(String(describing: received?.string)) from \(Array(received?.channel.utf8 ?? "".utf8))")
            await subscriber.close()
        }
    }

    /// The same root cause in `PubSubStateMachine`: `confirmed` is a `Set<String>`, so two channels whose
    /// names are canonically equivalent count as one. An `UNSUBSCRIBE` without names then expects one
    /// confirmation where the server sends two, and the second is handed to the next command as its
    /// reply: from then on replies are matched to the wrong commands.
    @Test("RedisConnection: UNSUBSCRIBE without names after two canonically equivalent channels keeps replies matched")
    func unsubscribeAllKeepsRepliesMatched() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let connection = try await RedisConnection.connect(configuration: server.connectionConfiguration(username: "alice", password: password))
            let subscribed = try await connection.send(RedisCommand("SUBSCRIBE", .string(Self.precomposed), .string(Self.decomposed)))
            #expect(subscribed.array?.count == 2)
            let unsubscribed = try await connection.send(RedisCommand("UNSUBSCRIBE"))
            #expect(unsubscribed.array?.count == 2, "the server confirms both channels: \(unsubscribed)")
            let pong = try await connection.send(RedisCommand("PING"))
            #expect(pong.string == "PONG", "PING was answered with \(pong)")
            let echo = try? await connection.send(RedisCommand("ECHO", "after"))
            #expect(echo?.string == "after", "ECHO was answered with \(String(describing: echo))")
            await connection.close()
        }
    }
}
