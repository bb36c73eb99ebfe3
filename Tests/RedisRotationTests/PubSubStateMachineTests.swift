import NIOCore
import Testing

@testable import RedisRotation

@Suite("Pub/sub state machine: confirmations, messages and replies told apart")
struct PubSubStateMachineTests {
    typealias Machine = PubSubStateMachine

    func bulk(_ text: String) -> RESPValue { .bulkString(ByteBuffer(string: text)) }
    func confirmation(_ kind: String, _ name: String?, _ count: Int64) -> RESPValue {
        .array([self.bulk(kind), name.map(self.bulk) ?? .null, .integer(count)])
    }
    func message(_ channel: String, _ payload: String) -> RESPValue {
        .array([self.bulk("message"), self.bulk(channel), self.bulk(payload)])
    }
    func pushed(_ channel: PubSubName, _ payload: String) -> Machine.Action {
        .push(.message(.channel, channel: channel, pattern: nil, payload: ByteBuffer(string: payload)))
    }

    @Test("a SUBSCRIBE of two channels is one reply, made of both confirmations")
    func subscribeTwo() {
        var machine = Machine()
        machine.commandsEnqueued([.subscribe(.channel, count: 2)])
        let first = self.confirmation("subscribe", "a", 1)
        let second = self.confirmation("subscribe", "b", 2)
        #expect(machine.valueReceived(first) == .consumed)
        #expect(machine.valueReceived(second) == .reply(.array([first, second])))
        #expect(machine.confirmed == [.channel: ["a", "b"]])
        #expect(machine.isSubscribed)
    }

    @Test("messages between confirmations and after them are pushes, and leave the reply count alone")
    func messagesInterleaved() {
        var machine = Machine()
        machine.commandsEnqueued([.subscribe(.channel, count: 2), nil])
        #expect(machine.valueReceived(self.confirmation("subscribe", "a", 1)) == .consumed)
        #expect(machine.valueReceived(self.message("a", "one")) == self.pushed("a", "one"))
        #expect(machine.valueReceived(self.confirmation("subscribe", "b", 2)) != .consumed)
        #expect(machine.valueReceived(self.message("b", "two")) == self.pushed("b", "two"))
        // The PING's reply in subscribed mode is an array too, but not a message.
        let pong = RESPValue.array([self.bulk("pong"), self.bulk("")])
        #expect(machine.valueReceived(pong) == .reply(pong))
    }

    @Test("an array that looks like a message is an ordinary reply while nothing is subscribed")
    func lookalikeBeforeSubscribing() {
        var machine = Machine()
        machine.commandsEnqueued([nil, .subscribe(.channel, count: 1)])
        let lookalike = self.message("a", "x")
        #expect(machine.valueReceived(lookalike) == .reply(lookalike))
        let confirmation = self.confirmation("subscribe", "a", 1)
        #expect(machine.valueReceived(confirmation) == .reply(.array([confirmation])))
        #expect(machine.valueReceived(lookalike) == self.pushed("a", "x"))
    }

    @Test("after the last unsubscribe confirmation, arrays are replies again")
    func unsubscribeEndsSubscribedMode() {
        var machine = Machine()
        machine.commandsEnqueued([.subscribe(.channel, count: 1), .unsubscribe(.channel, count: 1), nil])
        _ = machine.valueReceived(self.confirmation("subscribe", "a", 1))
        #expect(machine.valueReceived(self.message("a", "late")) == self.pushed("a", "late"))
        let unsubscribed = self.confirmation("unsubscribe", "a", 0)
        #expect(machine.valueReceived(unsubscribed) == .reply(.array([unsubscribed])))
        #expect(!machine.isSubscribed)
        let lookalike = self.message("a", "x")
        #expect(machine.valueReceived(lookalike) == .reply(lookalike))
    }

