public import NIOCore

/// When a key set with ``RedisCommandExecutor/set(_:to:expiration:condition:)`` expires.
public struct RedisExpiration: Sendable, Hashable {
    let argument: [RedisArgument]

    /// After this many seconds (`EX`).
    public static func seconds(_ seconds: Int) -> RedisExpiration {
        precondition(seconds > 0, "an expiration must be positive")
        return RedisExpiration(argument: ["EX", .integer(seconds)])
    }

    /// After this many milliseconds (`PX`).
    public static func milliseconds(_ milliseconds: Int) -> RedisExpiration {
        precondition(milliseconds > 0, "an expiration must be positive")
        return RedisExpiration(argument: ["PX", .integer(milliseconds)])
    }
}

/// Whether ``RedisCommandExecutor/set(_:to:expiration:condition:)`` writes depending on the key's existence.
public struct RedisSetCondition: Sendable, Hashable {
    private enum Base: Hashable, Sendable {
        case always, ifNotExists, ifExists
    }

    private let base: Base

    /// Always write.
    public static let always = RedisSetCondition(base: .always)
    /// Write only when the key does not exist (`NX`).
    public static let ifNotExists = RedisSetCondition(base: .ifNotExists)
    /// Write only when the key exists (`XX`).
    public static let ifExists = RedisSetCondition(base: .ifExists)

    var argument: RedisArgument? {
        switch self.base {
        case .always: return nil
        case .ifNotExists: return "NX"
        case .ifExists: return "XX"
        }
    }
}

/// The time to live of a key, as `TTL` reports it.
public enum RedisTimeToLive: Sendable, Hashable {
    /// The key does not exist.
    case keyDoesNotExist
    /// The key exists and never expires.
    case noExpiration
    /// The key expires after this many seconds.
    case seconds(Int)
}

extension RedisCommandExecutor {
    /// Sends `command` with the configured deadline.
    @discardableResult
    public func send(_ command: RedisCommand) async throws -> RESPValue {
        try await self.send(command, timeout: nil)
    }

    /// Sends `command` and converts the reply.
    public func send<Value: RESPValueDecodable>(_ command: RedisCommand, as type: Value.Type) async throws -> Value {
        try Value(fromRESP: try await self.send(command, timeout: nil))
    }

    /// `PING`: returns `PONG`, or `message` echoed.
    @discardableResult
    public func ping(_ message: String? = nil) async throws -> String {
        let command = message.map { RedisCommand("PING", .string($0)) } ?? RedisCommand("PING")
        return try await self.send(command, as: String.self)
    }

    /// `GET`: the value of `key`, or `nil` when it does not exist.
    public func get(_ key: RedisKey) async throws -> ByteBuffer? {
        try await self.send(RedisCommand("GET", key.argument), as: ByteBuffer?.self)
    }

    /// `GET`, converted: `get("name", as: String.self)`.
    public func get<Value: RESPValueDecodable>(_ key: RedisKey, as type: Value.Type) async throws -> Value? {
        try await self.send(RedisCommand("GET", key.argument), as: Value?.self)
    }

    /// `SET key value [EX s | PX ms] [NX | XX]`. Returns whether the value was written (`NX`/`XX` can
    /// decline).
    @discardableResult
    public func set(
        _ key: RedisKey,
        to value: RedisArgument,
        expiration: RedisExpiration? = nil,
        condition: RedisSetCondition = .always
    ) async throws -> Bool {
        var arguments = [key.argument, value]
        if let expiration { arguments += expiration.argument }
        if let argument = condition.argument { arguments.append(argument) }
        let reply = try await self.send(RedisCommand("SET", arguments: arguments), timeout: nil)
        return !reply.isNull
    }

    /// `DEL`: deletes the keys; returns how many existed.
    @discardableResult
    public func del(_ keys: RedisKey...) async throws -> Int {
        try await self.del(keys)
    }

    /// `DEL`: deletes the keys; returns how many existed.
    @discardableResult
    public func del(_ keys: [RedisKey]) async throws -> Int {
        try await self.send(RedisCommand("DEL", arguments: keys.map(\.argument)), as: Int.self)
    }

    /// `EXISTS`: how many of the keys exist (a key named twice counts twice).
    public func exists(_ keys: RedisKey...) async throws -> Int {
        try await self.send(RedisCommand("EXISTS", arguments: keys.map(\.argument)), as: Int.self)
    }

    /// `INCR`: adds one to the integer at `key` (0 if missing) and returns the result.
    @discardableResult
    public func incr(_ key: RedisKey) async throws -> Int {
        try await self.send(RedisCommand("INCR", key.argument), as: Int.self)
    }

