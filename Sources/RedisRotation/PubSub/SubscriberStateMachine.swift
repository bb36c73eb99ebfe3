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
/// nothing missed. If O fails before its marker, N still delivers only after its own marker (what it
/// received before the marker may have been delivered by O already), and a gap to N's marker comes
/// first, from O's loss or from when N's `SUBSCRIBE` was sent, whichever is earlier: what N dropped was
/// published after that, and what O did not deliver was published before N's marker. If N fails after
/// O was lost, the replacement after the loss signals the gap instead; when O was lost after its marker,
/// that gap starts when the marker's `PUBLISH` was sent (``markerPublished(at:)``), since what O held back
/// after its marker was published after that. A loss's time is the connection's last sign of life (the
/// shell's choice), not when it was noticed.
///
/// **Without the marker channel** (the user's ACL refuses it) the successor N subscribes and drops what
/// it receives; O delivers until the reply to a `PING` on it (``connectionRetired(_:at:)``: everything
/// published before the server ran that `PING` was delivered by O), then N delivers after the reply to a
/// `PING` sent on it after that (``resumeConfirmed(_:at:)``: everything published after the server ran
/// it reaches N). What was published between the two `PING`s is dropped and covered by a gap from the
/// first `PING` to the second reply: nothing twice, and every possible loss inside a signalled gap.
///
/// **Gaps.** When the only connection is lost, nothing receives messages until a new one has confirmed
/// its subscriptions: every subscription then gets one `gap(from: loss, to: confirmation)` before the
/// new connection's first message.
///
/// States per connection: `active` (delivers; can move to: retiring, retired, lost), `retiring` (O during
/// a handover; can move to: active, closed, lost), `joining` (N; can move to: active, closed), `resuming`
/// (a replacement after a loss, or a marker-less successor, until its confirmations; can move to: active,
/// lost).
///
/// `lostAt` (the start of the next gap) is set only when no connection delivers any more: losing a
/// successor that never delivered, while another connection still does, loses nothing.
struct SubscriberStateMachine {
    typealias SubscriptionID = UInt64
    typealias ConnectionID = Int
    typealias Kind = PubSubStateMachine.Kind
    typealias Push = PubSubStateMachine.Push

    struct Key: Hashable {
        var kind: Kind
        var name: PubSubName
    }

    enum Element: Hashable, Sendable {
        case message(RedisPubSubMessage)
        case gap(from: Date, to: Date)
    }

    private enum Role {
        case active
        /// `markerAt`: when its marker arrived; `publishedAt`: when the marker's `PUBLISH` was sent (what it
        /// holds back after its marker was published after that, and is lost if the successor fails too).
        case retiring(token: String, markerAt: Date?, publishedAt: Date?, buffer: [Push])
        /// `subscribedAt`: when its `SUBSCRIBE` was sent; everything it receives was published after that.
        case joining(token: String, sawMarker: Bool, buffer: [Push], predecessor: Predecessor, subscribedAt: Date)
        /// `discarding`: a marker-less successor, which drops what it receives until it is confirmed.
        case resuming(buffer: [Push], discarding: Bool)
    }

    /// What became of a joining successor's predecessor.
    private enum Predecessor {
        /// It still delivers, up to its marker.
        case running
        /// It was lost after its marker: it delivered everything before the marker.
        case lostAfterMarker
        /// It was lost before its marker: what it had not delivered is missing, and the successor's
        /// messages before its marker may repeat what it had.
        case lostBeforeMarker
    }

    /// Channels starting with this are the client's own (handover markers, of this client and of others
    /// on the same server): never delivered to a subscription, also when a pattern matches them.
    static let reservedPrefix: PubSubName = "__redis-rotation:"

    /// The channel every subscriber connection listens to for handover markers; never a user's.
    let markerChannel: PubSubName
    private var listeners: [Key: Set<SubscriptionID>] = [:]
    private var subscriptions: [SubscriptionID: [Key]] = [:]
    private var roles: [ConnectionID: Role] = [:]
    /// When the last delivering connection was lost, while no replacement has confirmed.
    private var lostAt: Date?

