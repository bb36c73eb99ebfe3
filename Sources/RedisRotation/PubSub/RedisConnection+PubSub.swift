import NIOCore
import Synchronization

/// Hears a connection's pub/sub pushes, and its close, on the connection's event loop.
protocol PubSubPushReceiver: AnyObject {
    func received(_ push: PubSubStateMachine.Push)
    /// A command on the connection (`UNSUBSCRIBE` and siblings, `RESET`) ended the server's subscription
    /// to `name`; called before that command's reply is handed on.
    func unsubscribedByCommand(_ kind: PubSubStateMachine.Kind, name: PubSubName)
    /// The connection closed; called once, and nothing is received after it.
    func connectionClosed(_ error: RedisError)
}

extension RedisConnection {
    /// Subscribes to `channels` (`SUBSCRIBE`) and returns once the server confirmed each of them: every
    /// message published to them from then on is in the returned sequence.
    ///
    /// Several subscriptions may share the connection; a channel is subscribed on the server while any of
    /// them uses it (a subscription to a channel whose `SUBSCRIBE` is still on its way waits for the same
    /// confirmation, and fails with it). While subscribed, the server refuses other commands on this
    /// connection (RESP2).
    ///
    /// The sequence ends by throwing ``RedisError/Code/subscriptionEnded`` when one of its channels is
    /// unsubscribed under it (an `UNSUBSCRIBE` or `RESET` sent on this connection with `send`, or the
    /// server), and ``RedisError/Code/slowConsumer`` when its unread messages exceed
    /// ``RedisConnectionConfiguration/subscriptionBufferLimits``.
    ///
    /// - Throws: ``RedisError`` with `serverError` (`NOPERM` for a channel the user may not read),
    ///   `commandTimeout` or `connectionClosed`; `CancellationError`.
    public func subscribe(to channels: [String]) async throws -> RedisSubscription {
        try await self.subscribe(.channel, channels)
    }

    /// Subscribes to the channels matching `patterns` (`PSUBSCRIBE`); messages carry the pattern.
    ///
    /// A connection is raw: it delivers whatever the server sends, including the handover markers that
    /// ``RedisClient`` subscribers publish on the reserved `__redis-rotation:` channels (a pattern such as
    /// `*` matches them). ``RedisClient/psubscribe(to:)`` filters them out.
    public func psubscribe(to patterns: [String]) async throws -> RedisSubscription {
        try await self.subscribe(.pattern, patterns)
    }

    /// Subscribes to sharded channels (`SSUBSCRIBE`, Redis 7).
    public func ssubscribe(to channels: [String]) async throws -> RedisSubscription {
        try await self.subscribe(.shardChannel, channels)
    }

