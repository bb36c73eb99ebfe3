import NIOCore
import Testing

@testable import RedisRotation

/// Hostile review of the pool's shared uses (issue 14): random event sequences against
/// `PoolStateMachine`, driven the way the client drives it (every action answered later by the event it
/// asks for), with the machine's invariants checked after every event:
///
/// - every connection the machine holds in a waiting state has an action outstanding that will end it
///   (`leased` by a lease, a restoration or a health check; `reauthenticating` by a re-authentication;
///   `connecting` by a connect; `closing` by a close), so nothing hangs;
/// - shared user counts are exactly the uses handed out and not yet ended, never above the cap, and
///   only on `shared` or `reauthenticating` connections; an exclusive lease never shares its connection;
/// - no waiter waits while something could serve it, and an exclusive waiter facing a full pool of
///   shared connections has one drained for it (else a steady shared load starves it);
/// - a waiter always has a timer that will time it out.
@Suite("Pool state machine: shared use, randomized review")
struct PoolSharingReviewStateMachineTests {
    typealias Machine = PoolStateMachine
    typealias ConnectionID = Machine.ConnectionID
    typealias LeaseID = Machine.LeaseID

    struct Random {
        var state: UInt64
        mutating func next() -> UInt64 {
            self.state &+= 0x9E37_79B9_7F4A_7C15
            var z = self.state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ bound: Int) -> Int { Int(self.next() % UInt64(bound)) }
        mutating func chance(_ percent: Int) -> Bool { self.below(100) < percent }
    }

    struct Driver {
        var pool: Machine
        var now = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
        var random: Random
        let leaseTimeout = TimeAmount.milliseconds(500)
        var versions = 1
        var connecting: Set<ConnectionID> = []
        var exclusive: [LeaseID: ConnectionID] = [:]
        /// Shared uses handed out and not ended: the connection of each.
        var shared: [ConnectionID] = []
        /// Restorations and health checks asked for: the pool holds these connections.
        var heldByPool: Set<ConnectionID> = []
        /// Re-authentications asked for, with the version they authenticate as.
        var reauthenticating: [ConnectionID: String] = [:]
        var closing: Set<ConnectionID> = []
        var waiting: [LeaseID: Bool] = [:]
        var nextLease: LeaseID = 0
        var timer: NIODeadline?
        var log: [String] = []
        /// How often each kind of action came, to show the sequences reach the paths under review.
        var seen: [String: Int] = [:]

        init(seed: UInt64, minimum: Int, maximum: Int, cap: Int, maximumAge: TimeAmount?, healthCheck: TimeAmount?) {
            var configuration = Machine.Configuration()
            configuration.minimumConnections = minimum
            configuration.maximumConnections = maximum
            configuration.maximumConcurrentHandshakes = 2
            configuration.maximumConnectionAge = maximumAge
            configuration.maximumAgeJitter = 0.2
            configuration.connectBackoff = Backoff(base: .milliseconds(10), cap: .milliseconds(200))
            configuration.healthCheckInterval = healthCheck
            configuration.idleTimeout = .seconds(2)
            configuration.handshakeHedgeDelay = nil
            configuration.maximumSharedPerConnection = cap
            self.pool = Machine(configuration: configuration)
            self.random = Random(state: seed)
            self.apply(self.pool.targetVersionChanged("v1", now: self.now), "target v1")
        }

        var target: String { "v\(self.versions)" }

        mutating func apply(_ actions: [Machine.Action], _ event: String) {
            self.log.append("\(event) -> \(actions)")
            if self.log.count > 40 { self.log.removeFirst() }
            for action in actions {
                self.seen["\(action)".prefix { $0 != "(" }.description, default: 0] += 1
                switch action {
                case .createConnection(let id):
                    self.connecting.insert(id)
                case .lease(let id, let lease):
                    precondition(self.waiting.removeValue(forKey: lease) == false, "lease \(lease) granted but not an exclusive waiter")
                    self.exclusive[lease] = id
                case .share(let id, let lease):
                    precondition(self.waiting.removeValue(forKey: lease) == true, "shared use \(lease) granted but not a shared waiter")
                    self.shared.append(id)
                case .restore(let id), .healthCheck(let id):
                    self.heldByPool.insert(id)
                case .failLease(let lease, _):
                    precondition(self.waiting.removeValue(forKey: lease) != nil, "lease \(lease) failed but not waiting")
                case .reauthenticate(let id):
                    self.reauthenticating[id] = self.target
                case .closeConnection(let id):
                    self.closing.insert(id)
                case .scheduleTimer(let deadline):
                    self.timer = deadline
                }
            }
        }

