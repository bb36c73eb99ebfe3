import NIOCore

extension RedisCommand {
    /// The cluster slot every key of the command hashes to; `nil` for a command without keys (it may
    /// go to any node).
    ///
    /// Keys come from the pinned server's key specifications (``RedisCommandInfo/keyIndices(in:)``),
    /// movable keys (`EVAL`'s `numkeys`, `XREAD ... STREAMS`, `SORT ... STORE`) included.
    ///
    /// - Throws: ``RedisError/Code/invalidArgument`` when the keys hash to different slots (the server
    ///   would answer `CROSSSLOT`; use hash tags, `{user:42}:a` and `{user:42}:b`), or when the
    ///   arguments do not match the command's specification (the server would refuse it).
    func clusterSlot() throws(RedisError) -> Int? {
        if let sensitiveSlot = self.sensitiveSlot { return try sensitiveSlot.get() }
        return try Self.clusterSlot(name: self.name, arguments: self.routingArguments)
    }

    /// The slot of the keys of command `name` (upper case) with `arguments`.
    static func clusterSlot(name: String, arguments: [RedisArgument]) throws(RedisError) -> Int? {
        let specificationName = RedisCommandIdempotency.specificationName(name, arguments: arguments)
        guard let info = RedisCommandInfo.lookup(specificationName) ?? RedisCommandInfo.lookup(name) else {
            // A command the pinned specification does not know (a module's): no keys known.
            return nil
        }
        guard !info.keySpecs.isEmpty || info.name == "SORT" || info.name == "SORT_RO" || info.name == "MIGRATE" else { return nil }
        // Only what a key specification looks at is turned into text: short arguments (keywords,
        // counts). A long argument can be neither; it stays empty.
        // (A loop, not a closure: Swift 6.3.1's optimizer crashed on the closure at -O.)
        var argv = [name]
        argv.reserveCapacity(arguments.count + 1)
        for argument in arguments {
            if let integer = argument.integerValue {
                argv.append(String(integer))
            } else {
                argv.append(argument.text(maximumLength: 64) ?? "")
            }
        }
        guard let indices = info.keyIndices(in: argv) else {
            throw RedisError(code: .invalidArgument, message: "\(specificationName): the arguments do not match the command's specification, so its keys cannot be found")
        }
        var slot: Int?
        for index in indices where index >= 1 && index <= arguments.count {
            var buffer = ByteBuffer()
            arguments[index - 1].write(to: &buffer)
            let keySlot = RedisClusterSlot.slot(for: buffer.readableBytesView)
            if let slot, slot != keySlot {
                throw RedisError(
                    code: .invalidArgument,
                    message: "\(specificationName): its keys hash to different slots (\(slot) and \(keySlot)); in a cluster they must share one: give them a common hash tag, as {user:42}:a and {user:42}:b"
                )
            }
            slot = keySlot
        }
        return slot
    }
}
