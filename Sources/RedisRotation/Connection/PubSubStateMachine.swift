import NIOCore

/// What a connection in RESP2 subscribed mode receives, told apart from replies to commands. Pure: the
/// command handler feeds it every value before the command queue sees it.
///
/// In RESP2 a `SUBSCRIBE c1 c2` is answered by one confirmation array per channel
/// (`subscribe c1 1`, `subscribe c2 2`), and while anything is subscribed the server interleaves
/// `message`/`pmessage`/`smessage` arrays that answer no command. The command queue expects exactly
/// one reply per command, so this machine folds the confirmations of one command into one reply (an
/// array of them) and takes the messages out of the reply stream.
///
/// Telling them apart needs no guessing: a message can only arrive while something is confirmed
/// subscribed, and while anything is subscribed the server refuses every command but the subscribe
/// family, `PING` (answered `pong` as an array), `QUIT` and `RESET`; so an array that starts with
/// `message` is a push exactly when the confirmed set is non-empty. Confirmations belong to the oldest
/// unanswered command when that command is of the subscribe family; an unsubscribe confirmation
/// nobody asked for (a Redis Cluster node that lost a shard channel's slot sends `sunsubscribe`) is a
/// push of its own.
///
/// States: the confirmed sets (what the server has acknowledged, in reply order) and the subscribe-family
/// commands still owed replies. Can move to: closed, on a confirmation that contradicts its command.
struct PubSubStateMachine {
    /// The three families of subscriptions, each with its own commands and messages.
    enum Kind: Hashable, Sendable, CaseIterable {
        case channel, pattern, shardChannel

        /// The commands that add and remove subscriptions of this kind.
        var subscribeCommand: String {
            switch self {
            case .channel: return "SUBSCRIBE"
            case .pattern: return "PSUBSCRIBE"
            case .shardChannel: return "SSUBSCRIBE"
            }
        }

        var unsubscribeCommand: String {
            switch self {
            case .channel: return "UNSUBSCRIBE"
            case .pattern: return "PUNSUBSCRIBE"
            case .shardChannel: return "SUNSUBSCRIBE"
            }
        }

        /// The first element of the server's confirmation arrays.
        var subscribeConfirmation: String { self.subscribeCommand.lowercased() }
        var unsubscribeConfirmation: String { self.unsubscribeCommand.lowercased() }
        /// The first element of a message array.
        var messageName: String {
            switch self {
            case .channel: return "message"
            case .pattern: return "pmessage"
            case .shardChannel: return "smessage"
            }
        }
    }

    /// A subscribe-family command, as far as its replies are concerned.
    enum Command: Hashable, Sendable {
        /// Answered by one confirmation per name (`count` names).
        case subscribe(Kind, count: Int)
        /// Answered by one confirmation per name; with no names (`count` 0), by one per subscription of
        /// the kind the server holds when it runs the command (or one with a null name when it holds none).
        case unsubscribe(Kind, count: Int)
        /// `RESET`: answered `+RESET`, and the server drops every subscription.
        case reset

        /// Classifies a command from its upper-cased name and its number of arguments; `nil` for commands
        /// whose reply is one value, as any other.
        init?(name: String, argumentCount: Int) {
            for kind in Kind.allCases {
                if name == kind.subscribeCommand {
                    self = .subscribe(kind, count: argumentCount)
                    return
                }
                if name == kind.unsubscribeCommand {
                    self = .unsubscribe(kind, count: argumentCount)
                    return
                }
            }
            guard name == "RESET" else { return nil }
            self = .reset
        }
    }

    /// Something the server sent that answers no command.
    enum Push: Hashable, Sendable {
        /// A published message. `pattern` is set for `pmessage`.
        case message(Kind, channel: PubSubName, pattern: PubSubName?, payload: ByteBuffer)
        /// The server ended a subscription on its own (a shard channel's slot moved away).
        case unsubscribed(Kind, name: PubSubName)
    }

    enum Action: Hashable {
        /// The value answers the oldest unanswered command: give it to the command queue.
        case reply(RESPValue)
        /// A confirmation that is not its command's last: nothing to do yet.
        case consumed
        /// A push: give it to whoever listens to the connection's subscriptions.
        case push(Push)
        /// The confirmations contradict the commands: the stream is out of sync. Close with this error.
        case close(RedisError)
    }

    /// Subscribe-family commands still owed replies, with their position among all commands enqueued.
    private var pending = CircularBuffer<(position: UInt64, command: Command)>(initialCapacity: 4)
    /// Commands enqueued, and replies handed to the command queue, so far.
    private var enqueued: UInt64 = 0
    private var answered: UInt64 = 0
    /// Confirmations received for the command at the head of `pending`.
    private var confirmations: [RESPValue] = []
    /// How many confirmations the head command expects, once known.
    private var expected: Int?
    /// What the server has confirmed subscribed, per kind; names are bytes, as the server compares them.
    private(set) var confirmed: [Kind: Set<PubSubName>] = [:]
    /// Confirmed names an unsubscribe-family command or `RESET` removed, not yet taken by the shell.
    private var unsubscribedByCommand: [(kind: Kind, name: PubSubName)] = []
    private var isClosed = false

