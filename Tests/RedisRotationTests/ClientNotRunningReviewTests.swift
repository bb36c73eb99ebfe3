import NIOCore
import Testing

@testable import RedisRotation

/// Hostile review of "a client whose run() never starts fails its commands at their lease deadline":
/// before `run()`, the pool's timer now fires, and with it everything the pool does at a timer.
extension ClientStateMachineMoreTests {
    /// One connection at most, hedged after a second, with room for four handshakes at once.
    func hedgingConfiguration() -> Machine.Configuration {
        var configuration = Machine.Configuration()
        configuration.pool.minimumConnections = 0
        configuration.pool.maximumConnections = 1
        configuration.pool.maximumConcurrentHandshakes = 4
        configuration.pool.handshakeHedgeDelay = .seconds(1)
        return configuration
    }

    /// Fires every timer that falls due from `timer` up to `end` (at most 50), as a shell would; returns
    /// the actions of all of them.
    func fireTimers(of machine: inout Machine, from timer: NIODeadline?, until end: NIODeadline) -> [Action] {
        var timer = timer
        var all: [Action] = []
        var fired = 0
        while let due = timer, due <= end, fired < 50 {
            fired += 1
            let actions = machine.timerFired(at: .init(now: due, date: self.d0, random: 0))
            all += actions
            timer = Self.timer(after: actions, previous: nil)
        }
        return all
    }

    /// Before `run()` no credentials are known, so the slot the pool opens for a waiting lease does not
    /// connect: it waits for `start`. The pool's hedge then sees a handshake "stalled" past the hedge
    /// delay, and each pre-run timer at a hedge deadline opens one more slot, up to the maximum plus
    /// the concurrent handshakes. When `run()` starts, all of them connect at once: one command sent a
    /// few seconds before `run()` opens a burst of connections, well over `maximumConnections`.
    @Test("a lease waiting before run(): the pre-run timers open no further connections; run() opens one for it, as without a timer")
    func noHedgingBeforeRun() {
        var machine = Machine(configuration: self.hedgingConfiguration(), tls: nil)
        let lease = machine.registerLease()
        let timer = Self.timer(after: machine.leaseWaiting(lease, deadline: self.t0 + .seconds(20), at: self.at()), previous: nil)
        // The shell fires every timer that falls due before run() starts, 5 s later.
        let fired = self.fireTimers(of: &machine, from: timer, until: self.t0 + .seconds(5))
        #expect(!fired.contains { if case .connect = $0 { return true } else { return false } }, "\(fired)")
        #expect(machine.pool.slots.count <= 1, "slots opened before run(): \(machine.pool.slots.keys.sorted())")
        var actions = machine.start(at: self.at(.seconds(5)))
        actions += machine.sourceReported(self.v1, at: self.at(.seconds(5)))
        let connects = actions.filter { if case .connect = $0 { return true } else { return false } }
        // Without the pre-run timer, the first timer after start hedges the slot once: two at most.
        #expect(connects.count <= 2, "run() opens \(connects.count) connections at once for one command (maximum 1): \(connects)")
        #expect(machine.leaseRequestCount == 1)
    }

    /// The same with `run()` started and a credential provider still fetching: the slot waits for the
    /// credentials, not for a handshake, and is not hedged either.
    @Test("a lease waiting while the credential provider fetches: no hedged slots; the first credentials open one connection for it")
    func noHedgingWhileCredentialsFetch() {
        var machine = Machine(configuration: self.hedgingConfiguration(), tls: nil)
        var timer = Self.timer(after: machine.start(at: self.at()), previous: nil)
        let lease = machine.registerLease()
        timer = Self.timer(after: machine.leaseWaiting(lease, deadline: self.t0 + .seconds(20), at: self.at()), previous: timer)
        _ = self.fireTimers(of: &machine, from: timer, until: self.t0 + .seconds(5))
        let actions = machine.sourceReported(self.v1, at: self.at(.seconds(5)))
        let connects = actions.filter { if case .connect = $0 { return true } else { return false } }
        #expect(connects.count == 1, "the first credentials open \(connects.count) connections at once for one command (maximum 1): \(connects)")
    }
}
