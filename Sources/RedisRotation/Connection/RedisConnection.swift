public import Logging
public import NIOCore
import NIOPosix
import Synchronization

/// One connection to a Redis server over SwiftNIO.
///
/// Commands are pipelined: each is written as soon as it is issued, and replies are matched to callers
/// in order, so many tasks may share one connection. Every wait has a deadline: connecting, the
/// handshake and each command. When the connection closes — by ``close()``, by the server, or by a
/// reset — every outstanding command fails at once with ``RedisError/Code/connectionClosed``.
///
/// ```swift
/// let connection = try await RedisConnection.connect(
///     configuration: .init(host: "127.0.0.1", port: 6379, username: "app", password: "secret")
/// )
/// try await connection.set("greeting", to: "hello")
/// let greeting = try await connection.get("greeting", as: String.self)
/// await connection.close()
/// ```
public final class RedisConnection: Sendable {
    /// A number that identifies this connection in logs, unique within the process.
    public let id: Int
    /// The configuration the connection was made with.
    public let configuration: RedisConnectionConfiguration
    /// The server's version, as its `HELLO` reply reported it; `nil` on servers without `HELLO`.
    public let serverVersion: String?
    /// The connection's id on the server (`CLIENT ID`, `CLIENT KILL ID`); `nil` on servers without `HELLO`.
    public let clientID: Int?
    /// What the TLS handshake settled on (version, resumption, the server's certificate); `nil` without TLS.
    public let tlsInfo: RedisTLSConnectionInfo?

    let channel: any Channel
    let handler: NIOLoopBound<RedisCommandHandler>
    /// Since when replies have been owed without one arriving (see ``ReplyProgress``).
    let progress: ReplyProgress
    let logger: Logger
    /// Session state as commands are enqueued, and the name the connection has on the server.
    let session: Lock<(state: SessionState, name: String?)>
    private static let nextConnectionID = Atomic<Int>(0)
    private static let nextCommandID = Atomic<UInt64>(0)

    private init(
        id: Int,
        configuration: RedisConnectionConfiguration,
        channel: any Channel,
        handler: NIOLoopBound<RedisCommandHandler>,
        progress: ReplyProgress,
        serverInfo: HandshakeStateMachine.ServerInfo,
        tlsInfo: RedisTLSConnectionInfo?,
        logger: Logger
    ) {
        self.id = id
        self.configuration = configuration
        self.channel = channel
        self.handler = handler
        self.progress = progress
        self.serverVersion = serverInfo.version
        self.clientID = serverInfo.clientID
        self.tlsInfo = tlsInfo
        self.logger = logger
        self.session = Lock((SessionState(), configuration.name))
    }

    /// The event loop the connection's I/O runs on.
    public var eventLoop: any EventLoop { self.channel.eventLoop }

    /// Whether the connection is still open. A closed connection fails every command.
    public var isActive: Bool { self.channel.isActive }

    /// Whether a transaction (`MULTI`) is open on this connection: a `MULTI` was sent (whether or not
    /// its reply arrived) and no `EXEC` or `DISCARD` since.
    public var isInTransaction: Bool { self.session.withLock { $0.state.inTransaction } }

    /// The credential version in the connection's name (`<name>@<version>`), as it is now.
    var credentialVersion: String? {
        self.session.withLock { session in
            guard let name = session.name, let at = name.lastIndex(of: "@") else { return nil }
            return String(name[name.index(after: at)...])
        }
    }

    /// Whether nothing has to be undone before another user may have the connection (no owed replies,
    /// transaction, watches, database or name change).
    var hasCleanSession: Bool {
        self.session.withLock { $0.state.isClean }
    }

    /// What must happen before the pool hands this connection to another user.
    var releaseDisposition: SessionState.Release {
        self.session.withLock { $0.state.release }
    }

    /// Undoes what the last user left on the connection (owed replies, transaction, watches, database,
    /// name) in one pipeline within `timeout`. Returns whether the connection is clean again; when it is
    /// not, the caller closes it.
    func restore(timeout: Duration) async -> Bool {
        guard case .restore(let steps) = self.releaseDisposition else { return self.releaseDisposition == .reuse }
        let name = self.session.withLock { $0.name }
        let commands = steps.map { step -> RedisCommand in
            switch step {
            case .discard: return RedisCommand("DISCARD")
            case .unwatch: return RedisCommand("UNWATCH")
            case .selectDatabase: return RedisCommand("SELECT", .integer(self.configuration.database ?? 0))
            case .setName: return RedisCommand("CLIENT", "SETNAME", .string(name ?? ""))
            case .ping: return RedisCommand("PING")
            }
        }
        guard let results = try? await self.write(commands, timeout: timeout, tracked: false) else { return false }
        for (step, result) in zip(steps, results) {
            switch (step, result) {
            case (.discard, .success), (.unwatch, .success(.simpleString)), (.selectDatabase, .success(.simpleString)),
                (.setName, .success(.simpleString)):
                // DISCARD may answer "without MULTI" when the MULTI itself failed: no transaction either way.
                continue
            case (.ping, .success(.simpleString(let reply))) where String(buffer: reply) == "PONG":
                continue
            default:
                return false
            }
        }
        self.session.withLock { $0.state.restored() }
        return true
    }

