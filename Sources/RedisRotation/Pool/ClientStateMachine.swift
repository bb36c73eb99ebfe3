#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import NIOCore

/// Every decision `RedisClient` makes, in one value: the pool, the credentials, the lease requests,
/// the TLS generation, the expiry monitor and the one timer. Events go in, one list of actions comes
/// out; nothing here does I/O, reads a clock or draws a random number (each event brings its
/// ``Moment``).
///
/// The client calls it under one lock and translates the actions (continuations, connection objects,
/// the scheduled timer) under the same lock, then performs them after releasing it: no decision can
/// interleave with another's effects.
///
/// Invariants the shell relies on:
/// - `grantLease(lease, connection)` names a lease that ``leaseWaiting(_:deadline:at:)`` installed and
///   that was neither granted, failed nor cancelled since, and a connection that was established
///   (``connectionEstablished(_:credentials:rejected:generation:peerCertificate:clientCertificate:at:)``)
///   and has not been reported closed (``connectionClosed(_:at:)``). Every lease request ends with
///   exactly one `grantLease` or `failLease`, or its cancellation.
/// - `reauthenticate`, `healthCheck`, `restore` and `closeConnection` name established connections;
///   `closeConnection` a connection at most once.
/// - At most one timer: each `scheduleTimer` replaces the previous one; a timer that fires late or
///   was replaced does no harm (only what is due at the moment given runs).
struct ClientStateMachine {
    typealias ConnectionID = PoolStateMachine.ConnectionID
    typealias LeaseID = PoolStateMachine.LeaseID

    /// The time of an event and a random draw for jitter, supplied by the caller. Events the machine
    /// emits carry its wall-clock time.
    struct Moment: Hashable {
        /// The monotonic clock, for deadlines and timers.
        var now: NIODeadline
        /// The wall clock, for expiry dates.
        var date: Date
        /// Uniform in `0..<1`.
        var random: Double
    }

    struct Configuration: Hashable {
        var pool = PoolStateMachine.Configuration()
        var credentials = CredentialStateMachine.Configuration()
        /// Expiry warnings, as seconds before the expiry.
        var expiryThresholds: [TimeInterval] = [30 * 86400, 7 * 86400, 86400]
        /// Over how long connections of an older TLS generation are replaced.
        var tlsRolloverWindow: TimeAmount = .seconds(60)
        /// How long before its client or server certificate expires a connection is replaced.
        var replaceBeforeCertificateExpiry: TimeInterval = 3600
    }

    /// The TLS material of a context generation, as far as decisions need it.
    struct TLSMaterial: Hashable {
        var generation: UInt64
        var trustAnchors: [RedisCertificate]
        var clientCertificate: RedisCertificate?
    }

    /// Why a lease request ends without a connection.
    enum LeaseFailure: Hashable {
        /// The requesting task was cancelled.
        case cancelled
        case error(RedisError)
    }

    /// What a lease left on its connection, as the connection tells it.
    enum LeaseOutcome: Hashable {
        /// Clean: back to the pool.
        case clean
        /// Something to undo first (owed replies, a transaction, the database, the name).
        case needsRestore
        /// Closed, or left in a state that cannot be undone.
        case unusable
    }

    struct ExpiryGauge: Hashable {
        var name: String
        var seconds: Double
    }

    enum Action: Hashable {
        /// Open connection `id` (trying ``candidates`` in order).
        case connect(ConnectionID)
        /// Switch connection `id` to `credentials` in place.
        case reauthenticate(ConnectionID, RedisCredentials)
        case closeConnection(ConnectionID)
        /// PING the idle connection, then report ``connectionReleased(_:reusable:at:)``.
        case healthCheck(ConnectionID)
        /// Undo what the last lease left, then report ``connectionReleased(_:reusable:at:)``.
        case restore(ConnectionID)
        /// Try `credentials` on a connection of its own, then report ``probeCompleted(_:result:at:)``.
        case probe(RedisCredentials)
        case grantLease(LeaseID, ConnectionID)
        case failLease(LeaseID, LeaseFailure)
        case event(RedisRotationEvent)
        /// Connection counts for the gauges, numbered in decision order: an older snapshot recorded after
        /// a newer one is dropped.
        case recordConnectionGauges(versions: [String: Int], generations: [UInt64: Int], sequence: UInt64)
        case recordExpiryGauges([ExpiryGauge])
        /// Replace the timer with one at this deadline; when it fires, call ``timerFired(at:)``.
        case scheduleTimer(NIODeadline)
        case cancelTimer
    }

