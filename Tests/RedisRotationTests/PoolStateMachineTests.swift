import NIOCore
import Testing

@testable import RedisRotation

@Suite("Pool state machine")
struct PoolStateMachineTests {
    typealias Machine = PoolStateMachine
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    func machine(
        minimum: Int = 0,
        maximum: Int = 4,
        handshakes: Int = 4,
        idleTimeout: TimeAmount = .seconds(60),
        maximumAge: TimeAmount? = nil,
        hedge: TimeAmount? = nil
    ) -> Machine {
        var configuration = Machine.Configuration()
        configuration.minimumConnections = minimum
        configuration.maximumConnections = maximum
        configuration.maximumConcurrentHandshakes = handshakes
        configuration.idleTimeout = idleTimeout
        configuration.maximumConnectionAge = maximumAge
        configuration.maximumAgeJitter = 0.2
        configuration.connectBackoff = Backoff(base: .milliseconds(100), cap: .seconds(2))
        configuration.healthCheckInterval = nil
        configuration.handshakeHedgeDelay = hedge
        var machine = Machine(configuration: configuration)
        _ = machine.targetVersionChanged("v1", now: self.t0)
        return machine
    }

    func creates(_ actions: [Machine.Action]) -> [Int] {
        actions.compactMap { if case .createConnection(let id) = $0 { return id } else { return nil } }
    }

    func leases(_ actions: [Machine.Action]) -> [Machine.Action] {
        actions.filter { if case .lease = $0 { return true } else { return false } }
    }

