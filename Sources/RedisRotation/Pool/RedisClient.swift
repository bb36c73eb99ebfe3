#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
public import Logging
import Metrics
public import NIOCore
import NIOPosix
public import ServiceLifecycle
import Synchronization

/// The pooled, rotation-aware client: application code calls `get`, `set`, `send` and
/// `withConnection` while passwords rotate underneath.
///
/// **It must be running**: call ``run()`` (or add it to a ServiceLifecycle `ServiceGroup`) for as long
/// as the client is used. `run()` watches the credential source, opens, re-authenticates and replaces
/// connections, and probes new credentials; cancelling it closes everything.
///
/// How rotation works:
/// - A new credential from the source is *pending*. A separate probe connection tries it; only when it
///   authenticates does it become *current* (the old one stays *previous* for a grace period). Until
///   then traffic continues with the old one and the probe retries with backoff.
/// - After a promotion every pooled connection switches in place (`HELLO 2 AUTH ... SETNAME ...`):
///   idle ones at once, leased ones when their lease ends, so a transaction finishes first.
/// - New connections try the known-good credential first, then the others, each once; a `WRONGPASS` is
///   not fatal while a candidate remains. Failed connects back off with decorrelated jitter and at most
///   `maximumConcurrentHandshakes` run at once.
/// - A connection that dies (EOF, reset, `CLIENT KILL`) is replaced. A command that was never written
///   goes to another connection; an idempotent one in flight is resent; any other fails with
///   ``RedisError/Code/outcomeUnknown``, since it may or may not have executed. A command with an
///   argument larger than the server accepts fails with ``RedisError/Code/invalidArgument`` before any
///   connection is leased, and is never retried.
/// - Connection names are `<name>@<version>`, so `CLIENT LIST` shows when no connection uses the old
///   password any more; ``connectionsByCredentialVersion`` tells the same from the client side.
public final class RedisClient: Service, RedisCommandExecutor, Sendable {
    public let configuration: RedisClientConfiguration
    /// Rotation events. One consumer; events are dropped (oldest first) past 10,000 unread.
    public let events: AsyncStream<RedisRotationEvent>

    private let eventContinuation: AsyncStream<RedisRotationEvent>.Continuation
    private let source: CredentialSourceRunner
    private let initialCredentials: RedisCredentials?
    private let eventLoopGroup: any EventLoopGroup
    private let timerLoop: any EventLoop
    private let logger: Logger
    private let state: Lock<State>
    private let work: AsyncStream<Work>
    private let workContinuation: AsyncStream<Work>.Continuation
    private let metrics: ClientMetrics
    private let counters = Counters()
    /// The sequence number of the last connection-gauge snapshot recorded.
    private let gaugesRecorded = Lock<(sequence: UInt64, versions: [String: Int], generations: [UInt64: Int])>((0, [:], [:]))
    private let tlsWatcher: TLSMaterialWatcher?
    private let initialTLSSnapshot: [String: [UInt8]]

    private struct State {
        var pool: PoolStateMachine
        var credentials: CredentialStateMachine
        var connections: [PoolStateMachine.ConnectionID: RedisConnection] = [:]
        /// Every lease request from the moment its ID is handed out until it is granted or failed.
        var leaseRequests: [PoolStateMachine.LeaseID: LeaseRequest] = [:]
        var nextLeaseID: PoolStateMachine.LeaseID = 0
        /// The one scheduled timer of each kind, and the generation of its latest request: a timer that
        /// was replaced after it was scheduled finds its generation outdated and does nothing.
        var timers: [TimerKind: Scheduled<Void>] = [:]
        var timerGenerations: [TimerKind: UInt64] = [:]
        var lastConnectError: RedisError?
        var runState = RunState.notStarted
        /// The connection counts last sent to the gauges (versions and generations in use only).
        var recordedVersionCounts: [String: Int] = [:]
        var tlsContext: RedisTLSContext?
        var recordedGenerationCounts: [UInt64: Int] = [:]
        var gaugeSequence: UInt64 = 0
        /// Whether connections of an older TLS generation are still being replaced.
        var rolling = false
        var expiry: ExpiryMonitor
        /// Connections the pool decided to close (retired, failed, unusable), as opposed to the server.
        var closingByPool: Set<PoolStateMachine.ConnectionID> = []
    }

    private enum RunState { case notStarted, running, stopped }

    /// Where a lease request stands. Can move to: `registered` → `waiting` or `cancelledEarly`;
    /// `cancelledEarly` → gone (failed when its continuation arrives); `waiting` → gone (granted, failed
    /// or cancelled).
    private enum LeaseRequest {
        /// The ID exists; the continuation is not installed yet.
        case registered
        /// Cancelled before its continuation was installed.
        case cancelledEarly
        /// Waiting for the pool, which knows its deadline too (to requeue it if its connection vanishes).
        case waiting(CheckedContinuation<Lease, any Error>, deadline: NIODeadline)
    }

    /// The deadlines the client keeps: the pool's, the credential machine's, the expiry monitor's.
    private enum TimerKind: Hashable, Sendable { case pool, credentials, expiry }

    struct Lease: Sendable {
        let id: PoolStateMachine.ConnectionID
        let connection: RedisConnection
    }

    /// Work that needs I/O; `run()` performs each item in a child task.
    private enum Work: Sendable {
        case connect(PoolStateMachine.ConnectionID)
        case reauthenticate(PoolStateMachine.ConnectionID, RedisConnection, RedisCredentials)
        case close(PoolStateMachine.ConnectionID, RedisConnection?)
        case probe(RedisCredentials)
        /// Waits for the connection to close, whoever closes it, and tells the pool.
        case watch(PoolStateMachine.ConnectionID, RedisConnection)
        /// PINGs an idle connection.
        case healthCheck(PoolStateMachine.ConnectionID, RedisConnection)
        /// Undoes what a lease left on the connection (owed replies, transaction, database, name), then
        /// releases it: reusable if that worked.
        case restore(PoolStateMachine.ConnectionID, RedisConnection)
    }