        mutating func step() {
            switch self.random.below(15) {
            case 0, 1, 2:
                if let id = self.pool.sharedUseRequested() {
                    self.shared.append(id)
                    self.log.append("fast shared use of \(id)")
                } else {
                    self.request(shared: true)
                }
            case 3:
                self.request(shared: false)
            case 4, 5, 6:
                guard !self.shared.isEmpty else { return }
                let id = self.shared.remove(at: self.random.below(self.shared.count))
                let needsRestore = self.random.chance(15)
                if !needsRestore && self.pool.sharedUseEndedWithoutDecision(id) {
                    self.log.append("fast end of a shared use of \(id)")
                } else {
                    self.apply(self.pool.sharedUseEnded(id, needsRestore: needsRestore, now: self.now), "shared use of \(id) ended, owes: \(needsRestore)")
                }
            case 7:
                guard let (lease, id) = self.exclusive.randomElement(using: &self.random) else { return }
                self.exclusive[lease] = nil
                let reusable = self.random.chance(85)
                self.apply(self.pool.connectionReleased(id, reusable: reusable, now: self.now), "lease \(lease) of \(id) ended, reusable: \(reusable)")
            case 8:
                guard let id = self.connecting.randomElement(using: &self.random) else { return }
                self.connecting.remove(id)
                if self.random.chance(85) {
                    // Sometimes opened with the version that was current when its handshake began.
                    let version = self.random.chance(80) ? self.target : "v\(max(1, self.versions - 1))"
                    self.apply(self.pool.connectionEstablished(id, version: version, now: self.now, random: 0.5), "\(id) established on \(version)")
                } else {
                    self.apply(
                        self.pool.connectionFailed(id, error: RedisError(code: .connectionFailed, message: "refused"), now: self.now, random: 0.5),
                        "\(id) failed"
                    )
                }
            case 9:
                guard let id = self.heldByPool.randomElement(using: &self.random) else { return }
                self.heldByPool.remove(id)
                let reusable = self.random.chance(85)
                self.apply(self.pool.connectionReleased(id, reusable: reusable, now: self.now), "restoration or check of \(id) ended, reusable: \(reusable)")
            case 10:
                guard let (id, version) = self.reauthenticating.randomElement(using: &self.random) else { return }
                self.reauthenticating[id] = nil
                if self.random.chance(80) {
                    self.apply(self.pool.reauthenticated(id, version: version, now: self.now), "\(id) re-authenticated as \(version)")
                } else {
                    let keep = self.random.chance(30)
                    self.apply(
                        self.pool.reauthenticationFailed(id, keepConnection: keep, now: self.now, random: 0.5),
                        "\(id) failed to re-authenticate, kept: \(keep)"
                    )
                }
            case 11:
                if let id = self.closing.randomElement(using: &self.random) {
                    self.closing.remove(id)
                    self.apply(self.pool.connectionClosed(id, now: self.now), "\(id) closed as asked")
                } else if self.random.chance(20), let id = self.pool.slots.filter({ $0.value.state != .connecting }).keys.randomElement(using: &self.random) {
                    // The server kills it; whoever uses it finds out later.
                    self.apply(self.pool.connectionClosed(id, now: self.now), "\(id) killed")
                }
            case 12:
                guard let lease = self.waiting.keys.randomElement(using: &self.random) else { return }
                self.waiting[lease] = nil
                self.apply(self.pool.leaseCancelled(lease, now: self.now), "waiter \(lease) cancelled")
            case 13:
                self.now = self.now + .milliseconds(Int64(self.random.below(120)))
                if let timer = self.timer, timer <= self.now {
                    self.timer = nil
                    self.apply(self.pool.timerFired(now: self.now), "timer at \(self.now.uptimeNanoseconds)")
                }
            default:
                if self.random.chance(20) {
                    self.versions += 1
                    self.apply(self.pool.targetVersionChanged(self.target, now: self.now), "target \(self.target)")
                }
            }
        }

        mutating func request(shared: Bool) {
            self.nextLease += 1
            let lease = self.nextLease
            self.waiting[lease] = shared
            self.apply(self.pool.leaseRequested(lease, deadline: self.now + self.leaseTimeout, shared: shared, now: self.now), "\(shared ? "shared" : "exclusive") request \(lease)")
        }

