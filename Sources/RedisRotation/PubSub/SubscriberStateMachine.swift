#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Which messages of the client's subscriber connections reach which subscriptions, exactly once and
/// in order, while connections are replaced. Pure: the shell (``SubscriberHub``) feeds it what the
/// connections receive and performs what it answers.
///
/// **The handover rule (make-before-break).** Every subscriber connection is also subscribed to a
/// private marker channel. To replace connection O by N, N subscribes to everything O has; once N's
/// confirmations are in, one marker message (a fresh token) is published on the marker channel. The
/// server appends a published message to every subscriber's stream at the same point of its one
/// order, so the marker splits both streams at the same message: O's messages *before* its marker are
/// delivered, N's messages *after* its marker are delivered, everything else is dropped. Since N was
/// subscribed before the marker was published, every message after it is on N; every message before it
/// was on O. So each message published while the subscriptions were confirmed on either connection is
/// delivered once, in the server's order, and no payload is ever compared: the same payload
/// published twice is delivered twice.
///
/// To keep the order, O's messages after its marker and N's after its marker wait in buffers until both
/// markers are in; then O's buffer is discarded, N's delivered, and O closed. If N fails before that,
/// O's buffer is delivered and O stays. If O fails after its marker, N takes over at its marker with
/// nothing missed; if O fails before its marker, N takes over at once and a gap is signalled from O's
/// loss to then.
///
/// **Gaps.** When the only connection is lost, nothing receives messages until a new one has confirmed
/// its subscriptions: every subscription then gets one `gap(from: loss, to: confirmation)` before the
/// new connection's first message.
///
/// States per connection: `active` (delivers; can move to: retiring, lost), `retiring` (O during a
/// handover; can move to: active, closed, lost), `joining` (N; can move to: active, closed), `resuming`
/// (a replacement after a loss, until its confirmations; can move to: active, lost).
struct SubscriberStateMachine {
    typealias SubscriptionID = UInt64
    typealias ConnectionID = Int
    typealias Kind = PubSubStateMachine.Kind
    typealias Push = PubSubStateMachine.Push

    struct Key: Hashable {
        var kind: Kind
        var name: String
    }

    enum Element: Hashable, Sendable {
        case message(RedisPubSubMessage)
        case gap(from: Date, to: Date)
    }

    private enum Role {
        case active
        case retiring(token: String, sawMarker: Bool, buffer: [Push])
        case joining(token: String, sawMarker: Bool, buffer: [Push], predecessorDone: Bool)
        case resuming(buffer: [Push])
    }

    /// The channel every subscriber connection listens to for handover markers; never a user's.
    let markerChannel: String
    private var listeners: [Key: Set<SubscriptionID>] = [:]
    private var subscriptions: [SubscriptionID: [Key]] = [:]
    private var roles: [ConnectionID: Role] = [:]
    /// When the last delivering connection was lost, while no replacement has confirmed.
    private var lostAt: Date?

    init(markerChannel: String) {
        self.markerChannel = markerChannel
    }

    /// What the shell does after an event.
    struct Action: Equatable {
        /// Elements for subscriptions, in this order.
        var deliveries: [Delivery] = []
        /// Connections to close (a retired predecessor, an abandoned successor).
        var close: [ConnectionID] = []
        /// No connection delivers any more: open a replacement (with backoff).
        var reconnect = false
        /// The handover finished: the successor delivers alone.
        var handoverCompleted = false
        /// The handover failed: the predecessor delivers again.
        var handoverAbandoned = false
    }

    struct Delivery: Equatable {
        var subscription: SubscriptionID
        var element: Element
    }

    // MARK: Subscriptions

    /// Every name some subscription uses, per kind, to subscribe on a new connection (the marker channel
    /// comes on top).
    var wanted: [Kind: [String]] {
        var names: [Kind: [String]] = [:]
        for key in self.listeners.keys { names[key.kind, default: []].append(key.name) }
        return names.mapValues { $0.sorted() }
    }

    var hasSubscriptions: Bool { !self.subscriptions.isEmpty }

    /// The connection that delivers now, if any (not during a handover's switch, by construction).
    var deliveringConnection: ConnectionID? {
        self.roles.first { if case .active = $0.value { return true } else { return false } }?.key
    }