    init(markerChannel: PubSubName) {
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
    var wanted: [Kind: [PubSubName]] {
        var names: [Kind: [PubSubName]] = [:]
        for key in self.listeners.keys { names[key.kind, default: []].append(key.name) }
        return names.mapValues { $0.sorted() }
    }

    var hasSubscriptions: Bool { !self.subscriptions.isEmpty }

    /// When the last delivering connection was lost, while no replacement has confirmed.
    var lostSince: Date? { self.lostAt }

    /// The subscriptions that listen to `name`, in subscription order.
    func subscriptions(using kind: Kind, _ name: PubSubName) -> [SubscriptionID] {
        (self.listeners[Key(kind: kind, name: name)] ?? []).sorted()
    }

    /// The connection that delivers now, if any (not during a handover's switch, by construction).
    var deliveringConnection: ConnectionID? {
        self.roles.first { if case .active = $0.value { return true } else { return false } }?.key
    }

    /// Subscription `id` listens to `names`; returns the ones no subscription used yet (to subscribe on
    /// the server).
    mutating func subscribe(_ id: SubscriptionID, kind: Kind, names: [PubSubName]) -> [PubSubName] {
        var keys: [Key] = []
        var new: [PubSubName] = []
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
    mutating func unsubscribe(_ id: SubscriptionID) -> [Kind: [PubSubName]] {
        guard let keys = self.subscriptions.removeValue(forKey: id) else { return [:] }
        var unused: [Kind: [PubSubName]] = [:]
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
        self.roles[connection] = .resuming(buffer: [], discarding: false)
    }

    /// A successor for a replacement without the marker channel was opened: it drops what it receives
    /// until ``resumeConfirmed(_:at:)`` (the reply to a `PING` sent after the predecessor was retired).
    mutating func markerlessReplacementStarted(_ connection: ConnectionID) {
        self.roles[connection] = .resuming(buffer: [], discarding: true)
    }

    /// The delivering connection stops delivering at this point of its stream (the reply to a `PING`, in
    /// a replacement without the marker channel) and is closed; a gap from `date` will precede the
    /// successor's messages.
    mutating func connectionRetired(_ connection: ConnectionID, at date: Date) -> Action {
        guard case .active = self.roles[connection] else { return Action() }
        self.roles[connection] = nil
        if self.lostAt == nil && self.hasSubscriptions { self.lostAt = date }
        return Action(close: [connection], reconnect: self.hasSubscriptions && self.roles.isEmpty)
    }

    /// The replacement's subscriptions are confirmed: a gap when one was lost, then what it buffered.
    mutating func resumeConfirmed(_ connection: ConnectionID, at date: Date) -> Action {
        guard case .resuming(let buffer, _) = self.roles[connection] else { return Action() }
        var action = Action(deliveries: self.gapDeliveries(to: date))
        self.roles[connection] = .active
        for push in buffer { action.deliveries += self.route(push) }
        return action
    }

    /// A handover from the delivering connection to `successor` starts; the marker it will look for
    /// carries `token`; `date` is no later than when the successor's `SUBSCRIBE` is sent. Returns `false`
    /// (and changes nothing) when no connection delivers.
    mutating func handoverStarted(to successor: ConnectionID, token: String, at date: Date) -> Bool {
        guard let predecessor = self.deliveringConnection else { return false }
        self.roles[predecessor] = .retiring(token: token, markerAt: nil, publishedAt: nil, buffer: [])
        self.roles[successor] = .joining(token: token, sawMarker: false, buffer: [], predecessor: .running, subscribedAt: date)
        return true
    }

    /// The handover's marker is about to be published (`date` is before its `PUBLISH` is sent): what the
    /// predecessor receives after its marker was published after `date`.
    mutating func markerPublished(at date: Date) {
        for (connection, role) in self.roles {
            guard case .retiring(let token, let markerAt, nil, let buffer) = role else { continue }
            self.roles[connection] = .retiring(token: token, markerAt: markerAt, publishedAt: date, buffer: buffer)
        }
    }

    /// The successor could not be set up (open, subscribe, publish, or the markers did not arrive in
    /// time): the predecessor delivers again, from where it stopped.
    mutating func handoverAbandoned(_ successor: ConnectionID) -> Action {
        guard case .joining = self.roles[successor] else { return Action() }
        self.roles[successor] = nil
        var action = Action(close: [successor], handoverAbandoned: true)
        guard let (predecessor, role) = self.roles.first(where: { if case .retiring = $0.value { return true } else { return false } }),
            case .retiring(_, _, _, let buffer) = role
        else {
            // The predecessor is gone too (its loss set `lostAt`): nothing delivers.
            action.reconnect = self.hasSubscriptions
            return action
        }
        self.roles[predecessor] = .active
        for push in buffer { action.deliveries += self.route(push) }
        return action
    }

    /// A connection received `push` at `date`.
    mutating func pushReceived(_ push: Push, on connection: ConnectionID, at date: Date) -> Action {
        guard let role = self.roles[connection] else { return Action() }
        let marker = self.marker(in: push)
        switch role {
        case .active:
            return marker == nil ? Action(deliveries: self.route(push)) : Action()
        case .resuming(var buffer, let discarding):
            guard !discarding else { return Action() }
            if marker == nil { buffer.append(push) }
            self.roles[connection] = .resuming(buffer: buffer, discarding: false)
            return Action()
        case .retiring(let token, let markerAt, let publishedAt, var buffer):
            if markerAt != nil {
                if marker == nil { buffer.append(push) }
                self.roles[connection] = .retiring(token: token, markerAt: markerAt, publishedAt: publishedAt, buffer: buffer)
                return Action()
            }
            if marker == token {
                self.roles[connection] = .retiring(token: token, markerAt: date, publishedAt: publishedAt, buffer: [])
                return self.switchIfReady(at: date)
            }
            return marker == nil ? Action(deliveries: self.route(push)) : Action()
        case .joining(let token, let sawMarker, var buffer, let predecessor, let subscribedAt):
            if sawMarker {
                if marker == nil { buffer.append(push) }
                self.roles[connection] = .joining(token: token, sawMarker: true, buffer: buffer, predecessor: predecessor, subscribedAt: subscribedAt)
                return Action()
            }
            if marker == token {
                self.roles[connection] = .joining(token: token, sawMarker: true, buffer: [], predecessor: predecessor, subscribedAt: subscribedAt)
                return self.switchIfReady(at: date)
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
            // A successor that never delivered, lost while another connection delivers, misses nothing.
            let othersDeliver = self.roles.values.contains { if case .resuming = $0 { return false } else { return true } }
            if !othersDeliver && self.lostAt == nil && self.hasSubscriptions { self.lostAt = date }
            return Action(reconnect: self.hasSubscriptions && self.deliveringConnection == nil)
        case .joining:
            self.roles[connection] = role
            var action = self.handoverAbandoned(connection)
            action.close = []
            return action
        case .retiring(_, let markerAt, let publishedAt, _):
            guard let (successor, successorRole) = self.roles.first(where: { if case .joining = $0.value { return true } else { return false } }),
                case .joining(let token, let successorSawMarker, let buffer, _, let subscribedAt) = successorRole
            else {
                if self.lostAt == nil && self.hasSubscriptions { self.lostAt = date }
                return Action(reconnect: self.hasSubscriptions)
            }
            if let markerAt {
                // Everything up to the marker was delivered: the successor takes over at its marker. Should
                // the successor fail before it, what the predecessor held back is missing: published after
                // the marker, so after the marker's PUBLISH was sent (its arrival can be much later).
                self.roles[successor] = .joining(
                    token: token, sawMarker: successorSawMarker, buffer: buffer, predecessor: .lostAfterMarker, subscribedAt: subscribedAt
                )
                if self.lostAt == nil && self.hasSubscriptions { self.lostAt = min(publishedAt ?? markerAt, markerAt) }
                return Action()
            }
            // What the successor dropped before its marker (the predecessor might have delivered it) was
            // published after its SUBSCRIBE was sent, possibly long before the loss was noticed.
            if self.lostAt == nil && self.hasSubscriptions { self.lostAt = min(date, subscribedAt) }
            guard successorSawMarker else {
                // Lost before its marker: the successor's messages before its own marker may repeat what
                // the predecessor delivered, so it still waits for its marker, which ends the gap.
                self.roles[successor] = .joining(token: token, sawMarker: false, buffer: [], predecessor: .lostBeforeMarker, subscribedAt: subscribedAt)
                return Action()
            }
            // The successor is past its marker: after a gap, it delivers what it held back.
            self.roles[successor] = .active
            var action = Action(handoverCompleted: true)
            action.deliveries = self.gapDeliveries(to: date)
            for push in buffer { action.deliveries += self.route(push) }
            return action
        }
    }

    /// Both markers are in (or the predecessor was lost): the successor delivers its buffer and then
    /// alone, after a gap ending at `date` when the predecessor was lost before its marker; the
    /// predecessor is closed.
    private mutating func switchIfReady(at date: Date) -> Action {
        var predecessor: ConnectionID?
        var predecessorReady = false
        var successor: ConnectionID?
        var successorBuffer: [Push] = []
        var successorReady = false
        var predecessorEnd = Predecessor.running
        for (connection, role) in self.roles {
            switch role {
            case .retiring(_, let markerAt, _, _):
                predecessor = connection
                predecessorReady = markerAt != nil
            case .joining(_, let sawMarker, let buffer, let end, _):
                successor = connection
                successorReady = sawMarker
                successorBuffer = buffer
                predecessorEnd = end
            default:
                break
            }
        }
        guard let successor, successorReady, predecessorReady || predecessorEnd != .running else { return Action() }
        var action = Action(handoverCompleted: true)
        if let predecessor {
            self.roles[predecessor] = nil
            action.close = [predecessor]
        }
        self.roles[successor] = .active
        switch predecessorEnd {
        case .running: break
        case .lostAfterMarker: self.lostAt = nil
        case .lostBeforeMarker: action.deliveries = self.gapDeliveries(to: date)
        }
        for push in successorBuffer { action.deliveries += self.route(push) }
        return action
    }

    /// One gap from `lostAt` to `date` for every subscription; the loss is then accounted for.
    private mutating func gapDeliveries(to date: Date) -> [Delivery] {
        guard let lostAt = self.lostAt.take() else { return [] }
        return self.subscriptions.keys.sorted().map { Delivery(subscription: $0, element: .gap(from: lostAt, to: date)) }
    }

    /// The marker token `push` carries, if it is a marker.
    private func marker(in push: Push) -> String? {
        guard case .message(.channel, let channel, nil, let payload) = push, channel == self.markerChannel else { return nil }
        return String(buffer: payload)
    }

    /// The subscriptions a message reaches, in subscription order.
    private func route(_ push: Push) -> [Delivery] {
        // A marker (this client's or another's) is never a user's message, also when a pattern (`*`)
        // matches its channel.
        guard case .message(let kind, let channel, let pattern, let payload) = push, channel != self.markerChannel, !channel.hasPrefix(Self.reservedPrefix)
        else { return [] }
        let key = pattern.map { Key(kind: .pattern, name: $0) } ?? Key(kind: kind, name: channel)
        let message = RedisPubSubMessage(kind: kind, channel: channel, pattern: pattern, payload: payload)
        return (self.listeners[key] ?? []).sorted().map { Delivery(subscription: $0, element: .message(message)) }
    }
}