    /// What becomes of a connection whose handshake succeeded.
    enum Establishment: Hashable {
        /// The pool adopted it.
        case adopted([Action])
        /// The client stopped while it was opening: close it, it was never the pool's.
        case refused
    }

    private enum RunState: Hashable { case notStarted, running, stopped }

    /// Where a lease request stands: `registered` → `waiting` or `cancelledEarly`; `cancelledEarly` →
    /// gone (failed when its waiter arrives); `waiting` → gone (granted, failed or cancelled).
    private enum LeaseRequest: Hashable {
        /// The ID exists; its waiter is not installed yet.
        case registered
        /// Cancelled before its waiter was installed.
        case cancelledEarly
        /// Waiting for the pool, which knows its deadline too (to requeue it if its connection vanishes).
        case waiting(deadline: NIODeadline)
    }

    /// The deadlines the one timer serves.
    private enum TimerKind: Hashable, CaseIterable { case pool, credentials, expiry }

    let configuration: Configuration
    private(set) var pool: PoolStateMachine
    private(set) var credentials: CredentialStateMachine
    private var expiry: ExpiryMonitor
    private var runState = RunState.notStarted
    private var leaseRequests: [LeaseID: LeaseRequest] = [:]
    private var nextLeaseID: LeaseID = 0
    /// Established and not yet reported closed.
    private var established: Set<ConnectionID> = []
    /// Connections the pool decided to close (retired, failed, unusable), as opposed to the server.
    private var closingByPool: Set<ConnectionID> = []
    private var lastConnectError: RedisError?
    /// Connections the pool wants opened before the source delivered any credentials (a provider still
    /// fetching): opened when the first credentials arrive, so that early commands wait for them.
    private var connectsAwaitingCredentials: [ConnectionID] = []
    /// The TLS generation new connections use, and whether older ones are still being replaced.
    private(set) var tlsGeneration: UInt64?
    private var rolling = false
    private var timers: [TimerKind: NIODeadline] = [:]
    private var scheduledTimer: NIODeadline?
    private var recordedVersionCounts: [String: Int] = [:]
    private var recordedGenerationCounts: [UInt64: Int] = [:]
    private var gaugeSequence: UInt64 = 0

    init(configuration: Configuration, tls: TLSMaterial?) {
        self.configuration = configuration
        self.pool = PoolStateMachine(configuration: configuration.pool)
        self.credentials = CredentialStateMachine(configuration: configuration.credentials)
        self.expiry = ExpiryMonitor(thresholds: configuration.expiryThresholds)
        self.tlsGeneration = tls?.generation
        if let tls { self.watchExpiry(of: tls) }
    }

    // MARK: Queries

    var hasStarted: Bool { self.runState != .notStarted }

    /// Lease requests not yet granted, failed or cancelled (tests: nothing may stay behind).
    var leaseRequestCount: Int { self.leaseRequests.count }

    /// The credential an opening connection tries next, after the server rejected `rejected`: the
    /// candidates are read afresh at every attempt, so that one that became a candidate during the
    /// handshake (a new pending password) is tried before the attempt reports every candidate rejected.
    func nextCandidate(after rejected: [RedisCredentials]) -> RedisCredentials? {
        self.credentials.candidates.first { candidate in !rejected.contains { $0.authenticatesLike(candidate) } }
    }

    // MARK: Life cycle

    /// `run()` began: evaluate the expiry monitor (and schedule its next check).
    mutating func start(at moment: Moment) -> [Action] {
        guard self.runState == .notStarted else { return [] }
        self.runState = .running
        return self.withTimer(self.expiryActions(at: moment))
    }

