import Benchmark
import CFloor
import Foundation
import NIOCore
import NIOFloor
import NIOPosix
import RedisRotation

// Issue 14's measurements: the pool next to redis-benchmark in the same run against the same server,
// and allocations per operation with the issue's goals.

/// GETs per sample of the pool / redis-benchmark pairs, for each side.
private let pairRequestsPerSample = 20_000

/// Runs `redis-benchmark -c 64 -t get` against the benchmark server and returns its own requests per
/// second (parsed from `-q` output, so starting the process is not counted).
private func redisBenchmarkGETsPerSecond(fixture: Fixture, tls: Bool) throws -> Double {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["redis-benchmark", "-h", "127.0.0.1"]
        + (tls ? ["-p", "\(fixture.server.port)", "--tls", "--cacert", fixture.caFile, "--sni", "localhost"] : ["-p", "\(fixture.server.plainTextPort!)"])
        + ["--user", "bench", "-a", fixture.passwordText, "-c", "64", "-n", "\(pairRequestsPerSample)", "-t", "get", "-q"]
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    try process.run()
    let text = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let report = String(decoding: text, as: UTF8.self)
    // "GET: 91240.88 requests per second, p50=0.343 msec" (after carriage-return progress lines).
    guard process.terminationStatus == 0, let line = report.split(whereSeparator: { $0 == "\r" || $0 == "\n" }).last(where: { $0.hasPrefix("GET: ") && $0.contains("requests per second") }),
        let rate = Double(line.dropFirst(5).prefix(while: { $0 != " " }))
    else {
        FileHandle.standardError.write(Data("redis-benchmark failed (status \(process.terminationStatus)): \(report)\n".utf8))
        throw RedisError(code: .unexpectedReply, message: "redis-benchmark failed")
    }
    return rate
}

