import Foundation
import NIOCore
import Testing

@testable import RedisRotation

/// The client's decisions without a server, a clock or threads. Every event's action list is asserted
/// whole (`RedisError` compares by code). The last test drives the machine with seeded random event
/// sequences against a model of the shell and checks, after every step, the invariants the shell
/// relies on: no lease granted twice or to a connection that is gone, none ended twice, none left
/// waiting past its deadline.
@Suite("Client state machine")
struct ClientStateMachineTests {
    typealias Machine = ClientStateMachine
    typealias Action = ClientStateMachine.Action

    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    let d0 = Date(timeIntervalSince1970: 1_800_000_000)
    let v1 = RedisCredentials(username: "u", password: "one", version: "v1")
    let v2 = RedisCredentials(username: "u", password: "two", version: "v2")
    /// The first expiry check (nothing to watch yet): an hour away, plus a millisecond.
    var expiryCheck: NIODeadline { self.t0 + .seconds(3600) + .milliseconds(1) }

    func at(_ offset: TimeAmount = .zero, random: Double = 0) -> Machine.Moment {
        .init(now: self.t0 + offset, date: self.d0.addingTimeInterval(Double(offset.nanoseconds) / 1e9), random: random)
    }

    /// An event of the machine at `offset` from the start.
    func event(_ kind: RedisRotationEvent.Kind, _ offset: TimeAmount = .zero, version: String? = nil, connection: Int? = nil, detail: String = "") -> Action {
        .event(RedisRotationEvent(kind: kind, date: self.at(offset).date, credentialVersion: version, connectionID: connection, detail: detail))
    }

    /// A running machine with v1 current: at most `maximum` connections, none kept open when idle,
    /// a one-second hedge off, connect backoff from 100 ms.
    func machine(maximum: Int = 2, sourceLocation: SourceLocation = #_sourceLocation) -> Machine {
        var configuration = Machine.Configuration()
        configuration.pool.minimumConnections = 0
        configuration.pool.maximumConnections = maximum
        configuration.pool.maximumConcurrentHandshakes = maximum
        configuration.pool.maximumConnectionAge = nil
        configuration.pool.healthCheckInterval = nil
        configuration.pool.handshakeHedgeDelay = nil
        configuration.pool.connectBackoff = Backoff(base: .milliseconds(100), cap: .seconds(2))
        configuration.credentials.probeBackoff = Backoff(base: .milliseconds(100), cap: .seconds(1))
        configuration.credentials.maximumProbeAttempts = 3
        configuration.credentials.previousGracePeriod = .seconds(60)
        var machine = Machine(configuration: configuration, tls: nil)
        #expect(machine.start(at: self.at()) == [.recordExpiryGauges([]), .scheduleTimer(self.expiryCheck)], sourceLocation: sourceLocation)
        #expect(machine.sourceReported(self.v1, at: self.at()) == [], sourceLocation: sourceLocation)
        return machine
    }

    /// Establishes connection `id` on `credentials`; returns the adopted actions.
    func establish(_ machine: inout Machine, _ id: Int, _ credentials: RedisCredentials? = nil, rejected: [RedisCredentials] = [], at moment: Machine.Moment? = nil) -> [Action] {
        switch machine.connectionEstablished(
            id,
            credentials: credentials ?? self.v1,
            rejected: rejected,
            generation: nil,
            peerCertificate: nil,
            clientCertificate: nil,
            at: moment ?? self.at()
        ) {
        case .adopted(let actions): return actions
        case .refused: Issue.record("connection \(id) refused"); return []
        }
    }

