import Benchmark
import CFloor
import Foundation
import RedisRotation
import RedisRotationTesting

/// One TLS redis-server (client certificates optional, so plain TLS and mutual TLS both work) with a
/// plain-text port next to it, a test CA, and the material both the Swift client and the C floor use.
final class Fixture: @unchecked Sendable {
    // Safe because it is written once in the startup hook, before any benchmark runs, and only read after.
    nonisolated(unsafe) static var shared: Fixture!

    let server: RedisServerProcess
    let password = RedisSecret("benchmark-password")
    let passwordText = "benchmark-password"
    let caFile: String
    let certFile: String
    let keyFile: String
    let tls: RedisTLSContext
    let mutualTLS: RedisTLSContext

    init() async throws {
        let ca = try TestCertificateAuthority(name: "Benchmark CA")
        let client = try ca.issueClient(commonName: "benchmark")
        self.server = try await RedisServerProcess.start(
            .init(
                users: [.init(name: "bench", passwords: [RedisSecret("benchmark-password"), RedisSecret("benchmark-password-2")])],
                tls: .init(
                    certificate: try ca.issueServer(),
                    clientCertificateAuthorities: [ca.certificate],
                    clientAuthentication: .optional,
                    adminTLS: RedisTLSConfiguration(trustAnchors: [ca.certificate.certificateSource]),
                    keepPlainTextPort: true
                )
            )
        )
        self.caFile = self.server.directory.appendingPathComponent("bench-ca.pem").path
        try ca.certificate.certificatePEM.write(toFile: self.caFile, atomically: true, encoding: .utf8)
        let files = try client.write(to: self.server.directory, name: "bench-client")
        self.certFile = files.certificate
        self.keyFile = files.privateKey
        // Resumption off for the full-handshake figures; the resumed figure has its own context.
        self.tls = try RedisTLSContext(configuration: .init(trustAnchors: [.file(self.caFile)], sessionResumption: false))
        self.mutualTLS = try RedisTLSContext(
            configuration: .init(
                trustAnchors: [.file(self.caFile)],
                clientIdentity: .init(certificateChain: .file(self.certFile), privateKey: .file(self.keyFile)),
                sessionResumption: false
            )
        )
    }

