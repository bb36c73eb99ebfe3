import NIOCore
import Testing

@testable import RedisRotation

@Suite("Handshake state machine")
struct HandshakeStateMachineTests {
    typealias Machine = HandshakeStateMachine

    func error(_ text: String) -> RESPValue { .error(ByteBuffer(string: text)) }
    let ok = RESPValue.simpleString(ByteBuffer(string: "OK"))
    let helloReply = RESPValue.array([
        .bulkString(ByteBuffer(string: "server")), .bulkString(ByteBuffer(string: "redis")),
        .bulkString(ByteBuffer(string: "version")), .bulkString(ByteBuffer(string: "7.0.15")),
        .bulkString(ByteBuffer(string: "proto")), .integer(2),
        .bulkString(ByteBuffer(string: "id")), .integer(42),
    ])

    @Test("HELLO carries AUTH and SETNAME, with SELECT pipelined behind it")
    func startWithEverything() {
        var machine = Machine(settings: .init(username: "alice", hasPassword: true, name: "app", database: 3))
        #expect(machine.start() == .send([.hello(authUsername: "alice", name: "app"), .select(3)]))
        let action = machine.repliesReceived([self.helloReply, self.ok])
        #expect(action == .succeed(.init(version: "7.0.15", clientID: 42)))
    }

    @Test("a password without a user name authenticates as default; database 0 is not selected")
    func defaultUser() {
        var machine = Machine(settings: .init(username: nil, hasPassword: true, name: nil, database: 0))
        #expect(machine.start() == .send([.hello(authUsername: "default", name: nil)]))
    }

    @Test("without a password HELLO carries no AUTH")
    func noPassword() {
        var machine = Machine(settings: .init(username: "alice", hasPassword: false, name: nil, database: nil))
        #expect(machine.start() == .send([.hello(authUsername: nil, name: nil)]))
        #expect(machine.repliesReceived([self.helloReply]) == .succeed(.init(version: "7.0.15", clientID: 42)))
    }

    @Test("WRONGPASS fails the handshake as authenticationFailed, without the server's message")
    func wrongPassword() {
        var machine = Machine(settings: .init(username: "alice", hasPassword: true, name: "app", database: 2))
        _ = machine.start()
        let action = machine.repliesReceived([
            self.error("WRONGPASS invalid username-password pair or user is disabled."),
            self.error("NOAUTH Authentication required."),
        ])
        guard case .fail(let error) = action else {
            Issue.record("expected failure, got \(action)")
            return
        }
        #expect(error.code == .authenticationFailed)
        #expect(error.serverErrorPrefix == "WRONGPASS")
        #expect(error.serverMessage == nil)
    }

    @Test("NOAUTH without a password says that authentication is required")
    func noAuth() {
        var machine = Machine(settings: .init(username: nil, hasPassword: false, name: "app", database: nil))
        _ = machine.start()
        let action = machine.repliesReceived([self.error("NOAUTH HELLO must be called with the client already authenticated")])
        guard case .fail(let error) = action else {
            Issue.record("expected failure")
            return
        }
        #expect(error.code == .authenticationFailed)
        #expect(error.serverErrorPrefix == "NOAUTH")
        // No secret was sent, so the server's words are kept.
        #expect(error.serverMessage?.hasPrefix("NOAUTH") == true)
    }

    @Test("a server without HELLO gets AUTH, CLIENT SETNAME and SELECT", arguments: [
        "ERR unknown command 'HELLO', with args beginning with: '2' 'AUTH' 'alice' 'secret'",
        "ERR unknown command `HELLO`, with args beginning with: `2`, ",
        "NOPERM this user has no permissions to run the 'hello' command",
    ])
    func fallback(reply: String) {
        var machine = Machine(settings: .init(username: "alice", hasPassword: true, name: "app", database: 1))
        _ = machine.start()
        let action = machine.repliesReceived([self.error(reply), self.error("NOAUTH Authentication required.")])
        #expect(action == .send([.auth(username: "alice"), .setName("app"), .select(1)]))
        #expect(machine.repliesReceived([self.ok, self.ok, self.ok]) == .succeed(.init()))
    }

    @Test("the fallback's AUTH rejection is authenticationFailed")
    func fallbackWrongPassword() {
        var machine = Machine(settings: .init(username: nil, hasPassword: true, name: nil, database: nil))
        _ = machine.start()
        #expect(machine.repliesReceived([self.error("ERR unknown command 'HELLO'")]) == .send([.auth(username: nil)]))
        guard case .fail(let error) = machine.repliesReceived([self.error("WRONGPASS invalid password")]) else {
            Issue.record("expected failure")
            return
        }
        #expect(error.code == .authenticationFailed)
        #expect(error.serverMessage == nil)
    }

    @Test("with nothing to send after a HELLO-less server, the handshake is done")
    func fallbackNothingToDo() {
        var machine = Machine(settings: .init(username: nil, hasPassword: false, name: nil, database: nil))
        _ = machine.start()
        #expect(machine.repliesReceived([self.error("ERR unknown command 'HELLO'")]) == .succeed(.init()))
    }

    @Test("a failing SELECT fails the handshake as a server error naming SELECT")
    func selectFails() {
        var machine = Machine(settings: .init(username: "alice", hasPassword: true, name: nil, database: 99))
        _ = machine.start()
        guard case .fail(let error) = machine.repliesReceived([self.helloReply, self.error("ERR DB index is out of range")]) else {
            Issue.record("expected failure")
            return
        }
        #expect(error.code == .serverError)
        #expect(error.serverErrorPrefix == "ERR")
        #expect(error.message.contains("SELECT"))
        #expect(error.serverMessage == "ERR DB index is out of range")
    }

    @Test("another HELLO error fails the handshake as a server error")
    func otherHelloError() {
        var machine = Machine(settings: .init(username: "alice", hasPassword: true, name: nil, database: nil))
        _ = machine.start()
        guard case .fail(let error) = machine.repliesReceived([self.error("LOADING Redis is loading the dataset in memory")]) else {
            Issue.record("expected failure")
            return
        }
        #expect(error.code == .serverError)
        #expect(error.serverErrorPrefix == "LOADING")
    }

    @Test("a cluster replica reader sends READONLY behind HELLO (and behind AUTH on a server without HELLO); a refusal names READONLY")
    func readOnly() {
        var machine = Machine(settings: .init(username: "alice", hasPassword: true, name: "app", database: nil, readOnly: true))
        #expect(machine.start() == .send([.hello(authUsername: "alice", name: "app"), .readOnly]))
        #expect(machine.repliesReceived([self.helloReply, self.ok]) == .succeed(.init(version: "7.0.15", clientID: 42)))

        var old = Machine(settings: .init(username: "alice", hasPassword: true, name: nil, database: nil, readOnly: true))
        _ = old.start()
        #expect(old.repliesReceived([self.error("ERR unknown command 'HELLO'"), self.ok]) == .send([.auth(username: "alice"), .readOnly]))
        #expect(old.repliesReceived([self.ok, self.ok]) == .succeed(.init()))

        var refused = Machine(settings: .init(username: "alice", hasPassword: true, name: nil, database: nil, readOnly: true))
        _ = refused.start()
        guard case .fail(let error) = refused.repliesReceived([self.helloReply, self.error("ERR This instance has cluster support disabled")]) else {
            Issue.record("expected failure")
            return
        }
        #expect(error.code == .serverError)
        #expect(error.message.contains("READONLY"))
    }
}