    @Test("a lease opens a connection, is granted it when it is established, and the connection idles after the lease")
    func leaseLifecycle() {
        var machine = self.machine()
        let lease = machine.registerLease()
        #expect(machine.leaseWaiting(lease, deadline: self.t0 + .seconds(5), at: self.at()) == [.connect(0), .scheduleTimer(self.t0 + .seconds(5))])
        // The lease's deadline stays the timer: a timer that finds nothing due does no harm.
        #expect(self.establish(&machine, 0) == [.grantLease(lease, 0), .recordConnectionGauges(versions: ["v1": 1], generations: [:], sequence: 1)])
        #expect(machine.leaseRequestCount == 0)
        // Idle above the minimum (0): the idle timeout is the next deadline.
        #expect(machine.leaseEnded(0, outcome: .clean, at: self.at(.seconds(1))) == [.scheduleTimer(self.t0 + .seconds(61))])
        #expect(
            machine.timerFired(at: self.at(.seconds(61))) == [
                .closeConnection(0), .recordConnectionGauges(versions: [:], generations: [:], sequence: 2), .scheduleTimer(self.expiryCheck),
            ]
        )
        // The close reported twice (the close and the watch): one event.
        #expect(machine.connectionClosed(0, at: self.at(.seconds(61))) == [self.event(.connectionReplaced, .seconds(61), connection: 0, detail: "closed by the pool")])
        #expect(machine.connectionClosed(0, at: self.at(.seconds(61))) == [])
    }

    @Test("a shared request waits like a lease and is granted; later shared uses need no decision; a reply left owed has the connection restored when its last user leaves")
    func sharedUses() {
        var machine = self.machine()
        let request = machine.registerLease()
        #expect(machine.leaseWaiting(request, deadline: self.t0 + .seconds(5), shared: true, at: self.at()) == [.connect(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(self.establish(&machine, 0) == [.grantLease(request, 0), .recordConnectionGauges(versions: ["v1": 1], generations: [:], sequence: 1)])
        #expect(machine.leaseRequestCount == 0)
        #expect(machine.pool.slots[0]?.state == .shared)
        #expect(machine.sharedUseRequested() == 0)
        #expect(machine.sharedUseEnded(0, needsRestore: true, at: self.at()) == [])
        #expect(machine.sharedUseEnded(0, needsRestore: false, at: self.at(.seconds(1))) == [.restore(0)])
        #expect(machine.connectionReleased(0, reusable: true, at: self.at(.seconds(1))) == [.scheduleTimer(self.t0 + .seconds(61))])
        #expect(machine.pool.slots[0]?.state == .idle(since: self.t0 + .seconds(1)))
    }

    @Test("no shared use once the machine has stopped")
    func sharedUsesNeedARunningMachine() {
        var machine = self.machine()
        let request = machine.registerLease()
        _ = machine.leaseWaiting(request, deadline: self.t0 + .seconds(5), shared: true, at: self.at())
        _ = self.establish(&machine, 0)
        #expect(machine.sharedUseEnded(0, needsRestore: false, at: self.at()) == [])
        #expect(machine.sharedUseRequested() == 0)
        _ = machine.sharedUseEnded(0, needsRestore: false, at: self.at())
        _ = machine.shutdown(at: self.at())
        #expect(machine.sharedUseRequested() == nil)
    }

    @Test("a lease cancelled before its waiter is installed fails as cancelled when it is; nothing stays behind")
    func cancelledEarly() {
        var machine = self.machine()
        let lease = machine.registerLease()
        #expect(machine.leaseRequestCount == 1)
        #expect(machine.leaseCancelled(lease, at: self.at()) == [])
        #expect(machine.leaseWaiting(lease, deadline: self.t0 + .seconds(5), at: self.at()) == [.failLease(lease, .cancelled)])
        #expect(machine.leaseRequestCount == 0)
        // Nothing was asked of the pool.
        #expect(machine.pool.waiterCount == 0)
        #expect(machine.pool.slots.isEmpty)
    }

    @Test("a lease cancelled while waiting fails once; a cancellation after the grant changes nothing")
    func cancelledWaitingAndGranted() {
        var machine = self.machine(maximum: 1)
        let first = machine.registerLease()
        #expect(machine.leaseWaiting(first, deadline: self.t0 + .seconds(5), at: self.at()) == [.connect(0), .scheduleTimer(self.t0 + .seconds(5))])
        // The pool keeps its deadline timer: firing early does no harm.
        #expect(machine.leaseCancelled(first, at: self.at()) == [.failLease(first, .cancelled)])
        #expect(machine.leaseCancelled(first, at: self.at()) == [])
        let second = machine.registerLease()
        #expect(machine.leaseWaiting(second, deadline: self.t0 + .seconds(6), at: self.at()) == [.scheduleTimer(self.t0 + .seconds(6))])
        #expect(self.establish(&machine, 0) == [.grantLease(second, 0), .recordConnectionGauges(versions: ["v1": 1], generations: [:], sequence: 1)])
        // Cancelled after the grant: the lease's user sees the cancellation and ends the lease.
        #expect(machine.leaseCancelled(second, at: self.at()) == [])
        #expect(machine.leaseEnded(0, outcome: .clean, at: self.at()) == [.scheduleTimer(self.t0 + .seconds(60))])
        #expect(machine.leaseRequestCount == 0)
    }

    @Test("a lease whose deadline passes fails with leaseTimeout, naming why the last connection attempt failed")
    func leaseTimeoutNamesCause() {
        var machine = self.machine(maximum: 1)
        let lease = machine.registerLease()
        #expect(machine.leaseWaiting(lease, deadline: self.t0 + .seconds(1), at: self.at()) == [.connect(0), .scheduleTimer(self.t0 + .seconds(1))])
        let refused = RedisError(code: .connectionFailed, message: "connection refused")
        // Backoff: 100 ms at first (jitter from the moment's draw), then the next attempt.
        #expect(machine.connectionFailed(0, error: refused, at: self.at()) == [.scheduleTimer(self.t0 + .milliseconds(100))])
        #expect(machine.timerFired(at: self.at(.milliseconds(100))) == [.connect(1), .scheduleTimer(self.t0 + .seconds(1))])
        let actions = machine.timerFired(at: self.at(.seconds(1)))
        #expect(actions == [.failLease(lease, .error(RedisError(code: .leaseTimeout, message: ""))), .scheduleTimer(self.expiryCheck)])
        guard case .failLease(_, .error(let error)) = actions.first else { return }
        #expect(error.message.hasSuffix("the last connection attempt failed: connection refused"))
        #expect((error.underlying as? RedisError)?.code == .connectionFailed)
    }

    @Test("every candidate rejected fails waiting leases at once; a new pending credential lifts the rejection")
    func rejectionFailsWaiters() {
        var machine = self.machine()
        let lease = machine.registerLease()
        #expect(machine.leaseWaiting(lease, deadline: self.t0 + .seconds(5), at: self.at()) == [.connect(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(machine.nextCandidate(after: []) == self.v1)
        #expect(machine.nextCandidate(after: [self.v1]) == nil)
        let rejected = RedisError(code: .credentialsRejected, message: "all 1 candidate credential for user u were rejected")
        // Nobody waits any more, so nothing is reopened (the minimum is 0).
        #expect(machine.connectionFailed(0, error: rejected, at: self.at()) == [.failLease(lease, .error(rejected))])
        // The operator publishes the right password: it becomes a candidate, probed at once, and the
        // pool may connect again without waiting out the backoff.
        #expect(
            machine.sourceReported(self.v2, at: self.at(.milliseconds(10))) == [
                self.event(.credentialSourceChanged, .milliseconds(10), version: "v2"), .probe(self.v2),
            ]
        )
        // A handshake that began before v2 was pending tries it before reporting every candidate rejected.
        #expect(machine.nextCandidate(after: [self.v1]) == self.v2)
    }

    @Test("a lease before the source delivered any credentials waits for them; the connection opens when they arrive")
    func leaseBeforeFirstCredentials() {
        var configuration = Machine.Configuration()
        configuration.pool.minimumConnections = 0
        configuration.pool.maximumConnections = 1
        configuration.pool.handshakeHedgeDelay = nil
        configuration.pool.maximumConnectionAge = nil
        var machine = Machine(configuration: configuration, tls: nil)
        #expect(machine.start(at: self.at()) == [.recordExpiryGauges([]), .scheduleTimer(self.expiryCheck)])
        let lease = machine.registerLease()
        // The pool counts the connection as opening; nothing is dialled without credentials.
        #expect(machine.leaseWaiting(lease, deadline: self.t0 + .seconds(5), at: self.at()) == [.scheduleTimer(self.t0 + .seconds(5))])
        #expect(machine.nextCandidate(after: []) == nil)
        #expect(machine.sourceReported(self.v1, at: self.at(.milliseconds(300))) == [.connect(0)])
        #expect(self.establish(&machine, 0, at: self.at(.milliseconds(310))) == [.grantLease(lease, 0), .recordConnectionGauges(versions: ["v1": 1], generations: [:], sequence: 1)])
    }

    @Test("a connection established after the client stopped is refused (closed by the shell, never the pool's)")
    func refusedAfterShutdown() {
        var machine = self.machine()
        let lease = machine.registerLease()
        #expect(machine.leaseWaiting(lease, deadline: self.t0 + .seconds(5), at: self.at()) == [.connect(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(
            machine.shutdown(at: self.at()) == [.cancelTimer, .failLease(lease, .error(RedisError(code: .clientShutdown, message: "")))]
        )
        #expect(machine.shutdown(at: self.at()) == [])
        #expect(machine.connectionEstablished(0, credentials: self.v1, rejected: [], generation: nil, peerCertificate: nil, clientCertificate: nil, at: self.at()) == .refused)
        // Later leases fail at once; timers stay off.
        let late = machine.registerLease()
        #expect(machine.leaseWaiting(late, deadline: self.t0 + .seconds(5), at: self.at()) == [.failLease(late, .error(RedisError(code: .clientShutdown, message: "")))])
        #expect(machine.timerFired(at: self.at(.seconds(10))) == [])
        #expect(machine.leaseRequestCount == 0)
    }

    @Test("a lease that left state behind is restored before reuse; a failed restoration closes and replaces the connection")
    func restoreThenRelease() {
        var machine = self.machine(maximum: 1)
        let first = machine.registerLease()
        #expect(machine.leaseWaiting(first, deadline: self.t0 + .seconds(5), at: self.at()) == [.connect(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(self.establish(&machine, 0) == [.grantLease(first, 0), .recordConnectionGauges(versions: ["v1": 1], generations: [:], sequence: 1)])
        #expect(machine.leaseEnded(0, outcome: .needsRestore, at: self.at()) == [.restore(0)])
        // While the restoration runs, the connection is not free: the next lease waits.
        let second = machine.registerLease()
        #expect(machine.leaseWaiting(second, deadline: self.t0 + .seconds(5), at: self.at()) == [])
        #expect(
            machine.connectionReleased(0, reusable: false, at: self.at()) == [
                .closeConnection(0), .connect(1), .recordConnectionGauges(versions: [:], generations: [:], sequence: 2),
            ]
        )
        #expect(machine.connectionClosed(0, at: self.at()) == [self.event(.connectionReplaced, connection: 0, detail: "closed by the pool")])
        #expect(self.establish(&machine, 1) == [.grantLease(second, 1), .recordConnectionGauges(versions: ["v1": 1], generations: [:], sequence: 3)])
        #expect(machine.leaseRequestCount == 0)
    }

    @Test("a connection the server closes while its lease ends unusable is replaced; the waiter behind it is served by the replacement")
    func serverCloseDuringLease() {
        var machine = self.machine(maximum: 1)
        let first = machine.registerLease()
        #expect(machine.leaseWaiting(first, deadline: self.t0 + .seconds(5), at: self.at()) == [.connect(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(self.establish(&machine, 0) == [.grantLease(first, 0), .recordConnectionGauges(versions: ["v1": 1], generations: [:], sequence: 1)])
        let second = machine.registerLease()
        #expect(machine.leaseWaiting(second, deadline: self.t0 + .seconds(5), at: self.at()) == [])
        // The watch reports the close before the lease's user ends the lease.
        #expect(
            machine.connectionClosed(0, at: self.at()) == [
                .connect(1),
                .recordConnectionGauges(versions: [:], generations: [:], sequence: 2),
                self.event(.connectionReplaced, connection: 0, detail: "closed by the server or the network"),
            ]
        )
        #expect(machine.leaseEnded(0, outcome: .unusable, at: self.at()) == [])
        #expect(machine.leaseEnded(0, outcome: .needsRestore, at: self.at()) == [])
        #expect(self.establish(&machine, 1) == [.grantLease(second, 1), .recordConnectionGauges(versions: ["v1": 1], generations: [:], sequence: 3)])
    }

    @Test("the one timer is the earliest of the pool's, the credentials' and the expiry check's; a late or replaced timer does only what is due")
    func oneTimer() {
        var machine = self.machine()
        #expect(
            machine.sourceReported(self.v2, at: self.at()) == [self.event(.credentialSourceChanged, version: "v2"), .probe(self.v2)]
        )
        // The probe fails: the credential machine's retry (100 ms) is the earliest deadline.
        #expect(
            machine.probeCompleted(self.v2, result: .rejected, at: self.at()) == [
                self.event(.probeFailed, version: "v2", detail: "the server rejected the credentials (WRONGPASS); retrying in 100 ms"),
                .scheduleTimer(self.t0 + .milliseconds(100)),
            ]
        )
        // A lease with a later deadline changes nothing about the timer.
        let lease = machine.registerLease()
        #expect(machine.leaseWaiting(lease, deadline: self.t0 + .seconds(5), at: self.at()) == [.connect(0)])
        // A stale timer firing early: nothing is due, the same deadline is asked for again.
        #expect(machine.timerFired(at: self.at(.milliseconds(50))) == [.scheduleTimer(self.t0 + .milliseconds(100))])
        #expect(machine.timerFired(at: self.at(.milliseconds(100))) == [.probe(self.v2), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(
            machine.probeCompleted(self.v2, result: .accepted, at: self.at(.milliseconds(150))) == [
                self.event(.probeSucceeded, .milliseconds(150), version: "v2"),
                .recordExpiryGauges([]),
                self.event(.promoted, .milliseconds(150), version: "v2", detail: "previous version: v1"),
                // The previous credential's grace period (60 s) is later than the lease's deadline: no change.
            ]
        )
    }

    @Test("a connection that authenticated with the previous credential after the current one was rejected demotes the current one")
    func demotionOnConnect() {
        var machine = self.machine()
        #expect(machine.sourceReported(self.v2, at: self.at()) == [self.event(.credentialSourceChanged, version: "v2"), .probe(self.v2)])
        #expect(
            machine.probeCompleted(self.v2, result: .accepted, at: self.at()) == [
                self.event(.probeSucceeded, version: "v2"),
                .recordExpiryGauges([]),
                self.event(.promoted, version: "v2", detail: "previous version: v1"),
                .scheduleTimer(self.t0 + .seconds(60)),
            ]
        )
        let lease = machine.registerLease()
        #expect(machine.leaseWaiting(lease, deadline: self.t0 + .seconds(5), at: self.at()) == [.connect(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(machine.nextCandidate(after: []) == self.v2)
        #expect(machine.nextCandidate(after: [self.v2]) == self.v1)
        // Serving on v1 at once: no re-authentication into the rejection.
        #expect(
            self.establish(&machine, 0, self.v1, rejected: [self.v2]) == [
                self.event(
                    .credentialDemoted,
                    version: "v2",
                    detail: "the server rejected v2 while v1 works: serving on v1, probing v2 again with backoff"
                ),
                .recordExpiryGauges([]),
                .grantLease(lease, 0),
                .recordConnectionGauges(versions: ["v1": 1], generations: [:], sequence: 1),
                // v2 is probed again after the backoff.
                .scheduleTimer(self.t0 + .milliseconds(100)),
            ]
        )
        #expect(machine.credentials.current == self.v1)
        #expect(machine.credentials.pending == self.v2)
    }

    // MARK: Random interleavings against a model of the shell

    /// What the shell would hold, and the checks of every action against it.
    struct Shell {
        var established: Set<Int> = []
        var leasedBy: [Int: Machine.LeaseID] = [:]
        var waiting: [Machine.LeaseID: NIODeadline] = [:]
        var registered: Set<Machine.LeaseID> = []
        var ended: Set<Machine.LeaseID> = []
        var connecting: Set<Int> = []
        var closing: Set<Int> = []
        var working: Set<Int> = []  // restore, health check or re-authentication in progress
        var reauthenticating: [Int: RedisCredentials] = [:]
        var probing: [RedisCredentials] = []
        var timer: NIODeadline?
        var problems: [String] = []

        mutating func apply(_ actions: [Action], step: Int) {
            for action in actions {
                switch action {
                case .connect(let id):
                    if !self.connecting.insert(id).inserted { self.problems.append("step \(step): connect \(id) twice") }
                case .reauthenticate(let id, let credentials):
                    if !self.established.contains(id) { self.problems.append("step \(step): re-authenticate \(id), not established") }
                    self.reauthenticating[id] = credentials
                case .closeConnection(let id):
                    if !self.closing.insert(id).inserted { self.problems.append("step \(step): close \(id) twice") }
                case .healthCheck(let id), .restore(let id):
                    if !self.established.contains(id) { self.problems.append("step \(step): \(action) on \(id), not established") }
                    self.working.insert(id)
                case .probe(let credentials):
                    self.probing.append(credentials)
                case .grantLease(let lease, let id):
                    if self.waiting.removeValue(forKey: lease) == nil { self.problems.append("step \(step): lease \(lease) granted, not waiting") }
                    if !self.established.contains(id) { self.problems.append("step \(step): lease \(lease) granted \(id), not established") }
                    if self.closing.contains(id) { self.problems.append("step \(step): lease \(lease) granted \(id), which is closing") }
                    if let other = self.leasedBy[id] { self.problems.append("step \(step): \(id) granted to \(lease) while leased to \(other)") }
                    if self.working.contains(id) { self.problems.append("step \(step): \(id) granted while being restored or checked") }
                    self.leasedBy[id] = lease
                    self.ended.insert(lease)
                case .failLease(let lease, _):
                    if self.waiting.removeValue(forKey: lease) == nil { self.problems.append("step \(step): lease \(lease) failed, not waiting") }
                    if !self.ended.insert(lease).inserted { self.problems.append("step \(step): lease \(lease) ended twice") }
                case .scheduleTimer(let deadline):
                    self.timer = deadline
                case .cancelTimer:
                    self.timer = nil
                case .event, .recordConnectionGauges, .recordExpiryGauges:
                    break
                }
            }
        }

        /// No waiting lease can outlive its deadline: a timer is set no later than the earliest one.
        func checkTimer(step: Int) -> String? {
            guard let earliest = self.waiting.values.min() else { return nil }
            guard let timer = self.timer, timer <= earliest else { return "step \(step): a lease waits until \(earliest) but the timer is \(String(describing: self.timer))" }
            return nil
        }
    }

    @Test("500 seeded random interleavings: no lease granted twice or to a gone connection, none ended twice, none left waiting", arguments: 0..<5)
    func randomInterleavings(batch: Int) {
        for seed in UInt64(batch * 100)..<UInt64(batch * 100 + 100) {
            let problems = self.run(seed: seed)
            #expect(problems.isEmpty, "seed \(seed): \(problems.prefix(5))")
            if !problems.isEmpty { return }
        }
    }

    /// Drives one machine with 300 random events, then lets time run out and finishes all work: every
    /// lease must have ended.
    func run(seed: UInt64) -> [String] {
        var random = SplitMix64(seed: seed)
        var machine = self.machine(maximum: 3)
        var shell = Shell()
        var elapsed = TimeAmount.zero
        var credentials = [self.v1, self.v2]
        let connectionFailure = RedisError(code: .connectionFailed, message: "refused")
        func moment() -> Machine.Moment { self.at(elapsed, random: Double.random(in: 0..<1, using: &random)) }

        for step in 0..<300 {
            var actions: [Action] = []
            switch Int.random(in: 0..<14, using: &random) {
            case 0, 1:
                let lease = machine.registerLease()
                shell.registered.insert(lease)
                if Bool.random(using: &random) {
                    actions = machine.leaseCancelled(lease, at: moment())
                    actions += machine.leaseWaiting(lease, deadline: moment().now + .seconds(2), at: moment())
                    // Cancelled before waiting: failed as cancelled straight away.
                    shell.waiting[lease] = moment().now + .seconds(2)
                } else {
                    shell.waiting[lease] = moment().now + .milliseconds(Int64.random(in: 100...3000, using: &random))
                    actions = machine.leaseWaiting(lease, deadline: shell.waiting[lease]!, at: moment())
                }
            case 2:
                if let lease = shell.waiting.keys.randomElement(using: &random) {
                    actions = machine.leaseCancelled(lease, at: moment())
                }
            case 3, 4:
                if let id = shell.connecting.randomElement(using: &random) {
                    shell.connecting.remove(id)
                    switch Int.random(in: 0..<4, using: &random) {
                    case 0:
                        actions = machine.connectionFailed(id, error: connectionFailure, at: moment())
                    case 1:
                        let rejected = RedisError(code: .credentialsRejected, message: "rejected")
                        actions = machine.connectionFailed(id, error: rejected, at: moment())
                    default:
                        let candidate = machine.nextCandidate(after: []) ?? self.v1
                        switch machine.connectionEstablished(
                            id, credentials: candidate, rejected: [], generation: nil, peerCertificate: nil, clientCertificate: nil, at: moment()
                        ) {
                        case .adopted(let adopted):
                            shell.established.insert(id)
                            actions = adopted
                        case .refused:
                            break
                        }
                    }
                }
            case 5, 6:
                if let (id, _) = shell.leasedBy.randomElement(using: &random) {
                    shell.leasedBy[id] = nil
                    let outcome = [Machine.LeaseOutcome.clean, .clean, .needsRestore, .unusable].randomElement(using: &random)!
                    actions = machine.leaseEnded(id, outcome: shell.established.contains(id) ? outcome : .unusable, at: moment())
                }
            case 7:
                if let id = shell.working.randomElement(using: &random) {
                    shell.working.remove(id)
                    if let credentials = shell.reauthenticating.removeValue(forKey: id) {
                        actions = Bool.random(using: &random)
                            ? machine.reauthenticated(id, credentials: credentials, at: moment())
                            : machine.reauthenticationFailed(id, credentials: credentials, rejected: Bool.random(using: &random), at: moment())
                    } else {
                        actions = machine.connectionReleased(id, reusable: Int.random(in: 0..<4, using: &random) > 0, at: moment())
                    }
                }
            case 8:
                // A close the pool asked for completes; or the server drops a connection.
                if let id = shell.closing.randomElement(using: &random) ?? (Int.random(in: 0..<4, using: &random) == 0 ? shell.established.randomElement(using: &random) : nil) {
                    shell.closing.remove(id)
                    shell.established.remove(id)
                    shell.working.remove(id)
                    shell.reauthenticating[id] = nil
                    actions = machine.connectionClosed(id, at: moment())
                }
            case 9:
                if !shell.probing.isEmpty {
                    let credentials = shell.probing.removeFirst()
                    let result = [CredentialStateMachine.ProbeResult.accepted, .rejected, .inconclusive].randomElement(using: &random)!
                    actions = machine.probeCompleted(credentials, result: result, at: moment())
                }
            case 10:
                if Int.random(in: 0..<8, using: &random) == 0 {
                    credentials.swapAt(0, 1)
                    actions = machine.sourceReported(credentials[0], at: moment())
                }
            default:
                elapsed = elapsed + .milliseconds(Int64.random(in: 1...400, using: &random))
                if let timer = shell.timer, timer <= moment().now {
                    actions = machine.timerFired(at: moment())
                }
            }
            // Re-authentication runs as work on an established connection.
            for case .reauthenticate(let id, _) in actions { shell.working.insert(id) }
            shell.apply(actions, step: step)
            if let problem = shell.checkTimer(step: step) { shell.problems.append(problem) }
            if !shell.problems.isEmpty { return shell.problems }
        }

        // Time runs out: every deadline passes; the timer fires until nothing is due.
        elapsed = elapsed + .seconds(10)
        for step in 300..<320 {
            guard let timer = shell.timer, timer <= moment().now else { break }
            shell.apply(machine.timerFired(at: moment()), step: step)
        }
        if !shell.waiting.isEmpty { shell.problems.append("leases still waiting after every deadline: \(shell.waiting.keys.sorted())") }
        if machine.leaseRequestCount != 0 { shell.problems.append("the machine still holds \(machine.leaseRequestCount) lease requests") }
        return shell.problems
    }
}
