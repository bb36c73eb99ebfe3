import Foundation
import NIOCore
import NIOPosix
import RedisRotation
import RedisRotationTesting
import Testing

/// A hostile review of `connect`'s one wait (``HandshakeStepWaiter``) for the channel and the first
/// handshake step: cancelled at every point, against servers that refuse, never answer, have no HELLO,
/// and on an event loop group that shuts down. Every connect returns a working connection or throws,
/// none hangs, and no connection is left open on the server.
@Suite("Connect waiter review", .timeLimit(.minutes(3)))
struct ConnectWaiterReviewTests {
    /// `operation`'s result, or `nil` when it has not returned within `limit` (it is then cancelled).
    static func outcome<T: Sendable>(
        within limit: Duration,
        _ operation: @escaping @Sendable () async throws -> T
    ) async -> Result<T, any Error>? {
        await ReplyBoxIntegrationReviewTests.outcome(within: limit, cancelling: true, operation)
    }

    static func connectedClients(_ admin: RedisConnection) async throws -> Int {
        let info = try await admin.send(RedisCommand("INFO", "clients"), as: String.self)
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("connected_clients:") {
            return Int(line.dropFirst("connected_clients:".count)) ?? -1
        }
        return -1
    }

    /// Waits (at most 20 seconds) until the server counts `baseline` clients; records an issue otherwise.
    static func expectClients(_ admin: RedisConnection, back baseline: Int, label: String) async throws {
        let clock = ContinuousClock()
        let end = clock.now + .seconds(20)
        var count = try await Self.connectedClients(admin)
        while count != baseline, clock.now < end {
            try await Task.sleep(for: .milliseconds(10))
            count = try await Self.connectedClients(admin)
        }
        if count != baseline {
            let list = try await admin.send(RedisCommand("CLIENT", "LIST"), as: String.self)
            Issue.record("\(label): \(count) clients, not \(baseline): a connection was left open\n\(list)")
        }
    }

    /// What became of one connect: a connection that answers (then closed), or an acceptable error.
    enum Ending: Hashable { case connected, cancelled, redisError(RedisError.Code), hung }

    static func ending(_ result: Result<RedisConnection, any Error>?, label: String) async -> Ending {
        switch result {
        case nil:
            Issue.record("\(label): connect never returned")
            return .hung
        case .success(let connection)?:
            // Returned: it must work, even if its task was cancelled after the handshake.
            let pong = await Self.outcome(within: .seconds(10)) { try await connection.send(RedisCommand("PING"), as: String.self) }
            if case .success("PONG")? = pong {} else { Issue.record("\(label): a returned connection does not answer: \(String(describing: pong))") }
            await connection.close()
            return .connected
        case .failure(let error)?:
            if error is CancellationError { return .cancelled }
            if let error = error as? RedisError { return .redisError(error.code) }
            Issue.record("\(label): connect threw neither CancellationError nor RedisError: \(error)")
            return .hung
        }
    }