    /// Whether the server holds at least one subscription: only then can a message arrive.
    var isSubscribed: Bool { self.confirmed.values.contains { !$0.isEmpty } }

    /// The confirmed names that commands (`UNSUBSCRIBE` and siblings, `RESET`) removed since the last call,
    /// in the order the server removed them: whoever relied on them must be told.
    mutating func takeUnsubscribedByCommand() -> [(kind: Kind, name: PubSubName)] {
        guard !self.unsubscribedByCommand.isEmpty else { return [] }
        defer { self.unsubscribedByCommand = [] }
        return self.unsubscribedByCommand
    }

    /// `count` ordinary commands were written (none of the subscribe family).
    mutating func ordinaryCommandsEnqueued(_ count: Int) {
        self.enqueued += UInt64(count)
    }

    /// Commands were written, in this order (`nil` for ordinary ones).
    mutating func commandsEnqueued(_ commands: [Command?]) {
        for command in commands {
            if let command { self.pending.append((self.enqueued, command)) }
            self.enqueued += 1
        }
    }

    /// A complete value arrived.
    mutating func valueReceived(_ value: RESPValue) -> Action {
        if self.isClosed { return .reply(value) }
        let head = self.pending.first.flatMap { $0.position == self.answered ? $0.command : nil }
        switch head {
        case .subscribe(let kind, let count)?:
            if let name = Self.confirmation(value, named: kind.subscribeConfirmation) {
                return self.confirmationReceived(value, expected: count) { $0.confirmed[kind, default: []].insert(name ?? PubSubName(bytes: [])) }
            }
        case .unsubscribe(let kind, let count)?:
            if let name = Self.confirmation(value, named: kind.unsubscribeConfirmation) {
                // With no names, the server answers for what it holds when it runs the command: what it
                // has confirmed so far, since it runs commands in order.
                let expected = count == 0 ? max(1, self.confirmed[kind]?.count ?? 0) : count
                return self.confirmationReceived(value, expected: expected) { machine in
                    if let name, machine.confirmed[kind]?.remove(name) != nil {
                        machine.unsubscribedByCommand.append((kind, name))
                    }
                }
            }
        case .reset?:
            if case .simpleString = value {
                for kind in Kind.allCases {
                    for name in (self.confirmed[kind] ?? []).sorted() { self.unsubscribedByCommand.append((kind, name)) }
                }
                self.confirmed = [:]
            }
        case nil:
            break
        }
        if self.isSubscribed, let push = Self.push(in: value, confirmed: self.confirmed) {
            if case .unsubscribed(let kind, let name) = push { self.confirmed[kind]?.remove(name) }
            return .push(push)
        }
        if !self.confirmations.isEmpty {
            self.isClosed = true
            return .close(RedisError(code: .protocolError, message: "the server interrupted the confirmations of a subscribe command"))
        }
        if head != nil { _ = self.pending.popFirst() }
        self.answered += 1
        return .reply(value)
    }

    private mutating func confirmationReceived(_ value: RESPValue, expected: Int, record: (inout Self) -> Void) -> Action {
        // The count is fixed by the first confirmation (an unsubscribe of everything removes as it goes).
        let expected = self.expected ?? expected
        self.expected = expected
        record(&self)
        self.confirmations.append(value)
        guard self.confirmations.count >= expected else { return .consumed }
        let reply = RESPValue.array(self.confirmations)
        self.confirmations = []
        self.expected = nil
        _ = self.pending.popFirst()
        self.answered += 1
        return .reply(reply)
    }

    /// The name in a confirmation array `[kind, name-or-null, count]`, `.some(nil)` for a null name;
    /// `nil` when `value` is not such a confirmation.
    private static func confirmation(_ value: RESPValue, named kind: String) -> PubSubName?? {
        guard case .array(let elements) = value, elements.count == 3, elements[0].string == kind,
            case .integer = elements[2]
        else { return nil }
        if elements[1].isNull { return .some(nil) }
        guard let name = elements[1].bytes else { return nil }
        return .some(PubSubName(bytes: name.readableBytesView))
    }

    private static func push(in value: RESPValue, confirmed: [Kind: Set<PubSubName>]) -> Push? {
        guard case .array(let elements) = value, let first = elements.first?.string else { return nil }
        for kind in Kind.allCases {
            if first == kind.messageName {
                if kind == .pattern {
                    guard elements.count == 4, let pattern = elements[1].name, let channel = elements[2].name,
                        let payload = elements[3].bytes
                    else { return nil }
                    return .message(kind, channel: channel, pattern: pattern, payload: payload)
                }
                guard elements.count == 3, let channel = elements[1].name, let payload = elements[2].bytes else { return nil }
                return .message(kind, channel: channel, pattern: nil, payload: payload)
            }
            if first == kind.unsubscribeConfirmation, elements.count == 3, let name = elements[1].name,
                confirmed[kind]?.contains(name) == true
            {
                return .unsubscribed(kind, name: name)
            }
        }
        return nil
    }
}

extension RESPValue {
    /// A string's bytes as a channel or pattern name, exactly as the server sent them.
    fileprivate var name: PubSubName? { self.bytes.map { PubSubName(bytes: $0.readableBytesView) } }
}
