extension RedisClient {
    /// Sends the commands `build` queues in one write on one pooled connection and returns their
    /// results in order; an error reply fails only its own result.
    ///
    /// Not atomic (use ``transaction(timeout:_:)`` for that). When the connection dies half-way, the
    /// commands whose replies came are done; of the others, those never written and those safe to repeat
    /// (``RedisCommand/isIdempotent``) are sent again on another connection, after the rest (within
    /// `maximumCommandAttempts`); any other fails with ``RedisError/Code/outcomeUnknown``.
    ///
    /// - Parameters:
    ///   - timeout: Bounds the whole call, as for ``send(_:timeout:)``.
    ///   - build: Queues the commands.
    /// - Throws: ``RedisError/Code/invalidArgument`` for a command that would change the pooled
    ///   connection's session, before anything is sent.
    public func pipeline(
        timeout: Duration? = nil,
        _ build: (inout RedisPipeline) throws -> Void
    ) async throws -> RedisCommandResults {
        var pipeline = RedisPipeline()
        try build(&pipeline)
        return try await self.traced("PIPELINE") { span in
            span.attributes["redis.pipeline.commands"] = pipeline.commands.count
            return try await self.run(pipeline, timeout: timeout)
        }
    }

    /// Sends a pipeline built beforehand, as ``pipeline(timeout:_:)`` does; read each result with the
    /// handle its queue method returned:
    ///
    /// ```swift
    /// var p = RedisPipeline()
    /// let name = p.hget("user:1", field: "name")
    /// let visits = p.incr("visits")
    /// let results = try await client.pipeline(p)
    /// let count = try results[visits]  // Int
    /// ```
    public func pipeline(_ pipeline: RedisPipeline, timeout: Duration? = nil) async throws -> RedisCommandResults {
        try await self.pipeline(timeout: timeout) { $0 = pipeline }
    }

    private func run(_ pipeline: RedisPipeline, timeout: Duration?) async throws -> RedisCommandResults {
        let commands = pipeline.commands
        if let command = commands.first(where: { $0.sessionEffect.changesSession }) {
            throw RedisError(code: .invalidArgument, message: "\(command.name) is not sent through the pool: it changes the connection's session (use transaction or withConnection)")
        }
        if let error = commands.lazy.compactMap(\.encodingError).first { throw error }
        guard !commands.isEmpty else { return RedisCommandResults(results: []) }
        let clock = ContinuousClock()
        let deadline = timeout.map { clock.now + $0 }
        var results = [Result<RESPValue, RedisError>?](repeating: nil, count: commands.count)
        var pending = Array(commands.indices)
        var mayHaveExecuted: Set<Int> = []
        var attempts = 0
        var pause: Duration?
        while !pending.isEmpty {
            attempts += 1
            let replies: [Result<RESPValue, RedisError>]
            do {
                let lease = try await self.lease(within: deadline.map { $0 - clock.now })
                do {
                    replies = try await lease.connection.pipeline(pending.map { commands[$0] }, timeout: deadline.map { max($0 - clock.now, .milliseconds(1)) })
                } catch {
                    self.finish(lease)
                    throw error
                }
                self.finish(lease)
            } catch {
                // The first attempt throws as any command does; a resend that cannot go out must not
                // discard the results of commands that already ran: each pending one fails on its own.
                guard attempts > 1 else { throw error }
                let failure = (error as? RedisError) ?? RedisError(code: .cancelled, message: "the pipeline's resend was cancelled")
                for index in pending {
                    results[index] = .failure(
                        mayHaveExecuted.contains(index) && !commands[index].isReadOnly
                            ? RedisError(
                                code: .outcomeUnknown,
                                message: "\(commands[index].name) in a pipeline may or may not have executed: its connection died in flight and the resend failed (\(failure.code))",
                                underlying: failure
                            )
                            : failure
                    )
                }
                pending = []
                break
            }
            var again: [Int] = []
            for (index, result) in zip(pending, replies) {
                guard case .failure(let error) = result, Self.connectionFailures.contains(error.code) else {
                    results[index] = result
                    continue
                }
                if !error.commandWasNotSent { mayHaveExecuted.insert(index) }
                let resendable = error.commandWasNotSent || commands[index].isIdempotent
                let withinBudget = attempts < self.configuration.maximumCommandAttempts && (deadline.map { clock.now < $0 } ?? true)
                if resendable && withinBudget {
                    again.append(index)
                } else if mayHaveExecuted.contains(index) && !commands[index].isReadOnly {
                    results[index] = .failure(
                        RedisError(
                            code: .outcomeUnknown,
                            message: "\(commands[index].name) in a pipeline failed (\(error.code)) after an attempt whose connection died in flight: it may or may not have executed",
                            underlying: error
                        )
                    )
                } else {
                    results[index] = .failure(error)
                }
            }
            pending = again
            if !pending.isEmpty {
                self.retrying()
                let next = Self.retryPause(after: pause)
                pause = next
                try? await Task.sleep(for: next)  // A cancellation shows at the next lease, as a result per command.
            }
        }
        return RedisCommandResults(results: results.map { $0! })
    }

