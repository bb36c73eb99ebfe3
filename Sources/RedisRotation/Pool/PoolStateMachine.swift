import NIOCore

/// The pool's decisions: which connection serves which lease, when to open, re-authenticate, retire
/// or close a connection, and when to wake up. Pure: no I/O, no clock reads, no randomness of its own
/// (time and random numbers come in with the events), so tests drive it with a manual clock.
///
/// A connection serves either one exclusive lease (transactions, blocking commands, `withConnection`)
/// or any number of shared users up to `maximumSharedPerConnection` (ordinary commands, pipelined on
/// the connection, see "Pool multiplexing" in docs/DECISIONS.md), never both. A connection whose
/// credential version differs from the target re-authenticates in place: at once when idle or shared
/// (the re-authentication goes into the pipeline in order, and shared users go on using the connection),
/// on release when leased (so a transaction within a lease finishes first).
///
/// Retiring a connection (maximum age, a new TLS generation, a certificate about to expire) is
/// make-before-break: a replacement opens first while the old connection keeps serving, and the old
/// one closes once the replacement is up and no lease uses it. If no replacement can be opened (the
/// server is down), the old connection simply goes on serving.
///
/// Connection states: `connecting` (can move to: idle, gone), `idle` (can move to: leased, shared,
/// reauthenticating, closing), `leased` (can move to: idle, reauthenticating, closing, gone), `shared`
/// (at least one shared user; can move to: idle, leased for a restoration, reauthenticating, closing,
/// gone), `reauthenticating` (shared users allowed; can move to: idle, shared, closing, gone), `closing`
/// (can move to: gone).
struct PoolStateMachine {
    typealias ConnectionID = Int
    typealias LeaseID = UInt64

    struct Configuration: Hashable {
        /// Connections kept open even when idle.
        var minimumConnections = 1
        /// Connections open at most (including those connecting).
        var maximumConnections = 16
        /// Handshakes in progress at most: a pool killed at once reconnects a few at a time.
        var maximumConcurrentHandshakes = 4
        /// Idle connections above the minimum close after this long unused.
        var idleTimeout: TimeAmount = .seconds(60)
        /// Connections are replaced after this age (jittered by `maximumAgeJitter`); `nil` never.
        var maximumConnectionAge: TimeAmount? = .minutes(30)
        /// The fraction of `maximumConnectionAge` by which each connection's age limit is shortened at
        /// random, so connections opened together do not retire together.
        var maximumAgeJitter = 0.2
        /// Delay between connection attempts after failures.
        var connectBackoff = Backoff(base: .milliseconds(20), cap: .seconds(5))
        /// Idle connections are checked (`PING`) after this long unused; `nil` never. Catches peers that
        /// vanished without closing the connection.
        var healthCheckInterval: TimeAmount? = .seconds(30)
        /// A handshake still running after this long while leases wait stops counting against
        /// `maximumConcurrentHandshakes` (and against `maximumConnections`, by at most that many): a
        /// server that accepted the connection and went silent (a blackhole, a stopped process) does not
        /// hold back new attempts until the handshake deadline once it answers again. `nil` never.
        var handshakeHedgeDelay: TimeAmount? = .seconds(1)
        /// Whether a server that cannot be reached (connection refused, connect timeout) fails waiting
        /// and new leases at once while no open connection could serve them, as rejected credentials
        /// do. A cluster client's node pools set it: elsewhere in the cluster the command may succeed,
        /// and the cluster client retries within the command's deadline.
        var failsLeasesWhenUnreachable = false
        /// Shared users (commands in flight) one connection serves at most at once.
        var maximumSharedPerConnection = 32
    }

    enum Action: Hashable {
        /// Open connection `id`; report `connectionEstablished` or `connectionFailed`.
        case createConnection(ConnectionID)
        /// Hand connection `id` to lease `lease`.
        case lease(ConnectionID, to: LeaseID)
        /// Connection `id` has one more shared user, the waiting request `lease`; report
        /// `sharedUseEnded` when its command is done.
        case share(ConnectionID, to: LeaseID)
        /// Restore connection `id` (its shared users left replies owed; the pool holds it meanwhile as
        /// leased); report `connectionReleased`, reusable when the restoration worked.
        case restore(ConnectionID)
        /// Fail lease `lease` (deadline passed, or shutdown).
        case failLease(LeaseID, RedisError)
        /// Authenticate connection `id` with the target credentials; report `reauthenticated` or
        /// `reauthenticationFailed`.
        case reauthenticate(ConnectionID)
        /// Close connection `id`; report `connectionClosed`.
        case closeConnection(ConnectionID)
        /// Check idle connection `id` (it is leased to the pool meanwhile); report `connectionReleased`,
        /// reusable when the check passed.
        case healthCheck(ConnectionID)
        /// Call `timerFired` at this deadline (replaces any earlier request).
        case scheduleTimer(NIODeadline)
    }

    enum SlotState: Hashable {
        case connecting
        case idle(since: NIODeadline)
        case leased
        /// In use by `Slot.sharedUsers` (at least one) shared users.
        case shared
        case reauthenticating
        case closing
    }

