import CFloor
import NIOFloor
import Foundation
import RedisRotation
import NIOCore
import NIOPosix

// Usage: CallgrindProbe <mode> <count> <port> [<ca-file>]
//
// Does one warm-up operation, then <count> operations of one kind against a server on 127.0.0.1 with
// the user `bench` / `benchmark-password` (callgrind.sh starts it). Modes: swift-roundtrip, swift-get-roundtrip (a GET of a short value),
// c-roundtrip (PING on one open connection), swift-reconnect, c-reconnect (connect, HELLO 2 AUTH,
// PING, close; plain TCP), nio-reconnect (the same with bare SwiftNIO: the NIOFloor target),
// swift-reconnect-tls, c-reconnect-tls (the same over TLS 1.3, full
// handshake, no resumption; <ca-file> is the CA to trust), swift-resumed-tls, c-resumed-tls (the same,
// resuming the previous connection's session), swift-pool (<count> GETs from 64 tasks
// through a 64-connection RedisClient pool, the pool workload; swift-pool-tls: the same over
// TLS, sessions not resumed), swift-pipelined (<count> GETs
// from 64 tasks on one RedisConnection). The reconnect modes take ONLOOP=1 (the task runs on its
// connections' event loop) and TIMING=1 (print the mean wall time per reconnect). callgrind.sh runs
// two counts and takes the difference, so what
// is done once (start-up, the warm-up) cancels out. With RATE=1 in the environment, the pool and
// pipelined modes print their GETs per second (wall clock, outside valgrind) on standard output.

let arguments = CommandLine.arguments
guard arguments.count >= 4, let count = Int(arguments[2]), let port = Int(arguments[3]) else {
    FileHandle.standardError.write(Data("usage: CallgrindProbe <mode> <count> <port> [<ca-file>]\n".utf8))
    exit(2)
}
let mode = arguments[1]
let caFile = arguments.count > 4 ? arguments[4] : ""
let user = "bench"
let passwordText = "benchmark-password"

func swiftConfiguration(tls: Bool, resumption: Bool = false) throws -> RedisConnectionConfiguration {
    let context = tls ? try RedisTLSContext(configuration: .init(trustAnchors: [.file(caFile)], sessionResumption: resumption)) : nil
    return RedisConnectionConfiguration(
        host: "127.0.0.1",
        port: port,
        username: user,
        password: RedisSecret(passwordText),
        tls: context.map { .init(context: $0, serverName: "localhost") }
    )
}

func cFloor(_ condition: Bool) {
    if !condition {
        FileHandle.standardError.write(Data("the C floor failed\n".utf8))
        exit(1)
    }
}

/// The Swift modes. Run from a detached task while the main thread waits on a semaphore: valgrind 3.19
/// crashes (SIGSEGV inside callgrind) in the `sigsuspend` that an async top level's `dispatch_main`
/// parks in. Detached, because a plain `Task` here inherits the main actor, whose thread is the one waiting.
func runSwift() async throws {
    if mode == "swift-pool" || mode == "swift-pipelined" || mode == "swift-pool-tls" {
        try await runConcurrentGETs(pooled: mode != "swift-pipelined", tls: mode == "swift-pool-tls")
    } else if mode == "swift-roundtrip" {
        let connection = try await RedisConnection.connect(configuration: try swiftConfiguration(tls: false))
        try await connection.ping()
        for _ in 0..<count { try await connection.ping() }
        await connection.close()
    } else if mode == "swift-get-roundtrip" {
        // The allocation benchmark's round trip: a GET of a short value, read as a String.
        let connection = try await RedisConnection.connect(configuration: try swiftConfiguration(tls: false))
        try await connection.set("bench:key", to: "value")
        for _ in 0..<count { _ = try await connection.get("bench:key") }
        await connection.close()
    } else {
        let configuration = try swiftConfiguration(tls: mode.hasSuffix("tls"), resumption: mode == "swift-resumed-tls")
        let environment = ProcessInfo.processInfo.environment
        // ONLOOP=1: the task runs on the one event loop its connections use (a task executor), so no
        // step of connect, PING or close hops between threads: what an application whose task runs on
        // that loop gets. Otherwise connections use the shared group, as an application's usually do.
        let onLoop = environment["ONLOOP"] == "1"
        let group: any EventLoopGroup = onLoop ? MultiThreadedEventLoopGroup(numberOfThreads: 1) : MultiThreadedEventLoopGroup.singleton
        let loop = group.next()
        func body() async throws {
            let start = ContinuousClock.now
            for _ in 0...count {
                if mode == "nio-reconnect" {
                    await (try await NIOFloorConnection.open(host: "127.0.0.1", port: port, user: user, password: passwordText, on: onLoop ? loop : group.next())).close()
                    continue
                }
                let connection = try await RedisConnection.connect(configuration: configuration, eventLoopGroup: onLoop ? loop : group)
                try await connection.ping()
                await connection.close()
            }
            // TIMING=1: the mean wall time of one reconnect (outside valgrind).
            if environment["TIMING"] == "1" { print("mean", (ContinuousClock.now - start) / (count + 1)) }
        }
        if onLoop {
            try await withTaskExecutorPreference(LoopExecutor(loop: loop)) { try await body() }
        } else {
            try await body()
        }
    }
}


