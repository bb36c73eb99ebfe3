#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import NIOCore
import Synchronization

/// The client's subscriptions and the dedicated connection that serves them all, outside the pool.
///
/// Decisions are a ``SubscriberStateMachine``'s; this shell performs them. Work that needs I/O
/// (subscribing, unsubscribing, replacing the connection after a rotation or a loss) runs one item at a
/// time in ``run(client:)``, which runs inside ``RedisClient/run()``: so a subscribe never races a
/// replacement. Messages take a shorter path: each connection's receiver decides and delivers on its
/// event loop under the lock.
final class SubscriberHub: Sendable {
    typealias Kind = PubSubStateMachine.Kind

    private enum Phase {
        case notStarted, running, shutDown
    }

    private struct Slot {
        let connection: RedisConnection
        let version: String
        let tlsGeneration: UInt64?
    }

    private struct State {
        var machine: SubscriberStateMachine
        var phase = Phase.notStarted
        var continuations: [UInt64: ClientSubscriptionSink] = [:]
        var slots: [Int: Slot] = [:]
        var nextSlot = 0
        /// Callers waiting for their subscribe to be performed.
        var waiting: [UInt64: Completion] = [:]
        /// The handover in progress waits for both markers.
        var handover: Completion?
        /// The user's ACL refused the marker channel on the last connection that tried (each new
        /// connection tries again, so that granting it ends the marker-less mode).
        var markerSubscribeRefused = false
        /// The connections not subscribed to the marker channel.
        var withoutMarker: Set<Int> = []
        /// The user's ACL refused the marker's `PUBLISH` during this rotation (tried again at the next).
        var markerPublishRefused = false
        var markerPublishWarned = false
        /// Each connection's last sign of life (opened, a push received, a `PING` answered): a loss
        /// noticed later (a silent peer is noticed by the health check) may have lost what was published
        /// since then.
        var lastSeen: [Int: Date] = [:]
    }

    private enum Work: Sendable {
        case subscribe(UInt64, Kind, [PubSubName])
        /// A subscription ended (already gone from the machine): unsubscribe on the server what nobody
        /// uses any more, or close the connection when nothing is left.
        case unsubscribe([Kind: [PubSubName]])
        case checkRotation
        case reconnect
        /// PINGs the delivering connection: a peer that vanished silently (no EOF) fails it at the
        /// command's silence deadline, which closes the connection and starts a reconnect.
        case healthCheck
    }

    private let state: Lock<State>
    private let work: AsyncStream<Work>
    private let workContinuation: AsyncStream<Work>.Continuation
    private static let subscriptionIDs = Atomic<UInt64>(0)

    /// The events after which the subscriber may be on an outdated credential or TLS generation.
    private static let rotationKinds: Set<RedisRotationEvent.Kind> = [.promoted, .credentialDemoted, .tlsMaterialReloaded]

    init() {
        let marker = PubSubName("\(SubscriberStateMachine.reservedPrefix.string)handover:\(UUID().uuidString)")
        self.state = Lock(State(machine: SubscriberStateMachine(markerChannel: marker)))
        (self.work, self.workContinuation) = AsyncStream.makeStream()
    }

    // MARK: Subscriptions

    /// Subscribes to `names` and returns once the server confirmed them (or they were already
    /// subscribed for another subscription), at most `timeout` later.
    func subscribe(
        _ kind: Kind,
        _ names: [String],
        timeout: Duration,
        limits: RedisSubscriptionBufferLimits
    ) async throws -> RedisClientSubscription {
        precondition(!names.isEmpty, "a subscription needs at least one channel or pattern")
        try Task.checkCancellation()
        let id = Self.subscriptionIDs.add(1, ordering: .relaxed).newValue
        let (stream, continuation) = AsyncThrowingStream<RedisSubscriptionEvent, any Error>.makeStream()
        let completion = Completion()
        let sink = ClientSubscriptionSink(continuation: continuation, backlog: SubscriptionBacklog(limits: limits))
        let accepted = self.state.withLock { state -> Bool in
            guard state.phase != .shutDown else { return false }
            state.continuations[id] = sink
            state.waiting[id] = completion
            return true
        }
        guard accepted else { throw Self.shutdownError }
        // Not under the hub's lock here: a cancellation runs this while it holds the cancelled task's
        // status lock, and a delivery under the hub's lock resuming that task needs the same status lock
        // (a deadlock seen when a reader was cancelled mid-traffic). A task of its own takes the lock
        // a moment later.
        continuation.onTermination = { [weak self] _ in
            guard let self else { return }
            Task { self.subscriptionEnded(id) }
        }
        self.workContinuation.yield(.subscribe(id, kind, names.map { PubSubName($0) }))
        do {
            try await completion.wait(timeout: timeout)
        } catch {
            self.state.withLock { _ = $0.waiting.removeValue(forKey: id) }
            continuation.finish()
            throw error
        }
        return RedisClientSubscription(stream: stream, sink: sink)
    }