    /// Connects, authenticates and names the connection, all within the configured deadlines.
    ///
    /// - Throws: ``RedisError`` with `connectTimeout`, `connectionFailed`, `handshakeTimeout`,
    ///   `authenticationFailed` (`WRONGPASS` / `NOAUTH` in ``RedisError/serverErrorPrefix``), `serverError`
    ///   or `connectionClosed`; `CancellationError` when the task is cancelled before the handshake
    ///   completes (at once, also while the TCP connect is pending or the host name is being
    ///   resolved; nothing is left open).
    public static func connect(
        configuration: RedisConnectionConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "RedisRotation", factory: { _ in SwiftLogNoOpLogHandler() })
    ) async throws -> RedisConnection {
        try configuration.validate()
        // A cancelled task opens nothing: on loopback the handshake can otherwise finish before the
        // cancellation handler reaches the event loop.
        try Task.checkCancellation()
        let id = Self.nextConnectionID.add(1, ordering: .relaxed).newValue
        var logger = logger
        logger[metadataKey: LoggingKeys.connectionID] = "\(id)"
        logger.debug(
            "connecting",
            metadata: [LoggingKeys.host: "\(configuration.host)", LoggingKeys.port: "\(configuration.port)"]
        )

        // The handshake's first write is encoded here and goes out on the event loop the moment the TCP
        // connection is up, in the same callback; the task resumes once, when its replies are in (or
        // the connection failed). Later handshake steps (a server without HELLO) run as before.
        var machine = Self.handshakeMachine(configuration: configuration)
        var first = try Self.encodeHandshakeStep(machine.start(), configuration: configuration)
        defer { first.wipeSecrets() }
        // One object for the whole connect: the step's replies, whether the caller was cancelled, and
        // the handlers, which the initializer hands out through it: when the channel fails early (a TLS
        // handshake refused at once), they are already gone from the pipeline, but their recorded
        // failure is what `connect` must report; from its registration on, they also give a
        // cancellation the channel to close while its TCP connect is still pending (which would
        // otherwise end only at the connect timeout).
        let waiter = HandshakeStepWaiter(count: first.ids.count)
        let eventLoop = eventLoopGroup.next()
        let connected: (channel: any Channel, handlers: Handlers, deadline: NIODeadline, results: [Result<RESPValue, any Error>], tlsInfo: RedisTLSConnectionInfo?)
        do {
            let bootstrap = ClientBootstrap(group: eventLoop)
                // TCP_NODELAY is a TCP-level option: `.socketOption(.tcp_nodelay)` would set
                // SOL_SOCKET's option of the same number, SO_DEBUG, which only a privileged process
                // may set (every connect failed with EACCES for any other user). NIO's default too;
                // said here so that a change of default cannot slow replies down.
                .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                .connectTimeout(TimeAmount(configuration.connectTimeout))
                .channelInitializer { [logger] channel in
                    channel.eventLoop.makeCompletedFuture {
                        // Cancelled while a host name was being resolved (no channel to close then):
                        // this channel never connects.
                        if waiter.isCancelled { throw CancellationError() }
                        waiter.install(try Self.installHandlers(on: channel, configuration: configuration, logger: logger))
                    }
                }
            // An IP address needs no resolver: NIO's name resolution (getaddrinfo on another thread, then
            // Happy Eyeballs) is only for names.
            let channelFuture: EventLoopFuture<any Channel>
            if let address = try? SocketAddress(ipAddress: configuration.host, port: configuration.port) {
                channelFuture = bootstrap.connect(to: address)
            } else {
                channelFuture = bootstrap.connect(host: configuration.host, port: configuration.port)
            }
            let ids = first.ids
            let payload = first.payload
            let handshakeTimeout = TimeAmount(configuration.handshakeTimeout)
            channelFuture.whenComplete { result in
                // On the event loop, as the connection comes up (or fails to).
                let channel: any Channel
                switch result {
                case .success(let connected): channel = connected
                case .failure(let error): return waiter.fail(error)
                }
                guard let installed = waiter.settle(on: channel) else {
                    preconditionFailure("the channel initializer ran without installing the command handler")
                }
                let stepDeadline = NIODeadline.now() + handshakeTimeout
                if waiter.connected(channel, deadline: stepDeadline, tls: installed.tls) {
                    for index in 0..<ids.count { waiter.complete(index, with: .failure(CancellationError())) }
                } else {
                    // A lazy collection: no array of waiters.
                    let entries = ids.lazy.map { id in
                        RedisCommandHandler.Entry(id: id, promise: .handshake(waiter, index: Int(id - ids.lowerBound)), deadline: stepDeadline)
                    }
                    installed.command.value.enqueue(payload, entries: entries, flushesAtOnce: true)
                }
            }
            let outcome = try await withTaskCancellationHandler {
                try await waiter.value()
            } onCancel: {
                waiter.cancel()
                eventLoop.execute {
                    // No channel yet (a host name is being resolved): return now; the initializer
                    // refuses the channel when there is one.
                    guard let installed = waiter.handlers else { return waiter.fail(CancellationError()) }
                    for id in ids { installed.command.value.cancel(id: id) }
                    // Not connected yet: closing fails the pending connect now.
                    if !installed.channel.isActive { installed.channel.close(promise: nil) }
                }
            }
            // Replies come only over a channel that came up, with its handlers installed.
            guard let installed = waiter.handlers else {
                preconditionFailure("a handshake step completed without its handlers")
            }
            connected = (outcome.channel, installed, outcome.deadline, outcome.replies, outcome.tlsInfo)
        } catch where waiter.isCancelled {
            // The connect failed because the cancellation closed it (or as it was cancelled).
            throw CancellationError()
        } catch let error as ChannelError {
            guard case .connectTimeout = error else {
                throw RedisError(
                    code: .connectionFailed,
                    message: "could not connect to \(configuration.host):\(configuration.port): \(error)",
                    underlying: error
                )
            }
            throw RedisError(
                code: .connectTimeout,
                message: "no TCP connection to \(configuration.host):\(configuration.port) within \(configuration.connectTimeout)",
                underlying: error
            )
        } catch {
            throw RedisError(
                code: .connectionFailed,
                message: "could not connect to \(configuration.host):\(configuration.port): \(error)",
                underlying: error
            )
        }
        return try await Self.establish(
            id: id,
            channel: connected.channel,
            handlers: connected.handlers,
            configuration: configuration,
            logger: logger,
            started: (machine, connected.deadline, connected.results, connected.tlsInfo)
        )
    }

    /// Sets a connection up over `channel`, which is already connected (in tests, a channel whose
    /// other end is a fake server): installs the handlers and runs the handshake, as ``connect(configuration:eventLoopGroup:logger:)`` does.
    static func connect(
        over channel: any Channel,
        configuration: RedisConnectionConfiguration,
        logger: Logger = Logger(label: "RedisRotation", factory: { _ in SwiftLogNoOpLogHandler() })
    ) async throws -> RedisConnection {
        try configuration.validate()
        let id = Self.nextConnectionID.add(1, ordering: .relaxed).newValue
        var logger = logger
        logger[metadataKey: LoggingKeys.connectionID] = "\(id)"
        let handlers = try await channel.eventLoop.submit { [logger] in
            try Self.installHandlers(on: channel, configuration: configuration, logger: logger)
        }.get()
        return try await Self.establish(id: id, channel: channel, handlers: handlers, configuration: configuration, logger: logger)
    }

    /// The handlers a connection runs on, bound to its channel's event loop.
    struct Handlers: Sendable {
        /// The channel they were installed on.
        var channel: any Channel
        var command: NIOLoopBound<RedisCommandHandler>
        var tls: NIOLoopBound<TLSClientHandler>?
        /// The command handler's, readable off the event loop.
        var progress: ReplyProgress
    }

    /// Adds TLS (when configured), the reply decoder and the command handler to `channel`'s pipeline.
    /// On the channel's event loop.
    private static func installHandlers(
        on channel: any Channel,
        configuration: RedisConnectionConfiguration,
        logger: Logger
    ) throws -> Handlers {
        let operations = channel.pipeline.syncOperations
        var tlsHandler: TLSClientHandler?
        if let tls = configuration.tls {
            let handler = TLSClientHandler(
                context: tls.context,
                serverName: configuration.tlsServerName,
                sessionKey: "\(configuration.tlsServerName)@\(configuration.host):\(configuration.port)",
                handshakeTimeout: TimeAmount(configuration.handshakeTimeout)
            )
            try operations.addHandler(handler)
            tlsHandler = handler
        }
        let commandHandler = RedisCommandHandler(logger: logger, readerLimits: configuration.readerLimits)
        try operations.addHandler(commandHandler)
        let loop = channel.eventLoop
        return Handlers(
            channel: channel,
            command: NIOLoopBound(commandHandler, eventLoop: loop),
            tls: tlsHandler.map { NIOLoopBound($0, eventLoop: loop) },
            progress: commandHandler.progress
        )
    }

    /// Runs the handshake on a channel with its handlers installed; closes the channel when it fails.
    /// `started`, when `connect` already sent the first step on the event loop: the machine, the
    /// handshake's deadline, that step's replies, and what the TLS handshake settled on.
    private static func establish(
        id: Int,
        channel: any Channel,
        handlers: Handlers,
        configuration: RedisConnectionConfiguration,
        logger: Logger,
        started: (HandshakeStateMachine, NIODeadline, [Result<RESPValue, any Error>], RedisTLSConnectionInfo?)? = nil
    ) async throws -> RedisConnection {
        let handler = handlers.command
        let tlsHandler = handlers.tls
        do {
            let info: HandshakeStateMachine.ServerInfo
            // Ready only now: with TLS 1.3 a server's rejection of our certificate arrives after the TLS
            // handshake, on the first read, so the handshake's round trip is what proves acceptance.
            var tlsInfo: RedisTLSConnectionInfo?
            if let (machine, deadline, results, startedTLSInfo) = started {
                var machine = machine
                let action = machine.repliesReceived(try Self.handshakeReplies(results, configuration: configuration))
                if case .send = action { logger.debug("server has no HELLO: falling back to AUTH") }
                info = try await Self.handshake(
                    machine: &machine,
                    action: action,
                    deadline: deadline,
                    configuration: configuration,
                    handler: handler,
                    progress: handlers.progress,
                    logger: logger
                )
                tlsInfo = startedTLSInfo
            } else {
                var machine = Self.handshakeMachine(configuration: configuration)
                let action = machine.start()
                info = try await Self.handshake(
                    machine: &machine,
                    action: action,
                    deadline: NIODeadline.now() + TimeAmount(configuration.handshakeTimeout),
                    configuration: configuration,
                    handler: handler,
                    progress: handlers.progress,
                    logger: logger
                )
                if let tlsHandler {
                    tlsInfo = try await channel.eventLoop.submit { tlsHandler.value.info }.get()
                }
            }
            logger.debug(
                "connected",
                metadata: [
                    LoggingKeys.serverVersion: "\(info.version ?? "unknown")",
                    LoggingKeys.clientID: "\(info.clientID.map(String.init) ?? "unknown")",
                ]
            )
            return RedisConnection(
                id: id,
                configuration: configuration,
                channel: channel,
                handler: handler,
                progress: handlers.progress,
                serverInfo: info,
                tlsInfo: tlsInfo,
                logger: logger
            )
        } catch {
            await Self.waitUntilClosed(channel, closing: handler)
            logger.debug("handshake failed", metadata: [LoggingKeys.error: "\(error)"])
            // Both deadlines start together; when the TLS handshake never completed, that is what timed out.
            if let timeout = error as? RedisError, timeout.code == .handshakeTimeout, let tlsHandler,
                try await channel.eventLoop.submit({ tlsHandler.value.info == nil }).get()
            {
                throw RedisError(
                    code: .tlsHandshakeTimeout,
                    message: "no TLS handshake with \(configuration.tlsServerName) within \(configuration.handshakeTimeout): is this the server's TLS port (tls-port), and does it answer?",
                    underlying: timeout
                )
            }
            throw error
        }
    }

    /// Closes `channel` with `handler` (when given) and waits until it has closed, also when its event
    /// loop has shut down meanwhile. `closeFuture.get()` would then never return: it registers its
    /// callback through a task on the loop, which a shut-down loop drops. Here the callback is
    /// registered by a task of our own, on the loop; a dropped task releases its ticket unrun, which
    /// resumes the wait (a loop closes all its channels before it shuts down; see ``DroppedTaskTicket``).
    private static func waitUntilClosed(_ channel: any Channel, closing handler: NIOLoopBound<RedisCommandHandler>?) async {
        await withCheckedContinuation { (closed: CheckedContinuation<Void, Never>) in
            // The ticket's one owner is the task: released unrun, it resumes the wait.
            channel.eventLoop.execute { [ticket = DroppedTaskTicket(onDrop: { closed.resume() })] in
                ticket.ran()
                handler?.value.close()
                channel.closeFuture.whenComplete { _ in closed.resume() }
            }
        }
    }

    /// Sends `command` and returns its reply.
    ///
    /// - Parameters:
    ///   - command: The command.
    ///   - timeout: How long to wait for the reply; `nil` uses the configured `commandTimeout`,
    ///     plus, for a blocking command (`BLPOP`, `XREAD ... BLOCK`, `WAIT`, ...), its own timeout (a
    ///     timeout of 0 waits until the server answers or the task is cancelled).
    /// - Throws: ``RedisError`` with `serverError` for an error reply (the prefix in
    ///   ``RedisError/serverErrorPrefix``), `commandTimeout`, `connectionClosed` or `protocolError`;
    ///   `invalidArgument`, with nothing written, for an argument larger than the server accepts;
    ///   `CancellationError` when the task is cancelled (the reply, when it comes, is dropped).
    @discardableResult
    public func send(_ command: RedisCommand, timeout: Duration? = nil) async throws -> RESPValue {
        try Task.checkCancellation()
        let value = try await self.writeOne(command, timeout: timeout).get()
        if case .error(let buffer) = value {
            throw Self.serverError(buffer, command: command)
        }
        return value
    }

    /// Sends a command given as its name and arguments: `send("SET", "key", .bytes(data))`.
    @discardableResult
    public func send(_ name: String, _ arguments: RedisArgument...) async throws -> RESPValue {
        try await self.send(RedisCommand(name, arguments: arguments))
    }

    /// Sends all `commands` in one write and returns their results in the same order. One command's
    /// error reply fails only that command's result.
    ///
    /// - Parameters:
    ///   - commands: The commands, in the order they are written.
    ///   - timeout: How long each command may wait for its reply; `nil` uses `commandTimeout`.
    /// - Throws: `CancellationError` when the task is cancelled; `invalidArgument`, with none of the
    ///   commands written, when one has an argument larger than the server accepts.
    public func pipeline(
        _ commands: [RedisCommand],
        timeout: Duration? = nil
    ) async throws -> [Result<RESPValue, RedisError>] {
        try Task.checkCancellation()
        guard !commands.isEmpty else { return [] }
        let results = try await self.write(commands, timeout: timeout)
        return zip(commands, results).map { command, result in
            result.flatMap { value in
                if case .error(let buffer) = value { return .failure(Self.serverError(buffer, command: command)) }
                return .success(value)
            }
        }
    }

    /// Authenticates this open connection again, as `credentials`, and renames it to `name`, without
    /// reconnecting. On servers with `HELLO` this is one atomic round trip (`HELLO 2 AUTH ... SETNAME
    /// ...`): a rejected password leaves both the identity and the name as they were, as Redis keeps a
    /// connection authenticated after a failed `AUTH`.
    ///
    /// - Throws: ``RedisError/Code/authenticationFailed`` (`WRONGPASS`) when the server rejects them.
    public func authenticate(as credentials: RedisCredentials, name: String?) async throws {
        var configuration = self.configuration
        configuration.username = credentials.username
        configuration.password = credentials.password
        let hasHello = self.serverVersion != nil
        let step: HandshakeStateMachine.Command =
            hasHello ? .hello(authUsername: credentials.username, name: name) : .auth(username: credentials.username)
        let command = Self.command(for: step, configuration: configuration)
        let reply = try await self.write([command], timeout: self.configuration.handshakeTimeout, tracked: false)[0].get()
        if let error = HandshakeStateMachine.failure(of: step, reply: reply) { throw error }
        // Without HELLO, the name changes only once the new identity is in place.
        if !hasHello, let name {
            let reply = try await self.write([RedisCommand("CLIENT", "SETNAME", .string(name))], timeout: nil, tracked: false)[0].get()
            if case .error(let buffer) = reply { throw Self.serverError(buffer, command: RedisCommand("CLIENT", "SETNAME")) }
        }
        if hasHello || name != nil {
            self.session.withLock { $0.name = name ?? $0.name }
        }
    }

    /// Closes the connection. Outstanding commands fail with ``RedisError/Code/connectionClosed``.
    public func close() async {
        await Self.waitUntilClosed(self.channel, closing: self.handler)
        self.logger.debug("connection closed")
    }

    /// Completes when the connection has closed, for whatever reason.
    public func waitUntilClosed() async {
        await Self.waitUntilClosed(self.channel, closing: nil)
    }

    // MARK: - Internals

    /// Writes `commands` in one write and waits for their replies. Their effect on the session is
    /// recorded before they go out (`tracked`; the client's own re-authentication and restoration are
    /// not user state), and a reply its caller stops waiting for is recorded as owed.
    private func write<Commands: RandomAccessCollection<RedisCommand>>(
        _ commands: Commands,
        timeout: Duration?,
        tracked: Bool = true
    ) async throws -> [Result<RESPValue, RedisError>] where Commands.Index == Int {
        // An oversized command fails here, before anything is written or tracked.
        // An encoded payload (`bytes`) has no other owner here: `plain` is nil then, and the payload is
        // made in the call's argument. A password in it is wiped once the replies are in (the write is
        // long done by then, so this is the buffer's only reference and the wipe reaches its storage,
        // not a copy).
        let sensitive = commands.contains(where: \.isSensitive)
        let plain = commands.count == 1 ? RedisCommandHandler.Payload(plain: commands[0]) : nil
        var bytes = plain == nil ? try Self.encodeOnce(commands) : nil
        defer { if sensitive { bytes?.withUnsafeMutableReadableBytes { wipe($0) } } }
        let (deadline, silenceDeadline) = try self.track(commands, timeout: timeout, tracked: tracked)
        let results = try await Self.exchange(
            plain ?? .bytes(bytes!),
            count: commands.count,
            closesIfAbandoned: { commands[$0].sessionEffect == .blocks },
            // Empty when none is of the subscribe family (the common case: no array per write).
            pubSubCommands: commands.contains { $0.pubSubCommand != nil } ? commands.map(\.pubSubCommand) : [],
            deadline: deadline,
            silenceDeadline: silenceDeadline,
            handler: self.handler,
            progress: self.progress,
            sensitive: sensitive,
            abandoned: { self.session.withLock { $0.state.replyAbandoned() } }
        )
        if results.contains(where: Self.isTimeout) {
            self.session.withLock { $0.state.replyAbandoned() }
        }
        return results
    }

    /// ``write(_:timeout:tracked:)`` for one command (every `send`): no array for its waiter or its result.
    @inline(__always)
    private func writeOne(_ command: RedisCommand, timeout: Duration?) async throws -> Result<RESPValue, RedisError> {
        // As in `write`: an encoded payload's only owner is `bytes`, wiped when it holds a password.
        let plain = RedisCommandHandler.Payload(plain: command)
        var bytes = plain == nil ? try Self.encodeOnce(CollectionOfOne(command)) : nil
        defer { if command.isSensitive { bytes?.withUnsafeMutableReadableBytes { wipe($0) } } }
        let (deadline, silenceDeadline) = try self.track(CollectionOfOne(command), timeout: timeout, tracked: true)
        let result = try await Self.exchangeOne(
            plain ?? .bytes(bytes!),
            closesIfAbandoned: command.sessionEffect == .blocks,
            pubSubCommand: command.pubSubCommand,
            deadline: deadline,
            silenceDeadline: silenceDeadline,
            handler: self.handler,
            progress: self.progress,
            sensitive: command.isSensitive,
            abandoned: { self.session.withLock { $0.state.replyAbandoned() } }
        )
        if Self.isTimeout(result) {
            self.session.withLock { $0.state.replyAbandoned() }
        }
        return result
    }

    /// Records what `commands` do to the session (when `tracked`) and returns the deadline of their
    /// replies and the deadline of the connection's silence.
    ///
    /// - Throws: `invalidArgument` for a subscribe-family command queued inside `MULTI`.
    private func track<Commands: Collection<RedisCommand>>(
        _ commands: Commands,
        timeout: Duration?,
        tracked: Bool
    ) throws -> (NIODeadline, NIODeadline) {
        // Whether a transaction is open once these are queued: read under the same lock as the tracking.
        let inTransaction: Bool
        if tracked {
            let outcome = self.session.withLock { session -> Result<Bool, RedisError> in
                if let refused = Self.subscriptionInTransaction(commands, inTransaction: session.state.inTransaction) { return .failure(refused) }
                for command in commands { session.state.commandEnqueued(command.sessionEffect) }
                return .success(session.state.inTransaction)
            }
            inTransaction = try outcome.get()
        } else {
            inTransaction = self.isInTransaction
        }
        // A blocking command may wait on the server as long as its own timeout says, then answer; inside
        // a transaction (queued after MULTI, here or earlier) nothing blocks.
        let commandTimeout = self.configuration.commandTimeout
        let queued = inTransaction || commands.contains { $0.sessionEffect == .beginsTransaction }
        var replyTimeout = commandTimeout
        if let timeout {
            replyTimeout = timeout
        } else if !queued {
            // The longest any of them may take (a loop: no array per write).
            for command in commands {
                replyTimeout = max(replyTimeout, command.blockDuration?.replyTimeout(commandTimeout: commandTimeout) ?? commandTimeout)
            }
        }
        let now = NIODeadline.now()
        return (now + TimeAmount(replyTimeout), now + TimeAmount(self.configuration.commandTimeout))
    }

    /// Why `commands` cannot be sent when a subscribe-family command would be queued inside `MULTI`:
    /// Redis answers it at `EXEC` with one confirmation per name, all but the first outside `EXEC`'s
    /// reply, which no reader can match to commands.
    private static func subscriptionInTransaction(_ commands: some Sequence<RedisCommand>, inTransaction: Bool) -> RedisError? {
        var inTransaction = inTransaction
        for command in commands {
            switch command.sessionEffect {
            case .beginsTransaction: inTransaction = true
            case .endsTransaction: inTransaction = false
            default: break
            }
            switch command.pubSubCommand {
            case .subscribe?, .unsubscribe?:
                guard inTransaction else { continue }
                var error = RedisError(code: .invalidArgument, message: "\(command.name) cannot be queued inside MULTI: subscribe outside the transaction")
                error.commandWasNotSent = true
                return error
            case .reset?, nil:
                continue
            }
        }
        return nil
    }

    private static func isTimeout(_ result: Result<RESPValue, RedisError>) -> Bool {
        if case .failure(let error) = result { return error.code == .commandTimeout }
        return false
    }

    /// Hands `payload` (`count` encoded commands) to the handler on its event loop and waits for the
    /// replies. A cancelled caller stops waiting at once; the replies are dropped when they arrive.
    static func exchange(
        _ payload: RedisCommandHandler.Payload,
        count: Int,
        closesIfAbandoned: (Int) -> Bool,
        pubSubCommands: [PubSubStateMachine.Command?] = [],
        deadline: NIODeadline,
        silenceDeadline: NIODeadline? = nil,
        handler: NIOLoopBound<RedisCommandHandler>,
        progress: ReplyProgress,
        sensitive: Bool = false,
        abandoned: @Sendable () -> Void = {}
    ) async throws -> [Result<RESPValue, RedisError>] {
        if let error = Self.closedError(progress) { return Array(repeating: .failure(error), count: count) }
        let firstID = Self.nextCommandID.add(UInt64(count), ordering: .relaxed).newValue - UInt64(count) + 1
        let entries = (0..<count).map { offset in
            RedisCommandHandler.Entry(
                id: firstID + UInt64(offset),
                promise: .box(ReplyBox()),
                deadline: deadline,
                silenceDeadline: silenceDeadline,
                closesIfAbandoned: closesIfAbandoned(offset)
            )
        }
        return try await Self.deliver(
            payload,
            entries: entries,
            pubSubCommands: pubSubCommands,
            handler: handler,
            progress: progress,
            sensitive: sensitive,
            abandoned: abandoned
        ) {
            var results: [Result<RESPValue, RedisError>] = []
            results.reserveCapacity(count)
            for entry in entries { results.append(try await Self.reply(of: entry)) }
            return results
        }
    }

    /// ``exchange(_:count:closesIfAbandoned:pubSubCommands:deadline:silenceDeadline:handler:progress:abandoned:)``
    /// for one command: no array for its waiter or its result.
    @inline(__always)
    static func exchangeOne(
        _ payload: RedisCommandHandler.Payload,
        closesIfAbandoned: Bool,
        pubSubCommand: PubSubStateMachine.Command?,
        deadline: NIODeadline,
        silenceDeadline: NIODeadline?,
        handler: NIOLoopBound<RedisCommandHandler>,
        progress: ReplyProgress,
        sensitive: Bool,
        abandoned: @Sendable () -> Void
    ) async throws -> Result<RESPValue, RedisError> {
        if let error = Self.closedError(progress) { return .failure(error) }
        let entry = RedisCommandHandler.Entry(
            id: Self.nextCommandID.add(1, ordering: .relaxed).newValue,
            promise: .box(ReplyBox()),
            deadline: deadline,
            silenceDeadline: silenceDeadline,
            closesIfAbandoned: closesIfAbandoned
        )
        return try await Self.deliver(
            payload,
            entries: CollectionOfOne(entry),
            pubSubCommands: pubSubCommand.map { [$0] } ?? [],
            handler: handler,
            progress: progress,
            sensitive: sensitive,
            abandoned: abandoned
        ) {
            try await Self.reply(of: entry)
        }
    }

    /// Closed already: fail as the handler would, without relying on the event loop (one that has shut
    /// down drops what is scheduled on it).
    private static func closedError(_ progress: ReplyProgress) -> RedisError? {
        guard var error = progress.closeReason else { return nil }
        error.commandWasNotSent = true
        return error
    }

    /// The reply `entry`'s box receives.
    @inline(__always)
    private static func reply(of entry: RedisCommandHandler.Entry) async throws -> Result<RESPValue, RedisError> {
        guard let box = entry.promise?.box else { preconditionFailure("a caller's command waits in a reply box") }
        do {
            return .success(try await box.value())
        } catch let error as RedisError {
            return .failure(error)
        }
    }

    /// Schedules `entries` on the handler's event loop (at once when already there) and runs `wait`; a
    /// cancelled caller tells the handler to drop the replies.
    @inline(__always)
    private static func deliver<Entries: Collection<RedisCommandHandler.Entry> & Sendable, Output>(
        _ payload: RedisCommandHandler.Payload,
        entries: Entries,
        pubSubCommands: [PubSubStateMachine.Command?],
        handler: NIOLoopBound<RedisCommandHandler>,
        progress: ReplyProgress,
        sensitive: Bool,
        abandoned: @Sendable () -> Void,
        wait: () async throws -> Output
    ) async throws -> Output {
        let eventLoop = handler.eventLoop
        // A password goes out at once, not at the end of the loop's turn (see `RedisCommandHandler.enqueue`).
        if eventLoop.inEventLoop {
            // What callers elsewhere handed over before goes first.
            progress.drainIfPending()
            handler.value.enqueue(payload, entries: entries, pubSubCommands: pubSubCommands, flushesAtOnce: sensitive)
        } else if var refused = progress.post(payload, entries: entries, pubSubCommands: pubSubCommands, flushesAtOnce: sensitive) {
            refused.commandWasNotSent = true
            for entry in entries { entry.promise?.fail(refused) }
        }
        return try await withTaskCancellationHandler {
            try await wait()
        } onCancel: {
            abandoned()
            Self.stopWaiting(for: entries, handler: handler, progress: progress)
        }
    }

    /// A caller's task was cancelled while it waited for `entries`' replies: commands still in the
    /// mailbox are taken back (never written); otherwise the handler drops the replies.
    static func stopWaiting(
        for entries: some Collection<RedisCommandHandler.Entry> & Sendable,
        handler: NIOLoopBound<RedisCommandHandler>,
        progress: ReplyProgress
    ) {
        if let id = entries.first?.id, progress.withdraw(id: id) { return }
        handler.eventLoop.execute {
            for entry in entries { handler.value.cancel(id: entry.id) }
        }
        // On a closed connection the loop may be gone: the task fails its own waiters (a box takes
        // the first completion, so the handler's, if it comes, is ignored).
        if progress.closeReason != nil {
            for entry in entries { entry.promise?.box?.complete(.failure(CancellationError())) }
        }
    }

    static func serverError(_ buffer: ByteBuffer, command: RedisCommand) -> RedisError {
        let text = String(buffer: buffer)
        let prefix = HandshakeStateMachine.prefix(of: text)
        return RedisError(
            code: .serverError,
            message: "the server answered \(command.name) with an error (\(prefix))",
            serverErrorPrefix: prefix,
            serverMessage: command.isSensitive ? nil : text
        )
    }

    /// The handshake state machine for `configuration`.
    private static func handshakeMachine(configuration: RedisConnectionConfiguration) -> HandshakeStateMachine {
        HandshakeStateMachine(
            settings: .init(
                username: configuration.username,
                hasPassword: configuration.password != nil,
                name: configuration.name,
                database: configuration.database,
                readOnly: configuration.readOnly
            )
        )
    }

    /// One handshake step's commands encoded in one payload (which may hold the password: `wipeSecrets()` it
    /// once the replies are in), with the ids their waiters get.
    private struct EncodedHandshakeStep {
        var payload: ByteBuffer
        /// Consecutive: one atomic add reserves them.
        var ids: Range<UInt64>
        var isSensitive: Bool

        mutating func wipeSecrets() {
            if self.isSensitive { self.payload.withUnsafeMutableReadableBytes { wipe($0) } }
        }
    }

    /// `commands` encoded in one buffer allocated once at their exact size. A buffer that grew as they
    /// were written (a long password, an access token of a kilobyte, fills the first 256 bytes) would
    /// leave the bytes written so far, the password among them, in storage freed without a wipe.
    static func encodeOnce(_ commands: some Collection<RedisCommand>) throws(RedisError) -> ByteBuffer {
        var payload = ByteBufferAllocator().buffer(capacity: commands.reduce(0) { $0 + $1.encodedCount })
        for command in commands { try command.write(to: &payload) }
        return payload
    }

    private static func encodeHandshakeStep(
        _ action: HandshakeStateMachine.Action,
        configuration: RedisConnectionConfiguration
    ) throws -> EncodedHandshakeStep {
        guard case .send(let commands) = action else { preconditionFailure("a handshake starts by sending") }
        let encoded = commands.map { Self.command(for: $0, configuration: configuration) }
        let payload = try Self.encodeOnce(encoded)
        let count = UInt64(commands.count)
        let firstID = Self.nextCommandID.add(count, ordering: .relaxed).newValue - count + 1
        return EncodedHandshakeStep(
            payload: payload,
            ids: firstID..<(firstID + count),
            isSensitive: encoded.contains(where: \.isSensitive)
        )
    }

    /// The replies of one handshake step, or the error that ends the handshake (a reply that did not
    /// come in time is a handshake timeout).
    private static func handshakeReplies(
        _ results: [Result<RESPValue, any Error>],
        configuration: RedisConnectionConfiguration
    ) throws -> [RESPValue] {
        var replies: [RESPValue] = []
        replies.reserveCapacity(results.count)
        for result in results {
            switch result {
            case .success(let reply):
                replies.append(reply)
            case .failure(let error as RedisError) where error.code == .commandTimeout:
                throw RedisError(
                    code: .handshakeTimeout,
                    message: "the server did not complete the handshake within \(configuration.handshakeTimeout)",
                    underlying: error
                )
            case .failure(let error):
                throw error
            }
        }
        return replies
    }

    /// Runs the handshake state machine against the channel from `action` on.
    private static func handshake(
        machine: inout HandshakeStateMachine,
        action: HandshakeStateMachine.Action,
        deadline: NIODeadline,
        configuration: RedisConnectionConfiguration,
        handler: NIOLoopBound<RedisCommandHandler>,
        progress: ReplyProgress,
        logger: Logger
    ) async throws -> HandshakeStateMachine.ServerInfo {
        var action = action
        while true {
            switch action {
            case .succeed(let info):
                return info
            case .fail(let error):
                throw error
            case .send(let commands):
                let encoded = commands.map { Self.command(for: $0, configuration: configuration) }
                var payload = try Self.encodeOnce(encoded)
                defer { if encoded.contains(where: \.isSensitive) { payload.withUnsafeMutableReadableBytes { wipe($0) } } }
                let results = try await Self.exchange(
                    .bytes(payload),
                    count: encoded.count,
                    closesIfAbandoned: { _ in false },
                    deadline: deadline,
                    handler: handler,
                    progress: progress,
                    sensitive: encoded.contains(where: \.isSensitive)
                ).map { $0.mapError { $0 as any Error } }
                action = machine.repliesReceived(try Self.handshakeReplies(results, configuration: configuration))
                if case .send = action { logger.debug("server has no HELLO: falling back to AUTH") }
            }
        }
    }

    private static func command(
        for command: HandshakeStateMachine.Command,
        configuration: RedisConnectionConfiguration
    ) -> RedisCommand {
        switch command {
        case .hello(let authUsername, let name):
            var arguments: [RedisArgument] = ["2"]
            if let authUsername, let password = configuration.password {
                arguments += ["AUTH", .string(authUsername), .secret(password)]
            }
            if let name { arguments += ["SETNAME", .string(name)] }
            return RedisCommand("HELLO", arguments: arguments)
        case .auth(let username):
            let password = RedisArgument.secret(configuration.password ?? RedisSecret(""))
            if let username { return RedisCommand("AUTH", .string(username), password) }
            return RedisCommand("AUTH", password)
        case .setName(let name):
            return RedisCommand("CLIENT", "SETNAME", .string(name))
        case .select(let database):
            return RedisCommand("SELECT", .integer(database))
        case .readOnly:
            return RedisCommand("READONLY")
        }
    }
}