        /// The invariants; a description of the first one broken.
        func violation() -> String? {
            let cap = self.pool.configuration.maximumSharedPerConnection
            for (id, slot) in self.pool.slots.sorted(by: { $0.key < $1.key }) {
                let uses = self.shared.count { $0 == id }
                if slot.sharedUsers != uses { return "connection \(id) counts \(slot.sharedUsers) shared users, \(uses) hold it (\(slot))" }
                if slot.sharedUsers > cap { return "connection \(id) has \(slot.sharedUsers) shared users, above the cap \(cap)" }
                let leases = self.exclusive.values.count { $0 == id }
                switch slot.state {
                case .connecting:
                    if !self.connecting.contains(id) { return "connection \(id) is connecting, but no connect is outstanding" }
                case .idle:
                    if slot.sharedUsers != 0 || leases != 0 { return "idle connection \(id) is in use (\(slot))" }
                case .leased:
                    if slot.sharedUsers != 0 { return "leased connection \(id) has shared users" }
                    if leases + (self.heldByPool.contains(id) ? 1 : 0) != 1 {
                        return "connection \(id) is leased, held by \(leases) leases and \(self.heldByPool.contains(id) ? 1 : 0) restorations or checks"
                    }
                case .shared:
                    if leases != 0 { return "shared connection \(id) is also leased" }
                    if slot.sharedUsers == 0 { return "connection \(id) is shared without users (\(slot))" }
                case .reauthenticating:
                    if leases != 0 { return "re-authenticating connection \(id) is leased" }
                    if self.reauthenticating[id] == nil { return "connection \(id) is re-authenticating, but no re-authentication is outstanding" }
                case .closing:
                    if !self.closing.contains(id) { return "connection \(id) is closing, but no close is outstanding" }
                }
            }
            if self.pool.waiterCount != self.waiting.count { return "the pool has \(self.pool.waiterCount) waiters, \(self.waiting.count) wait" }
            if !self.waiting.isEmpty && self.timer == nil { return "\(self.waiting.count) waiters and no timer to time them out" }
            guard !self.pool.isShutDown else { return nil }
            let onTarget = { (slot: Machine.Slot) in slot.version == self.pool.targetVersion }
            if self.waiting.values.contains(false),
                let idle = self.pool.slots.first(where: { if case .idle = $0.value.state { return onTarget($0.value) } else { return false } })
            {
                return "an exclusive waiter waits while connection \(idle.key) is idle"
            }
            if self.waiting.values.contains(true),
                let room = self.pool.slots.first(where: { _, slot in
                    let usable: Bool
                    switch slot.state {
                    case .idle, .shared, .reauthenticating: usable = true
                    default: usable = false
                    }
                    return usable && slot.sharedUsers < cap && !slot.closeWhenFree && !slot.drained
                })
            {
                return "a shared waiter waits while connection \(room.key) has room"
            }
            let exclusiveWaiting = self.waiting.values.count { !$0 }
            if exclusiveWaiting > 0 {
                let opening = self.pool.slots.values.count { $0.state == .connecting || $0.state == .reauthenticating }
                let drained = self.pool.slots.values.count { $0.drained && $0.state == .shared }
                let drainable = self.pool.slots.values.count { $0.state == .shared && !$0.drained && !$0.closeWhenFree }
                if opening == 0 && drained == 0 && drainable > 0 && self.connecting.isEmpty {
                    return "\(exclusiveWaiting) exclusive waiters, no connection opening and none of \(drainable) shared connections drained for them"
                }
            }
            return nil
        }
    }

    @Test("a shared request older than an exclusive one is served first when an exclusive lease ends: waiters are served oldest first, whatever their kind")
    func sharedWaiterNotOvertakenByYoungerExclusiveWaiters() {
        var configuration = Machine.Configuration()
        configuration.minimumConnections = 1
        configuration.maximumConnections = 1
        configuration.handshakeHedgeDelay = nil
        var pool = Machine(configuration: configuration)
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
        #expect(pool.targetVersionChanged("v1", now: t0) == [.createConnection(0)])
        _ = pool.connectionEstablished(0, version: "v1", now: t0, random: 0)
        // A transaction holds the only connection; a GET waits (1), then another transaction (2).
        #expect(pool.leaseRequested(10, deadline: t0 + .seconds(5), now: t0).contains(.lease(0, to: 10)))
        _ = pool.leaseRequested(1, deadline: t0 + .seconds(5), shared: true, now: t0 + .milliseconds(1))
        _ = pool.leaseRequested(2, deadline: t0 + .seconds(5), now: t0 + .milliseconds(2))
        // The transaction ends: the GET waited longest.
        let actions = pool.connectionReleased(0, reusable: true, now: t0 + .milliseconds(3))
        #expect(actions.contains(.share(0, to: 1)), "the older shared waiter was passed over: \(actions)")
        // With transactions arriving steadily, a shared waiter is otherwise never served: each release goes
        // to the next exclusive waiter, however young (measured against a real server: 0 GETs in 2 s
        // next to ~2,900 transactions, every GET failing with leaseTimeout).
        var served = actions.contains(.share(0, to: 1))
        var next: LeaseID = 3
        var holder: LeaseID? = actions.compactMap { if case .lease(_, let lease) = $0 { return lease } else { return nil } }.first
        for step in 0..<20 where !served {
            let now = t0 + .milliseconds(Int64(4 + step))
            _ = pool.leaseRequested(next, deadline: now + .seconds(5), now: now)
            next += 1
            guard holder != nil else { break }
            let released = pool.connectionReleased(0, reusable: true, now: now)
            served = released.contains(.share(0, to: 1))
            holder = released.compactMap { if case .lease(_, let lease) = $0 { return lease } else { return nil } }.first
        }
        #expect(served, "the shared waiter was never served while exclusive requests kept coming")
    }