    /// A subscription ended (its reader cancelled, the sequence dropped, or it failed): it leaves the
    /// machine at once, so that a reconnect in progress stops wanting its names and never subscribes
    /// them again; only the server-side unsubscribe waits for its turn.
    private func subscriptionEnded(_ id: UInt64) {
        let unused = self.state.withLock { state in
            state.continuations[id] = nil
            return state.machine.unsubscribe(id)
        }
        self.workContinuation.yield(.unsubscribe(unused))
    }

    // MARK: Running

    /// Performs the work until cancelled; then closes the connections and ends every subscription with
    /// `clientShutdown`.
    func run(client: RedisClient) async {
        self.state.withLock { $0.phase = .running }
        let observer = client.addObserver { [workContinuation] event in
            if Self.rotationKinds.contains(event.kind) { workContinuation.yield(.checkRotation) }
        }
        await withTaskGroup(of: Void.self) { group in
            if let interval = client.configuration.pool.healthCheckInterval {
                group.addTask { [workContinuation] in
                    while (try? await Task.sleep(for: interval)) != nil { workContinuation.yield(.healthCheck) }
                }
            }
            await withTaskCancellationHandler {
                for await item in self.work {
                    if Task.isCancelled { break }
                    await self.perform(item, client: client)
                }
            } onCancel: {
                self.workContinuation.finish()
            }
            group.cancelAll()
        }
        client.removeObserver(observer)
        await self.shutdown()
    }

    private func shutdown() async {
        let (continuations, slots, waiting, handover) = self.state.withLock { state in
            state.phase = .shutDown
            defer {
                state.continuations = [:]
                state.slots = [:]
                state.waiting = [:]
                state.handover = nil
            }
            return (Array(state.continuations.values), Array(state.slots.values), Array(state.waiting.values), state.handover)
        }
        for slot in slots { await slot.connection.close() }
        for sink in continuations { sink.continuation.finish(throwing: Self.shutdownError) }
        for completion in waiting { completion.resume(.failure(Self.shutdownError)) }
        handover?.resume(.failure(Self.shutdownError))
    }

    private static var shutdownError: RedisError {
        RedisError(code: .clientShutdown, message: "the client stopped running; its subscriptions ended")
    }

    private func perform(_ item: Work, client: RedisClient) async {
        switch item {
        case .subscribe(let id, let kind, let names):
            let result = await self.performSubscribe(id, kind, names, client: client)
            let completion = self.state.withLock { $0.waiting.removeValue(forKey: id) }
            completion?.resume(result)
        case .unsubscribe(let unused):
            await self.performUnsubscribe(unused, client: client)
        case .checkRotation:
            await self.rotateIfNeeded(client: client)
        case .reconnect:
            await self.reconnect(client: client)
        case .healthCheck:
            guard let (id, slot) = self.delivering() else { return }
            let sent = Date()
            guard (try? await slot.connection.send(RedisCommand("PING"), timeout: client.configuration.commandTimeout)) != nil else { return }
            // Everything published before the server ran the PING arrived before its reply.
            self.state.withLock { state in
                if let seen = state.lastSeen[id], seen < sent { state.lastSeen[id] = sent }
            }
        }
    }