    @Test("an UNSUBSCRIBE without names expects one confirmation per channel the server confirmed")
    func unsubscribeAll() {
        var machine = Machine()
        machine.commandsEnqueued([.subscribe(.channel, count: 3), .unsubscribe(.channel, count: 0)])
        for (index, name) in ["a", "b", "c"].enumerated() {
            _ = machine.valueReceived(self.confirmation("subscribe", name, Int64(index + 1)))
        }
        let replies = [("b", 2), ("a", 1), ("c", 0)].map { self.confirmation("unsubscribe", $0.0, Int64($0.1)) }
        #expect(machine.valueReceived(replies[0]) == .consumed)
        #expect(machine.valueReceived(replies[1]) == .consumed)
        #expect(machine.valueReceived(replies[2]) == .reply(.array(replies)))
        #expect(!machine.isSubscribed)
    }

    @Test("names are bytes: two channels that differ only in Unicode normalization are two confirmations for an UNSUBSCRIBE without names")
    func unsubscribeAllCountsBytes() {
        var machine = Machine()
        let names = ["caf\u{E9}", "cafe\u{301}"]
        machine.commandsEnqueued([.subscribe(.channel, count: 2), .unsubscribe(.channel, count: 0), nil])
        for (index, name) in names.enumerated() {
            _ = machine.valueReceived(self.confirmation("subscribe", name, Int64(index + 1)))
        }
        #expect(machine.confirmed == [.channel: [PubSubName(names[0]), PubSubName(names[1])]])
        let replies = [(names[0], 1), (names[1], 0)].map { self.confirmation("unsubscribe", $0.0, Int64($0.1)) }
        #expect(machine.valueReceived(replies[0]) == .consumed)
        #expect(machine.valueReceived(replies[1]) == .reply(.array(replies)))
        #expect(machine.valueReceived(self.bulk("PONG")) == .reply(self.bulk("PONG")))
    }

    @Test("an UNSUBSCRIBE without names while nothing is subscribed is answered by one confirmation with a null name")
    func unsubscribeAllWhenEmpty() {
        var machine = Machine()
        machine.commandsEnqueued([.unsubscribe(.channel, count: 0), nil])
        let confirmation = self.confirmation("unsubscribe", nil, 0)
        #expect(machine.valueReceived(confirmation) == .reply(.array([confirmation])))
        #expect(machine.valueReceived(.integer(1)) == .reply(.integer(1)))
    }

    @Test("patterns and shard channels: pmessage carries its pattern, smessage is sharded")
    func patternsAndShards() {
        var machine = Machine()
        machine.commandsEnqueued([.subscribe(.pattern, count: 1), .subscribe(.shardChannel, count: 1)])
        _ = machine.valueReceived(self.confirmation("psubscribe", "news.*", 1))
        _ = machine.valueReceived(self.confirmation("ssubscribe", "s", 1))
        let pmessage = RESPValue.array([self.bulk("pmessage"), self.bulk("news.*"), self.bulk("news.a"), self.bulk("p")])
        #expect(machine.valueReceived(pmessage) == .push(.message(.pattern, channel: "news.a", pattern: "news.*", payload: ByteBuffer(string: "p"))))
        let smessage = RESPValue.array([self.bulk("smessage"), self.bulk("s"), self.bulk("q")])
        #expect(machine.valueReceived(smessage) == .push(.message(.shardChannel, channel: "s", pattern: nil, payload: ByteBuffer(string: "q"))))
        #expect(machine.confirmed == [.pattern: ["news.*"], .shardChannel: ["s"]])
    }

    @Test("an error reply to SUBSCRIBE (NOPERM) is its one reply")
    func subscribeRefused() {
        var machine = Machine()
        machine.commandsEnqueued([.subscribe(.channel, count: 2), nil])
        let error = RESPValue.error(ByteBuffer(string: "NOPERM this user has no permissions to access the 'a' channel"))
        #expect(machine.valueReceived(error) == .reply(error))
        #expect(!machine.isSubscribed)
        #expect(machine.valueReceived(.integer(7)) == .reply(.integer(7)))
    }