    /// Stop: fail every waiting lease, close idle connections (leased and opening ones close when they
    /// come back), cancel the timer. Later lease requests fail with `clientShutdown`.
    mutating func shutdown(at moment: Moment) -> [Action] {
        guard self.runState != .stopped else { return [] }
        self.runState = .stopped
        self.timers.removeAll()
        self.scheduledTimer = nil
        return [.cancelTimer] + self.handle(self.pool.shutdown(), at: moment)
    }

    // MARK: Credentials and TLS material

    /// The credential source delivered `credentials` (the first ones, or a change).
    mutating func sourceReported(_ credentials: RedisCredentials, at moment: Moment) -> [Action] {
        let first = self.credentials.current == nil
        var actions = self.handle(self.credentials.sourceReported(credentials, now: moment.now), at: moment)
        if first {
            for id in self.connectsAwaitingCredentials { self.pool.connectStarted(id, now: moment.now) }
            actions += self.connectsAwaitingCredentials.map { .connect($0) }
            self.connectsAwaitingCredentials.removeAll()
            actions += self.handle(self.pool.targetVersionChanged(credentials.version, now: moment.now), at: moment)
            if credentials.expiresAt != nil {
                self.watchExpiry(of: credentials)
                actions += self.expiryActions(at: moment)
            }
        }
        return self.withTimer(actions)
    }

    /// The credential source could not deliver (an empty file, a provider error); nothing changes.
    func sourceRejected(reason: String, at moment: Moment) -> [Action] {
        [.event(RedisRotationEvent(kind: .credentialSourceRejected, date: moment.date, detail: reason))]
    }

    /// A reload, or an application's request: probe a pending credential again at once.
    mutating func retryNow(at moment: Moment) -> [Action] {
        self.withTimer(self.handle(self.credentials.retryNow(), at: moment))
    }

    /// A probe of `credentials` finished.
    mutating func probeCompleted(_ credentials: RedisCredentials, result: CredentialStateMachine.ProbeResult, at moment: Moment) -> [Action] {
        var actions: [Action] = []
        if result == .accepted {
            actions.append(.event(RedisRotationEvent(kind: .probeSucceeded, date: moment.date, credentialVersion: credentials.version)))
        }
        actions += self.handle(
            self.credentials.probeCompleted(credentials, result: result, now: moment.now, random: moment.random),
            at: moment
        )
        return self.withTimer(actions)
    }

    /// New TLS material passed validation: new connections use its generation, older ones are replaced
    /// over the rollover window.
    mutating func tlsMaterialAccepted(_ material: TLSMaterial, at moment: Moment) -> [Action] {
        self.tlsGeneration = material.generation
        self.rolling = true
        self.watchExpiry(of: material)
        let leaf = material.clientCertificate.map { ", client certificate \($0.subject) valid until \($0.notAfter)" } ?? ""
        var actions: [Action] = [
            .event(
                RedisRotationEvent(
                    kind: .tlsMaterialReloaded,
                    date: moment.date,
                    detail: "TLS generation \(material.generation), \(material.trustAnchors.count) trust anchors\(leaf)"
                )
            )
        ]
        actions += self.handle(
            self.pool.tlsGenerationChanged(material.generation, window: self.configuration.tlsRolloverWindow, now: moment.now, random: moment.random),
            at: moment
        )
        actions += self.expiryActions(at: moment)
        return self.withTimer(actions)
    }

    /// New TLS material was refused (unreadable, mismatched key, expired); the old stays in use.
    func tlsMaterialRejected(_ error: RedisError, at moment: Moment) -> [Action] {
        [.event(RedisRotationEvent(kind: .tlsMaterialRejected, date: moment.date, detail: "\(error.code): \(error.message)"))]
    }

    // MARK: Leases

    /// Hands out the ID of a new lease request; ``leaseWaiting(_:deadline:at:)`` or
    /// ``leaseCancelled(_:at:)`` follows.
    mutating func registerLease() -> LeaseID {
        self.nextLeaseID += 1
        self.leaseRequests[self.nextLeaseID] = .registered
        return self.nextLeaseID
    }

