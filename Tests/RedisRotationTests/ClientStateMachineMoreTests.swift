import Foundation
import NIOCore
import Testing

@testable import RedisRotation

/// Findings of the review of the move of every `RedisClient` decision into `ClientStateMachine`: the
/// timer before `run()`, probes after shutdown, and random interleavings with the whole pool switched
/// on (minimum size, health checks, maximum age, hedged handshakes, TLS reloads, stale timers, double
/// close reports, a shutdown), then a settle phase.
@Suite("Client state machine: more cases")
struct ClientStateMachineMoreTests {
    typealias Machine = ClientStateMachine
    typealias Action = ClientStateMachine.Action

    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    let d0 = Date(timeIntervalSince1970: 1_800_000_000)
    let v1 = RedisCredentials(username: "u", password: "one", version: "v1")
    let v2 = RedisCredentials(username: "u", password: "two", version: "v2")

    func at(_ offset: TimeAmount = .zero, random: Double = 0) -> Machine.Moment {
        .init(now: self.t0 + offset, date: self.d0.addingTimeInterval(Double(offset.nanoseconds) / 1e9), random: random)
    }

    func configuration() -> Machine.Configuration {
        var configuration = Machine.Configuration()
        configuration.pool.minimumConnections = 1
        configuration.pool.maximumConnections = 2
        configuration.pool.maximumConcurrentHandshakes = 2
        configuration.pool.maximumConnectionAge = nil
        configuration.pool.healthCheckInterval = .seconds(30)
        configuration.pool.handshakeHedgeDelay = nil
        configuration.pool.connectBackoff = Backoff(base: .milliseconds(100), cap: .seconds(2))
        return configuration
    }

    /// The timers a shell following the machine's actions has pending: at most one.
    static func timer(after actions: [Action], previous: NIODeadline?) -> NIODeadline? {
        var timer = previous
        for action in actions {
            switch action {
            case .scheduleTimer(let deadline): timer = deadline
            case .cancelTimer: timer = nil
            default: break
            }
        }
        return timer
    }

    /// `RedisClient.lease()` does not require `run()` to have started (nor does `send`): a lease made
    /// before `run()` schedules the one timer for its deadline. That timer firing before `run()` used to
    /// be ignored while `scheduledTimer` still pointed at it, so `withTimer` in `start` deduped against a
    /// timer that no longer existed and nothing was retried. And a client whose `run()` never starts
    /// kept its commands waiting for ever. Now the lease fails at its deadline, saying the client is not
    /// running, and `start` schedules its own deadlines afresh.
    @Test("a lease deadline before run(): the lease fails at it with leaseTimeout naming run(); run() started later asks for its timers again, and the connection is retried")
    func timerFiredBeforeStart() {
        var machine = Machine(configuration: self.configuration(), tls: nil)
        let lease = machine.registerLease()
        var timer: NIODeadline?
        let waiting = machine.leaseWaiting(lease, deadline: self.t0 + .seconds(5), at: self.at())
        // No credentials yet: the connection is dialled when they arrive.
        #expect(waiting == [.scheduleTimer(self.t0 + .seconds(5))])
        timer = Self.timer(after: waiting, previous: timer)

        // The shell's timer fires at its deadline; run() has not begun: the lease fails, naming run().
        let fired = machine.timerFired(at: self.at(.seconds(5)))
        let failure = fired.compactMap { action -> RedisError? in
            if case .failLease(lease, .error(let error)) = action { return error }
            return nil
        }
        #expect(failure.count == 1, "\(fired)")
        #expect(failure.first?.code == .leaseTimeout)
        #expect(failure.first?.message.contains("RedisClient.run()") == true, "\(failure)")
        #expect(machine.leaseRequestCount == 0)
        timer = Self.timer(after: fired, previous: nil)

        // run() begins 1 s later; the source delivers v1; the connection attempt fails (server down).
        var actions = machine.start(at: self.at(.seconds(6)))
        actions += machine.sourceReported(self.v1, at: self.at(.seconds(6)))
        actions += machine.connectionFailed(0, error: RedisError(code: .connectionFailed, message: "refused"), at: self.at(.seconds(6)))
        timer = Self.timer(after: actions, previous: timer)

        // Something must wake the client up: a connect retry is due after the backoff, the expiry check
        // within the hour.
        #expect(timer != nil, "no timer is pending after run() started; actions: \(actions)")
        // A lease now times out the usual way, naming the failed connect, not run().
        let late = machine.registerLease()
        let more = machine.leaseWaiting(late, deadline: self.t0 + .seconds(7), at: self.at(.seconds(6)))
        #expect(Self.timer(after: more, previous: timer) != nil)
        let timedOut = machine.timerFired(at: self.at(.seconds(7))).compactMap { action -> RedisError? in
            if case .failLease(late, .error(let error)) = action { return error }
            return nil
        }
        #expect(timedOut.first?.code == .leaseTimeout)
        #expect(timedOut.first?.message.contains("run()") == false, "\(timedOut)")
    }

