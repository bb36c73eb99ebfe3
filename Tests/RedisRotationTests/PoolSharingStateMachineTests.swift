import NIOCore
import Testing

@testable import RedisRotation

/// The pool's shared uses (ordinary commands multiplexed onto connections, issue 14). Every event's
/// action list is asserted whole, as in `PoolStateMachineTests`.
@Suite("Pool state machine: shared use")
struct PoolSharingStateMachineTests {
    typealias Machine = PoolStateMachine
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    let leaseTimeout = RedisError(code: .leaseTimeout, message: "no connection became available within the lease deadline")

    /// A pool whose target version is v1, with `minimum` connections established (IDs from 0).
    func machine(
        minimum: Int = 1,
        maximum: Int = 4,
        sharedCap: Int = 32,
        maximumAge: TimeAmount? = nil,
        healthCheck: TimeAmount? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> Machine {
        var configuration = Machine.Configuration()
        configuration.minimumConnections = minimum
        configuration.maximumConnections = maximum
        configuration.maximumConcurrentHandshakes = 4
        configuration.maximumConnectionAge = maximumAge
        configuration.maximumAgeJitter = 0.2
        configuration.connectBackoff = Backoff(base: .milliseconds(100), cap: .seconds(2))
        configuration.healthCheckInterval = healthCheck
        configuration.handshakeHedgeDelay = nil
        configuration.maximumSharedPerConnection = sharedCap
        var machine = Machine(configuration: configuration)
        #expect(machine.targetVersionChanged("v1", now: self.t0) == (0..<minimum).map(Machine.Action.createConnection), sourceLocation: sourceLocation)
        for id in 0..<minimum {
            let actions = machine.connectionEstablished(id, version: "v1", now: self.t0, random: 0)
            #expect(actions.allSatisfy { if case .scheduleTimer = $0 { return true } else { return false } }, sourceLocation: sourceLocation)
        }
        return machine
    }

    func users(_ pool: Machine, _ id: Machine.ConnectionID) -> Int { pool.slots[id]?.sharedUsers ?? -1 }

    @Test("shared uses fill one connection up to the cap before the next takes any, without an action; the last one to leave makes it idle")
    func fillsOneConnectionFirst() {
        var pool = self.machine(minimum: 2, sharedCap: 3)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == 1, "connection 0 is at the cap")
        #expect(pool.sharedUseRequested() == 1)
        #expect(self.users(pool, 0) == 3 && self.users(pool, 1) == 2)
        #expect(pool.slots[0]?.state == .shared)
        // Others remain, nothing waits, nothing owed: only the count changes.
        do {
            let quick = pool.sharedUseEndedWithoutDecision(0)
            #expect(quick)
        }
        do {
            let quick = pool.sharedUseEndedWithoutDecision(0)
            #expect(quick)
        }
        do {
            let quick = pool.sharedUseEndedWithoutDecision(0)
            #expect(!quick, "the last user needs the full decision")
        }
        #expect(self.users(pool, 0) == 1)
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0 + .seconds(1)) == [])
        #expect(pool.slots[0]?.state == .idle(since: self.t0 + .seconds(1)))
        #expect(pool.sharedUseRequested() == 1, "the connection in use goes on filling while it has room")
        #expect(pool.sharedUseRequested() == 0, "connection 1 is at the cap: the idle one")
        #expect(self.users(pool, 0) == 1 && self.users(pool, 1) == 3)
        // A place freed on another connection does not move shared uses off the one being filled.
        #expect(pool.sharedUseEnded(1, needsRestore: false, now: self.t0) == [])
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == 1, "connection 0 is at the cap again: the one with the place")
        #expect(pool.sharedUseRequested() == nil, "both at the cap")
        #expect(self.users(pool, 0) == 3 && self.users(pool, 1) == 3)
        // An end for a connection with no shared user (or none at all) changes nothing.
        #expect(pool.sharedUseEnded(3, needsRestore: false, now: self.t0) == [])
        do {
            let quick = pool.sharedUseEndedWithoutDecision(3)
            #expect(!quick)
        }
    }

    @Test("a connection takes at most the cap; beyond it a shared request waits, is served when a place frees, and times out like a lease")
    func capAndWaiting() {
        var pool = self.machine(minimum: 1, maximum: 1, sharedCap: 2)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == nil)
        #expect(pool.leaseRequested(7, deadline: self.t0 + .seconds(5), shared: true, now: self.t0) == [.scheduleTimer(self.t0 + .seconds(5))])
        do {
            let quick = pool.sharedUseEndedWithoutDecision(0)
            #expect(!quick, "a waiter needs the decision")
        }
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0) == [.share(0, to: 7)])
        #expect(self.users(pool, 0) == 2)
        #expect(pool.leaseRequested(8, deadline: self.t0 + .seconds(2), shared: true, now: self.t0) == [.scheduleTimer(self.t0 + .seconds(2))])
        #expect(pool.timerFired(now: self.t0 + .seconds(2)) == [.failLease(8, self.leaseTimeout)])
        #expect(pool.waiterCount == 0)
        // A cancelled shared waiter leaves the queue.
        #expect(pool.leaseRequested(9, deadline: self.t0 + .seconds(5), shared: true, now: self.t0 + .seconds(2)) == [.scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.leaseCancelled(9, now: self.t0 + .seconds(2)) == [])
        #expect(pool.waiterCount == 0)
    }

    @Test("a shared request with no connection opens one and is served when it is established")
    func sharedWaiterOpensConnection() {
        var pool = self.machine(minimum: 0, maximum: 2)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), shared: true, now: self.t0) == [.createConnection(0), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.connectionEstablished(0, version: "v1", now: self.t0, random: 0) == [.share(0, to: 1)])
        #expect(pool.slots[0]?.state == .shared && self.users(pool, 0) == 1)
        // Idle timeouts apply to idle connections only.
        #expect(pool.timerFired(now: self.t0 + .seconds(61)) == [])
        #expect(pool.slots[0]?.state == .shared)
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0 + .seconds(61)) == [.scheduleTimer(self.t0 + .seconds(121))])
        #expect(pool.timerFired(now: self.t0 + .seconds(121)) == [.closeConnection(0)])
    }

    @Test("exclusive leases take idle connections only: a shared connection is drained for a waiting lease when the pool is at its maximum")
    func exclusiveLeaseDrainsSharedConnection() {
        var pool = self.machine(minimum: 1, maximum: 1, sharedCap: 4)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.slots[0]?.drained == true)
        #expect(pool.sharedUseRequested() == nil, "a drained connection takes no new shared users")
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0) == [])
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0) == [.lease(0, to: 1)])
        #expect(pool.slots[0]?.state == .leased && pool.slots[0]?.drained == false)
        #expect(pool.sharedUseRequested() == nil, "a leased connection takes no shared users")
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(5), shared: true, now: self.t0) == [])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [.share(0, to: 2)])
    }

    @Test("a resend after a dead connection goes to the connection with the fewest users, and the one being filled stays the same")
    func resendsSpreadOut() {
        var pool = self.machine(minimum: 3, sharedCap: 4)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested(spread: true) == 1)
        #expect(pool.sharedUseRequested(spread: true) == 2)
        #expect(pool.sharedUseRequested(spread: true) == 1, "1 and 2 have one user each: the lower ID")
        #expect(pool.sharedUseRequested() == 0, "ordinary commands go on filling connection 0")
        #expect(self.users(pool, 0) == 3 && self.users(pool, 1) == 2 && self.users(pool, 2) == 1)
    }

    @Test("a connection that dies under use has the idle ones checked before they take commands; one the pool closed, or a death while checks are off, does not")
    func deathChecksIdleConnections() {
        var pool = self.machine(minimum: 3, healthCheck: .seconds(30))
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.connectionClosed(0, now: self.t0) == [.healthCheck(1), .healthCheck(2), .createConnection(3)])
        #expect(pool.sharedUseRequested(spread: true) == nil, "both idle ones are being checked")
        #expect(pool.connectionReleased(1, reusable: true, now: self.t0) == [])
        #expect(pool.sharedUseRequested(spread: true) == 1)
        #expect(pool.connectionReleased(2, reusable: false, now: self.t0) == [.closeConnection(2), .createConnection(4)])
        #expect(pool.connectionClosed(2, now: self.t0) == [], "closed by the pool: nothing more to check")
        #expect(pool.connectionEstablished(3, version: "v1", now: self.t0, random: 0).allSatisfy { if case .scheduleTimer = $0 { true } else { false } })
        // Checks off: a death checks nothing.
        var unchecked = self.machine(minimum: 2)
        #expect(unchecked.sharedUseRequested() == 0)
        #expect(unchecked.connectionClosed(0, now: self.t0) == [.createConnection(2)])
        #expect(unchecked.sharedUseRequested() == 1)
    }

    @Test("a connection held back by the server is passed over while another has room, also for spread resends; when all are, a request below the maximum waits for a new connection")
    func heldBackConnectionsPassedOver() {
        var pool = self.machine(minimum: 3, sharedCap: 4)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested(isHeldBack: { $0 == 0 }) == 1, "the one being filled answers nothing")
        #expect(pool.sharedUseRequested(isHeldBack: { $0 == 0 }) == 1, "and the new one is filled from now on")
        #expect(pool.sharedUseRequested(spread: true, isHeldBack: { $0 == 2 }) == 0, "fewest users among those not held back")
        #expect(pool.sharedUseRequested(isHeldBack: { _ in true }) == nil, "all held back below the maximum: it waits for a new connection")
        #expect(self.users(pool, 0) == 2 && self.users(pool, 1) == 2 && self.users(pool, 2) == 0)
    }

    @Test("a waiting lease drains the shared connection with the fewest users, which frees soonest")
    func drainsTheLeastUsedConnection() {
        var pool = self.machine(minimum: 2, maximum: 2, sharedCap: 3)
        for _ in 0..<4 { _ = pool.sharedUseRequested() }
        #expect(self.users(pool, 0) == 3 && self.users(pool, 1) == 1)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.slots[0]?.drained == false && pool.slots[1]?.drained == true)
        #expect(pool.sharedUseEnded(1, needsRestore: false, now: self.t0) == [.lease(1, to: 1)])
    }

    @Test("below the maximum a waiting lease opens a connection instead of draining a shared one")
    func exclusiveLeaseOpensBelowMaximum() {
        var pool = self.machine(minimum: 1, maximum: 2)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.createConnection(1), .scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.slots[0]?.drained == false)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0, random: 0) == [.lease(1, to: 1)])
    }

    @Test("waiters of one kind do not hold back the other: an exclusive waiter ahead of a shared one, and the reverse")
    func mixedWaiters() {
        var pool = self.machine(minimum: 1, maximum: 1, sharedCap: 1)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.leaseRequested(1, deadline: self.t0 + .seconds(5), now: self.t0) == [.scheduleTimer(self.t0 + .seconds(5))])
        #expect(pool.leaseRequested(2, deadline: self.t0 + .seconds(5), shared: true, now: self.t0) == [])
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0) == [.lease(0, to: 1)])
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [.share(0, to: 2)])
        // Now a shared waiter first, then an exclusive one: the connection is full (cap 1) and shared.
        #expect(pool.leaseRequested(3, deadline: self.t0 + .seconds(5), shared: true, now: self.t0) == [])
        #expect(pool.leaseRequested(4, deadline: self.t0 + .seconds(5), now: self.t0) == [])
        #expect(pool.slots[0]?.drained == true)
        // Drained: the shared waiter cannot have it; the exclusive one gets it when it is free.
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0) == [.lease(0, to: 4)], "exclusive waiters are served first from idle connections")
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [.share(0, to: 3)])
        #expect(pool.waiterCount == 0)
    }

    @Test("a promotion re-authenticates a shared connection in place at once; it goes on taking shared users meanwhile")
    func reauthenticationInPlace() {
        var pool = self.machine(minimum: 1)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [.reauthenticate(0)])
        #expect(pool.slots[0]?.state == .reauthenticating)
        #expect(pool.sharedUseRequested() == 0, "commands written after the AUTH run on the new credentials")
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0) == [])
        #expect(pool.reauthenticated(0, version: "v2", now: self.t0) == [])
        #expect(pool.slots[0]?.state == .shared && self.users(pool, 0) == 2)
        #expect(pool.connectionsByVersion == ["v2": 1])
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0) == [])
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0) == [])
        #expect(pool.slots[0]?.state == .idle(since: self.t0))
    }

    @Test("shared users that all leave during a re-authentication leave it to the re-authentication, which makes the connection idle")
    func sharedUsersLeaveDuringReauthentication() {
        var pool = self.machine(minimum: 1)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [.reauthenticate(0)])
        #expect(pool.sharedUseEnded(0, needsRestore: true, now: self.t0) == [])
        #expect(pool.slots[0]?.state == .reauthenticating)
        // A reply was left owed: restored before it is idle.
        #expect(pool.reauthenticated(0, version: "v2", now: self.t0) == [.restore(0)])
        #expect(pool.slots[0]?.state == .leased)
        #expect(pool.connectionReleased(0, reusable: true, now: self.t0) == [])
        #expect(pool.slots[0]?.state == .idle(since: self.t0))
    }

    @Test("a re-authentication whose target moved on is done again before the shared connection counts as on the target")
    func reauthenticationTargetMovedOn() {
        var pool = self.machine(minimum: 1)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [.reauthenticate(0)])
        #expect(pool.targetVersionChanged("v3", now: self.t0) == [])
        #expect(pool.reauthenticated(0, version: "v2", now: self.t0) == [.reauthenticate(0)])
        #expect(pool.reauthenticated(0, version: "v3", now: self.t0) == [])
        #expect(pool.slots[0]?.state == .shared)
    }

    @Test("a failed re-authentication of a shared connection retires it: no new users, closed when the last leaves, replaced after the backoff")
    func reauthenticationFailedWithSharedUsers() {
        var pool = self.machine(minimum: 1)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [.reauthenticate(0)])
        #expect(pool.reauthenticationFailed(0, now: self.t0, random: 0) == [.scheduleTimer(self.t0 + .milliseconds(100))])
        #expect(pool.slots[0]?.state == .shared && pool.slots[0]?.closeWhenFree == true)
        #expect(pool.sharedUseRequested() == nil)
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0) == [.closeConnection(0)])
        #expect(pool.connectionClosed(0, now: self.t0) == [])
        #expect(pool.timerFired(now: self.t0 + .milliseconds(100)) == [.createConnection(1)])
    }

    @Test("a rejected re-authentication whose credentials were demoted keeps the shared connection serving")
    func reauthenticationRejectedAndKept() {
        var pool = self.machine(minimum: 1)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [.reauthenticate(0)])
        #expect(pool.targetVersionChanged("v1", now: self.t0) == [])
        #expect(pool.reauthenticationFailed(0, keepConnection: true, now: self.t0, random: 0) == [])
        #expect(pool.slots[0]?.state == .shared && pool.slots[0]?.closeWhenFree == false)
        #expect(pool.sharedUseRequested() == 0)
    }

    @Test("a shared user that left a reply owed: the connection serves on, and is restored when the last user leaves")
    func owedReplyRestoredWhenFree() {
        var pool = self.machine(minimum: 1)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseEnded(0, needsRestore: true, now: self.t0) == [])
        #expect(pool.sharedUseRequested() == 0, "an owed reply is dropped when it comes; the others stay matched")
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0) == [])
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0) == [.restore(0)])
        #expect(pool.slots[0]?.state == .leased)
        #expect(pool.sharedUseRequested() == nil, "not while it is being restored")
        #expect(pool.connectionReleased(0, reusable: false, now: self.t0) == [.closeConnection(0), .createConnection(1)])
    }

    @Test("retirement with shared users is make-before-break: the replacement opens, the old one takes no new users and closes when free")
    func retirementMakeBeforeBreak() {
        var pool = self.machine(minimum: 1, maximumAge: .seconds(100))
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.timerFired(now: self.t0 + .seconds(100)) == [.createConnection(1)])
        #expect(pool.sharedUseRequested() == 0, "it serves until the replacement is up")
        #expect(pool.connectionEstablished(1, version: "v1", now: self.t0 + .seconds(100), random: 0) == [.scheduleTimer(self.t0 + .seconds(200))])
        #expect(pool.slots[0]?.closeWhenFree == true)
        #expect(pool.sharedUseRequested() == 1)
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0 + .seconds(100)) == [])
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0 + .seconds(100)) == [.closeConnection(0)])
    }

    @Test("health checks skip connections in shared use; one that becomes idle is checked after the interval")
    func healthCheckSkipsShared() {
        var pool = self.machine(minimum: 1, healthCheck: .seconds(30))
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.timerFired(now: self.t0 + .seconds(30)) == [])
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0 + .seconds(30)) == [.scheduleTimer(self.t0 + .seconds(60))])
        #expect(pool.timerFired(now: self.t0 + .seconds(60)) == [.healthCheck(0)])
        #expect(pool.sharedUseRequested() == nil, "not while it is being checked")
    }

    @Test("a connection that goes idle while an earlier wake-up is scheduled decides nothing more; that wake-up asks for its health check")
    func idleAgainWithEarlierTimer() {
        var pool = self.machine(minimum: 1, healthCheck: .seconds(30))
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0 + .seconds(10)) == [])
        #expect(pool.slots[0]?.state == .idle(since: self.t0 + .seconds(10)))
        #expect(pool.timerFired(now: self.t0 + .seconds(30)) == [.scheduleTimer(self.t0 + .seconds(40))])
        #expect(pool.timerFired(now: self.t0 + .seconds(40)) == [.healthCheck(0)])
    }

    @Test("a killed shared connection is gone at once; its users' ends are ignored and the minimum is reopened")
    func killedSharedConnection() {
        var pool = self.machine(minimum: 1)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.connectionClosed(0, now: self.t0) == [.createConnection(1)])
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0) == [])
        do {
            let quick = pool.sharedUseEndedWithoutDecision(0)
            #expect(!quick)
        }
        #expect(pool.sharedUseRequested() == nil)
        #expect(pool.connectionsByVersion == [:])
    }

    @Test("shutdown: no new shared uses; a shared connection closes when its last user leaves, also one re-authenticating")
    func shutdownWithSharedUsers() {
        var pool = self.machine(minimum: 2, sharedCap: 1)
        #expect(pool.sharedUseRequested() == 0)
        #expect(pool.sharedUseRequested() == 1)
        #expect(pool.targetVersionChanged("v2", now: self.t0) == [.reauthenticate(0), .reauthenticate(1)])
        #expect(pool.reauthenticated(0, version: "v2", now: self.t0) == [])
        #expect(pool.shutdown() == [])
        #expect(pool.sharedUseRequested() == nil)
        #expect(pool.sharedUseEnded(0, needsRestore: false, now: self.t0) == [.closeConnection(0)])
        #expect(pool.sharedUseEnded(1, needsRestore: false, now: self.t0) == [])
        #expect(pool.reauthenticated(1, version: "v2", now: self.t0) == [.closeConnection(1)])
    }
}
