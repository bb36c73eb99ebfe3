/// Commands sent together in one write on one pooled connection, results in order; unlike a
/// transaction, other clients' commands may run in between, and a connection lost half-way leaves the
/// commands before it done.
///
/// ```swift
/// let results = try await client.pipeline { p in
///     p.queue(RedisCommand("GET", "a"))
///     p.queue(RedisCommand("INCR", "b"))
/// }
/// ```
public struct RedisPipeline: Sendable {
    /// The queued commands, in order.
    public private(set) var commands: [RedisCommand] = []

    public init() {}

    /// Queues `command`; its result is at the index this returns.
    @discardableResult
    public mutating func queue(_ command: RedisCommand) -> Int {
        self.commands.append(command)
        return self.commands.count - 1
    }

    /// Queues a command given as its name and arguments.
    @discardableResult
    public mutating func queue(_ name: String, _ arguments: RedisArgument...) -> Int {
        self.queue(RedisCommand(name, arguments: arguments))
    }
}

/// Commands for one `MULTI` … `EXEC`, collected before anything is sent: the transaction then goes
/// out in one write on one connection and runs atomically on the server.
///
/// ```swift
/// let results = try await client.transaction { tx in
///     tx.queue(RedisCommand("INCR", "visits"))
///     tx.queue(RedisCommand("EXPIRE", "visits", "60"))
/// }
/// let visits = try results.value(at: 0, as: Int.self)
/// ```
public struct RedisTransaction: Sendable {
    /// The queued commands, in order.
    public private(set) var commands: [RedisCommand] = []

    public init() {}

    /// Queues `command`; its result is at the index this returns.
    @discardableResult
    public mutating func queue(_ command: RedisCommand) -> Int {
        self.commands.append(command)
        return self.commands.count - 1
    }

    /// Queues a command given as its name and arguments.
    @discardableResult
    public mutating func queue(_ name: String, _ arguments: RedisArgument...) -> Int {
        self.queue(RedisCommand(name, arguments: arguments))
    }

    /// Why this transaction cannot run on a pooled connection, if it cannot: a command inside it would
    /// change the session (`SELECT`, `MULTI`, `WATCH`, `AUTH`, ...) for whoever uses the connection next.
    var refusal: RedisError? {
        guard let command = self.commands.first(where: { $0.sessionEffect.changesSession }) else {
            return self.commands.lazy.compactMap(\.encodingError).first
        }
        return RedisError(
            code: .invalidArgument,
            message: "\(command.name) cannot be queued in a transaction: it changes the connection's session beyond the transaction"
        )
    }
}

/// The results of a transaction or a pipeline: one per queued command, in order. A command that
/// failed (a `WRONGTYPE` reply, say) fails only its own result.
public struct RedisCommandResults: Sendable {
    public let results: [Result<RESPValue, RedisError>]

    /// The result of the command queued at `index`, decoded as `type`; throws its error.
    public func value<Value: RESPValueDecodable>(at index: Int, as type: Value.Type = Value.self) throws -> Value {
        try Value(fromRESP: self.results[index].get())
    }

    public var count: Int { self.results.count }
}

extension RedisTransaction {
    /// Runs the transaction on `connection`: `MULTI`, the commands, `EXEC`, in one write.
    ///
    /// - Returns: The results, or `nil` when `EXEC` answered nil (a watched key changed).
    /// - Throws: ``RedisError/Code/transactionAborted`` when the server refused a queued command
    ///   (nothing ran), or the connection's error for `EXEC` (with ``RedisError/commandWasNotSent`` when
    ///   it never left, so nothing ran).
    func run(on connection: RedisConnection, timeout: Duration?) async throws -> RedisCommandResults? {
        let replies = try await connection.pipeline([RedisCommand("MULTI")] + self.commands + [RedisCommand("EXEC")], timeout: timeout)
        let exec = replies[replies.count - 1]
        switch exec {
        case .success(.null):
            return nil
        case .success(.array(let values)) where values.count == self.commands.count:
            return RedisCommandResults(
                results: zip(self.commands, values).map { command, value in
                    if case .error(let buffer) = value { return .failure(RedisConnection.serverError(buffer, command: command)) }
                    return .success(value)
                }
            )
        case .success(let other):
            throw RedisError(code: .unexpectedReply, message: "EXEC answered \(other), not one reply per queued command")
        case .failure(let error) where error.serverErrorPrefix == "EXECABORT":
            // The first refusal among MULTI and the queued commands says why.
            let cause = replies.dropLast().lazy.compactMap { result -> RedisError? in
                if case .failure(let error) = result { return error }
                return nil
            }.first
            throw RedisError(
                code: .transactionAborted,
                message: "the server refused the transaction before running any of it\(cause.map { ": \($0.message)" } ?? "")",
                underlying: cause ?? error
            )
        case .failure(let error):
            throw error
        }
    }
}

extension RedisConnection {
    /// Sends the pipeline's commands in one write and returns their results in order; an error reply
    /// fails only its own result. Read each with the handle its queue method returned.
    public func pipeline(_ pipeline: RedisPipeline, timeout: Duration? = nil) async throws -> RedisCommandResults {
        RedisCommandResults(results: try await self.pipeline(pipeline.commands, timeout: timeout))
    }

    /// Runs the transaction on this connection: `MULTI`, the commands, `EXEC`, in one write.
    ///
    /// - Returns: The results, or `nil` when `EXEC` answered nil (a key this connection `WATCH`ed
    ///   changed).
    /// - Throws: ``RedisError/Code/transactionAborted`` when the server refused a queued command
    ///   (nothing ran).
    public func transaction(_ transaction: RedisTransaction, timeout: Duration? = nil) async throws -> RedisCommandResults? {
        if let error = transaction.commands.lazy.compactMap(\.encodingError).first { throw error }
        return try await transaction.run(on: self, timeout: timeout)
    }
}
