import NIOCore
import Synchronization

/// Hears a connection's pub/sub pushes, and its close, on the connection's event loop.
protocol PubSubPushReceiver: AnyObject {
    func received(_ push: PubSubStateMachine.Push)
    /// The connection closed; called once, and nothing is received after it.
    func connectionClosed(_ error: RedisError)
}

extension RedisConnection {
    /// Subscribes to `channels` (`SUBSCRIBE`) and returns once the server confirmed each of them: every
    /// message published to them from then on is in the returned sequence.
    ///
    /// Several subscriptions may share the connection; a channel is subscribed on the server while any of
    /// them uses it. While subscribed, the server refuses other commands on this connection (RESP2).
    ///
    /// - Throws: ``RedisError`` with `serverError` (`NOPERM` for a channel the user may not read),
    ///   `commandTimeout` or `connectionClosed`; `CancellationError`.
    public func subscribe(to channels: [String]) async throws -> RedisSubscription {
        try await self.subscribe(.channel, channels)
    }

    /// Subscribes to the channels matching `patterns` (`PSUBSCRIBE`); messages carry the pattern.
    public func psubscribe(to patterns: [String]) async throws -> RedisSubscription {
        try await self.subscribe(.pattern, patterns)
    }

    /// Subscribes to sharded channels (`SSUBSCRIBE`, Redis 7).
    public func ssubscribe(to channels: [String]) async throws -> RedisSubscription {
        try await self.subscribe(.shardChannel, channels)
    }

    private func subscribe(_ kind: PubSubStateMachine.Kind, _ names: [String]) async throws -> RedisSubscription {
        precondition(!names.isEmpty, "a subscription needs at least one channel or pattern")
        try Task.checkCancellation()
        let (stream, continuation) = AsyncThrowingStream<RedisPubSubMessage, any Error>.makeStream()
        let id = subscriptionIDs.add(1, ordering: .relaxed).newValue
        let handler = self.handler
        let eventLoop = self.eventLoop
        // The server cannot be made to forget a subscription another user would inherit.
        self.session.withLock { $0.state.commandEnqueued(.irreversible(kind.subscribeCommand)) }
        continuation.onTermination = { _ in
            eventLoop.execute {
                guard let router = handler.value.pushReceiver as? SubscriptionRouter else { return }
                for (kind, names) in router.remove(id) {
                    handler.value.sendSubscriptionCommand(kind.unsubscribeCommand, names, promise: nil, deadline: .now() + .seconds(30))
                }
            }
        }
        let promise = eventLoop.makePromise(of: RESPValue.self)
        let commandID = subscriptionCommandIDs.add(1, ordering: .relaxed).newValue
        let deadline = NIODeadline.now() + TimeAmount(self.configuration.commandTimeout)
        eventLoop.execute {
            let router: SubscriptionRouter
            if let existing = handler.value.pushReceiver as? SubscriptionRouter {
                router = existing
            } else {
                router = SubscriptionRouter()
                handler.value.installPushReceiver(router)
            }
            let new = router.add(id, kind: kind, names: names, continuation: continuation)
            guard !new.isEmpty else { return promise.succeed(.array([])) }
            handler.value.sendSubscriptionCommand(kind.subscribeCommand, new, promise: promise, deadline: deadline, id: commandID)
        }
        let reply: RESPValue
        do {
            reply = try await withTaskCancellationHandler {
                try await promise.futureResult.get()
            } onCancel: {
                eventLoop.execute { handler.value.cancel(id: commandID) }
            }
        } catch {
            // Ends the registration (and unsubscribes what only it used).
            continuation.finish()
            throw error
        }
        if case .error(let buffer) = reply {
            continuation.finish()
            throw Self.serverError(buffer, command: RedisCommand(kind.subscribeCommand))
        }
        return RedisSubscription(stream: stream)
    }

    /// Installs `receiver` as the one hearer of this connection's pushes (the client's subscriber,
    /// which needs one ordered stream of everything the connection receives).
    func installPushReceiver(_ receiver: some PubSubPushReceiver & Sendable) async {
        let handler = self.handler
        self.session.withLock { $0.state.commandEnqueued(.irreversible("SUBSCRIBE")) }
        try? await self.eventLoop.submit { handler.value.installPushReceiver(receiver) }.get()
    }