    @Test("an exclusive request one below the maximum while every new handshake hangs (each stalled one hedged by another): the shared connection is drained for it before its deadline")
    func exclusiveRequestWhileHandshakesHang() {
        var configuration = Machine.Configuration()
        configuration.minimumConnections = 1
        configuration.maximumConnections = 2
        configuration.maximumConcurrentHandshakes = 4
        configuration.handshakeHedgeDelay = .milliseconds(2500)
        var pool = Machine(configuration: configuration)
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
        _ = pool.targetVersionChanged("v1", now: t0)
        _ = pool.connectionEstablished(0, version: "v1", now: t0, random: 0)
        for _ in 0..<8 { _ = pool.sharedUseRequested() }
        // withConnection with the default lease deadline (5 s); the handshake it asks for never answers
        // (its own deadline, 5 s, passes after the lease's).
        #expect(pool.leaseRequested(100, deadline: t0 + .seconds(5), now: t0).contains(.createConnection(1)))
        var drainedOrLeased = false
        var handshakes: Set<ConnectionID> = [1]
        for ms in stride(from: Int64(100), to: 5000, by: 100) where !drainedOrLeased {
            let actions = pool.timerFired(now: t0 + .milliseconds(ms))
            for case .createConnection(let id) in actions { handshakes.insert(id) }
            drainedOrLeased = pool.slots[0]?.drained == true || actions.contains(.lease(0, to: 100))
        }
        // Before sharing, the lease got connection 0 when its lease ended; now it is never drained: every
        // stalled handshake is replaced by a hedged one, and handshakes in flight count as serving the
        // waiter (drainForExclusiveWaiters(connecting: connecting + opened, ...)).
        #expect(drainedOrLeased, "connection 0 carried shared users all along and was never drained; handshakes opened: \(handshakes.sorted())")
    }

    @Test(
        "random sequences of shared and exclusive requests, ends, connects, kills, restorations, re-authentications, promotions and timers keep the pool's invariants",
        arguments: [(1, 1, 1), (0, 1, 2), (1, 2, 1), (2, 3, 4), (1, 4, 32)]
    )
    func randomizedInvariants(minimum: Int, maximum: Int, cap: Int) async {
        var seen: [String: Int] = [:]
        var drained = 0
        defer {
            // The sequences reach the paths under review (not a property of the machine: of the test).
            for kind in ["share", "lease", "restore", "reauthenticate", "failLease", "closeConnection"] {
                #expect(seen[kind, default: 0] > 0, "no \(kind) action in any sequence")
            }
            if maximum > 1 || cap > 1 { #expect(drained > 0, "no connection was ever drained") }
        }
        for seed in UInt64(1)...50 {
            var driver = Driver(
                seed: seed &* 7919 &+ UInt64(maximum * 100 + cap),
                minimum: minimum,
                maximum: maximum,
                cap: cap,
                maximumAge: seed % 3 == 0 ? .milliseconds(700) : nil,
                healthCheck: seed % 4 == 0 ? .milliseconds(300) : nil
            )
            defer { seen.merge(driver.seen, uniquingKeysWith: +) }
            // CPU-bound: yield now and then, so that tests running alongside on the cooperative pool are not
            // starved (they time out on leases otherwise).
            await Task.yield()
            for index in 0..<500 {
                if index % 50 == 0 { await Task.yield() }
                driver.step()
                drained += driver.pool.slots.values.count { $0.drained }
                if let violation = driver.violation() {
                    Issue.record("seed \(seed), step \(index): \(violation)\n\(driver.log.suffix(12).joined(separator: "\n"))")
                    return
                }
            }
        }
    }
}

extension PoolSharingReviewStateMachineTests.Random: RandomNumberGenerator {}