    private func performSubscribe(_ id: UInt64, _ kind: Kind, _ names: [PubSubName], client: RedisClient) async -> Result<Void, any Error> {
        // The caller gave up (timeout, cancellation) before its turn: nothing to do.
        guard self.state.withLock({ $0.waiting[id] != nil && $0.continuations[id] != nil }) else { return .failure(CancellationError()) }
        if self.delivering() == nil { await self.reconnect(client: client) }
        guard let (_, slot) = self.delivering() else {
            return .failure(RedisError(code: .connectionFailed, message: "the subscriber connection could not be opened"))
        }
        // Checked in the same decision: a subscription that ended meanwhile must not enter the machine.
        let new = self.state.withLock { state in
            state.continuations[id] == nil ? nil : state.machine.subscribe(id, kind: kind, names: names)
        }
        guard let new else { return .failure(CancellationError()) }
        guard !new.isEmpty else { return .success(()) }
        do {
            for group in kind.commandGroups(new) {
                try await slot.connection.sendSubscriptionCommand(kind.subscribeCommand, group, timeout: client.configuration.commandTimeout)
            }
            return .success(())
        } catch let error as RedisError where error.code == .serverError {
            // Refused (NOPERM): the subscription never existed.
            let unused = self.state.withLock { state in
                state.continuations[id] = nil
                return state.machine.unsubscribe(id)
            }
            for (kind, names) in unused {
                for group in kind.commandGroups(names) {
                    try? await slot.connection.sendSubscriptionCommand(kind.unsubscribeCommand, group, timeout: client.configuration.commandTimeout)
                }
            }
            return .failure(error)
        } catch {
            // The connection failed: its replacement subscribes to everything wanted, these names included.
            await self.reconnect(client: client)
            return self.delivering() == nil ? .failure(error) : .success(())
        }
    }

    private func performUnsubscribe(_ unused: [Kind: [PubSubName]], client: RedisClient) async {
        let (delivering, hasSubscriptions) = self.state.withLock { state in
            (state.machine.deliveringConnection, state.machine.hasSubscriptions)
        }
        guard let delivering, let slot = self.state.withLock({ $0.slots[delivering] }) else { return }
        if !hasSubscriptions {
            // Nothing left to serve: the connection goes (a new subscription opens another).
            self.forget(delivering)
            await slot.connection.close()
            return
        }
        for (kind, names) in unused {
            for group in kind.commandGroups(names) {
                try? await slot.connection.sendSubscriptionCommand(kind.unsubscribeCommand, group, timeout: client.configuration.commandTimeout)
            }
        }
    }

    // MARK: Connections

    private func delivering() -> (Int, Slot)? {
        self.state.withLock { state in
            guard let id = state.machine.deliveringConnection, let slot = state.slots[id] else { return nil }
            return (id, slot)
        }
    }

    /// Opens a connection, subscribes it to everything wanted and makes it deliver (after a gap, when the
    /// previous one was lost), with backoff between failures, until it works or the hub stops.
    private func reconnect(client: RedisClient) async {
        let backoff = Backoff(base: TimeAmount(client.configuration.pool.reconnectBackoffBase), cap: TimeAmount(client.configuration.pool.reconnectBackoffCap))
        var delay: TimeAmount?
        // Bounded by the hub's life: cancellation ends the pauses, and a stopped hub ends the loop.
        for _ in 0..<100_000 {
            // Only while someone needs the connection: subscriptions, or a subscribe waiting for it.
            let needed = self.state.withLock { state in
                state.phase == .running && state.machine.deliveringConnection == nil && (state.machine.hasSubscriptions || !state.waiting.isEmpty)
            }
            guard !Task.isCancelled, needed else { return }
            var opened: Int?
            do {
                let (connection, version) = try await client.openDedicatedConnection(suffix: "-sub")
                let id = self.adopt(connection, version: version) { machine, id in machine.resumeStarted(id) }
                opened = id
                await connection.installPushReceiver(Receiver(hub: self, connection: id))
                try await self.subscribeEverything(on: connection, id: id, timeout: client.configuration.commandTimeout, client: client)
                let action = self.apply { $0.resumeConfirmed(id, at: Date()) }
                client.logger.debug("subscriber connected", metadata: [LoggingKeys.credentialVersion: "\(version)"])
                if action.deliveries.contains(where: { if case .gap = $0.element { return true } else { return false } }) {
                    client.emit(
                        RedisRotationEvent(
                            kind: .connectionReplaced,
                            credentialVersion: version,
                            detail: "subscriber connection lost and replaced; subscriptions were told of a gap"
                        )
                    )
                }
                return
            } catch {
                client.logger.debug("subscriber connection failed", metadata: [LoggingKeys.error: "\(error)"])
                if let opened, let slot = self.state.withLock({ $0.slots[opened] }) {
                    self.forget(opened)
                    await slot.connection.close()
                }
                let next = backoff.delay(after: delay, random: Double.random(in: 0..<1))
                delay = next
                try? await Task.sleep(for: .nanoseconds(next.nanoseconds))
            }
        }
    }