    struct Slot: Hashable {
        var state: SlotState
        var version: String?
        var retireAt: NIODeadline?
        /// The TLS context generation the connection was made with; `nil` without TLS.
        var generation: UInt64? = nil
        /// For a connection being replaced: the connection opening in its place.
        var replacement: ConnectionID? = nil
        /// For a connection opening in place of another: that one.
        var replaces: ConnectionID? = nil
        /// The replacement is ready: close this connection as soon as no lease uses it.
        var closeWhenFree = false
        /// When a `connecting` slot started its handshake.
        var connectingSince: NIODeadline? = nil
        /// While the pool itself holds the connection for a health check: since when it had been idle. A
        /// check is not a use, so it neither restarts the idle clock nor keeps a spare connection alive.
        var checkingIdleSince: NIODeadline? = nil
        /// When the connection last passed a health check.
        var checkedAt: NIODeadline? = nil
        /// Shared users whose commands are in flight (in states `shared` and `reauthenticating`).
        var sharedUsers = 0
        /// Takes no new shared users: an exclusive lease waits for it to drain.
        var drained = false
        /// A shared user left replies owed: restore it before it is idle again.
        var needsRestore = false
    }

    private struct Waiter: Hashable {
        let id: LeaseID
        let deadline: NIODeadline
        /// A request for a shared use rather than an exclusive lease.
        var shared = false
    }

    let configuration: Configuration
    private(set) var slots: [ConnectionID: Slot] = [:]
    /// The connection the last shared use went to (see `shareableConnection(isHeldBack:)`).
    private var sharingOn: ConnectionID?
    /// The connections a shared request last found held back by the server (owed replies, none coming):
    /// waiters are not handed them while another answers or a new one can open.
    private var heldBack: Set<ConnectionID> = []
    private var waiters = CircularBuffer<Waiter>()
    private(set) var targetVersion: String?
    private(set) var targetGeneration: UInt64?
    private var generationWindow: TimeAmount = .zero
    private var failures = 0
    private var lastBackoff: TimeAmount?
    private var nextConnectAt: NIODeadline?
    private var nextConnectionID: ConnectionID = 0
    private var scheduledTimer: NIODeadline?
    private(set) var isShutDown = false
    /// Set when the last connection attempt found every candidate credential rejected, until a
    /// connection opens or the credentials change: leases then fail at once instead of waiting for their
    /// deadline, when no open connection could serve them.
    private(set) var rejection: RedisError?
    /// With ``Configuration/failsLeasesWhenUnreachable``: the last connection attempt could not reach
    /// the server, until a connection opens.
    private(set) var unreachable: RedisError?

    init(configuration: Configuration) {
        precondition(configuration.maximumConnections >= 1, "a pool needs room for one connection")
        precondition(configuration.minimumConnections <= configuration.maximumConnections, "minimum above maximum")
        precondition(configuration.maximumConcurrentHandshakes >= 1, "at least one handshake at a time")
        self.configuration = configuration
    }

    /// Connections by credential version (connecting ones excluded).
    var connectionsByVersion: [String: Int] {
        var counts: [String: Int] = [:]
        for slot in self.slots.values where slot.state != .connecting && slot.state != .closing {
            counts[slot.version ?? "unknown", default: 0] += 1
        }
        return counts
    }

    var waiterCount: Int { self.waiters.count }

    /// Connections by TLS context generation (connecting and closing ones excluded).
    var connectionsByGeneration: [UInt64: Int] {
        var counts: [UInt64: Int] = [:]
        for slot in self.slots.values where slot.state != .connecting && slot.state != .closing {
            if let generation = slot.generation { counts[generation, default: 0] += 1 }
        }
        return counts
    }

    /// A new TLS context generation is in use for new connections. Connections of older generations are
    /// retired one after another, spread over `window` (idle ones then close, leased ones on release),
    /// and replaced with connections of the new generation: never all at once, never failing a command.
    mutating func tlsGenerationChanged(_ generation: UInt64, window: TimeAmount, now: NIODeadline, random: Double) -> [Action] {
        self.targetGeneration = generation
        self.generationWindow = window
        let old = self.slots.filter { $0.value.state != .connecting && $0.value.state != .closing && $0.value.generation != generation }
            .keys.sorted()
        for (index, id) in old.enumerated() {
            let fraction = (Double(index) + min(max(random, 0), 0.999)) / Double(old.count)
            self.retire(id, by: now + .nanoseconds(Int64(Double(window.nanoseconds) * fraction)))
        }
        return self.timerFired(now: now)
    }

    private mutating func retire(_ id: ConnectionID, by deadline: NIODeadline) {
        guard let current = self.slots[id] else { return }
        self.slots[id]!.retireAt = current.retireAt.map { min($0, deadline) } ?? deadline
    }

    // MARK: Events

    /// The credentials the pool should use are known, or were promoted to `version`.
    mutating func targetVersionChanged(_ version: String, now: NIODeadline) -> [Action] {
        self.targetVersion = version
        if self.rejection != nil {
            // Different credentials may work: try them now rather than after the rejection's backoff.
            self.rejection = nil
            self.nextConnectAt = nil
        }
        var actions: [Action] = []
        for (id, slot) in self.slots.sorted(by: { $0.key < $1.key }) where slot.version != nil && slot.version != version {
            switch slot.state {
            case .idle, .shared:
                // Shared users go on: the re-authentication is written in order in their pipeline.
                self.slots[id]!.state = .reauthenticating
                actions.append(.reauthenticate(id))
            case .connecting, .leased, .reauthenticating, .closing:
                break  // Leased ones re-authenticate on release; connecting ones when established.
            }
        }
        return actions + self.rebalance(now: now)
    }