    /// The lease's waiter is installed: it waits for a connection until `deadline`.
    mutating func leaseWaiting(_ id: LeaseID, deadline: NIODeadline, shared: Bool = false, at moment: Moment) -> [Action] {
        switch self.leaseRequests[id] {
        case .cancelledEarly:
            self.leaseRequests[id] = nil
            return [.failLease(id, .cancelled)]
        case .registered:
            self.leaseRequests[id] = .waiting(deadline: deadline)
            return self.withTimer(self.handle(self.pool.leaseRequested(id, deadline: deadline, shared: shared, now: moment.now), at: moment))
        case .waiting, nil:
            return []
        }
    }

    /// A shared use of a connection with room, without waiting and without a decision (see
    /// ``PoolStateMachine/sharedUseRequested(spread:)``); `nil` when the request must wait: ``registerLease()``
    /// and ``leaseWaiting(_:deadline:shared:at:)`` with `shared`.
    mutating func sharedUseRequested(spread: Bool = false, isHeldBack: (ConnectionID) -> Bool = { _ in false }) -> ConnectionID? {
        guard self.runState == .running else { return nil }
        return self.pool.sharedUseRequested(spread: spread, isHeldBack: isHeldBack)
    }

    /// The fast form of ``sharedUseEnded(_:needsRestore:at:)`` for a user that owes nothing (see
    /// ``PoolStateMachine/sharedUseEndedWithoutDecision(_:)``): true when only the count changed.
    mutating func sharedUseEndedWithoutDecision(_ id: ConnectionID) -> Bool {
        self.pool.sharedUseEndedWithoutDecision(id)
    }

    /// A shared user of connection `id` is done; `needsRestore` when it left a reply owed.
    mutating func sharedUseEnded(_ id: ConnectionID, needsRestore: Bool, at moment: Moment) -> [Action] {
        let actions = self.pool.sharedUseEnded(id, needsRestore: needsRestore, now: moment.now)
        // No action: only counts and idleness changed, not what the gauges show nor any deadline.
        guard !actions.isEmpty else { return [] }
        return self.withTimer(self.handle(actions, at: moment))
    }

    /// The requesting task was cancelled.
    mutating func leaseCancelled(_ id: LeaseID, at moment: Moment) -> [Action] {
        switch self.leaseRequests[id] {
        case .registered:
            self.leaseRequests[id] = .cancelledEarly
            return []
        case .waiting:
            self.leaseRequests[id] = nil
            return self.withTimer([.failLease(id, .cancelled)] + self.handle(self.pool.leaseCancelled(id, now: moment.now), at: moment))
        case .cancelledEarly, nil:
            return []  // Granted or failed already: the lease's user sees the cancellation next.
        }
    }

    /// A lease ended; `outcome` is what it left on the connection.
    mutating func leaseEnded(_ id: ConnectionID, outcome: LeaseOutcome, at moment: Moment) -> [Action] {
        switch outcome {
        case .clean:
            return self.connectionReleased(id, reusable: true, at: moment)
        case .unusable:
            return self.connectionReleased(id, reusable: false, at: moment)
        case .needsRestore:
            guard self.established.contains(id) else { return self.connectionReleased(id, reusable: false, at: moment) }
            return [.restore(id)]
        }
    }

    /// A connection came back from a lease, a restoration or a health check.
    mutating func connectionReleased(_ id: ConnectionID, reusable: Bool, at moment: Moment) -> [Action] {
        self.withTimer(self.handle(self.pool.connectionReleased(id, reusable: reusable, now: moment.now), at: moment))
    }

    // MARK: Connections

    /// The server rejected `credentials` (`WRONGPASS`) while connection `id` was opening; it tries the
    /// next candidate.
    func connectAttemptRejected(_ id: ConnectionID, credentials: RedisCredentials, at moment: Moment) -> [Action] {
        [.event(RedisRotationEvent(kind: .credentialRejected, date: moment.date, credentialVersion: credentials.version, detail: "WRONGPASS when opening connection \(id)"))]
    }