    /// Runs the commands `build` queues as one transaction (`MULTI` … `EXEC` in one write on one pooled
    /// connection): all of them run, atomically, or none.
    ///
    /// A re-authentication of the connection waits until `EXEC` has answered (leases are exclusive). When
    /// the connection dies before `EXEC` was written, nothing ran and the transaction is sent again on
    /// another connection (within `maximumCommandAttempts`); when it dies after, the transaction may or
    /// may not have run: ``RedisError/Code/outcomeUnknown``. It is never reported as run when it did not.
    ///
    /// - Parameters:
    ///   - timeout: Bounds the whole call, as for ``send(_:timeout:)``.
    ///   - build: Queues the commands.
    /// - Throws: ``RedisError/Code/invalidArgument`` for a queued command that would change the pooled
    ///   connection's session (`SELECT`, `MULTI`, `WATCH`, ...), ``RedisError/Code/transactionAborted``
    ///   when the server refused a queued command (nothing ran).
    public func transaction(
        timeout: Duration? = nil,
        _ build: (inout RedisTransaction) throws -> Void
    ) async throws -> RedisCommandResults {
        var transaction = RedisTransaction()
        try build(&transaction)
        if let refusal = transaction.refusal { throw refusal }
        let results = try await self.traced("MULTI") { _ in
            try await self.runTransaction(watching: [], timeout: timeout, maximumAttempts: 1) { _ in transaction }
        }
        // Without WATCH, EXEC never answers nil.
        guard let results else {
            throw RedisError(code: .unexpectedReply, message: "EXEC answered nil to a transaction that watched no key")
        }
        return results
    }

    /// Runs a transaction built beforehand, as ``transaction(timeout:_:)`` does; read each result with
    /// the handle its queue method returned:
    ///
    /// ```swift
    /// var tx = RedisTransaction()
    /// let visits = tx.incr("visits")
    /// tx.expire("visits", seconds: 60)
    /// let count = try await client.transaction(tx)[visits]  // Int
    /// ```
    public func transaction(_ transaction: RedisTransaction, timeout: Duration? = nil) async throws -> RedisCommandResults {
        try await self.transaction(timeout: timeout) { $0 = transaction }
    }

    /// Optimistic concurrency: `WATCH`es `keys`, runs `body` (which reads through the connection and
    /// returns the transaction to run), then runs it; when a watched key changed in between (`EXEC`
    /// answers nil), does it all again, at most `maximumAttempts` times.
    ///
    /// ```swift
    /// let results = try await client.transaction(watching: ["balance"]) { connection in
    ///     let balance = try await connection.send(RedisCommand("GET", "balance"), as: Int?.self) ?? 0
    ///     var tx = RedisTransaction()
    ///     tx.queue(RedisCommand("SET", "balance", .integer(Int64(balance + 10))))
    ///     return tx
    /// }
    /// ```
    ///
    /// Whatever `body` leaves on the connection (the watch when it throws) is undone before anyone else
    /// uses it. `body` runs once per attempt and only after a successful `WATCH`; its errors (including
    /// a connection that died under its reads) end the call as they are, never a rerun, since the body
    /// may have written. `timeout` bounds the lease, the `WATCH` and `EXEC`; the body's own commands
    /// have their own timeouts.
    ///
    /// - Throws: ``RedisError/Code/transactionAborted`` when a watched key changed on every attempt, or
    ///   the server refused a queued command; errors of `body` as they are.
    public func transaction(
        watching keys: [RedisKey],
        maximumAttempts: Int = 3,
        timeout: Duration? = nil,
        _ body: (RedisConnection) async throws -> RedisTransaction
    ) async throws -> RedisCommandResults {
        precondition(!keys.isEmpty, "watch at least one key, or use transaction(_:)")
        precondition(maximumAttempts >= 1)
        let outcome = try await self.traced("MULTI") { _ in
            try await self.runTransaction(watching: keys, timeout: timeout, maximumAttempts: maximumAttempts, body)
        }
        guard let results = outcome else {
            throw RedisError(
                code: .transactionAborted,
                message: "a watched key changed during each of \(maximumAttempts) attempt\(maximumAttempts == 1 ? "" : "s"); nothing was applied"
            )
        }
        return results
    }