    @Test("before run(), only lease deadlines are timed: several leases fail each at its own deadline, and nothing else fires")
    func leaseDeadlinesBeforeStart() {
        var machine = Machine(configuration: self.configuration(), tls: nil)
        let first = machine.registerLease()
        let second = machine.registerLease()
        var actions = machine.leaseWaiting(first, deadline: self.t0 + .seconds(2), at: self.at())
        actions += machine.leaseWaiting(second, deadline: self.t0 + .seconds(4), at: self.at())
        #expect(Self.timer(after: actions, previous: nil) == self.t0 + .seconds(2))
        let atTwo = machine.timerFired(at: self.at(.seconds(2)))
        #expect(atTwo.contains { if case .failLease(first, .error) = $0 { return true } else { return false } }, "\(atTwo)")
        #expect(!atTwo.contains { if case .failLease(second, _) = $0 { return true } else { return false } }, "\(atTwo)")
        #expect(Self.timer(after: atTwo, previous: nil) == self.t0 + .seconds(4), "\(atTwo)")
        let atFour = machine.timerFired(at: self.at(.seconds(4)))
        #expect(atFour.contains { if case .failLease(second, .error) = $0 { return true } else { return false } }, "\(atFour)")
        #expect(machine.leaseRequestCount == 0)
    }
}

extension ClientStateMachineMoreTests {
    /// `shutdown()` stops the machine, then awaits every connection's close before it finishes the work
    /// stream (and `run()` cancels the source and TLS watcher tasks only after that). A source change or
    /// a `reloadCredentials()` in that window still asks for a probe: the shell yields it and `run()`
    /// performs it, opening a new connection to the server while the client shuts down.
    @Test("a stopped client starts no probe")
    func noProbeAfterShutdown() {
        var machine = Machine(configuration: self.configuration(), tls: nil)
        #expect(machine.start(at: self.at()) == [.recordExpiryGauges([]), .scheduleTimer(self.t0 + .seconds(3600) + .milliseconds(1))])
        // The minimum connection opens; it is still opening at shutdown (closed when established).
        #expect(machine.sourceReported(self.v1, at: self.at()) == [.connect(0)])
        #expect(machine.shutdown(at: self.at()) == [.cancelTimer])
        let changed = machine.sourceReported(self.v2, at: self.at())
        #expect(!changed.contains(.probe(self.v2)), "\(changed)")
    }
}

/// Random interleavings with what the shipped random test leaves out: a pool with a minimum, health
/// checks, maximum age, hedged handshakes, TLS reloads, stale timer firings, double close reports and
/// a shutdown in the middle.
extension ClientStateMachineMoreTests {
    typealias Shell = ClientStateMachineTests.Shell

    @Test("random interleavings with the whole pool switched on", arguments: 0..<4)
    func richInterleavings(batch: Int) {
        for seed in UInt64(1000 + batch * 100)..<UInt64(1000 + batch * 100 + 100) {
            let problems = self.rich(seed: seed)
            #expect(problems.isEmpty, "seed \(seed): \(problems.prefix(5))")
            if !problems.isEmpty { return }
        }
    }

    @Test("random interleavings with events before run() starts", arguments: 0..<2)
    func richInterleavingsBeforeStart(batch: Int) {
        for seed in UInt64(5000 + batch * 100)..<UInt64(5000 + batch * 100 + 100) {
            let problems = self.rich(seed: seed, preStart: 1 + Int(seed % 40))
            #expect(problems.isEmpty, "seed \(seed): \(problems.prefix(5))")
            if !problems.isEmpty { return }
        }
    }