    /// Sends a subscribe-family command for `names` and waits for every confirmation.
    ///
    /// - Throws: `serverError` for an error reply, `commandTimeout`, `connectionClosed`.
    func sendSubscriptionCommand(_ name: String, _ names: [String], timeout: Duration) async throws {
        let handler = self.handler
        let promise = self.eventLoop.makePromise(of: RESPValue.self)
        let deadline = NIODeadline.now() + TimeAmount(timeout)
        self.eventLoop.execute { handler.value.sendSubscriptionCommand(name, names, promise: promise, deadline: deadline) }
        if case .error(let buffer) = try await promise.futureResult.get() {
            throw Self.serverError(buffer, command: RedisCommand(name))
        }
    }
}

/// Numbers the subscriptions of every connection, and the commands they send (in a range of their own,
/// so that cancelling one never touches another command).
private let subscriptionIDs = Atomic<UInt64>(0)
private let subscriptionCommandIDs = Atomic<UInt64>(1 << 62)

extension RedisCommandHandler {
    /// Writes `name names...` (a subscribe-family command). A `nil` promise drops the replies. On the
    /// event loop.
    func sendSubscriptionCommand(
        _ name: String,
        _ names: [String],
        promise: EventLoopPromise<RESPValue>?,
        deadline: NIODeadline,
        id: UInt64 = subscriptionCommandIDs.add(1, ordering: .relaxed).newValue
    ) {
        let command = RedisCommand(name, arguments: names.map { .string($0) })
        var payload = ByteBuffer()
        do {
            try command.write(to: &payload)
        } catch {
            promise?.fail(error)
            return
        }
        self.enqueue(
            payload,
            entries: [Entry(id: id, promise: promise, deadline: deadline)],
            pubSubCommands: [PubSubStateMachine.Command(name: command.name, argumentCount: command.argumentCount)]
        )
    }
}

/// The subscriptions of one connection made with ``RedisConnection/subscribe(to:)`` and its siblings:
/// which channels and patterns each uses, how many use each, and where messages go. On the
/// connection's event loop.
final class SubscriptionRouter: PubSubPushReceiver {
    struct Key: Hashable {
        var kind: PubSubStateMachine.Kind
        var name: String
    }

    private var subscribers: [UInt64: (keys: [Key], continuation: AsyncThrowingStream<RedisPubSubMessage, any Error>.Continuation)] = [:]
    private var listeners: [Key: Set<UInt64>] = [:]

    /// Registers subscription `id`; returns the names nobody was subscribed to yet, to subscribe on the
    /// server.
    func add(
        _ id: UInt64,
        kind: PubSubStateMachine.Kind,
        names: [String],
        continuation: AsyncThrowingStream<RedisPubSubMessage, any Error>.Continuation
    ) -> [String] {
        var new: [String] = []
        var keys: [Key] = []
        for name in names {
            let key = Key(kind: kind, name: name)
            guard !keys.contains(key) else { continue }
            keys.append(key)
            if self.listeners[key, default: []].isEmpty { new.append(name) }
            self.listeners[key, default: []].insert(id)
        }
        self.subscribers[id] = (keys, continuation)
        return new
    }

    /// Forgets subscription `id`; returns the names nobody uses any more, to unsubscribe on the server.
    func remove(_ id: UInt64) -> [PubSubStateMachine.Kind: [String]] {
        guard let subscriber = self.subscribers.removeValue(forKey: id) else { return [:] }
        var unused: [PubSubStateMachine.Kind: [String]] = [:]
        for key in subscriber.keys {
            self.listeners[key]?.remove(id)
            if self.listeners[key]?.isEmpty == true {
                self.listeners[key] = nil
                unused[key.kind, default: []].append(key.name)
            }
        }
        return unused
    }

    func received(_ push: PubSubStateMachine.Push) {
        switch push {
        case .message(let kind, let channel, let pattern, let payload):
            let key = pattern.map { Key(kind: .pattern, name: $0) } ?? Key(kind: kind, name: channel)
            let message = RedisPubSubMessage(kind: kind, channel: channel, pattern: pattern, payload: payload)
            for id in self.listeners[key] ?? [] { self.subscribers[id]?.continuation.yield(message) }
        case .unsubscribed(let kind, let name):
            let key = Key(kind: kind, name: name)
            let error = RedisError(code: .connectionClosed, message: "the server ended a subscription on its own")
            for id in self.listeners[key] ?? [] { self.subscribers[id]?.continuation.finish(throwing: error) }
        }
    }

    func connectionClosed(_ error: RedisError) {
        let subscribers = self.subscribers
        self.subscribers = [:]
        self.listeners = [:]
        for subscriber in subscribers.values { subscriber.continuation.finish(throwing: error) }
    }
}