    /// Subscription `id` listens to `names`; returns the ones no subscription used yet (to subscribe on
    /// the server).
    mutating func subscribe(_ id: SubscriptionID, kind: Kind, names: [String]) -> [String] {
        var keys: [Key] = []
        var new: [String] = []
        for name in names {
            let key = Key(kind: kind, name: name)
            guard !keys.contains(key) else { continue }
            keys.append(key)
            if self.listeners[key, default: []].isEmpty { new.append(name) }
            self.listeners[key, default: []].insert(id)
        }
        self.subscriptions[id] = keys
        return new
    }

    /// Subscription `id` ended; returns the names nobody uses any more (to unsubscribe on the server).
    mutating func unsubscribe(_ id: SubscriptionID) -> [Kind: [String]] {
        guard let keys = self.subscriptions.removeValue(forKey: id) else { return [:] }
        var unused: [Kind: [String]] = [:]
        for key in keys {
            self.listeners[key]?.remove(id)
            if self.listeners[key]?.isEmpty == true {
                self.listeners[key] = nil
                unused[key.kind, default: []].append(key.name)
            }
        }
        // A gap concerns the subscriptions that had one; a later subscription starts afresh.
        if self.subscriptions.isEmpty { self.lostAt = nil }
        return unused
    }

    // MARK: Connections

    /// A replacement connection for a lost one (or the first connection) was opened; it buffers until
    /// its subscriptions are confirmed.
    mutating func resumeStarted(_ connection: ConnectionID) {
        self.roles[connection] = .resuming(buffer: [])
    }

    /// The replacement's subscriptions are confirmed: a gap when one was lost, then what it buffered.
    mutating func resumeConfirmed(_ connection: ConnectionID, at date: Date) -> Action {
        guard case .resuming(let buffer) = self.roles[connection] else { return Action() }
        var action = Action()
        if let lostAt = self.lostAt {
            for id in self.subscriptions.keys.sorted() {
                action.deliveries.append(Delivery(subscription: id, element: .gap(from: lostAt, to: date)))
            }
        }
        self.lostAt = nil
        self.roles[connection] = .active
        for push in buffer { action.deliveries += self.route(push) }
        return action
    }

    /// A handover from the delivering connection to `successor` starts; the marker it will look for
    /// carries `token`. Returns `false` (and changes nothing) when no connection delivers.
    mutating func handoverStarted(to successor: ConnectionID, token: String) -> Bool {
        guard let predecessor = self.deliveringConnection else { return false }
        self.roles[predecessor] = .retiring(token: token, sawMarker: false, buffer: [])
        self.roles[successor] = .joining(token: token, sawMarker: false, buffer: [], predecessorDone: false)
        return true
    }

    /// The successor could not be set up (open, subscribe, publish, or the markers did not arrive in
    /// time): the predecessor delivers again, from where it stopped.
    mutating func handoverAbandoned(_ successor: ConnectionID) -> Action {
        guard case .joining = self.roles[successor] else { return Action() }
        self.roles[successor] = nil
        var action = Action(close: [successor], handoverAbandoned: true)
        guard let (predecessor, role) = self.roles.first(where: { if case .retiring = $0.value { return true } else { return false } }),
            case .retiring(_, _, let buffer) = role
        else {
            // The predecessor is gone too: nothing delivers.
            action.reconnect = self.hasSubscriptions
            return action
        }
        self.roles[predecessor] = .active
        for push in buffer { action.deliveries += self.route(push) }
        return action
    }

    /// A connection received `push`.
    mutating func pushReceived(_ push: Push, on connection: ConnectionID) -> Action {
        guard let role = self.roles[connection] else { return Action() }
        let marker = self.marker(in: push)
        switch role {
        case .active:
            return marker == nil ? Action(deliveries: self.route(push)) : Action()
        case .resuming(var buffer):
            if marker == nil { buffer.append(push) }
            self.roles[connection] = .resuming(buffer: buffer)
            return Action()
        case .retiring(let token, let sawMarker, var buffer):
            if sawMarker {
                if marker == nil { buffer.append(push) }
                self.roles[connection] = .retiring(token: token, sawMarker: true, buffer: buffer)
                return Action()
            }
            if marker == token {
                self.roles[connection] = .retiring(token: token, sawMarker: true, buffer: [])
                return self.switchIfReady()
            }
            return marker == nil ? Action(deliveries: self.route(push)) : Action()
        case .joining(let token, let sawMarker, var buffer, let predecessorDone):
            if sawMarker {
                if marker == nil { buffer.append(push) }
                self.roles[connection] = .joining(token: token, sawMarker: true, buffer: buffer, predecessorDone: predecessorDone)
                return Action()
            }
            if marker == token {
                self.roles[connection] = .joining(token: token, sawMarker: true, buffer: [], predecessorDone: predecessorDone)
                return self.switchIfReady()
            }
            // Before its marker, everything the successor receives reached the predecessor too.
            return Action()
        }
    }

