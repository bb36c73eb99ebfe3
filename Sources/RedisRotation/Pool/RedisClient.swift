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
import Tracing
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

    /// Opens a connection for the pool: `RedisConnection.connect` on the client's event loops, or a
    /// connection over a test channel.
    typealias ConnectionFactory = @Sendable (RedisConnectionConfiguration, Logger) async throws -> RedisConnection

    private let eventContinuation: AsyncStream<RedisRotationEvent>.Continuation
    private let source: CredentialSourceRunner
    private let initialCredentials: RedisCredentials?
    /// Credentials known to work elsewhere (another node of a cluster, mid-rotation), tried first and
    /// kept until the source's own are accepted here: set by ``RedisClusterClient`` for a pool it creates.
    private let seedCredentials: RedisCredentials?
    /// The clock of every decision and the loop of the one timer (a manual one in tests).
    private let timerLoop: any EventLoop
    private let connectionFactory: ConnectionFactory
    let logger: Logger
    private let state: Lock<State>
    private let work: AsyncStream<Work>
    private let workContinuation: AsyncStream<Work>.Continuation
    private let metrics: ClientMetrics
    private let counters = Counters()
    /// The sequence number of the last connection-gauge snapshot recorded.
    private let gaugesRecorded = Lock<(sequence: UInt64, versions: [String: Int], generations: [UInt64: Int])>((0, [:], [:]))
    private let tlsWatcher: TLSMaterialWatcher?
    private let initialTLSSnapshot: [String: [UInt8]]
    /// Internal observers of the client's events (dedicated connections such as subscribers follow
    /// promotions, demotions and TLS reloads through them); called after the event is decided.
    private let observers = Lock<(next: Int, all: [Int: @Sendable (RedisRotationEvent) -> Void])>((0, [:]))
    /// The subscriptions and their dedicated connection (see `RedisClient+PubSub.swift`).
    let subscriberHub = SubscriberHub()
    /// Where the cluster client asks a node's pool to shut down gracefully.
    let gracefulStop = GracefulStopRequest()

    /// The decisions (``ClientStateMachine``) and what the shell holds for them: the connection objects,
    /// the waiting tasks, the TLS context and the scheduled timer. Always changed together, under one lock.
    private struct State {
        var machine: ClientStateMachine
        var connections: [PoolStateMachine.ConnectionID: RedisConnection] = [:]
        var waiters: [PoolStateMachine.LeaseID: CheckedContinuation<Lease, any Error>] = [:]
        /// The waiters among `waiters` that asked for a shared use rather than an exclusive lease.
        var sharedWaiters: Set<PoolStateMachine.LeaseID> = []
        var tlsContext: RedisTLSContext?
        var timer: Scheduled<Void>?
        /// Numbers timer requests in decision order: a request performed after a newer one is dropped.
        var timerGeneration: UInt64 = 0
        /// Jitter for the decisions: a cheap generator under the lock, seeded once (every command makes
        /// two decisions; a system random draw each would cost a system call inside the lock).
        var random: SplitMix64
        /// During a graceful shutdown's drain: finished once no pooled connection is left open.
        var drained: AsyncStream<Void>.Continuation?
    }

    struct Lease: Sendable {
        let id: PoolStateMachine.ConnectionID
        let connection: RedisConnection
        /// A shared use (an ordinary command pipelined with others' on the connection) rather than an
        /// exclusive lease.
        var shared = false
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
        case scheduleTimer(NIODeadline, generation: UInt64)
        case event(RedisRotationEvent)
        case cancelScheduled(Scheduled<Void>)
        case recordConnectionGauges(versions: [String: Int], generations: [UInt64: Int], sequence: UInt64)
        case recordExpiryGauges([ClientStateMachine.ExpiryGauge])
    }

    /// Creates a client. Nothing connects until ``run()`` runs.
    ///
    /// - Throws: ``RedisError`` when the credential source cannot give credentials now (a missing or
    ///   empty password file, an unset environment variable): fail fast, with the reason.
    public convenience init(
        configuration: RedisClientConfiguration,
        credentials: RedisCredentialSource,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "RedisRotation", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws {
        try self.init(configuration: configuration, credentials: credentials, seedCredentials: nil, eventLoopGroup: eventLoopGroup, logger: logger)
    }

    /// A client that starts with `seedCredentials` as its current credentials (see ``seedCredentials``).
    convenience init(
        configuration: RedisClientConfiguration,
        credentials: RedisCredentialSource,
        seedCredentials: RedisCredentials?,
        eventLoopGroup: any EventLoopGroup,
        logger: Logger
    ) throws {
        try self.init(
            configuration: configuration,
            credentials: credentials,
            timerLoop: eventLoopGroup.any(),
            randomSeed: UInt64.random(in: .min ... .max),
            logger: logger,
            seedCredentials: seedCredentials,
            connectionFactory: { configuration, logger in
                try await RedisConnection.connect(configuration: configuration, eventLoopGroup: eventLoopGroup, logger: logger)
            }
        )
    }

    /// The credentials in use, for a cluster client seeding a new node's pool.
    var currentCredentials: RedisCredentials? {
        self.state.withLock { $0.machine.credentials.current }
    }

    /// The credentials in use while newer ones are pending (not accepted here yet): what a node the
    /// rotation has not reached still takes.
    var credentialsBehind: RedisCredentials? {
        self.state.withLock { $0.machine.credentials.pending == nil ? nil : $0.machine.credentials.current }
    }

    /// Creates a client whose clock and timer are `timerLoop`'s (a manual one in tests), whose jitter
    /// comes from a generator seeded with `randomSeed`, and whose connections come from
    /// `connectionFactory`.
    init(
        configuration: RedisClientConfiguration,
        credentials: RedisCredentialSource,
        timerLoop: any EventLoop,
        randomSeed: UInt64,
        logger: Logger,
        seedCredentials: RedisCredentials? = nil,
        connectionFactory: @escaping ConnectionFactory
    ) throws {
        self.configuration = configuration
        self.source = CredentialSourceRunner(source: credentials)
        self.initialCredentials = try self.source.initialCredentials()
        self.seedCredentials = seedCredentials
        self.timerLoop = timerLoop
        self.connectionFactory = connectionFactory
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
        self.state = Lock(
            State(
                machine: ClientStateMachine(configuration: configuration.machineConfiguration, tls: tlsContext.map(Self.material(of:))),
                tlsContext: tlsContext,
                random: SplitMix64(seed: randomSeed)
            )
        )
    }

    /// What decisions need of a TLS context.
    private static func material(of context: RedisTLSContext) -> ClientStateMachine.TLSMaterial {
        .init(generation: context.generation, trustAnchors: context.trustAnchors, clientCertificate: context.clientCertificateChain.first)
    }

    // MARK: Running

    /// Runs the client until the task is cancelled or a graceful shutdown is requested; then closes
    /// every connection and fails waiting commands with ``RedisError/Code/clientShutdown``.
    ///
    /// A graceful shutdown (`SIGTERM`/`SIGINT` through a `ServiceGroup`) first lets commands already
    /// sent get their replies, for at most ``RedisClientConfiguration/commandTimeout`` (a blocking
    /// command or a `withConnection` body still running then fails with `connectionClosed` or
    /// ``RedisError/Code/outcomeUnknown``); new commands fail with `clientShutdown` meanwhile.
    /// Cancelling the task closes every connection at once.
    ///
    /// Commands sent before `run()` starts wait for it, each up to its lease deadline
    /// (``RedisClientConfiguration/Pool/leaseTimeout``); then they fail with
    /// ``RedisError/Code/leaseTimeout``, saying that the client is not running.
    public func run() async throws {
        var started = false
        self.decide { state, moment in
            guard !state.machine.hasStarted else { return [] }
            started = true
            return state.machine.start(at: moment)
        }
        precondition(started, "RedisClient.run() may be called once")
        // Seed credentials first: they become current, and the source's, when different, a pending
        // credential probed as in any rotation.
        if let seed = self.seedCredentials { self.sourceReported(.credentials(seed)) }
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
            group.addTask { await self.subscriberHub.run(client: self) }
            group.addTask {
                // Ends on cancellation or graceful shutdown; shutting down ends the work stream below.
                let graceful = await waitForShutdownSignal(or: self.gracefulStop)
                await self.shutdown(draining: graceful)
            }
            for await item in self.work {
                group.addTask { await self.perform(item) }
            }
            group.cancelAll()
        }
    }

    /// Stops the client. `draining` (a graceful shutdown): commands already on a connection get their
    /// replies first, for at most `commandTimeout`: the pool closes each connection once its users are
    /// done (idle ones at once), while new commands fail with `clientShutdown`. Closing everything at
    /// once failed a write in flight with `outcomeUnknown` at every Ctrl-C that caught one (found by the
    /// MutualTLSHotReload example's test). Then, and at once on cancellation, every connection left
    /// closes: leased and shared ones fail their commands with `connectionClosed`.
    private func shutdown(draining: Bool) async {
        var drained: AsyncStream<Void>?
        self.decide { state, moment in
            let actions = state.machine.shutdown(at: moment)
            if draining && !state.connections.isEmpty {
                let (stream, continuation) = AsyncStream<Void>.makeStream()
                drained = stream
                state.drained = continuation
            }
            return actions
        }
        if let drained {
            let bound = self.configuration.commandTimeout
            await withTaskGroup(of: Void.self) { group in
                group.addTask { for await _ in drained {} }
                group.addTask { try? await Task.sleep(for: bound) }
                await group.next()
                group.cancelAll()
            }
        }
        for connection in self.state.withLock({ state in state.drained = nil; return Array(state.connections.values) }) {
            await connection.close()
        }
        self.workContinuation.finish()
        self.eventContinuation.finish()
    }

    // MARK: Commands

    /// Sends `command` on a pooled connection, with the retry rules described on ``RedisClient``.
    ///
    /// Commands that change a connection's session (`MULTI`/`EXEC`/`WATCH`, `SELECT`, `CLIENT SETNAME`,
    /// `AUTH`, `HELLO`, `RESET`, the `SUBSCRIBE` family, `MONITOR`, `QUIT`) are refused with
    /// ``RedisError/Code/invalidArgument``: on a pooled connection they would reach the next user.
    /// Use ``transaction(timeout:_:)`` or ``transaction(watching:maximumAttempts:timeout:_:)`` for
    /// transactions.
    ///
    /// Ordinary commands (those that neither change the session nor block) share pooled connections:
    /// each goes to the connection the previous one went to while it has room (one connection fills
    /// before the next takes any) and is pipelined with other
    /// callers' commands there (at most ``RedisClientConfiguration/Pool/maximumSharedCommandsPerConnection``
    /// at once), so many tasks are served by few connections without waiting for one of their own.
    ///
    /// A blocking command (`BLPOP`, `BLMOVE`, `BZPOPMIN`, `XREAD ... BLOCK`, `WAIT`, ...) holds its
    /// connection for as long as it blocks, and its reply may take its own timeout plus
    /// `commandTimeout` (a timeout of 0: until the server answers or the task is cancelled). A
    /// re-authentication waits until it returns. Cancelling it, or an explicit `timeout` that passes
    /// first, closes its connection, so that an element it would pop stays in the list. A connection
    /// killed during the block is retried only when the command is marked ``RedisCommand/idempotent(_:)``.
    public func send(_ command: RedisCommand, timeout: Duration?) async throws -> RESPValue {
        // Without a tracer (the default), no span is made: no task-local context, no attributes.
        guard let tracer = self.activeTracer else { return try await self.send(command, timeout: timeout, span: nil) }
        return try await self.traced(command.name, tracer: tracer) { span in try await self.send(command, timeout: timeout, span: span) }
    }

    /// The tracer spans go to, `nil` when there is none (the configuration names none and the process
    /// bootstrapped none). Asked on every command: the process may bootstrap one later. Looking for a
    /// tracer among the instruments costs a protocol-conformance check (some thousand instructions),
    /// so the common case, no instrument at all, is told first by its concrete type.
    var activeTracer: (any Tracer)? {
        if let tracer = self.configuration.tracer { return tracer is NoOpTracer ? nil : tracer }
        if InstrumentationSystem.instrument is NoOpInstrument { return nil }
        let tracer = InstrumentationSystem.tracer
        return tracer is NoOpTracer ? nil : tracer
    }

    /// Runs `body` in a client span named `operation`, with the attributes every span of the client has.
    func traced<Result>(_ operation: String, tracer: (any Tracer)? = nil, _ body: (any Span) async throws -> Result) async throws -> Result {
        try await (tracer ?? self.configuration.tracer ?? InstrumentationSystem.tracer).withSpan(operation, ofKind: .client) { span in
            span.attributes["db.system"] = "redis"
            span.attributes["db.operation"] = operation
            span.attributes["server.address"] = self.configuration.host
            span.attributes["server.port"] = self.configuration.port
            return try await body(span)
        }
    }

    private func send(_ command: RedisCommand, timeout: Duration?, span: (any Span)?) async throws -> RESPValue {
        if command.sessionEffect.changesSession { throw Self.refusal(of: command) }
        // Too large to send: no connection is leased, so none is touched, and no retry can help.
        if let error = command.encodingError { throw error }
        let clock = ContinuousClock()
        // A blocking command's reply may take its own timeout (on the server) plus the command timeout.
        let commandTimeout = timeout
            ?? command.blockDuration?.replyTimeout(commandTimeout: self.configuration.commandTimeout)
            ?? self.configuration.commandTimeout
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
        // Set when a shared connection closed under this command because the server left an earlier
        // (another caller's) command unanswered: the attempt goes on on another connection until the
        // instant it would have timed out alone, and only then counts as a timed-out attempt.
        var attemptContinuesUntil: ContinuousClock.Instant?
        while true {
            attempt += 1
            let lease: Lease
            do {
                let within = timeout == nil ? nil : deadline.map { $0 - clock.now }
                // Ordinary commands share connections, pipelined with other callers' (see "Pool
                // multiplexing" in docs/DECISIONS.md); blocking ones hold an exclusive lease.
                // A resend after a dead connection is spread out (see `PoolStateMachine.sharedUseRequested`).
                lease = command.sessionEffect == .none
                    ? try await self.share(within: within, spread: connectionPause != nil) : try await self.lease(within: within)
            } catch let error as RedisError where mayHaveExecuted {
                throw self.failed(command, error, mayHaveExecuted: true)
            }
            if timeout != nil, let deadline, clock.now >= deadline {
                // Too late to write: the caller has given up, and a late write could only run unseen.
                self.finish(lease)
                var late = RedisError(
                    code: .commandTimeout,
                    message: attempt > 1
                        ? "the command's deadline passed before a connection was free to send it again"
                        : "the command's deadline passed before a connection was free to send it"
                )
                // Not sent at all only when no earlier attempt was written.
                late.commandWasNotSent = !mayHaveExecuted
                throw self.failed(command, late, mayHaveExecuted: mayHaveExecuted)
            }
            // Only for a tracer that records: the version costs a lock and a string per command.
            if let span, span.isRecording {
                span.attributes["redis.credential_version"] = lease.connection.credentialVersion
                span.attributes["redis.attempts"] = attempt
            }
            do {
                if deadline == nil { deadline = clock.now + commandTimeout }
                // An attempt after a transient refusal gets only what is left of the deadline, so refusals
                // never stretch it; a resend after a dead connection (bounded by maximumCommandAttempts)
                // gets the whole timeout again; an attempt going on after another caller's silence
                // closed its connection gets what is left of itself.
                let attemptTimeout: Duration
                if let attemptContinuesUntil {
                    guard clock.now < attemptContinuesUntil else { throw Self.attemptTimedOut }
                    attemptTimeout = attemptContinuesUntil - clock.now
                } else if timeout != nil || transientPause != nil {
                    attemptTimeout = max(deadline! - clock.now, .milliseconds(1))
                } else {
                    attemptTimeout = commandTimeout
                }
                let attemptStarted = clock.now
                do {
                    let value = try await lease.connection.send(command, timeout: attemptTimeout)
                    self.finish(lease)
                    return value
                } catch let error as RedisError where error.closedBySilenceOfAnother && attemptContinuesUntil == nil {
                    attemptContinuesUntil = attemptStarted + attemptTimeout
                    throw error
                }
            } catch let error as RedisError where error.closedBySilenceOfAnother && (error.commandWasNotSent || command.isIdempotent) {
                // Not this command's deadline: the server stopped answering an earlier command on the
                // same (shared) connection. Alone, this command would have waited until its own deadline;
                // it goes on doing so on another connection, and the close costs it no attempt.
                self.finish(lease)
                attempt -= 1
                if !error.commandWasNotSent { mayHaveExecuted = true }
                self.retrying()
                let pause = Self.retryPause(after: connectionPause)
                connectionPause = pause
                try await Task.sleep(for: pause)
            } catch let error as RedisError where error.isTransientServerState && !command.isScript {
                // The server refused the command without running it (loading, busy, failing over): any
                // command may be sent again, within its deadline, and the refusal costs no attempt.
                // (A script may write and then return an error that starts the same way: never resent.)
                self.finish(lease)
                attempt -= 1
                attemptContinuesUntil = nil
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
                attemptContinuesUntil = nil
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
            } catch {
                // No other error comes from a connection today; the place or lease is given back anyway
                // (a shared place lost here would shrink the connection's room for good).
                self.finish(lease)
                throw error
            }
        }
    }

    /// How long a connection with owed replies may answer nothing before shared commands pass it over
    /// while another connection has room (head-of-line blocking: see "Pool multiplexing" in
    /// docs/DECISIONS.md). Loopback replies take tens of microseconds and a full pipeline a millisecond
    /// or two; 50 ms stays clear of the pauses a busy machine puts between replies (at 5 ms, every
    /// connection looked held back under the full test suite's load, and the fallback could pick the one
    /// really held back), while a held-back write (a failover's pause: seconds) is found quickly.
    static let heldBackAfter = TimeAmount.milliseconds(50)

    /// An attempt that went on after another caller's silence closed its connection reached the instant
    /// it would have timed out on that connection.
    private static var attemptTimedOut: RedisError {
        RedisError(code: .commandTimeout, message: "the server did not answer the command within its deadline")
    }

    func retrying() {
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
    static func retryPause(after previous: Duration?) -> Duration {
        let next = min((previous ?? .milliseconds(5)) * 2, .milliseconds(500))
        return next / 2 + (next / 2) * Double.random(in: 0..<1)
    }

    /// Why `command` has no place on a pooled connection, and what to use instead.
    private static func refusal(of command: RedisCommand) -> RedisError {
        let advice: String
        switch command.sessionEffect {
        case .beginsTransaction, .endsTransaction, .watches, .unwatches:
            advice = "a transaction needs one connection for the whole sequence: use transaction(_:) or transaction(watching:_:) (or withConnection)"
        case .selectsDatabase:
            advice = "it would move a pooled connection to another database: set RedisClientConfiguration.database"
        case .renames:
            advice = "connection names carry the credential version operators rotate by: set RedisClientConfiguration.name"
        case .irreversible(let name) where name.hasSuffix("SUBSCRIBE"):
            advice = "subscriptions need a connection of their own, outside the pool: use subscribe(to:), psubscribe(to:) or ssubscribe(to:)"
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
    /// Asks the credential source to look again now (re-read a file or variable, call the provider),
    /// retries a pending credential's probe at once, and re-reads reloading TLS files.
    public func reloadCredentials() {
        self.source.reload()
        self.reloadTLSAndRetry()
    }

    /// ``reloadCredentials()`` but for the credential source (a cluster client reloads its shared one once).
    func reloadTLSAndRetry() {
        self.tlsWatcher?.reload()
        self.decide { state, moment in state.machine.retryNow(at: moment) }
    }

    /// How many pooled connections are authenticated with each credential version.
    public var connectionsByCredentialVersion: [String: Int] {
        self.state.withLock { $0.machine.pool.connectionsByVersion }
    }

    /// The version of the credentials in use.
    public var currentCredentialVersion: String? {
        self.state.withLock { $0.machine.credentials.current?.version }
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
        self.state.withLock { $0.machine.pool.connectionsByGeneration }
    }

    /// The TLS context new connections use (the newest valid generation); `nil` without TLS.
    public var currentTLSContext: RedisTLSContext? {
        self.state.withLock { $0.tlsContext }
    }

    /// The version waiting for a successful probe, if any.
    public var pendingCredentialVersion: String? {
        self.state.withLock { $0.machine.credentials.pending?.version }
    }

    // MARK: Dedicated connections

    /// Opens a connection outside the pool (a subscriber, a blocking command's own connection) with the
    /// credentials and TLS context in use now: the known-good credential first, then the others, each
    /// once, like a pooled connection. `suffix` is appended to the connection name (`-sub`).
    ///
    /// - Returns: The connection and the version it authenticated with.
    func openDedicatedConnection(suffix: String) async throws -> (connection: RedisConnection, version: String) {
        let opened = try await self.openWithCandidates(tlsContext: self.state.withLock { $0.tlsContext }, suffix: suffix)
        return (opened.connection, opened.credentials.version)
    }

    /// Opens a connection with the first candidate credential the server accepts, reading the candidates
    /// afresh at every try (one that became a candidate during a handshake, a new pending password, is
    /// tried before every candidate counts as rejected). Each `WRONGPASS` is reported to `rejectedOne`.
    ///
    /// - Returns: The connection, the credentials it authenticated with, and those rejected before.
    /// - Throws: The error of the first attempt that failed otherwise; `credentialsRejected`, naming the
    ///   versions tried, when every candidate was rejected (or there is none yet).
    private func openWithCandidates(
        tlsContext: RedisTLSContext?,
        suffix: String = "",
        rejectedOne: (RedisCredentials) -> Void = { _ in }
    ) async throws -> (connection: RedisConnection, credentials: RedisCredentials, rejected: [RedisCredentials]) {
        var rejected: [RedisCredentials] = []
        // Each candidate once; the bound only guards against a source that changes without end.
        while rejected.count < 8, let candidate = self.state.withLock({ $0.machine.nextCandidate(after: rejected) }) {
            do {
                let connection = try await self.connectionFactory(
                    self.configuration.connectionConfiguration(for: candidate, tlsContext: tlsContext, suffix: suffix),
                    self.logger
                )
                return (connection, candidate, rejected)
            } catch let error as RedisError where error.code == .authenticationFailed && error.serverErrorPrefix == "WRONGPASS" {
                rejected.append(candidate)
                rejectedOne(candidate)
            }
        }
        throw RedisError(
            code: .credentialsRejected,
            message: rejected.isEmpty
                ? "no credentials yet: the credential source has not delivered any"
                : "all \(rejected.count) candidate credential\(rejected.count == 1 ? "" : "s") for user \(rejected[0].username) were rejected; versions tried: \(rejected.map(\.version).joined(separator: ", "))"
        )
    }

    /// The credential version and TLS generation a dedicated connection should be on now.
    var dedicatedConnectionTarget: (version: String?, tlsGeneration: UInt64?) {
        self.state.withLock { ($0.machine.credentials.current?.version, $0.tlsContext?.generation) }
    }

    /// Calls `observer` with every event the client emits from now on, until removed.
    func addObserver(_ observer: @escaping @Sendable (RedisRotationEvent) -> Void) -> Int {
        self.observers.withLock { observers in
            observers.next += 1
            observers.all[observers.next] = observer
            return observers.next
        }
    }

    func removeObserver(_ id: Int) {
        self.observers.withLock { _ = $0.all.removeValue(forKey: id) }
    }

    /// Emits `event` as the client's own (dedicated connections report their replacements).
    func emit(_ event: RedisRotationEvent) {
        self.perform([.event(event)])
    }

    /// Lease requests not yet granted or failed (for tests: nothing may stay behind).
    var leaseRequestsInFlight: Int {
        self.state.withLock { state in
            precondition(state.waiters.count <= state.machine.leaseRequestCount, "a waiter the machine does not know")
            return state.machine.leaseRequestCount
        }
    }

    // MARK: Leases

    /// Waits for a pooled connection at most `leaseTimeout`, or `within` when that is shorter.
    func lease(within: Duration? = nil) async throws -> Lease {
        let started = ContinuousClock.now
        let wait = within.map { min($0, self.configuration.pool.leaseTimeout) } ?? self.configuration.pool.leaseTimeout
        let id = self.state.withLock { $0.machine.registerLease() }
        let lease = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Lease, any Error>) in
                self.decide { state, moment in
                    state.waiters[id] = continuation
                    return state.machine.leaseWaiting(id, deadline: moment.now + TimeAmount(max(wait, .zero)), at: moment)
                }
            }
        } onCancel: {
            self.decide { state, moment in state.machine.leaseCancelled(id, at: moment) }
        }
        self.metrics.leaseWait.recordNanoseconds(TimeAmount(ContinuousClock.now - started).nanoseconds)
        return lease
    }

    /// A place on a pooled connection for one ordinary command, pipelined with other callers' commands:
    /// at once (one lock acquisition, no continuation) when a connection has room, else after waiting at
    /// most `leaseTimeout`, or `within` when that is shorter. End it with ``finish(_:)``.
    @inline(__always)  // Its usual path never suspends: no frame of its own for it.
    func share(within: Duration? = nil, spread: Bool = false) async throws -> Lease {
        let now = NIODeadline.now()
        let immediate = self.state.withLock { state -> Lease? in
            let connections = state.connections
            let held = { (id: PoolStateMachine.ConnectionID) -> Bool in
                connections[id]?.progress.isStalled(longerThan: Self.heldBackAfter, now: now) ?? false
            }
            guard let id = state.machine.sharedUseRequested(spread: spread, isHeldBack: held) else { return nil }
            guard let connection = state.connections[id] else {
                assertionFailure("a shared use of connection \(id), which the client does not hold")
                return nil  // Waits below; the count is given back when the machine learns of the close.
            }
            return Lease(id: id, connection: connection, shared: true)
        }
        if let immediate {
            // No wait: recorded as such, so that the timer's distribution says how many commands waited.
            self.metrics.leaseWait.recordNanoseconds(0)
            return immediate
        }
        let started = ContinuousClock.now
        let wait = within.map { min($0, self.configuration.pool.leaseTimeout) } ?? self.configuration.pool.leaseTimeout
        let id = self.state.withLock { $0.machine.registerLease() }
        let lease = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Lease, any Error>) in
                self.decide { state, moment in
                    state.waiters[id] = continuation
                    state.sharedWaiters.insert(id)
                    return state.machine.leaseWaiting(id, deadline: moment.now + TimeAmount(max(wait, .zero)), shared: true, at: moment)
                }
            }
        } onCancel: {
            self.decide { state, moment in state.machine.leaseCancelled(id, at: moment) }
        }
        self.metrics.leaseWait.recordNanoseconds(TimeAmount(ContinuousClock.now - started).nanoseconds)
        return lease
    }

    /// Ends a lease: the connection goes back to the pool when it is clean, after a restoration when
    /// something has to be undone, and is closed when it is dead or cannot be restored. A shared use
    /// gives its place back; a reply it left owed (cancelled, timed out) has the connection restored
    /// once its last shared user is done.
    func finish(_ lease: Lease) {
        if lease.shared {
            let needsRestore = lease.connection.isActive && !lease.connection.hasCleanSession
            let effects = self.state.withLock { state -> [Effect] in
                if !needsRestore && state.machine.sharedUseEndedWithoutDecision(lease.id) { return [] }
                let moment = ClientStateMachine.Moment(now: self.timerLoop.now, date: Date(), random: Double.random(in: 0..<1, using: &state.random))
                return self.translate(state.machine.sharedUseEnded(lease.id, needsRestore: needsRestore, at: moment), state: &state, at: moment)
            }
            self.perform(effects)
            return
        }
        let outcome: ClientStateMachine.LeaseOutcome
        if !lease.connection.isActive {
            outcome = .unusable
        } else {
            switch lease.connection.releaseDisposition {
            case .reuse:
                outcome = .clean
            case .close(let reason):
                self.logger.debug("closing a connection its lease left unrestorable", metadata: [LoggingKeys.error: "\(reason)"])
                outcome = .unusable
            case .restore:
                outcome = .needsRestore
            }
        }
        self.decide { state, moment in state.machine.leaseEnded(lease.id, outcome: outcome, at: moment) }
    }

    /// Decides under the lock (an event to the machine, and the translation of its actions into effects,
    /// in one acquisition, so no other decision can interleave), then performs the effects after it.
    private func decide(_ body: (inout State, ClientStateMachine.Moment) -> [ClientStateMachine.Action]) {
        let effects = self.state.withLock { state -> [Effect] in
            let moment = ClientStateMachine.Moment(now: self.timerLoop.now, date: Date(), random: Double.random(in: 0..<1, using: &state.random))
            return self.translate(body(&state, moment), state: &state, at: moment)
        }
        self.perform(effects)
    }

    // MARK: Actions to effects (under the lock)

    /// Looks up what the machine's actions name (continuations, connections) and turns them into
    /// effects. No decision is made here; an action that names something the shell does not hold breaks
    /// an invariant of the machine.
    private func translate(_ actions: [ClientStateMachine.Action], state: inout State, at moment: ClientStateMachine.Moment) -> [Effect] {
        var effects: [Effect] = []
        for action in actions {
            switch action {
            case .connect(let id):
                effects.append(.work(.connect(id)))
            case .reauthenticate(let id, let credentials):
                guard let connection = state.connections[id] else {
                    assertionFailure("re-authentication of connection \(id), which the client does not hold")
                    effects += self.translate(state.machine.connectionClosed(id, at: moment), state: &state, at: moment)
                    continue
                }
                effects.append(.work(.reauthenticate(id, connection, credentials)))
            case .closeConnection(let id):
                effects.append(.work(.close(id, state.connections[id])))
            case .healthCheck(let id):
                guard let connection = state.connections[id] else {
                    assertionFailure("health check of connection \(id), which the client does not hold")
                    effects += self.translate(state.machine.connectionClosed(id, at: moment), state: &state, at: moment)
                    continue
                }
                effects.append(.work(.healthCheck(id, connection)))
            case .restore(let id):
                guard let connection = state.connections[id] else {
                    assertionFailure("restoration of connection \(id), which the client does not hold")
                    effects += self.translate(state.machine.connectionClosed(id, at: moment), state: &state, at: moment)
                    continue
                }
                effects.append(.work(.restore(id, connection)))
            case .probe(let credentials):
                effects.append(.work(.probe(credentials)))
            case .grantLease(let leaseID, let id):
                let continuation = state.waiters.removeValue(forKey: leaseID)
                let shared = state.sharedWaiters.remove(leaseID) != nil
                let connection = state.connections[id]
                assert(continuation != nil && connection != nil, "lease \(leaseID) granted connection \(id), which the client does not hold")
                guard let continuation else { continue }
                guard let connection else {
                    effects.append(.resume(continuation, .failure(RedisError(code: .connectionClosed, message: "the pooled connection closed as it was leased"))))
                    continue
                }
                effects.append(.resume(continuation, .success(Lease(id: id, connection: connection, shared: shared))))
            case .failLease(let leaseID, let failure):
                state.sharedWaiters.remove(leaseID)
                guard let continuation = state.waiters.removeValue(forKey: leaseID) else {
                    assertionFailure("lease \(leaseID) failed, which has no waiter")
                    continue
                }
                switch failure {
                case .cancelled: effects.append(.resume(continuation, .failure(CancellationError())))
                case .error(let error): effects.append(.resume(continuation, .failure(error)))
                }
            case .event(let event):
                effects.append(.event(event))
            case .recordConnectionGauges(let versions, let generations, let sequence):
                effects.append(.recordConnectionGauges(versions: versions, generations: generations, sequence: sequence))
            case .recordExpiryGauges(let gauges):
                effects.append(.recordExpiryGauges(gauges))
            case .scheduleTimer(let deadline):
                state.timerGeneration += 1
                if let old = state.timer.take() { effects.append(.cancelScheduled(old)) }
                effects.append(.scheduleTimer(deadline, generation: state.timerGeneration))
            case .cancelTimer:
                state.timerGeneration += 1
                if let old = state.timer.take() { effects.append(.cancelScheduled(old)) }
            }
        }
        return effects
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
                if event.kind == .credentialDemoted {
                    self.logger.warning(
                        "current credentials rejected while the previous ones work: serving on the previous ones",
                        metadata: [LoggingKeys.credentialVersion: "\(event.credentialVersion ?? "")"]
                    )
                }
                self.logger.debug("rotation event", metadata: ["redis_event": "\(event)"])
                self.eventContinuation.yield(event)
                for observer in self.observers.withLock({ Array($0.all.values) }) { observer(event) }
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
            case .recordExpiryGauges(let gauges):
                for gauge in gauges { self.metrics.secondsUntilExpiry(item: gauge.name).record(gauge.seconds) }
            case .scheduleTimer(let deadline, let generation):
                let task = self.timerLoop.scheduleTask(deadline: deadline) {
                    self.decide { state, moment in state.machine.timerFired(at: moment) }
                }
                // The newest request wins even when an older one is performed after it.
                let obsolete = self.state.withLock { state -> Scheduled<Void>? in
                    guard state.timerGeneration == generation else { return task }
                    defer { state.timer = task }
                    return state.timer
                }
                obsolete?.cancel()
            }
        }
    }

    private func sourceReported(_ report: CredentialSourceReport) {
        switch report {
        case .credentials(let credentials):
            self.decide { state, moment in state.machine.sourceReported(credentials, at: moment) }
        case .rejected(let reason):
            self.logger.warning("credential source rejected", metadata: [LoggingKeys.error: "\(reason)"])
            self.decide { state, moment in state.machine.sourceRejected(reason: reason, at: moment) }
        }
    }

    private func tlsReported(_ report: TLSMaterialReport) {
        switch report {
        case .accepted(let context):
            self.decide { state, moment in
                state.tlsContext = context
                return state.machine.tlsMaterialAccepted(Self.material(of: context), at: moment)
            }
        case .rejected(let error):
            self.logger.warning("TLS material rejected", metadata: [LoggingKeys.error: "\(error)"])
            self.decide { state, moment in state.machine.tlsMaterialRejected(error, at: moment) }
        }
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
                self.decide { state, moment in state.machine.reauthenticated(id, credentials: credentials, at: moment) }
            } catch {
                self.logger.debug("re-authentication failed", metadata: [LoggingKeys.error: "\(error)"])
                let rejected = (error as? RedisError)?.code == .authenticationFailed
                self.decide { state, moment in
                    state.machine.reauthenticationFailed(id, credentials: credentials, rejected: rejected, at: moment)
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
            self.decide { state, moment in state.machine.connectionReleased(id, reusable: healthy, at: moment) }
        case .restore(let id, let connection):
            let restored = await connection.restore(timeout: self.configuration.commandTimeout)
            if !restored { self.logger.debug("restoring a connection failed: closing it", metadata: [LoggingKeys.connectionID: "\(connection.id)"]) }
            self.decide { state, moment in state.machine.connectionReleased(id, reusable: restored, at: moment) }
        }
    }

    private func connect(_ id: PoolStateMachine.ConnectionID) async {
        let tlsContext = self.state.withLock { $0.tlsContext }
        let started = ContinuousClock.now
        let opened: (connection: RedisConnection, credentials: RedisCredentials, rejected: [RedisCredentials])
        do {
            opened = try await self.openWithCandidates(tlsContext: tlsContext) { candidate in
                self.decide { state, moment in state.machine.connectAttemptRejected(id, credentials: candidate, at: moment) }
            }
        } catch {
            let failure = (error as? RedisError) ?? RedisError(code: .connectionFailed, message: "\(error)", underlying: error)
            self.logger.debug("connect failed", metadata: [LoggingKeys.error: "\(failure)"])
            self.decide { state, moment in state.machine.connectionFailed(id, error: failure, at: moment) }
            return
        }
        let connection = opened.connection
        self.metrics.handshake.recordNanoseconds(TimeAmount(ContinuousClock.now - started).nanoseconds)
        self.metrics.connects.increment()
        self.counters.connectionsOpened.add(1, ordering: .relaxed)
        var refused = false
        self.decide { state, moment in
            let establishment = state.machine.connectionEstablished(
                id,
                credentials: opened.credentials,
                rejected: opened.rejected,
                generation: connection.tlsInfo?.contextGeneration,
                peerCertificate: connection.tlsInfo?.peerCertificate,
                clientCertificate: tlsContext?.clientCertificateChain.first,
                at: moment
            )
            switch establishment {
            case .adopted(let actions):
                state.connections[id] = connection
                return actions
            case .refused:
                refused = true
                return []
            }
        }
        if refused {
            await connection.close()
        } else {
            self.perform([.work(.watch(id, connection))])
        }
    }

    private func connectionGone(_ id: PoolStateMachine.ConnectionID) {
        self.decide { state, moment in
            // Reported twice (the close and the watch both end): the machine ignores the second report.
            state.connections[id] = nil
            if state.connections.isEmpty, let drained = state.drained.take() { drained.finish() }
            return state.machine.connectionClosed(id, at: moment)
        }
    }

    private func probe(_ credentials: RedisCredentials) async {
        let result: CredentialStateMachine.ProbeResult
        do {
            let connection = try await self.connectionFactory(
                self.configuration.connectionConfiguration(
                    for: credentials,
                    tlsContext: self.state.withLock { $0.tlsContext },
                    suffix: "-probe"
                ),
                self.logger
            )
            await connection.close()
            result = .accepted
        } catch let error as RedisError where error.code == .authenticationFailed {
            result = .rejected
        } catch {
            result = .inconclusive
        }
        self.decide { state, moment in state.machine.probeCompleted(credentials, result: result, at: moment) }
    }
}

