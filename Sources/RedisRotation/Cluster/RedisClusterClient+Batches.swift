extension RedisClusterClient {
    /// Sends the pipeline's commands, split by the node that serves each command's slot (in parallel,
    /// one write per node) and reassembled in order; an error fails only its own result. A command that
    /// did not run (answered `MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN` or another passing state, or not
    /// sent to a node that failed), or an idempotent one its node failed, is sent again on its own,
    /// following the topology, within what is left of `timeout`; keys across slots and whole-keyspace
    /// commands fail their own result.
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
        // One wait for the first topology, for the whole pipeline.
        do {
            _ = try await self.currentTopology(within: min(timeout ?? self.configuration.node.pool.leaseTimeout, max(deadline - clock.now, .milliseconds(1))))
        } catch let error as RedisError {
            return RedisCommandResults(results: commands.map { _ in .failure(error) })
        }
        // Replicas serve a pipeline only when it only reads: one that writes then reads must see its
        // own writes.
        let replicaReads = self.configuration.reads == .replicas && commands.allSatisfy(\.isReadOnly)
        var byNode: [Endpoint: [Int]] = [:]
        var atReplica: Set<Int> = []
        for (index, command) in commands.enumerated() {
            do {
                if let refusal = Self.wholeKeyspaceRefusal(command) { throw refusal }
                let route = try await self.route(
                    forSlot: try command.clusterSlot(),
                    within: max(deadline - clock.now, .milliseconds(1)),
                    replica: replicaReads
                )
                if route.replica { atReplica.insert(index) }
                let endpoint = route.endpoint
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
            if atReplica.contains(index), case .success(.null) = result {
                // Missing on a replica, which does not know its primary's migrations: the primary
                // confirms (or redirects), as for a single command.
                do {
                    let slot = try commands[index].clusterSlot()
                    results[index] = .success(try await self.send(commands[index], slot: slot, timeout: max(deadline - clock.now, .milliseconds(1)), replicaAllowed: false))
                } catch let error as RedisError {
                    results[index] = .failure(error)
                }
                continue
            }
            guard case .failure(let error) = result,
                error.serverErrorPrefix == "MOVED" || error.serverErrorPrefix == "ASK"
                    // A passing state refused it (a script's own error reply may only look like one).
                    || (error.isTransientServerState && !commands[index].isScript)
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
    /// share one slot (use hash tags), as a transaction runs on one node. When the slot's owner refused
    /// it before anything ran (the slot moved: `MOVED`; it is being migrated: `ASK`), it goes again on
    /// the new owner, or once the migration had a moment, within the deadline.
    ///
    /// - Throws: ``RedisError/Code/invalidArgument`` for keys in more than one slot, before anything is
    ///   sent; ``RedisError/Code/transactionAborted`` when the slot was still being migrated at the
    ///   deadline (nothing ran); otherwise as ``RedisClient/transaction(_:timeout:)``.
    public func transaction(_ transaction: RedisTransaction, timeout: Duration? = nil) async throws -> RedisCommandResults {
        let slot = try Self.transactionSlot(transaction.commands, slot: nil)
        return try await self.onSlotOwner(slot, timeout: timeout) { error in
            Self.redirection(causing: error)
        } attempt: { client, attemptTimeout in
            try await client.transaction(transaction, timeout: attemptTimeout)
        }
    }

    /// Optimistic concurrency on one slot, as ``RedisClient/transaction(watching:maximumAttempts:timeout:_:)``
    /// does on one server: `WATCH`es `keys` on the primary that serves their slot, runs `body` with that
    /// connection (its reads must stay in the slot), then the transaction it returns, which must touch
    /// only that slot too; when a watched key changed in between, it all goes again, at most
    /// `maximumAttempts` times. When the slot's owner refused the `WATCH` (before the body ran) or the
    /// queued commands (nothing ran) because the slot moved or is being migrated, it all goes again on
    /// the new owner, or once the migration had a moment, within the deadline (`timeout`, else the
    /// command timeout).
    ///
    /// - Throws: ``RedisError/Code/invalidArgument`` when the watched keys, or the keys of the returned
    ///   transaction, are in more than one slot (nothing is sent, or the transaction is not sent);
    ///   ``RedisError/Code/transactionAborted`` when the slot was still being migrated at the deadline;
    ///   otherwise as the single-node method.
    public func transaction(
        watching keys: [RedisKey],
        maximumAttempts: Int = 3,
        timeout: Duration? = nil,
        _ body: (RedisConnection) async throws -> RedisTransaction
    ) async throws -> RedisCommandResults {
        precondition(!keys.isEmpty, "watch at least one key, or use transaction(_:)")
        let slot = try Self.transactionSlot([RedisCommand("WATCH", arguments: keys.map(\.argument))], slot: nil)
        var bodyRan = false
        return try await self.onSlotOwner(slot, timeout: timeout) { error in
            // The WATCH itself redirected (before the body), or the queued commands refused (EXECABORT).
            if !bodyRan, error.serverErrorPrefix == "MOVED" || error.serverErrorPrefix == "ASK" { return error }
            return Self.redirection(causing: error)
        } attempt: { client, attemptTimeout in
            bodyRan = false
            return try await client.transaction(watching: keys, maximumAttempts: maximumAttempts, timeout: attemptTimeout) { connection in
                bodyRan = true
                let transaction = try await body(connection)
                _ = try Self.transactionSlot(transaction.commands, slot: slot)
                return transaction
            }
        }
    }

    /// The `MOVED`/`ASK` behind an aborted transaction (its queued commands refused: nothing ran).
    private static func redirection(causing error: RedisError) -> RedisError? {
        guard error.code == .transactionAborted, let underlying = error.underlying as? RedisError,
            underlying.serverErrorPrefix == "MOVED" || underlying.serverErrorPrefix == "ASK"
        else { return nil }
        return underlying
    }

    /// Runs `attempt` with the pool of the primary serving `slot`; when the slot's owner refused it
    /// before anything ran (`refusal` names the `MOVED` or `ASK`), or its node could not be reached,
    /// again: at once on the owner a `MOVED` names (at most `maximumRedirects` times), after a pause for
    /// an `ASK` or a node failure, within the deadline.
    private func onSlotOwner<Result>(
        _ slot: Int?,
        timeout: Duration?,
        refusal: (RedisError) -> RedisError?,
        attempt: (RedisClient, Duration?) async throws -> Result
    ) async throws -> Result {
        let clock = ContinuousClock()
        let deadline = clock.now + (timeout ?? self.configuration.node.commandTimeout)
        var redirects = 0
        var pauses = 0
        while true {
            let remaining = max(deadline - clock.now, .milliseconds(1))
            let endpoint = try await self.endpoint(forSlot: slot, within: remaining)
            var failure: RedisError
            do {
                return try await attempt(try self.client(for: endpoint), redirects + pauses == 0 ? timeout : remaining)
            } catch let error as RedisError {
                failure = error
            }
            if let redirect = refusal(failure), redirect.serverErrorPrefix == "MOVED",
                let target = Self.redirectTarget(redirect, askedHost: endpoint.host)
            {
                redirects += 1
                guard redirects <= self.configuration.maximumRedirects else { throw failure }
                self.recordMoved(redirect, to: target)
                self.requestRefresh()
                continue
            }
            let unreachable = [.connectionFailed, .leaseTimeout].contains(failure.code) || (failure.code == .clientShutdown && !self.isShutDown)
            guard refusal(failure) != nil || unreachable else { throw failure }
            if unreachable { self.nodeFailed(endpoint) }
            pauses += 1
            let pause = Self.retryPause(after: pauses)
            guard clock.now + pause < deadline else {
                if unreachable { throw failure }
                throw RedisError(
                    code: .transactionAborted,
                    message: "the transaction's slot was still being migrated at its deadline; nothing ran",
                    underlying: refusal(failure)
                )
            }
            try await Task.sleep(for: pause)
        }
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