    mutating func leaseRequested(_ id: LeaseID, deadline: NIODeadline, shared: Bool = false, now: NIODeadline) -> [Action] {
        guard !self.isShutDown else {
            return [.failLease(id, RedisError(code: .clientShutdown, message: "the client is shut down"))]
        }
        // Within the backoff after a rejection nothing would try: fail at once. After it, the lease waits
        // and its connection attempt finds out whether the server was fixed meanwhile.
        if let rejection = self.rejection, !self.hasUsableConnection, let next = self.nextConnectAt, next > now {
            return [.failLease(id, rejection)] + self.rebalance(now: now)
        }
        if let unreachable = self.unreachable, !self.hasUsableConnection, let next = self.nextConnectAt, next > now {
            return [.failLease(id, unreachable)] + self.rebalance(now: now)
        }
        self.waiters.append(Waiter(id: id, deadline: deadline, shared: shared))
        return self.rebalance(now: now)
    }

    /// A shared use without waiting: a connection with room (see `shareableConnection(isHeldBack:)`), which gains one;
    /// `nil` when none has room (then the request waits: ``leaseRequested(_:deadline:shared:now:)``).
    /// Needs no decision beyond the count: no action, no clock.
    ///
    /// `spread`: the command is resent after its connection died under it, with others' commands most
    /// likely: it goes to the usable connection with the fewest shared users instead, so that the
    /// commands of a dead connection spread out rather than all moving to the next one, where one more
    /// failure (a fault that hits several connections) would take them all again.
    ///
    /// `isHeldBack`: whether a connection has owed replies and has answered nothing for a while (the
    /// server holds a command back: `CLIENT PAUSE WRITE` during a failover, a slow command). Such a
    /// connection is passed over while another has room, so that commands do not queue behind it
    /// (head-of-line blocking); when only held-back ones have room, the request waits if another answers,
    /// one is opening or one can open, and takes the usual choice otherwise.
    mutating func sharedUseRequested(spread: Bool = false, isHeldBack: (ConnectionID) -> Bool = { _ in false }) -> ConnectionID? {
        guard !self.isShutDown,
            let id = spread ? self.leastSharedConnection(isHeldBack: isHeldBack) : self.shareableConnection(isHeldBack: isHeldBack)
        else { return nil }
        self.addSharedUser(id)
        return id
    }

    private mutating func addSharedUser(_ id: ConnectionID) {
        self.slots[id]!.sharedUsers += 1
        if case .idle = self.slots[id]!.state { self.slots[id]!.state = .shared }
    }

    /// A shared user of connection `id` is done; `needsRestore` when it left a reply owed (cancelled,
    /// timed out). When the last one leaves, the connection is idle again, restored first if a user left
    /// a reply owed, closed if it was retiring, re-authenticated if it is behind the target.
    mutating func sharedUseEnded(_ id: ConnectionID, needsRestore: Bool, now: NIODeadline) -> [Action] {
        guard let slot = self.slots[id], slot.sharedUsers > 0 else { return [] }
        self.slots[id]!.sharedUsers -= 1
        if needsRestore { self.slots[id]!.needsRestore = true }
        guard slot.sharedUsers == 1 else {
            return self.waiters.isEmpty ? [] : self.rebalance(now: now)  // A place for a shared waiter.
        }
        switch slot.state {
        case .shared:
            return self.sharedConnectionFree(id, afterSharedUse: true, now: now)
        case .reauthenticating:
            // Its re-authentication decides what comes next (or closes it, if it is retiring).
            return self.waiters.isEmpty ? [] : self.rebalance(now: now)
        case .connecting, .idle, .leased, .closing:
            assertionFailure("shared users on a connection in state \(slot.state)")
            return []
        }
    }

    /// The fast form of ``sharedUseEnded(_:needsRestore:now:)``: when other shared users remain, nothing
    /// waits and nothing is owed, only the count changes (returns true); otherwise the caller makes the
    /// full decision.
    mutating func sharedUseEndedWithoutDecision(_ id: ConnectionID) -> Bool {
        guard self.waiters.isEmpty, let slot = self.slots[id], slot.sharedUsers > 1 else { return false }
        self.slots[id]!.sharedUsers -= 1
        return true
    }

