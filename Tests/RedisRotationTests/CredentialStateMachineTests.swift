import NIOCore
import Testing

@testable import RedisRotation

/// Every event's action list is asserted whole.
@Suite("Credential state machine")
struct CredentialStateMachineTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    let v1 = RedisCredentials(username: "u", password: "one", version: "v1")
    let v2 = RedisCredentials(username: "u", password: "two", version: "v2")
    let v3 = RedisCredentials(username: "u", password: "three", version: "v3")

    /// Probes back off from 100 ms (up to 1 s), three attempts; the previous credential stays 60 s.
    /// Starts with v1 current.
    func machine(sourceLocation: SourceLocation = #_sourceLocation) -> CredentialStateMachine {
        var configuration = CredentialStateMachine.Configuration()
        configuration.probeBackoff = Backoff(base: .milliseconds(100), cap: .seconds(1))
        configuration.maximumProbeAttempts = 3
        configuration.previousGracePeriod = .seconds(60)
        var machine = CredentialStateMachine(configuration: configuration)
        #expect(machine.sourceReported(self.v1, now: self.t0) == [], sourceLocation: sourceLocation)
        return machine
    }

    /// `machine()` with `pending` reported and its probe started.
    func machine(pending: RedisCredentials, sourceLocation: SourceLocation = #_sourceLocation) -> CredentialStateMachine {
        var machine = self.machine(sourceLocation: sourceLocation)
        #expect(machine.sourceReported(pending, now: self.t0) == [.pendingChanged(pending), .startProbe(pending)], sourceLocation: sourceLocation)
        return machine
    }

    @Test("the first credential becomes current without a probe, unverified until a connection authenticates with it")
    func first() {
        var machine = self.machine()
        #expect(machine.current == self.v1)
        #expect(machine.candidates == [self.v1])
        #expect(!machine.currentVerified)
        #expect(machine.connectionAuthenticated(with: self.v1, now: self.t0, random: 0) == [])
        #expect(machine.currentVerified)
    }

    @Test("a new credential is probed and promoted only when the probe succeeds")
    func probeThenPromote() {
        var machine = self.machine()
        #expect(machine.sourceReported(self.v2, now: self.t0) == [.pendingChanged(self.v2), .startProbe(self.v2)])
        #expect(machine.current == self.v1)
        #expect(machine.candidates == [self.v1, self.v2])
        #expect(
            machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0)
                == [.promoted(from: self.v1, to: self.v2), .scheduleTimer(self.t0 + .seconds(60))]
        )
        #expect(machine.current == self.v2)
        #expect(machine.previous == self.v1)
        #expect(machine.candidates == [self.v2, self.v1])
        // The previous credential stays a candidate for the grace period only.
        #expect(machine.timerFired(now: self.t0 + .seconds(60)) == [.previousDiscarded(self.v1)])
        #expect(machine.candidates == [self.v2])
    }

    @Test("a rejected probe retries with backoff, then gives up; traffic keeps the current credential")
    func rejectedProbe() {
        var machine = self.machine(pending: self.v2)
        // Random 0.5: 200 ms (between 100 and 300), then 350 ms (between 100 and 600).
        let first = self.t0 + .milliseconds(200)
        #expect(
            machine.probeCompleted(self.v2, result: .rejected, now: self.t0, random: 0.5)
                == [.probeFailed(self.v2, rejected: true, retryAt: first), .scheduleTimer(first)]
        )
        #expect(machine.timerFired(now: first) == [.startProbe(self.v2)])
        let second = first + .milliseconds(350)
        #expect(
            machine.probeCompleted(self.v2, result: .rejected, now: first, random: 0.5)
                == [.probeFailed(self.v2, rejected: true, retryAt: second), .scheduleTimer(second)]
        )
        #expect(machine.timerFired(now: second) == [.startProbe(self.v2)])
        // Bounded: gives up after the last attempt.
        #expect(machine.probeCompleted(self.v2, result: .rejected, now: second, random: 0.5) == [.probeFailed(self.v2, rejected: true, retryAt: nil)])
        #expect(machine.current == self.v1)
        #expect(machine.timerFired(now: second + .seconds(10)) == [])
        // An explicit reload tries again.
        #expect(machine.retryNow() == [.startProbe(self.v2)])
    }

    @Test("an explicit reload probes at once while waiting or after giving up, with a fresh attempt budget; never while idle or running")
    func retryNow() {
        var machine = self.machine()
        #expect(machine.retryNow() == [], "nothing pending")
        #expect(machine.sourceReported(self.v2, now: self.t0) == [.pendingChanged(self.v2), .startProbe(self.v2)])
        #expect(machine.retryNow() == [], "a probe is running")
        let retryAt = self.t0 + .milliseconds(200)
        #expect(
            machine.probeCompleted(self.v2, result: .rejected, now: self.t0, random: 0.5)
                == [.probeFailed(self.v2, rejected: true, retryAt: retryAt), .scheduleTimer(retryAt)]
        )
        // Waiting: the reload does not wait for the retry, and the retry's timer then finds nothing to do.
        #expect(machine.retryNow() == [.startProbe(self.v2)])
        #expect(machine.timerFired(now: retryAt) == [])
        // The backoff starts again from the base (200 ms rather than 350 ms), and three attempts remain.
        var now = retryAt
        for (attempt, delay) in [(1, TimeAmount.milliseconds(200)), (2, .milliseconds(350))] {
            #expect(
                machine.probeCompleted(self.v2, result: .rejected, now: now, random: 0.5)
                    == [.probeFailed(self.v2, rejected: true, retryAt: now + delay), .scheduleTimer(now + delay)],
                "attempt \(attempt)"
            )
            now = now + delay
            #expect(machine.timerFired(now: now) == [.startProbe(self.v2)], "attempt \(attempt)")
        }
        #expect(machine.probeCompleted(self.v2, result: .rejected, now: now, random: 0.5) == [.probeFailed(self.v2, rejected: true, retryAt: nil)])
        #expect(machine.retryNow() == [.startProbe(self.v2)], "after giving up")
        // Not giving up at once: the budget is whole again.
        #expect(
            machine.probeCompleted(self.v2, result: .inconclusive, now: now, random: 0)
                == [.probeFailed(self.v2, rejected: false, retryAt: now + .milliseconds(100)), .scheduleTimer(now + .milliseconds(100))]
        )
        #expect(machine.retryNow() == [.startProbe(self.v2)])
        #expect(machine.retryNow() == [], "already running")
    }

    @Test("after giving up, only a different credential from the source starts a new probe")
    func gaveUpUntilSourceChanges() {
        var machine = self.machine(pending: self.v2)
        for attempt in 1...2 {
            let retryAt = self.t0 + .milliseconds(100 * Int64(attempt))
            #expect(
                machine.probeCompleted(self.v2, result: .inconclusive, now: retryAt - .milliseconds(100), random: 0)
                    == [.probeFailed(self.v2, rejected: false, retryAt: retryAt), .scheduleTimer(retryAt)]
            )
            #expect(machine.timerFired(now: retryAt) == [.startProbe(self.v2)])
        }
        #expect(
            machine.probeCompleted(self.v2, result: .inconclusive, now: self.t0 + .milliseconds(200), random: 0)
                == [.probeFailed(self.v2, rejected: false, retryAt: nil)]
        )
        // The same credential again (or a relabelled copy of it) changes nothing.
        #expect(machine.sourceReported(self.v2, now: self.t0 + .seconds(1)) == [])
        #expect(machine.sourceReported(RedisCredentials(username: "u", password: "two", version: "v2b"), now: self.t0 + .seconds(1)) == [])
        #expect(machine.pending == self.v2)
        #expect(machine.sourceReported(self.v3, now: self.t0 + .seconds(1)) == [.pendingChanged(self.v3), .startProbe(self.v3)])
        #expect(machine.candidates == [self.v1, self.v3])
        #expect(
            machine.probeCompleted(self.v3, result: .accepted, now: self.t0 + .seconds(2), random: 0)
                == [.promoted(from: self.v1, to: self.v3), .scheduleTimer(self.t0 + .seconds(62))]
        )
    }

    @Test("a regular connection that authenticates with the pending credential promotes it")
    func promotionByConnection() {
        var machine = self.machine(pending: self.v2)
        #expect(
            machine.connectionAuthenticated(with: self.v2, now: self.t0, random: 0)
                == [.promoted(from: self.v1, to: self.v2), .scheduleTimer(self.t0 + .seconds(60))]
        )
        // The probe's late answer changes nothing.
        #expect(machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0) == [])
    }

    @Test("a connection that promotes the pending credential while its probe waits to retry cancels the retry")
    func promotionByConnectionWhileWaiting() {
        var machine = self.machine(pending: self.v2)
        let retryAt = self.t0 + .milliseconds(100)
        #expect(
            machine.probeCompleted(self.v2, result: .inconclusive, now: self.t0, random: 0)
                == [.probeFailed(self.v2, rejected: false, retryAt: retryAt), .scheduleTimer(retryAt)]
        )
        let promotedAt = self.t0 + .milliseconds(50)
        #expect(
            machine.connectionAuthenticated(with: self.v2, now: promotedAt, random: 0)
                == [.promoted(from: self.v1, to: self.v2), .scheduleTimer(promotedAt + .seconds(60))]
        )
        // The retry's wake-up finds no probe to run, only the grace period still ahead.
        #expect(machine.timerFired(now: retryAt) == [.scheduleTimer(promotedAt + .seconds(60))])
        #expect(machine.timerFired(now: promotedAt + .seconds(60)) == [.previousDiscarded(self.v1)])
    }

    @Test("a connection that authenticates with neither the current nor the pending credential changes nothing")
    func connectionWithOtherCredentials() {
        var machine = self.machine(pending: self.v2)
        #expect(machine.connectionAuthenticated(with: self.v3, now: self.t0, random: 0) == [])
        // Nothing rejected: the previous one is not a reason to demote (a handshake that began before the
        // promotion).
        #expect(
            machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0)
                == [.promoted(from: self.v1, to: self.v2), .scheduleTimer(self.t0 + .seconds(60))]
        )
        #expect(machine.connectionAuthenticated(with: self.v1, now: self.t0, random: 0) == [])
        #expect(machine.connectionAuthenticated(with: self.v1, rejected: [self.v3], now: self.t0, random: 0) == [])
        #expect(machine.current == self.v2 && machine.previous == self.v1 && machine.pending == nil)
    }

    @Test("a newer credential replaces the pending one; the old probe's result is ignored")
    func newerPending() {
        var machine = self.machine(pending: self.v2)
        #expect(machine.sourceReported(self.v3, now: self.t0) == [.pendingChanged(self.v3), .startProbe(self.v3)])
        #expect(machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0) == [])
        #expect(machine.probeCompleted(self.v2, result: .rejected, now: self.t0, random: 0) == [])
        #expect(machine.current == self.v1)
        #expect(
            machine.probeCompleted(self.v3, result: .accepted, now: self.t0, random: 0)
                == [.promoted(from: self.v1, to: self.v3), .scheduleTimer(self.t0 + .seconds(60))]
        )
    }

    @Test("a probe result for a credential that is no longer pending, or whose probe is not running, is ignored")
    func staleProbeResults() {
        // The source went back to the current credential.
        var reverted = self.machine(pending: self.v2)
        #expect(reverted.sourceReported(self.v1, now: self.t0) == [])
        #expect(reverted.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0) == [])
        #expect(reverted.probeCompleted(self.v2, result: .rejected, now: self.t0, random: 0) == [])
        #expect(reverted.current == self.v1 && reverted.pending == nil)
        // A second report for a probe that already failed and waits to retry.
        var waiting = self.machine(pending: self.v2)
        let retryAt = self.t0 + .milliseconds(100)
        #expect(
            waiting.probeCompleted(self.v2, result: .rejected, now: self.t0, random: 0)
                == [.probeFailed(self.v2, rejected: true, retryAt: retryAt), .scheduleTimer(retryAt)]
        )
        #expect(waiting.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0) == [])
        #expect(waiting.current == self.v1)
        #expect(waiting.timerFired(now: retryAt) == [.startProbe(self.v2)])
    }

    @Test("reporting the current credential again (or the same pending one) does nothing")
    func repeats() {
        var machine = self.machine()
        #expect(machine.sourceReported(self.v1, now: self.t0) == [])
        #expect(machine.sourceReported(self.v2, now: self.t0) == [.pendingChanged(self.v2), .startProbe(self.v2)])
        #expect(machine.sourceReported(self.v2, now: self.t0) == [])
        // Reverting to current cancels the pending one.
        #expect(machine.sourceReported(self.v1, now: self.t0) == [])
        #expect(machine.pending == nil)
    }

    @Test("reverting the source to the current credential cancels a probe waiting to retry")
    func revertCancelsWaitingProbe() {
        var machine = self.machine(pending: self.v2)
        let retryAt = self.t0 + .milliseconds(100)
        #expect(
            machine.probeCompleted(self.v2, result: .rejected, now: self.t0, random: 0)
                == [.probeFailed(self.v2, rejected: true, retryAt: retryAt), .scheduleTimer(retryAt)]
        )
        #expect(machine.sourceReported(self.v1, now: self.t0 + .milliseconds(50)) == [])
        #expect(machine.timerFired(now: retryAt) == [])
        #expect(machine.retryNow() == [])
        #expect(machine.candidates == [self.v1])
    }

    @Test("the previous credential's grace period and a probe's retry share one timer")
    func gracePeriodAndProbeTimer() {
        var machine = self.machine(pending: self.v2)
        #expect(
            machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0)
                == [.promoted(from: self.v1, to: self.v2), .scheduleTimer(self.t0 + .seconds(60))]
        )
        let reported = self.t0 + .seconds(10)
        #expect(machine.sourceReported(self.v3, now: reported) == [.pendingChanged(self.v3), .startProbe(self.v3)])
        #expect(machine.candidates == [self.v2, self.v1, self.v3])
        // The retry comes first ...
        let retryAt = reported + .milliseconds(200)
        #expect(
            machine.probeCompleted(self.v3, result: .rejected, now: reported, random: 0.5)
                == [.probeFailed(self.v3, rejected: true, retryAt: retryAt), .scheduleTimer(retryAt)]
        )
        // ... then the grace period's end is asked for again; an early wake-up only asks again.
        #expect(machine.timerFired(now: retryAt) == [.startProbe(self.v3), .scheduleTimer(self.t0 + .seconds(60))])
        #expect(machine.timerFired(now: self.t0 + .seconds(30)) == [.scheduleTimer(self.t0 + .seconds(60))])
        #expect(machine.timerFired(now: self.t0 + .seconds(60)) == [.previousDiscarded(self.v1)])
        #expect(machine.candidates == [self.v2, self.v3])
        // Both due at once: the probe starts and the previous credential goes, in one wake-up.
        var both = self.machine(pending: self.v2)
        #expect(
            both.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0)
                == [.promoted(from: self.v1, to: self.v2), .scheduleTimer(self.t0 + .seconds(60))]
        )
        #expect(both.sourceReported(self.v3, now: self.t0 + .seconds(59)) == [.pendingChanged(self.v3), .startProbe(self.v3)])
        let due = self.t0 + .seconds(59) + .milliseconds(200)
        #expect(
            both.probeCompleted(self.v3, result: .rejected, now: self.t0 + .seconds(59), random: 0.5)
                == [.probeFailed(self.v3, rejected: true, retryAt: due), .scheduleTimer(due)]
        )
        #expect(both.timerFired(now: self.t0 + .seconds(61)) == [.startProbe(self.v3), .previousDiscarded(self.v1)])
    }

    @Test("a promotion within the grace period makes the promoted-from credential the previous one")
    func promotionWithinGracePeriod() {
        var machine = self.machine(pending: self.v2)
        #expect(
            machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0)
                == [.promoted(from: self.v1, to: self.v2), .scheduleTimer(self.t0 + .seconds(60))]
        )
        #expect(machine.sourceReported(self.v3, now: self.t0 + .seconds(10)) == [.pendingChanged(self.v3), .startProbe(self.v3)])
        // v1 gives way to v2 as the previous credential before its grace period ends: that is reported.
        #expect(
            machine.probeCompleted(self.v3, result: .accepted, now: self.t0 + .seconds(10), random: 0)
                == [.promoted(from: self.v2, to: self.v3), .previousDiscarded(self.v1), .scheduleTimer(self.t0 + .seconds(70))]
        )
        #expect(machine.candidates == [self.v3, self.v2])
        #expect(machine.timerFired(now: self.t0 + .seconds(60)) == [.scheduleTimer(self.t0 + .seconds(70))])
        #expect(machine.timerFired(now: self.t0 + .seconds(70)) == [.previousDiscarded(self.v2)])
    }

    @Test("a connection that authenticates with the previous credential demotes the current one, which is probed again later")
    func demotionOnConnect() {
        var machine = self.machine(pending: self.v2)
        #expect(
            machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0)
                == [.promoted(from: self.v1, to: self.v2), .scheduleTimer(self.t0 + .seconds(60))]
        )
        #expect(machine.candidates == [self.v2, self.v1])
        // The operator rolled back: v2 was rejected, v1 accepted.
        let actions = machine.connectionAuthenticated(with: self.v1, rejected: [self.v2], now: self.t0 + .seconds(1), random: 0)
        #expect(actions == [.demoted(rejected: self.v2, to: self.v1), .scheduleTimer(self.t0 + .seconds(1) + .milliseconds(100))])
        #expect(machine.current == self.v1 && machine.pending == self.v2 && machine.previous == nil)
        #expect(machine.candidates == [self.v1, self.v2])
        // The demoted credential is probed with backoff, not at once; when it works again it is promoted.
        #expect(machine.timerFired(now: self.t0 + .seconds(1) + .milliseconds(100)) == [.startProbe(self.v2)])
        #expect(
            machine.probeCompleted(self.v2, result: .accepted, now: self.t0 + .seconds(2), random: 0)
                == [.promoted(from: self.v1, to: self.v2), .scheduleTimer(self.t0 + .seconds(62))]
        )
    }

    @Test("a demotion while the source has moved on keeps the newer pending credential and its probe")
    func demotionWithNewerPending() {
        var machine = self.machine(pending: self.v2)
        #expect(
            machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0)
                == [.promoted(from: self.v1, to: self.v2), .scheduleTimer(self.t0 + .seconds(60))]
        )
        #expect(machine.sourceReported(self.v3, now: self.t0 + .seconds(1)) == [.pendingChanged(self.v3), .startProbe(self.v3)])
        // Nothing to wait for: the probe of v3 is running and v1 is current again.
        #expect(
            machine.connectionAuthenticated(with: self.v1, rejected: [self.v2], now: self.t0 + .seconds(2), random: 0)
                == [.demoted(rejected: self.v2, to: self.v1)]
        )
        #expect(machine.current == self.v1 && machine.pending == self.v3 && machine.previous == nil)
        #expect(machine.candidates == [self.v1, self.v3])
        // The grace period's wake-up finds nothing left to discard.
        #expect(machine.timerFired(now: self.t0 + .seconds(60)) == [])
        // Without a previous credential nothing more can be demoted.
        #expect(machine.reauthenticationRejected(self.v1, keptVersion: "v2", now: self.t0 + .seconds(3), random: 0) == [])
        #expect(
            machine.probeCompleted(self.v3, result: .accepted, now: self.t0 + .seconds(3), random: 0)
                == [.promoted(from: self.v1, to: self.v3), .scheduleTimer(self.t0 + .seconds(63))]
        )
    }

    @Test("a rejected re-authentication demotes the current credential only when the connection is on the previous one")
    func demotionOnReauthentication() {
        var machine = self.machine(pending: self.v2)
        #expect(
            machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0)
                == [.promoted(from: self.v1, to: self.v2), .scheduleTimer(self.t0 + .seconds(60))]
        )
        #expect(machine.reauthenticationRejected(self.v2, keptVersion: "v0", now: self.t0, random: 0) == [])
        #expect(machine.reauthenticationRejected(self.v1, keptVersion: "v1", now: self.t0, random: 0) == [], "v1 is not current")
        #expect(
            machine.reauthenticationRejected(self.v2, keptVersion: "v1", now: self.t0, random: 0)
                == [.demoted(rejected: self.v2, to: self.v1), .scheduleTimer(self.t0 + .milliseconds(100))]
        )
        #expect(machine.current == self.v1)
    }

    @Test("an inconclusive probe (server unreachable) retries too")
    func inconclusive() {
        var machine = self.machine(pending: self.v2)
        let retryAt = self.t0 + .milliseconds(100)
        #expect(
            machine.probeCompleted(self.v2, result: .inconclusive, now: self.t0, random: 0)
                == [.probeFailed(self.v2, rejected: false, retryAt: retryAt), .scheduleTimer(retryAt)]
        )
        #expect(machine.timerFired(now: retryAt) == [.startProbe(self.v2)])
    }

    @Test("a demotion while the source already points back at the working credential leaves nothing to probe")
    func demotionToWhatTheSourceSays() {
        var machine = self.machine(pending: self.v2)
        _ = machine.probeCompleted(self.v2, result: .accepted, now: self.t0, random: 0)
        // The operator rolled back and the secret manager republished v1 (same password, new label).
        let republished = RedisCredentials(username: "u", password: "one", version: "v1-again")
        #expect(machine.sourceReported(republished, now: self.t0 + .seconds(1)) == [.pendingChanged(republished), .startProbe(republished)])
        // A connection still on v1 has its re-authentication as v2 rejected.
        #expect(
            machine.reauthenticationRejected(self.v2, keptVersion: "v1", now: self.t0 + .seconds(1), random: 0)
                == [.demoted(rejected: self.v2, to: self.v1)]
        )
        #expect(machine.current == self.v1 && machine.pending == nil && machine.candidates == [self.v1])
        // The probe of the republished credential, already running, changes nothing.
        #expect(machine.probeCompleted(republished, result: .accepted, now: self.t0 + .seconds(2), random: 0) == [])
    }
}