    /// Replaces the delivering connection make-before-break when it is on another credential version
    /// or TLS generation than new connections get; up to three tries, then until the next rotation event.
    private func rotateIfNeeded(client: RedisClient) async {
        // A PUBLISH the ACL refused at the last rotation is tried again: the operator may have allowed it.
        self.state.withLock { $0.markerPublishRefused = false }
        for attempt in 0..<3 {
            guard let (predecessor, slot) = self.delivering(), self.state.withLock({ $0.machine.hasSubscriptions }) else { return }
            let target = client.dedicatedConnectionTarget
            let stale = (target.version != nil && target.version != slot.version) || target.tlsGeneration != slot.tlsGeneration
            guard stale else { return }
            if await self.handover(from: predecessor, client: client) || attempt == 2 { return }
            try? await Task.sleep(for: .milliseconds(250 << attempt))
        }
    }

    /// One make-before-break replacement; `true` when the successor delivers alone.
    private func handover(from predecessor: Int, client: RedisClient) async -> Bool {
        let timeout = client.configuration.commandTimeout
        if await !self.markerUsable(on: predecessor, timeout: timeout, client: client) {
            return await self.handoverWithoutMarker(from: predecessor, client: client)
        }
        let connection: RedisConnection
        let version: String
        do {
            (connection, version) = try await client.openDedicatedConnection(suffix: "-sub")
        } catch {
            client.logger.debug("subscriber replacement failed to open", metadata: [LoggingKeys.error: "\(error)"])
            return false
        }
        let token = UUID().uuidString
        let completion = Completion()
        var started = false
        // Before the successor's SUBSCRIBE is sent: what it receives was published after this.
        let id = self.adopt(connection, version: version) { machine, id in started = machine.handoverStarted(to: id, token: token, at: Date()) }
        guard started else {
            self.forget(id)
            await connection.close()
            return false
        }
        self.state.withLock { $0.handover = completion }
        await connection.installPushReceiver(Receiver(hub: self, connection: id))
        do {
            try await self.subscribeEverything(on: connection, id: id, timeout: timeout, client: client)
            guard self.state.withLock({ !$0.withoutMarker.contains(id) }) else {
                throw RedisError(code: .serverError, message: "the successor may not subscribe to the marker channel")
            }
            // Before the PUBLISH is sent: what the predecessor holds back after its marker was published
            // after this, which may be well before the marker arrives.
            let marker = self.state.withLock { state in
                state.machine.markerPublished(at: Date())
                return state.machine.markerChannel
            }
            do {
                _ = try await client.send(RedisCommand("PUBLISH", .bytes(marker.bytes), .string(token)), timeout: timeout)
                self.state.withLock { $0.markerPublishWarned = false }
            } catch let error as RedisError where error.serverErrorPrefix == "NOPERM" {
                // The user may not publish: the next try replaces without the marker (with a gap).
                let warn = self.state.withLock { state in
                    state.markerPublishRefused = true
                    defer { state.markerPublishWarned = true }
                    return !state.markerPublishWarned
                }
                if warn {
                    client.logger.warning(
                        "the user may not publish the subscriber's marker: replacing the subscriber after a rotation will signal a gap; allow PUBLISH to &__redis-rotation:* in the user's ACL"
                    )
                }
                throw error
            }
            try await completion.wait(timeout: timeout)
            client.logger.debug("subscriber replaced", metadata: [LoggingKeys.credentialVersion: "\(version)"])
            client.emit(
                RedisRotationEvent(
                    kind: .connectionReplaced,
                    credentialVersion: version,
                    detail: "subscriber connection replaced make-before-break"
                )
            )
            return true
        } catch {
            client.logger.debug("subscriber replacement abandoned", metadata: [LoggingKeys.error: "\(error)"])
            self.apply { $0.handoverAbandoned(id) }
            self.state.withLock { $0.handover = nil }
            return false
        }
    }

    private func subscribeEverything(on connection: RedisConnection, id: Int, timeout: Duration, client: RedisClient) async throws {
        let wanted = self.state.withLock { $0.machine.wanted }
        for kind in Kind.allCases {
            guard let names = wanted[kind], !names.isEmpty else { continue }
            for group in kind.commandGroups(names) {
                do {
                    try await connection.sendSubscriptionCommand(kind.subscribeCommand, group, timeout: timeout)
                } catch let error as RedisError where Self.refusalEndsSubscriptions(error) {
                    // The ACL changed under the subscriptions (NOPERM), or a cluster node no longer serves
                    // a shard channel's slot (MOVED): not transient, so retrying would never end. The server
                    // refuses the whole command; one name at a time tells which are refused.
                    try await self.subscribeEach(kind, group, on: connection, timeout: timeout, client: client)
                }
            }
        }
        try await self.subscribeMarker(on: connection, id: id, timeout: timeout, client: client)
    }