    /// Connection `id` authenticated with `credentials` after the server rejected `rejected` in the
    /// same handshake.
    ///
    /// - Parameters:
    ///   - generation: The TLS context generation it was made with.
    ///   - peerCertificate: The server's certificate, with TLS.
    ///   - clientCertificate: The client certificate it presented, with mutual TLS.
    mutating func connectionEstablished(
        _ id: ConnectionID,
        credentials: RedisCredentials,
        rejected: [RedisCredentials],
        generation: UInt64?,
        peerCertificate: RedisCertificate?,
        clientCertificate: RedisCertificate?,
        at moment: Moment
    ) -> Establishment {
        guard self.runState == .running else { return .refused }
        self.established.insert(id)
        guard self.pool.slots[id]?.state == .connecting else {
            // Not a handshake the pool is waiting for (it never is, today): close it rather than leak it.
            self.closingByPool.insert(id)
            return .adopted([.closeConnection(id)])
        }
        self.lastConnectError = nil
        var actions = self.handle(
            self.credentials.connectionAuthenticated(with: credentials, rejected: rejected, now: moment.now, random: moment.random),
            at: moment
        )
        actions += self.handle(
            self.pool.connectionEstablished(
                id,
                version: credentials.version,
                generation: generation,
                replaceBy: self.replacementDeadline(certificates: [clientCertificate, peerCertificate].compactMap { $0 }, at: moment),
                now: moment.now,
                random: moment.random
            ),
            at: moment
        )
        if let peerCertificate {
            // One group for the server: a certificate replaced by one with another subject stops being
            // watched (and warned about) instead of staying forever.
            self.expiry.setItems(
                [.init(name: "server certificate \(peerCertificate.subject)", expiresAt: peerCertificate.notAfter)],
                group: "server certificate"
            )
            actions += self.expiryActions(at: moment)
        }
        return .adopted(self.withTimer(actions))
    }

    /// Opening connection `id` failed with `error` (every candidate rejected, or no connection at all).
    mutating func connectionFailed(_ id: ConnectionID, error: RedisError, at moment: Moment) -> [Action] {
        self.lastConnectError = error
        return self.withTimer(self.handle(self.pool.connectionFailed(id, error: error, now: moment.now, random: moment.random), at: moment))
    }

    /// Connection `id` is closed, whoever closed it (reported twice, by the close and by the watch:
    /// the second report changes nothing).
    mutating func connectionClosed(_ id: ConnectionID, at moment: Moment) -> [Action] {
        let wasOpen = self.established.remove(id) != nil
        let reason = self.closingByPool.remove(id) != nil ? "closed by the pool" : "closed by the server or the network"
        var actions = self.handle(self.pool.connectionClosed(id, now: moment.now), at: moment)
        if self.runState == .running && wasOpen {
            actions.append(.event(RedisRotationEvent(kind: .connectionReplaced, date: moment.date, connectionID: id, detail: reason)))
        }
        return self.withTimer(actions)
    }

    /// Connection `id` switched to `credentials` in place.
    mutating func reauthenticated(_ id: ConnectionID, credentials: RedisCredentials, at moment: Moment) -> [Action] {
        var actions: [Action] = [
            .event(RedisRotationEvent(kind: .connectionReauthenticated, date: moment.date, credentialVersion: credentials.version, connectionID: id))
        ]
        actions += self.handle(self.pool.reauthenticated(id, version: credentials.version, now: moment.now), at: moment)
        return self.withTimer(actions)
    }

