extension RedisClusterClient {
    /// Sends the pipeline's commands, split by the node that serves each command's slot (in parallel,
    /// one write per node) and reassembled in order; an error fails only its own result. A command
    /// answered `MOVED` or `ASK` (a slot that moved meanwhile) is sent again on its own, following the
    /// redirection; keys across slots and whole-keyspace commands fail their own result.
    ///
    /// - Throws: ``RedisError/Code/invalidArgument`` for a command that would change a pooled
    ///   connection's session, before anything is sent.
    public func pipeline(_ pipeline: RedisPipeline, timeout: Duration? = nil) async throws -> RedisCommandResults {
        let commands = pipeline.commands
        if let command = commands.first(where: { $0.sessionEffect.changesSession }) {
            throw RedisError(code: .invalidArgument, message: "\(command.name) is not sent through the pool: it changes the connection's session")
        }
        let clock = ContinuousClock()
        let deadline = clock.now + (timeout ?? self.configuration.node.commandTimeout)
        var results = [Result<RESPValue, RedisError>?](repeating: nil, count: commands.count)
        var byNode: [Endpoint: [Int]] = [:]
        for (index, command) in commands.enumerated() {
            do {
                if let refusal = Self.wholeKeyspaceRefusal(command) { throw refusal }
                let endpoint = try await self.endpoint(
                    forSlot: try command.clusterSlot(),
                    within: timeout ?? self.configuration.node.pool.leaseTimeout,
                    replica: self.configuration.reads == .replicas && command.isReadOnly
                )
                byNode[endpoint, default: []].append(index)
            } catch let error as RedisError {
                results[index] = .failure(error)
            }
        }
        let groups = try byNode.map { (endpoint, indices) in (try self.client(for: endpoint), indices) }
        let replies = await withTaskGroup(of: [(Int, Result<RESPValue, RedisError>)].self) { group in
            for (client, indices) in groups {
                group.addTask {
                    var part = RedisPipeline()
                    for index in indices { part.queue(commands[index]) }
                    do {
                        let partial = try await client.pipeline(part, timeout: timeout)
                        return Array(zip(indices, partial.results))
                    } catch {
                        let failure = (error as? RedisError) ?? RedisError(code: .cancelled, message: "the pipeline was cancelled")
                        return indices.map { ($0, .failure(failure)) }
                    }
                }
            }
            var all: [(Int, Result<RESPValue, RedisError>)] = []
            for await part in group { all += part }
            return all
        }
        for (index, result) in replies { results[index] = result }
        // Commands whose slot moved meanwhile did not run, and commands a node failed that did not run
        // or may run twice (a failover under way): each again on its own, following the topology,
        // within what is left of the pipeline's deadline.
        let shutDown = self.isShutDown
        for (index, result) in results.enumerated() {
            guard case .failure(let error) = result,
                error.serverErrorPrefix == "MOVED" || error.serverErrorPrefix == "ASK" || error.serverErrorPrefix == "TRYAGAIN"
                    || Self.nodeUnreachable(error, command: commands[index], shutDown: shutDown)
            else { continue }
            do {
                results[index] = .success(try await self.send(commands[index], timeout: max(deadline - clock.now, .milliseconds(1))))
            } catch let error as RedisError {
                results[index] = .failure(error)
            }
        }
        return RedisCommandResults(results: results.map { $0! })
    }

    /// Runs the transaction on the primary that serves its keys: every key of every queued command must
    /// share one slot (use hash tags), as a transaction runs on one node. When the slot moved before
    /// `EXEC`, nothing ran, and the transaction is sent again to the new owner once.
    ///
    /// - Throws: ``RedisError/Code/invalidArgument`` for keys in more than one slot, before anything is
    ///   sent; otherwise as ``RedisClient/transaction(_:timeout:)``.
    public func transaction(_ transaction: RedisTransaction, timeout: Duration? = nil) async throws -> RedisCommandResults {
        let slot = try Self.transactionSlot(transaction.commands, slot: nil)
        for attempt in 1...2 {
            let endpoint = try await self.endpoint(forSlot: slot, within: timeout ?? self.configuration.node.pool.leaseTimeout)
            do {
                return try await self.client(for: endpoint).transaction(transaction, timeout: timeout)
            } catch let error as RedisError where attempt == 1 && error.code == .transactionAborted
                && ["MOVED", "ASK"].contains((error.underlying as? RedisError)?.serverErrorPrefix ?? "")
            {
                // The slot moved: the server refused the queued commands, so nothing ran.
                if let moved = error.underlying as? RedisError, moved.serverErrorPrefix == "MOVED",
                    let target = Self.redirectTarget(moved, askedHost: endpoint.host)
                {
                    self.recordMoved(moved, to: target)
                }
                await self.refreshNow()
            }
        }
        throw RedisError(code: .transactionAborted, message: "the transaction's slot kept moving; nothing ran")
    }

