import Testing

@testable import RedisRotation

@Suite("Session state of a connection")
struct SessionStateTests {
    func state(after commands: [RedisCommand]) -> SessionState {
        var state = SessionState()
        for command in commands { state.commandEnqueued(command.sessionEffect) }
        return state
    }

    @Test(
        "commands are classified by what they leave on the connection",
        arguments: [
            (RedisCommand("GET", "k"), SessionEffect.none),
            (RedisCommand("multi"), .beginsTransaction),
            (RedisCommand("EXEC"), .endsTransaction),
            (RedisCommand("DISCARD"), .endsTransaction),
            (RedisCommand("WATCH", "a", "b"), .watches),
            (RedisCommand("UNWATCH"), .unwatches),
            (RedisCommand("SELECT", "3"), .selectsDatabase),
            (RedisCommand("CLIENT", "setname", "x"), .renames),
            (RedisCommand("CLIENT", "ID"), .none),
            (RedisCommand("CLIENT", "REPLY", "OFF"), .irreversible("CLIENT REPLY")),
            (RedisCommand("BLPOP", "k", "0"), .blocks),
            (RedisCommand("BZPOPMIN", "k", "1"), .blocks),
            (RedisCommand("WAIT", "1", "0"), .blocks),
            (RedisCommand("XREAD", "COUNT", "1", "STREAMS", "s", "0"), .none),
            (RedisCommand("XREAD", "block", "0", "STREAMS", "s", "$"), .blocks),
            (RedisCommand("XREADGROUP", "GROUP", "g", "c", "BLOCK", "10", "STREAMS", "s", ">"), .blocks),
            (RedisCommand("SUBSCRIBE", "c"), .irreversible("SUBSCRIBE")),
            (RedisCommand("AUTH", "pw"), .irreversible("AUTH")),
            (RedisCommand("HELLO", "3"), .irreversible("HELLO")),
            (RedisCommand("RESET"), .irreversible("RESET")),
            (RedisCommand("MONITOR"), .irreversible("MONITOR")),
        ]
    )
    func classification(command: RedisCommand, effect: SessionEffect) {
        #expect(command.sessionEffect == effect)
    }

    @Test("a fresh connection, and one that ran only ordinary and blocking commands, is reused as is")
    func clean() {
        #expect(SessionState().release == .reuse)
        #expect(self.state(after: [RedisCommand("SET", "k", "v"), RedisCommand("BLPOP", "l", "1")]).release == .reuse)
    }

    @Test("an open transaction is discarded (which also drops watches), then PING proves the stream is in step")
    func transaction() {
        #expect(self.state(after: [RedisCommand("WATCH", "k"), RedisCommand("MULTI")]).release == .restore([.discard, .unwatch, .ping]))
        #expect(self.state(after: [RedisCommand("MULTI"), RedisCommand("SET", "k", "v")]).release == .restore([.discard, .ping]))
        #expect(self.state(after: [RedisCommand("MULTI"), RedisCommand("EXEC")]).release == .reuse)
        #expect(self.state(after: [RedisCommand("MULTI"), RedisCommand("DISCARD")]).release == .reuse)
    }

    @Test("watches are undone with UNWATCH; an UNWATCH queued inside MULTI does not count until EXEC")
    func watches() {
        #expect(self.state(after: [RedisCommand("WATCH", "k")]).release == .restore([.unwatch, .ping]))
        #expect(self.state(after: [RedisCommand("WATCH", "k"), RedisCommand("UNWATCH")]).release == .reuse)
        #expect(self.state(after: [RedisCommand("WATCH", "k"), RedisCommand("MULTI"), RedisCommand("EXEC")]).release == .reuse)
        // EXEC or DISCARD without MULTI is an error on the server, which keeps the watch.
        #expect(self.state(after: [RedisCommand("WATCH", "k"), RedisCommand("EXEC")]).release == .restore([.unwatch, .ping]))
        #expect(
            self.state(after: [RedisCommand("WATCH", "k"), RedisCommand("MULTI"), RedisCommand("UNWATCH")]).release
                == .restore([.discard, .unwatch, .ping])
        )
    }

    @Test("database and name changes are put back; an abandoned reply alone needs only the PING")
    func databaseNameAndOwedReplies() {
        #expect(
            self.state(after: [RedisCommand("SELECT", "2"), RedisCommand("CLIENT", "SETNAME", "x")]).release
                == .restore([.selectDatabase, .setName, .ping])
        )
        var owed = SessionState()
        owed.replyAbandoned()
        #expect(owed.release == .restore([.ping]))
        #expect(!owed.isClean)
    }

    @Test("everything at once, restored: clean again; irreversible changes survive restoration and close")
    func restoredAndIrreversible() {
        var state = self.state(after: [
            RedisCommand("SELECT", "2"), RedisCommand("WATCH", "k"), RedisCommand("MULTI"), RedisCommand("CLIENT", "SETNAME", "x"),
        ])
        state.replyAbandoned()
        #expect(state.release == .restore([.discard, .unwatch, .selectDatabase, .setName, .ping]))
        state.restored()
        #expect(state.release == .reuse)

        var subscribed = self.state(after: [RedisCommand("SUBSCRIBE", "c"), RedisCommand("MONITOR")])
        #expect(subscribed.release == .close("SUBSCRIBE was sent on it"))
        subscribed.restored()
        #expect(subscribed.release == .close("SUBSCRIBE was sent on it"))
    }
}
