import NIOCore

/// Which credentials a client holds and which it uses: `current` (known good once any connection
/// authenticated with it), an optional `pending` one that arrived from the source, and the `previous`
/// one kept for a grace period after a promotion. Pure: time and randomness come in with the events.
///
/// Probe before promote: a new pending credential is tried on a separate probe connection; only when
/// it authenticates does it become current. A rejected probe is retried with backoff, a bounded number
/// of times, while traffic goes on with the current credential.
///
/// Probe states: `idle` (can move to: running), `running` (can move to: idle, waiting, gaveUp),
/// `waiting` (can move to: running, idle), `gaveUp` (can move to: running when the source reports a
/// different credential).
struct CredentialStateMachine {
    struct Configuration: Hashable {
        /// First and largest delay between probe attempts.
        var probeBackoff = Backoff(base: .milliseconds(250), cap: .seconds(30))
        /// Probe attempts for one pending credential before giving up until the source changes.
        var maximumProbeAttempts = 12
        /// How long the previous credential stays a candidate after a promotion.
        var previousGracePeriod: TimeAmount = .minutes(10)
    }

    enum ProbeResult: Hashable {
        /// The server accepted the credential.
        case accepted
        /// The server rejected it (`WRONGPASS`).
        case rejected
        /// The probe could not tell (server unreachable, timeout): try again later.
        case inconclusive
    }

    enum Action: Hashable {
        /// Open a probe connection with these credentials and report with `probeCompleted`.
        case startProbe(RedisCredentials)
        /// `to` is now current; every connection on another version should re-authenticate.
        case promoted(from: RedisCredentials?, to: RedisCredentials)
        /// The server rejected the current credentials `rejected` while `to` (the previous ones) still
        /// work: `to` is current again, `rejected` is pending and probed again with backoff.
        case demoted(rejected: RedisCredentials, to: RedisCredentials)
        /// The probe of `credentials` failed (`rejected` tells whether the server said WRONGPASS); the next
        /// attempt is at `retryAt`, or never when `nil`.
        case probeFailed(RedisCredentials, rejected: Bool, retryAt: NIODeadline?)
        /// The source reported credentials that became pending.
        case pendingChanged(RedisCredentials)
        /// The previous credential's grace period ended: it is no longer a candidate.
        case previousDiscarded(RedisCredentials)
        /// Call `timerFired` at this deadline (replaces any earlier request).
        case scheduleTimer(NIODeadline)
    }

    private enum Probe: Hashable {
        case idle
        case running(RedisCredentials, attempt: Int, lastDelay: TimeAmount?)
        case waiting(RedisCredentials, until: NIODeadline, attempt: Int, lastDelay: TimeAmount)
        case gaveUp(RedisCredentials)
    }

    let configuration: Configuration
    private(set) var current: RedisCredentials?
    private(set) var currentVerified = false
    private(set) var pending: RedisCredentials?
    private(set) var previous: RedisCredentials?
    private var previousUntil: NIODeadline?
    private var probe = Probe.idle

    init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    /// The credentials a new connection tries, in order, each once: the known-good one first, then the
    /// others (the previous one during its grace period, then the pending one).
    var candidates: [RedisCredentials] {
        var result: [RedisCredentials] = []
        for candidate in [self.current, self.previous, self.pending].compactMap({ $0 })
        where !result.contains(where: { $0.authenticatesLike(candidate) }) {
            result.append(candidate)
        }
        return result
    }

    /// The source reported `credentials`.
    mutating func sourceReported(_ credentials: RedisCredentials, now: NIODeadline) -> [Action] {
        guard let current = self.current else {
            // The first credential: nothing to compare with; connections will verify it.
            self.current = credentials
            return []
        }
        if credentials.authenticatesLike(current) {
            // The source repeated what is in use (a relabelled version changes nothing on the server).
            self.pending = nil
            self.probe = .idle
            return []
        }
        if let pending = self.pending, credentials.authenticatesLike(pending) {
            return []
        }
        self.pending = credentials
        self.probe = .running(credentials, attempt: 1, lastDelay: nil)
        return [.pendingChanged(credentials), .startProbe(credentials)]
    }

    /// A probe of `credentials` finished.
    mutating func probeCompleted(
        _ credentials: RedisCredentials,
        result: ProbeResult,
        now: NIODeadline,
        random: Double
    ) -> [Action] {
        guard case .running(let probed, let attempt, let lastDelay) = self.probe, probed == credentials else {
            return []  // A probe of a credential that is no longer pending.
        }
        switch result {
        case .accepted:
            return self.promote(credentials, now: now)
        case .rejected, .inconclusive:
            guard attempt < self.configuration.maximumProbeAttempts else {
                self.probe = .gaveUp(credentials)
                return [.probeFailed(credentials, rejected: result == .rejected, retryAt: nil)]
            }
            let delay = self.configuration.probeBackoff.delay(after: lastDelay, random: random)
            let retryAt = now + delay
            self.probe = .waiting(credentials, until: retryAt, attempt: attempt, lastDelay: delay)
            return [.probeFailed(credentials, rejected: result == .rejected, retryAt: retryAt), .scheduleTimer(self.nextDeadline()!)]
        }
    }