    /// Connection `id` (state `shared`) has no shared user left; `afterSharedUse` when its last shared
    /// user just left (rather than a re-authentication ending).
    private mutating func sharedConnectionFree(_ id: ConnectionID, afterSharedUse: Bool = false, now: NIODeadline) -> [Action] {
        let slot = self.slots[id]!
        self.slots[id]!.drained = false
        if slot.drained, !slot.closeWhenFree, !self.isShutDown, !slot.needsRestore, slot.version == self.targetVersion,
            let index = self.waiters.firstIndex(where: { !$0.shared })
        {
            // Drained for an exclusive waiter: it goes to that waiter, even if a shared one waited longer.
            let waiter = self.waiters.remove(at: index)
            self.slots[id]!.state = .leased
            return [.lease(id, to: waiter.id)] + self.rebalance(now: now)
        }
        if slot.closeWhenFree || self.isShutDown {
            self.markClosing(id)
            return [.closeConnection(id)] + self.rebalance(now: now)
        }
        if slot.needsRestore {
            // Held by the pool until the restoration reports back through connectionReleased.
            self.slots[id]!.needsRestore = false
            self.slots[id]!.state = .leased
            return [.restore(id)] + self.rebalance(now: now)
        }
        if let target = self.targetVersion, slot.version != target {
            self.slots[id]!.state = .reauthenticating
            return [.reauthenticate(id)] + self.rebalance(now: now)
        }
        self.slots[id]!.state = .idle(since: now)
        // Under load connections go idle and back to shared all the time. Idle, it may need a wake-up
        // (idle timeout, health check): when nothing waits and the timer already scheduled comes first,
        // that wake-up will ask for the next one, and nothing else in the pool changed: no need to
        // decide more now.
        if afterSharedUse, self.waiters.isEmpty, let scheduled = self.scheduledTimer {
            var due = now + self.configuration.idleTimeout
            if let interval = self.configuration.healthCheckInterval { due = min(due, max(now, slot.checkedAt ?? now) + interval) }
            if scheduled <= due { return [] }
        }
        return self.rebalance(now: now)
    }

    /// Whether some open connection could serve a lease now or later (idle, leased, re-authenticating).
    private var hasUsableConnection: Bool {
        self.slots.values.contains { slot in
            switch slot.state {
            case .idle, .leased, .shared, .reauthenticating: return true
            case .connecting, .closing: return false
            }
        }
    }

    /// The caller stopped waiting for lease `id`.
    mutating func leaseCancelled(_ id: LeaseID, now: NIODeadline) -> [Action] {
        if let index = self.waiters.firstIndex(where: { $0.id == id }) { self.waiters.remove(at: index) }
        return self.rebalance(now: now)
    }

    /// - Parameters:
    ///   - generation: The TLS context generation the connection was made with.
    ///   - replaceBy: When the connection must be gone at the latest (its own or the server's
    ///     certificate expires soon after).
    mutating func connectionEstablished(
        _ id: ConnectionID,
        version: String,
        generation: UInt64? = nil,
        replaceBy: NIODeadline? = nil,
        now: NIODeadline,
        random: Double
    ) -> [Action] {
        guard self.slots[id]?.state == .connecting else { return [] }
        self.rejection = nil
        self.unreachable = nil
        // A connection that must re-authenticate first has not proven the target credentials: the
        // backoff is reset only once it serves on them (else a rejected re-authentication loops).
        if self.targetVersion == nil || self.targetVersion == version {
            self.resetBackoff()
        }
        var retireAt: NIODeadline?
        if let age = self.configuration.maximumConnectionAge {
            let shortening = Double(age.nanoseconds) * self.configuration.maximumAgeJitter * min(max(random, 0), 1)
            retireAt = now + .nanoseconds(age.nanoseconds - Int64(shortening))
        }
        let replaces = self.slots[id]?.replaces
        self.slots[id] = Slot(state: .idle(since: now), version: version, retireAt: retireAt, generation: generation)
        if let replaceBy { self.retire(id, by: replaceBy) }
        var actions: [Action] = []
        if let old = replaces, self.slots[old] != nil {
            self.slots[old]!.replacement = nil
            if case .idle = self.slots[old]!.state {
                self.markClosing(old)
                actions.append(.closeConnection(old))
            } else if self.slots[old]!.state != .closing {
                self.slots[old]!.closeWhenFree = true
            }
        }
        if let target = self.targetGeneration, let generation, generation != target {
            // Opened with the previous generation while it changed: retire it within the window too.
            self.retire(id, by: now + .nanoseconds(Int64(Double(self.generationWindow.nanoseconds) * min(max(random, 0), 1))))
        }
        let established = self.slots.values.filter { slot in
            switch slot.state {
            case .idle, .leased, .shared, .reauthenticating: return true
            case .connecting, .closing: return false
            }
        }.count
        // A hedged handshake that finished after the ones it stood in for: never more connections than the
        // maximum (replacements are counted against the connection they replace).
        let surplus = replaces == nil && established > self.configuration.maximumConnections
        if self.isShutDown || surplus {
            self.markClosing(id)
            return actions + [.closeConnection(id)] + (surplus ? self.rebalance(now: now) : [])
        }
        if let target = self.targetVersion, target != version {
            self.slots[id]!.state = .reauthenticating
            return actions + [.reauthenticate(id)] + self.rebalance(now: now)
        }
        return actions + self.rebalance(now: now)
    }

    /// Opening connection `id` failed with `error`. When every candidate credential was rejected
    /// (`credentialsRejected`), waiting leases fail at once with that error unless an open connection
    /// can still serve them, and so do new ones until a connection opens or the credentials change.
    mutating func connectionFailed(_ id: ConnectionID, error: RedisError? = nil, now: NIODeadline, random: Double) -> [Action] {
        guard let slot = self.slots[id], slot.state == .connecting else { return [] }
        self.slots.removeValue(forKey: id)
        if let old = slot.replaces, self.slots[old] != nil { self.slots[old]!.replacement = nil }
        self.backOff(now: now, random: random)
        var actions: [Action] = []
        if error?.code != .credentialsRejected {
            // The last attempt did not find the credentials rejected: that is no longer known.
            self.rejection = nil
        }
        if let error, error.code == .credentialsRejected {
            self.rejection = error
            if !self.hasUsableConnection {
                actions = self.waiters.map { .failLease($0.id, error) }
                self.waiters.removeAll()
            }
        }
        if self.configuration.failsLeasesWhenUnreachable, let error, error.code == .connectionFailed || error.code == .connectTimeout {
            self.unreachable = error
            if !self.hasUsableConnection {
                actions += self.waiters.map { .failLease($0.id, error) }
                self.waiters.removeAll()
            }
        }
        return actions + self.rebalance(now: now)
    }