    /// `preStart`: that many random events (leases, cancellations, due and stale timers, time passing)
    /// happen before `run()` starts.
    func rich(seed: UInt64, preStart: Int = 0) -> [String] {
        var random = SplitMix64(seed: seed)
        var configuration = Machine.Configuration()
        configuration.pool.minimumConnections = 1
        configuration.pool.maximumConnections = 3
        configuration.pool.maximumConcurrentHandshakes = 2
        configuration.pool.idleTimeout = .seconds(2)
        configuration.pool.maximumConnectionAge = .seconds(5)
        configuration.pool.healthCheckInterval = .seconds(1)
        configuration.pool.handshakeHedgeDelay = .milliseconds(500)
        configuration.pool.connectBackoff = Backoff(base: .milliseconds(100), cap: .seconds(2))
        configuration.credentials.probeBackoff = Backoff(base: .milliseconds(100), cap: .seconds(1))
        configuration.credentials.maximumProbeAttempts = 3
        configuration.credentials.previousGracePeriod = .seconds(3)
        configuration.tlsRolloverWindow = .seconds(2)
        var generation: UInt64 = 1
        var machine = Machine(configuration: configuration, tls: .init(generation: 1, trustAnchors: [], clientCertificate: nil))
        var shell = Shell()
        var elapsed = TimeAmount.zero
        var credentials = [self.v1, self.v2]
        var stopped = false
        var generations: [Int: UInt64] = [:]
        func moment() -> Machine.Moment { self.at(elapsed, random: Double.random(in: 0..<1, using: &random)) }
        // A lease request, a quarter of them cancelled before they wait (before and after run()).
        func requestLease() -> [Action] {
            let lease = machine.registerLease()
            shell.registered.insert(lease)
            if Int.random(in: 0..<4, using: &random) == 0 {
                var actions = machine.leaseCancelled(lease, at: moment())
                shell.waiting[lease] = moment().now + .seconds(2)
                actions += machine.leaseWaiting(lease, deadline: moment().now + .seconds(2), at: moment())
                return actions
            }
            shell.waiting[lease] = moment().now + .milliseconds(Int64.random(in: 100...3000, using: &random))
            return machine.leaseWaiting(lease, deadline: shell.waiting[lease]!, at: moment())
        }
        func cancelALease() -> [Action] {
            guard let lease = shell.waiting.keys.sorted().randomElement(using: &random) else { return [] }
            return machine.leaseCancelled(lease, at: moment())
        }
        for step in 0..<preStart {
            var actions: [Action] = []
            switch Int.random(in: 0..<6, using: &random) {
            case 0, 1:
                actions = requestLease()
            case 2:
                actions = cancelALease()
            case 3:
                actions = machine.timerFired(at: moment())
            default:
                elapsed = elapsed + .milliseconds(Int64.random(in: 1...400, using: &random))
                if let timer = shell.timer, timer <= moment().now {
                    actions = machine.timerFired(at: moment())
                }
            }
            for action in actions {
                switch action {
                case .grantLease, .reauthenticate, .healthCheck, .restore, .probe, .closeConnection:
                    shell.problems.append("pre-start step \(step): \(action) before run()")
                default: break
                }
            }
            shell.apply(actions, step: step - preStart)
            if let problem = shell.checkTimer(step: step - preStart) { shell.problems.append("before run(): \(problem)") }
            if !shell.problems.isEmpty { return shell.problems }
        }
        shell.apply(machine.start(at: moment()), step: -1)
        shell.apply(machine.sourceReported(self.v1, at: moment()), step: -1)

        for step in 0..<400 {
            var actions: [Action] = []
            switch Int.random(in: 0..<18, using: &random) {
            case 0, 1:
                actions = requestLease()
            case 2:
                actions = cancelALease()
            case 3, 4:
                if let id = shell.connecting.sorted().randomElement(using: &random) {
                    shell.connecting.remove(id)
                    switch Int.random(in: 0..<5, using: &random) {
                    case 0:
                        actions = machine.connectionFailed(id, error: RedisError(code: .connectionFailed, message: "refused"), at: moment())
                    case 1:
                        actions = machine.connectionFailed(id, error: RedisError(code: .credentialsRejected, message: "rejected"), at: moment())
                    default:
                        let rejected = Bool.random(using: &random) ? [credentials[0]] : []
                        let candidate = machine.nextCandidate(after: rejected) ?? self.v1
                        let made = Bool.random(using: &random) ? generation : max(1, generation - 1)
                        switch machine.connectionEstablished(
                            id, credentials: candidate, rejected: rejected, generation: made, peerCertificate: nil, clientCertificate: nil, at: moment()
                        ) {
                        case .adopted(let adopted):
                            shell.established.insert(id)
                            generations[id] = made
                            actions = adopted
                        case .refused:
                            if !stopped { shell.problems.append("step \(step): \(id) refused while running") }
                        }
                    }
                }
            case 5, 6:
                if let (id, _) = shell.leasedBy.sorted(by: { $0.key < $1.key }).randomElement(using: &random) {
                    shell.leasedBy[id] = nil
                    let outcome = [Machine.LeaseOutcome.clean, .clean, .needsRestore, .unusable].randomElement(using: &random)!
                    actions = machine.leaseEnded(id, outcome: shell.established.contains(id) ? outcome : .unusable, at: moment())
                }
            case 7:
                if let id = shell.working.sorted().randomElement(using: &random) {
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
                if let id = shell.closing.sorted().randomElement(using: &random) ?? (Int.random(in: 0..<4, using: &random) == 0 ? shell.established.sorted().randomElement(using: &random) : nil) {
                    shell.closing.remove(id)
                    shell.established.remove(id)
                    shell.working.remove(id)
                    shell.reauthenticating[id] = nil
                    actions = machine.connectionClosed(id, at: moment())
                    // The watch reports it again.
                    if Bool.random(using: &random) {
                        let again = machine.connectionClosed(id, at: moment())
                        if !again.allSatisfy({ if case .scheduleTimer = $0 { return true } else { return false } }) {
                            shell.problems.append("step \(step): a second close report of \(id) did something: \(again)")
                        }
                        actions += again
                    }
                }
            case 9:
                if !shell.probing.isEmpty {
                    let credentials = shell.probing.removeFirst()
                    let result = [CredentialStateMachine.ProbeResult.accepted, .rejected, .inconclusive].randomElement(using: &random)!
                    actions = machine.probeCompleted(credentials, result: result, at: moment())
                }
            case 10:
                if Int.random(in: 0..<6, using: &random) == 0 {
                    credentials.swapAt(0, 1)
                    actions = machine.sourceReported(credentials[0], at: moment())
                }
            case 11:
                if Int.random(in: 0..<10, using: &random) == 0 {
                    generation += 1
                    actions = machine.tlsMaterialAccepted(.init(generation: generation, trustAnchors: [], clientCertificate: nil), at: moment())
                }
            case 12:
                // A stale timer (replaced, its cancellation too late) fires now.
                actions = machine.timerFired(at: moment())
            case 13:
                if !stopped && step > 300 && Int.random(in: 0..<10, using: &random) == 0 {
                    stopped = true
                    actions = machine.shutdown(at: moment())
                }
            default:
                elapsed = elapsed + .milliseconds(Int64.random(in: 1...400, using: &random))
                if let timer = shell.timer, timer <= moment().now {
                    actions = machine.timerFired(at: moment())
                }
            }
            for case .reauthenticate(let id, _) in actions { shell.working.insert(id) }
            for case .closeConnection(let id) in actions where !shell.established.contains(id) {
                shell.problems.append("step \(step): close \(id), not established")
            }
            if stopped {
                for action in actions {
                    switch action {
                    case .connect, .grantLease, .reauthenticate, .healthCheck, .scheduleTimer:
                        shell.problems.append("step \(step): \(action) after shutdown")
                    default: break
                    }
                }
            }
            shell.apply(actions, step: step)
            if !stopped, let problem = shell.checkTimer(step: step) { shell.problems.append(problem) }
            if !shell.problems.isEmpty { return shell.problems }
        }

        elapsed = elapsed + .seconds(10)
        for step in 400..<420 {
            guard let timer = shell.timer, timer <= moment().now else { break }
            shell.apply(machine.timerFired(at: moment()), step: step)
        }
        if !shell.waiting.isEmpty { shell.problems.append("leases still waiting after every deadline: \(shell.waiting.keys.sorted())") }
        if machine.leaseRequestCount != 0 { shell.problems.append("the machine still holds \(machine.leaseRequestCount) lease requests") }
        if stopped || !shell.problems.isEmpty { return shell.problems }

        // Settle: every piece of work succeeds, leases end clean, time passes: the pool must converge.
        for step in 420..<720 {
            var actions: [Action] = []
            let draining = step >= 620
            // Each kind of pending work in turn, oldest first: none starves the others.
            var done = false
            for offset in 0..<5 where !done {
                switch (step + offset) % 5 {
                case 0:
                    guard let id = shell.connecting.min() else { continue }
                    shell.connecting.remove(id)
                    let candidate = machine.nextCandidate(after: []) ?? self.v1
                    if case .adopted(let adopted) = machine.connectionEstablished(
                        id, credentials: candidate, rejected: [], generation: generation, peerCertificate: nil, clientCertificate: nil, at: moment()
                    ) {
                        shell.established.insert(id)
                        actions = adopted
                    }
                case 1:
                    guard let id = shell.working.min() else { continue }
                    shell.working.remove(id)
                    if let credentials = shell.reauthenticating.removeValue(forKey: id) {
                        actions = machine.reauthenticated(id, credentials: credentials, at: moment())
                    } else {
                        actions = machine.connectionReleased(id, reusable: true, at: moment())
                    }
                case 2:
                    guard let id = shell.closing.min() else { continue }
                    shell.closing.remove(id)
                    shell.established.remove(id)
                    actions = machine.connectionClosed(id, at: moment())
                case 3:
                    guard let id = shell.leasedBy.keys.min() else { continue }
                    shell.leasedBy[id] = nil
                    actions = machine.leaseEnded(id, outcome: .clean, at: moment())
                default:
                    guard !shell.probing.isEmpty else { continue }
                    actions = machine.probeCompleted(shell.probing.removeFirst(), result: .accepted, at: moment())
                }
                done = true
            }
            if !done {
                if draining { break }
                elapsed = elapsed + .milliseconds(100)
                if let timer = shell.timer, timer <= moment().now { actions = machine.timerFired(at: moment()) }
            }
            for case .reauthenticate(let id, _) in actions { shell.working.insert(id) }
            shell.apply(actions, step: step)
            if !shell.problems.isEmpty { return shell.problems }
        }
        let target = machine.credentials.current?.version
        let slots = machine.pool.slots
        let stuck = slots.filter { $0.value.version != target || $0.value.generation != generation }
        if !stuck.isEmpty {
            shell.problems.append("after settling, target \(target ?? "-") generation \(generation): \(stuck.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value.state) \($0.value.version ?? "-") g\($0.value.generation.map(String.init) ?? "-")" }); shell working \(shell.working) connecting \(shell.connecting) closing \(shell.closing)")
        }
        if Set(slots.keys) != shell.established {
            shell.problems.append("pool slots \(slots.keys.sorted()) but the shell holds \(shell.established.sorted())")
        }
        return shell.problems
    }
}

