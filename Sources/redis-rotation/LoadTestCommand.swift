import ArgumentParser
import Dispatch
import Foundation
import RedisRotation
import RedisRotationAdmin

/// `redis-rotation loadtest`: traffic against a server the user names, with rotation steps performed by
/// the tool or happening outside it (the password, certificate and CA files are watched).
struct LoadTestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loadtest",
        abstract: "Drive GET/SET traffic through the rotation-aware client and report what happened.",
        discussion: """
            The password, CA, certificate and key files are watched while the test runs, exactly as the
            library watches them, so another process can rotate them. Ctrl-C ends the traffic early: the
            writes are still verified and the report written (a second Ctrl-C quits at once). Exit status:
            0 when no command failed and no write was lost, 1 otherwise, 2 for a usage or configuration
            error.
            """
    )

    @Option(help: "The server as a URL, instead of the options below: redis://user@host:port?password_file=PATH, or rediss://...&ca_file=PATH&cert_file=PATH&key_file=PATH&server_name=NAME for TLS. A password in the URL works but cannot rotate: prefer password_file.")
    var url: String?
    @Option(help: "Server host (default 127.0.0.1; only loopback is used in this project's tests).") var host: String?
    @Option(help: "Server port (default 6379).") var port: Int?
    @Flag(help: "Connect with TLS.") var tls = false
    @Option(help: "PEM file of the CA(s) to trust (with --tls).") var caFile: String?
    @Option(help: "PEM file of the client certificate for mutual TLS.") var certFile: String?
    @Option(help: "PEM file of the client key for mutual TLS.") var keyFile: String?
    @Option(help: "Name the server certificate must carry (default: the host).") var serverName: String?
    @Option(help: "ACL user (default: default).") var user: String?
    @Option(help: "File holding the password (plain, or password=/version= lines); watched. Required without --url.") var passwordFile: String?

    @Option(help: "Seconds of traffic; longer when a --rotate step is still running then (every step runs).") var duration = 30
    @Option(help: "Concurrent tasks.") var concurrency = 32
    @Option(help: "Operations per second in total; 0 runs unthrottled (latency then counts from each operation's intended start).") var rate = 0
    @Option(help: "Fraction of operations that are reads.") var readRatio = 0.8
    @Option(help: "Keys read and written (without --verify-writes).") var keys = 10_000
    @Option(help: "Bytes per value written.") var valueSize = 64
    @Option(help: "Prefix of every key the test touches.") var keyPrefix = "redis-rotation-loadtest"
    @Flag(help: "Write every value to a new key and count the keys on the server at the end.") var verifyWrites = false
    @Option(help: "Subscriptions to one channel, fed numbered messages (one at a time, at most one a millisecond) for the whole run; the report counts lost, duplicated and out-of-order messages and gaps.") var subscribers = 0

    @Flag(help: "The server is a node of a Redis Cluster (the seed): traffic goes through the cluster client to every primary, and --rotate steps reach every node.") var cluster = false

    @Option(name: .customLong("rotate"), help: "A step the tool performs: password@SECONDS or kill@SECONDS (repeatable); with --cluster also failover@SECONDS (a replica promoted with CLUSTER FAILOVER) and migrate@SECONDS (100 slots moved between two primaries).")
    var rotations: [String] = []
    @Option(help: "ACL user for the rotation steps.") var adminUser: String?
    @Option(help: "File holding the admin password.") var adminPasswordFile: String?
    @Flag(help: "With --rotate password@N: accept a server that cannot persist ACL changes.") var noPersist = false

    @Option(help: "Write the JSON report here.") var reportJson: String?
    @Option(help: "Write the HTML timeline here.") var reportHtml: String?
    @Flag(help: "Print a progress line every second.") var progress = false

    /// Where and as whom the traffic goes: from `--url`, or from the separate options.
    struct Target {
        var host: String
        var port: Int
        var database: Int?
        var tls: RedisClientConfiguration.TLS?
        var serverName: String?
        var user: String
        var passwordFile: String?
        var credentials: RedisCredentialSource
    }

    func target() throws -> Target {
        if let url = self.url {
            let parsed: RedisURL
            do {
                parsed = try RedisURL(url)
            } catch {
                throw ValidationError("--url: \(error.message)")
            }
            return Target(
                host: parsed.configuration.host,
                port: parsed.configuration.port,
                database: parsed.configuration.database,
                tls: parsed.configuration.tls,
                serverName: parsed.configuration.tls?.serverName,
                user: parsed.username,
                passwordFile: parsed.passwordFile,
                credentials: parsed.credentials
            )
        }
        guard let passwordFile = self.passwordFile else { throw ValidationError("give --url or --password-file") }
        var tlsSettings: RedisClientConfiguration.TLS?
        if self.tls {
            let identity = self.certFile.map { RedisTLSClientIdentity(certificateChain: .file($0), privateKey: .file(self.keyFile!)) }
            tlsSettings = .reloading(
                RedisTLSConfiguration(trustAnchors: self.caFile.map { [.file($0)] } ?? [], clientIdentity: identity),
                serverName: self.serverName,
                pollInterval: .seconds(5),
                rolloverWindow: .seconds(5)
            )
        }
        let user = self.user ?? "default"
        return Target(
            host: self.host ?? "127.0.0.1",
            port: self.port ?? 6379,
            database: nil,
            tls: tlsSettings,
            serverName: self.serverName,
            user: user,
            passwordFile: passwordFile,
            credentials: .file(passwordFile, username: user, pollInterval: .seconds(5))
        )
    }

    func validate() throws {
        if self.url != nil {
            let separate: [(String, Bool)] = [
                ("--host", self.host != nil), ("--port", self.port != nil), ("--tls", self.tls), ("--ca-file", self.caFile != nil),
                ("--cert-file", self.certFile != nil), ("--key-file", self.keyFile != nil), ("--server-name", self.serverName != nil),
                ("--user", self.user != nil), ("--password-file", self.passwordFile != nil),
            ]
            if let (flag, _) = separate.first(where: \.1) { throw ValidationError("--url already says it all: leave out \(flag)") }
        }
        let target = try self.target()
        guard (1...65535).contains(target.port) else { throw ValidationError("--port must be between 1 and 65535") }
        guard self.duration > 0, self.concurrency > 0, self.rate >= 0, self.keys > 0, self.valueSize >= 0 else {
            throw ValidationError("--duration, --concurrency and --keys must be positive; --rate and --value-size not negative")
        }
        guard (0...1).contains(self.readRatio) else { throw ValidationError("--read-ratio must be between 0 and 1") }
        guard (0...1000).contains(self.subscribers) else { throw ValidationError("--subscribers must be between 0 and 1000") }
        if self.cluster {
            if self.subscribers > 0 { throw ValidationError("--subscribers is not supported with --cluster yet") }
            if let database = target.database, database != 0 { throw ValidationError("--cluster: Redis Cluster has only database 0") }
        }
        if !self.tls && (self.caFile != nil || self.certFile != nil || self.keyFile != nil) {
            throw ValidationError("--ca-file, --cert-file and --key-file need --tls")
        }
        if (self.certFile == nil) != (self.keyFile == nil) { throw ValidationError("--cert-file and --key-file go together") }
        for step in self.rotations {
            let (kind, _) = try Self.parseStep(step)
            if ["failover", "migrate"].contains(kind) && !self.cluster { throw ValidationError("--rotate \(step) needs --cluster") }
        }
        if !self.rotations.isEmpty && (self.adminUser == nil || self.adminPasswordFile == nil) {
            throw ValidationError("--rotate needs --admin-user and --admin-password-file")
        }
        if !self.rotations.isEmpty && target.passwordFile == nil {
            throw ValidationError("--rotate needs the user's password in a file (--password-file, or password_file in --url) to rotate it")
        }
        for (flag, path) in [("--password-file", target.passwordFile), ("--ca-file", self.caFile), ("--cert-file", self.certFile), ("--key-file", self.keyFile), ("--admin-password-file", self.adminPasswordFile)] {
            if let path, !FileManager.default.isReadableFile(atPath: path) {
                throw ValidationError("\(flag) \(path): no such file, or not readable")
            }
        }
    }

    static func parseStep(_ text: String) throws -> (kind: String, at: Int) {
        let parts = text.split(separator: "@")
        guard parts.count == 2, ["password", "kill", "failover", "migrate"].contains(parts[0]), let at = Int(parts[1]), at >= 0 else {
            throw ValidationError("--rotate \(text): expected password@SECONDS, kill@SECONDS, failover@SECONDS or migrate@SECONDS")
        }
        return (String(parts[0]), at)
    }

    func run() async throws {
        let target = try self.target()
        let nodeConfiguration = RedisClientConfiguration(
            host: target.host,
            port: target.port,
            database: self.cluster ? nil : target.database,
            name: "loadtest",
            tls: target.tls,
            pool: .init(minimumConnections: 1, maximumConnections: max(1, min(self.concurrency, 64)), leaseTimeout: .seconds(10))
        )
        let client: RedisClient
        let clusterClient: RedisClusterClient?
        do {
            // The seed's pool gives the TLS context the rotation steps connect with; with --cluster it
            // carries no traffic (the cluster client keeps a pool per node).
            client = try RedisClient(configuration: nodeConfiguration, credentials: target.credentials)
            clusterClient = self.cluster
                ? try RedisClusterClient(
                    configuration: RedisClusterConfiguration(seeds: [.init(host: target.host, port: target.port)], node: nodeConfiguration),
                    credentials: target.credentials
                ) : nil
        } catch let error as RedisError {
            throw RunFailure(description: error.message, exitCode: 2)
        }
        let steps = try self.rotationSteps(client: client, target: target)
        let workload = Workload(
            duration: .seconds(self.duration),
            concurrency: self.concurrency,
            rate: self.rate,
            readRatio: self.readRatio,
            keys: self.keys,
            valueSize: self.valueSize,
            keyPrefix: self.keyPrefix,
            verifyWrites: self.verifyWrites,
            // A cluster run counts its keys on every primary by pattern: they must be this run's only.
            runTag: self.cluster && self.verifyWrites ? String(UInt32.random(in: .min ... .max), radix: 16) : nil
        )
        // Ctrl-C ends the traffic, not the run: what was acknowledged is still verified and reported.
        let stop = TrafficStop()
        signal(SIGINT, SIG_IGN)
        let interrupt = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        interrupt.setEventHandler {
            guard !stop.isRequested else { return }
            stop.request()
            signal(SIGINT, SIG_DFL)  // A second Ctrl-C quits at once.
            FileHandle.standardError.write(Data("interrupted: stopping the traffic, then verifying and reporting\n".utf8))
        }
        interrupt.resume()
        defer {
            interrupt.cancel()
            signal(SIGINT, SIG_DFL)
        }
        let report: LoadReport
        if let clusterClient {
            report = try await LoadRun.execute(client: clusterClient, workload: workload, steps: steps, progress: self.progress, stop: stop)
        } else {
            report = try await LoadRun.execute(
                client: client,
                workload: workload,
                steps: steps,
                progress: self.progress,
                subscribers: self.subscribers,
                stop: stop
            )
        }
        print(report.text())
        if let path = self.reportJson { try report.json().write(to: URL(fileURLWithPath: path)) }
        if let path = self.reportHtml {
            try report.html(title: "redis-rotation loadtest \(self.cluster ? "--cluster " : "")\(target.host):\(target.port)").write(toFile: path, atomically: true, encoding: .utf8)
        }
        // A rotation step that failed fails the run too: the rotation it was meant to exercise did not happen.
        let failedSteps = report.events.filter { $0.kind == "stepFailed" }
        for failed in failedSteps { print("step failed: \(failed.detail)") }
        if !report.succeeded || !failedSteps.isEmpty { throw ExitCode(1) }
    }

    /// The steps of `--rotate`, performed through RedisRotationAdmin on the server and its replicas (every
    /// node of the cluster with `--cluster`: discovery follows `CLUSTER NODES`).
    private func rotationSteps(client: RedisClient, target: Target) throws -> [RotationStep] {
        guard !self.rotations.isEmpty, let adminUser = self.adminUser, let adminPasswordFile = self.adminPasswordFile,
            let passwordFile = target.passwordFile
        else { return [] }
        let adminPassword: RedisSecret
        do {
            adminPassword = try RedisCredentialFile.read(from: adminPasswordFile).password
        } catch {
            throw RunFailure(description: "--admin-password-file: \(error.message)", exitCode: 2)
        }
        let adminConfiguration = RedisConnectionConfiguration(
            host: target.host,
            port: target.port,
            username: adminUser,
            password: adminPassword,
            name: "loadtest-admin",
            tls: client.currentTLSContext.map { .init(context: $0, serverName: target.serverName) }
        )
        let options = RedisPasswordRotation.Options(
            user: target.user,
            passwordFile: passwordFile,
            clientWait: .seconds(60),
            pollInterval: .milliseconds(50),
            allowUnpersisted: self.noPersist
        )
        let user = target.user
        return try self.rotations.map { text in
            let (kind, at) = try Self.parseStep(text)
            switch kind {
            case "failover":
                return RotationStep(name: "fail over a shard (CLUSTER FAILOVER on a replica)", at: .seconds(at)) {
                    let operations = try await RedisClusterOperations.connect(configuration: adminConfiguration)
                    defer { Task { await operations.close() } }
                    try await operations.failoverSomeShard()
                }
            case "migrate":
                return RotationStep(name: "migrate 100 slots (SETSLOT, MIGRATE)", at: .seconds(at)) {
                    let operations = try await RedisClusterOperations.connect(configuration: adminConfiguration)
                    defer { Task { await operations.close() } }
                    try await operations.migrateSomeSlots(count: 100)
                }
            case "kill":
                return RotationStep(name: "kill connections of \(user)", at: .seconds(at)) {
                    let topology = try await RedisAdminTopology.discover(configuration: adminConfiguration)
                    defer { Task { await topology.close() } }
                    for node in topology.nodes { try await node.killConnections(of: user) }
                }
            default:
                return RotationStep(name: "rotate password of \(user)", at: .seconds(at)) {
                    let topology = try await RedisAdminTopology.discover(configuration: adminConfiguration)
                    defer { Task { await topology.close() } }
                    try await RedisPasswordRotation(topology: topology, options: options).run()
                }
            }
        }
    }
}
