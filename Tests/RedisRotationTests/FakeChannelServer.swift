import NIOCore
import NIOEmbedded
import Synchronization

@testable import RedisRotation

/// A Redis stand-in behind in-memory channels, for `RedisClient` tests that need no process and no
/// clock: every connection the client opens is a `NIOAsyncTestingChannel` on one manual event loop,
/// whose writes this fake reads, parses and answers. It speaks the commands the pool and the tests
/// use (HELLO with AUTH and SETNAME, AUTH, CLIENT SETNAME, PING, SELECT, GET, SET, DEL, INCR, MULTI,
/// EXEC, DISCARD, WATCH, UNWATCH), checks passwords per user, and keeps a log of every command per
/// connection. Tests can hold a connection's replies, drop connections, and change passwords.
final class FakeChannelServer: Sendable {
    let loop: NIOAsyncTestingEventLoop

    struct Connection: Sendable {
        let number: Int
        let channel: NIOAsyncTestingChannel
    }

    private struct Session {
        var channel: NIOAsyncTestingChannel
        var user: String?
        var name: String?
        var transaction: [[String]]?
        /// Commands are held (neither run nor answered) while set; run and answered in order when released.
        var holding = false
        var held: [[String]] = []
        var log: [[String]] = []
    }

    private struct State {
        var passwords: [String: Set<String>] = [:]
        var data: [String: String] = [:]
        var sessions: [Int: Session] = [:]
        var nextNumber = 0
        /// Hold the replies of every connection opened from now on, from its first command.
        var holdNewConnections = false
    }

    private let state = Mutex(State())

    init(loop: NIOAsyncTestingEventLoop, users: [String: Set<String>]) {
        self.loop = loop
        self.state.withLock { $0.passwords = users }
    }