    /// A connection closed without being asked to (a kill, a reset, a server restart).
    mutating func connectionLost(_ connection: ConnectionID, at date: Date) -> Action {
        guard let role = self.roles.removeValue(forKey: connection) else { return Action() }
        switch role {
        case .active, .resuming:
            if self.lostAt == nil && self.hasSubscriptions { self.lostAt = date }
            return Action(reconnect: self.hasSubscriptions && self.deliveringConnection == nil)
        case .joining:
            self.roles[connection] = role
            var action = self.handoverAbandoned(connection)
            action.close = []
            return action
        case .retiring(_, let sawMarker, _):
            guard let (successor, successorRole) = self.roles.first(where: { if case .joining = $0.value { return true } else { return false } }),
                case .joining(let token, let successorSawMarker, let buffer, _) = successorRole
            else {
                if self.lostAt == nil && self.hasSubscriptions { self.lostAt = date }
                return Action(reconnect: self.hasSubscriptions)
            }
            if sawMarker {
                // Everything up to the marker was delivered: the successor takes over at its marker.
                self.roles[successor] = .joining(token: token, sawMarker: successorSawMarker, buffer: buffer, predecessorDone: true)
                return Action()
            }
            // Lost before its marker: what was published between the loss and now may be missing.
            self.roles[successor] = .active
            var action = Action(handoverCompleted: true)
            for id in self.subscriptions.keys.sorted() {
                action.deliveries.append(Delivery(subscription: id, element: .gap(from: date, to: date)))
            }
            if successorSawMarker {
                for push in buffer { action.deliveries += self.route(push) }
            }
            return action
        }
    }

    /// Both markers are in (or the predecessor finished at its own): the successor delivers its buffer
    /// and then alone; the predecessor is closed.
    private mutating func switchIfReady() -> Action {
        var predecessor: ConnectionID?
        var predecessorReady = false
        var successor: ConnectionID?
        var successorBuffer: [Push] = []
        var successorReady = false
        var predecessorDone = false
        for (connection, role) in self.roles {
            switch role {
            case .retiring(_, let sawMarker, _):
                predecessor = connection
                predecessorReady = sawMarker
            case .joining(_, let sawMarker, let buffer, let done):
                successor = connection
                successorReady = sawMarker
                successorBuffer = buffer
                predecessorDone = done
            default:
                break
            }
        }
        guard let successor, successorReady, predecessorReady || predecessorDone else { return Action() }
        var action = Action(handoverCompleted: true)
        if let predecessor {
            self.roles[predecessor] = nil
            action.close = [predecessor]
        }
        self.roles[successor] = .active
        for push in successorBuffer { action.deliveries += self.route(push) }
        return action
    }

    /// The marker token `push` carries, if it is a marker.
    private func marker(in push: Push) -> String? {
        guard case .message(.channel, let channel, nil, let payload) = push, channel == self.markerChannel else { return nil }
        return String(buffer: payload)
    }

    /// The subscriptions a message reaches, in subscription order.
    private func route(_ push: Push) -> [Delivery] {
        // A marker is never a user's message, also when a pattern (`*`) matches its channel.
        guard case .message(let kind, let channel, let pattern, let payload) = push, channel != self.markerChannel else { return [] }
        let key = pattern.map { Key(kind: .pattern, name: $0) } ?? Key(kind: kind, name: channel)
        let message = RedisPubSubMessage(kind: kind, channel: channel, pattern: pattern, payload: payload)
        return (self.listeners[key] ?? []).sorted().map { Delivery(subscription: $0, element: .message(message)) }
    }
}