    /// Effects of a decision, performed after the lock is released.
    private enum Effect {
        case resume(CheckedContinuation<Lease, any Error>, Result<Lease, any Error>)
        case work(Work)
        case scheduleTimer(TimerKind, NIODeadline, generation: UInt64)
        case event(RedisRotationEvent)
        case cancelScheduled(Scheduled<Void>)
        /// Numbered under the lock in the order decided: an older snapshot performed after a newer one
        /// is dropped, so the gauges end on the latest counts.
        case recordConnectionGauges(versions: [String: Int], generations: [UInt64: Int], sequence: UInt64)
        case recordExpiryGauges([(name: String, seconds: Double)])
    }

    /// Creates a client. Nothing connects until ``run()`` runs.
    ///
    /// - Throws: ``RedisError`` when the credential source cannot give credentials now (a missing or
    ///   empty password file, an unset environment variable): fail fast, with the reason.
    public init(
        configuration: RedisClientConfiguration,
        credentials: RedisCredentialSource,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "RedisRotation", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws {
        self.configuration = configuration
        self.source = CredentialSourceRunner(source: credentials)
        self.initialCredentials = try self.source.initialCredentials()
        self.eventLoopGroup = eventLoopGroup
        self.timerLoop = eventLoopGroup.any()
        self.logger = logger
        (self.events, self.eventContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(10_000))
        (self.work, self.workContinuation) = AsyncStream.makeStream()
        self.metrics = ClientMetrics(label: configuration.metricsLabel ?? configuration.name)
        var tlsContext: RedisTLSContext?
        switch configuration.tls?.mode {
        case .fixed(let context):
            tlsContext = context
            self.tlsWatcher = nil
            self.initialTLSSnapshot = [:]
        case .reloading(let tlsConfiguration, let pollInterval, let debounce):
            let watcher = TLSMaterialWatcher(configuration: tlsConfiguration, pollInterval: pollInterval, debounce: debounce)
            let (context, snapshot) = try watcher.initialContext()
            tlsContext = context
            self.tlsWatcher = watcher
            self.initialTLSSnapshot = snapshot
        case nil:
            self.tlsWatcher = nil
            self.initialTLSSnapshot = [:]
        }

        var poolConfiguration = PoolStateMachine.Configuration()
        poolConfiguration.minimumConnections = configuration.pool.minimumConnections
        poolConfiguration.maximumConnections = configuration.pool.maximumConnections
        poolConfiguration.maximumConcurrentHandshakes = configuration.pool.maximumConcurrentHandshakes
        poolConfiguration.idleTimeout = TimeAmount(configuration.pool.idleTimeout)
        poolConfiguration.maximumConnectionAge = configuration.pool.maximumConnectionAge.map { TimeAmount($0) }
        poolConfiguration.maximumAgeJitter = configuration.pool.maximumConnectionAgeJitter
        poolConfiguration.healthCheckInterval = configuration.pool.healthCheckInterval.map { TimeAmount($0) }
        // A handshake past half its deadline while commands wait is most likely hung (the server accepted
        // and went silent); waiting the other half before the next attempt would only add to the outage.
        poolConfiguration.handshakeHedgeDelay = max(TimeAmount(configuration.handshakeTimeout / 2), .milliseconds(100))
        poolConfiguration.connectBackoff = Backoff(
            base: TimeAmount(configuration.pool.reconnectBackoffBase),
            cap: TimeAmount(configuration.pool.reconnectBackoffCap)
        )
        var credentialConfiguration = CredentialStateMachine.Configuration()
        credentialConfiguration.probeBackoff = Backoff(
            base: TimeAmount(configuration.rotation.probeBackoffBase),
            cap: TimeAmount(configuration.rotation.probeBackoffCap)
        )
        credentialConfiguration.maximumProbeAttempts = configuration.rotation.maximumProbeAttempts
        credentialConfiguration.previousGracePeriod = TimeAmount(configuration.rotation.previousGracePeriod)
        var state = State(
            pool: PoolStateMachine(configuration: poolConfiguration),
            credentials: CredentialStateMachine(configuration: credentialConfiguration),
            tlsContext: tlsContext,
            expiry: ExpiryMonitor(thresholds: configuration.expiry.warningThresholds.map { TimeInterval(TimeAmount($0).nanoseconds) / 1e9 })
        )
        if let tlsContext { Self.watchExpiry(of: tlsContext, in: &state.expiry) }
        self.state = Lock(state)
    }

    /// Puts the client certificate and trust anchors of `context` under the expiry monitor.
    private static func watchExpiry(of context: RedisTLSContext, in monitor: inout ExpiryMonitor) {
        monitor.setItems(
            context.clientCertificateChain.prefix(1).map { .init(name: "client certificate \($0.subject)", expiresAt: $0.notAfter) },
            group: "client certificate"
        )
        monitor.setItems(
            context.trustAnchors.map { .init(name: "trust anchor \($0.subject)", expiresAt: $0.notAfter) },
            group: "trust anchor"
        )
    }

    // MARK: Running

    /// Runs the client until the task is cancelled or a graceful shutdown is requested; then closes
    /// every connection and fails waiting commands with ``RedisError/Code/clientShutdown``.
    public func run() async throws {
        let alreadyRunning = self.state.withLock { state -> Bool in
            guard case .notStarted = state.runState else { return true }
            state.runState = .running
            return false
        }
        precondition(!alreadyRunning, "RedisClient.run() may be called once")
        if let initial = self.initialCredentials { self.sourceReported(.credentials(initial)) }

        await withDiscardingTaskGroup { group in
            group.addTask {
                await self.source.run(initial: self.initialCredentials) { report in self.sourceReported(report) }
            }
            if let watcher = self.tlsWatcher {
                group.addTask {
                    await watcher.run(initial: self.initialTLSSnapshot) { report in self.tlsReported(report) }
                }
            }
            self.evaluateExpiry()
            group.addTask {
                // Ends on cancellation or graceful shutdown; shutting down ends the work stream below.
                await self.waitForShutdownSignal()
                await self.shutdown()
            }
            for await item in self.work {
                group.addTask { await self.perform(item) }
            }
            group.cancelAll()
        }
    }

    private func waitForShutdownSignal() async {
        let (stream, continuation) = AsyncStream<Void>.makeStream()
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                for await _ in stream {}
            } onCancel: {
                continuation.finish()
            }
        } onGracefulShutdown: {
            continuation.finish()
        }
    }

    private func shutdown() async {
        let (effects, connections) = self.state.withLock { state -> ([Effect], [RedisConnection]) in
            state.runState = .stopped
            let timers = state.timers.values.map { Effect.cancelScheduled($0) }
            state.timers.removeAll()
            return (timers + self.translate(state.pool.shutdown(), state: &state), Array(state.connections.values))
        }
        self.perform(effects)
        // Every connection closes now: leased ones fail their commands with connectionClosed.
        for connection in connections { await connection.close() }
        self.workContinuation.finish()
        self.eventContinuation.finish()
    }

    // MARK: Commands

    /// Sends `command` on a pooled connection, with the retry rules described on ``RedisClient``.
    ///
    /// Commands that change a connection's session (`MULTI`/`EXEC`/`WATCH`, `SELECT`, `CLIENT SETNAME`,
    /// `AUTH`, `HELLO`, `RESET`, the `SUBSCRIBE` family, `MONITOR`, `QUIT`) are refused with
    /// ``RedisError/Code/invalidArgument``: on a pooled connection they would reach the next user.
    /// Use ``withConnection(_:)`` for transactions.
    public func send(_ command: RedisCommand, timeout: Duration?) async throws -> RESPValue {
        if command.sessionEffect.changesSession { throw Self.refusal(of: command) }
        // Too large to send: no connection is leased, so none is touched, and no retry can help.
        if let error = command.encodingError { throw error }
        let clock = ContinuousClock()
        let commandTimeout = timeout ?? self.configuration.commandTimeout
        // An explicit timeout bounds the whole call: lease waits, attempts, pauses; nothing is written
        // after it. Without one, the deadline counts from the first write (lease waits have their own,
        // leaseTimeout) and bounds the attempts after transient refusals.
        var deadline: ContinuousClock.Instant? = timeout.map { clock.now + $0 }
        var attempt = 0
        var transientPause: Duration?
        var connectionPause: Duration?
        // Set once an attempt was written and its connection died before the reply: the command may
        // have run, so a later failure cannot say that it did not.
        var mayHaveExecuted = false
        while true {
            attempt += 1
            let lease: Lease
            do {
                lease = try await self.lease(within: timeout == nil ? nil : deadline.map { $0 - clock.now })
            } catch let error as RedisError where mayHaveExecuted {
                throw self.failed(command, error, mayHaveExecuted: true)
            }
            if timeout != nil, let deadline, clock.now >= deadline {
                // Too late to write: the caller has given up, and a late write could only run unseen.
                self.finish(lease)
                var late = RedisError(code: .commandTimeout, message: "the command's deadline passed before a connection was free to send it")
                late.commandWasNotSent = true
                throw self.failed(command, late, mayHaveExecuted: mayHaveExecuted)
            }
            do {
                if deadline == nil { deadline = clock.now + commandTimeout }
                // An attempt after a transient refusal gets only what is left of the deadline, so refusals
                // never stretch it; a resend after a dead connection (bounded by maximumCommandAttempts)
                // gets the whole timeout again.
                let attemptTimeout = (timeout != nil || transientPause != nil) ? max(deadline! - clock.now, .milliseconds(1)) : commandTimeout
                let value = try await lease.connection.send(command, timeout: attemptTimeout)
                self.finish(lease)
                return value
            } catch let error as RedisError where error.isTransientServerState && !command.isScript {
                // The server refused the command without running it (loading, busy, failing over): any
                // command may be sent again, within its deadline, and the refusal costs no attempt.
                // (A script may write and then return an error that starts the same way: never resent.)
                self.finish(lease)
                attempt -= 1
                let pause = Self.retryPause(after: transientPause)
                transientPause = pause
                guard let deadline, clock.now + pause < deadline else {
                    throw self.failed(command, error, mayHaveExecuted: mayHaveExecuted)
                }
                self.retrying()
                try await Task.sleep(for: pause)
            } catch let error as RedisError where error.code == .serverError || error.code == .unexpectedReply || error.code == .invalidArgument {
                self.finish(lease)
                if mayHaveExecuted { throw self.failed(command, error, mayHaveExecuted: true) }
                throw error
            } catch is CancellationError {
                // The reply is still owed: the connection is restored (or closed) before anyone else gets it.
                self.finish(lease)
                throw CancellationError()
            } catch let error as RedisError {
                self.finish(lease)
                transientPause = nil  // The resend gets the whole timeout again.
                if error.commandWasNotSent {
                    // Nothing was written: a free attempt, bounded by the deadline alone.
                    attempt -= 1
                } else {
                    mayHaveExecuted = true
                }
                let resendable = error.commandWasNotSent || command.isIdempotent
                // Unwritten attempts are free, but only until the deadline.
                let withinBudget = attempt < self.configuration.maximumCommandAttempts
                    && (!error.commandWasNotSent || deadline.map { clock.now < $0 } ?? true)
                guard resendable && withinBudget else {
                    throw self.failed(command, error, mayHaveExecuted: mayHaveExecuted)
                }
                self.retrying()
                // When many connections die at once (a reset, a kill), the others in the pool may not be
                // known dead yet: a short pause lets their closes arrive before the next lease.
                let pause = Self.retryPause(after: connectionPause)
                connectionPause = pause
                try await Task.sleep(for: pause)
            }
        }
    }

    private func retrying() {
        self.metrics.retried.increment()
        self.counters.commandsRetried.add(1, ordering: .relaxed)
    }

    /// The error a command fails with after its last attempt: `outcomeUnknown` when an earlier attempt
    /// may have run (unless the command only reads, so that its running changed nothing).
    private func failed(_ command: RedisCommand, _ error: RedisError, mayHaveExecuted: Bool) -> RedisError {
        if error.code != .serverError && error.code != .unexpectedReply {
            self.metrics.failed.increment()
            self.counters.commandsFailed.add(1, ordering: .relaxed)
        }
        guard mayHaveExecuted && !command.isReadOnly else { return error }
        return RedisError(
            code: .outcomeUnknown,
            message: "\(command.name) failed (\(error.code)\(error.serverErrorPrefix.map { ", \($0)" } ?? "")) after an attempt whose connection died in flight: it may or may not have executed",
            underlying: error
        )
    }

    /// Pauses between attempts (after a transient server state, or a dead connection): 5–10 ms at
    /// first, doubling to at most 500 ms, jittered over the upper half.
    private static func retryPause(after previous: Duration?) -> Duration {
        let next = min((previous ?? .milliseconds(5)) * 2, .milliseconds(500))
        return next / 2 + (next / 2) * Double.random(in: 0..<1)
    }

    /// Why `command` has no place on a pooled connection, and what to use instead.
    private static func refusal(of command: RedisCommand) -> RedisError {
        let advice: String
        switch command.sessionEffect {
        case .beginsTransaction, .endsTransaction, .watches, .unwatches:
            advice = "a transaction needs one connection for the whole sequence: use withConnection"
        case .selectsDatabase:
            advice = "it would move a pooled connection to another database: set RedisClientConfiguration.database"
        case .renames:
            advice = "connection names carry the credential version operators rotate by: set RedisClientConfiguration.name"
        case .irreversible(let name) where name.hasSuffix("SUBSCRIBE"):
            advice = "subscriptions need a connection of their own, outside the pool"
        case .irreversible, .none, .blocks:
            advice = "it changes the connection's identity or protocol state, which a pooled connection must not carry; use a RedisConnection of your own"
        }
        return RedisError(code: .invalidArgument, message: "\(command.name) is not sent through the pool: \(advice)")
    }

    /// Runs `body` with one pooled connection to itself, for sequences that need one connection
    /// (`WATCH`/`MULTI`/`EXEC`).
    ///
    /// The connection goes back to the pool exactly as clean as it came: whatever `body` left on it
    /// (an open transaction, watched keys, another database, another name, replies still owed to
    /// commands whose callers were cancelled) is undone in one round trip before anyone else gets it,
    /// or the connection is closed. It is always closed after `AUTH`, `HELLO`, `RESET`, the `SUBSCRIBE`
    /// family, `MONITOR`, `CLIENT REPLY` or `QUIT`, and after a cancelled blocking command.
    public func withConnection<Result: Sendable>(
        _ body: (RedisConnection) async throws -> Result
    ) async throws -> Result {
        let lease = try await self.lease()
        do {
            let result = try await body(lease.connection)
            self.finish(lease)
            return result
        } catch {
            self.finish(lease)
            throw error
        }
    }

    /// Asks the credential source to look again now (re-read a file or variable, call the provider),
    /// retries a pending credential's probe at once, and re-reads reloading TLS files.
    public func reloadCredentials() {
        self.source.reload()
        self.tlsWatcher?.reload()
        self.decide { state in self.translate(credentials: state.credentials.retryNow(), state: &state) }
    }

    /// How many pooled connections are authenticated with each credential version.
    public var connectionsByCredentialVersion: [String: Int] {
        self.state.withLock { $0.pool.connectionsByVersion }
    }

    /// The version of the credentials in use.
    public var currentCredentialVersion: String? {
        self.state.withLock { $0.credentials.current?.version }
    }

    /// Ends a CA rollover: with reloading TLS, the pending trust anchors become the only ones and a new
    /// generation is rolled out (the old anchors can also be dropped by rewriting the bundle file).
    public func promotePendingTrustAnchors() {
        self.tlsWatcher?.promotePendingTrustAnchors()
    }

    /// Totals since the client was created.
    public var statistics: RedisClientStatistics {
        RedisClientStatistics(
            connectionsOpened: self.counters.connectionsOpened.load(ordering: .relaxed),
            reauthentications: self.counters.reauthentications.load(ordering: .relaxed),
            commandsRetried: self.counters.commandsRetried.load(ordering: .relaxed),
            commandsFailed: self.counters.commandsFailed.load(ordering: .relaxed)
        )
    }

    /// How many pooled connections use each TLS context generation.
    public var connectionsByTLSGeneration: [UInt64: Int] {
        self.state.withLock { $0.pool.connectionsByGeneration }
    }

    /// The TLS context new connections use (the newest valid generation); `nil` without TLS.
    public var currentTLSContext: RedisTLSContext? {
        self.state.withLock { $0.tlsContext }
    }

    /// The version waiting for a successful probe, if any.
    public var pendingCredentialVersion: String? {
        self.state.withLock { $0.credentials.pending?.version }
    }

    /// Lease requests not yet granted or failed (for tests: nothing may stay behind).
    var leaseRequestsInFlight: Int {
        self.state.withLock { $0.leaseRequests.count }
    }

    // MARK: Leases

    /// Waits for a pooled connection at most `leaseTimeout`, or `within` when that is shorter.
    private func lease(within: Duration? = nil) async throws -> Lease {
        let started = ContinuousClock.now
        let wait = within.map { min($0, self.configuration.pool.leaseTimeout) } ?? self.configuration.pool.leaseTimeout
        let deadline = NIODeadline.now() + TimeAmount(max(wait, .zero))
        let id = self.state.withLock { state -> PoolStateMachine.LeaseID in
            state.nextLeaseID += 1
            state.leaseRequests[state.nextLeaseID] = .registered
            return state.nextLeaseID
        }
        let lease = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Lease, any Error>) in
                self.decide { state in
                    if case .cancelledEarly = state.leaseRequests[id] {
                        state.leaseRequests[id] = nil
                        return [.resume(continuation, .failure(CancellationError()))]
                    }
                    state.leaseRequests[id] = .waiting(continuation, deadline: deadline)
                    return self.translate(state.pool.leaseRequested(id, deadline: deadline, now: .now()), state: &state)
                }
            }
        } onCancel: {
            self.decide { state in
                switch state.leaseRequests[id] {
                case .registered:
                    state.leaseRequests[id] = .cancelledEarly
                    return []
                case .waiting(let continuation, _):
                    state.leaseRequests[id] = nil
                    return [.resume(continuation, .failure(CancellationError()))]
                        + self.translate(state.pool.leaseCancelled(id, now: .now()), state: &state)
                case .cancelledEarly, nil:
                    return []  // Granted or failed already: the lease's user sees the cancellation next.
                }
            }
        }
        self.metrics.leaseWait.recordNanoseconds(TimeAmount(ContinuousClock.now - started).nanoseconds)
        return lease
    }

    /// Ends a lease: the connection goes back to the pool when it is clean, after a restoration when
    /// something has to be undone, and is closed when it is dead or cannot be restored.
    private func finish(_ lease: Lease) {
        guard lease.connection.isActive else { return self.release(lease, reusable: false) }
        switch lease.connection.releaseDisposition {
        case .reuse:
            self.release(lease, reusable: true)
        case .close(let reason):
            self.logger.debug("closing a connection its lease left unrestorable", metadata: [LoggingKeys.error: "\(reason)"])
            self.release(lease, reusable: false)
        case .restore:
            self.perform([.work(.restore(lease.id, lease.connection))])
        }
    }

    private func release(_ lease: Lease, reusable: Bool) {
        self.decide { state in
            self.translate(state.pool.connectionReleased(lease.id, reusable: reusable, now: .now()), state: &state)
        }
    }

    /// Decides under the lock (the machines' events and their translation into effects, in one
    /// acquisition, so no other decision can interleave), then performs the effects after it.
    private func decide(_ body: (inout State) -> [Effect]) {
        let effects = self.state.withLock { body(&$0) }
        self.perform(effects)
    }

    // MARK: Decisions to effects (under the lock)

    private func translate(_ actions: [PoolStateMachine.Action], state: inout State) -> [Effect] {
        var effects: [Effect] = []
        for action in actions {
            switch action {
            case .createConnection(let id):
                effects.append(.work(.connect(id)))
            case .lease(let id, let leaseID):
                guard case .waiting(let continuation, let deadline) = state.leaseRequests[leaseID] else {
                    // The waiter left; give the connection back.
                    effects += self.translate(state.pool.connectionReleased(id, reusable: true, now: .now()), state: &state)
                    continue
                }
                guard let connection = state.connections[id] else {
                    // The connection is gone although the pool still had it: drop it, and the waiter waits
                    // on (never dropped).
                    effects += self.translate(state.pool.connectionReleased(id, reusable: false, now: .now()), state: &state)
                    effects += self.translate(state.pool.leaseRequested(leaseID, deadline: deadline, now: .now()), state: &state)
                    continue
                }
                state.leaseRequests[leaseID] = nil
                effects.append(.resume(continuation, .success(Lease(id: id, connection: connection))))
            case .failLease(let leaseID, var error):
                guard case .waiting(let continuation, _) = state.leaseRequests.removeValue(forKey: leaseID) else { continue }
                if error.code == .leaseTimeout, let cause = state.lastConnectError {
                    error.message += "; the last connection attempt failed: \(cause.message)"
                    error.underlying = cause
                }
                effects.append(.resume(continuation, .failure(error)))
            case .reauthenticate(let id):
                guard let connection = state.connections[id], let credentials = state.credentials.current else {
                    effects += self.translate(state.pool.reauthenticationFailed(id, now: .now(), random: Double.random(in: 0..<1)), state: &state)
                    continue
                }
                effects.append(.work(.reauthenticate(id, connection, credentials)))
            case .closeConnection(let id):
                state.closingByPool.insert(id)
                effects.append(.work(.close(id, state.connections[id])))
            case .healthCheck(let id):
                if let connection = state.connections[id] {
                    effects.append(.work(.healthCheck(id, connection)))
                } else {
                    effects += self.translate(state.pool.connectionReleased(id, reusable: false, now: .now()), state: &state)
                }
            case .scheduleTimer(let deadline):
                effects += Self.requestTimer(.pool, at: deadline, state: &state)
            }
        }
        effects += self.gaugeUpdates(&state)
        if state.rolling, let target = state.tlsContext?.generation,
            state.pool.connectionsByGeneration.keys.allSatisfy({ $0 == target })
        {
            state.rolling = false
            effects.append(.event(RedisRotationEvent(kind: .tlsGenerationRolled, detail: "every connection uses TLS generation \(target)")))
        }
        return effects
    }

    private func translate(credentials actions: [CredentialStateMachine.Action], state: inout State) -> [Effect] {
        var effects: [Effect] = []
        for action in actions {
            switch action {
            case .startProbe(let credentials):
                effects.append(.work(.probe(credentials)))
            case .pendingChanged(let credentials):
                effects.append(.event(RedisRotationEvent(kind: .credentialSourceChanged, credentialVersion: credentials.version)))
                effects += self.translate(state.pool.candidatesChanged(now: .now()), state: &state)
            case .promoted(let old, let new):
                state.expiry.setItems(
                    new.expiresAt.map { [.init(name: "credential \(new.username) version \(new.version)", expiresAt: $0)] } ?? [],
                    group: "credential"
                )
                effects += self.expiryEffects(&state)
                effects.append(
                    .event(RedisRotationEvent(kind: .promoted, credentialVersion: new.version, detail: "previous version: \(old?.version ?? "none")"))
                )
                effects += self.translate(state.pool.targetVersionChanged(new.version, now: .now()), state: &state)
            case .probeFailed(let credentials, let rejected, let retryAt):
                let when = retryAt.map { "retrying in \(($0 - .now()).nanoseconds / 1_000_000) ms" } ?? "giving up until the source changes or a reload"
                effects.append(
                    .event(
                        RedisRotationEvent(
                            kind: .probeFailed,
                            credentialVersion: credentials.version,
                            detail: "\(rejected ? "the server rejected the credentials (WRONGPASS)" : "the probe could not connect"); \(when)"
                        )
                    )
                )
            case .demoted(let rejected, let working):
                self.logger.warning(
                    "current credentials rejected while the previous ones work: serving on the previous ones",
                    metadata: [LoggingKeys.credentialVersion: "\(rejected.version)"]
                )
                effects.append(
                    .event(
                        RedisRotationEvent(
                            kind: .credentialDemoted,
                            credentialVersion: rejected.version,
                            detail: "the server rejected \(rejected.version) while \(working.version) works: serving on \(working.version), probing \(rejected.version) again with backoff"
                        )
                    )
                )
                state.expiry.setItems(
                    working.expiresAt.map { [.init(name: "credential \(working.username) version \(working.version)", expiresAt: $0)] } ?? [],
                    group: "credential"
                )
                effects += self.expiryEffects(&state)
                effects += self.translate(state.pool.targetVersionChanged(working.version, now: .now()), state: &state)
            case .previousDiscarded(let credentials):
                effects.append(.event(RedisRotationEvent(kind: .previousCredentialDiscarded, credentialVersion: credentials.version)))
            case .scheduleTimer(let deadline):
                effects += Self.requestTimer(.credentials, at: deadline, state: &state)
            }
        }
        return effects
    }

    /// The connection gauges to record, when the counts changed since the last time (metric objects are
    /// touched outside the lock, and not at all on the many leases that change nothing).
    /// Only what is in use is kept, so that a process that rotates for months does not grow; the
    /// recording (outside the lock) sets a version or generation that left to 0 once.
    private func gaugeUpdates(_ state: inout State) -> [Effect] {
        let versions = state.pool.connectionsByVersion
        let generations = state.pool.connectionsByGeneration
        guard versions != state.recordedVersionCounts || generations != state.recordedGenerationCounts else { return [] }
        state.recordedVersionCounts = versions
        state.recordedGenerationCounts = generations
        state.gaugeSequence += 1
        return [.recordConnectionGauges(versions: versions, generations: generations, sequence: state.gaugeSequence)]
    }

    // MARK: Effects (outside the lock)

    private func perform(_ effects: [Effect]) {
        for effect in effects {
            switch effect {
            case .resume(let continuation, let result):
                continuation.resume(with: result)
            case .work(let item):
                self.workContinuation.yield(item)
            case .event(let event):
                self.logger.debug("rotation event", metadata: ["redis_event": "\(event)"])
                self.eventContinuation.yield(event)
            case .cancelScheduled(let task):
                task.cancel()
            case .recordConnectionGauges(let versions, let generations, let sequence):
                // Its own small lock (never the state's): recording happens in decision order.
                // A version or generation that left is recorded once as 0, then forgotten.
                self.gaugesRecorded.withLock { last in
                    guard sequence > last.sequence else { return }
                    for (version, count) in versions { self.metrics.connections(version: version).record(count) }
                    for version in last.versions.keys where versions[version] == nil { self.metrics.connections(version: version).record(0) }
                    for (generation, count) in generations { self.metrics.connections(generation: generation).record(count) }
                    for generation in last.generations.keys where generations[generation] == nil {
                        self.metrics.connections(generation: generation).record(0)
                    }
                    last = (sequence, versions, generations)
                }
            case .recordExpiryGauges(let items):
                for item in items { self.metrics.secondsUntilExpiry(item: item.name).record(item.seconds) }
            case .scheduleTimer(let kind, let deadline, let generation):
                let task = self.timerLoop.scheduleTask(deadline: deadline) { self.timerFired(kind, generation: generation) }
                // Requests are numbered under the lock in the order they were decided; the newest wins even
                // when an older one is performed after it.
                let obsolete = self.state.withLock { state -> Scheduled<Void>? in
                    guard state.timerGenerations[kind] == generation else { return task }
                    defer { state.timers[kind] = task }
                    return state.timers[kind]
                }
                obsolete?.cancel()
            }
        }
    }

    /// Replaces the timer of `kind` with one at `deadline`; the old one is cancelled after the lock.
    private static func requestTimer(_ kind: TimerKind, at deadline: NIODeadline, state: inout State) -> [Effect] {
        let generation = (state.timerGenerations[kind] ?? 0) + 1
        state.timerGenerations[kind] = generation
        let cancel = state.timers.removeValue(forKey: kind).map { [Effect.cancelScheduled($0)] } ?? []
        return cancel + [.scheduleTimer(kind, deadline, generation: generation)]
    }

    private func timerFired(_ kind: TimerKind, generation: UInt64) {
        let effects = self.state.withLock { state -> [Effect] in
            guard state.timerGenerations[kind] == generation, state.runState == .running else { return [] }
            state.timers[kind] = nil
            switch kind {
            case .pool: return self.translate(state.pool.timerFired(now: .now()), state: &state)
            case .credentials: return self.translate(credentials: state.credentials.timerFired(now: .now()), state: &state)
            case .expiry: return self.expiryEffects(&state)
            }
        }
        self.perform(effects)
    }

    private func sourceReported(_ report: CredentialSourceReport) {
        switch report {
        case .credentials(let credentials):
            let effects = self.state.withLock { state -> [Effect] in
                let first = state.credentials.current == nil
                var effects = self.translate(credentials: state.credentials.sourceReported(credentials, now: .now()), state: &state)
                if first {
                    effects += self.translate(state.pool.targetVersionChanged(credentials.version, now: .now()), state: &state)
                    if let expiresAt = credentials.expiresAt {
                        state.expiry.setItems(
                            [.init(name: "credential \(credentials.username) version \(credentials.version)", expiresAt: expiresAt)],
                            group: "credential"
                        )
                        effects += self.expiryEffects(&state)
                    }
                }
                return effects
            }
            self.perform(effects)
        case .rejected(let reason):
            self.logger.warning("credential source rejected", metadata: [LoggingKeys.error: "\(reason)"])
            self.perform([.event(RedisRotationEvent(kind: .credentialSourceRejected, detail: reason))])
        }
    }

    // MARK: TLS reload and expiry

    private func tlsReported(_ report: TLSMaterialReport) {
        switch report {
        case .accepted(let context):
            let effects = self.state.withLock { state -> [Effect] in
                state.tlsContext = context
                state.rolling = true
                Self.watchExpiry(of: context, in: &state.expiry)
                let leaf = context.clientCertificateChain.first.map { ", client certificate \($0.subject) valid until \($0.notAfter)" } ?? ""
                var effects: [Effect] = [
                    .event(RedisRotationEvent(kind: .tlsMaterialReloaded, detail: "TLS generation \(context.generation), \(context.trustAnchors.count) trust anchors\(leaf)"))
                ]
                effects += self.translate(
                    state.pool.tlsGenerationChanged(
                        context.generation,
                        window: TimeAmount(self.configuration.tls?.rolloverWindow ?? .seconds(60)),
                        now: .now(),
                        random: Double.random(in: 0..<1)
                    ),
                    state: &state
                )
                return effects + self.expiryEffects(&state)
            }
            self.perform(effects)
        case .rejected(let error):
            self.logger.warning("TLS material rejected", metadata: [LoggingKeys.error: "\(error)"])
            self.perform([.event(RedisRotationEvent(kind: .tlsMaterialRejected, detail: "\(error.code): \(error.message)"))])
        }
    }

    /// When a connection must be replaced at the latest: shortly before its client certificate or the
    /// server's certificate expires.
    private func replacementDeadline(for connection: RedisConnection, context: RedisTLSContext?) -> NIODeadline? {
        let expiries = [context?.clientCertificateChain.first?.notAfter, connection.tlsInfo?.peerCertificate?.notAfter].compactMap { $0 }
        guard let earliest = expiries.min() else { return nil }
        let margin = TimeInterval(TimeAmount(self.configuration.expiry.replaceConnectionsBeforeCertificateExpiry).nanoseconds) / 1e9
        let seconds = earliest.timeIntervalSinceNow - margin
        // Already within the margin: a replacement would get the same certificates (until a reload or a
        // server change brings new ones), so replacing now would only loop. The expiry warning says so.
        guard seconds > 0 else { return nil }
        return .now() + .nanoseconds(Int64(min(seconds, 10 * 365 * 86400) * 1e9))
    }

    /// Warnings due now, the gauges of time left, and the next check (at most an hour away).
    private func expiryEffects(_ state: inout State) -> [Effect] {
        let now = Date()
        let (warnings, next) = state.expiry.evaluate(at: now)
        let remaining = state.expiry.remaining(at: now).map { (name: $0.item.name, seconds: $0.seconds) }
        var effects: [Effect] = [.recordExpiryGauges(remaining)]
        effects += warnings.map { warning in
            let days = (warning.remaining / 86400 * 10).rounded() / 10
            let detail = warning.remaining <= 0
                ? "\(warning.item.name) expired at \(warning.item.expiresAt)"
                : "\(warning.item.name) expires at \(warning.item.expiresAt), in \(days) days"
            return .event(RedisRotationEvent(kind: .expiryWarning, detail: detail))
        }
        let wait = min(next.map { max(0, $0.timeIntervalSince(now)) } ?? 3600, 3600)
        effects += Self.requestTimer(.expiry, at: .now() + .nanoseconds(Int64(wait * 1e9) + 1_000_000), state: &state)
        return effects
    }

    private func evaluateExpiry() {
        let effects = self.state.withLock { state -> [Effect] in
            guard state.runState == .running else { return [] }
            return self.expiryEffects(&state)
        }
        self.perform(effects)
    }

    // MARK: Work

    private func perform(_ item: Work) async {
        switch item {
        case .connect(let id):
            await self.connect(id)
        case .reauthenticate(let id, let connection, let credentials):
            do {
                try await connection.authenticate(as: credentials, name: self.configuration.connectionName(version: credentials.version))
                self.metrics.reauthentications.increment()
                self.counters.reauthentications.add(1, ordering: .relaxed)
                self.perform([.event(RedisRotationEvent(kind: .connectionReauthenticated, credentialVersion: credentials.version, connectionID: id))])
                self.decide { state in
                    self.translate(state.pool.reauthenticated(id, version: credentials.version, now: .now()), state: &state)
                }
            } catch {
                self.logger.debug("re-authentication failed", metadata: [LoggingKeys.error: "\(error)"])
                let rejected = (error as? RedisError)?.code == .authenticationFailed
                self.decide { state in
                    var effects: [Effect] = []
                    var demoted = false
                    if rejected {
                        effects.append(
                            .event(RedisRotationEvent(kind: .credentialRejected, credentialVersion: credentials.version, detail: "WRONGPASS when re-authenticating connection \(id)"))
                        )
                        // The connection is still authenticated as before; if that is the previous version, the
                        // rejected one is demoted and the connection serves on.
                        let demotion = state.credentials.reauthenticationRejected(
                            credentials,
                            keptVersion: state.pool.slots[id]?.version,
                            now: .now(),
                            random: Double.random(in: 0..<1)
                        )
                        effects += self.translate(credentials: demotion, state: &state)
                        // Whoever demoted (this rejection or one just before it), a connection already on the
                        // working version serves on.
                        demoted = state.pool.slots[id]?.version == state.pool.targetVersion
                    }
                    return effects
                        + self.translate(
                            state.pool.reauthenticationFailed(id, keepConnection: demoted, now: .now(), random: Double.random(in: 0..<1)),
                            state: &state
                        )
                }
            }
        case .close(let id, let connection):
            await connection?.close()
            self.connectionGone(id)
        case .probe(let credentials):
            await self.probe(credentials)
        case .watch(let id, let connection):
            await connection.waitUntilClosed()
            self.connectionGone(id)
        case .healthCheck(let id, let connection):
            let healthy = (try? await connection.ping()) != nil
            if !healthy { self.logger.debug("health check failed", metadata: [LoggingKeys.connectionID: "\(connection.id)"]) }
            self.release(Lease(id: id, connection: connection), reusable: healthy)
        case .restore(let id, let connection):
            let restored = await connection.restore(timeout: self.configuration.commandTimeout)
            if !restored { self.logger.debug("restoring a connection failed: closing it", metadata: [LoggingKeys.connectionID: "\(connection.id)"]) }
            self.release(Lease(id: id, connection: connection), reusable: restored)
        }
    }

    private func connect(_ id: PoolStateMachine.ConnectionID) async {
        let (candidates, tlsContext) = self.state.withLock { ($0.credentials.candidates, $0.tlsContext) }
        let started = ContinuousClock.now
        var rejected: [String] = []
        var rejectedCredentials: [RedisCredentials] = []
        var failure: RedisError?
        for candidate in candidates {
            do {
                let connection = try await RedisConnection.connect(
                    configuration: self.configuration.connectionConfiguration(for: candidate, tlsContext: tlsContext),
                    eventLoopGroup: self.eventLoopGroup,
                    logger: self.logger
                )
                self.metrics.handshake.recordNanoseconds(TimeAmount(ContinuousClock.now - started).nanoseconds)
                self.metrics.connects.increment()
                self.counters.connectionsOpened.add(1, ordering: .relaxed)
                let effects = self.state.withLock { state -> [Effect] in
                    guard state.runState == .running else { return [] }
                    state.connections[id] = connection
                    state.lastConnectError = nil
                    let promoted = state.credentials.connectionAuthenticated(
                        with: candidate,
                        rejected: rejectedCredentials,
                        now: .now(),
                        random: Double.random(in: 0..<1)
                    )
                    var effects = self.translate(credentials: promoted, state: &state)
                    effects += self.translate(
                        state.pool.connectionEstablished(
                            id,
                            version: candidate.version,
                            generation: connection.tlsInfo?.contextGeneration,
                            replaceBy: self.replacementDeadline(for: connection, context: tlsContext),
                            now: .now(),
                            random: Double.random(in: 0..<1)
                        ),
                        state: &state
                    )
                    if let peer = connection.tlsInfo?.peerCertificate {
                        state.expiry.setItems(
                            [.init(name: "server certificate \(peer.subject)", expiresAt: peer.notAfter)],
                            // One group for the server: a certificate replaced by one with another subject
                            // stops being watched (and warned about) instead of staying forever.
                            group: "server certificate"
                        )
                        effects += self.expiryEffects(&state)
                    }
                    return effects
                }
                if effects.isEmpty && self.state.withLock({ $0.runState != .running }) {
                    await connection.close()
                    return
                }
                self.perform(effects + [.work(.watch(id, connection))])
                return
            } catch let error as RedisError where error.code == .authenticationFailed && error.serverErrorPrefix == "WRONGPASS" {
                rejected.append(candidate.version)
                rejectedCredentials.append(candidate)
                self.perform([
                    .event(RedisRotationEvent(kind: .credentialRejected, credentialVersion: candidate.version, detail: "WRONGPASS when opening connection \(id)"))
                ])
            } catch let error as RedisError {
                failure = error
                break
            } catch {
                failure = RedisError(code: .connectionFailed, message: "\(error)", underlying: error)
                break
            }
        }
        let error = failure ?? RedisError(
            code: .credentialsRejected,
            message: candidates.isEmpty
                ? "no credentials yet: the credential source has not delivered any"
                : "all \(candidates.count) candidate credential\(candidates.count == 1 ? "" : "s") for user \(candidates[0].username) were rejected; versions tried: \(rejected.joined(separator: ", "))"
        )
        self.logger.debug("connect failed", metadata: [LoggingKeys.error: "\(error)"])
        let effects = self.state.withLock { state -> [Effect] in
            state.lastConnectError = error
            return self.translate(state.pool.connectionFailed(id, error: error, now: .now(), random: Double.random(in: 0..<1)), state: &state)
        }
        self.perform(effects)
    }

    private func connectionGone(_ id: PoolStateMachine.ConnectionID) {
        let effects = self.state.withLock { state -> [Effect] in
            // Reported twice (the close and the watch both end): the pool ignores the second report.
            let wasOpen = state.connections.removeValue(forKey: id) != nil
            let reason = state.closingByPool.remove(id) != nil ? "closed by the pool" : "closed by the server or the network"
            var effects = self.translate(state.pool.connectionClosed(id, now: .now()), state: &state)
            if state.runState == .running && wasOpen {
                effects.append(.event(RedisRotationEvent(kind: .connectionReplaced, connectionID: id, detail: reason)))
            }
            return effects
        }
        self.perform(effects)
    }

    private func probe(_ credentials: RedisCredentials) async {
        let result: CredentialStateMachine.ProbeResult
        do {
            let connection = try await RedisConnection.connect(
                configuration: self.configuration.connectionConfiguration(
                    for: credentials,
                    tlsContext: self.state.withLock { $0.tlsContext },
                    suffix: "-probe"
                ),
                eventLoopGroup: self.eventLoopGroup,
                logger: self.logger
            )
            await connection.close()
            result = .accepted
            self.perform([.event(RedisRotationEvent(kind: .probeSucceeded, credentialVersion: credentials.version))])
        } catch let error as RedisError where error.code == .authenticationFailed {
            result = .rejected
        } catch {
            result = .inconclusive
        }
        let effects = self.state.withLock { state in
            self.translate(
                credentials: state.credentials.probeCompleted(credentials, result: result, now: .now(), random: Double.random(in: 0..<1)),
                state: &state
            )
        }
        self.perform(effects)
    }
}