    /// Switching connection `id` to `credentials` failed: `rejected` when the server said `WRONGPASS`
    /// (the connection keeps its old identity), else the connection is in an unknown state.
    mutating func reauthenticationFailed(_ id: ConnectionID, credentials: RedisCredentials, rejected: Bool, at moment: Moment) -> [Action] {
        var actions: [Action] = []
        var demoted = false
        if rejected {
            actions.append(
                .event(RedisRotationEvent(kind: .credentialRejected, date: moment.date, credentialVersion: credentials.version, detail: "WRONGPASS when re-authenticating connection \(id)"))
            )
            // The connection is still authenticated as before; if that is the previous version, the
            // rejected one is demoted and the connection serves on.
            let demotion = self.credentials.reauthenticationRejected(
                credentials,
                keptVersion: self.pool.slots[id]?.version,
                now: moment.now,
                random: moment.random
            )
            actions += self.handle(demotion, at: moment)
            // Whoever demoted (this rejection or one just before it), a connection already on the working
            // version serves on.
            demoted = self.pool.slots[id]?.version == self.pool.targetVersion
        }
        actions += self.handle(
            self.pool.reauthenticationFailed(id, keepConnection: demoted, now: moment.now, random: moment.random),
            at: moment
        )
        return self.withTimer(actions)
    }

    // MARK: Timer

    /// The timer fired: whatever is due at `moment` runs (nothing, when the timer was late or replaced).
    mutating func timerFired(at moment: Moment) -> [Action] {
        guard self.runState == .running else {
            guard self.runState == .notStarted else { return [] }
            // Before `run()`: forget the timer, so that `start` asks for the deadlines again. Only the
            // pool's deadlines count meanwhile (a lease's, see `withTimer`): a command sent to a client
            // nobody runs fails at its lease deadline, saying so, instead of waiting for ever.
            self.scheduledTimer = nil
            guard let deadline = self.timers[.pool], deadline <= moment.now else { return self.withTimer([]) }
            self.timers[.pool] = nil
            return self.withTimer(self.handle(self.pool.timerFired(now: moment.now), at: moment))
        }
        self.scheduledTimer = nil
        var actions: [Action] = []
        for kind in TimerKind.allCases {
            guard let deadline = self.timers[kind], deadline <= moment.now else { continue }
            self.timers[kind] = nil
            switch kind {
            case .pool: actions += self.handle(self.pool.timerFired(now: moment.now), at: moment)
            case .credentials: actions += self.handle(self.credentials.timerFired(now: moment.now), at: moment)
            case .expiry: actions += self.expiryActions(at: moment)
            }
        }
        return self.withTimer(actions)
    }

    // MARK: Translating the parts' decisions

    private mutating func handle(_ actions: [PoolStateMachine.Action], at moment: Moment) -> [Action] {
        var result: [Action] = []
        for action in actions {
            switch action {
            case .createConnection(let id):
                if self.credentials.current == nil {
                    self.pool.connectDeferred(id)
                    self.connectsAwaitingCredentials.append(id)
                } else {
                    result.append(.connect(id))
                }
            case .lease(let id, let leaseID):
                guard case .waiting(let deadline) = self.leaseRequests[leaseID] else {
                    // The waiter left; give the connection back.
                    result += self.handle(self.pool.connectionReleased(id, reusable: true, now: moment.now), at: moment)
                    continue
                }
                guard self.established.contains(id) else {
                    // The pool still had a connection that is gone: drop it; the waiter waits on.
                    result += self.handle(self.pool.connectionReleased(id, reusable: false, now: moment.now), at: moment)
                    result += self.handle(self.pool.leaseRequested(leaseID, deadline: deadline, now: moment.now), at: moment)
                    continue
                }
                self.leaseRequests[leaseID] = nil
                result.append(.grantLease(leaseID, id))
            case .share(let id, let leaseID):
                guard case .waiting(let deadline) = self.leaseRequests[leaseID] else {
                    // The waiter left; give the place back.
                    result += self.handle(self.pool.sharedUseEnded(id, needsRestore: false, now: moment.now), at: moment)
                    continue
                }
                guard self.established.contains(id) else {
                    // The pool still had a connection that is gone: forget it; the waiter waits on.
                    result += self.handle(self.pool.connectionClosed(id, now: moment.now), at: moment)
                    result += self.handle(self.pool.leaseRequested(leaseID, deadline: deadline, shared: true, now: moment.now), at: moment)
                    continue
                }
                self.leaseRequests[leaseID] = nil
                result.append(.grantLease(leaseID, id))
            case .restore(let id):
                if self.established.contains(id) {
                    result.append(.restore(id))
                } else {
                    result += self.handle(self.pool.connectionReleased(id, reusable: false, now: moment.now), at: moment)
                }
            case .failLease(let leaseID, var error):
                guard case .waiting = self.leaseRequests.removeValue(forKey: leaseID) else { continue }
                if error.code == .leaseTimeout, self.runState == .notStarted {
                    error.message += "; the client is not running: call RedisClient.run() (in a task or a ServiceGroup) to send commands"
                } else if error.code == .leaseTimeout, let cause = self.lastConnectError {
                    error.message += "; the last connection attempt failed: \(cause.message)"
                    error.underlying = cause
                }
                result.append(.failLease(leaseID, .error(error)))
            case .reauthenticate(let id):
                guard self.established.contains(id), let credentials = self.credentials.current else {
                    result += self.handle(self.pool.reauthenticationFailed(id, now: moment.now, random: moment.random), at: moment)
                    continue
                }
                result.append(.reauthenticate(id, credentials))
            case .closeConnection(let id):
                if self.closingByPool.insert(id).inserted { result.append(.closeConnection(id)) }
            case .healthCheck(let id):
                if self.established.contains(id) {
                    result.append(.healthCheck(id))
                } else {
                    result += self.handle(self.pool.connectionReleased(id, reusable: false, now: moment.now), at: moment)
                }
            case .scheduleTimer(let deadline):
                self.timers[.pool] = deadline
            }
        }
        result += self.gaugeUpdates()
        if self.rolling, let target = self.tlsGeneration, self.pool.connectionsByGeneration.keys.allSatisfy({ $0 == target }) {
            self.rolling = false
            result.append(.event(RedisRotationEvent(kind: .tlsGenerationRolled, date: moment.date, detail: "every connection uses TLS generation \(target)")))
        }
        return result
    }