    /// A regular connection authenticated with `credentials`, after the server rejected `rejected` in
    /// the same handshake. Pending credentials that work on the server need no further probe. When the
    /// credentials current *now* were among the rejected ones and the previous ones worked, an operator
    /// rolled the password back (or the server restarted with an ACL that was never saved): the current
    /// credentials are demoted, so connections stop re-authenticating into a rejection. (A handshake
    /// that began before a promotion and simply used the then-current credentials proves nothing.)
    mutating func connectionAuthenticated(
        with credentials: RedisCredentials,
        rejected: [RedisCredentials] = [],
        now: NIODeadline,
        random: Double
    ) -> [Action] {
        if let current = self.current, credentials.authenticatesLike(current) {
            self.currentVerified = true
            return []
        }
        if let pending = self.pending, credentials.authenticatesLike(pending) {
            return self.promote(pending, now: now)
        }
        if let previous = self.previous, credentials.authenticatesLike(previous), let current = self.current,
            rejected.contains(where: { $0.authenticatesLike(current) })
        {
            return self.demote(current, to: previous, now: now, random: random)
        }
        return []
    }

    /// The server rejected `credentials` (`WRONGPASS`) when a connection authenticated as version
    /// `keptVersion` tried to switch to them; the connection keeps its old identity. When those are the
    /// current credentials and the connection's are the previous ones, the current ones are demoted.
    mutating func reauthenticationRejected(
        _ credentials: RedisCredentials,
        keptVersion: String?,
        now: NIODeadline,
        random: Double
    ) -> [Action] {
        guard let current = self.current, credentials.authenticatesLike(current),
            let previous = self.previous, previous.version == keptVersion
        else { return [] }
        return self.demote(current, to: previous, now: now, random: random)
    }

    /// The deadline of `scheduleTimer` passed.
    mutating func timerFired(now: NIODeadline) -> [Action] {
        var actions: [Action] = []
        if case .waiting(let credentials, let until, let attempt, let lastDelay) = self.probe, until <= now {
            self.probe = .running(credentials, attempt: attempt + 1, lastDelay: lastDelay)
            actions.append(.startProbe(credentials))
        }
        if let until = self.previousUntil, until <= now, let previous = self.previous {
            self.previous = nil
            self.previousUntil = nil
            actions.append(.previousDiscarded(previous))
        }
        if let next = self.nextDeadline() { actions.append(.scheduleTimer(next)) }
        return actions
    }

    /// Asks for another probe of the pending credential now (an explicit reload), even after giving up.
    mutating func retryNow() -> [Action] {
        switch self.probe {
        case .waiting(let credentials, _, _, _), .gaveUp(let credentials):
            self.probe = .running(credentials, attempt: 1, lastDelay: nil)
            return [.startProbe(credentials)]
        case .idle, .running:
            return []
        }
    }

    private mutating func promote(_ credentials: RedisCredentials, now: NIODeadline) -> [Action] {
        let old = self.current
        // A previous credential still in its grace period gives way to the one just replaced: say so.
        let discarded = self.previous.flatMap { previous in
            old.map { previous.authenticatesLike($0) } == true ? nil : previous
        }
        self.previous = old
        self.previousUntil = old == nil ? nil : now + self.configuration.previousGracePeriod
        self.current = credentials
        self.currentVerified = true
        self.pending = nil
        self.probe = .idle
        var actions: [Action] = [.promoted(from: old, to: credentials)]
        if let discarded { actions.append(.previousDiscarded(discarded)) }
        if let next = self.nextDeadline() { actions.append(.scheduleTimer(next)) }
        return actions
    }

    private mutating func demote(_ rejected: RedisCredentials, to working: RedisCredentials, now: NIODeadline, random: Double) -> [Action] {
        self.current = working
        self.currentVerified = true
        self.previous = nil
        self.previousUntil = nil
        if let pending = self.pending, pending.authenticatesLike(working) {
            // The source already points back at what works: nothing is left to probe.
            self.pending = nil
            self.probe = .idle
            return [.demoted(rejected: rejected, to: working)] + (self.nextDeadline().map { [.scheduleTimer($0)] } ?? [])
        }
        if let pending = self.pending, !pending.authenticatesLike(rejected) {
            // The source has moved on to newer credentials: they stay pending with their probe.
            return [.demoted(rejected: rejected, to: working)] + (self.nextDeadline().map { [.scheduleTimer($0)] } ?? [])
        }
        // Probed again later, with backoff: a roll-forward is noticed, and the ACL log grows by at most the
        // probe budget.
        self.pending = rejected
        let delay = self.configuration.probeBackoff.delay(after: nil, random: random)
        self.probe = .waiting(rejected, until: now + delay, attempt: 1, lastDelay: delay)
        return [.demoted(rejected: rejected, to: working), .scheduleTimer(self.nextDeadline()!)]
    }

    private func nextDeadline() -> NIODeadline? {
        var deadlines: [NIODeadline] = []
        if case .waiting(_, let until, _, _) = self.probe { deadlines.append(until) }
        if let until = self.previousUntil { deadlines.append(until) }
        return deadlines.min()
    }
}