    /// Subscribes `connection` to the marker channel, also after the ACL refused it before: an operator
    /// who follows the warning ends the marker-less mode. Warns when the ACL starts refusing it.
    private func subscribeMarker(on connection: RedisConnection, id: Int, timeout: Duration, client: RedisClient) async throws {
        let marker = self.state.withLock { $0.machine.markerChannel }
        do {
            try await connection.sendSubscriptionCommand("SUBSCRIBE", [marker], timeout: timeout)
            self.state.withLock { state in
                state.markerSubscribeRefused = false
                state.withoutMarker.remove(id)
            }
        } catch let error as RedisError where error.serverErrorPrefix == "NOPERM" {
            let warn = self.state.withLock { state in
                state.withoutMarker.insert(id)
                defer { state.markerSubscribeRefused = true }
                return !state.markerSubscribeRefused
            }
            if warn {
                client.logger.warning(
                    "the user may not subscribe to the subscriber's marker channel: replacing the subscriber after a rotation will signal a gap; allow &__redis-rotation:* in the user's ACL"
                )
            }
        }
    }

    /// Whether a handover from `predecessor` can use the marker: both connections must listen to it and
    /// the user publish it. A predecessor opened while the ACL refused the channel tries again now.
    private func markerUsable(on predecessor: Int, timeout: Duration, client: RedisClient) async -> Bool {
        let (lacksMarker, publishRefused, slot) = self.state.withLock {
            ($0.withoutMarker.contains(predecessor), $0.markerPublishRefused, $0.slots[predecessor])
        }
        guard !publishRefused else { return false }
        guard lacksMarker else { return true }
        guard let slot else { return false }
        try? await self.subscribeMarker(on: slot.connection, id: predecessor, timeout: timeout, client: client)
        return self.state.withLock { !$0.withoutMarker.contains(predecessor) }
    }

    /// Subscribes `names` one by one; the subscriptions using a name the server refuses (`NOPERM`) end
    /// with its error, and what only they used is unsubscribed again.
    private func subscribeEach(_ kind: Kind, _ names: [PubSubName], on connection: RedisConnection, timeout: Duration, client: RedisClient) async throws {
        var unused: [Kind: [PubSubName]] = [:]
        for name in names {
            do {
                try await connection.sendSubscriptionCommand(kind.subscribeCommand, [name], timeout: timeout)
            } catch let error as RedisError where Self.refusalEndsSubscriptions(error) {
                client.logger.debug("subscription refused by the server", metadata: [LoggingKeys.error: "\(error)"])
                let ended = self.state.withLock { state in
                    state.machine.subscriptions(using: kind, name).map { id in
                        for (kind, names) in state.machine.unsubscribe(id) { unused[kind, default: []] += names }
                        return state.continuations.removeValue(forKey: id)
                    }
                }
                        for sink in ended { sink?.continuation.finish(throwing: error) }
            }
        }
        for (kind, names) in unused {
            // The refused names were never subscribed; the others of the ended subscriptions may be.
            for group in kind.commandGroups(names) {
                try? await connection.sendSubscriptionCommand(kind.unsubscribeCommand, group, timeout: timeout)
            }
        }
    }

