import NIOCore
import Testing

@testable import RedisRotation

/// Defects found reviewing the session-hygiene / demotion / hedging change (two rounds). Each test states the
/// behaviour the contract asks for; they fail on the reviewed head.
@Suite("Review findings: state machines")
struct ReviewFindingsStateMachineTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    let v1 = RedisCredentials(username: "u", password: "one", version: "v1")
    let v2 = RedisCredentials(username: "u", password: "two", version: "v2")
    let v3 = RedisCredentials(username: "u", password: "three", version: "v3")

    func credentials() -> CredentialStateMachine {
        var configuration = CredentialStateMachine.Configuration()
        configuration.probeBackoff = Backoff(base: .milliseconds(100), cap: .seconds(1))
        configuration.maximumProbeAttempts = 3
        configuration.previousGracePeriod = .seconds(60)
        var machine = CredentialStateMachine(configuration: configuration)
        _ = machine.sourceReported(self.v1, now: self.t0)
        return machine
    }

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

    // RedisClient.connect takes `candidates` under one lock acquisition and reports the accepted one under
    // another. A handshake that started while v1 was current, and authenticated with v1 (its FIRST
    // candidate; during a rotation the server accepts both passwords), completes after v2's probe promoted
    // v2. Nothing was rejected, yet v2 is demoted.
    @Test("a handshake that straddles a promotion and authenticates with its first candidate demotes nothing")
    func staleCandidateListDoesNotDemote() {
        var machine = self.credentials()
        _ = machine.sourceReported(self.v2, now: self.t0)
        // A pool connection starts now with candidates [v1, v2] ...
        #expect(machine.candidates == [self.v1, self.v2])
        // ... the probe promotes v2 meanwhile ...
        #expect(machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0).first == .promoted(from: self.v1, to: self.v2))
        // ... and the connection's first candidate, v1, was accepted.
        let actions = machine.connectionAuthenticated(with: self.v1, now: self.t0, random: 0)
        #expect(!actions.contains { if case .demoted = $0 { return true } else { return false } }, "\(actions)")
        #expect(machine.current == self.v2)
    }

    // demote() overwrites `pending` and the probe state: a newer credential the source delivered (and whose
    // probe is running) is forgotten, and its probe's success is ignored. The source will not report it
    // again, so the client never tries it until the file changes once more.
    @Test("a demotion keeps a newer pending credential and honours its probe")
    func demotionKeepsNewerPending() {
        var machine = self.credentials()
        _ = machine.sourceReported(self.v2, now: self.t0)
        _ = machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0)
        // The source moves on to v3 (probe running) ...
        #expect(machine.sourceReported(self.v3, now: self.t0) == [.pendingChanged(self.v3), .startProbe(self.v3)])
        // ... and the server is rolled back to v1: a connection finds v2 rejected and v1 accepted.
        #expect(machine.connectionAuthenticated(with: self.v1, rejected: [self.v2], now: self.t0, random: 0).first == .demoted(rejected: self.v2, to: self.v1))
        #expect(machine.candidates.contains(self.v3), "v3 was dropped: candidates \(machine.candidates.map(\.version))")
        // The operator then installs v3 on the server: the running probe's success must promote it.
        #expect(machine.probeCompleted(self.v3, result: .accepted, now: self.t0, random: 0).first == .promoted(from: self.v1, to: self.v3))
    }

    // With minimumConnections 0, after every candidate was rejected, leaseRequested fails each lease at
    // once and never adds a waiter, so `wanted` stays 0 and no connection is ever attempted again: the pool
    // stays failed until the credentials change, even after the server was fixed.
    @Test("with no minimum, the pool tries again after a credentialsRejected once the backoff has passed")
    func rejectionIsRetriedWithoutMinimum() {
        var pool = self.pool(minimum: 0, maximum: 4)
        #expect(self.creates(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0)) == [0])
        let rejected = RedisError(code: .credentialsRejected, message: "all 1 candidate credential for user u were rejected; versions tried: v1")
        _ = pool.connectionFailed(0, error: rejected, now: self.t0, random: 0.5)
        // A minute later (the backoff cap here is 2 s) the operator has fixed the server; a new lease comes.
        let later = self.t0 + .seconds(60)
        let actions = pool.leaseRequested(2, deadline: later + .seconds(5), now: later)
        #expect(!self.creates(actions).isEmpty, "no connection attempt, ever: \(actions)")
    }

    // The surplus rule exempts replacements ("counted against the connection they replace"); when the
    // connection being replaced dies first, its replacement is counted nowhere: the pool opens a regular
    // connection for the minimum and then keeps both.
    @Test("a replacement whose old connection died does not take the pool past its maximum")
    func orphanedReplacementRespectsMaximum() {
        var pool = self.pool(minimum: 2, maximum: 2, maximumAge: .seconds(10))
        _ = pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0)
        _ = pool.connectionEstablished(1, version: "v1", now: self.t0, random: 0)
        let retire = pool.timerFired(now: self.t0 + .seconds(10))
        #expect(self.creates(retire) == [2, 3])
        // Connection 0 is killed by the server while its replacement is still in its handshake: the
        // replacement now stands for itself, so no further connection is needed for the minimum.
        let closed = pool.connectionClosed(0, now: self.t0 + .seconds(10))
        #expect(self.creates(closed).isEmpty)
        _ = pool.connectionEstablished(2, version: "v1", now: self.t0 + .seconds(10), random: 0)
        _ = pool.connectionEstablished(3, version: "v1", now: self.t0 + .seconds(10), random: 0)
        let open = pool.connectionsByVersion.values.reduce(0, +)
        #expect(open <= 2, "\(open) connections open, maximum 2")
    }

    // `EXEC` and `DISCARD` without `MULTI` are errors on the server ("EXEC without MULTI") and leave the
    // WATCH in place, but SessionState clears `watching` for them.
    @Test("WATCH followed by DISCARD or EXEC without MULTI still needs UNWATCH", arguments: ["DISCARD", "EXEC"])
    func watchSurvivesStrayEndOfTransaction(end: String) {
        var state = SessionState()
        state.commandEnqueued(RedisCommand("WATCH", "k").sessionEffect)
        state.commandEnqueued(RedisCommand(end).sessionEffect)
        #expect(state.release != .reuse, "a WATCH the server still holds would reach the next lease")
    }

    // Found by the second review, of the fixes for the first.

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