    private mutating func handle(_ actions: [CredentialStateMachine.Action], at moment: Moment) -> [Action] {
        var result: [Action] = []
        for action in actions {
            switch action {
            case .startProbe(let credentials):
                // A stopped client opens no connection (the source may report while it shuts down).
                if self.runState == .running { result.append(.probe(credentials)) }
            case .pendingChanged(let credentials):
                result.append(.event(RedisRotationEvent(kind: .credentialSourceChanged, date: moment.date, credentialVersion: credentials.version)))
                result += self.handle(self.pool.candidatesChanged(now: moment.now), at: moment)
            case .promoted(let old, let new):
                self.watchExpiry(of: new)
                result += self.expiryActions(at: moment)
                result.append(.event(RedisRotationEvent(kind: .promoted, date: moment.date, credentialVersion: new.version, detail: "previous version: \(old?.version ?? "none")")))
                result += self.handle(self.pool.targetVersionChanged(new.version, now: moment.now), at: moment)
            case .probeFailed(let credentials, let rejected, let retryAt):
                let when = retryAt.map { "retrying in \(($0 - moment.now).nanoseconds / 1_000_000) ms" } ?? "giving up until the source changes or a reload"
                let why = rejected ? "the server rejected the credentials (WRONGPASS)" : "the probe could not connect"
                result.append(.event(RedisRotationEvent(kind: .probeFailed, date: moment.date, credentialVersion: credentials.version, detail: "\(why); \(when)")))
            case .demoted(let rejected, let working):
                result.append(
                    .event(
                        RedisRotationEvent(
                            kind: .credentialDemoted,
                            date: moment.date,
                            credentialVersion: rejected.version,
                            detail: "the server rejected \(rejected.version) while \(working.version) works: serving on \(working.version), probing \(rejected.version) again with backoff"
                        )
                    )
                )
                self.watchExpiry(of: working)
                result += self.expiryActions(at: moment)
                result += self.handle(self.pool.targetVersionChanged(working.version, now: moment.now), at: moment)
            case .previousDiscarded(let credentials):
                result.append(.event(RedisRotationEvent(kind: .previousCredentialDiscarded, date: moment.date, credentialVersion: credentials.version)))
            case .scheduleTimer(let deadline):
                self.timers[.credentials] = deadline
            }
        }
        return result
    }