    @Test("an unsubscribe confirmation nobody asked for ends that subscription as a push")
    func unsolicitedUnsubscribe() {
        var machine = Machine()
        machine.commandsEnqueued([.subscribe(.shardChannel, count: 1)])
        _ = machine.valueReceived(self.confirmation("ssubscribe", "s", 1))
        #expect(machine.valueReceived(self.confirmation("sunsubscribe", "s", 0)) == .push(.unsubscribed(.shardChannel, name: "s")))
        #expect(!machine.isSubscribed)
    }

    @Test("RESET drops every subscription")
    func reset() {
        var machine = Machine()
        machine.commandsEnqueued([.subscribe(.channel, count: 1), .reset])
        _ = machine.valueReceived(self.confirmation("subscribe", "a", 1))
        let reset = RESPValue.simpleString(ByteBuffer(string: "RESET"))
        #expect(machine.valueReceived(reset) == .reply(reset))
        #expect(!machine.isSubscribed)
    }

    @Test("names that UNSUBSCRIBE or RESET removed are reported once, in order; names never confirmed are not")
    func unsubscribedByCommandReported() {
        var machine = Machine()
        machine.commandsEnqueued([.subscribe(.channel, count: 2), .subscribe(.pattern, count: 1), .unsubscribe(.channel, count: 2), .reset])
        _ = machine.valueReceived(self.confirmation("subscribe", "a", 1))
        _ = machine.valueReceived(self.confirmation("subscribe", "b", 2))
        _ = machine.valueReceived(self.confirmation("psubscribe", "p*", 3))
        #expect(machine.takeUnsubscribedByCommand().isEmpty)
        // "never" was not subscribed: the server confirms its unsubscribe all the same.
        #expect(machine.valueReceived(self.confirmation("unsubscribe", "a", 2)) == .consumed)
        let last = self.confirmation("unsubscribe", "never", 2)
        #expect(machine.valueReceived(last) == .reply(.array([self.confirmation("unsubscribe", "a", 2), last])))
        #expect(machine.takeUnsubscribedByCommand().map { "\($0.kind):\($0.name.string)" } == ["channel:a"])
        #expect(machine.takeUnsubscribedByCommand().isEmpty)
        let reset = RESPValue.simpleString(ByteBuffer(string: "RESET"))
        #expect(machine.valueReceived(reset) == .reply(reset))
        #expect(machine.takeUnsubscribedByCommand().map { "\($0.kind):\($0.name.string)" } == ["channel:b", "pattern:p*"])
        #expect(!machine.isSubscribed)
    }

    @Test("a reply that interrupts a command's confirmations closes the connection")
    func interruptedConfirmations() {
        var machine = Machine()
        machine.commandsEnqueued([.subscribe(.channel, count: 2)])
        _ = machine.valueReceived(self.confirmation("subscribe", "a", 1))
        guard case .close(let error) = machine.valueReceived(.integer(1)) else {
            Issue.record("expected the connection to close")
            return
        }
        #expect(error.code == .protocolError)
    }

    @Test("commands are classified by name and argument count", arguments: [
        ("SUBSCRIBE", 2, Machine.Command.subscribe(.channel, count: 2)),
        ("PSUBSCRIBE", 1, .subscribe(.pattern, count: 1)),
        ("SSUBSCRIBE", 1, .subscribe(.shardChannel, count: 1)),
        ("UNSUBSCRIBE", 0, .unsubscribe(.channel, count: 0)),
        ("PUNSUBSCRIBE", 3, .unsubscribe(.pattern, count: 3)),
        ("SUNSUBSCRIBE", 1, .unsubscribe(.shardChannel, count: 1)),
        ("RESET", 0, .reset),
    ])
    func classification(name: String, count: Int, expected: Machine.Command) {
        #expect(Machine.Command(name: name, argumentCount: count) == expected)
        #expect(Machine.Command(name: "GET", argumentCount: 1) == nil)
    }
}