    private mutating func backOff(now: NIODeadline, random: Double) {
        self.failures += 1
        let delay = self.configuration.connectBackoff.delay(after: self.lastBackoff, random: random)
        self.lastBackoff = delay
        self.nextConnectAt = now + delay
    }

    private mutating func resetBackoff() {
        self.failures = 0
        self.lastBackoff = nil
        self.nextConnectAt = nil
    }

    /// A lease ended. `reusable` is false when the connection must not serve again (it failed, or a
    /// transaction was left open).
    mutating func connectionReleased(_ id: ConnectionID, reusable: Bool, now: NIODeadline) -> [Action] {
        guard let slot = self.slots[id], slot.state == .leased else { return [] }
        let idleSince = slot.checkingIdleSince ?? now
        if slot.checkingIdleSince != nil {
            self.slots[id]!.checkingIdleSince = nil
            if reusable { self.slots[id]!.checkedAt = now }
        }
        if !reusable || self.isShutDown {
            self.markClosing(id)
            return [.closeConnection(id)] + self.rebalance(now: now)
        }
        if slot.closeWhenFree {
            self.markClosing(id)
            return [.closeConnection(id)] + self.rebalance(now: now)
        }
        if let target = self.targetVersion, slot.version != target {
            self.slots[id]!.state = .reauthenticating
            return [.reauthenticate(id)] + self.rebalance(now: now)
        }
        self.slots[id]!.state = .idle(since: idleSince)
        return self.rebalance(now: now)
    }

    /// Connection `id` closed (asked for, or by the server). It is gone from the pool.
    mutating func connectionClosed(_ id: ConnectionID, now: NIODeadline) -> [Action] {
        // A connection that never opened is reported through connectionFailed instead.
        guard let slot = self.slots[id], slot.state != .connecting else { return [] }
        self.slots.removeValue(forKey: id)
        // Its replacement, still opening, now stands for itself (and counts against the maximum).
        if let replacement = slot.replacement, self.slots[replacement] != nil { self.slots[replacement]!.replaces = nil }
        var actions: [Action] = []
        // It died (the pool did not close it): what killed it (a restart, a middlebox, a fault on every
        // connection) may have killed idle ones too, unnoticed. They are checked now, before they take
        // commands: with one connection filled at a time, the resends of a dead connection's commands
        // would otherwise find the dead idle ones one attempt at a time.
        if slot.state != .closing, !self.isShutDown, self.configuration.healthCheckInterval != nil {
            for (idleID, idle) in self.slots.sorted(by: { $0.key < $1.key }) {
                guard case .idle(let since) = idle.state else { continue }
                self.slots[idleID]!.state = .leased
                self.slots[idleID]!.checkingIdleSince = since
                actions.append(.healthCheck(idleID))
            }
        }
        return actions + self.rebalance(now: now)
    }

    mutating func reauthenticated(_ id: ConnectionID, version: String, now: NIODeadline) -> [Action] {
        guard self.slots[id]?.state == .reauthenticating else { return [] }
        self.slots[id]!.version = version
        if version == self.targetVersion { self.resetBackoff() }
        if let target = self.targetVersion, target != version, !self.slots[id]!.closeWhenFree {
            return [.reauthenticate(id)]  // The target moved on while this one was in flight.
        }
        return self.reauthenticationEnded(id, now: now)
    }

    /// Connection `id` is no longer re-authenticating: shared if it has shared users (closing when they
    /// are gone if it is retiring), else closed when retiring, else idle (or restored first).
    private mutating func reauthenticationEnded(_ id: ConnectionID, now: NIODeadline) -> [Action] {
        if self.slots[id]!.sharedUsers > 0 {
            self.slots[id]!.state = .shared
            return self.rebalance(now: now)
        }
        self.slots[id]!.state = .shared  // Free now: decided as for the last shared user leaving.
        return self.sharedConnectionFree(id, now: now)
    }

    /// The candidate credentials changed (a new pending one): a rejection may be over, so the next
    /// connection attempt need not wait out the rejection's backoff.
    mutating func candidatesChanged(now: NIODeadline) -> [Action] {
        guard self.rejection != nil else { return [] }
        self.rejection = nil
        self.nextConnectAt = nil
        return self.rebalance(now: now)
    }

