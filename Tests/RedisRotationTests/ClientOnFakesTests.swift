import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import RedisRotation

/// `RedisClient` end to end without a server process: its connections run over in-memory channels
/// answered by ``FakeChannelServer``, its decisions on a manual clock. Each test checks what the
/// server received, command by command.
@Suite("Client on fakes", .timeLimit(.minutes(1)))
struct ClientOnFakesTests {
    let v1 = RedisCredentials(username: "u", password: "one", version: "v1")
    let v2 = RedisCredentials(username: "u", password: "two", version: "v2")

    /// Runs `body` with a running client whose credentials are `current`'s, on `server`.
    func withClient(
        _ server: FakeChannelServer,
        current: CurrentCredentials,
        minimumConnections: Int = 1,
        _ body: (RedisClient) async throws -> Void
    ) async throws {
        let client = try RedisClient(
            configuration: RedisClientConfiguration(
                name: "app",
                pool: .init(minimumConnections: minimumConnections, maximumConnections: 1, maximumConnectionAge: nil, healthCheckInterval: nil)
            ),
            credentials: .provider(refreshEvery: .seconds(3600)) { current.value },
            timerLoop: server.loop,
            randomSeed: 1,
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
            connectionFactory: server.factory
        )
        let running = Task { try await client.run() }
        do {
            try await body(client)
        } catch {
            running.cancel()
            _ = await running.result
            throw error
        }
        running.cancel()
        _ = await running.result
    }

    /// Waits (at most 10 s) until `condition` holds.
    func until(_ what: String, _ condition: () -> Bool) async {
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(10)
        while !condition() {
            guard clock.now < deadline else {
                Issue.record("timed out waiting until \(what)")
                return
            }
            try? await Task.sleep(for: .milliseconds(1))
        }
    }

    @Test("a promoted credential re-authenticates the pooled connection in place, behind its commands; the probe is a connection of its own")
    func reauthenticationInPlace() async throws {
        let server = FakeChannelServer(loop: NIOAsyncTestingEventLoop(), users: ["u": ["one"]])
        let current = CurrentCredentials(self.v1)
        try await self.withClient(server, current: current) { client in
            try await client.set("k", to: "a")
            server.setPasswords(["one", "two"], of: "u")
            current.set(self.v2)
            client.reloadCredentials()
            await self.until("the connection is on v2") { client.connectionsByCredentialVersion == ["v2": 1] }
            try await client.set("k", to: "b")
            #expect(
                server.log(1) == [
                    ["HELLO", "2", "AUTH", "u", "one", "SETNAME", "app@v1"],
                    ["SET", "k", "a"],
                    ["HELLO", "2", "AUTH", "u", "two", "SETNAME", "app@v2"],
                    ["SET", "k", "b"],
                ]
            )
            #expect(server.log(2) == [["HELLO", "2", "AUTH", "u", "two", "SETNAME", "app@v2-probe"]])
            #expect(server.connections.map(\.number) == [1, 2])
            #expect(server.value(of: "k") == "b")
        }
    }

    @Test("a handshake that began before a new password was published tries it before failing the waiting commands")
    func candidatePublishedDuringHandshake() async throws {
        let server = FakeChannelServer(loop: NIOAsyncTestingEventLoop(), users: ["u": ["one"]])
        let current = CurrentCredentials(self.v1)
        server.holdNewConnections(true)
        try await self.withClient(server, current: current, minimumConnections: 0) { client in
            let get = Task { try await client.get("k") }
            await self.until("the first handshake is on its way") { server.log(1).count == 1 }
            // The operator swaps the password and publishes the new one while that handshake is in flight.
            server.setPasswords(["two"], of: "u")
            current.set(self.v2)
            client.reloadCredentials()
            await self.until("v2 is pending") { client.pendingCredentialVersion == "v2" }
            server.holdNewConnections(false)
            // Only now does the server answer the first handshake: WRONGPASS for v1.
            try await server.hold(1, false)
            let value = try await get.value
            #expect(value == nil)
            #expect(server.log(1) == [["HELLO", "2", "AUTH", "u", "one", "SETNAME", "app@v1"]])
            let served = server.connections.filter { $0.isActive && $0.name == "app@v2" }.map(\.number)
            #expect(served.count == 1)
            #expect(server.log(served[0]) == [["HELLO", "2", "AUTH", "u", "two", "SETNAME", "app@v2"], ["GET", "k"]])
            // The probe, still held, is let go so the client can stop.
            for connection in server.connections { try await server.hold(connection.number, false) }
        }
    }

    @Test("a MULTI whose task is cancelled before its +OK is discarded before the connection serves again")
    func cancelledMultiIsDiscarded() async throws {
        let server = FakeChannelServer(loop: NIOAsyncTestingEventLoop(), users: ["u": ["one"]])
        let current = CurrentCredentials(self.v1)
        try await self.withClient(server, current: current) { client in
            #expect(try await client.ping() == "PONG")
            try await server.hold(1, true)
            let transaction = Task { try await client.withConnection { try await $0.send(RedisCommand("MULTI")) } }
            await self.until("MULTI reached the server") { server.log(1).last == ["MULTI"] }
            transaction.cancel()
            #expect(await transaction.result.isCancellation)
            try await server.hold(1, false)
            try await client.set("k", to: "v")
            // The SET ran, and not inside a transaction: the restoration came first, in one pipeline.
            #expect(server.value(of: "k") == "v")
            let log = server.log(1)
            #expect(Array(log.prefix(3)) == [["HELLO", "2", "AUTH", "u", "one", "SETNAME", "app@v1"], ["PING"], ["MULTI"]])
            #expect(log.last == ["SET", "k", "v"])
            #expect(log.dropFirst(3).dropLast().contains(["DISCARD"]))
            #expect(server.connections.map(\.number) == [1])
        }
    }
}

