import NIOCore

/// A command with its reply's type: the generated ``RedisCommands`` values (`RedisCommands.HINCRBY`,
/// `RedisCommands.CLIENT.LIST`, ...) and your own.
///
/// Send one with ``RedisCommandExecutor/execute(_:timeout:)``, or queue it in a ``RedisPipeline`` or a
/// ``RedisTransaction`` with ``RedisCommandQueue/queue(_:)``; every generated command also has a method
/// on both (`client.hincrby("h", field: "visits", increment: 1)`).
public protocol RedisTypedCommand: Sendable {
    /// What the reply converts to; `RESPValue` where its shape depends on the arguments.
    associatedtype Response: RESPValueDecodable & Sendable
    /// The command's name as the specification spells it, upper case (`CLIENT SETNAME`).
    static var name: String { get }
    /// The command and its arguments, encoded.
    var command: RedisCommand { get }
}

extension RedisTypedCommand {
    /// What the pinned server's specification says about the command: flags, key positions, ACL
    /// categories, summary. `nil` for a command of your own that the specification does not know.
    public static var info: RedisCommandInfo? {
        let parts = Self.name.split(separator: " ", maxSplits: 1).map(String.init)
        return RedisCommandInfo.lookup(parts[0], subcommand: parts.count > 1 ? parts[1] : nil)
    }
}

extension RedisCommandExecutor {
    /// Sends `command` and converts its reply to the command's ``RedisTypedCommand/Response``.
    ///
    /// - Parameters:
    ///   - command: The command value, as `RedisCommands.HINCRBY(key: "h", field: "f", increment: 1)`.
    ///   - timeout: How long to wait for the reply; `nil` uses the configured command timeout.
    @discardableResult
    ///
    /// Inside a `MULTI` opened on a connection by hand, the server answers each command `QUEUED`, not
    /// with its reply, so a typed command (other than `EXEC` and `DISCARD`) is refused there before it is
    /// sent: queue it in a ``RedisTransaction`` instead, or send it raw and read its result from `EXEC`.
    public func execute<Command: RedisTypedCommand>(_ command: Command, timeout: Duration? = nil) async throws -> Command.Response {
        if let connection = self as? RedisConnection, connection.isInTransaction, Command.name != "EXEC", Command.name != "DISCARD" {
            throw RedisError(
                code: .invalidArgument,
                message: "\(Command.name) inside MULTI would be answered QUEUED, not with its reply: queue it in a RedisTransaction, or send it raw and read its result from EXEC; nothing was sent"
            )
        }
        return try Command.Response(fromRESP: try await self.send(command.command, timeout: timeout))
    }
}

/// The result of a command queued in a ``RedisPipeline`` or a ``RedisTransaction``: its place in the
/// batch and its reply's type. Read it from the batch's ``RedisCommandResults`` with
/// ``RedisCommandResults/subscript(_:)``.
public struct RedisQueued<Response: RESPValueDecodable & Sendable>: Sendable, Hashable {
    /// The index of the command in its batch.
    public let index: Int

    init(index: Int) {
        self.index = index
    }
}

/// Collects commands to send together: ``RedisPipeline`` and ``RedisTransaction``. Every generated
/// command has a method here that queues it and returns a typed handle:
///
/// ```swift
/// var tx = RedisTransaction()
/// let visits = tx.incr("visits")
/// tx.expire("visits", seconds: 60)
/// let results = try await client.transaction(tx)
/// let count = try results[visits]  // Int
/// ```
public protocol RedisCommandQueue {
    /// Queues a command; its result is at the index this returns.
    @discardableResult
    mutating func queue(_ command: RedisCommand) -> Int
}

extension RedisCommandQueue {
    /// Queues a typed command; its result is read with the handle this returns.
    @discardableResult
    public mutating func queue<Command: RedisTypedCommand>(_ command: Command) -> RedisQueued<Command.Response> {
        RedisQueued(index: self.queue(command.command))
    }
}

extension RedisPipeline: RedisCommandQueue {}
extension RedisTransaction: RedisCommandQueue {}

extension RedisCommandResults {
    /// The typed result of the command `handle` names; throws its error reply (or the error that kept it
    /// from running).
    public subscript<Response>(_ handle: RedisQueued<Response>) -> Response {
        get throws {
            guard self.results.indices.contains(handle.index) else {
                throw RedisError(code: .invalidArgument, message: "the handle is for command \(handle.index) of another batch; this one has \(self.results.count)")
            }
            return try Response(fromRESP: self.results[handle.index].get())
        }
    }
}

extension Dictionary: RESPValueDecodable where Key == String, Value: RESPValueDecodable {
    /// A reply of alternating names and values (`HGETALL`, `CONFIG GET`), keyed by name; a name given
    /// twice keeps its last value.
    public init(fromRESP value: RESPValue) throws(RedisError) {
        guard case .array(let elements) = value else { throw unexpectedReply(value, expected: "an array of names and values") }
        guard elements.count % 2 == 0 else { throw unexpectedReply(value, expected: "an even number of elements") }
        var result: [String: Value] = [:]
        result.reserveCapacity(elements.count / 2)
        var index = 0
        while index < elements.count {
            result[try String(fromRESP: elements[index])] = try Value(fromRESP: elements[index + 1])
            index += 2
        }
        self = result
    }
}
