/// Decides the commands of a connection handshake and judges their replies. Pure: it holds no secret
/// (the shell adds the password when it builds `AUTH`/`HELLO`) and does no I/O.
///
/// The first attempt is one round trip: `HELLO 2 [AUTH user pass] [SETNAME name]`, pipelined with
/// `SELECT db` and `READONLY` (a cluster replica serving reads). A server without `HELLO` (Redis before 6)
/// gets `AUTH` + `CLIENT SETNAME` + `SELECT` + `READONLY`.
///
/// States: `idle` (can move to: hello), `hello` (can move to: fallback, done), `fallback` (can move to:
/// done), `done` (final).
struct HandshakeStateMachine {
    struct Settings: Equatable {
        var username: String?
        var hasPassword: Bool
        var name: String?
        var database: Int?
        /// Whether the connection reads from a cluster replica (`READONLY`).
        var readOnly = false
    }

    /// A handshake command, without its secret.
    enum Command: Equatable {
        /// `HELLO 2 [AUTH <username> <password>] [SETNAME <name>]`.
        case hello(authUsername: String?, name: String?)
        /// `AUTH [<username>] <password>`.
        case auth(username: String?)
        /// `CLIENT SETNAME <name>`.
        case setName(String)
        /// `SELECT <database>`.
        case select(Int)
        /// `READONLY`: a cluster replica serves this connection's reads of the slots its primary serves.
        case readOnly
    }

    /// What the server told us about itself in its `HELLO` reply.
    struct ServerInfo: Equatable {
        var version: String?
        var clientID: Int?
    }

    enum Action: Equatable {
        /// Send these commands in one write and report their replies, in order, with `repliesReceived`.
        case send([Command])
        /// The connection is ready.
        case succeed(ServerInfo)
        /// The handshake failed; close the connection.
        case fail(RedisError)
    }

    private enum State {
        case idle
        case hello([Command])
        case fallback([Command])
        case done
    }

    private let settings: Settings
    private var state: State = .idle

    init(settings: Settings) {
        self.settings = settings
    }

    mutating func start() -> Action {
        guard case .idle = self.state else { preconditionFailure("the handshake already started") }
        var commands: [Command] = [
            .hello(authUsername: self.settings.hasPassword ? (self.settings.username ?? "default") : nil, name: self.settings.name)
        ]
        if let database = self.settings.database, database != 0 { commands.append(.select(database)) }
        if self.settings.readOnly { commands.append(.readOnly) }
        self.state = .hello(commands)
        return .send(commands)
    }

    /// The replies to the commands of the last `send`, in order; a server error reply is `.error`.
    mutating func repliesReceived(_ replies: [RESPValue]) -> Action {
        switch self.state {
        case .hello(let commands):
            precondition(replies.count == commands.count, "one reply per handshake command")
            return self.helloReplied(replies, commands: commands)
        case .fallback(let commands):
            precondition(replies.count == commands.count, "one reply per handshake command")
            self.state = .done
            for (command, reply) in zip(commands, replies) {
                if let error = Self.failure(of: command, reply: reply) { return .fail(error) }
            }
            return .succeed(ServerInfo())
        case .idle, .done:
            preconditionFailure("no handshake commands are outstanding")
        }
    }

    private mutating func helloReplied(_ replies: [RESPValue], commands: [Command]) -> Action {
        if case .error(let buffer) = replies[0] {
            let text = String(buffer: buffer)
            let prefix = Self.prefix(of: text)
            // A server without HELLO (Redis < 6) or a user not allowed to run it: do it the old way.
            let unknownCommand = prefix == "ERR" && text.lowercased().contains("unknown command")
            if unknownCommand || prefix == "NOPERM" {
                return self.startFallback()
            }
            self.state = .done
            return .fail(Self.failure(of: commands[0], reply: replies[0])!)
        }
        self.state = .done
        for (command, reply) in zip(commands.dropFirst(), replies.dropFirst()) {
            if let error = Self.failure(of: command, reply: reply) { return .fail(error) }
        }
        return .succeed(Self.serverInfo(from: replies[0]))
    }

    private mutating func startFallback() -> Action {
        var commands: [Command] = []
        if self.settings.hasPassword { commands.append(.auth(username: self.settings.username)) }
        if let name = self.settings.name { commands.append(.setName(name)) }
        if let database = self.settings.database, database != 0 { commands.append(.select(database)) }
        if self.settings.readOnly { commands.append(.readOnly) }
        if commands.isEmpty {
            self.state = .done
            return .succeed(ServerInfo())
        }
        self.state = .fallback(commands)
        return .send(commands)
    }

    /// The error a handshake command's reply means, or `nil` when it succeeded. Messages of replies to
    /// `HELLO`/`AUTH` are not kept: servers may echo the arguments, and those hold the password.
    static func failure(of command: Command, reply: RESPValue) -> RedisError? {
        guard case .error(let buffer) = reply else { return nil }
        let text = String(buffer: buffer)
        let prefix = Self.prefix(of: text)
        let carriesSecret: Bool
        switch command {
        case .hello(let user, _): carriesSecret = user != nil
        case .auth: carriesSecret = true
        case .setName, .select, .readOnly: carriesSecret = false
        }
        let serverMessage = carriesSecret ? nil : text
        switch prefix {
        case "WRONGPASS":
            return RedisError(
                code: .authenticationFailed,
                message: "the server rejected the credentials (WRONGPASS): wrong password, or the user is disabled",
                serverErrorPrefix: prefix,
                serverMessage: serverMessage
            )
        case "NOAUTH":
            return RedisError(
                code: .authenticationFailed,
                message: "the server requires authentication (NOAUTH) and no password is configured",
                serverErrorPrefix: prefix,
                serverMessage: serverMessage
            )
        default:
            let step: String
            switch command {
            case .hello: step = "HELLO"
            case .auth: step = "AUTH"
            case .setName: step = "CLIENT SETNAME"
            case .select: step = "SELECT"
            case .readOnly: step = "READONLY"
            }
            return RedisError(
                code: .serverError,
                message: "the server rejected \(step) during the connection handshake",
                serverErrorPrefix: prefix,
                serverMessage: serverMessage
            )
        }
    }

    /// The first word of an error reply: `WRONGPASS`, `NOAUTH`, `ERR`, ...
    static func prefix(of text: String) -> String {
        String(text.prefix(while: { $0 != " " }))
    }

    /// Reads `version` and `id` from a RESP2 `HELLO` reply (a flat list of keys and values).
    private static func serverInfo(from reply: RESPValue) -> ServerInfo {
        var info = ServerInfo()
        guard let elements = reply.array else { return info }
        var index = 0
        while index + 1 < elements.count {
            switch elements[index].string {
            case "version": info.version = elements[index + 1].string
            case "id": info.clientID = elements[index + 1].int
            default: break
            }
            index += 2
        }
        return info
    }
}
