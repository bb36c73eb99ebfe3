public import NIOCore

/// Commands about the whole keyspace, answered for the whole cluster: `DBSIZE` sums the primaries',
/// `KEYS` joins them, `RANDOMKEY` asks primaries in random order, `FLUSHALL`/`FLUSHDB` reach every
/// primary, and ``scan(matching:type:count:)`` visits every primary in turn.
extension RedisClusterClient {
    /// Every key of the cluster (`SCAN` on each primary in turn, by the order of their first slot),
    /// optionally only those matching `pattern` or of `type`. As with the server's `SCAN`, a key may come
    /// twice (a primary replaced by a failover is scanned again from its start), and keys added or
    /// removed meanwhile may or may not come; so may keys whose slot a reshard moves during the scan.
    public func scan(matching pattern: String? = nil, type: String? = nil, count: Int? = nil) -> RedisScanSequence<ByteBuffer> {
        RedisScanSequence { cursor in
            var options: [RedisArgument] = []
            if let pattern { options += ["MATCH", .string(pattern)] }
            if let count { options += ["COUNT", .integer(count)] }
            if let type { options += ["TYPE", .string(type)] }
            return try await self.scanPage(cursor: cursor, options: options)
        }
    }

    /// A cluster cursor: `<first slot of the shard>|<node scanned>|<node cursor>`; `"0"` to start.
    struct ScanCursor: Equatable {
        var shardSlot: Int
        var node: String
        var nodeCursor: String

        init(shardSlot: Int, node: String, nodeCursor: String) {
            self.shardSlot = shardSlot
            self.node = node
            self.nodeCursor = nodeCursor
        }

        init?(_ text: String) {
            let parts = text.split(separator: "|", omittingEmptySubsequences: false)
            guard parts.count == 3, let slot = Int(parts[0]), (0..<RedisClusterSlot.count).contains(slot) else { return nil }
            self.init(shardSlot: slot, node: String(parts[1]), nodeCursor: String(parts[2]))
        }

        var text: String { "\(self.shardSlot)|\(self.node)|\(self.nodeCursor)" }
    }

    /// One page of the cluster scan from `cursor`: the next cursor (`"0"` when every primary is done).
    private func scanPage(cursor: String, options: [RedisArgument]) async throws -> (next: String, elements: [ByteBuffer]) {
        let wait = self.configuration.node.pool.leaseTimeout
        var position: ScanCursor
        if cursor == "0" {
            guard let first = try await self.firstSlots(within: wait).first else { return ("0", []) }
            position = ScanCursor(shardSlot: first, node: "", nodeCursor: "0")
        } else if let parsed = ScanCursor(cursor) {
            position = parsed
        } else {
            throw RedisError(code: .invalidArgument, message: "not a cluster scan cursor")
        }
        let clock = ContinuousClock()
        let deadline = clock.now + self.configuration.node.commandTimeout
        var failures = 0
        while true {
            let endpoint = try await self.endpoint(forSlot: position.shardSlot, within: wait)
            // A cursor is one node's: another node (a failover) is scanned from its start.
            let nodeCursor = endpoint.description == position.node ? position.nodeCursor : "0"
            let reply: RESPValue
            do {
                let command = RedisCommand("SCAN", arguments: [.string(nodeCursor)] + options)
                reply = try await self.client(for: endpoint).send(command, timeout: max(deadline - clock.now, .milliseconds(1)))
            } catch let error as RedisError where Self.nodeUnreachable(error, command: RedisCommand("SCAN", "0"), shutDown: self.isShutDown) {
                failures += 1
                await self.refreshNow()
                let pause = Self.retryPause(after: failures)
                guard clock.now + pause < deadline else { throw error }
                try await Task.sleep(for: pause)
                continue
            }
            guard let parts = reply.array, parts.count == 2, let next = parts[0].string, let keys = parts[1].array else {
                throw RedisError(code: .unexpectedReply, message: "SCAN answered something other than a cursor and a list")
            }
            let elements = try keys.map { try ByteBuffer(fromRESP: $0) }
            if next != "0" {
                return (ScanCursor(shardSlot: position.shardSlot, node: endpoint.description, nodeCursor: next).text, elements)
            }
            // This primary is done: the next shard by first slot, if any.
            let following = try await self.firstSlots(within: wait).first { $0 > position.shardSlot }
            return (following.map { ScanCursor(shardSlot: $0, node: "", nodeCursor: "0").text } ?? "0", elements)
        }
    }

    /// The first slot of each shard that serves slots, in order.
    private func firstSlots(within wait: Duration) async throws -> [Int] {
        let topology = try await self.currentTopology(within: wait)
        return topology.shards.compactMap { $0.slots.map(\.lowerBound).min() }.sorted()
    }

    /// `RANDOMKEY`: primaries in random order until one has a key; nil when none has.
    func randomKey(_ command: RedisCommand, timeout: Duration?) async throws -> RESPValue {
        let topology = try await self.currentTopology(within: timeout ?? self.configuration.node.pool.leaseTimeout)
        for slot in topology.shards.compactMap({ $0.slots.first?.lowerBound }).shuffled() {
            let reply = try await self.send(command, slot: slot, timeout: timeout)
            if case .bulkString = reply { return reply }
        }
        return .null
    }
}

extension RedisClusterClient {
    /// Runs `script` with `EVALSHA` (`EVALSHA_RO` when `readOnly`) on the node that serves its keys, as
    /// ``RedisCommandExecutor/eval(_:keys:arguments:readOnly:timeout:)`` does on one server. Scripts
    /// are per node: `SCRIPT LOAD` reaches every primary, not their replicas, nor a replica promoted
    /// later. When a node answers `NOSCRIPT`, the source is sent with `EVAL`/`EVAL_RO` (which loads it
    /// there): at once for a read-only script (it cannot have written); for another, only when the
    /// slot's primary confirms with `SCRIPT EXISTS` that it lacks the script (a loaded script may itself
    /// return an error starting with `NOSCRIPT` after it wrote).
    public func eval(
        _ script: RedisScript,
        keys: [RedisKey] = [],
        arguments: [RedisArgument] = [],
        readOnly: Bool = false,
        timeout: Duration? = nil
    ) async throws -> RESPValue {
        let tail: [RedisArgument] = [.integer(Int64(keys.count))] + keys.map(\.argument) + arguments
        let shaCommand = RedisCommand(readOnly ? "EVALSHA_RO" : "EVALSHA", arguments: [.string(script.sha1)] + tail)
        let sourceCommand = RedisCommand(readOnly ? "EVAL_RO" : "EVAL", arguments: [.string(script.source)] + tail)
        let slot = try shaCommand.clusterSlot()
        do {
            return try await self.send(shaCommand, slot: slot, timeout: timeout)
        } catch let error as RedisError where error.serverErrorPrefix == "NOSCRIPT" {
            if !readOnly {
                // The primary of the slot is where a writing script runs: ask it.
                let exists = try await self.send(RedisCommand("SCRIPT", "EXISTS", .string(script.sha1)), slot: slot, timeout: timeout, replicaAllowed: false)
                guard exists.array?.first?.int == 0 else { throw error }
            }
            return try await self.send(sourceCommand, slot: slot, timeout: timeout)
        }
    }
}