    /// The connection factory of a `RedisClient` under test.
    var factory: RedisClient.ConnectionFactory {
        { configuration, logger in
            let channel = NIOAsyncTestingChannel(loop: self.loop)
            try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: configuration.port)).get()
            let number = self.state.withLock { state in
                state.nextNumber += 1
                state.sessions[state.nextNumber] = Session(channel: channel, holding: state.holdNewConnections)
                return state.nextNumber
            }
            Task { await self.serve(number, channel) }
            return try await RedisConnection.connect(over: channel, configuration: configuration, logger: logger)
        }
    }

    // MARK: Controls

    func setPasswords(_ passwords: Set<String>, of user: String) {
        self.state.withLock { $0.passwords[user] = passwords }
    }

    func holdNewConnections(_ hold: Bool) {
        self.state.withLock { $0.holdNewConnections = hold }
    }

    /// Holds the commands connection `number` receives from now on, or releases them (run and answered
    /// in order, as if they arrived now).
    func hold(_ number: Int, _ hold: Bool) async throws {
        let (channel, released) = self.state.withLock { state -> (NIOAsyncTestingChannel?, [[String]]) in
            guard var session = state.sessions[number] else { return (nil, []) }
            session.holding = hold
            let released = hold ? [] : session.held
            if !hold { session.held = [] }
            state.sessions[number] = session
            return (session.channel, released)
        }
        for command in released { try await channel?.writeInbound(self.handle(command, on: number, logged: true)) }
    }

    /// Runs and answers the first `count` commands held on connection `number`, then closes it as a
    /// dying server would: the others are never run.
    func release(_ number: Int, answering count: Int) async throws {
        let (channel, released) = self.state.withLock { state -> (NIOAsyncTestingChannel?, [[String]]) in
            guard var session = state.sessions[number] else { return (nil, []) }
            let released = Array(session.held.prefix(count))
            session.held = []
            session.holding = false
            state.sessions[number] = session
            return (session.channel, released)
        }
        for command in released { try await channel?.writeInbound(self.handle(command, on: number, logged: true)) }
        try? await channel?.close()
    }

    /// Closes connection `number` as a server or a network would.
    func drop(_ number: Int) async {
        let channel = self.state.withLock { $0.sessions[number]?.channel }
        try? await channel?.close()
    }

    /// Every command connection `number` received, in order (passwords included: test secrets only).
    func log(_ number: Int) -> [[String]] {
        self.state.withLock { $0.sessions[number]?.log ?? [] }
    }

    /// The connections opened so far, oldest first, and whether each is still open.
    var connections: [(number: Int, isActive: Bool, name: String?)] {
        self.state.withLock { state in
            state.sessions.keys.sorted().map { ($0, state.sessions[$0]!.channel.isActive, state.sessions[$0]!.name) }
        }
    }

    func value(of key: String) -> String? {
        self.state.withLock { $0.data[key] }
    }

    // MARK: Serving

    private func serve(_ number: Int, _ channel: NIOAsyncTestingChannel) async {
        var parser = CommandParser()
        // Ends when the channel closes (the wait fails); bounded by the commands a test sends.
        for _ in 0..<100_000 {
            guard let written = try? await channel.waitForOutboundWrite(as: ByteBuffer.self) else { return }
            parser.append(written)
            while let command = parser.next() {
                let held = self.state.withLock { state -> Bool in
                    guard state.sessions[number]?.holding == true else { return false }
                    state.sessions[number]!.log.append(command)
                    state.sessions[number]!.held.append(command)
                    return true
                }
                if !held { _ = try? await channel.writeInbound(self.handle(command, on: number)) }
            }
        }
    }

    /// Runs `command` (logged on arrival, or now when it was not held) and returns the reply.
    private func handle(_ command: [String], on number: Int, logged: Bool = false) -> ByteBuffer {
        self.state.withLock { state -> ByteBuffer in
            if !logged { state.sessions[number]!.log.append(command) }
            var session = state.sessions[number]!
            defer { state.sessions[number] = session }
            let name = command.first?.uppercased() ?? ""
            func authenticate(_ user: String, _ password: String) -> Bool {
                state.passwords[user]?.contains(password) == true
            }
            if name == "HELLO" {
                var index = 2
                while index < command.count {
                    switch command[index].uppercased() {
                    case "AUTH":
                        guard index + 2 < command.count, authenticate(command[index + 1], command[index + 2]) else {
                            return Self.error("WRONGPASS invalid username-password pair or user is disabled.")
                        }
                        session.user = command[index + 1]
                        index += 3
                    case "SETNAME":
                        session.name = command[index + 1]
                        index += 2
                    default:
                        index += 1
                    }
                }
                guard session.user != nil else { return Self.error("NOAUTH HELLO must be called with the client already authenticated") }
                return Self.array([
                    "$6\r\nserver\r\n", "$5\r\nredis\r\n", "$7\r\nversion\r\n", "$5\r\n7.0.0\r\n", "$5\r\nproto\r\n", ":2\r\n",
                    "$2\r\nid\r\n", ":\(number)\r\n", "$4\r\nmode\r\n", "$10\r\nstandalone\r\n", "$4\r\nrole\r\n", "$6\r\nmaster\r\n",
                    "$7\r\nmodules\r\n", "*0\r\n",
                ])
            }
            if name == "AUTH" {
                guard command.count == 3, authenticate(command[1], command[2]) else {
                    return Self.error("WRONGPASS invalid username-password pair or user is disabled.")
                }
                session.user = command[1]
                return Self.simple("OK")
            }
            guard session.user != nil else { return Self.error("NOAUTH Authentication required.") }
            if var queued = session.transaction, !["EXEC", "DISCARD", "MULTI", "WATCH"].contains(name) {
                queued.append(command)
                session.transaction = queued
                return Self.simple("QUEUED")
            }
            switch name {
            case "MULTI":
                guard session.transaction == nil else { return Self.error("ERR MULTI calls can not be nested") }
                session.transaction = []
                return Self.simple("OK")
            case "EXEC":
                guard let queued = session.transaction else { return Self.error("ERR EXEC without MULTI") }
                session.transaction = nil
                var reply = ByteBuffer(string: "*\(queued.count)\r\n")
                for command in queued {
                    var one = Self.execute(command, data: &state.data, session: &session)
                    reply.writeBuffer(&one)
                }
                return reply
            case "DISCARD":
                guard session.transaction != nil else { return Self.error("ERR DISCARD without MULTI") }
                session.transaction = nil
                return Self.simple("OK")
            default:
                return Self.execute(command, data: &state.data, session: &session)
            }
        }
    }

    private static func execute(_ command: [String], data: inout [String: String], session: inout Session) -> ByteBuffer {
        switch command.first?.uppercased() ?? "" {
        case "PING": return self.simple("PONG")
        case "WATCH", "UNWATCH", "SELECT": return self.simple("OK")
        case "CLIENT" where command.count == 3 && command[1].uppercased() == "SETNAME":
            session.name = command[2]
            return self.simple("OK")
        case "GET" where command.count == 2:
            guard let value = data[command[1]] else { return ByteBuffer(string: "$-1\r\n") }
            return ByteBuffer(string: "$\(value.utf8.count)\r\n\(value)\r\n")
        case "SET" where command.count == 3:
            data[command[1]] = command[2]
            return self.simple("OK")
        case "DEL":
            let removed = command.dropFirst().filter { data.removeValue(forKey: $0) != nil }.count
            return ByteBuffer(string: ":\(removed)\r\n")
        case "INCR" where command.count == 2:
            let next = (Int(data[command[1]] ?? "0") ?? 0) + 1
            data[command[1]] = String(next)
            return ByteBuffer(string: ":\(next)\r\n")
        default:
            return self.error("ERR unknown command '\(command.first ?? "")'")
        }
    }

    private static func simple(_ text: String) -> ByteBuffer { ByteBuffer(string: "+\(text)\r\n") }
    private static func error(_ text: String) -> ByteBuffer { ByteBuffer(string: "-\(text)\r\n") }
    private static func array(_ elements: [String]) -> ByteBuffer {
        ByteBuffer(string: "*\(elements.count)\r\n" + elements.joined())
    }

    /// Splits the client's writes into commands (arrays of bulk strings).
    private struct CommandParser {
        var buffer = ByteBuffer()

        mutating func append(_ bytes: ByteBuffer) {
            var bytes = bytes
            self.buffer.writeBuffer(&bytes)
        }

        mutating func next() -> [String]? {
            var copy = self.buffer
            guard let count = Self.header(&copy, "*") else { return nil }
            var command: [String] = []
            for _ in 0..<count {
                guard let length = Self.header(&copy, "$"), copy.readableBytes >= length + 2,
                    let argument = copy.readString(length: length)
                else { return nil }
                copy.moveReaderIndex(forwardBy: 2)
                command.append(argument)
            }
            self.buffer = copy
            self.buffer.discardReadBytes()
            return command
        }

        private static func header(_ buffer: inout ByteBuffer, _ marker: Character) -> Int? {
            guard let line = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
            let length = line - buffer.readerIndex + 1
            // "\r\n" is one Character in Swift: compare and cut bytes, not characters.
            guard let bytes = buffer.readBytes(length: length), bytes.first == marker.asciiValue, bytes.count >= 3 else { return nil }
            return Int(String(decoding: bytes[1..<(bytes.count - 2)], as: UTF8.self))
        }
    }
}