    /// Optimistic concurrency on one slot, as ``RedisClient/transaction(watching:maximumAttempts:timeout:_:)``
    /// does on one server: `WATCH`es `keys` on the primary that serves their slot, runs `body` with that
    /// connection (its reads must stay in the slot), then the transaction it returns, which must touch
    /// only that slot too; when a watched key changed in between, it all goes again, at most
    /// `maximumAttempts` times. When the slot moved (`MOVED`/`ASK` to the `WATCH`, or to the queued
    /// commands, so that nothing ran), it goes again once on the new owner.
    ///
    /// - Throws: ``RedisError/Code/invalidArgument`` when the watched keys, or the keys of the returned
    ///   transaction, are in more than one slot (nothing is sent, or the transaction is not sent);
    ///   otherwise as the single-node method.
    public func transaction(
        watching keys: [RedisKey],
        maximumAttempts: Int = 3,
        timeout: Duration? = nil,
        _ body: (RedisConnection) async throws -> RedisTransaction
    ) async throws -> RedisCommandResults {
        precondition(!keys.isEmpty, "watch at least one key, or use transaction(_:)")
        let slot = try Self.transactionSlot([RedisCommand("WATCH", arguments: keys.map(\.argument))], slot: nil)
        for attempt in 1...3 {
            let endpoint = try await self.endpoint(forSlot: slot, within: timeout ?? self.configuration.node.pool.leaseTimeout)
            var bodyRan = false
            do {
                return try await self.client(for: endpoint).transaction(watching: keys, maximumAttempts: maximumAttempts, timeout: timeout) { connection in
                    bodyRan = true
                    let transaction = try await body(connection)
                    _ = try Self.transactionSlot(transaction.commands, slot: slot)
                    return transaction
                }
            } catch let error as RedisError where attempt < 3 {
                // Only a refusal by the slot's owner that ran nothing is tried again: the WATCH itself
                // redirected (before the body), or the queued commands refused (EXECABORT). A slot being
                // migrated (ASK) cannot hold a transaction: wait for the migration of the slot to end.
                let redirect: RedisError? =
                    if !bodyRan, error.serverErrorPrefix == "MOVED" || error.serverErrorPrefix == "ASK" {
                        error
                    } else if error.code == .transactionAborted, let underlying = error.underlying as? RedisError,
                        underlying.serverErrorPrefix == "MOVED" || underlying.serverErrorPrefix == "ASK"
                    {
                        underlying
                    } else {
                        nil
                    }
                guard let redirect else { throw error }
                if redirect.serverErrorPrefix == "MOVED", let target = Self.redirectTarget(redirect, askedHost: endpoint.host) {
                    self.recordMoved(redirect, to: target)
                    await self.refreshNow()
                } else {
                    try await Task.sleep(for: Self.retryPause(after: attempt + 1))
                }
            }
        }
        throw RedisError(code: .transactionAborted, message: "the transaction's slot kept moving; nothing ran")
    }

    /// The one slot all keys of `commands` share (and `slot`, when given), or `nil` for no key.
    ///
    /// - Throws: ``RedisError/Code/invalidArgument`` naming two slots when they differ.
    static func transactionSlot(_ commands: [RedisCommand], slot: Int?) throws -> Int? {
        var slot = slot
        for command in commands {
            guard let commandSlot = try command.clusterSlot() else { continue }
            if let slot, slot != commandSlot {
                throw RedisError(
                    code: .invalidArgument,
                    message: "a transaction runs on one node: its keys must share one slot (\(slot) and \(commandSlot)); give them a common hash tag"
                )
            }
            slot = commandSlot
        }
        return slot
    }
}