    /// `INCRBY`: adds `amount` to the integer at `key` (0 if missing) and returns the result.
    @discardableResult
    public func incrBy(_ key: RedisKey, _ amount: Int) async throws -> Int {
        try await self.send(RedisCommand("INCRBY", key.argument, .integer(amount)), as: Int.self)
    }

    /// `TTL`: the time to live of `key`.
    public func ttl(_ key: RedisKey) async throws -> RedisTimeToLive {
        let seconds = try await self.send(RedisCommand("TTL", key.argument), as: Int.self)
        switch seconds {
        case -2: return .keyDoesNotExist
        case -1: return .noExpiration
        default: return .seconds(seconds)
        }
    }

    /// `MGET`: the values of `keys`, `nil` where a key does not exist.
    public func mget(_ keys: [RedisKey]) async throws -> [ByteBuffer?] {
        try await self.send(RedisCommand("MGET", arguments: keys.map(\.argument)), as: [ByteBuffer?].self)
    }

    /// `MSET`: sets every key to its value in one atomic step.
    public func mset(_ pairs: [(key: RedisKey, value: RedisArgument)]) async throws {
        precondition(!pairs.isEmpty, "MSET needs at least one key")
        _ = try await self.send(RedisCommand("MSET", arguments: pairs.flatMap { [$0.key.argument, $0.value] }), timeout: nil)
    }

    /// `HSET`: sets fields of the hash at `key`; returns how many fields were added (not updated).
    @discardableResult
    public func hset(_ key: RedisKey, fields: [(field: String, value: RedisArgument)]) async throws -> Int {
        precondition(!fields.isEmpty, "HSET needs at least one field")
        let arguments = [key.argument] + fields.flatMap { [RedisArgument.string($0.field), $0.value] }
        return try await self.send(RedisCommand("HSET", arguments: arguments), as: Int.self)
    }

    /// `HSET` of one field; returns whether the field was added (not updated).
    @discardableResult
    public func hset(_ key: RedisKey, field: String, to value: RedisArgument) async throws -> Bool {
        try await self.hset(key, fields: [(field, value)]) == 1
    }

    /// `HGET`: the value of `field` in the hash at `key`, or `nil`.
    public func hget(_ key: RedisKey, field: String) async throws -> ByteBuffer? {
        try await self.send(RedisCommand("HGET", key.argument, .string(field)), as: ByteBuffer?.self)
    }

    /// `HGETALL`: every field and value of the hash at `key` (empty when it does not exist).
    public func hgetall(_ key: RedisKey) async throws -> [String: ByteBuffer] {
        let flat = try await self.send(RedisCommand("HGETALL", key.argument), as: [ByteBuffer].self)
        guard flat.count % 2 == 0 else {
            throw RedisError(code: .unexpectedReply, message: "HGETALL returned an odd number of elements")
        }
        var result: [String: ByteBuffer] = [:]
        result.reserveCapacity(flat.count / 2)
        var index = 0
        while index < flat.count {
            result[String(buffer: flat[index])] = flat[index + 1]
            index += 2
        }
        return result
    }

    /// `LPUSH`: prepends the values (the last one ends up first); returns the list's new length.
    @discardableResult
    public func lpush(_ key: RedisKey, _ values: [RedisArgument]) async throws -> Int {
        precondition(!values.isEmpty, "LPUSH needs at least one value")
        return try await self.send(RedisCommand("LPUSH", arguments: [key.argument] + values), as: Int.self)
    }

    /// `RPOP`: removes and returns the last element of the list, or `nil` when it is empty.
    public func rpop(_ key: RedisKey) async throws -> ByteBuffer? {
        try await self.send(RedisCommand("RPOP", key.argument), as: ByteBuffer?.self)
    }

    /// `LRANGE`: the elements from `start` to `stop`, both inclusive; negative indexes count from the end.
    public func lrange(_ key: RedisKey, from start: Int, to stop: Int) async throws -> [ByteBuffer] {
        try await self.send(RedisCommand("LRANGE", key.argument, .integer(start), .integer(stop)), as: [ByteBuffer].self)
    }

    /// `CLIENT GETNAME`: this connection's name, or `nil` when it has none.
    public func clientGetName() async throws -> String? {
        try await self.send(RedisCommand("CLIENT", "GETNAME"), as: String?.self)
    }
}

extension RedisConnection {
    /// `CLIENT SETNAME`: names this connection on the server. Only on a connection of your own (or one
    /// lent by ``RedisClient/withConnection(_:)``, which restores the pool's name afterwards): the pooled
    /// client names its connections with their credential version.
    public func clientSetName(_ name: String) async throws {
        _ = try await self.send(RedisCommand("CLIENT", "SETNAME", .string(name)), timeout: nil)
    }
}