    private func subscribe(_ kind: PubSubStateMachine.Kind, _ names: [String]) async throws -> RedisSubscription {
        precondition(!names.isEmpty, "a subscription needs at least one channel or pattern")
        let names = names.map { PubSubName($0) }
        try Task.checkCancellation()
        try self.checkOpen()
        let (stream, continuation) = AsyncThrowingStream<RedisPubSubMessage, any Error>.makeStream()
        let backlog = SubscriptionBacklog(limits: self.configuration.subscriptionBufferLimits)
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
        let deadline = NIODeadline.now() + TimeAmount(self.configuration.commandTimeout)
        let confirmed = ReplyBox()
        // The ticket's one owner is the task: released unrun, it answers the wait.
        eventLoop.execute { [ticket = self.ticketFailing(confirmed)] in
            ticket.ran()
            let promise = eventLoop.makePromise(of: RESPValue.self)
            Self.subscribe(id, kind, names, handler: handler, continuation: continuation, backlog: backlog, deadline: deadline, promise: promise)
            promise.futureResult.whenComplete { confirmed.complete($0) }
        }
        let reply: RESPValue
        do {
            reply = try await withTaskCancellationHandler {
                try await confirmed.value()
            } onCancel: {
                // The command itself goes on: others may wait for its confirmation, and ending this
                // registration unsubscribes, after it, what only this one used.
                confirmed.complete(.failure(CancellationError()))
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
        return RedisSubscription(stream: stream, backlog: backlog)
    }

    /// On the event loop: registers subscription `id` for `names`, sends the subscribe command for those
    /// no other subscription has, and completes `promise` once every name is confirmed.
    private static func subscribe(
        _ id: UInt64,
        _ kind: PubSubStateMachine.Kind,
        _ names: [PubSubName],
        handler: NIOLoopBound<RedisCommandHandler>,
        continuation: AsyncThrowingStream<RedisPubSubMessage, any Error>.Continuation,
        backlog: SubscriptionBacklog,
        deadline: NIODeadline,
        promise: EventLoopPromise<RESPValue>
    ) {
        let eventLoop = handler.eventLoop
        let router: SubscriptionRouter
        if let existing = handler.value.pushReceiver as? SubscriptionRouter {
            router = existing
        } else {
            router = SubscriptionRouter()
            handler.value.installPushReceiver(router)
        }
        let (new, awaited) = router.add(id, kind: kind, names: names, continuation: continuation, backlog: backlog)
        var replies = awaited
        if !new.isEmpty {
            let own = eventLoop.makePromise(of: RESPValue.self)
            router.subscribing(kind, new, reply: own.futureResult)
            handler.value.sendSubscriptionCommand(kind.subscribeCommand, new, promise: own, deadline: deadline)
            replies.append(own.futureResult)
        }
        // Confirmed once every name is: ours, and those another subscription's command is waiting for.
        EventLoopFuture.whenAllComplete(replies, on: eventLoop).whenSuccess { results in
            for result in results {
                switch result {
                case .failure(let error): return promise.fail(error)
                case .success(let value): if case .error = value { return promise.succeed(value) }
                }
            }
            promise.succeed(.array([]))
        }
    }

    /// Throws why the connection closed, once it has, as not sent: such a command is not handed to the
    /// event loop at all.
    private func checkOpen() throws(RedisError) {
        guard let error = self.notSentBecauseClosed else { return }
        throw error
    }

    private var notSentBecauseClosed: RedisError? {
        guard var error = self.progress.closeReason else { return nil }
        error.commandWasNotSent = true
        return error
    }

    /// For a task that answers `box` on the event loop: dropped unrun (the loop shut down between the
    /// caller's check and the task; it closed the connection first), it fails `box` as not sent.
    private func ticketFailing(_ box: ReplyBox) -> DroppedTaskTicket {
        let progress = self.progress
        return DroppedTaskTicket {
            var error = progress.closeReason ?? RedisError(code: .connectionClosed, message: "the connection's event loop has shut down")
            error.commandWasNotSent = true
            box.complete(.failure(error))
        }
    }

    /// Installs `receiver` as the one hearer of this connection's pushes (the client's subscriber,
    /// which needs one ordered stream of everything the connection receives). Returns once it is
    /// installed, or at once when the event loop has shut down (nothing is heard then).
    func installPushReceiver(_ receiver: some PubSubPushReceiver & Sendable) async {
        let handler = self.handler
        self.session.withLock { $0.state.commandEnqueued(.irreversible("SUBSCRIBE")) }
        await withCheckedContinuation { (installed: CheckedContinuation<Void, Never>) in
            // The ticket's one owner is the task: released unrun, it resumes the wait.
            self.eventLoop.execute { [ticket = DroppedTaskTicket(onDrop: { installed.resume() })] in
                ticket.ran()
                handler.value.installPushReceiver(receiver)
                installed.resume()
            }
        }
    }

    /// Sends `PING` and calls `atReply` on the event loop when the reply arrives, before anything the
    /// connection receives after it is handed on: a point in the server's order of this connection's
    /// stream (everything published before the server ran the `PING` came before it).
    ///
    /// - Throws: `serverError`, `commandTimeout`, `connectionClosed`.
    func ping(timeout: Duration, atReply: @escaping @Sendable () -> Void) async throws {
        let reply = try await self.sendSubscriptionCommand("PING", [], timeout: timeout) { promise in
            // Registered before the command goes out, so it runs inside the read of the reply.
            promise.futureResult.whenSuccess { value in
                if case .error = value { return }
                atReply()
            }
        }
        if case .error(let buffer) = reply {
            throw Self.serverError(buffer, command: RedisCommand("PING"))
        }
    }

    /// Sends a subscribe-family command for `names` and waits for every confirmation.
    ///
    /// - Throws: `serverError` for an error reply, `commandTimeout`, `connectionClosed`.
    func sendSubscriptionCommand(_ name: String, _ names: [PubSubName], timeout: Duration) async throws {
        if case .error(let buffer) = try await self.sendSubscriptionCommand(name, names, timeout: timeout, before: { _ in }) {
            throw Self.serverError(buffer, command: RedisCommand(name))
        }
    }

    /// Sends `name names...` from the event loop, after `before` has seen its promise there, and returns
    /// the reply; a connection that has closed (or a loop that has shut down) fails it as not sent.
    private func sendSubscriptionCommand(
        _ name: String,
        _ names: [PubSubName],
        timeout: Duration,
        before: @escaping @Sendable (EventLoopPromise<RESPValue>) -> Void
    ) async throws -> RESPValue {
        try self.checkOpen()
        let handler = self.handler
        let eventLoop = self.eventLoop
        let deadline = NIODeadline.now() + TimeAmount(timeout)
        let reply = ReplyBox()
        // The ticket's one owner is the task: released unrun, it answers the wait.
        eventLoop.execute { [ticket = self.ticketFailing(reply)] in
            ticket.ran()
            let promise = eventLoop.makePromise(of: RESPValue.self)
            before(promise)
            promise.futureResult.whenComplete { reply.complete($0) }
            handler.value.sendSubscriptionCommand(name, names, promise: promise, deadline: deadline)
        }
        return try await reply.value()
    }
}

/// Numbers the subscriptions of every connection, and the commands they send (in a range of their own,
/// so that cancelling one never touches another command).
private let subscriptionIDs = Atomic<UInt64>(0)
private let subscriptionCommandIDs = Atomic<UInt64>(1 << 62)

extension RedisCommandHandler {
    /// Writes `name names...` (a subscribe-family command, or `PING`). A `nil` promise drops the replies.
    /// On the event loop.
    func sendSubscriptionCommand(
        _ name: String,
        _ names: [PubSubName],
        promise: EventLoopPromise<RESPValue>?,
        deadline: NIODeadline,
        id: UInt64 = subscriptionCommandIDs.add(1, ordering: .relaxed).newValue
    ) {
        let command = RedisCommand(name, arguments: names.map { .bytes($0.bytes) })
        var payload = ByteBuffer()
        do {
            try command.write(to: &payload)
        } catch {
            promise?.fail(error)
            return
        }
        self.enqueue(
            payload,
            entries: [Entry(id: id, promise: promise.map(ReplyWaiter.promise), deadline: deadline)],
            pubSubCommands: [command.pubSubCommand]
        )
    }
}

/// The subscriptions of one connection made with ``RedisConnection/subscribe(to:)`` and its siblings:
/// which channels and patterns each uses, how many use each, which are still waiting for the server's
/// confirmation, and where messages go. On the connection's event loop.
final class SubscriptionRouter: PubSubPushReceiver {
    struct Key: Hashable {
        var kind: PubSubStateMachine.Kind
        var name: PubSubName
    }

    private struct Subscriber {
        var keys: [Key]
        let continuation: AsyncThrowingStream<RedisPubSubMessage, any Error>.Continuation
        let backlog: SubscriptionBacklog
    }

    private var subscribers: [UInt64: Subscriber] = [:]
    private var listeners: [Key: Set<UInt64>] = [:]
    /// Names whose subscribe command is written and not confirmed yet, with its reply; a failed reply
    /// stays until the subscriptions using the name are gone, so that a newcomer fails with it too.
    private var pending: [Key: EventLoopFuture<RESPValue>] = [:]

    /// Registers subscription `id`; returns the names nobody was subscribed to yet (to subscribe on the
    /// server), and the replies of the commands still subscribing to the others (to wait for).
    func add(
        _ id: UInt64,
        kind: PubSubStateMachine.Kind,
        names: [PubSubName],
        continuation: AsyncThrowingStream<RedisPubSubMessage, any Error>.Continuation,
        backlog: SubscriptionBacklog
    ) -> (new: [PubSubName], awaited: [EventLoopFuture<RESPValue>]) {
        var new: [PubSubName] = []
        var awaited: [EventLoopFuture<RESPValue>] = []
        var keys: [Key] = []
        for name in names {
            let key = Key(kind: kind, name: name)
            guard !keys.contains(key) else { continue }
            keys.append(key)
            if self.listeners[key, default: []].isEmpty {
                new.append(name)
            } else if let reply = self.pending[key], !awaited.contains(where: { $0 === reply }) {
                awaited.append(reply)
            }
            self.listeners[key, default: []].insert(id)
        }
        self.subscribers[id] = Subscriber(keys: keys, continuation: continuation, backlog: backlog)
        return (new, awaited)
    }

    /// A subscribe command for `names` was written; they are confirmed when `reply` succeeds.
    func subscribing(_ kind: PubSubStateMachine.Kind, _ names: [PubSubName], reply: EventLoopFuture<RESPValue>) {
        let keys = names.map { Key(kind: kind, name: $0) }
        for key in keys { self.pending[key] = reply }
        reply.assumeIsolated().whenSuccess { value in
            if case .error = value { return }
            for key in keys where self.pending[key] === reply { self.pending[key] = nil }
        }
    }

    /// Forgets subscription `id`; returns the names nobody uses any more, to unsubscribe on the server.
    func remove(_ id: UInt64) -> [PubSubStateMachine.Kind: [PubSubName]] {
        guard let subscriber = self.subscribers.removeValue(forKey: id) else { return [:] }
        var unused: [PubSubStateMachine.Kind: [PubSubName]] = [:]
        for key in subscriber.keys {
            self.listeners[key]?.remove(id)
            if self.listeners[key]?.isEmpty == true {
                self.listeners[key] = nil
                self.pending[key] = nil
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
            for id in self.listeners[key] ?? [] {
                guard let subscriber = self.subscribers[id] else { continue }
                if subscriber.backlog.admit(payload.readableBytes) {
                    subscriber.continuation.yield(message)
                } else {
                    // Ending it unsubscribes what only it used (its termination handler), so the server's
                    // own output limit guards the connection from then on.
                    subscriber.continuation.finish(
                        throwing: RedisError(
                            code: .slowConsumer,
                            message: "the subscription was ended: its reader fell behind by more than \(subscriber.backlog.limits)"
                        )
                    )
                }
            }
        case .unsubscribed(let kind, let name):
            self.end(Key(kind: kind, name: name), because: "the server ended the subscription on its own")
        }
    }

    func unsubscribedByCommand(_ kind: PubSubStateMachine.Kind, name: PubSubName) {
        self.end(
            Key(kind: kind, name: name),
            because: "the subscription was ended by \(kind.unsubscribeCommand) or RESET sent on its connection"
        )
    }

    /// The server no longer holds `key`: the subscriptions using it end with `subscriptionEnded`, and the
    /// name is forgotten, so that a new subscription subscribes again. A name still waiting for its
    /// confirmation was subscribed again after this unsubscribe was sent: it stays.
    private func end(_ key: Key, because reason: String) {
        guard self.pending[key] == nil, let ids = self.listeners.removeValue(forKey: key) else { return }
        let error = RedisError(code: .subscriptionEnded, message: reason)
        for id in ids.sorted() {
            self.subscribers[id]?.keys.removeAll { $0 == key }
            self.subscribers[id]?.continuation.finish(throwing: error)
        }
    }

    func connectionClosed(_ error: RedisError) {
        let subscribers = self.subscribers
        self.subscribers = [:]
        self.listeners = [:]
        self.pending = [:]
        for subscriber in subscribers.values { subscriber.continuation.finish(throwing: error) }
    }
}