func floorBenchmarks() {
    // Pool / redis-benchmark: each sample runs 20,000 GETs from 64 tasks through a 64-connection pool,
    // then `redis-benchmark -c 64 -n 20000 -t get` against the same server, and records both rates and
    // their ratio (goal: ≥ 80 %). The wall clock covers both halves; the custom metrics are the figures.
    let poolGETs = BenchmarkMetric.custom("pool GET/s", polarity: .prefersLarger, useScalingFactor: false)
    let toolGETs = BenchmarkMetric.custom("redis-benchmark GET/s", polarity: .prefersLarger, useScalingFactor: false)
    let ratio = BenchmarkMetric.custom("pool / redis-benchmark %", polarity: .prefersLarger, useScalingFactor: false)
    for tls in [false, true] {
        let name = "Pair: 64 tasks GET through the pool / redis-benchmark -c 64\(tls ? " --tls" : ""), \(tls ? "TLS" : "plain TCP")"
        Benchmark(name, configuration: .init(metrics: [.wallClock, poolGETs, toolGETs, ratio], timeUnits: .milliseconds, warmupIterations: 1, scalingFactor: .one, maxDuration: .seconds(30), maxIterations: 5)) { benchmark in
            let fixture = Fixture.shared!
            let client = try RedisClient(
                configuration: .init(
                    host: "127.0.0.1",
                    port: tls ? fixture.server.port : fixture.server.plainTextPort!,
                    name: "bench",
                    tls: tls ? .init(context: fixture.tls, serverName: "localhost") : nil,
                    pool: .init(minimumConnections: 64, maximumConnections: 64)
                ),
                credentials: .fixed(RedisCredentials(username: "bench", password: fixture.password, version: "v1"))
            )
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                try await client.set("bench:key", to: "value")
                for _ in benchmark.scaledIterations {
                    benchmark.startMeasurement()
                    let start = ContinuousClock.now
                    try await withThrowingTaskGroup(of: Void.self) { tasks in
                        for task in 0..<64 {
                            tasks.addTask {
                                for _ in stride(from: task, to: pairRequestsPerSample, by: 64) { _ = try await client.get("bench:key") }
                            }
                        }
                        try await tasks.waitForAll()
                    }
                    let elapsed = ContinuousClock.now - start
                    let poolRate = Double(pairRequestsPerSample) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18)
                    let toolRate = try redisBenchmarkGETsPerSecond(fixture: fixture, tls: tls)
                    benchmark.stopMeasurement()
                    benchmark.measurement(poolGETs, Int(poolRate))
                    benchmark.measurement(toolGETs, Int(toolRate))
                    benchmark.measurement(ratio, Int((poolRate / toolRate * 100).rounded()))
                }
                group.cancelAll()
            }
        }
    }

    // Reconnects, interleaved: each sample makes 40 rounds of one Swift reconnect and one C floor
    // reconnect (connect, TLS handshake, HELLO 2 AUTH, PING; closing is outside the measurement), and
    // over plain TCP one bare-NIO reconnect too, and records each side's median and their ratios.
    // Interleaved, because the C floor's time moves between runs (a plain reconnect took 50 µs in one
    // run and 120 µs in the next on this machine), and separate benchmarks minutes apart compare
    // different machines. The NIO floor (Sources/NIOFloor) is the least any SwiftNIO client does: Swift /
    // NIO is what this library adds, NIO / C what SwiftNIO itself costs.
    let swiftMicroseconds = BenchmarkMetric.custom("Swift µs", polarity: .prefersSmaller, useScalingFactor: false)
    let cMicroseconds = BenchmarkMetric.custom("C floor µs", polarity: .prefersSmaller, useScalingFactor: false)
    let nioMicroseconds = BenchmarkMetric.custom("NIO floor µs", polarity: .prefersSmaller, useScalingFactor: false)
    let swiftOverC = BenchmarkMetric.custom("Swift / C floor %", polarity: .prefersSmaller, useScalingFactor: false)
    let swiftOverNIO = BenchmarkMetric.custom("Swift / NIO floor %", polarity: .prefersSmaller, useScalingFactor: false)
    let nioOverC = BenchmarkMetric.custom("NIO floor / C floor %", polarity: .prefersSmaller, useScalingFactor: false)
    enum Security: String { case plain = "plain TCP", tls = "TLS 1.3 full", resumed = "TLS 1.3 resumed", mutual = "mutual TLS" }
    for security in [Security.plain, .tls, .resumed, .mutual] {
        let nioFloor = security == .plain
        Benchmark(
            "Pair: reconnect \(security.rawValue), Swift / C floor\(nioFloor ? " / bare-NIO floor" : ""), interleaved",
            configuration: pairConfiguration(
                [swiftMicroseconds, cMicroseconds, swiftOverC] + (nioFloor ? [nioMicroseconds, swiftOverNIO, nioOverC] : [])
            )
        ) { benchmark in
            let fixture = Fixture.shared!
            let context: RedisTLSContext?
            switch security {
            case .plain: context = nil
            case .tls: context = fixture.tls
            case .mutual: context = fixture.mutualTLS
            case .resumed: context = try RedisTLSContext(configuration: .init(trustAnchors: [.file(fixture.caFile)]))
            }
            let configuration = fixture.configuration(tls: context)
            let port = configuration.port
            let floorTLS = security == .plain ? nil : rr_floor_tls_new(fixture.caFile, security == .mutual ? fixture.certFile : nil, security == .mutual ? fixture.keyFile : nil)
            defer { rr_floor_tls_free(floorTLS) }
            let resume: Int32 = security == .resumed ? 1 : 0
            if security == .resumed {
                // First connections leave sessions to resume.
                await (try await RedisConnection.connect(configuration: configuration)).close()
                rr_floor_close(rr_floor_open("127.0.0.1", Int32(port), "bench", fixture.passwordText, floorTLS, 1))
            }
            let loop = MultiThreadedEventLoopGroup.singleton.next()
            for _ in benchmark.scaledIterations {
                var swift: [Double] = []
                var c: [Double] = []
                var nio: [Double] = []
                for _ in 0..<40 {
                    var start = ContinuousClock.now
                    let connection = try await RedisConnection.connect(configuration: configuration)
                    try await connection.ping()
                    swift.append(microseconds(ContinuousClock.now - start))
                    precondition(resume == 0 || connection.tlsInfo?.sessionReused == true, "the session was not resumed")
                    await connection.close()

                    start = ContinuousClock.now
                    let floor = rr_floor_open("127.0.0.1", Int32(port), "bench", fixture.passwordText, floorTLS, resume)
                    c.append(microseconds(ContinuousClock.now - start))
                    precondition(floor != nil, "the C floor could not connect")
                    precondition(resume == 0 || rr_floor_reused(floor) == 1, "the C floor did not resume")
                    rr_floor_close(floor)

                    if nioFloor {
                        start = ContinuousClock.now
                        let bare = try await NIOFloorConnection.open(host: "127.0.0.1", port: port, user: "bench", password: fixture.passwordText, on: loop)
                        nio.append(microseconds(ContinuousClock.now - start))
                        await bare.close()
                    }
                }
                let (s, f) = (median(swift), median(c))
                benchmark.measurement(swiftMicroseconds, Int(s.rounded()))
                benchmark.measurement(cMicroseconds, Int(f.rounded()))
                benchmark.measurement(swiftOverC, Int((s / f * 100).rounded()))
                if nioFloor {
                    let n = median(nio)
                    benchmark.measurement(nioMicroseconds, Int(n.rounded()))
                    benchmark.measurement(swiftOverNIO, Int((s / n * 100).rounded()))
                    benchmark.measurement(nioOverC, Int((n / f * 100).rounded()))
                }
            }
        }
    }

    // Sequential round trips, interleaved: each sample makes 2,000 rounds of one PING from a Swift task
    // on the shared pool's threads, one on the C floor's connection, one the bare-SwiftNIO way from the
    // same kind of task (Sources/NIOFloor: the least a NIO client does), and one from a Swift task that
    // runs on its connection's event loop (`connection.taskExecutor`), each timed alone, and records each
    // side's median and the ratios. All four connections stay open for the whole benchmark.
    // Interleaved one by one because a round trip's time here is mostly wake-ups of sleeping threads,
    // and how long those take depends on what ran just before: the C floor alone measured 55 µs per
    // round trip, 9-40 µs between Swift's. A caller on the pool's threads crosses to the event loop
    // and back on every round trip (two more wake-ups than the C floor's two); a caller on the loop
    // does not.
    // The reconnect pairs' metrics (same names), and the on-the-loop side's own.
    let onLoopRoundTrip = BenchmarkMetric.custom("Swift on the loop µs", polarity: .prefersSmaller, useScalingFactor: false)
    let onLoopRatio = BenchmarkMetric.custom("Swift on the loop / C floor %", polarity: .prefersSmaller, useScalingFactor: false)
    Benchmark(
        "Pair: sequential round trips (PING) on one connection, Swift / C floor, interleaved",
        configuration: pairConfiguration(
            [swiftMicroseconds, cMicroseconds, swiftOverC, nioMicroseconds, nioOverC, swiftOverNIO, onLoopRoundTrip, onLoopRatio]
        )
    ) { benchmark in
        let fixture = Fixture.shared!
        let configuration = fixture.configuration(tls: nil)
        let connection = try await RedisConnection.connect(configuration: configuration)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let onLoop = try await RedisConnection.connect(configuration: configuration, eventLoopGroup: loop)
        // The public way (RedisConnection.taskExecutor, RedisLoopExecutor): one executor for the run.
        let executor = onLoop.taskExecutor
        let bare = try await NIOFloorConnection.open(
            host: "127.0.0.1", port: configuration.port, user: "bench", password: fixture.passwordText, on: MultiThreadedEventLoopGroup.singleton.next()
        )
        let floor = rr_floor_open("127.0.0.1", Int32(fixture.server.plainTextPort!), "bench", fixture.passwordText, nil, 0)
        precondition(floor != nil, "the C floor could not connect")
        defer { rr_floor_close(floor) }
        for _ in benchmark.scaledIterations {
            var swift: [Double] = []
            var c: [Double] = []
            var looped: [Double] = []
            var nio: [Double] = []
            for _ in 0..<2000 {
                var start = ContinuousClock.now
                try await connection.ping()
                swift.append(microseconds(ContinuousClock.now - start))
                start = ContinuousClock.now
                precondition(rr_floor_ping(floor) == 0)
                c.append(microseconds(ContinuousClock.now - start))
                start = ContinuousClock.now
                try await bare.ping()
                nio.append(microseconds(ContinuousClock.now - start))
                looped.append(
                    try await withTaskExecutorPreference(executor) {
                        let start = ContinuousClock.now
                        try await onLoop.ping()
                        return microseconds(ContinuousClock.now - start)
                    }
                )
            }
            let (s, f, l, n) = (median(swift), median(c), median(looped), median(nio))
            benchmark.measurement(nioMicroseconds, Int(n.rounded()))
            benchmark.measurement(nioOverC, Int((n / f * 100).rounded()))
            benchmark.measurement(swiftOverNIO, Int((s / n * 100).rounded()))
            benchmark.measurement(swiftMicroseconds, Int(s.rounded()))
            benchmark.measurement(cMicroseconds, Int(f.rounded()))
            benchmark.measurement(swiftOverC, Int((s / f * 100).rounded()))
            benchmark.measurement(onLoopRoundTrip, Int(l.rounded()))
            benchmark.measurement(onLoopRatio, Int((l / f * 100).rounded()))
        }
        await connection.close()
        await onLoop.close()
        await bare.close()
    }

    // Allocations per operation (mallocCountTotal, one operation per iteration). Goals from issue 14:
    // ≤ 2 per pipelined round trip (18 when the issue was filed), ≤ 100 per plain reconnect (243; the
    // reconnect benchmarks in RedisRotationBenchmarks.swift report it too, this one closes outside the
    // measurement as they do).
    let perOperation = Benchmark.Configuration(
        metrics: [.mallocCountTotal, .wallClock],
        timeUnits: .microseconds,
        warmupIterations: 20,
        scalingFactor: .one,
        maxDuration: .seconds(5),
        maxIterations: 2000
    )
    Benchmark("Allocations: one round trip, GET on one connection (Swift; goal ≤ 2)", configuration: perOperation) { benchmark in
        let connection = try await RedisConnection.connect(configuration: Fixture.shared.configuration(tls: nil))
        try await connection.set("bench:key", to: "value")
        for _ in benchmark.scaledIterations {
            benchmark.startMeasurement()
            _ = try await connection.get("bench:key")
            benchmark.stopMeasurement()
        }
        await connection.close()
    }
    // 64 tasks share one connection, so their commands are pipelined; one iteration is 64 GETs:
    // divide by 64 for allocations per GET.
    Benchmark("Allocations: 64 pipelined GETs from 64 tasks on one connection (Swift; goal ≤ 128 = 2 per GET)", configuration: perOperation) { benchmark in
        let connection = try await RedisConnection.connect(configuration: Fixture.shared.configuration(tls: nil))
        try await connection.set("bench:key", to: "value")
        for _ in benchmark.scaledIterations {
            benchmark.startMeasurement()
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for _ in 0..<64 { tasks.addTask { _ = try await connection.get("bench:key") } }
                try await tasks.waitForAll()
            }
            benchmark.stopMeasurement()
        }
        await connection.close()
    }
    // The same reconnect the bare-SwiftNIO way (Sources/NIOFloor): what NIO itself allocates.
    Benchmark("Allocations: one plain reconnect, connect + HELLO + PING (bare-NIO floor)", configuration: perOperation) { benchmark in
        let fixture = Fixture.shared!
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        for _ in benchmark.scaledIterations {
            benchmark.startMeasurement()
            let connection = try await NIOFloorConnection.open(
                host: "127.0.0.1", port: fixture.server.plainTextPort!, user: "bench", password: fixture.passwordText, on: loop
            )
            benchmark.stopMeasurement()
            await connection.close()
        }
    }
    Benchmark("Allocations: one plain reconnect, connect + HELLO + PING (Swift; goal ≤ 100)", configuration: perOperation) { benchmark in
        let configuration = Fixture.shared.configuration(tls: nil)
        for _ in benchmark.scaledIterations {
            benchmark.startMeasurement()
            let connection = try await RedisConnection.connect(configuration: configuration)
            try await connection.ping()
            benchmark.stopMeasurement()
            await connection.close()
        }
    }
}


/// A duration in microseconds, for the pairs' medians.
/// An interleaved pair's configuration: one warm-up sample, then up to 10 (each sample is many rounds
/// of every side, and records their medians).
func pairConfiguration(_ metrics: [BenchmarkMetric]) -> Benchmark.Configuration {
    .init(metrics: metrics, warmupIterations: 1, scalingFactor: .one, maxDuration: .seconds(60), maxIterations: 10)
}

private func microseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1e6 + Double(duration.components.attoseconds) * 1e-12
}

/// The median of a sample's rounds.
private func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