    /// Appends the timer change, when the earliest deadline differs from the one scheduled.
    private mutating func withTimer(_ actions: [Action]) -> [Action] {
        guard self.runState != .stopped else { return actions }
        // Before `run()` only the pool's deadlines are kept (see `timerFired`); `start` asks for the rest.
        let earliest = self.runState == .notStarted ? self.timers[.pool] : self.timers.values.min()
        guard earliest != self.scheduledTimer else { return actions }
        self.scheduledTimer = earliest
        return actions + [earliest.map { .scheduleTimer($0) } ?? .cancelTimer]
    }

    /// The connection gauges to record, when the counts changed since the last time. Only what is in
    /// use is kept, so that a process that rotates for months does not grow; the recording sets a
    /// version or generation that left to 0 once.
    private mutating func gaugeUpdates() -> [Action] {
        let versions = self.pool.connectionsByVersion
        let generations = self.pool.connectionsByGeneration
        guard versions != self.recordedVersionCounts || generations != self.recordedGenerationCounts else { return [] }
        self.recordedVersionCounts = versions
        self.recordedGenerationCounts = generations
        self.gaugeSequence += 1
        return [.recordConnectionGauges(versions: versions, generations: generations, sequence: self.gaugeSequence)]
    }

    // MARK: Expiry

    private mutating func watchExpiry(of material: TLSMaterial) {
        self.expiry.setItems(
            material.clientCertificate.map { [.init(name: "client certificate \($0.subject)", expiresAt: $0.notAfter)] } ?? [],
            group: "client certificate"
        )
        self.expiry.setItems(
            material.trustAnchors.map { .init(name: "trust anchor \($0.subject)", expiresAt: $0.notAfter) },
            group: "trust anchor"
        )
    }

    private mutating func watchExpiry(of credentials: RedisCredentials) {
        self.expiry.setItems(
            credentials.expiresAt.map { [.init(name: "credential \(credentials.username) version \(credentials.version)", expiresAt: $0)] } ?? [],
            group: "credential"
        )
    }

    /// Warnings due now, the gauges of time left, and the next check (at most an hour away).
    private mutating func expiryActions(at moment: Moment) -> [Action] {
        guard self.runState == .running else { return [] }
        let (warnings, next) = self.expiry.evaluate(at: moment.date)
        var actions: [Action] = [
            .recordExpiryGauges(self.expiry.remaining(at: moment.date).map { ExpiryGauge(name: $0.item.name, seconds: $0.seconds) })
        ]
        actions += warnings.map { warning in
            let days = (warning.remaining / 86400 * 10).rounded() / 10
            let detail = warning.remaining <= 0
                ? "\(warning.item.name) expired at \(warning.item.expiresAt)"
                : "\(warning.item.name) expires at \(warning.item.expiresAt), in \(days) days"
            return .event(RedisRotationEvent(kind: .expiryWarning, date: moment.date, detail: detail))
        }
        let wait = min(next.map { max(0, $0.timeIntervalSince(moment.date)) } ?? 3600, 3600)
        self.timers[.expiry] = moment.now + .nanoseconds(Int64(wait * 1e9) + 1_000_000)
        return actions
    }

    /// When a connection must be replaced at the latest: shortly before its client certificate or the
    /// server's certificate expires.
    private func replacementDeadline(certificates: [RedisCertificate], at moment: Moment) -> NIODeadline? {
        guard let earliest = certificates.map(\.notAfter).min() else { return nil }
        let seconds = earliest.timeIntervalSince(moment.date) - self.configuration.replaceBeforeCertificateExpiry
        // Already within the margin: a replacement would get the same certificates (until a reload or a
        // server change brings new ones), so replacing now would only loop. The expiry warning says so.
        guard seconds > 0 else { return nil }
        return moment.now + .nanoseconds(Int64(min(seconds, 10 * 365 * 86400) * 1e9))
    }
}

/// SplitMix64: a small, fast generator for jitter (not for secrets).
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { self.state = seed }

    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