    /// Re-authentication failed; the connection keeps its old identity on the server. With
    /// `keepConnection` (its version is the target again: the rejected credentials were demoted) it goes
    /// on serving; otherwise it is closed and replaced, after a backoff, so a rejection never turns into
    /// a loop of connect, re-authenticate, close.
    mutating func reauthenticationFailed(_ id: ConnectionID, keepConnection: Bool = false, now: NIODeadline, random: Double) -> [Action] {
        guard let slot = self.slots[id], slot.state == .reauthenticating else { return [] }
        if keepConnection && !slot.closeWhenFree {
            if let target = self.targetVersion, slot.version != target {
                return [.reauthenticate(id)]  // The target moved on meanwhile.
            }
            return self.reauthenticationEnded(id, now: now)
        }
        // A connection already replaced (closeWhenFree) was closing anyway: nothing to back off from.
        if !slot.closeWhenFree { self.backOff(now: now, random: random) }
        if slot.sharedUsers > 0 {
            // Commands are in flight on it (on its old identity, which the server kept): it takes no new
            // users and closes when they are done.
            self.slots[id]!.closeWhenFree = true
            self.slots[id]!.state = .shared
            return self.rebalance(now: now)
        }
        self.markClosing(id)
        return [.closeConnection(id)] + self.rebalance(now: now)
    }

    mutating func timerFired(now: NIODeadline) -> [Action] {
        self.scheduledTimer = nil
        var actions: [Action] = []
        // Waiters past their deadline.
        while let index = self.waiters.firstIndex(where: { $0.deadline <= now }) {
            let waiter = self.waiters.remove(at: index)
            actions.append(
                .failLease(waiter.id, RedisError(code: .leaseTimeout, message: "no connection became available within the lease deadline"))
            )
        }
        // Idle connections idle too long above the minimum. (Retirement is in `rebalance`.)
        var open = self.regularOpenCount
        for (id, slot) in self.slots.sorted(by: { $0.key < $1.key }) {
            guard case .idle(let since) = slot.state else { continue }
            let idleTooLong = open > self.configuration.minimumConnections && since + self.configuration.idleTimeout <= now
            if idleTooLong {
                self.markClosing(id)
                actions.append(.closeConnection(id))
                open -= 1
            } else if let interval = self.configuration.healthCheckInterval, max(since, slot.checkedAt ?? since) + interval <= now {
                self.slots[id]!.state = .leased
                self.slots[id]!.checkingIdleSince = since
                actions.append(.healthCheck(id))
            }
        }
        return actions + self.rebalance(now: now)
    }

    /// Stop: fail every waiter, close every connection; later leases fail.
    mutating func shutdown() -> [Action] {
        self.isShutDown = true
        var actions: [Action] = self.waiters.map {
            .failLease($0.id, RedisError(code: .clientShutdown, message: "the client is shutting down"))
        }
        self.waiters.removeAll()
        for (id, slot) in self.slots.sorted(by: { $0.key < $1.key }) {
            switch slot.state {
            case .reauthenticating where slot.sharedUsers > 0:
                break  // Closed when its shared users are done.
            case .idle, .reauthenticating:
                self.markClosing(id)
                actions.append(.closeConnection(id))
            case .connecting, .leased, .shared, .closing:
                break  // Closed when established or released, or when its shared users are done.
            }
        }
        return actions
    }

    // MARK: Decisions

    /// Open or opening connections, not counting replacements still opening: those stand in for a
    /// connection that is already counted, so they may exceed the maximum by one each for a moment.
    private var regularOpenCount: Int {
        self.slots.values.filter { slot in
            // A connection that only waits for its lease to end before closing has been replaced already.
            slot.state != .closing && !(slot.state == .connecting && slot.replaces != nil) && !slot.closeWhenFree
        }.count
    }

    /// Serves waiters from idle connections, opens connections where demand and limits allow, and
    /// schedules the next wake-up.
    private mutating func rebalance(now: NIODeadline) -> [Action] {
        var actions: [Action] = []
        guard !self.isShutDown else { return actions }

        // Serve waiters oldest first, whatever their kind: exclusive ones from idle connections (longest
        // idle first), shared ones from connections with room (filling one first). A waiter that cannot
        // be served yet does not hold back the others. (Serving exclusive waiters first starved shared
        // ones under a steady load of transactions: found by a hostile review. A connection drained for
        // an exclusive waiter goes to it in `sharedConnectionFree`.)
        if !self.waiters.isEmpty {
            var waiting = CircularBuffer<Waiter>(initialCapacity: self.waiters.count)
            for waiter in self.waiters {
                if !waiter.shared, let id = self.idleConnection() {
                    self.slots[id]!.state = .leased
                    actions.append(.lease(id, to: waiter.id))
                } else if waiter.shared, let id = self.shareableConnectionForWaiter() {
                    self.addSharedUser(id)
                    actions.append(.share(id, to: waiter.id))
                } else {
                    waiting.append(waiter)
                }
            }
            self.waiters = waiting
        }

        // Open connections for the waiters not covered by connections already opening or re-authenticating,
        // and up to the minimum. Handshakes that have hung past the hedge delay while leases wait are not
        // counted: they will most likely fail at their deadline.
        let stalled = self.waiters.isEmpty ? 0 : self.slots.values.filter { self.isStalled($0, now: now) }.count
        let connecting = self.slots.values.filter { $0.state == .connecting }.count - stalled
        let reauthenticating = self.slots.values.filter { $0.state == .reauthenticating }.count
        let regularOpen = self.regularOpenCount
        let wanted = max(
            self.waiters.count - connecting - reauthenticating,
            self.configuration.minimumConnections - regularOpen
        )
        let backingOff = self.nextConnectAt.map { $0 > now } ?? false
        var handshakes = connecting
        var opened = 0
        if wanted > 0 && !backingOff {
            let room = min(
                self.configuration.maximumConnections - (regularOpen - stalled),
                self.configuration.maximumConcurrentHandshakes - handshakes,
                self.configuration.maximumConnections + self.configuration.maximumConcurrentHandshakes - regularOpen
            )
            opened = max(0, min(wanted, room))
            for _ in 0..<opened {
                actions.append(.createConnection(self.openSlot(replacing: nil, now: now)))
                handshakes += 1
            }
        }
        // Once a handshake has stalled, handshakes are not counted on: each stalled one is hedged by
        // another, which would stand for the waiter until its deadline (found by a hostile review).
        self.drainForExclusiveWaiters(connecting: stalled > 0 ? 0 : connecting + opened, reauthenticating: reauthenticating)

        // Connections due for retirement get a replacement first; they close once it is up.
        if !backingOff {
            for (id, slot) in self.slots.sorted(by: { $0.key < $1.key }) {
                guard handshakes < self.configuration.maximumConcurrentHandshakes else { break }
                guard let retireAt = slot.retireAt, retireAt <= now, slot.replacement == nil, !slot.closeWhenFree else { continue }
                switch slot.state {
                case .idle, .leased, .shared, .reauthenticating:
                    let replacement = self.openSlot(replacing: id, now: now)
                    self.slots[id]!.replacement = replacement
                    actions.append(.createConnection(replacement))
                    handshakes += 1
                case .connecting, .closing:
                    continue
                }
            }
        }

        if let deadline = self.nextDeadline(wantMore: wanted > 0, now: now), deadline != self.scheduledTimer {
            self.scheduledTimer = deadline
            actions.append(.scheduleTimer(deadline))
        }
        return actions
    }