    private enum TransactionPhase { case watching, body, transaction }

    /// An error of the caller's body, passed through as it is.
    private struct TransactionBodyFailure: Error {
        let error: any Error
    }

    /// Failures of the connection rather than of the commands.
    private static let connectionFailures: Set<RedisError.Code> = [.connectionClosed, .connectionFailed, .commandTimeout, .protocolError]

    /// Runs the transaction `body` returns, after watching `keys`, on one lease per attempt. Returns nil
    /// when a watched key changed on the last attempt.
    private func runTransaction(
        watching keys: [RedisKey],
        timeout: Duration?,
        maximumAttempts: Int,
        _ body: (RedisConnection) async throws -> RedisTransaction
    ) async throws -> RedisCommandResults? {
        let clock = ContinuousClock()
        let deadline = timeout.map { clock.now + $0 }
        var conflicts = 0
        var unsent = 0
        var pause: Duration?
        while true {
            let lease = try await self.lease(within: deadline.map { $0 - clock.now })
            // Where the attempt is: a failure while watching can always be retried (nothing ran), one in
            // the body never (the body may have written: its errors are the caller's), one in MULTI … EXEC
            // only when it never left (a transaction built up front has no body that ran).
            var phase = TransactionPhase.watching
            do {
                if !keys.isEmpty {
                    try await lease.connection.send(
                        RedisCommand("WATCH", arguments: keys.map(\.argument)),
                        timeout: deadline.map { max($0 - clock.now, .milliseconds(1)) }
                    )
                }
                phase = .body
                let transaction: RedisTransaction
                do {
                    transaction = try await body(lease.connection)
                } catch {
                    self.finish(lease)
                    throw TransactionBodyFailure(error: error)
                }
                if let refusal = transaction.refusal { throw refusal }
                let remaining = deadline.map { max($0 - clock.now, .milliseconds(1)) } ?? self.configuration.commandTimeout
                phase = .transaction
                let results = try await transaction.run(on: lease.connection, timeout: remaining)
                self.finish(lease)
                if let results { return results }
                conflicts += 1
                if conflicts >= maximumAttempts { return nil }
            } catch let failure as TransactionBodyFailure {
                throw failure.error
            } catch let error as RedisError
                where Self.connectionFailures.contains(error.code)
                && (phase == .watching || (phase == .transaction && error.commandWasNotSent && keys.isEmpty))
            {
                // The connection failed before the transaction left it: nothing ran, so it all goes again
                // (the watch and the body's reads too) on another connection.
                self.finish(lease)
                unsent += 1
                guard unsent < self.configuration.maximumCommandAttempts, deadline.map({ clock.now < $0 }) ?? true else { throw error }
                self.retrying()
                let next = Self.retryPause(after: pause)
                pause = next
                try await Task.sleep(for: next)
            } catch let error as RedisError where Self.connectionFailures.contains(error.code) && !error.commandWasNotSent {
                self.finish(lease)
                throw RedisError(
                    code: .outcomeUnknown,
                    message: "the transaction's connection failed (\(error.code)) after EXEC may have been sent: it may or may not have run, entirely or not at all",
                    underlying: error
                )
            } catch {
                self.finish(lease)
                throw error
            }
        }
    }
}