extension RedisClientConfiguration {
    /// The decision parameters of a client with this configuration.
    var machineConfiguration: ClientStateMachine.Configuration {
        var pool = PoolStateMachine.Configuration()
        pool.minimumConnections = self.pool.minimumConnections
        pool.maximumConnections = self.pool.maximumConnections
        pool.maximumConcurrentHandshakes = self.pool.maximumConcurrentHandshakes
        pool.idleTimeout = TimeAmount(self.pool.idleTimeout)
        pool.maximumConnectionAge = self.pool.maximumConnectionAge.map { TimeAmount($0) }
        pool.maximumAgeJitter = self.pool.maximumConnectionAgeJitter
        pool.healthCheckInterval = self.pool.healthCheckInterval.map { TimeAmount($0) }
        // A handshake past half its deadline while commands wait is most likely hung (the server accepted
        // and went silent); waiting the other half before the next attempt would only add to the outage.
        pool.handshakeHedgeDelay = max(TimeAmount(self.handshakeTimeout / 2), .milliseconds(100))
        pool.connectBackoff = Backoff(base: TimeAmount(self.pool.reconnectBackoffBase), cap: TimeAmount(self.pool.reconnectBackoffCap))
        pool.failsLeasesWhenUnreachable = self.failsLeasesWhenUnreachable
        pool.maximumSharedPerConnection = self.pool.maximumSharedCommandsPerConnection
        var credentials = CredentialStateMachine.Configuration()
        credentials.probeBackoff = Backoff(base: TimeAmount(self.rotation.probeBackoffBase), cap: TimeAmount(self.rotation.probeBackoffCap))
        credentials.maximumProbeAttempts = self.rotation.maximumProbeAttempts
        credentials.previousGracePeriod = TimeAmount(self.rotation.previousGracePeriod)
        return ClientStateMachine.Configuration(
            pool: pool,
            credentials: credentials,
            expiryThresholds: self.expiry.warningThresholds.map { TimeInterval(TimeAmount($0).nanoseconds) / 1e9 },
            tlsRolloverWindow: TimeAmount(self.tls?.rolloverWindow ?? .seconds(60)),
            replaceBeforeCertificateExpiry: TimeInterval(TimeAmount(self.expiry.replaceConnectionsBeforeCertificateExpiry).nanoseconds) / 1e9
        )
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

/// Returns once the task is cancelled or a graceful shutdown begins: how a service's `run()` learns
/// that it must stop. True for a graceful shutdown (while the task is not cancelled). `request`, when
/// given, is a second way to ask for a graceful shutdown: the owner of a client that runs in a task of
/// its own (the cluster client's node pools) asks through it.
@discardableResult
func waitForShutdownSignal(or request: GracefulStopRequest? = nil) async -> Bool {
    // The graceful handler says so through the stream; cancellation just ends it.
    let (stream, continuation) = AsyncStream<Bool>.makeStream()
    request?.register(continuation)
    return await withGracefulShutdownHandler {
        await withTaskCancellationHandler {
            var graceful = false
            for await signal in stream {
                graceful = signal
                break
            }
            return graceful && !Task.isCancelled
        } onCancel: {
            continuation.finish()
        }
    } onGracefulShutdown: {
        continuation.yield(true)
        continuation.finish()
    }
}

/// A graceful shutdown asked for by the code that runs a client, as a `ServiceGroup` asks for one
/// through the task: commands already sent get their replies first (see ``RedisClient/run()``).
final class GracefulStopRequest: Sendable {
    private struct State {
        var requested = false
        var continuation: AsyncStream<Bool>.Continuation?
    }

    private let state = Mutex(State())

    /// Asks for the graceful shutdown, now or as soon as the client waits for one.
    func request() {
        let waiting = self.state.withLock { state -> AsyncStream<Bool>.Continuation? in
            state.requested = true
            defer { state.continuation = nil }
            return state.continuation
        }
        waiting?.yield(true)
        waiting?.finish()
    }

    fileprivate func register(_ continuation: AsyncStream<Bool>.Continuation) {
        let requested = self.state.withLock { state -> Bool in
            if !state.requested { state.continuation = continuation }
            return state.requested
        }
        if requested {
            continuation.yield(true)
            continuation.finish()
        }
    }
}
