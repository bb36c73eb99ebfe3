import Foundation
import RedisRotation
import RedisRotationTesting
import Testing

/// Resident memory of this process, in bytes (`VmRSS` of /proc/self/status).
func residentMemory() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
        let line = status.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix("VmRSS:") })
    else { return -1 }
    return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1) * 1024
}

/// Open file descriptors of this process.
func openDescriptors() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

private let soakEnvironment = ProcessInfo.processInfo.environment

/// Opt-in (`REDIS_ROTATION_SOAK=1`, or `scripts/soak.sh`): password rotations and mutual-TLS certificate
/// rotations, one after another, under steady traffic, while resident memory and open descriptors are
/// sampled. `REDIS_ROTATION_SOAK_PASSWORDS` (default 1,000) and `REDIS_ROTATION_SOAK_CERTIFICATES`
/// (default 100) set the counts.
@Suite(
    "Soak: rotations under traffic",
    .enabled(if: soakEnvironment["REDIS_ROTATION_SOAK"] != nil, "set REDIS_ROTATION_SOAK=1 (scripts/soak.sh)"),
    .timeLimit(.minutes(60))
)
struct SoakTests {
    @Test("1,000 password and 100 certificate rotations under traffic: nothing fails, memory and descriptors stay flat")
    func soak() async throws {
        let passwordRotations = Int(soakEnvironment["REDIS_ROTATION_SOAK_PASSWORDS"] ?? "") ?? 1000
        let certificateRotations = max(1, Int(soakEnvironment["REDIS_ROTATION_SOAK_CERTIFICATES"] ?? "") ?? 100)
        let certificateEvery = max(1, passwordRotations / certificateRotations)
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(
            fixture.serverConfiguration(clientCAs: [fixture.ca.certificate], clientAuthentication: .required, keepPlainTextPort: true)
        ) { server in
            let identity = try fixture.ca.issueClient(commonName: "soak-0").write(to: server.directory, name: "client")
            let caFile = server.directory.appendingPathComponent("server-ca.pem").path
            try writeAtomically(fixture.ca.certificate.certificatePEM, to: caFile)
            let passwordFile = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: fixture.password))\nversion=v0\n", to: passwordFile)
            let client = try RedisClient(
                configuration: RedisClientConfiguration(
                    host: server.host,
                    port: server.port,
                    name: "soak",
                    tls: .reloading(
                        RedisTLSConfiguration(
                            trustAnchors: [.file(caFile)],
                            clientIdentity: RedisTLSClientIdentity(certificateChain: .file(identity.certificate), privateKey: .file(identity.privateKey))
                        ),
                        debounce: .milliseconds(10),
                        rolloverWindow: .milliseconds(100)
                    ),
                    pool: .init(minimumConnections: 4, maximumConnections: 8, maximumConnectionAge: nil, leaseTimeout: .seconds(20)),
                    rotation: .init(probeBackoffBase: .milliseconds(10), probeBackoffCap: .milliseconds(200), previousGracePeriod: .seconds(30))
                ),
                credentials: .file(passwordFile, username: "alice")
            )
            try await withRunningClient(client) { client in
                let stop = StopFlag()
                let traffic = Task { await runTraffic(client: client, tasks: 8, prefix: "soak", stop: stop, maximumDuration: .seconds(3000)) }
                // An application reads the events; unread, they fill the stream's buffer of 10,000 by design.
                let events = Task { await client.events.reduce(0) { count, _ in count + 1 } }
                await stop.waitForProgress(500, "before the first rotation")
                let started = ContinuousClock.now
                var baseline: (memory: Int, descriptors: Int)?
                var samples: [(rotation: Int, memory: Int, descriptors: Int)] = []
                var certificates = 0
                var password = fixture.password
                for rotation in 1...passwordRotations {
                    let new = makePassword()
                    try await server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
                    try writeAtomically("password=\(text(of: new))\nversion=v\(rotation)\n", to: passwordFile)
                    await eventually("every connection on v\(rotation)") {
                        client.currentCredentialVersion == "v\(rotation)" && client.connectionsByCredentialVersion.keys.sorted() == ["v\(rotation)"]
                    }
                    try await server.admin("ACL", "SETUSER", "alice", .string("<\(text(of: password))"))
                    password = new

                    if rotation % certificateEvery == 0 && certificates < certificateRotations {
                        certificates += 1
                        // The client's certificate renewed (key first, both by rename), the server's replaced.
                        let before = client.currentTLSContext?.generation
                        let renewed = try fixture.ca.issueClient(commonName: "soak-\(certificates)")
                        try writeAtomically(renewed.privateKeyPEM, to: identity.privateKey)
                        try writeAtomically(renewed.certificatePEM, to: identity.certificate)
                        let serverFiles = try fixture.ca.issueServer(commonName: "soak-server-\(certificates)")
                            .write(to: server.directory, name: "server-\(certificates % 2)")
                        try await server.admin("CONFIG", "SET", "tls-cert-file", .string(serverFiles.certificate), "tls-key-file", .string(serverFiles.privateKey))
                        await eventually("certificate rotation \(certificates) rolled out") {
                            guard let generation = client.currentTLSContext?.generation, generation != before else { return false }
                            return client.connectionsByTLSGeneration.keys.sorted() == [generation]
                        }
                    }
                    // The first tenth warms up (allocator pools, caches, histograms); then sample.
                    if rotation == max(1, passwordRotations / 10) { baseline = (residentMemory(), openDescriptors()) }
                    if rotation % max(1, passwordRotations / 20) == 0 { samples.append((rotation, residentMemory(), openDescriptors())) }
                }
                let elapsed = ContinuousClock.now - started
                stop.stop()
                let report = await traffic.value
                let end = (memory: residentMemory(), descriptors: openDescriptors())
                events.cancel()
                let summary = "soak: \(passwordRotations) password and \(certificates) certificate rotations in \(elapsed); \(report); "
                    + "resident memory \(baseline.map { $0.memory / 1024 } ?? -1) KiB after warm-up -> \(end.memory / 1024) KiB; "
                    + "descriptors \(baseline.map { $0.descriptors } ?? -1) -> \(end.descriptors); samples (rotation, KiB, fds): "
                    + samples.map { "(\($0.rotation), \($0.memory / 1024), \($0.descriptors))" }.joined(separator: " ")
                print(summary)
                #expect(report.failedIdempotent.isEmpty && report.failedOther.isEmpty && report.outcomeUnknown == 0, "\(report)")
                #expect(certificates == certificateRotations)
                let counter = try await client.get("soak:counter", as: Int.self) ?? 0
                #expect(counter == report.incrementsAcknowledged)
                if let baseline {
                    // Flat: what is left after 90 % of the rotations is allocator noise, not a leak per rotation.
                    #expect(end.memory - baseline.memory < 24 * 1024 * 1024, "\(summary)")
                    #expect(end.descriptors - baseline.descriptors <= 4, "\(summary)")
                }
            }
        }
    }
}