extension ClientOnFakesTests {
    @Test("a pipeline whose connection dies half-way: answered commands stand, a read is resent elsewhere, an INCR in flight is outcomeUnknown")
    func pipelineCutHalfWay() async throws {
        let server = FakeChannelServer(loop: NIOAsyncTestingEventLoop(), users: ["u": ["one"]])
        let current = CurrentCredentials(self.v1)
        try await self.withClient(server, current: current) { client in
            #expect(try await client.ping() == "PONG")
            try await server.hold(1, true)
            let pipeline = Task {
                try await client.pipeline { p in
                    p.queue(RedisCommand("SET", "k", "v"))
                    p.queue(RedisCommand("INCR", "n"))
                    p.queue(RedisCommand("GET", "k"))
                }
            }
            await self.until("the pipeline reached the server") { server.log(1).count == 5 }
            try await server.release(1, answering: 1)
            let results = try await pipeline.value
            #expect(results.count == 3)
            #expect(try results.value(at: 0, as: String.self) == "OK")
            #expect(throws: RedisError.self) { try results.value(at: 1, as: Int.self) }
            if case .failure(let error) = results.results[1] { #expect(error.code == .outcomeUnknown) }
            #expect(try results.value(at: 2, as: String.self) == "v")
            // The INCR never ran (the server died before it); only the read went again, on a new connection.
            #expect(server.value(of: "n") == nil)
            #expect(server.log(2).dropFirst() == [["GET", "k"]])
        }
    }
}

extension Result {
    fileprivate var isCancellation: Bool {
        if case .failure(let error) = self { return error is CancellationError }
        return false
    }
}

/// The credentials a test's provider source hands out.
final class CurrentCredentials: Sendable {
    private let credentials: Lock<RedisCredentials>
    init(_ credentials: RedisCredentials) { self.credentials = Lock(credentials) }
    var value: RedisCredentials { self.credentials.withLock { $0 } }
    func set(_ credentials: RedisCredentials) { self.credentials.withLock { $0 = credentials } }
}