    @Test("connects cancelled at every point, against a server that answers: each connects or throws CancellationError; none is left open")
    func cancelledAtEveryPoint() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let admin = try await server.adminConnection()
            let baseline = try await Self.connectedClients(admin)
            let configuration = server.connectionConfiguration(username: "alice", password: password, name: "cw-every")
            var endings: [Ending: Int] = [:]
            for round in 0..<120 {
                let connect = Task { try await RedisConnection.connect(configuration: configuration) }
                // The cancellation lands before the TCP connect, between it and the reply, and as the
                // reply arrives: 0 to ~40 turns of the task scheduler, then a busy spin of varying length.
                for _ in 0..<(round % 40) { await Task.yield() }
                if round >= 40 {
                    let spins = (round - 40) * 500
                    var sink = 0
                    for index in 0..<spins { sink &+= index }
                    #expect(sink >= 0)
                }
                connect.cancel()
                let ending = await Self.ending(await Self.outcome(within: .seconds(20)) { try await connect.value }, label: "round \(round)")
                #expect(ending == .connected || ending == .cancelled, "round \(round): \(ending)")
                endings[ending, default: 0] += 1
            }
            try await Self.expectClients(admin, back: baseline, label: "after cancelled connects")
            #expect(endings[.cancelled, default: 0] > 0, "\(endings)")
            await admin.close()
        }
    }

    @Test("200 concurrent connects, a random half cancelled at random moments: each connects or throws, none hangs, none is left open")
    func manyConcurrentWithRandomCancellation() async throws {
        let password = makePassword()
        try await withAliceServer(password: password, extraConfiguration: ["maxclients 1000"]) { server in
            let admin = try await server.adminConnection()
            let baseline = try await Self.connectedClients(admin)
            var configuration = server.connectionConfiguration(username: "alice", password: password, name: "cw-many")
            configuration.handshakeTimeout = .seconds(30)
            var generator = SystemRandomNumberGenerator()
            for round in 0..<2 {
                var tasks: [Task<RedisConnection, any Error>] = []
                for _ in 0..<200 {
                    tasks.append(Task { try await RedisConnection.connect(configuration: configuration) })
                }
                for (index, task) in tasks.enumerated() where Bool.random(using: &generator) {
                    if index % 3 == 0 { await Task.yield() }
                    task.cancel()
                }
                var endings: [Ending: Int] = [:]
                for (index, task) in tasks.enumerated() {
                    let ending = await Self.ending(await Self.outcome(within: .seconds(40)) { try await task.value }, label: "round \(round) task \(index)")
                    #expect(ending == .connected || ending == .cancelled, "round \(round) task \(index): \(ending)")
                    endings[ending, default: 0] += 1
                }
                #expect(endings[.connected, default: 0] > 0, "\(endings)")
                try await Self.expectClients(admin, back: baseline, label: "round \(round)")
            }
            await admin.close()
        }
    }

    @Test("connects cancelled while a stopped server holds them in its backlog leave nothing open once it resumes")
    func cancelledAgainstStoppedServer() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let admin = try await server.adminConnection()
            let baseline = try await Self.connectedClients(admin)
            var configuration = server.connectionConfiguration(username: "alice", password: password, name: "cw-stopped")
            configuration.handshakeTimeout = .seconds(600)
            server.kill(signal: SIGSTOP)
            var tasks: [Task<RedisConnection, any Error>] = []
            for index in 0..<20 {
                tasks.append(Task { try await RedisConnection.connect(configuration: configuration) })
                for _ in 0..<index { await Task.yield() }
            }
            // Let some of them reach the server's backlog, then cancel all of them.
            try await Task.sleep(for: .milliseconds(50))
            for task in tasks { task.cancel() }
            for (index, task) in tasks.enumerated() {
                let ending = await Self.ending(await Self.outcome(within: .seconds(20)) { try await task.value }, label: "task \(index)")
                #expect(ending == .cancelled, "task \(index): \(ending)")
            }
            server.kill(signal: SIGCONT)
            try await Self.expectClients(admin, back: baseline, label: "after the server resumed")
            await admin.close()
        }
    }

    @Test("a listener that accepts the connection and never answers: the handshake times out, plain and over TLS")
    func silentListener() async throws {
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { $0.eventLoop.makeSucceededVoidFuture() }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        defer { listener.close(promise: nil) }
        let port = try #require(listener.localAddress?.port)
        var plain = RedisConnectionConfiguration(host: "127.0.0.1", port: port)
        plain.handshakeTimeout = .milliseconds(300)
        let fixture = try TLSFixture()
        var tls = plain
        tls.tls = .init(context: try fixture.context(), serverName: "localhost")
        for (configuration, expected) in [(plain, RedisError.Code.handshakeTimeout), (tls, .tlsHandshakeTimeout)] {
            let result = await Self.outcome(within: .seconds(20)) { try await RedisConnection.connect(configuration: configuration) }
            switch result {
            case nil: Issue.record("a connect to a silent listener hangs past its handshake timeout")
            case .success?: Issue.record("a silent listener completed a handshake")
            case .failure(let error)?: #expect((error as? RedisError)?.code == expected, "\(error)")
            }
        }
    }

    @Test("a server without HELLO: the fallback connects with name and database; a wrong password is authenticationFailed; cancelled connects leave nothing open")
    func serverWithoutHello() async throws {
        let password = makePassword()
        try await withAliceServer(password: password, extraConfiguration: ["rename-command HELLO \"\""]) { server in
            let admin = try await server.adminConnection()
            let baseline = try await Self.connectedClients(admin)
            var configuration = server.connectionConfiguration(username: "alice", password: password, name: "cw-nohello")
            configuration.database = 3
            let connection = try await RedisConnection.connect(configuration: configuration)
            #expect(connection.serverVersion == nil)
            #expect(try await connection.clientGetName() == "cw-nohello")
            let info = try await connection.send(RedisCommand("CLIENT", "INFO"), as: String.self)
            #expect(info.contains("db=3"), "\(info)")
            await connection.close()

            let wrong = server.connectionConfiguration(username: "alice", password: makePassword())
            let error = await #expect(throws: RedisError.self) { try await RedisConnection.connect(configuration: wrong) }
            #expect(error?.code == .authenticationFailed)

            for round in 0..<60 {
                let connect = Task { try await RedisConnection.connect(configuration: configuration) }
                for _ in 0..<(round % 30) { await Task.yield() }
                connect.cancel()
                let ending = await Self.ending(await Self.outcome(within: .seconds(20)) { try await connect.value }, label: "round \(round)")
                #expect(ending == .connected || ending == .cancelled, "round \(round): \(ending)")
            }
            try await Self.expectClients(admin, back: baseline, label: "after the fallback connects")
            await admin.close()
        }
    }

    /// How many TCP connections of this machine to `port` on 127.0.0.1 are established (client ends
    /// included), from `/proc/net/tcp`.
    static func establishedConnections(toPort port: Int) throws -> Int {
        // Read to the end: a /proc file has no size, and a one-shot read can stop at the first page.
        let file = try #require(FileHandle(forReadingAtPath: "/proc/net/tcp"))
        defer { try? file.close() }
        let table = String(decoding: try file.readToEnd() ?? Data(), as: UTF8.self)
        let remote = String(format: "0100007F:%04X", port)
        return table.split(separator: "\n").dropFirst().filter { line in
            let fields = line.split(separator: " ")
            return fields.count > 3 && fields[2] == remote && fields[3] == "01"
        }.count
    }

    // (A connect on a group that is already shut down is not tested: NIO drops the registration it
    // schedules on the dead loop, and its debug build then traps on the leaked promise, in NIO.)
    @Test("an event loop group shut down while connects wait for a stopped server's handshake: each throws, none hangs, none is left open")
    func groupShutDownWhileWaitingForHandshake() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let admin = try await server.adminConnection()
            let baseline = try await Self.connectedClients(admin)
            var configuration = server.connectionConfiguration(username: "alice", password: password, name: "cw-shutdown")
            configuration.handshakeTimeout = .seconds(600)
            for round in 0..<3 {
                let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
                let before = try Self.establishedConnections(toPort: server.port)
                server.kill(signal: SIGSTOP)
                var tasks: [Task<RedisConnection, any Error>] = []
                for _ in 0..<10 {
                    tasks.append(Task { try await RedisConnection.connect(configuration: configuration, eventLoopGroup: group) })
                }
                // Every connect's TCP connection is up (the stopped server's backlog completes it), so the
                // shutdown lands while they wait for the handshake's replies.
                let clock = ContinuousClock()
                let end = clock.now + .seconds(10)
                while try Self.establishedConnections(toPort: server.port) < before + 10, clock.now < end {
                    try await Task.sleep(for: .milliseconds(5))
                }
                #expect(try Self.establishedConnections(toPort: server.port) >= before + 10)
                for _ in 0..<(round * 5) { await Task.yield() }
                try await group.shutdownGracefully()
                for (index, task) in tasks.enumerated() {
                    let result = await Self.outcome(within: .seconds(20)) { try await task.value }
                    switch result {
                    case nil: Issue.record("round \(round) task \(index): a connect hangs after its event loop group shut down")
                    case .success(let connection)?:
                        Issue.record("round \(round) task \(index): a stopped server completed a handshake")
                        await connection.close()
                    case .failure(let error)?: #expect((error as? RedisError)?.code == .connectionClosed, "\(error)")
                    }
                }
                server.kill(signal: SIGCONT)
                try await Self.expectClients(admin, back: baseline, label: "round \(round)")
            }
            await admin.close()
        }
    }

    @Test("after the connection's event loop group shut down, close() and waitUntilClosed() return")
    func closeAfterGroupShutDown() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let admin = try await server.adminConnection()
            let baseline = try await Self.connectedClients(admin)
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let configuration = server.connectionConfiguration(username: "alice", password: password)
            let connection = try await RedisConnection.connect(configuration: configuration, eventLoopGroup: group)
            try await group.shutdownGracefully()
            let closed = await Self.outcome(within: .seconds(10)) { await connection.close() }
            #expect(closed != nil, "close() hangs after the event loop group shut down")
            let waited = await Self.outcome(within: .seconds(10)) { await connection.waitUntilClosed() }
            #expect(waited != nil, "waitUntilClosed() hangs after the event loop group shut down")
            #expect(!connection.isActive)
            try await Self.expectClients(admin, back: baseline, label: "after the shutdown")
            await admin.close()
        }
    }

    @Test("a connect cancelled while its TCP connect is still pending (a stopped server with a full backlog) returns at once, not at the connect timeout")
    func cancelledDuringTCPConnect() async throws {
        let password = makePassword()
        try await withAliceServer(password: password, extraConfiguration: ["tcp-backlog 1"]) { server in
            let admin = try await server.adminConnection()
            let baseline = try await Self.connectedClients(admin)
            var configuration = server.connectionConfiguration(username: "alice", password: password)
            configuration.connectTimeout = .seconds(600)
            configuration.handshakeTimeout = .seconds(600)
            let before = try Self.establishedConnections(toPort: server.port)
            server.kill(signal: SIGSTOP)
            // The first connects fill the backlog; the later ones wait for the server's SYN-ACK.
            var tasks: [Task<RedisConnection, any Error>] = []
            for _ in 0..<6 {
                tasks.append(Task { try await RedisConnection.connect(configuration: configuration) })
            }
            let clock = ContinuousClock()
            let end = clock.now + .seconds(10)
            while try Self.establishedConnections(toPort: server.port) < before + 1, clock.now < end {
                try await Task.sleep(for: .milliseconds(5))
            }
            try await Task.sleep(for: .milliseconds(100))
            let pending = try 6 - (Self.establishedConnections(toPort: server.port) - before)
            for task in tasks { task.cancel() }
            var hung = 0
            for task in tasks {
                switch await Self.outcome(within: .seconds(10), { try await task.value }) {
                case nil: hung += 1
                case .success(let connection)?:
                    Issue.record("a stopped server completed a handshake")
                    await connection.close()
                case .failure(let error)?:
                    #expect(error is CancellationError, "\(error)")
                }
            }
            server.kill(signal: SIGCONT)
            #expect(pending > 0, "no connect was left waiting for the server's SYN-ACK")
            #expect(hung == 0, "\(hung) cancelled connects (\(pending) with their TCP connect pending) did not return within 10 s")
            try await Self.expectClients(admin, back: baseline, label: "after the server resumed")
            await admin.close()
        }
    }

    @Test("over TLS: connects cancelled at every point leave nothing open; every connection that returns carries TLS info; a connect after one that answered resumes")
    func tlsCancelledAndResumed() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(keepPlainTextPort: true)) { server in
            let admin = try await server.adminConnection()
            let baseline = try await Self.connectedClients(admin)
            let context = try fixture.context()
            let configuration = fixture.aliceConfiguration(server, context: context)
            let first = try await RedisConnection.connect(configuration: configuration)
            #expect(first.tlsInfo?.sessionReused == false)
            #expect(first.tlsInfo?.peerCertificate != nil)
            await first.close()
            for round in 0..<60 {
                let connect = Task { try await RedisConnection.connect(configuration: configuration) }
                for _ in 0..<(round % 30) { await Task.yield() }
                if round % 2 == 0 { connect.cancel() }
                let result = await Self.outcome(within: .seconds(20)) { try await connect.value }
                if case .success(let connection)? = result {
                    #expect(connection.tlsInfo != nil, "round \(round): a TLS connection without TLS info")
                }
                let ending = await Self.ending(result, label: "round \(round)")
                #expect(ending == .connected || ending == .cancelled, "round \(round): \(ending)")
                if round % 2 == 1 { #expect(ending == .connected, "round \(round)") }
            }
            // A cancelled connect may have taken a session (each is good for one resumption) without
            // living to receive new ones; a connection that answered a command has received its tickets,
            // so the next connect resumes.
            let refill = try await RedisConnection.connect(configuration: configuration)
            _ = try await refill.send(RedisCommand("PING"))
            await refill.close()
            let resumed = try await RedisConnection.connect(configuration: configuration)
            #expect(resumed.tlsInfo?.sessionReused == true)
            #expect(resumed.tlsInfo?.peerCertificate != nil)
            await resumed.close()
            try await Self.expectClients(admin, back: baseline, label: "after TLS connects")
            await admin.close()
        }
    }
}