    func configuration(tls: RedisTLSContext?) -> RedisConnectionConfiguration {
        RedisConnectionConfiguration(
            host: "127.0.0.1",
            port: tls == nil ? self.server.plainTextPort! : self.server.port,
            username: "bench",
            password: self.password,
            tls: tls.map { .init(context: $0, serverName: "localhost") }
        )
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.startupHook = { Fixture.shared = try await Fixture() }
    Benchmark.shutdownHook = { await Fixture.shared?.server.stop() }

    let latency = Benchmark.Configuration(
        metrics: [.wallClock, .cpuTotal, .mallocCountTotal],
        timeUnits: .microseconds,
        warmupIterations: 5,
        scalingFactor: .one,
        maxDuration: .seconds(5),
        maxIterations: 300
    )

    // Reconnect latency: connection lost -> first successful command on a new connection. Measured: TCP
    // connect, TLS handshake, HELLO 2 AUTH, PING. Closing is outside the measurement.
    func reconnect(_ name: String, tls: @escaping @Sendable () -> RedisTLSContext?) {
        Benchmark("Reconnect \(name) (Swift)", configuration: latency) { benchmark in
            for _ in benchmark.scaledIterations {
                benchmark.startMeasurement()
                let connection = try await RedisConnection.connect(configuration: Fixture.shared.configuration(tls: tls()))
                try await connection.ping()
                benchmark.stopMeasurement()
                await connection.close()
            }
        }
    }
    reconnect("plain TCP") { nil }
    reconnect("TLS") { Fixture.shared.tls }
    reconnect("mutual TLS") { Fixture.shared.mutualTLS }
    Benchmark("Reconnect TLS resumed (Swift)", configuration: latency) { benchmark in
        let fixture = Fixture.shared!
        let context = try RedisTLSContext(configuration: .init(trustAnchors: [.file(fixture.caFile)]))
        // A first connection leaves sessions to resume.
        await (try RedisConnection.connect(configuration: fixture.configuration(tls: context))).close()
        for _ in benchmark.scaledIterations {
            benchmark.startMeasurement()
            let connection = try await RedisConnection.connect(configuration: fixture.configuration(tls: context))
            try await connection.ping()
            benchmark.stopMeasurement()
            precondition(connection.tlsInfo?.sessionReused == true, "the session was not resumed")
            await connection.close()
        }
    }

    func floor(_ name: String, tls: Bool, mutual: Bool, resume: Bool) {
        Benchmark("Reconnect \(name) (C floor)", configuration: latency) { benchmark in
            let fixture = Fixture.shared!
            let context = tls ? rr_floor_tls_new(fixture.caFile, mutual ? fixture.certFile : nil, mutual ? fixture.keyFile : nil) : nil
            defer { rr_floor_tls_free(context) }
            let port = Int32(tls ? fixture.server.port : fixture.server.plainTextPort!)
            if resume { rr_floor_close(rr_floor_open("127.0.0.1", port, "bench", fixture.passwordText, context, 1)) }
            for _ in benchmark.scaledIterations {
                benchmark.startMeasurement()
                let connection = rr_floor_open("127.0.0.1", port, "bench", fixture.passwordText, context, resume ? 1 : 0)
                benchmark.stopMeasurement()
                precondition(connection != nil, "the C floor could not connect")
                precondition(!resume || rr_floor_reused(connection) == 1, "the C floor did not resume")
                rr_floor_close(connection)
            }
        }
    }
    floor("plain TCP", tls: false, mutual: false, resume: false)
    floor("TLS", tls: true, mutual: false, resume: false)
    floor("mutual TLS", tls: true, mutual: true, resume: false)
    floor("TLS resumed", tls: true, mutual: false, resume: true)

    Benchmark("Re-authenticate in place (Swift)", configuration: latency) { benchmark in
        let fixture = Fixture.shared!
        let connection = try await RedisConnection.connect(configuration: fixture.configuration(tls: nil))
        let credentials = RedisCredentials(username: "bench", password: fixture.password, version: "v1")
        for _ in benchmark.scaledIterations {
            try await connection.authenticate(as: credentials, name: "bench@v1")
        }
        await connection.close()
    }

    Benchmark("Sequential round trips, one connection (Swift)", configuration: .init(metrics: [.wallClock, .throughput, .mallocCountTotal], timeUnits: .microseconds, scalingFactor: .kilo, maxDuration: .seconds(5))) { benchmark in
        let connection = try await RedisConnection.connect(configuration: Fixture.shared.configuration(tls: nil))
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { try await connection.ping() }
        benchmark.stopMeasurement()
        await connection.close()
    }

    Benchmark("Sequential round trips, one connection (C floor)", configuration: .init(metrics: [.wallClock, .throughput], timeUnits: .microseconds, scalingFactor: .kilo, maxDuration: .seconds(5))) { benchmark in
        let fixture = Fixture.shared!
        let connection = rr_floor_open("127.0.0.1", Int32(fixture.server.plainTextPort!), "bench", fixture.passwordText, nil, 0)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { precondition(rr_floor_ping(connection) == 0) }
        benchmark.stopMeasurement()
        rr_floor_close(connection)
    }

    Benchmark("64-task concurrent GETs through the pool (Swift)", configuration: .init(metrics: [.wallClock, .throughput], timeUnits: .milliseconds, scalingFactor: .kilo, maxDuration: .seconds(10), maxIterations: 20)) { benchmark in
        let fixture = Fixture.shared!
        let client = try RedisClient(
            configuration: .init(host: "127.0.0.1", port: fixture.server.plainTextPort!, name: "bench", pool: .init(minimumConnections: 64, maximumConnections: 64)),
            credentials: .fixed(RedisCredentials(username: "bench", password: fixture.password, version: "v1"))
        )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.run() }
            try await client.ping()
            benchmark.startMeasurement()
            // scaledIterations is 1,000 per iteration: 64 tasks share them.
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                let total = benchmark.scaledIterations.count
                for task in 0..<64 {
                    tasks.addTask {
                        for _ in stride(from: task, to: total, by: 64) { _ = try await client.get("bench:key") }
                    }
                }
                try await tasks.waitForAll()
            }
            benchmark.stopMeasurement()
            group.cancelAll()
        }
    }

    Benchmark("64-connection pool fully on a new credential version after promotion (Swift)", configuration: .init(metrics: [.wallClock], timeUnits: .milliseconds, scalingFactor: .one, maxDuration: .seconds(20), maxIterations: 10)) { benchmark in
        let fixture = Fixture.shared!
        let file = fixture.server.directory.appendingPathComponent("bench.password").path
        try "password=\(fixture.passwordText)\nversion=a\n".write(toFile: file, atomically: true, encoding: .utf8)
        let client = try RedisClient(
            configuration: .init(host: "127.0.0.1", port: fixture.server.plainTextPort!, name: "bench", pool: .init(minimumConnections: 64, maximumConnections: 64)),
            credentials: .file(file, username: "bench", debounce: .milliseconds(1))
        )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.run() }
            while client.connectionsByCredentialVersion["a"] != 64 { try await Task.sleep(for: .milliseconds(5)) }
            var version = 0
            for _ in benchmark.scaledIterations {
                version += 1
                // The user has two passwords; alternating between them gives a new credential the server
                // accepts, so this measures probe, promotion and 64 in-place re-authentications.
                let label = "v\(version)"
                let password = version % 2 == 1 ? "benchmark-password-2" : fixture.passwordText
                try "password=\(password)\nversion=\(label)\n".write(toFile: file + ".tmp", atomically: false, encoding: .utf8)
                benchmark.startMeasurement()
                rename(file + ".tmp", file)
                client.reloadCredentials()
                while client.connectionsByCredentialVersion[label] != 64 { try await Task.sleep(for: .microseconds(200)) }
                benchmark.stopMeasurement()
            }
            group.cancelAll()
        }
    }

    // p99 command latency during a rotation against steady state: each iteration is one GET through a
    // 64-connection pool while 15 other tasks keep it busy; in the rotating variant a background task
    // publishes a new credential every 100 ms (alternating the user's two passwords), so promotions and
    // in-place re-authentications of all 64 connections happen throughout the measurement.
    func poolLatency(rotating: Bool) {
        let name = rotating ? "Pool GET latency during continuous rotation (Swift)" : "Pool GET latency, steady state (Swift)"
        Benchmark(name, configuration: .init(metrics: [.wallClock], timeUnits: .microseconds, warmupIterations: 50, scalingFactor: .one, maxDuration: .seconds(5), maxIterations: 5000)) { benchmark in
            let fixture = Fixture.shared!
            let file = fixture.server.directory.appendingPathComponent("latency-\(rotating).password").path
            try "password=\(fixture.passwordText)\nversion=p0\n".write(toFile: file, atomically: true, encoding: .utf8)
            let client = try RedisClient(
                configuration: .init(host: "127.0.0.1", port: fixture.server.plainTextPort!, name: "latency", pool: .init(minimumConnections: 64, maximumConnections: 64)),
                credentials: .file(file, username: "bench", debounce: .milliseconds(1))
            )
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await client.run() }
                while client.connectionsByCredentialVersion["p0"] != 64 { try await Task.sleep(for: .milliseconds(5)) }
                let done = ManagedAtomicFlag()
                for _ in 0..<15 {
                    group.addTask {
                        while !done.isSet { _ = try? await client.get("bench:key") }
                    }
                }
                if rotating {
                    group.addTask {
                        var version = 0
                        while !done.isSet {
                            version += 1
                            let password = version % 2 == 1 ? "benchmark-password-2" : fixture.passwordText
                            try? "password=\(password)\nversion=p\(version)\n".write(toFile: file + ".tmp", atomically: false, encoding: .utf8)
                            rename(file + ".tmp", file)
                            client.reloadCredentials()
                            try? await Task.sleep(for: .milliseconds(100))
                        }
                    }
                }
                for _ in benchmark.scaledIterations {
                    benchmark.startMeasurement()
                    _ = try await client.get("bench:key")
                    benchmark.stopMeasurement()
                }
                done.set()
                group.cancelAll()
            }
        }
    }
    poolLatency(rotating: false)
    poolLatency(rotating: true)

    floorBenchmarks()
    clusterBenchmarks()
}

/// A flag the load tasks poll.
final class ManagedAtomicFlag: @unchecked Sendable {
    // Safe because it is only ever set from false to true, under the lock.
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { self.lock.withLock { self.value } }
    func set() { self.lock.withLock { self.value = true } }
}