    /// Connection `id` cannot begin its handshake yet (no credentials are known: before `run()`, or a
    /// provider still fetching): it is no handshake that could stall, so it is not hedged until
    /// ``connectStarted(_:now:)``. Hedging it opened one slot more at each hedge deadline, all of
    /// which connected at once when the credentials came (found by a hostile review).
    mutating func connectDeferred(_ id: ConnectionID) {
        guard self.slots[id]?.state == .connecting else { return }
        self.slots[id]!.connectingSince = nil
    }

    /// The deferred handshake of connection `id` begins now.
    mutating func connectStarted(_ id: ConnectionID, now: NIODeadline) {
        guard self.slots[id]?.state == .connecting else { return }
        self.slots[id]!.connectingSince = now
    }

    private mutating func openSlot(replacing old: ConnectionID?, now: NIODeadline) -> ConnectionID {
        let id = self.nextConnectionID
        self.nextConnectionID += 1
        self.slots[id] = Slot(state: .connecting, version: nil, retireAt: nil, replaces: old, connectingSince: now)
        return id
    }

    /// Connection `id` is being closed. A replacement still opening for it now stands for itself: it
    /// counts against the maximum and the minimum like any connection.
    private mutating func markClosing(_ id: ConnectionID) {
        self.slots[id]!.state = .closing
        if let replacement = self.slots[id]!.replacement, self.slots[replacement] != nil {
            self.slots[replacement]!.replaces = nil
            self.slots[id]!.replacement = nil
        }
    }

    /// A regular (not replacement) handshake running for longer than the hedge delay.
    private func isStalled(_ slot: Slot, now: NIODeadline) -> Bool {
        guard slot.state == .connecting, slot.replaces == nil, let hedge = self.configuration.handshakeHedgeDelay,
            let since = slot.connectingSince
        else { return false }
        return since + hedge <= now
    }

    /// Exclusive waiters that neither an opening connection nor a re-authenticating one will serve drain
    /// shared connections (fewest users first), one each: a drained connection takes no new shared users
    /// and goes to a waiter when its last one leaves, so a steady shared load cannot starve leases.
    private mutating func drainForExclusiveWaiters(connecting: Int, reauthenticating: Int) {
        let exclusive = self.waiters.count { !$0.shared }
        guard exclusive > 0 else { return }
        let drained = self.slots.values.count { $0.drained && $0.state == .shared }
        var needed = exclusive - connecting - reauthenticating - drained
        while needed > 0 {
            var best: (id: ConnectionID, users: Int)?
            for (id, slot) in self.slots where slot.state == .shared && !slot.drained && !slot.closeWhenFree {
                if best == nil || slot.sharedUsers < best!.users || (slot.sharedUsers == best!.users && id < best!.id) {
                    best = (id, slot.sharedUsers)
                }
            }
            guard let best else { return }
            self.slots[best.id]!.drained = true
            needed -= 1
        }
    }

    /// The connection a shared use goes to: the one the last shared use went to while it has room, else
    /// the usable connection with the most shared users below the cap (ties: the lowest ID). One
    /// connection fills before the next takes any, so commands are pipelined (many replies per read,
    /// on both sides) instead of spread one per connection; idle connections stay free for exclusive
    /// leases. Usable: idle, shared or re-authenticating in place, not retiring, not drained.
    private mutating func shareableConnection(isHeldBack: (ConnectionID) -> Bool) -> ConnectionID? {
        if let id = self.sharingOn, let slot = self.slots[id], self.hasRoomForSharedUse(slot), !isHeldBack(id) { return id }
        var best: (id: ConnectionID, users: Int, heldBack: Bool)?
        var answeringElsewhere = false
        var heldBack: Set<ConnectionID> = []
        for (id, slot) in self.slots where self.isUsableForSharedUse(slot) {
            let held = isHeldBack(id)
            if held { heldBack.insert(id) } else { answeringElsewhere = true }
            guard slot.sharedUsers < self.configuration.maximumSharedPerConnection else { continue }
            if best == nil || Self.isBetter((id, slot.sharedUsers, held), than: best!, fewestFirst: false) {
                best = (id, slot.sharedUsers, held)
            }
        }
        self.heldBack = heldBack
        if best?.heldBack == true, self.worthWaiting(answeringElsewhere: answeringElsewhere) { return nil }
        self.sharingOn = best?.id
        return best?.id
    }

