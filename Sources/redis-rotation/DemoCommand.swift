import ArgumentParser
import Dispatch
import Foundation
import RedisRotation
import RedisRotationAdmin
import RedisRotationTesting

/// `redis-rotation demo`: a private redis-server with TLS and ACL users, a test CA, traffic through the
/// pooled client with mutual TLS, and the whole rotation flow performed mid-traffic.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Rotate a password, the server certificate, the CA and the client certificate under live traffic.",
        discussion: """
            Starts its own redis-server (TLS, ACL users) in a temporary folder on a free loopback port and
            stops it and removes the folder on exit, also on Ctrl-C. With --cluster, starts a Redis Cluster
            of 3 primaries and 3 replicas instead and, under traffic through the cluster client, rotates the
            password on every node, kills the connections on every node, fails a shard over and migrates
            100 slots. Exit status 0 only with zero failed commands and zero lost writes.
            """
    )

    @Option(help: "Seconds of traffic (the steps are spread over it).") var duration = 40
    @Option(help: "Concurrent tasks.") var concurrency = 32
    @Option(help: "Subscriptions fed numbered messages through the whole flow (0 for none; not used with --cluster yet).") var subscribers = 2
    @Option(help: "Write the HTML timeline here.") var reportHtml = "redis-rotation-demo.html"
    @Option(help: "Write the JSON report here.") var reportJson: String?
    @Flag(help: "Run the demo on a Redis Cluster (3 primaries, 3 replicas) through the cluster client.") var cluster = false

    func validate() throws {
        guard self.duration >= 20 else { throw ValidationError("--duration must be at least 20 seconds, so that every step fits") }
        guard self.concurrency >= 1 else { throw ValidationError("--concurrency must be positive") }
        guard (0...1000).contains(self.subscribers) else { throw ValidationError("--subscribers must be between 0 and 1000") }
    }

    func run() async throws {
        let work = Task { try await self.demo() }
        signal(SIGINT, SIG_IGN)
        let interrupt = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        interrupt.setEventHandler { work.cancel() }
        interrupt.resume()
        defer { interrupt.cancel() }
        do {
            try await work.value
        } catch where work.isCancelled {
            FileHandle.standardError.write(Data("interrupted: the demo server\(self.cluster ? "s are" : " is") stopped and \(self.cluster ? "their folders" : "its folder") removed\n".utf8))
            throw ExitCode(130)
        }
    }

    private func say(_ text: String) {
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }

    private func demo() async throws {
        if self.cluster {
            try await self.clusterDemo()
        } else {
            try await self.singleServerDemo()
        }
    }

    private func singleServerDemo() async throws {
        let rootCA = try TestCertificateAuthority(name: "Demo Root CA 1")
        let nextCA = try TestCertificateAuthority(name: "Demo Root CA 2")
        let password = RedisPasswordRotation.randomPassword()
        let serverConfiguration = RedisServerProcess.Configuration(
            users: [.init(name: "app", passwords: [password])],
            tls: RedisServerProcess.TLS(
                certificate: try rootCA.issueServer(commonName: "demo-redis"),
                clientCertificateAuthorities: [rootCA.certificate],
                clientAuthentication: .required,
                adminTLS: RedisTLSConfiguration(trustAnchors: [rootCA.certificate.certificateSource]),
                keepPlainTextPort: true
            )
        )
        self.say("starting redis-server with TLS and ACL users...")
        try await RedisServerProcess.withServer(serverConfiguration) { server in
            let folder = server.directory
            let passwordFile = folder.appendingPathComponent("app.password").path
            try RedisCredentialFile(password: password, version: "v1").write(to: passwordFile)
            let bundle = folder.appendingPathComponent("trusted-cas.pem").path
            try rootCA.certificate.certificatePEM.write(toFile: bundle, atomically: true, encoding: .utf8)
            let identity = try rootCA.issueClient(commonName: "demo-app-1").write(to: folder, name: "client")
            self.say("redis-server \(server.pid) on 127.0.0.1:\(server.port) (TLS, mutual TLS required), folder \(folder.path)")

            let client = try RedisClient(
                configuration: RedisClientConfiguration(
                    host: server.host,
                    port: server.port,
                    name: "demo",
                    tls: .reloading(
                        RedisTLSConfiguration(
                            trustAnchors: [.file(bundle)],
                            clientIdentity: RedisTLSClientIdentity(certificateChain: .file(identity.certificate), privateKey: .file(identity.privateKey))
                        ),
                        serverName: "localhost",
                        pollInterval: .seconds(5),
                        debounce: .milliseconds(50),
                        rolloverWindow: .seconds(2)
                    ),
                    pool: .init(minimumConnections: 8, maximumConnections: 16, leaseTimeout: .seconds(10))
                ),
                credentials: .file(passwordFile, username: "app", pollInterval: .seconds(5))
            )

            // The server side of every step goes through RedisRotationAdmin, as an operator's tool would.
            let admin = try await RedisServerAdmin.connect(configuration: server.adminConnectionConfiguration())
            defer { Task { await admin.close() } }
            let rotation = RedisPasswordRotation(
                topology: RedisAdminTopology(nodes: [admin]),
                options: .init(user: "app", passwordFile: passwordFile, version: "v2", clientWait: .seconds(30), pollInterval: .milliseconds(50))
            )
            @Sendable func waitUntilRolled(_ what: String) async throws {
                let deadline = ContinuousClock.now + .seconds(30)
                while ContinuousClock.now < deadline {
                    if let generation = client.currentTLSContext?.generation,
                        client.connectionsByTLSGeneration.keys.allSatisfy({ $0 == generation })
                    {
                        return
                    }
                    try await Task.sleep(for: .milliseconds(50))
                }
                throw RunFailure(description: "connections did not roll onto \(what) within 30 seconds", exitCode: 1)
            }
            @Sendable func waitForGeneration(after generation: UInt64?) async throws {
                let deadline = ContinuousClock.now + .seconds(30)
                while ContinuousClock.now < deadline {
                    if client.currentTLSContext?.generation != generation { return }
                    try await Task.sleep(for: .milliseconds(20))
                }
                throw RunFailure(description: "the TLS files were not reloaded within 30 seconds", exitCode: 1)
            }
            let d = Double(self.duration)
            func at(_ fraction: Double) -> Duration { .milliseconds(Int64(d * fraction * 1000)) }

            let steps: [RotationStep] = [
                RotationStep(name: "1 add a second password (ACL SETUSER app >new, ACL SAVE)", at: at(0.10)) {
                    try await rotation.prepare()
                    try await rotation.addPassword()
                },
                RotationStep(name: "2 publish it to the password file (atomic rename)", at: at(0.18)) {
                    try await rotation.publish()
                    try await rotation.waitForClients()
                },
                RotationStep(name: "3 remove the old password (ACL SETUSER app resetpass >new, ACL SAVE)", at: at(0.28)) {
                    try await rotation.removeOldPasswords()
                },
                RotationStep(name: "4 kill the user's connections (CLIENT KILL ID each of app)", at: at(0.36)) {
                    try await admin.killConnections(of: "app")
                },
                RotationStep(name: "5 rotate the server certificate (CONFIG SET tls-cert-file)", at: at(0.46)) {
                    let files = try rootCA.issueServer(commonName: "demo-redis-renewed").write(to: folder, name: "server-renewed")
                    try await admin.setServerCertificate(certificateFile: files.certificate, keyFile: files.privateKey)
                    try await admin.killConnections(of: "app")
                },
                RotationStep(name: "6 roll the CA over (trust both, switch server, drop old)", at: at(0.56)) {
                    let before = client.currentTLSContext?.generation
                    try (rootCA.certificate.certificatePEM + nextCA.certificate.certificatePEM).write(toFile: bundle, atomically: true, encoding: .utf8)
                    try await waitForGeneration(after: before)
                    try await waitUntilRolled("the two-CA trust set")
                    let files = try nextCA.issueServer(commonName: "demo-redis-ca2").write(to: folder, name: "server-ca2")
                    try await admin.setServerCertificate(certificateFile: files.certificate, keyFile: files.privateKey)
                    let both = client.currentTLSContext?.generation
                    try nextCA.certificate.certificatePEM.write(toFile: bundle, atomically: true, encoding: .utf8)
                    try await waitForGeneration(after: both)
                    try await admin.killConnections(of: "app")
                },
                RotationStep(name: "7 renew the client certificate (key first, then certificate)", at: at(0.72)) {
                    let clientCAs = folder.appendingPathComponent("client-cas.pem").path
                    try (rootCA.certificate.certificatePEM + nextCA.certificate.certificatePEM).write(toFile: clientCAs, atomically: true, encoding: .utf8)
                    try await admin.setClientCertificateAuthorities(file: clientCAs)
                    let before = client.currentTLSContext?.generation
                    let renewed = try nextCA.issueClient(commonName: "demo-app-2")
                    try renewed.privateKeyPEM.write(toFile: identity.privateKey, atomically: false, encoding: .utf8)
                    try await Task.sleep(for: .milliseconds(150))
                    try renewed.certificatePEM.write(toFile: identity.certificate, atomically: false, encoding: .utf8)
                    try await waitForGeneration(after: before)
                    try await waitUntilRolled("the renewed client certificate")
                    let newOnly = folder.appendingPathComponent("client-ca-2.pem").path
                    try nextCA.certificate.certificatePEM.write(toFile: newOnly, atomically: true, encoding: .utf8)
                    try await admin.setClientCertificateAuthorities(file: newOnly)
                    try await admin.killConnections(of: "app")
                },
                RotationStep(name: "8 steady state on the new material", at: at(0.86)) {},
            ]
            let workload = Workload(
                duration: .seconds(self.duration),
                concurrency: self.concurrency,
                rate: 0,
                readRatio: 0.7,
                keys: 10_000,
                valueSize: 64,
                keyPrefix: "demo",
                verifyWrites: true
            )
            let report = try await LoadRun.execute(client: client, workload: workload, steps: steps, progress: true, subscribers: self.subscribers)
            try self.conclude(report, title: "redis-rotation demo")
        }
    }

    /// Prints the report, writes the timeline, and fails unless nothing failed and nothing was lost.
    private func conclude(_ report: LoadReport, title: String) throws {
        print("")
        print(report.text())
        let failedSteps = report.events.filter { $0.kind == "stepFailed" }
        for failed in failedSteps { print("step failed: \(failed.detail)") }
        try report.html(title: title).write(toFile: self.reportHtml, atomically: true, encoding: .utf8)
        print("\ntimeline: \(URL(fileURLWithPath: self.reportHtml).path)")
        if let path = self.reportJson { try report.json().write(to: URL(fileURLWithPath: path)) }
        print("connections at the end: \(report.connections_by_version.sorted { $0.key < $1.key }.map { "\($0.value) on \($0.key)" }.joined(separator: ", "))")
        if let nodes = report.connections_by_node {
            for (node, versions) in nodes.sorted(by: { $0.key < $1.key }) {
                print("  \(node): \(versions.sorted { $0.key < $1.key }.map { "\($0.value) on \($0.key)" }.joined(separator: ", "))")
            }
        }
        guard report.succeeded && failedSteps.isEmpty else {
            let pubsub = report.pubsub.map { ", \($0.lost) lost, \($0.duplicated) duplicated and \($0.out_of_order) reordered messages" } ?? ""
            let counted = report.writes?.on_primaries.map { ", \($0) keys counted on the primaries for \(report.writes?.acknowledged ?? 0) acknowledged" } ?? ""
            print("FAILED: \(report.commands.failed) failed commands, \(report.writes?.lost ?? 0) lost writes\(counted)\(pubsub), \(failedSteps.count) failed steps")
            throw ExitCode(1)
        }
        print(
            "OK: zero failed commands and zero lost writes\(report.pubsub == nil ? "" : ", no message lost outside a signalled gap or delivered twice,") through the whole rotation"
        )
    }

    /// The cluster flow: 3 primaries with a replica each, the users `app` (traffic) and `ops` (the
    /// operator, same password on every node, since ACLs are per node), traffic through the cluster
    /// client, and every step applied to every node.
    private func clusterDemo() async throws {
        let password = RedisPasswordRotation.randomPassword()
        let operatorPassword = RedisPasswordRotation.randomPassword()
        self.say("starting a Redis Cluster (3 primaries, 3 replicas) with ACL users...")
        let configuration = RedisClusterProcess.Configuration(
            users: [.init(name: "app", passwords: [password]), .init(name: "ops", passwords: [operatorPassword])]
        )
        try await RedisClusterProcess.withCluster(configuration) { cluster in
            let seed = cluster.nodes[0]
            let folder = seed.directory
            let passwordFile = folder.appendingPathComponent("app.password").path
            try RedisCredentialFile(password: password, version: "v1").write(to: passwordFile)
            self.say("cluster nodes on 127.0.0.1: \(cluster.nodes.map { ":\($0.port)" }.joined(separator: " ")) (pids \(cluster.nodes.map { "\($0.pid)" }.joined(separator: " ")))")

            let node = RedisClientConfiguration(
                host: seed.host,
                port: seed.port,
                name: "demo",
                pool: .init(minimumConnections: 4, maximumConnections: 16, leaseTimeout: .seconds(10))
            )
            let client = try RedisClusterClient(
                configuration: RedisClusterConfiguration(seeds: [.init(host: seed.host, port: seed.port)], node: node),
                credentials: .file(passwordFile, username: "app", pollInterval: .seconds(5))
            )

            // Every step goes through RedisRotationAdmin, on every node the discovery finds.
            let adminConfiguration = RedisConnectionConfiguration(
                host: seed.host,
                port: seed.port,
                username: "ops",
                password: operatorPassword,
                name: "demo-admin"
            )
            let operations = try await RedisClusterOperations.connect(configuration: adminConfiguration)
            defer { Task { await operations.close() } }
            let topology = operations.topology
            self.say("the operator reaches \(topology.nodes.count) nodes: \(topology.addresses.joined(separator: " "))")
            let rotation = RedisPasswordRotation(
                topology: topology,
                options: .init(user: "app", passwordFile: passwordFile, version: "v2", clientWait: .seconds(30), pollInterval: .milliseconds(50))
            )
            let d = Double(self.duration)
            func at(_ fraction: Double) -> Duration { .milliseconds(Int64(d * fraction * 1000)) }
            let steps: [RotationStep] = [
                RotationStep(name: "1 add a second password on every node (ACL SETUSER app >new, ACL SAVE)", at: at(0.10)) {
                    try await rotation.prepare()
                    try await rotation.addPassword()
                },
                RotationStep(name: "2 publish it to the password file (atomic rename)", at: at(0.18)) {
                    try await rotation.publish()
                    try await rotation.waitForClients()
                },
                RotationStep(name: "3 remove the old password on every node (ACL SETUSER app resetpass >new, ACL SAVE)", at: at(0.28)) {
                    try await rotation.removeOldPasswords()
                },
                RotationStep(name: "4 kill the user's connections on every node (CLIENT KILL ID each of app)", at: at(0.38)) {
                    for admin in topology.nodes { try await admin.killConnections(of: "app") }
                },
                RotationStep(name: "5 fail a shard over (CLUSTER FAILOVER on its replica)", at: at(0.50)) {
                    let (from, to) = try await operations.failoverSomeShard()
                    self.say("failover: \(to) replaced \(from) as primary")
                },
                RotationStep(name: "6 migrate 100 slots (SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE)", at: at(0.64)) {
                    let (slots, from, to) = try await operations.migrateSomeSlots(count: 100)
                    self.say("migrated slots \(slots.lowerBound)-\(slots.upperBound) from \(from) to \(to)")
                },
                RotationStep(name: "7 steady state on the new password and topology", at: at(0.84)) {},
            ]
            let workload = Workload(
                duration: .seconds(self.duration),
                concurrency: self.concurrency,
                rate: 0,
                readRatio: 0.7,
                keys: 10_000,
                valueSize: 64,
                keyPrefix: "demo",
                verifyWrites: true
            )
            let report = try await LoadRun.execute(client: client, workload: workload, steps: steps, progress: true)
            let redirections = client.redirectionsFollowed
            self.say("redirections followed: \(redirections.moved) MOVED, \(redirections.ask) ASK")
            try self.conclude(report, title: "redis-rotation demo --cluster")
        }
    }
}