/// `count` GETs from 64 tasks, through a 64-connection pool or on one connection, after one warm-up round.
func runConcurrentGETs(pooled: Bool, tls: Bool) async throws {
    let tasks = 64
    let connection = try swiftConfiguration(tls: tls)
    let send: @Sendable () async throws -> Void
    let stop: @Sendable () async -> Void
    if pooled {
        let client = try RedisClient(
            configuration: .init(
                host: "127.0.0.1",
                port: port,
                name: "probe",
                tls: connection.tls.map { .init(context: $0.context, serverName: "localhost") },
                pool: .init(minimumConnections: tasks, maximumConnections: tasks)
            ),
            credentials: .fixed(RedisCredentials(username: user, password: RedisSecret(passwordText), version: "v1"))
        )
        let running = Task { try await client.run() }
        // Every connection open before anything is measured (at most 10 s).
        for _ in 0..<1000 where (client.connectionsByCredentialVersion["v1"] ?? 0) < tasks {
            try await Task.sleep(for: .milliseconds(10))
        }
        send = { _ = try await client.get("probe:key") }
        stop = { running.cancel(); _ = await running.result }
    } else {
        let shared = try await RedisConnection.connect(configuration: connection)
        send = { _ = try await shared.send(RedisCommand("GET", "probe:key")) }
        stop = { await shared.close() }
    }
    func round(_ total: Int) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<tasks {
                group.addTask { for _ in stride(from: task, to: total, by: tasks) { try await send() } }
            }
            try await group.waitForAll()
        }
    }
    try await round(tasks * 4)
    let start = ContinuousClock.now
    try await round(count)
    let elapsed = ContinuousClock.now - start
    if ProcessInfo.processInfo.environment["RATE"] == "1" {
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        print(Int(Double(count) / seconds))
    }
    await stop()
}

switch mode {
case "swift-roundtrip", "swift-get-roundtrip", "swift-reconnect", "nio-reconnect", "swift-reconnect-tls", "swift-resumed-tls", "swift-pool", "swift-pool-tls", "swift-pipelined":
    let done = DispatchSemaphore(value: 0)
    Task.detached {
        do {
            try await runSwift()
        } catch {
            FileHandle.standardError.write(Data("failed: \(error)\n".utf8))
            exit(1)
        }
        done.signal()
    }
    done.wait()
case "c-roundtrip":
    let connection = rr_floor_open("127.0.0.1", Int32(port), user, passwordText, nil, 0)
    cFloor(connection != nil)
    for _ in 0...count { cFloor(rr_floor_ping(connection) == 0) }
    rr_floor_close(connection)
case "c-reconnect", "c-reconnect-tls", "c-resumed-tls":
    let context = mode.hasSuffix("tls") ? rr_floor_tls_new(caFile, nil, nil) : nil
    cFloor(!mode.hasSuffix("tls") || context != nil)
    let start = ContinuousClock.now
    for _ in 0...count {
        // rr_floor_open answers its PING.
        let connection = rr_floor_open("127.0.0.1", Int32(port), user, passwordText, context, mode == "c-resumed-tls" ? 1 : 0)
        cFloor(connection != nil)
        rr_floor_close(connection)
    }
    // TIMING=1: the mean wall time of one reconnect (outside valgrind).
    if ProcessInfo.processInfo.environment["TIMING"] == "1" { print("mean", (ContinuousClock.now - start) / (count + 1)) }
    rr_floor_tls_free(context)
default:
    FileHandle.standardError.write(Data("unknown mode \(mode)\n".utf8))
    exit(2)
}