    /// Only held-back connections have room: whether to wait for a place on one that answers (it frees
    /// soon), for a connection that is opening, or for one the pool can still open, rather than queue
    /// behind the held-back one (as before, when there is nothing to wait for).
    private func worthWaiting(answeringElsewhere: Bool) -> Bool {
        answeringElsewhere
            || self.regularOpenCount < self.configuration.maximumConnections
            || self.slots.values.contains { $0.state == .connecting }
    }

    /// The shared choice for waiters, in `rebalance`: held back as last seen by a shared request.
    private mutating func shareableConnectionForWaiter() -> ConnectionID? {
        let heldBack = self.heldBack
        return self.shareableConnection(isHeldBack: { heldBack.contains($0) })
    }


    /// The better of two candidates for a shared use: one not held back, then the most users (or the
    /// fewest, `fewestFirst`), then the lowest ID.
    private static func isBetter(
        _ candidate: (id: ConnectionID, users: Int, heldBack: Bool),
        than best: (id: ConnectionID, users: Int, heldBack: Bool),
        fewestFirst: Bool
    ) -> Bool {
        if candidate.heldBack != best.heldBack { return !candidate.heldBack }
        if candidate.users != best.users { return fewestFirst ? candidate.users < best.users : candidate.users > best.users }
        return candidate.id < best.id
    }

    /// The usable connection with room and the fewest shared users (ties: the lowest ID).
    private func leastSharedConnection(isHeldBack: (ConnectionID) -> Bool) -> ConnectionID? {
        var best: (id: ConnectionID, users: Int, heldBack: Bool)?
        var answeringElsewhere = false
        for (id, slot) in self.slots where self.isUsableForSharedUse(slot) {
            let held = isHeldBack(id)
            if !held { answeringElsewhere = true }
            guard slot.sharedUsers < self.configuration.maximumSharedPerConnection else { continue }
            if best == nil || Self.isBetter((id, slot.sharedUsers, held), than: best!, fewestFirst: true) {
                best = (id, slot.sharedUsers, held)
            }
        }
        if best?.heldBack == true, self.worthWaiting(answeringElsewhere: answeringElsewhere) { return nil }
        return best?.id
    }

    private func hasRoomForSharedUse(_ slot: Slot) -> Bool {
        self.isUsableForSharedUse(slot) && slot.sharedUsers < self.configuration.maximumSharedPerConnection
    }

    /// Idle, shared or re-authenticating in place, not retiring, not drained for an exclusive lease.
    private func isUsableForSharedUse(_ slot: Slot) -> Bool {
        switch slot.state {
        case .idle, .shared, .reauthenticating: break
        case .connecting, .leased, .closing: return false
        }
        return !slot.closeWhenFree && !slot.drained
    }

    private func idleConnection() -> ConnectionID? {
        var best: (id: ConnectionID, since: NIODeadline)?
        for (id, slot) in self.slots {
            guard case .idle(let since) = slot.state else { continue }
            if best == nil || since < best!.since || (since == best!.since && id < best!.id) { best = (id, since) }
        }
        return best?.id
    }

    private func nextDeadline(wantMore: Bool, now: NIODeadline) -> NIODeadline? {
        var deadlines = self.waiters.map(\.deadline)
        let retirementsWaiting = self.slots.values.contains { slot in
            slot.replacement == nil && !slot.closeWhenFree && slot.state != .connecting && slot.state != .closing
                && (slot.retireAt.map { $0 <= now } ?? false)
        }
        if wantMore || retirementsWaiting, let nextConnectAt = self.nextConnectAt, nextConnectAt > now { deadlines.append(nextConnectAt) }
        let open = self.regularOpenCount
        for slot in self.slots.values {
            // A handshake that will count as stalled while leases wait wakes the pool up then.
            if !self.waiters.isEmpty, slot.state == .connecting, slot.replaces == nil,
                let hedge = self.configuration.handshakeHedgeDelay, let since = slot.connectingSince, since + hedge > now
            {
                deadlines.append(since + hedge)
            }
            // Retirements ahead (of any connection not yet being replaced) wake the pool up.
            if let retireAt = slot.retireAt, retireAt > now, slot.replacement == nil, slot.state != .connecting, slot.state != .closing {
                deadlines.append(retireAt)
            }
            guard case .idle(let since) = slot.state else { continue }
            if open > self.configuration.minimumConnections { deadlines.append(since + self.configuration.idleTimeout) }
            if let interval = self.configuration.healthCheckInterval { deadlines.append(max(since, slot.checkedAt ?? since) + interval) }
        }
        return deadlines.min()
    }
}
