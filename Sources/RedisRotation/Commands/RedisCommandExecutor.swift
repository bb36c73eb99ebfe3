/// Anything that runs commands: a ``RedisConnection`` today, the pooled client later. The typed command
/// helpers (``get(_:)``, ``set(_:to:expiration:condition:)``, ...) are available on every executor.
public protocol RedisCommandExecutor: Sendable {
    /// Sends `command` and returns its reply; an error reply is thrown as ``RedisError``.
    func send(_ command: RedisCommand, timeout: Duration?) async throws -> RESPValue
}

extension RedisConnection: RedisCommandExecutor {}