extension ClientStateMachineMoreTests {
    @Test("connections held by long leases through a TLS rollover get one replacement each, not a stream of surplus connections")
    func noChurnUnderLongLeases() {
        var configuration = self.configuration()
        configuration.pool.minimumConnections = 1
        configuration.pool.maximumConnections = 3
        configuration.pool.maximumConcurrentHandshakes = 2
        configuration.pool.handshakeHedgeDelay = .milliseconds(500)
        configuration.tlsRolloverWindow = .seconds(2)
        var machine = Machine(configuration: configuration, tls: .init(generation: 1, trustAnchors: [], clientCertificate: nil))
        var connecting: [Int] = []
        func collect(_ actions: [Action]) { for case .connect(let id) in actions { connecting.append(id) } }
        collect(machine.start(at: self.at()))
        collect(machine.sourceReported(self.v1, at: self.at()))
        // Three leases held for good (blocking commands, say).
        for _ in 0..<3 {
            let lease = machine.registerLease()
            collect(machine.leaseWaiting(lease, deadline: self.t0 + .seconds(3600), at: self.at()))
        }
        var established = 0
        var elapsed = TimeAmount.zero
        for step in 0..<200 {
            if !connecting.isEmpty {
                let id = connecting.removeFirst()
                if case .adopted(let actions) = machine.connectionEstablished(
                    id, credentials: self.v1, rejected: [], generation: step < 20 ? 1 : 2, peerCertificate: nil, clientCertificate: nil, at: self.at(elapsed)
                ) {
                    established += 1
                    collect(actions)
                    for case .closeConnection(let closed) in actions { collect(machine.connectionClosed(closed, at: self.at(elapsed))) }
                }
            } else {
                elapsed = elapsed + .milliseconds(100)
                collect(machine.timerFired(at: self.at(elapsed)))
            }
            if step == 20 {
                collect(machine.tlsMaterialAccepted(.init(generation: 2, trustAnchors: [], clientCertificate: nil), at: self.at(elapsed)))
                // And more work arrives while every connection is held.
                for _ in 0..<2 {
                    let lease = machine.registerLease()
                    collect(machine.leaseWaiting(lease, deadline: self.t0 + .seconds(3600), at: self.at(elapsed)))
                }
            }
        }
        // Three for the leases, at most one replacement each for the rollover.
        #expect(established <= 6, "\(established) connections opened; slots: \(machine.pool.slots.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value.state) g\($0.value.generation ?? 0) closeWhenFree \($0.value.closeWhenFree)" })")
    }
}