/// Running totals since the client was created, for reports and tests (the same figures go to
/// swift-metrics).
public struct RedisClientStatistics: Sendable, Hashable {
    /// Connections opened (the first ones and every replacement).
    public var connectionsOpened: Int
    /// Connections re-authenticated in place.
    public var reauthentications: Int
    /// Command attempts repeated on another connection.
    public var commandsRetried: Int
    /// Commands that failed for connection reasons after their retries (server error replies not counted).
    public var commandsFailed: Int
}

private final class Counters: Sendable {
    let connectionsOpened = Atomic<Int>(0)
    let reauthentications = Atomic<Int>(0)
    let commandsRetried = Atomic<Int>(0)
    let commandsFailed = Atomic<Int>(0)
}

/// This client's metrics, labelled with its name. The factory is the one in effect when the client was
/// created (the global one, or a task-local one from `withMetricsFactory`), also for gauges made later.
private struct ClientMetrics: Sendable {
    let label: String
    let factory: any MetricsFactory
    let connects: Counter
    let reauthentications: Counter
    let retried: Counter
    let failed: Counter
    let handshake: Metrics.Timer
    let leaseWait: Metrics.Timer

    init(label: String) {
        let factory = MetricsSystem.factory
        self.label = label
        self.factory = factory
        let dimensions = [("client", label)]
        self.connects = Counter(label: "redis_rotation_connects", dimensions: dimensions, factory: factory)
        self.reauthentications = Counter(label: "redis_rotation_reauthentications", dimensions: dimensions, factory: factory)
        self.retried = Counter(label: "redis_rotation_commands_retried", dimensions: dimensions, factory: factory)
        self.failed = Counter(label: "redis_rotation_commands_failed", dimensions: dimensions, factory: factory)
        self.handshake = Metrics.Timer(label: "redis_rotation_handshake_duration", dimensions: dimensions, factory: factory)
        self.leaseWait = Metrics.Timer(label: "redis_rotation_lease_wait", dimensions: dimensions, factory: factory)
    }

    func connections(generation: UInt64) -> Gauge {
        Gauge(
            label: "redis_rotation_connections_by_tls_generation",
            dimensions: [("client", self.label), ("tls_generation", String(generation))],
            factory: self.factory
        )
    }

    /// Seconds until `item` expires; negative once expired.
    func secondsUntilExpiry(item: String) -> Gauge {
        Gauge(label: "redis_rotation_seconds_until_expiry", dimensions: [("client", self.label), ("item", item)], factory: self.factory)
    }

    func connections(version: String) -> Gauge {
        Gauge(
            label: "redis_rotation_connections",
            dimensions: [("client", self.label), ("credential_version", version)],
            factory: self.factory
        )
    }
}
