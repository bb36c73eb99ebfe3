import Foundation
import RedisRotation
import RedisRotationTesting
import Synchronization
import Testing

/// Runs `client.run()` for the duration of `body`, then shuts the client down.
func withRunningClient<Result: Sendable>(
    _ client: RedisClient,
    _ body: @Sendable (RedisClient) async throws -> Result
) async throws -> Result {
    try await withThrowingTaskGroup(of: Result?.self) { group in
        group.addTask {
            try await client.run()
            return nil
        }
        let result = try await body(client)
        group.cancelAll()
        while try await group.next() != nil {}
        return result
    }
}

/// Polls `condition` every 10 ms for at most `timeout`; records an issue naming `what` if it never holds.
@discardableResult
func eventually(_ what: String, timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    Issue.record("timed out waiting until \(what)")
    return false
}

/// Writes `contents` to `path` the way secret managers do: a temporary file renamed over the old one.
func writeAtomically(_ contents: String, to path: String) throws {
    let temporary = path + ".tmp-\(UUID().uuidString.prefix(6))"
    try contents.write(toFile: temporary, atomically: false, encoding: .utf8)
    // As a password file should be: `rotate password` refuses one readable by others.
    guard chmod(temporary, 0o640) == 0, rename(temporary, path) == 0 else { throw POSIXError(.EIO) }
}

/// Tells traffic loops to stop, and counts the commands they completed so far.
final class StopFlag: Sendable {
    private let value = Atomic<Bool>(false)
    private let completed = Atomic<Int>(0)
    func stop() { self.value.store(true, ordering: .relaxed) }
    var isStopped: Bool { self.value.load(ordering: .relaxed) }
    func recordSuccess() { self.completed.add(1, ordering: .relaxed) }
    /// Commands that succeeded so far, across all loops.
    var successes: Int { self.completed.load(ordering: .relaxed) }

    /// Waits until `count` more commands succeed (traffic flows), at most 30 seconds.
    func waitForProgress(_ count: Int, _ what: String) async {
        let start = self.successes
        await eventually("\(count) commands succeeded \(what)", timeout: .seconds(30)) { self.successes >= start + count }
    }
}

/// What a traffic run saw.
struct TrafficReport: Sendable, CustomStringConvertible {
    var succeeded = 0
    /// Errors of commands that are idempotent (GET, SET marked idempotent): must be zero.
    var failedIdempotent: [String] = []
    /// INCRs whose connection died in flight: they may or may not have executed.
    var outcomeUnknown = 0
    /// Any other failure of a non-idempotent command: must be zero.
    var failedOther: [String] = []
    /// INCRs acknowledged, to check the counter against.
    var incrementsAcknowledged = 0

    var description: String {
        "ok=\(self.succeeded) failedIdempotent=\(self.failedIdempotent.count) outcomeUnknown=\(self.outcomeUnknown) failedOther=\(self.failedOther.count) \(Array(self.failedIdempotent.prefix(3))) \(Array(self.failedOther.prefix(3)))"
    }
}

/// `tasks` concurrent loops of GET / SET (marked idempotent) / INCR until `stop` is set (at most
/// `maximumDuration`, at most 1,000,000 commands per task).
func runTraffic(
    client: RedisClient,
    tasks: Int,
    prefix: String,
    stop: StopFlag,
    maximumDuration: Duration = .seconds(60)
) async -> TrafficReport {
    let clock = ContinuousClock()
    let deadline = clock.now + maximumDuration
    return await withTaskGroup(of: TrafficReport.self) { group in
        for task in 0..<tasks {
            group.addTask {
                var report = TrafficReport()
                var index = 0
                while !stop.isStopped && clock.now < deadline && index < 1_000_000 {
                    index += 1
                    let key = RedisKey("\(prefix):\(task):\(index % 50)")
                    do {
                        switch index % 3 {
                        case 0:
                            _ = try await client.send(RedisCommand("SET", .key(key), .integer(index)).idempotent())
                        case 1:
                            _ = try await client.get(key)
                        default:
                            _ = try await client.incr("\(prefix):counter")
                            report.incrementsAcknowledged += 1
                        }
                        report.succeeded += 1
                        stop.recordSuccess()
                    } catch let error as RedisError where error.code == .outcomeUnknown && index % 3 == 2 {
                        report.outcomeUnknown += 1
                    } catch {
                        if index % 3 == 2 { report.failedOther.append("\(error)") } else { report.failedIdempotent.append("\(error)") }
                    }
                }
                return report
            }
        }
        var total = TrafficReport()
        for await report in group {
            total.succeeded += report.succeeded
            total.failedIdempotent += report.failedIdempotent
            total.outcomeUnknown += report.outcomeUnknown
            total.failedOther += report.failedOther
            total.incrementsAcknowledged += report.incrementsAcknowledged
        }
        return total
    }
}

extension RedisServerProcess {
    /// `CLIENT LIST` entries of `user`, as dictionaries of their fields.
    func clients(of user: String) async throws -> [[String: String]] {
        let admin = try await self.adminConnection()
        let list = try await admin.send(RedisCommand("CLIENT", "LIST"), as: String.self)
        await admin.close()
        return list.split(whereSeparator: \.isNewline).map { line in
            Dictionary(
                line.split(separator: " ").compactMap { field -> (String, String)? in
                    guard let equals = field.firstIndex(of: "=") else { return nil }
                    return (String(field[..<equals]), String(field[field.index(after: equals)...]))
                },
                uniquingKeysWith: { first, _ in first }
            )
        }.filter { $0["user"] == user }
    }

    /// Runs an administrator command.
    @discardableResult
    func admin(_ name: String, _ arguments: RedisArgument...) async throws -> RESPValue {
        let admin = try await self.adminConnection()
        defer { Task { await admin.close() } }
        let reply = try await admin.send(RedisCommand(name, arguments: arguments))
        await admin.close()
        return reply
    }
}

/// A server with `alice` and a running client whose pool holds one connection at most (unless told
/// otherwise), so that the next lease certainly gets the connection the previous one left behind.
func withOneConnectionClient(
    name: String = "test",
    minimumConnections: Int = 1,
    maximumConnections: Int = 1,
    _ body: @Sendable (RedisServerProcess, RedisClient) async throws -> Void
) async throws {
    let password = makePassword()
    try await withAliceServer(password: password) { server in
        let client = try RedisClient(
            configuration: RedisClientConfiguration(
                host: server.host,
                port: server.port,
                name: name,
                pool: .init(
                    minimumConnections: minimumConnections,
                    maximumConnections: maximumConnections,
                    maximumConnectionAge: nil,
                    leaseTimeout: .seconds(10)
                )
            ),
            credentials: .fixed(RedisCredentials(username: "alice", password: password, version: "v1"))
        )
        try await withRunningClient(client) { client in try await body(server, client) }
    }
}
