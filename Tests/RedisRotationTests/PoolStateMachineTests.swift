import NIOCore
import Testing

@testable import RedisRotation

/// Every event's action list is asserted whole. `RedisError` compares by code, so `failLease` actions
/// are matched on the error code.
@Suite("Pool state machine")
struct PoolStateMachineTests {
    typealias Machine = PoolStateMachine
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    let leaseTimeout = RedisError(code: .leaseTimeout, message: "no connection became available within the lease deadline")
    let shutDown = RedisError(code: .clientShutdown, message: "the client is shut down")

    /// A pool whose target version is v1. The minimum opens at once, as many as handshakes allow.
    func machine(
        minimum: Int = 0,
        maximum: Int = 4,
        handshakes: Int = 4,
        idleTimeout: TimeAmount = .seconds(60),
        maximumAge: TimeAmount? = nil,
        hedge: TimeAmount? = nil,
        healthCheck: TimeAmount? = nil,
        failsLeasesWhenUnreachable: Bool = false,
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> Machine {
        var configuration = Machine.Configuration()
        configuration.minimumConnections = minimum
        configuration.maximumConnections = maximum
        configuration.maximumConcurrentHandshakes = handshakes
        configuration.idleTimeout = idleTimeout
        configuration.maximumConnectionAge = maximumAge
        configuration.maximumAgeJitter = 0.2
        configuration.connectBackoff = Backoff(base: .milliseconds(100), cap: .seconds(2))
        configuration.healthCheckInterval = healthCheck
        configuration.handshakeHedgeDelay = hedge
        configuration.failsLeasesWhenUnreachable = failsLeasesWhenUnreachable
        var machine = Machine(configuration: configuration)
        let opening = (0..<min(minimum, handshakes)).map(Machine.Action.createConnection)
        #expect(machine.targetVersionChanged("v1", now: self.t0) == opening, sourceLocation: sourceLocation)
        return machine
    }

    @Test("a lease with no connection opens one and is served when it is established")
    func leaseOpensConnection() {
        var pool = self.machine()
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.lease(0, to: 1)])
        #expect(pool.connectionsByVersion == ["v1": 1])
    }

    @Test("a released connection serves the next waiter; idle ones are reused before new ones are opened")
    func reuse() {
        var pool = self.machine(maximum: 1)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.lease(0, to: 1)])
        // The pool is at its maximum: the lease waits (its deadline is the timer already asked for).
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0) == [])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [.lease(0, to: 2)])
        // Idle above the minimum (0): the idle timeout wakes the pool up.
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [.scheduleTimer(self.t0 + .seconds(60))])
        #expect(pool.leaseRequested(3, deadline: self.t0 + .seconds(5), now: self.t0) == [.lease(0, to: 3)])
    }

    @Test("a lease whose deadline passes fails with leaseTimeout")
    func leaseDeadline() {
        var pool = self.machine(maximum: 1)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.lease(0, to: 1)])
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(2), now: self.t0) == [.scheduleTimer(self.t0 + .seconds(2))])
        #expect(pool.timerFired(now: self.t0 + .seconds(2)) == [.failLease(2, self.leaseTimeout)])
        #expect(pool.waiterCount == 0)
    }

    @Test("a cancelled lease leaves the queue")
    func cancelledLease() {
        var pool = self.machine(maximum: 1)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.leaseCancelled(1, now: self.t0) == [])
        #expect(pool.waiterCount == 0)
        // Nobody to serve: the connection goes idle, above the minimum.
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.scheduleTimer(self.t0 + .seconds(60))])
    }

    @Test("no more handshakes run at once than the cap, however many leases wait")
    func handshakeCap() {
        var pool = self.machine(maximum: 10, handshakes: 2)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(1)])
        for lease in 3...8 {
            #expect(pool.leaseRequested(UInt64(lease), deadline: self.t0 + .seconds(5), now: self.t0) == [], "lease \(lease)")
        }
        // One handshake finished, so one more may start.
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.lease(0, to: 1), .createConnection(2)])
    }

    @Test("failed connects back off with growing, capped, jittered delays, then recover")
    func backoff() {
        var pool = self.machine(maximum: 4, handshakes: 1)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(60), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(60))])
        // Random 15/16 keeps the arithmetic exact. Each delay is drawn between the base (100 ms) and three
        // times the last one, capped at 2 s: 287.5 ms (of up to 300), 814.84375 ms (of up to 862.5), then
        // 1,881.25 ms (of up to 2 s rather than 2,444.53 ms) for good.
        let delays: [TimeAmount] = [
            .nanoseconds(287_500_000), .nanoseconds(814_843_750), .nanoseconds(1_881_250_000),
            .nanoseconds(1_881_250_000), .nanoseconds(1_881_250_000), .nanoseconds(1_881_250_000),
        ]
        var now = self.t0
        for (id, delay) in delays.enumerated() {
            // No immediate retry: only a wake-up at the end of the backoff.
            #expect(pool.connectionFailed(id, now: now, random: 0.9375) == [.scheduleTimer(now + delay)], "attempt \(id)")
            now = now + delay
            #expect(pool.timerFired(now: now) == [.createConnection(id + 1), .scheduleTimer(self.t0 + .seconds(60))], "attempt \(id)")
        }
        #expect(pool.connectionEstablished(delays.count, version: "v1", now: now, random: 0) == [.lease(delays.count, to: 1)])
        // Recovered: the next failure starts again from the base (random 0: exactly 100 ms).
        #expect(pool.connectionReleased(delays.count, reusable: false, now: now) == [.closeConnection(delays.count)])
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(60), now: now) == [.createConnection(delays.count + 1)])
        #expect(pool.connectionFailed(delays.count + 1, now: now, random: 0) == [.scheduleTimer(now + .milliseconds(100))])
    }

    @Test("after promotion idle connections re-authenticate at once, leased ones on release")
    func reauthScheduling() {
        var pool = self.machine(maximum: 2)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(1)])
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.lease(0, to: 1)])
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0, random: 0) == [.lease(1, to: 2)])
        #expect(pool.connectionReleased(1, reusable: true, now: self.t0) == [.scheduleTimer(self.t0 + .seconds(60))])  // 1 idle, 0 leased

        // A leased connection finishes its lease first.
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [.reauthenticate(1)])

        // A lease requested meanwhile waits for a connection on the new version (no new connection: the
        // re-authenticating one will serve it).
        #expect(pool.leaseRequested(3, deadline: self.t0 + .seconds(5), now: self.t0) == [.scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.reauthenticated(1, version: "v2", now: self.t0) == [.lease(1, to: 3)])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [.reauthenticate(0)])
        #expect(pool.reauthenticated(0, version: "v2", now: self.t0) == [.scheduleTimer(self.t0 + .seconds(60))])
        #expect(pool.connectionReleased(1, reusable: true, now: self.t0) == [])
        #expect(pool.connectionsByVersion == ["v2": 2])
    }

    @Test("every idle connection on another version re-authenticates at once when the target changes")
    func reauthEveryIdleConnection() {
        var pool = self.machine(minimum: 2, maximum: 2)
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [])
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0, random: 0) == [])
        // In connection order, as every multi-connection decision is (not the slot dictionary's order).
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [.reauthenticate(0), .reauthenticate(1)])
        #expect(pool.reauthenticated(1, version: "v2", now: self.t0) == [])
        #expect(pool.reauthenticated(0, version: "v2", now: self.t0) == [])
        #expect(pool.connectionsByVersion == ["v2": 2])
    }

    @Test("a connection established on an old version re-authenticates before serving")
    func establishedOnOldVersion() {
        var pool = self.machine()
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        // Connecting connections have no version yet: nothing to re-authenticate.
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [])
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.reauthenticate(0)])
        #expect(pool.reauthenticated(0, version: "v2", now: self.t0) == [.lease(0, to: 1)])
    }

    @Test("a re-authentication that completes after the target moved on re-authenticates again before serving")
    func reauthenticatedAfterTargetMovedOn() {
        var pool = self.machine(minimum: 1)
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [])
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [.reauthenticate(0)])
        // One re-authentication at a time: the one in flight is not doubled.
        #expect(pool.targetVersionChanged("v3", now: self.t0) == [])
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.reauthenticated(0, version: "v2", now: self.t0) == [.reauthenticate(0)])
        #expect(pool.connectionsByVersion == ["v2": 1])
        #expect(pool.reauthenticated(0, version: "v3", now: self.t0) == [.lease(0, to: 1)])
        #expect(pool.connectionsByVersion == ["v3": 1])

        // The same when the re-authentication fails but the connection is kept: it catches up with the
        // target that moved on meanwhile.
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [])
        #expect(pool.targetVersionChanged("v4", now: self.t0) == [.reauthenticate(0)])
        #expect(pool.targetVersionChanged("v5", now: self.t0) == [])
        #expect(pool.reauthenticationFailed(0, keepConnection: true, now: self.t0, random: 0) == [.reauthenticate(0)])
        #expect(pool.reauthenticated(0, version: "v5", now: self.t0) == [])
        #expect(pool.connectionsByVersion == ["v5": 1])
    }

    @Test("a failed re-authentication closes the connection and replaces it after a backoff")
    func reauthFailure() {
        var pool = self.machine(minimum: 1)
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [])
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [.reauthenticate(0)])
        // random 0: the first delay is the base, 100 ms.
        #expect(pool.reauthenticationFailed(0, now: self.t0, random: 0) == [.closeConnection(0), .scheduleTimer(self.t0 + .milliseconds(100))])
        #expect(pool.connectionClosed(0, now: self.t0) == [], "no replacement before the backoff has passed")
        #expect(pool.timerFired(now: self.t0 + .milliseconds(100)) == [.createConnection(1)])
    }

    @Test("a connection that goes straight into re-authentication does not reset the backoff; one that re-authenticates does")
    func backoffNotResetBeforeReauthentication() {
        var pool = self.machine(minimum: 1, handshakes: 1)
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [])
        // Connection 0 opened at once for the minimum; it fails. Random 15/16 keeps the arithmetic exact:
        // the first delay is 287.5 ms (of at most 300).
        let retry = self.t0 + .nanoseconds(287_500_000)
        #expect(pool.connectionFailed(0, now: self.t0, random: 0.9375) == [.scheduleTimer(retry)])
        #expect(pool.timerFired(now: retry) == [.createConnection(1)])
        // Connection 1 opens with the previous credential (v1), so it must re-authenticate as v2.
        #expect(pool.connectionEstablished(1, version: "v1", now: retry, random: 0) == [.reauthenticate(1)])
        // The re-authentication is rejected: the next delay grows from the last one (814.84375 ms, of up
        // to 862.5) instead of starting again from the base (at most 300 ms).
        let again = retry + .nanoseconds(814_843_750)
        #expect(pool.reauthenticationFailed(1, now: retry, random: 0.9375) == [.closeConnection(1), .scheduleTimer(again)])
        #expect(pool.connectionClosed(1, now: retry) == [])
        #expect(pool.timerFired(now: again) == [.createConnection(2)])
        // A connection that opens on the target version resets it: the next failure starts from the base.
        #expect(pool.connectionEstablished(2, version: "v2", now: again, random: 0) == [])
        #expect(pool.connectionClosed(2, now: again) == [.createConnection(3)])
        #expect(pool.connectionFailed(3, now: again, random: 0) == [.scheduleTimer(again + .milliseconds(100))])
    }

    @Test("a rejected re-authentication whose credentials were demoted keeps the connection serving on its version")
    func reauthRejectedAndKept() {
        var pool = self.machine(minimum: 1)
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [])
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [.reauthenticate(0)])
        // The credentials were demoted: v1 is the target again.
        #expect(pool.targetVersionChanged("v1", now: self.t0) == [])
        #expect(pool.reauthenticationFailed(0, keepConnection: true, now: self.t0, random: 0) == [])
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.lease(0, to: 1)])
        #expect(pool.connectionsByVersion == ["v1": 1])
    }

    @Test("when every candidate credential is rejected, waiting and new leases fail at once until the credentials change")
    func credentialsRejectedFailsFast() {
        var pool = self.machine(maximum: 2, handshakes: 1)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0) == [])
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

    @Test("a cluster node pool (failsLeasesWhenUnreachable): a server that cannot be reached fails waiting and new leases at once, until a connection opens; other pools wait")
    func unreachableFailsFastWhenAsked() {
        let refused = RedisError(code: .connectionFailed, message: "could not connect: connection refused")
        var pool = self.machine(maximum: 2, handshakes: 1, failsLeasesWhenUnreachable: true)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0) == [])
        #expect(pool.connectionFailed(0, error: refused, now: self.t0, random: 0) == [.failLease(1, refused), .failLease(2, refused)])
        // Within the backoff nothing would try: a new lease fails at once.
        #expect(pool.leaseRequested(3, deadline: self.t0 + .seconds(5), now: self.t0 + .milliseconds(50)) == [.failLease(3, refused)])
        // After it, a lease waits for the next attempt; once a connection opens, leases are served again.
        #expect(pool.leaseRequested(4, deadline: self.t0 + .seconds(6), now: self.t0 + .milliseconds(150)) == [.createConnection(1), .scheduleTimer(self.t0 + .seconds(6))])
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0 + .milliseconds(160), random: 0).contains(.lease(1, to: 4)))
        #expect(pool.unreachable == nil)

        // Without the setting (a single server's pool), the same failure leaves leases waiting for a restart.
        var waiting = self.machine(maximum: 2, handshakes: 1)
        #expect(waiting.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(!waiting.connectionFailed(0, error: refused, now: self.t0, random: 0).contains(.failLease(1, refused)))
    }

    @Test("after a rejection's backoff a lease waits for a new attempt; new candidates end the fast failures at once")
    func credentialsRejectedThenRetried() {
        var pool = self.machine(maximum: 2, handshakes: 1)
        let rejection = RedisError(code: .credentialsRejected, message: "rejected")
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.connectionFailed(0, error: rejection, now: self.t0, random: 0) == [.failLease(1, rejection)])
        // Within the 100 ms backoff a lease fails at once ...
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(6), now: self.t0 + .milliseconds(50)) == [.failLease(2, rejection)])
        // ... after it, the lease waits and a new attempt finds out whether the server was fixed.
        #expect(
            pool.leaseRequested(3, deadline: self.t0 + .seconds(6), now: self.t0 + .milliseconds(100))
                == [.createConnection(1), .scheduleTimer(self.t0 + .seconds(6))]
        )
        #expect(pool.connectionFailed(1, error: rejection, now: self.t0 + .milliseconds(200), random: 0) == [.failLease(3, rejection)])
        #expect(pool.leaseRequested(4, deadline: self.t0 + .seconds(6), now: self.t0 + .milliseconds(210)) == [.failLease(4, rejection)])
        // A new pending credential is a new candidate: the rejection and its backoff end.
        #expect(pool.candidatesChanged(now: self.t0 + .milliseconds(210)) == [])
        #expect(pool.leaseRequested(5, deadline: self.t0 + .seconds(6), now: self.t0 + .milliseconds(210)) == [.createConnection(2)])
        #expect(pool.connectionEstablished(2, version: "v1", now: self.t0 + .milliseconds(300), random: 0) == [.lease(2, to: 5)])
    }

    @Test("new candidates without a rejection change nothing: an ordinary connect backoff runs on")
    func candidatesChangedWithoutRejection() {
        var pool = self.machine(maximum: 2, handshakes: 1)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.connectionFailed(0, now: self.t0, random: 0) == [.scheduleTimer(self.t0 + .milliseconds(100))])
        #expect(pool.candidatesChanged(now: self.t0 + .milliseconds(10)) == [])
        // Still backing off: a new lease waits for the retry at 100 ms.
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0 + .milliseconds(10)) == [])
        #expect(pool.timerFired(now: self.t0 + .milliseconds(100)) == [.createConnection(1), .scheduleTimer(self.t0 + .seconds(5))])
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
        #expect(full.leaseRequested(1, deadline: deadline, now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(1))])
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
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.lease(0, to: 1)])
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(1)])
        let rejection = RedisError(code: .credentialsRejected, message: "rejected")
        #expect(pool.connectionFailed(1, error: rejection, now: self.t0, random: 0) == [.scheduleTimer(self.t0 + .milliseconds(100))])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [.lease(0, to: 2)])
    }

    @Test("connections retire at their jittered maximum age, make-before-break")
    func maximumAge() {
        var pool = self.machine(minimum: 2, maximum: 2, maximumAge: .seconds(100))
        #expect(pool.slots.count == 2, "the minimum opened as soon as the target version was known")
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.scheduleTimer(self.t0 + .seconds(100))])
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0, random: 1) == [.scheduleTimer(self.t0 + .seconds(80))])
        // Nothing is due yet: the pool only asks to be woken at the first retirement again.
        #expect(pool.timerFired(now: self.t0 + .seconds(79)) == [.scheduleTimer(self.t0 + .seconds(80))])
        // The replacement opens first, beyond the maximum for a moment; the old one keeps serving meanwhile,
        // and jitter spreads retirements (connection 0 is not due before 100 s).
        #expect(pool.timerFired(now: self.t0 + .seconds(80)) == [.createConnection(2), .scheduleTimer(self.t0 + .seconds(100))])
        #expect(pool.connectionEstablished(2, version: "v1", now: self.t0 + .seconds(80), random: 0) == [.closeConnection(1)])

        // A leased connection past its age gets its replacement while leased and closes on release.
        #expect(pool.leaseRequested(9, deadline: self.t0 + .seconds(200), now: self.t0 + .seconds(90)) == [.lease(0, to: 9)])
        #expect(pool.timerFired(now: self.t0 + .seconds(100)) == [.createConnection(3), .scheduleTimer(self.t0 + .seconds(180))])
        // Never closed under a lease. Connection 0 only waits to close, so it no longer counts: 2 and 3
        // make the minimum, and neither is a spare with an idle timeout (the timer for 180 s stands).
        #expect(pool.connectionEstablished(3, version: "v1", now: self.t0 + .seconds(100), random: 0) == [])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0 + .seconds(101)) == [.closeConnection(0)])
    }

    @Test("a long lease on a retiring connection does not make its replacement a spare: make-before-break holds")
    func retiringLeaseOutlastsReplacement() {
        var pool = self.machine(minimum: 1, maximum: 2, idleTimeout: .seconds(30), maximumAge: .seconds(100))
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.scheduleTimer(self.t0 + .seconds(100))])
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0 + .seconds(1)) == [.lease(0, to: 1)])
        #expect(pool.timerFired(now: self.t0 + .seconds(100)) == [.createConnection(1)])
        // The replacement is up and connection 0 only waits for its lease to end: the replacement alone
        // makes the minimum, so it has no idle timeout (only its own retirement at 200 s) ...
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0 + .seconds(100), random: 0) == [.scheduleTimer(self.t0 + .seconds(200))])
        // ... it is still there when the lease goes on past the idle timeout ...
        #expect(pool.timerFired(now: self.t0 + .seconds(130)) == [.scheduleTimer(self.t0 + .seconds(200))])
        // ... and when the lease ends, the old connection closes and the replacement serves on.
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0 + .seconds(131)) == [.closeConnection(0)])
        #expect(pool.connectionsByVersion == ["v1": 1])
    }

    @Test("retirements due together are replaced one handshake at a time")
    func retirementsRespectHandshakeCap() {
        var pool = self.machine(minimum: 2, maximum: 2, handshakes: 1, maximumAge: .seconds(100))
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.createConnection(1), .scheduleTimer(self.t0 + .seconds(100))])
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0, random: 0) == [])
        #expect(pool.timerFired(now: self.t0 + .seconds(100)) == [.createConnection(2)])
        // Connection 2 is up: 0 closes and 1's replacement may start.
        #expect(
            pool.connectionEstablished(2, version: "v1", now: self.t0 + .seconds(100), random: 0)
                == [.closeConnection(0), .createConnection(3), .scheduleTimer(self.t0 + .seconds(200))]
        )
        #expect(pool.connectionEstablished(3, version: "v1", now: self.t0 + .seconds(101), random: 0) == [.closeConnection(1)])
        #expect(pool.connectionClosed(0, now: self.t0 + .seconds(101)) == [])
        #expect(pool.connectionClosed(1, now: self.t0 + .seconds(101)) == [])
        #expect(pool.connectionsByVersion == ["v1": 2])
    }

    @Test("a retiring connection whose replacement cannot open keeps serving, and the replacement is tried again after the backoff")
    func retirementWithoutReplacement() {
        var pool = self.machine(minimum: 1, maximum: 1, maximumAge: .seconds(10))
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.scheduleTimer(self.t0 + .seconds(10))])
        #expect(pool.timerFired(now: self.t0 + .seconds(10)) == [.createConnection(1)])
        #expect(pool.connectionFailed(1, now: self.t0 + .seconds(10), random: 0) == [.scheduleTimer(self.t0 + .seconds(10) + .milliseconds(100))])
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(60), now: self.t0 + .seconds(10)) == [.lease(0, to: 1)])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0 + .seconds(10)) == [])
        #expect(pool.timerFired(now: self.t0 + .seconds(10) + .milliseconds(100)) == [.createConnection(2)])
        #expect(
            pool.connectionEstablished(2, version: "v1", now: self.t0 + .seconds(11), random: 0)
                == [.closeConnection(0), .scheduleTimer(self.t0 + .seconds(21))]
        )
    }

    @Test("a retiring connection closed before its replacement opens: the replacement stands for itself")
    func retiringConnectionClosedFirst() {
        var pool = self.machine(minimum: 1, maximum: 1, maximumAge: .seconds(10))
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.scheduleTimer(self.t0 + .seconds(10))])
        #expect(pool.timerFired(now: self.t0 + .seconds(10)) == [.createConnection(1)])
        // The server closed the old one: the opening replacement covers the minimum, nothing else opens.
        #expect(pool.connectionClosed(0, now: self.t0 + .seconds(10)) == [])
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0 + .seconds(11), random: 0) == [.scheduleTimer(self.t0 + .seconds(21))])
        #expect(pool.connectionsByVersion == ["v1": 1])
    }

    enum ReauthenticationOutcome: CaseIterable, Sendable {
        case succeeded
        /// Rejected, but the connection could go on serving (its credentials are the target again).
        case rejectedAndKept
        case rejected
    }

    @Test(
        "a retiring connection whose replacement is up closes when its re-authentication ends, whatever the outcome",
        arguments: ReauthenticationOutcome.allCases
    )
    func replacedWhileReauthenticating(outcome: ReauthenticationOutcome) {
        var pool = self.machine(minimum: 1, maximum: 1, maximumAge: .seconds(10))
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.scheduleTimer(self.t0 + .seconds(10))])
        #expect(pool.timerFired(now: self.t0 + .seconds(10)) == [.createConnection(1)])
        #expect(pool.targetVersionChanged("v2", now: self.t0 + .seconds(10)) == [.reauthenticate(0)])
        // The replacement comes up on v2 while 0 is still re-authenticating: 0 closes afterwards.
        let later = self.t0 + .seconds(11)
        #expect(pool.connectionEstablished(1, version: "v2", now: later, random: 0) == [.scheduleTimer(self.t0 + .seconds(21))])
        switch outcome {
        case .succeeded:
            #expect(pool.reauthenticated(0, version: "v2", now: later) == [.closeConnection(0)])
        case .rejectedAndKept:
            #expect(pool.reauthenticationFailed(0, keepConnection: true, now: later, random: 0) == [.closeConnection(0)])
        case .rejected:
            #expect(pool.reauthenticationFailed(0, now: later, random: 0) == [.closeConnection(0)])
        }
        #expect(pool.connectionClosed(0, now: later) == [])
        // The new connection is killed at once: another opens without delay. A rejected re-authentication
        // of a connection that was closing anyway (its replacement was up) starts no connect backoff.
        #expect(pool.connectionClosed(1, now: later) == [.createConnection(2)])
    }

    @Test("idle connections are health-checked after the interval and closed when the check fails")
    func healthChecks() {
        var pool = self.machine(minimum: 1, maximum: 1, healthCheck: .seconds(10))
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.scheduleTimer(self.t0 + .seconds(10))])
        #expect(pool.timerFired(now: self.t0 + .seconds(10)) == [.healthCheck(0)])
        // While checked, the connection serves nobody.
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(20), now: self.t0 + .seconds(10)) == [.scheduleTimer(self.t0 + .seconds(20))])
        // A passing check hands it on; a failing one replaces it.
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0 + .seconds(10)) == [.lease(0, to: 1)])
        // The interval counts from the last use.
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0 + .seconds(11)) == [.scheduleTimer(self.t0 + .seconds(21))])
        #expect(pool.timerFired(now: self.t0 + .seconds(21)) == [.healthCheck(0)])
        #expect(pool.connectionReleased(0, reusable: false, now: self.t0 + .seconds(21)) == [.closeConnection(0), .createConnection(1)])
    }

    @Test("an idle connection above the minimum is health-checked, and still closes at its idle timeout counted from its last use")
    func healthChecksAboveMinimum() {
        var pool = self.machine(minimum: 0, maximum: 1, idleTimeout: .seconds(30), healthCheck: .seconds(10))
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.lease(0, to: 1)])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [.scheduleTimer(self.t0 + .seconds(10))])
        // A check is not a use: the idle clock keeps running from the last release.
        for check in 1...2 {
            let now = self.t0 + .seconds(Int64(10 * check))
            #expect(pool.timerFired(now: now) == [.healthCheck(0)], "check \(check)")
            #expect(pool.connectionReleased(0, reusable: true, now: now) == [.scheduleTimer(now + .seconds(10))], "check \(check)")
        }
        #expect(pool.timerFired(now: self.t0 + .seconds(30)) == [.closeConnection(0)])
        #expect(pool.connectionClosed(0, now: self.t0 + .seconds(30)) == [])
        #expect(pool.connectionsByVersion == [:])
    }

    @Test("above the minimum, an idle timeout shorter than the health-check interval closes the connection unchecked")
    func idleTimeoutBeforeHealthCheck() {
        var pool = self.machine(minimum: 0, maximum: 1, idleTimeout: .seconds(10), healthCheck: .seconds(30))
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.lease(0, to: 1)])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [.scheduleTimer(self.t0 + .seconds(10))])
        #expect(pool.timerFired(now: self.t0 + .seconds(10)) == [.closeConnection(0)])
        #expect(pool.connectionClosed(0, now: self.t0 + .seconds(10)) == [])
        #expect(pool.slots.isEmpty)
    }

    @Test("idle connections above the minimum close after the idle timeout")
    func idleTimeout() {
        var pool = self.machine(minimum: 1, maximum: 3, idleTimeout: .seconds(30))
        // The connection opening for the minimum will serve the first lease.
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(1)])
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.lease(0, to: 1)])
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0, random: 0) == [.lease(1, to: 2)])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [.scheduleTimer(self.t0 + .seconds(30))])
        #expect(pool.connectionReleased(1, reusable: true, now: self.t0 + .seconds(10)) == [])
        // Connection 0 has been idle for 30 s; connection 1 stays for the minimum.
        #expect(pool.timerFired(now: self.t0 + .seconds(30)) == [.closeConnection(0)])
    }

    @Test("with no minimum, each idle connection closes at its own idle timeout")
    func idleTimeoutWithoutMinimum() {
        var pool = self.machine(minimum: 0, maximum: 2)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(1)])
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.lease(0, to: 1)])
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0, random: 0) == [.lease(1, to: 2)])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [.scheduleTimer(self.t0 + .seconds(60))])
        #expect(pool.connectionReleased(1, reusable: true, now: self.t0 + .seconds(10)) == [])
        // An early wake-up closes nothing and asks again.
        #expect(pool.timerFired(now: self.t0 + .seconds(59)) == [.scheduleTimer(self.t0 + .seconds(60))])
        #expect(pool.timerFired(now: self.t0 + .seconds(60)) == [.closeConnection(0), .scheduleTimer(self.t0 + .seconds(70))])
        #expect(pool.timerFired(now: self.t0 + .seconds(70)) == [.closeConnection(1)])
        #expect(pool.connectionClosed(0, now: self.t0 + .seconds(70)) == [])
        #expect(pool.connectionClosed(1, now: self.t0 + .seconds(70)) == [])
        #expect(pool.slots.isEmpty)
    }

    @Test("an unusable connection is closed on release and a forced close is replaced")
    func brokenConnections() {
        var pool = self.machine(minimum: 1)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.lease(0, to: 1)])
        #expect(pool.connectionReleased(0, reusable: false, now: self.t0) == [.closeConnection(0), .createConnection(1)])
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0, random: 0) == [])
        // Killed by the server while idle: replaced to keep the minimum.
        #expect(pool.connectionClosed(1, now: self.t0) == [.createConnection(2)])
    }

    @Test("a connection the server closes while leased or re-authenticating is replaced at once; its late reports change nothing")
    func closedWhileBusy() {
        var pool = self.machine(minimum: 1)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.lease(0, to: 1)])
        #expect(pool.connectionClosed(0, now: self.t0) == [.createConnection(1)])
        #expect(pool.connectionReleased(0, reusable: false, now: self.t0) == [])
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0, random: 0) == [])
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [.reauthenticate(1)])
        #expect(pool.connectionClosed(1, now: self.t0) == [.createConnection(2)])
        #expect(pool.reauthenticated(1, version: "v2", now: self.t0) == [])
        #expect(pool.reauthenticationFailed(1, now: self.t0, random: 0) == [])
        #expect(pool.slots.keys.sorted() == [2])
    }

    @Test("reports about connections the pool does not hold, or that are in another state, change nothing")
    func strayReports() {
        var pool = self.machine(minimum: 1)
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [])
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [], "already open")
        #expect(pool.connectionEstablished(7, version: "v1", now: self.t0, random: 0) == [])
        #expect(pool.connectionFailed(7, now: self.t0, random: 0) == [])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [], "not leased")
        #expect(pool.connectionReleased(7, reusable: true, now: self.t0) == [])
        #expect(pool.reauthenticated(0, version: "v1", now: self.t0) == [], "not re-authenticating")
        #expect(pool.reauthenticationFailed(0, now: self.t0, random: 0) == [], "not re-authenticating")
        #expect(pool.connectionClosed(7, now: self.t0) == [])
        #expect(pool.leaseCancelled(42, now: self.t0) == [])
        #expect(pool.slots[0]?.state == .idle(since: self.t0))
        #expect(pool.connectionFailed(0, now: self.t0, random: 0) == [], "not connecting")
        #expect(pool.slots[0]?.state == .idle(since: self.t0))
    }

    @Test("old-generation connections are retired one by one across the window, make-before-break, leased ones on release")
    func tlsGenerationRollover() {
        var pool = self.machine(minimum: 2, maximum: 2, handshakes: 2)
        #expect(pool.connectionEstablished(0, version: "v1", generation: 1, now: self.t0, random: 0) == [])
        #expect(pool.connectionEstablished(1, version: "v1", generation: 1, now: self.t0, random: 0) == [])
        #expect(pool.connectionsByGeneration == [1: 2])
        // Two connections, a 20 s window, random 0.5: their turns are at 5 s and 15 s. Nothing moves at once.
        #expect(pool.tlsGenerationChanged(2, window: .seconds(20), now: self.t0, random: 0.5) == [.scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(100), now: self.t0 + .seconds(1)) == [.lease(0, to: 1)])
        // Connection 0's turn: its replacement opens while it is leased ...
        #expect(pool.timerFired(now: self.t0 + .seconds(5)) == [.createConnection(2), .scheduleTimer(self.t0 + .seconds(15))])
        // ... comes up on the new generation, and 0 closes only when its lease ends.
        #expect(pool.connectionEstablished(2, version: "v1", generation: 2, now: self.t0 + .seconds(6), random: 0) == [])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0 + .seconds(7)) == [.closeConnection(0)])
        #expect(pool.connectionClosed(0, now: self.t0 + .seconds(7)) == [])
        // Connection 1's turn: idle, it closes as soon as its replacement is up.
        #expect(pool.timerFired(now: self.t0 + .seconds(15)) == [.createConnection(3)])
        #expect(pool.connectionEstablished(3, version: "v1", generation: 2, now: self.t0 + .seconds(16), random: 0) == [.closeConnection(1)])
        #expect(pool.connectionClosed(1, now: self.t0 + .seconds(16)) == [])
        #expect(pool.connectionsByGeneration == [2: 2])
    }

    @Test("a connection that opens on the old TLS generation after the change is retired within the window too")
    func tlsGenerationChangedWhileConnecting() {
        var pool = self.machine(minimum: 1)
        // Connection 0 is still connecting: nothing to retire yet.
        #expect(pool.tlsGenerationChanged(2, window: .seconds(10), now: self.t0, random: 0.5) == [])
        #expect(pool.connectionEstablished(0, version: "v1", generation: 1, now: self.t0 + .seconds(1), random: 0.5) == [.scheduleTimer(self.t0 + .seconds(6))])
        #expect(pool.timerFired(now: self.t0 + .seconds(6)) == [.createConnection(1)])
        #expect(pool.connectionEstablished(1, version: "v1", generation: 2, now: self.t0 + .seconds(7), random: 0) == [.closeConnection(0)])
        #expect(pool.connectionsByGeneration == [2: 1])
    }

    @Test("shutdown fails waiters, closes idle connections and refuses new leases")
    func shutdown() {
        var pool = self.machine(maximum: 1)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.lease(0, to: 1)])
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0) == [])
        #expect(pool.shutdown() == [.failLease(2, RedisError(code: .clientShutdown, message: "the client is shutting down"))])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [.closeConnection(0)])
        #expect(pool.leaseRequested(3, deadline: self.t0 + .seconds(5), now: self.t0) == [.failLease(3, self.shutDown)])
    }

    @Test("shutdown closes idle and re-authenticating connections at once, leased ones on release, connecting ones when they open")
    func shutdownInEveryState() {
        var pool = self.machine(minimum: 5, maximum: 5, handshakes: 5)
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [])
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0, random: 0) == [])
        #expect(pool.connectionEstablished(2, version: "v1", now: self.t0, random: 0) == [])
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.lease(0, to: 1)])
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(5), now: self.t0) == [.lease(1, to: 2)])
        #expect(pool.connectionReleased(1, reusable: false, now: self.t0) == [.closeConnection(1), .createConnection(5)])
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [.reauthenticate(2)])
        #expect(pool.connectionEstablished(3, version: "v2", now: self.t0, random: 0) == [])
        // 0 leased, 1 closing, 2 re-authenticating, 3 idle, 4 and 5 connecting.
        #expect(pool.shutdown() == [.closeConnection(2), .closeConnection(3)])
        #expect(pool.connectionEstablished(4, version: "v2", now: self.t0, random: 0) == [.closeConnection(4)])
        #expect(pool.connectionFailed(5, now: self.t0, random: 0) == [])
        #expect(pool.reauthenticated(2, version: "v2", now: self.t0) == [], "already closing")
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [.closeConnection(0)])
        for id in 0...4 {
            #expect(pool.connectionClosed(id, now: self.t0) == [], "connection \(id)")
        }
        #expect(pool.slots.isEmpty)
        // Nothing reopens: not for the minimum, not on a timer, not for a lease.
        #expect(pool.timerFired(now: self.t0 + .seconds(60)) == [])
        #expect(pool.targetVersionChanged("v3", now: self.t0 + .seconds(60)) == [])
        #expect(pool.leaseRequested(3, deadline: self.t0 + .seconds(65), now: self.t0 + .seconds(60)) == [.failLease(3, self.shutDown)])
        #expect(pool.shutdown() == [])
    }
}