    /// A replacement without the marker channel: the successor subscribes and drops what it receives; the
    /// predecessor delivers up to the reply to a `PING`, the successor from the reply to a `PING` sent
    /// after that, and a gap covers what was published in between (nothing is delivered twice).
    private func handoverWithoutMarker(from predecessor: Int, client: RedisClient) async -> Bool {
        let timeout = client.configuration.commandTimeout
        let connection: RedisConnection
        let version: String
        do {
            (connection, version) = try await client.openDedicatedConnection(suffix: "-sub")
        } catch {
            return false
        }
        let id = self.adopt(connection, version: version) { machine, id in machine.markerlessReplacementStarted(id) }
        await connection.installPushReceiver(Receiver(hub: self, connection: id))
        do {
            try await self.subscribeEverything(on: connection, id: id, timeout: timeout, client: client)
        } catch {
            self.forget(id)
            await connection.close()
            return false
        }
        if let old = self.state.withLock({ $0.slots[predecessor]?.connection }) {
            let start = Date()
            try? await old.ping(timeout: timeout) { self.apply { $0.connectionRetired(predecessor, at: start) } }
            // No reply (the predecessor was lost, or is silent): it stops here, the gap still from `start`.
            self.apply { $0.connectionRetired(predecessor, at: start) }
        }
        do {
            try await connection.ping(timeout: timeout) { self.apply { $0.resumeConfirmed(id, at: Date()) } }
        } catch {
            // Its loss starts a reconnect, whose replacement signals the gap.
            self.connectionClosed(id)
            await connection.close()
            return false
        }
        client.emit(
            RedisRotationEvent(
                kind: .connectionReplaced,
                credentialVersion: version,
                detail: "subscriber connection replaced without the marker channel; subscriptions were told of a gap"
            )
        )
        return true
    }

    /// Records `connection` as a slot and gives its id to the machine, in one decision.
    private func adopt(
        _ connection: RedisConnection,
        version: String,
        _ body: (inout SubscriberStateMachine, Int) -> Void
    ) -> Int {
        self.state.withLock { state in
            state.nextSlot += 1
            state.slots[state.nextSlot] = Slot(connection: connection, version: version, tlsGeneration: connection.tlsInfo?.contextGeneration)
            state.lastSeen[state.nextSlot] = Date()
            body(&state.machine, state.nextSlot)
            return state.nextSlot
        }
    }

    private func forget(_ id: Int) {
        self.state.withLock { state in
            state.slots[id] = nil
            state.withoutMarker.remove(id)
            let lastSeen = state.lastSeen.removeValue(forKey: id) ?? Date()
            _ = state.machine.connectionLost(id, at: lastSeen)
        }
    }

    // MARK: Decisions

    /// Decides under the lock and delivers there too: `yield` only buffers or wakes the reading task, and
    /// delivering in decision order is what keeps two event loops' messages in the server's order.
    /// Closing, waking waiters and queueing work happen after the lock.
    @discardableResult
    private func applyWithState(_ event: (inout State) -> SubscriberStateMachine.Action) -> SubscriberStateMachine.Action {
        let (action, closing, handover) = self.state.withLock { state -> (SubscriberStateMachine.Action, [RedisConnection], Completion?) in
            guard state.phase == .running else { return (.init(), [], nil) }
            let action = event(&state)
            let now = Date()
            for delivery in action.deliveries {
                let element: RedisSubscriptionEvent
                switch delivery.element {
                case .message(let message): element = .message(message)
                case .gap(let from, let to): element = .gap(from: from, to: to)
                }
                state.continuations[delivery.subscription]?.yield(element, at: now)
            }
            for id in action.close {
                state.lastSeen[id] = nil
                state.withoutMarker.remove(id)
            }
            let closing = action.close.compactMap { state.slots.removeValue(forKey: $0)?.connection }
            let handover = (action.handoverCompleted || action.handoverAbandoned) ? state.handover.take() : nil
            return (action, closing, handover)
        }
        for connection in closing { Task { await connection.close() } }
        if action.handoverCompleted {
            handover?.resume(.success(()))
        } else if action.handoverAbandoned {
            handover?.resume(.failure(RedisError(code: .connectionClosed, message: "the subscriber replacement failed")))
        }
        if action.reconnect { self.workContinuation.yield(.reconnect) }
        return action
    }

    @discardableResult
    private func apply(_ event: (inout SubscriberStateMachine) -> SubscriberStateMachine.Action) -> SubscriberStateMachine.Action {
        self.applyWithState { event(&$0.machine) }
    }

    /// Refusals of a subscribe that no retry on this connection's server can overcome: `NOPERM` (the ACL)
    /// and `MOVED` (a cluster node that does not serve a shard channel's slot).
    static func refusalEndsSubscriptions(_ error: RedisError) -> Bool {
        error.serverErrorPrefix == "NOPERM" || error.serverErrorPrefix == "MOVED"
    }

    /// Since when no connection delivers (the last one was lost and no replacement confirmed yet); `nil`
    /// while one does. A cluster client moves its subscriptions elsewhere when this lasts.
    var deliveryLostSince: Date? {
        self.state.withLock { state in state.machine.deliveringConnection == nil ? state.machine.lostSince : nil }
    }

