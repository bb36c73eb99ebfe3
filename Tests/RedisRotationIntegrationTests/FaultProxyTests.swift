import Foundation
import NIOCore
import NIOPosix
import RedisRotation
import RedisRotationTesting
import Synchronization
import Testing

/// What went wrong, from many tasks.
final class Problems: Sendable {
    private let list = Mutex<[String]>([])
    /// Commands sent and not yet answered.
    let inFlight = Atomic<Int>(0)
    func record(_ problem: String) { self.list.withLock { $0.append(problem) } }
    var all: [String] { self.list.withLock { $0 } }
}

/// The fault proxy itself: the faults the other suites inject must be the only faults, so a byte stream
/// through it stays a byte stream (in order, nothing stranded) and nothing outlives `close()`.
@Suite("Fault proxy", .timeLimit(.minutes(2)))
struct FaultProxyTests {
    // RedisFaultProxy.latency schedules each chunk `delay` after it arrived; a later mode (forward, or a
    // shorter latency) sends later chunks at once, ahead of the delayed ones. TCP never reorders a byte
    // stream: here the second command overtakes the first, and the connection hands each caller the
    // other's reply. Tests that lift a latency while commands are pipelined see corruption that is the
    // proxy's, not the client's.
    @Test("the fault proxy keeps a connection's bytes in order when a latency ends")
    func proxyKeepsOrderWhenLatencyEnds() async throws {
        try await withAliceServer(password: makePassword()) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            var configuration = server.adminConnectionConfiguration()
            configuration.port = proxy.port
            configuration.commandTimeout = .seconds(10)
            let connection = try await RedisConnection.connect(configuration: configuration)
            proxy.setMode(.latency(.seconds(2)))
            let started = StopFlag()
            let first = Task {
                started.recordSuccess()
                return try await connection.send(RedisCommand("ECHO", "first")).string
            }
            await eventually("the first ECHO is on its way") { started.successes == 1 }
            // Ample time for the first ECHO to reach the proxy, far less than its delay there.
            try await Task.sleep(for: .milliseconds(500))
            proxy.setMode(.forward)
            let second = try await connection.send(RedisCommand("ECHO", "second")).string
            #expect(second == "second")
            #expect(try await first.value == "first")
            await connection.close()
            await proxy.close()
        }
    }

    // setMode(.forward) flips the mode under the proxy's lock, then drains each pair's held bytes from
    // the caller's thread (writes that hop onto the event loop later). A chunk the event loop reads in
    // between sees `forward` and is written at once, ahead of everything held; a chunk whose reader saw
    // `paused` just before the flip is appended to `held` after the drain and stays there until the next
    // mode change. Pipelined traffic through pause/resume then gets replies out of order or never.
    // (The same traffic with setMode(.forward) in place of .paused gets every reply right.)
    @Test("the fault proxy delivers held bytes before later ones when a pause ends")
    func proxyKeepsOrderWhenPauseEnds() async throws {
        try await withAliceServer(password: makePassword()) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            var configuration = server.adminConnectionConfiguration()
            configuration.port = proxy.port
            configuration.commandTimeout = .seconds(5)
            let connection = try await RedisConnection.connect(configuration: configuration)
            let stop = StopFlag()
            let problems = Problems()
            // A producer that pipelines ECHOs without waiting for replies, so bytes keep arriving while
            // the proxy pauses and resumes.
            let producer = Task {
                await withDiscardingTaskGroup { group in
                    var index = 0
                    while !stop.isStopped && index < 2_000_000 {
                        // At most 256 commands outstanding: a stuck connection must not become a flood.
                        guard problems.inFlight.load(ordering: .relaxed) < 256 else {
                            try? await Task.sleep(for: .microseconds(200))
                            continue
                        }
                        index += 1
                        let value = "\(index)"
                        problems.inFlight.add(1, ordering: .relaxed)
                        group.addTask {
                            defer { problems.inFlight.subtract(1, ordering: .relaxed) }
                            do {
                                let reply = try await connection.send(RedisCommand("ECHO", .string(value))).string
                                if reply != value { problems.record("ECHO \(value) got \(reply ?? "nil")") }
                            } catch {
                                problems.record("ECHO \(value): \(error)")
                            }
                        }
                        if index % 8 == 0 { try? await Task.sleep(for: .microseconds(200)) }
                    }
                }
            }
            let clock = ContinuousClock()
            let giveUp = clock.now + .seconds(15)
            for _ in 0..<3000 where clock.now < giveUp {
                proxy.setMode(.paused)
                try await Task.sleep(for: .milliseconds(2))
                proxy.setMode(.forward)
                try await Task.sleep(for: .milliseconds(2))
                if !problems.all.isEmpty { break }
            }
            stop.stop()
            await producer.value
            let seen = problems.all
            #expect(seen.count == 0, "replies wrong or missing, the first: \(seen.prefix(3))")
            await connection.close()
            await proxy.close()
        }
    }

    // RedisFaultProxy's Pair sets `closed` in close() but never reads it: when the client side closes while
    // the upstream connect is still in flight (a client that gives up at once, or proxy.close()),
    // serverConnected later installs the upstream channel of a pair nobody will close again. The proxy
    // leaks a connection to the server (and a channel) for every such race.
    @Test("the fault proxy leaves no upstream connection behind when clients close at once")
    func proxyLeavesNoUpstreamConnection() async throws {
        try await withAliceServer(password: makePassword()) { server in
            let proxy = try await RedisFaultProxy.start(upstreamPort: server.port)
            for _ in 0..<10 {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<20 {
                        group.addTask {
                            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                                .connect(host: proxy.host, port: proxy.port).get()
                            try await channel.close()
                        }
                    }
                    try await group.waitForAll()
                }
            }
            await proxy.close()
            try await Task.sleep(for: .seconds(1))
            let admin = try await server.adminConnection()
            let info = try await admin.send(RedisCommand("INFO", "clients"), as: String.self)
            await admin.close()
            let connected = info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("connected_clients:") }
            #expect(connected == "connected_clients:1", "\(connected ?? "?") (the admin connection is the only one expected)")
        }
    }
}
