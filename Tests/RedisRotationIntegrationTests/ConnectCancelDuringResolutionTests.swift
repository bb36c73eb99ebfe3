import Foundation
import RedisRotation
import RedisRotationTesting
import Testing

/// `connect` to a host name resolves it before any channel exists; a cancellation then found no
/// handlers to close, and the connect went on to a pending TCP connect, ending only at the connect
/// timeout.
@Suite("Connect cancelled during name resolution", .timeLimit(.minutes(3)))
struct ConnectCancelDuringResolutionTests {
    @Test("connects to \"localhost\" cancelled at many moments while the server's backlog is full: each returns at once (CancellationError), none at the connect timeout, none left open")
    func cancelledWhileResolving() async throws {
        let password = makePassword()
        try await withAliceServer(password: password, extraConfiguration: ["tcp-backlog 1"]) { server in
            let admin = try await server.adminConnection()
            let baseline = try await ConnectWaiterReviewTests.connectedClients(admin)
            var configuration = server.connectionConfiguration(username: "alice", password: password)
            configuration.connectTimeout = .seconds(600)
            configuration.handshakeTimeout = .seconds(600)
            let before = try ConnectWaiterReviewTests.establishedConnections(toPort: server.port)
            server.kill(signal: SIGSTOP)
            // Fill the backlog (by address), so that a later SYN waits.
            var fillers: [Task<RedisConnection, any Error>] = []
            for _ in 0..<4 { fillers.append(Task { try await RedisConnection.connect(configuration: configuration) }) }
            let clock = ContinuousClock()
            let end = clock.now + .seconds(10)
            while try ConnectWaiterReviewTests.establishedConnections(toPort: server.port) < before + 1, clock.now < end {
                try await Task.sleep(for: .milliseconds(5))
            }
            var byName = configuration
            byName.host = "localhost"
            var hung = 0
            for round in 0..<40 {
                let connect = Task { try await RedisConnection.connect(configuration: byName) }
                if round % 2 == 0 {
                    for _ in 0..<(round / 2) { await Task.yield() }
                } else {
                    try await Task.sleep(for: .microseconds(50 * round))
                }
                connect.cancel()
                switch await ConnectWaiterReviewTests.outcome(within: .seconds(5), { try await connect.value }) {
                case nil: hung += 1
                case .success(let connection)?:
                    Issue.record("round \(round): a stopped server completed a handshake")
                    await connection.close()
                case .failure(let error)?:
                    #expect(error is CancellationError, "round \(round): \(error)")
                }
            }
            for task in fillers { task.cancel() }
            for task in fillers { _ = await ConnectWaiterReviewTests.outcome(within: .seconds(10), { try await task.value }) }
            server.kill(signal: SIGCONT)
            #expect(hung == 0, "\(hung) of 40 cancelled connects by name did not return within 5 s")
            try await ConnectWaiterReviewTests.expectClients(admin, back: baseline, label: "after the server resumed")
            await admin.close()
        }
    }
}