    fileprivate func pushReceived(_ push: PubSubStateMachine.Push, on connection: Int) {
        let now = Date()
        if case .unsubscribed(let kind, let name) = push {
            self.serverUnsubscribed(kind, name, on: connection, at: now)
            return
        }
        self.applyWithState { state in
            if state.slots[connection] != nil { state.lastSeen[connection] = now }
            return state.machine.pushReceived(push, on: connection, at: now)
        }
    }

    /// The server ended the subscription to `name` on its own (a cluster node sends `sunsubscribe` when a
    /// shard channel's slot moves away): the subscriptions using it end with `subscriptionEnded` after what
    /// was delivered (the server will not deliver the name again, and subscribing it here again would be
    /// refused with `MOVED`); what else only they used is unsubscribed.
    private func serverUnsubscribed(_ kind: Kind, _ name: PubSubName, on connection: Int, at now: Date) {
        let (ended, unused) = self.state.withLock { state -> ([ClientSubscriptionSink], [Kind: [PubSubName]]) in
            guard state.phase == .running, state.slots[connection] != nil else { return ([], [:]) }
            state.lastSeen[connection] = now
            var unused: [Kind: [PubSubName]] = [:]
            let ended = state.machine.subscriptions(using: kind, name).compactMap { id in
                for (kind, names) in state.machine.unsubscribe(id) { unused[kind, default: []] += names }
                return state.continuations.removeValue(forKey: id)
            }
            return (ended, unused)
        }
        guard !ended.isEmpty else { return }
        let error = RedisError(
            code: .subscriptionEnded,
            message: "the server ended the subscription to a \(kind == .shardChannel ? "shard " : "")channel (in a cluster: its slot moved to another node)"
        )
        for sink in ended { sink.continuation.finish(throwing: error) }
        var rest = unused
        rest[kind]?.removeAll { $0 == name }
        self.workContinuation.yield(.unsubscribe(rest.filter { !$0.value.isEmpty }))
    }

    /// The loss starts at the connection's last sign of life: a peer that went silent is noticed only by
    /// the health check, long after what it lost was published.
    fileprivate func connectionClosed(_ connection: Int) {
        self.applyWithState { state in
            guard state.slots.removeValue(forKey: connection) != nil else { return .init() }
            state.withoutMarker.remove(connection)
            let lastSeen = state.lastSeen.removeValue(forKey: connection) ?? Date()
            return state.machine.connectionLost(connection, at: lastSeen)
        }
    }
}

/// Hears one subscriber connection for the hub.
private final class Receiver: PubSubPushReceiver, Sendable {
    let hub: SubscriberHub
    let connection: Int

    init(hub: SubscriberHub, connection: Int) {
        self.hub = hub
        self.connection = connection
    }

    func received(_ push: PubSubStateMachine.Push) {
        self.hub.pushReceived(push, on: self.connection)
    }

    /// Only the hub's own unsubscribes run on its connections: of names no subscription uses.
    func unsubscribedByCommand(_ kind: PubSubStateMachine.Kind, name: PubSubName) {}

    func connectionClosed(_ error: RedisError) {
        self.hub.connectionClosed(self.connection)
    }
}

/// A one-time result that one task waits for, with a deadline; whoever comes second finds it.
final class Completion: Sendable {
    private enum State {
        case pending(CheckedContinuation<Void, any Error>?)
        case done(Result<Void, any Error>)
    }

    private let state = Lock<State>(.pending(nil))

    func resume(_ result: Result<Void, any Error>) {
        let continuation = self.state.withLock { state -> CheckedContinuation<Void, any Error>? in
            guard case .pending(let continuation) = state else { return nil }
            state = .done(result)
            return continuation
        }
        continuation?.resume(with: result)
    }

    /// Waits for the result; fails with `commandTimeout` after `timeout`, or when the task is cancelled.
    func wait(timeout: Duration) async throws {
        let timer = Task {
            try await Task.sleep(for: timeout)
            self.resume(.failure(RedisError(code: .commandTimeout, message: "the subscriber did not confirm within \(timeout)")))
        }
        defer { timer.cancel() }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let result = self.state.withLock { state -> Result<Void, any Error>? in
                    switch state {
                    case .done(let result): return result
                    case .pending: state = .pending(continuation)
                        return nil
                    }
                }
                if let result { continuation.resume(with: result) }
            }
        } onCancel: {
            self.resume(.failure(CancellationError()))
        }
    }
}
