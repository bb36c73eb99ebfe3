import NIOCore
import Testing

@testable import RedisRotation

/// Defects found by a second review of the fixes in 71e86cd. Each test states the behaviour the
/// contract asks for; they fail on the reviewed head.
@Suite("Second review findings: state machines")
struct SecondReviewFindingsStateMachineTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    func pool(minimum: Int, maximum: Int, maximumAge: TimeAmount? = nil) -> PoolStateMachine {
        var configuration = PoolStateMachine.Configuration()
        configuration.minimumConnections = minimum
        configuration.maximumConnections = maximum
        configuration.maximumConcurrentHandshakes = 4
        configuration.maximumConnectionAge = maximumAge
        configuration.maximumAgeJitter = 0.2
        configuration.connectBackoff = Backoff(base: .milliseconds(100), cap: .seconds(2))
        configuration.healthCheckInterval = nil
        configuration.handshakeHedgeDelay = nil
        var machine = PoolStateMachine(configuration: configuration)
        _ = machine.targetVersionChanged("v1", now: self.t0)
        return machine
    }

    func creates(_ actions: [PoolStateMachine.Action]) -> [Int] {
        actions.compactMap { if case .createConnection(let id) = $0 { return id } else { return nil } }
    }

    // 71e86cd lets a replacement stand for itself only once its old connection is *closed*
    // (connectionClosed). While the pool is *closing* the old one (a lease left it unusable, a restore or
    // health check failed, idle timeout), the replacement is still counted nowhere: regularOpenCount
    // skips both, rebalance opens a regular connection for the minimum, and when the replacement then
    // completes, the surplus rule exempts it ("counted against the connection it replaces", which is
    // gone). The pool stays above its maximum until an idle timeout, never while it is busy.
    @Test("a replacement whose old connection the pool is closing does not take the pool past its maximum")
    func replacementOfClosingConnectionRespectsMaximum() {
        var pool = self.pool(minimum: 2, maximum: 2, maximumAge: .seconds(10))
        _ = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        _ = pool.connectionEstablished(1, version: "v1", now: self.t0, random: 0)
        let now = self.t0 + .seconds(10)
        #expect(self.creates(pool.timerFired(now: now)) == [2, 3])
        // Connection 0 serves a lease that leaves it unusable: the pool closes it while its replacement
        // (2) is still in its handshake.
        #expect(pool.leaseRequested(1, deadline: now + .seconds(5), now: now).contains(.lease(0, to: 1)))
        let regular = self.creates(pool.connectionReleased(0, reusable: false, now: now))
        for id in regular + [2, 3] {
            _ = pool.connectionEstablished(id, version: "v1", now: now, random: 0)
        }
        _ = pool.connectionClosed(0, now: now)
        _ = pool.connectionClosed(1, now: now)
        let open = pool.connectionsByVersion.values.reduce(0, +)
        #expect(open <= 2, "\(open) connections open, maximum 2 (regular connections opened meanwhile: \(regular))")
    }

    // `rejection` is documented as "set when the last connection attempt found every candidate credential
    // rejected", but only connectionEstablished and credential changes clear it. After a rejection the
    // server goes down (a restart that loads the fixed ACL): later attempts fail to connect, and during
    // each of their backoffs every lease fails at once with the stale credentialsRejected, instead of
    // waiting for the attempt that may well succeed.
    @Test("a connection failure after a rejection ends the fail-fast: leases wait for the next attempt")
    func rejectionIsForgottenByALaterConnectFailure() {
        var pool = self.pool(minimum: 1, maximum: 4)
        let rejected = RedisError(code: .credentialsRejected, message: "all 1 candidate credential for user u were rejected; versions tried: v1")
        _ = pool.connectionFailed(0, error: rejected, now: self.t0, random: 0.5)
        // After the backoff (at most 2 s here) the pool tries again; the server is restarting.
        let later = self.t0 + .seconds(3)
        #expect(self.creates(pool.timerFired(now: later)) == [1])
        let refused = RedisError(code: .connectionFailed, message: "could not connect to 127.0.0.1:6379: connection refused")
        _ = pool.connectionFailed(1, error: refused, now: later, random: 0.5)
        let actions = pool.leaseRequested(7, deadline: later + .seconds(5), now: later)
        let failedWith = actions.compactMap { action -> RedisError.Code? in
            if case .failLease(7, let error) = action { return error.code } else { return nil }
        }
        #expect(failedWith.isEmpty, "the lease failed at once with \(failedWith), from a rejection the last attempt did not see")
    }
}