    @Test("a lease with no connection opens one and is served when it is established")
    func leaseOpensConnection() {
        var pool = self.machine()
        let actions = pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0)
        #expect(self.creates(actions) == [0])
        #expect(actions.contains(.scheduleTimer(self.t0 + .seconds(5))))
        let established = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        #expect(self.leases(established) == [.lease(0, to: 1)])
        #expect(pool.connectionsByVersion == ["v1": 1])
    }

    @Test("a released connection serves the next waiter; idle ones are reused before new ones are opened")
    func reuse() {
        var pool = self.machine(maximum: 1)
        _ = pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0)
        _ = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        let second = pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0)
        #expect(self.creates(second).isEmpty, "the pool is at its maximum")
        #expect(self.leases(pool.connectionReleased(0, reusable: true, now: self.t0)) == [.lease(0, to: 2)])
        _ = pool.connectionReleased(0, reusable: true, now: self.t0)
        let third = pool.leaseRequested(3, deadline: self.t0 + .seconds(5), now: self.t0)
        #expect(self.leases(third) == [.lease(0, to: 3)])
        #expect(self.creates(third).isEmpty)
    }

    @Test("a lease whose deadline passes fails with leaseTimeout")
    func leaseDeadline() {
        var pool = self.machine(maximum: 1)
        _ = pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0)
        _ = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        _ = pool.leaseRequested(2, deadline: self.t0 + .seconds(2), now: self.t0)
        let actions = pool.timerFired(now: self.t0 + .seconds(2))
        guard case .failLease(2, let error)? = actions.first else {
            Issue.record("expected lease 2 to fail, got \(actions)")
            return
        }
        #expect(error.code == .leaseTimeout)
        #expect(pool.waiterCount == 0)
    }

    @Test("a cancelled lease leaves the queue")
    func cancelledLease() {
        var pool = self.machine(maximum: 1)
        _ = pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0)
        _ = pool.leaseCancelled(1, now: self.t0)
        let established = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        #expect(self.leases(established).isEmpty)
    }

    @Test("no more handshakes run at once than the cap, however many leases wait")
    func handshakeCap() {
        var pool = self.machine(maximum: 10, handshakes: 2)
        var created: [Int] = []
        for lease in 1...8 {
            created += self.creates(pool.leaseRequested(UInt64(lease), deadline: self.t0 + .seconds(5), now: self.t0))
        }
        #expect(created == [0, 1])
        let next = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        #expect(self.creates(next) == [2], "one handshake finished, so one more may start")
    }

    @Test("failed connects back off with growing, capped, jittered delays, then recover")
    func backoff() {
        var pool = self.machine(maximum: 4, handshakes: 1)
        _ = pool.leaseRequested(1, deadline: self.t0 + .seconds(60), now: self.t0)
        var now = self.t0
        var previousDelay: Int64 = 0
        var id = 0
        for attempt in 0..<6 {
            let failed = pool.connectionFailed(id, now: now, random: 0.99)
            #expect(self.creates(failed).isEmpty, "attempt \(attempt): no immediate retry")
            let timer = failed.compactMap { if case .scheduleTimer(let at) = $0 { return at } else { return nil } }.min()
            let retryAt = try! #require(timer)
            let delay = (retryAt - now).nanoseconds
            #expect(delay >= previousDelay, "delays do not shrink while failures go on")
            #expect(delay <= TimeAmount.seconds(2).nanoseconds, "delays are capped")
            previousDelay = delay
            now = retryAt
            let retry = pool.timerFired(now: now)
            #expect(self.creates(retry) == [id + 1])
            id += 1
        }
        let established = pool.connectionEstablished(id, version: "v1", now: now, random: 0)
        #expect(self.leases(established) == [.lease(id, to: 1)])
    }

    @Test("after promotion idle connections re-authenticate at once, leased ones on release")
    func reauthScheduling() {
        var pool = self.machine(maximum: 2)
        _ = pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0)
        _ = pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0)
        _ = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        _ = pool.connectionEstablished(1, version: "v1", now: self.t0, random: 0)
        _ = pool.connectionReleased(1, reusable: true, now: self.t0)  // 1 idle, 0 leased

        let promoted = pool.targetVersionChanged("v2", now: self.t0)
        #expect(promoted.contains(.reauthenticate(1)))
        #expect(!promoted.contains(.reauthenticate(0)), "a leased connection finishes its lease first")

        // A lease requested meanwhile waits for a connection on the new version.
        #expect(self.leases(pool.leaseRequested(3, deadline: self.t0 + .seconds(5), now: self.t0)).isEmpty)
        #expect(self.leases(pool.reauthenticated(1, version: "v2", now: self.t0)) == [.lease(1, to: 3)])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0).contains(.reauthenticate(0)))
        _ = pool.reauthenticated(0, version: "v2", now: self.t0)
        _ = pool.connectionReleased(1, reusable: true, now: self.t0)
        #expect(pool.connectionsByVersion == ["v2": 2])
    }

    @Test("a connection established on an old version re-authenticates before serving")
    func establishedOnOldVersion() {
        var pool = self.machine()
        _ = pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0)
        _ = pool.targetVersionChanged("v2", now: self.t0)
        let actions = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        #expect(actions.contains(.reauthenticate(0)))
        #expect(self.leases(actions).isEmpty)
    }

    @Test("a failed re-authentication closes the connection and replaces it after a backoff")
    func reauthFailure() {
        var pool = self.machine(minimum: 1)
        _ = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [.reauthenticate(0)])
        // random 0: the first delay is the base, 100 ms.
        #expect(pool.reauthenticationFailed(0, now: self.t0, random: 0) == [.closeConnection(0), .scheduleTimer(self.t0 + .milliseconds(100))])
        #expect(pool.connectionClosed(0, now: self.t0).isEmpty, "no replacement before the backoff has passed")
        #expect(pool.timerFired(now: self.t0 + .milliseconds(100)) == [.createConnection(1)])
    }

    @Test("a connection that goes straight into re-authentication does not reset the backoff; one that re-authenticates does")
    func backoffNotResetBeforeReauthentication() {
        var pool = self.machine(minimum: 1, handshakes: 1)
        _ = pool.targetVersionChanged("v2", now: self.t0)
        // Connection 0 opened at once for the minimum; it fails, the backoff starts near 300 ms.
        let first = pool.connectionFailed(0, now: self.t0, random: 1)
        guard case .scheduleTimer(let retry)? = first.last, first.count == 1 else {
            Issue.record("expected only a timer: \(first)")
            return
        }
        #expect(retry > self.t0 + .milliseconds(299))
        #expect(pool.timerFired(now: retry) == [.createConnection(1)])
        // Connection 1 opens with the previous credential (v1), so it must re-authenticate as v2.
        #expect(pool.connectionEstablished(1, version: "v1", now: retry, random: 0) == [.reauthenticate(1)])
        // The re-authentication is rejected: the next delay grows from the last one (near 900 ms) instead
        // of starting again from the base (at most 300 ms).
        let failed = pool.reauthenticationFailed(1, now: retry, random: 1)
        guard case .scheduleTimer(let again)? = failed.last, failed.count == 2 else {
            Issue.record("expected a close and a timer: \(failed)")
            return
        }
        #expect(failed.first == .closeConnection(1))
        #expect(again > retry + .milliseconds(800))
        #expect(pool.connectionClosed(1, now: retry).isEmpty)
        #expect(pool.timerFired(now: again) == [.createConnection(2)])
        // A connection that opens on the target version resets it: the next failure starts from the base.
        #expect(pool.connectionEstablished(2, version: "v2", now: again, random: 0).isEmpty)
        #expect(pool.connectionClosed(2, now: again) == [.createConnection(3)])
        #expect(pool.connectionFailed(3, now: again, random: 0) == [.scheduleTimer(again + .milliseconds(100))])
    }

    @Test("a rejected re-authentication whose credentials were demoted keeps the connection serving on its version")
    func reauthRejectedAndKept() {
        var pool = self.machine(minimum: 1)
        _ = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [.reauthenticate(0)])
        // The credentials were demoted: v1 is the target again.
        #expect(pool.targetVersionChanged("v1", now: self.t0).isEmpty)
        #expect(pool.reauthenticationFailed(0, keepConnection: true, now: self.t0, random: 0).isEmpty)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.lease(0, to: 1)])
        #expect(pool.connectionsByVersion == ["v1": 1])
    }

    @Test("when every candidate credential is rejected, waiting and new leases fail at once until the credentials change")
    func credentialsRejectedFailsFast() {
        var pool = self.machine(maximum: 2, handshakes: 1)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0).isEmpty)
        let rejection = RedisError(code: .credentialsRejected, message: "all 1 candidate credential for user alice were rejected")
        let failed = pool.connectionFailed(0, error: rejection, now: self.t0, random: 0)
        #expect(failed == [.failLease(1, rejection), .failLease(2, rejection)], "nothing left that wants a connection")
        #expect(failed.allSatisfy { if case .failLease(_, let error) = $0 { return error.code == .credentialsRejected } else { return true } })
        // A new lease fails at once too, while nothing could serve it.
        #expect(pool.leaseRequested(3, deadline: self.t0 + .seconds(5), now: self.t0) == [.failLease(3, rejection)])
        // New credentials: the pool tries at once (the lease timer at 5 s is still scheduled), and leases wait again.
        #expect(pool.targetVersionChanged("v2", now: self.t0 + .milliseconds(10)) == [])
        #expect(pool.leaseRequested(4, deadline: self.t0 + .seconds(5), now: self.t0 + .milliseconds(10)) == [.createConnection(1)])
    }

    @Test("a handshake hung past the hedge delay while leases wait does not hold back new attempts; the total stays bounded")
    func hedgedHandshakes() {
        var pool = self.machine(maximum: 2, handshakes: 1, hedge: .seconds(1))
        let deadline = self.t0 + .seconds(30)
        #expect(pool.leaseRequested(1, deadline: deadline, now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(1))])
        // The server accepted and went silent: after a second another attempt starts.
        #expect(pool.timerFired(now: self.t0 + .seconds(1)) == [.createConnection(1), .scheduleTimer(self.t0 + .seconds(2))])
        #expect(pool.timerFired(now: self.t0 + .seconds(2)) == [.createConnection(2), .scheduleTimer(self.t0 + .seconds(3))])
        // At most maximumConnections + maximumConcurrentHandshakes slots (3) exist: no fourth attempt.
        #expect(pool.timerFired(now: self.t0 + .seconds(3)) == [.scheduleTimer(deadline)])
        // The server answers again: the newest attempt serves the lease; the hung ones fail later.
        #expect(pool.connectionEstablished(2, version: "v1", now: self.t0 + .seconds(3), random: 0) == [.lease(2, to: 1)])
        #expect(pool.connectionFailed(0, now: self.t0 + .seconds(5), random: 0) == [])
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0 + .seconds(3), random: 0) == [.scheduleTimer(self.t0 + .seconds(63))])
        // A hung handshake that completes after all is closed if the pool is full.
        var full = self.machine(maximum: 1, handshakes: 1, hedge: .seconds(1))
        _ = full.leaseRequested(1, deadline: deadline, now: self.t0)
        #expect(full.timerFired(now: self.t0 + .seconds(1)) == [.createConnection(1), .scheduleTimer(self.t0 + .seconds(2))])
        #expect(full.connectionEstablished(1, version: "v1", now: self.t0 + .seconds(1), random: 0) == [.lease(1, to: 1)])
        #expect(full.connectionEstablished(0, version: "v1", now: self.t0 + .seconds(2), random: 0) == [.closeConnection(0)])
        #expect(full.connectionsByVersion == ["v1": 1])
        // Without waiters a slow handshake is only slow: nothing is hedged.
        var quiet = self.machine(minimum: 1, maximum: 2, handshakes: 1, hedge: .seconds(1))
        #expect(quiet.slots.count == 1)
        #expect(quiet.timerFired(now: self.t0 + .seconds(5)) == [])
    }

    @Test("a rejection does not fail leases that an open connection will serve")
    func credentialsRejectedWithOpenConnection() {
        var pool = self.machine(maximum: 2, handshakes: 1)
        _ = pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0)
        _ = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)  // leased to 1
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(1)])
        let rejection = RedisError(code: .credentialsRejected, message: "rejected")
        #expect(pool.connectionFailed(1, error: rejection, now: self.t0, random: 0) == [.scheduleTimer(self.t0 + .milliseconds(100))])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [.lease(0, to: 2)])
    }

    @Test("connections retire at their jittered maximum age, make-before-break")
    func maximumAge() {
        var pool = self.machine(minimum: 2, maximum: 2, maximumAge: .seconds(100))
        #expect(pool.slots.count == 2, "the minimum opened as soon as the target version was known")
        _ = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)  // retires at 100 s
        _ = pool.connectionEstablished(1, version: "v1", now: self.t0, random: 1)  // retires at 80 s
        #expect(!pool.timerFired(now: self.t0 + .seconds(79)).contains(.createConnection(2)))
        let at80 = pool.timerFired(now: self.t0 + .seconds(80))
        #expect(self.creates(at80) == [2], "the replacement opens first, beyond the maximum for a moment")
        #expect(!at80.contains(.closeConnection(1)), "the old one keeps serving meanwhile")
        #expect(!at80.contains(.closeConnection(0)), "jitter spreads retirements")
        #expect(pool.connectionEstablished(2, version: "v1", now: self.t0 + .seconds(80), random: 0).contains(.closeConnection(1)))

        // A leased connection past its age gets its replacement while leased and closes on release.
        _ = pool.leaseRequested(9, deadline: self.t0 + .seconds(200), now: self.t0 + .seconds(90))
        let due = pool.timerFired(now: self.t0 + .seconds(100))
        let leasedID = pool.slots.first { $0.value.state == .leased }!.key
        #expect(self.creates(due).count == 1)
        let replacement = self.creates(due)[0]
        let established = pool.connectionEstablished(replacement, version: "v1", now: self.t0 + .seconds(100), random: 0)
        #expect(!established.contains(.closeConnection(leasedID)), "never under a lease")
        #expect(pool.connectionReleased(leasedID, reusable: true, now: self.t0 + .seconds(101)).contains(.closeConnection(leasedID)))
    }

    @Test("a retiring connection whose replacement cannot open keeps serving")
    func retirementWithoutReplacement() {
        var pool = self.machine(minimum: 1, maximum: 1, maximumAge: .seconds(10))
        _ = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        let due = pool.timerFired(now: self.t0 + .seconds(10))
        let replacement = try! #require(self.creates(due).first)
        _ = pool.connectionFailed(replacement, now: self.t0 + .seconds(10), random: 0)
        #expect(self.leases(pool.leaseRequested(1, deadline: self.t0 + .seconds(60), now: self.t0 + .seconds(10))) == [.lease(0, to: 1)])
        #expect(!pool.connectionReleased(0, reusable: true, now: self.t0 + .seconds(10)).contains(.closeConnection(0)))
    }

    @Test("idle connections are health-checked after the interval and closed when the check fails")
    func healthChecks() {
        var configuration = Machine.Configuration()
        configuration.minimumConnections = 1
        configuration.maximumConnections = 1
        configuration.maximumConnectionAge = nil
        configuration.healthCheckInterval = .seconds(10)
        var pool = Machine(configuration: configuration)
        _ = pool.targetVersionChanged("v1", now: self.t0)
        let established = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        #expect(established.contains(.scheduleTimer(self.t0 + .seconds(10))))
        #expect(pool.timerFired(now: self.t0 + .seconds(10)).contains(.healthCheck(0)))
        // While checked, the connection serves nobody.
        #expect(self.leases(pool.leaseRequested(1, deadline: self.t0 + .seconds(20), now: self.t0 + .seconds(10))).isEmpty)
        // A passing check hands it on; a failing one replaces it.
        #expect(self.leases(pool.connectionReleased(0, reusable: true, now: self.t0 + .seconds(10))) == [.lease(0, to: 1)])
        _ = pool.connectionReleased(0, reusable: true, now: self.t0 + .seconds(11))
        #expect(pool.timerFired(now: self.t0 + .seconds(21)).contains(.healthCheck(0)))
        let failed = pool.connectionReleased(0, reusable: false, now: self.t0 + .seconds(21))
        #expect(failed.contains(.closeConnection(0)))
        #expect(self.creates(failed) == [1])
    }

    @Test("idle connections above the minimum close after the idle timeout")
    func idleTimeout() {
        var pool = self.machine(minimum: 1, maximum: 3, idleTimeout: .seconds(30))
        _ = pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0)
        _ = pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0)
        _ = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        _ = pool.connectionEstablished(1, version: "v1", now: self.t0, random: 0)
        _ = pool.connectionReleased(0, reusable: true, now: self.t0)
        _ = pool.connectionReleased(1, reusable: true, now: self.t0 + .seconds(10))
        let actions = pool.timerFired(now: self.t0 + .seconds(30))
        #expect(actions.contains(.closeConnection(0)))
        #expect(!actions.contains(.closeConnection(1)), "the minimum stays")
    }

    @Test("an unusable connection is closed on release and a forced close is replaced")
    func brokenConnections() {
        var pool = self.machine(minimum: 1)
        _ = pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0)
        _ = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        let released = pool.connectionReleased(0, reusable: false, now: self.t0)
        #expect(released.contains(.closeConnection(0)))
        #expect(self.creates(released) == [1])
        _ = pool.connectionEstablished(1, version: "v1", now: self.t0, random: 0)
        // Killed by the server while idle: replaced to keep the minimum.
        #expect(self.creates(pool.connectionClosed(1, now: self.t0)) == [2])
    }

    @Test("shutdown fails waiters, closes idle connections and refuses new leases")
    func shutdown() {
        var pool = self.machine(maximum: 1)
        _ = pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0)
        _ = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        _ = pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0)
        let actions = pool.shutdown()
        #expect(actions.contains { if case .failLease(2, _) = $0 { return true } else { return false } })
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [.closeConnection(0)])
        guard case .failLease(3, let error)? = pool.leaseRequested(3, deadline: self.t0 + .seconds(5), now: self.t0).first else {
            Issue.record("expected failure")
            return
        }
        #expect(error.code == .clientShutdown)
    }
}

@Suite("Credential state machine")
struct CredentialStateMachineTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    let v1 = RedisCredentials(username: "u", password: "one", version: "v1")
    let v2 = RedisCredentials(username: "u", password: "two", version: "v2")
    let v3 = RedisCredentials(username: "u", password: "three", version: "v3")

    func machine() -> CredentialStateMachine {
        var configuration = CredentialStateMachine.Configuration()
        configuration.probeBackoff = Backoff(base: .milliseconds(100), cap: .seconds(1))
        configuration.maximumProbeAttempts = 3
        configuration.previousGracePeriod = .seconds(60)
        var machine = CredentialStateMachine(configuration: configuration)
        _ = machine.sourceReported(self.v1, now: self.t0)
        return machine
    }

    @Test("the first credential becomes current without a probe")
    func first() {
        let machine = self.machine()
        #expect(machine.current == self.v1)
        #expect(machine.candidates == [self.v1])
    }

    @Test("a new credential is probed and promoted only when the probe succeeds")
    func probeThenPromote() {
        var machine = self.machine()
        #expect(machine.sourceReported(self.v2, now: self.t0) == [.pendingChanged(self.v2), .startProbe(self.v2)])
        #expect(machine.current == self.v1)
        #expect(machine.candidates == [self.v1, self.v2])
        let actions = machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0)
        #expect(actions.first == .promoted(from: self.v1, to: self.v2))
        #expect(machine.current == self.v2)
        #expect(machine.previous == self.v1)
        #expect(machine.candidates == [self.v2, self.v1])
        // The previous credential stays a candidate for the grace period only.
        #expect(machine.timerFired(now: self.t0 + .seconds(60)).contains(.previousDiscarded(self.v1)))
        #expect(machine.candidates == [self.v2])
    }

    @Test("a rejected probe retries with backoff, then gives up; traffic keeps the current credential")
    func rejectedProbe() {
        var machine = self.machine()
        _ = machine.sourceReported(self.v2, now: self.t0)
        var now = self.t0
        for attempt in 1...3 {
            let actions = machine.probeCompleted(self.v2, result: .rejected, now: now, random: 0.5)
            guard case .probeFailed(_, rejected: true, let retryAt)? = actions.first else {
                Issue.record("expected probeFailed")
                return
            }
            if attempt == 3 {
                #expect(retryAt == nil, "bounded: gives up after the last attempt")
                break
            }
            let at = try! #require(retryAt)
            #expect(at > now)
            now = at
            #expect(machine.timerFired(now: now).contains(.startProbe(self.v2)))
        }
        #expect(machine.current == self.v1)
        #expect(machine.timerFired(now: now + .seconds(10)).isEmpty)
        // An explicit reload tries again.
        #expect(machine.retryNow() == [.startProbe(self.v2)])
    }

    @Test("a regular connection that authenticates with the pending credential promotes it")
    func promotionByConnection() {
        var machine = self.machine()
        _ = machine.sourceReported(self.v2, now: self.t0)
        #expect(machine.connectionAuthenticated(with: self.v2, now: self.t0, random: 0).first == .promoted(from: self.v1, to: self.v2))
        // The probe's late answer changes nothing.
        #expect(machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0).isEmpty)
    }

    @Test("a newer credential replaces the pending one; the old probe's result is ignored")
    func newerPending() {
        var machine = self.machine()
        _ = machine.sourceReported(self.v2, now: self.t0)
        #expect(machine.sourceReported(self.v3, now: self.t0) == [.pendingChanged(self.v3), .startProbe(self.v3)])
        #expect(machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0).isEmpty)
        #expect(machine.current == self.v1)
        #expect(machine.probeCompleted(self.v3, result: .accepted, now: self.t0, random: 0).first == .promoted(from: self.v1, to: self.v3))
    }

    @Test("reporting the current credential again (or the same pending one) does nothing")
    func repeats() {
        var machine = self.machine()
        #expect(machine.sourceReported(self.v1, now: self.t0).isEmpty)
        _ = machine.sourceReported(self.v2, now: self.t0)
        #expect(machine.sourceReported(self.v2, now: self.t0).isEmpty)
        // Reverting to current cancels the pending one.
        #expect(machine.sourceReported(self.v1, now: self.t0).isEmpty)
        #expect(machine.pending == nil)
    }

    @Test("a connection that authenticates with the previous credential demotes the current one, which is probed again later")
    func demotionOnConnect() {
        var machine = self.machine()
        _ = machine.sourceReported(self.v2, now: self.t0)
        _ = machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0)
        #expect(machine.candidates == [self.v2, self.v1])
        // The operator rolled back: v2 was rejected, v1 accepted.
        let actions = machine.connectionAuthenticated(with: self.v1, rejected: [self.v2], now: self.t0 + .seconds(1), random: 0)
        #expect(actions == [.demoted(rejected: self.v2, to: self.v1), .scheduleTimer(self.t0 + .seconds(1) + .milliseconds(100))])
        #expect(machine.current == self.v1 && machine.pending == self.v2 && machine.previous == nil)
        #expect(machine.candidates == [self.v1, self.v2])
        // The demoted credential is probed with backoff, not at once; when it works again it is promoted.
        #expect(machine.timerFired(now: self.t0 + .seconds(1) + .milliseconds(100)) == [.startProbe(self.v2)])
        #expect(machine.probeCompleted(self.v2, result: .accepted, now: self.t0 + .seconds(2), random: 0).first == .promoted(from: self.v1, to: self.v2))
    }

    @Test("a rejected re-authentication demotes the current credential only when the connection is on the previous one")
    func demotionOnReauthentication() {
        var machine = self.machine()
        _ = machine.sourceReported(self.v2, now: self.t0)
        _ = machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0)
        #expect(machine.reauthenticationRejected(self.v2, keptVersion: "v0", now: self.t0, random: 0).isEmpty)
        #expect(machine.reauthenticationRejected(self.v1, keptVersion: "v1", now: self.t0, random: 0).isEmpty, "v1 is not current")
        #expect(
            machine.reauthenticationRejected(self.v2, keptVersion: "v1", now: self.t0, random: 0)
                == [.demoted(rejected: self.v2, to: self.v1), .scheduleTimer(self.t0 + .milliseconds(100))]
        )
        #expect(machine.current == self.v1)
    }

    @Test("an inconclusive probe (server unreachable) retries too")
    func inconclusive() {
        var machine = self.machine()
        _ = machine.sourceReported(self.v2, now: self.t0)
        guard case .probeFailed(_, rejected: false, let retryAt?)? = machine.probeCompleted(self.v2, result: .inconclusive, now: self.t0, random: 0).first else {
            Issue.record("expected a retry")
            return
        }
        #expect(machine.timerFired(now: retryAt).contains(.startProbe(self.v2)))
    }
}
