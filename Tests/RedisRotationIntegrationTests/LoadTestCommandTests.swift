import Foundation
import RedisRotation
import RedisRotationAdmin
import RedisRotationTesting
import Testing

/// The `redis-rotation` binary next to the test bundle (SwiftPM builds it with the tests).
func redisRotationBinary() throws -> String {
    try builtExecutable("redis-rotation")
}

/// An executable of this package (the tool, an example) next to the test bundle.
func builtExecutable(_ name: String) throws -> String {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let candidates = [
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name).path,
        root.appendingPathComponent(".build/debug/\(name)").path,
        // An example in a package of its own (scripts/test.sh builds it).
        root.appendingPathComponent("Examples/\(name)/.build/debug/\(name)").path,
    ]
    guard let path = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        throw RedisError(code: .invalidArgument, message: "\(name) is not built: run swift build first (looked in \(candidates))")
    }
    return path
}

/// The running `redis-rotation`, as ``runTool(_:timeout:whileRunning:)`` hands it to its body.
struct RunningTool: Sendable {
    fileprivate let pid: Int32
    fileprivate let finished: StopFlag

    /// Sends SIGINT (Ctrl-C); false when the tool had already exited, so that nothing was sent.
    func interrupt() -> Bool {
        guard !self.finished.isStopped else { return false }
        return kill(self.pid, SIGINT) == 0
    }

    /// Sends SIGTERM, as a service manager stops a service; false when it had already exited.
    func terminate() -> Bool {
        guard !self.finished.isStopped else { return false }
        return kill(self.pid, SIGTERM) == 0
    }
}

/// Runs `redis-rotation` with `arguments`, and `whileRunning` once it started; returns its exit status
/// and output (bounded by `timeout`).
func runTool(
    _ arguments: [String],
    executable: String = "redis-rotation",
    timeout: Duration = .seconds(120),
    whileRunning: (RunningTool) async throws -> Void = { _ in }
) async throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: try builtExecutable(executable))
    process.arguments = arguments
    let output = Pipe()
    let errors = Pipe()
    process.standardOutput = output
    process.standardError = errors
    let finished = StopFlag()
    process.terminationHandler = { _ in finished.stop() }
    try process.run()
    // Drain the pipes on threads of their own while it runs (a blocking read must not occupy the
    // concurrency pool's few threads), so that it never blocks on a full pipe.
    async let out = readOnThread(output.fileHandleForReading)
    async let err = readOnThread(errors.fileHandleForReading)
    let deadline = ContinuousClock.now + timeout
    do {
        try await whileRunning(RunningTool(pid: process.processIdentifier, finished: finished))
    } catch {
        if !finished.isStopped { process.terminate() }
        process.waitUntilExit()
        _ = await (out, err)
        throw error
    }
    while !finished.isStopped && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
    if !finished.isStopped {
        process.terminate()
        Issue.record("\(executable) \(arguments.first ?? "") did not finish within \(timeout)")
    }
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: await out, as: UTF8.self), String(decoding: await err, as: UTF8.self))
}

/// Reads `handle` to its end on a dedicated thread.
func readOnThread(_ handle: FileHandle) async -> Data {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: handle.readDataToEndOfFile()) }.start()
    }
}

@Suite("redis-rotation loadtest", .timeLimit(.minutes(3)))
struct LoadTestCommandTests {
    @Test("loadtest over TLS while the test rotates the password, kills connections and replaces the server certificate")
    func rotationUnderLoadtest() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(keepPlainTextPort: true)) { server in
            let folder = server.directory
            let passwordFile = folder.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: fixture.password))\nversion=v1\n", to: passwordFile)
            let caFile = folder.appendingPathComponent("ca.pem").path
            try fixture.ca.certificate.certificatePEM.write(toFile: caFile, atomically: true, encoding: .utf8)
            let report = folder.appendingPathComponent("report.json").path
            let html = folder.appendingPathComponent("report.html").path

            async let run = runTool([
                "loadtest", "--host", "127.0.0.1", "--port", "\(server.port)", "--tls", "--ca-file", caFile,
                "--server-name", "localhost", "--user", "alice", "--password-file", passwordFile,
                "--duration", "12", "--concurrency", "8", "--verify-writes", "--key-prefix", "lt",
                "--report-json", report, "--report-html", html,
            ])

            await eventually("the load test's connections are up") {
                (try? await server.clients(of: "alice").contains { $0["name"] == "loadtest@v1" }) == true
            }
            // The password, rotated outside the tool: add, publish, wait until every connection moved, remove.
            let new = makePassword()
            try await server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
            try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: passwordFile)
            await eventually("every load test connection is on v2") {
                let names = (try? await server.clients(of: "alice").compactMap { $0["name"] }.filter { $0.hasPrefix("loadtest@") }) ?? []
                return !names.isEmpty && names.allSatisfy { $0 == "loadtest@v2" }
            }
            try await server.admin("ACL", "SETUSER", "alice", .string("<\(text(of: fixture.password))"))
            try await server.admin("CLIENT", "KILL", "USER", "alice")
            // A new server certificate from the same CA, then everyone reconnects.
            let renewed = try fixture.ca.issueServer(commonName: "renewed").write(to: folder, name: "server-renewed")
            try await server.admin("CONFIG", "SET", "tls-cert-file", .string(renewed.certificate), "tls-key-file", .string(renewed.privateKey))
            try await server.admin("CLIENT", "KILL", "USER", "alice")

            let (status, stdout, stderr) = try await run
            #expect(status == 0, "stdout: \(stdout)\nstderr: \(stderr)")
            let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any] ?? [:]
            let commands = json["commands"] as? [String: Int] ?? [:]
            let writes = json["writes"] as? [String: Int] ?? [:]
            #expect(commands["failed"] == 0)
            #expect((commands["ok"] ?? 0) > 0)
            #expect(writes["lost"] == 0)
            for key in ["duration_s", "latency_us", "reconnects", "reauthentications", "events", "timeline"] {
                #expect(json[key] != nil, "JSON lacks \(key)")
            }
            #expect((json["reconnects"] as? Int ?? 0) >= 2, "two kills replace connections")
            #expect(FileManager.default.fileExists(atPath: html))

            // The keys on the server are exactly the acknowledged writes.
            let admin = try await server.adminConnection()
            var cursor = "0"
            var found = 0
            repeat {
                let reply = try await admin.send(RedisCommand("SCAN", .string(cursor), "MATCH", "lt:w:*", "COUNT", "1000"))
                cursor = reply.array?[0].string ?? "0"
                found += reply.array?[1].array?.count ?? 0
            } while cursor != "0"
            await admin.close()
            #expect(found == writes["acknowledged"])
        }
    }

    @Test("loadtest --url ... --rotate password@N rotates through RedisRotationAdmin: no failed command, one password left, the file's")
    func rotationPerformedByTheTool() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let passwordFile = server.directory.appendingPathComponent("alice.password").path
            // Not readable by others: rotate password refuses such a file.
            try writeAtomically("password=\(text(of: password))\nversion=v1\n", to: passwordFile)
            let adminFile = server.directory.appendingPathComponent("admin.password").path
            try text(of: server.adminPassword).write(toFile: adminFile, atomically: true, encoding: .utf8)
            let report = server.directory.appendingPathComponent("report.json").path
            // The server, user and password file as one URL (--url), as an application would configure them.
            let url = "redis://alice@127.0.0.1:\(server.port)?password_file=\(passwordFile.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? passwordFile)"
            let (status, stdout, stderr) = try await runTool([
                "loadtest", "--url", url,
                "--duration", "8", "--concurrency", "4", "--verify-writes", "--key-prefix", "ltr", "--report-json", report,
                "--rotate", "password@2", "--rotate", "kill@6", "--admin-user", server.adminUsername, "--admin-password-file", adminFile,
            ])
            #expect(status == 0, "stdout: \(stdout)\nstderr: \(stderr)")
            let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any] ?? [:]
            #expect((json["commands"] as? [String: Int])?["failed"] == 0)
            let events = json["events"] as? [[String: Any]] ?? []
            #expect(!events.contains { $0["kind"] as? String == "stepFailed" }, "\(events.filter { $0["kind"] as? String == "stepFailed" })")
            let file = try RedisCredentialFile.read(from: passwordFile)
            #expect(file.version != "v1")
            let node = try await RedisServerAdmin.connect(configuration: server.adminConnectionConfiguration())
            #expect(try await node.passwordHashes(of: "alice") == [file.password.sha256Hex])
            await node.close()
        }
    }

    @Test("--url with separate connection options, a bad URL, or --rotate without a password file: exit 2 with the reason, the password never shown")
    func urlValidation() async throws {
        let secret = "url-secret-\(UUID().uuidString)"
        let cases: [([String], String)] = [
            (["--url", "redis://alice@127.0.0.1:6399", "--port", "6399"], "leave out --port"),
            (["--url", "http://127.0.0.1"], "redis:// or rediss://"),
            (["--url", "redis://alice:\(secret)@127.0.0.1:6399", "--rotate", "password@1", "--admin-user", "a", "--admin-password-file", "/dev/null"], "password in a file"),
            ([], "--url or --password-file"),
        ]
        for (arguments, reason) in cases {
            let (status, stdout, stderr) = try await runTool(["loadtest"] + arguments + ["--duration", "1"])
            #expect(status == 64 || status == 2, "\(arguments): \(status)")
            #expect((stdout + stderr).contains(reason), "\(arguments): \(stdout)\(stderr)")
            #expect(!(stdout + stderr).contains(secret))
        }
    }

    @Test("loadtest --url redis://host:port/N sends its traffic to database N")
    func loadtestURLKeepsTheDatabase() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let passwordFile = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: password))\nversion=v1\n", to: passwordFile)
            let encodedFile = passwordFile.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? passwordFile
            let url = "redis://alice@127.0.0.1:\(server.port)/3?password_file=\(encodedFile)"
            let (status, stdout, stderr) = try await runTool([
                "loadtest", "--url", url, "--duration", "2", "--concurrency", "2", "--key-prefix", "ltdb",
            ])
            #expect(status == 0, "stdout: \(stdout)\nstderr: \(stderr)")
            let admin = try await server.adminConnection()
            let inDatabase0 = try await admin.send(RedisCommand("KEYS", "ltdb*")).array?.count ?? -1
            _ = try await admin.send(RedisCommand("SELECT", "3"))
            let inDatabase3 = try await admin.send(RedisCommand("KEYS", "ltdb*")).array?.count ?? -1
            await admin.close()
            #expect(inDatabase0 == 0, "the URL named database 3, but \(inDatabase0) loadtest keys are in database 0")
            #expect(inDatabase3 > 0, "the URL named database 3, which has no loadtest key")
        }
    }

    @Test("a --rotate step that fails fails the run, naming the step")
    func failedStepFailsTheRun() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let passwordFile = server.directory.appendingPathComponent("alice.password").path
            try "password=\(text(of: password))\nversion=v1\n".write(toFile: passwordFile, atomically: true, encoding: .utf8)
            let adminFile = server.directory.appendingPathComponent("admin.password").path
            try "not-the-admin-password\n".write(toFile: adminFile, atomically: true, encoding: .utf8)
            let (status, stdout, stderr) = try await runTool([
                "loadtest", "--port", "\(server.port)", "--user", "alice", "--password-file", passwordFile,
                "--duration", "3", "--concurrency", "2", "--key-prefix", "ltf",
                "--rotate", "password@1", "--admin-user", server.adminUsername, "--admin-password-file", adminFile,
            ])
            #expect(status == 1, "stdout: \(stdout)\nstderr: \(stderr)")
            #expect(stdout.contains("step failed: rotate password of alice"), "\(stdout)")
            #expect(try RedisCredentialFile.read(from: passwordFile).version == "v1")
        }
    }

    /// Written keys are counted per worker rather than listed; an acknowledged write that is not on the
    /// server must still be reported.
    ///
    /// The tool counts the keys after its traffic, so the deletions must come first. With a fixed
    /// duration they did not always: on a loaded machine this test's process was starved for seconds and
    /// deleted the second key after the tool had counted it ("1 lost"). Now the traffic runs until the
    /// test interrupts it (Ctrl-C), which it does only once both deletions have been answered.
    @Test("with --verify-writes, acknowledged keys deleted behind the tool's back are reported as lost, and the run fails")
    func lostWritesReported() async throws {
        let password = makePassword()
        try await withAliceServer(password: password) { server in
            let passwordFile = server.directory.appendingPathComponent("alice.password").path
            try "\(text(of: password))\n".write(toFile: passwordFile, atomically: true, encoding: .utf8)
            let report = server.directory.appendingPathComponent("report.json").path
            let (status, stdout, stderr) = try await runTool([
                "loadtest", "--port", "\(server.port)", "--user", "alice", "--password-file", passwordFile,
                "--duration", "100", "--concurrency", "4", "--verify-writes", "--key-prefix", "lost", "--report-json", report,
            ]) { tool in
                // A worker writes key n + 1 only after key n was acknowledged: once lost:w:<w>:1 exists,
                // lost:w:<w>:0 is an acknowledged write (a key written at the very end of the run might not be).
                var deleted: Set<Int> = []
                let admin = try await server.adminConnection()
                _ = try await eventually("two acknowledged keys deleted", timeout: .seconds(60)) {
                    for worker in 0..<2 where !deleted.contains(worker) {
                        if try await admin.send(RedisCommand("EXISTS", .string("lost:w:\(worker):1"))).int == 1,
                            try await admin.send(RedisCommand("DEL", .string("lost:w:\(worker):0"))).int == 1
                        {
                            deleted.insert(worker)
                        }
                    }
                    return deleted.count == 2
                }
                await admin.close()
                #expect(tool.interrupt(), "the tool ended before the test deleted the keys: its count may precede the deletions")
            }
            #expect(status == 1, "stdout: \(stdout)\nstderr: \(stderr)")
            #expect(stderr.contains("interrupted"), "\(stderr)")
            let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any] ?? [:]
            let writes = json["writes"] as? [String: Int] ?? [:]
            #expect(writes["lost"] == 2)
            #expect((writes["acknowledged"] ?? 0) > 2)
            #expect(writes["found"] == (writes["acknowledged"] ?? 0) - 2)
            #expect(stdout.contains("2 lost"), "\(stdout)")
        }
    }

    @Test("a missing file, a wrong password and a plain-text port given --tls each end with a one-line reason")
    func failures() async throws {
        let fixture = try TLSFixture()
        try await RedisServerProcess.withServer(fixture.serverConfiguration(keepPlainTextPort: true)) { server in
            let folder = server.directory
            let missing = try await runTool(["loadtest", "--port", "\(server.port)", "--password-file", "/nonexistent/password", "--duration", "1"])
            #expect(missing.status == 2)
            #expect(missing.stderr.contains("/nonexistent/password"), "\(missing.stderr)")

            let wrong = folder.appendingPathComponent("wrong.password").path
            try "not-the-password\n".write(toFile: wrong, atomically: true, encoding: .utf8)
            let caFile = folder.appendingPathComponent("ca.pem").path
            try fixture.ca.certificate.certificatePEM.write(toFile: caFile, atomically: true, encoding: .utf8)
            let rejected = try await runTool([
                "loadtest", "--port", "\(server.port)", "--tls", "--ca-file", caFile, "--server-name", "localhost",
                "--user", "alice", "--password-file", wrong, "--duration", "1",
            ])
            #expect(rejected.status == 1)
            #expect(rejected.stderr.contains("rejected"), "\(rejected.stderr)")
            #expect(rejected.stderr.split(separator: "\n").count == 1, "one line: \(rejected.stderr)")

            let good = folder.appendingPathComponent("good.password").path
            try "\(text(of: fixture.password))\n".write(toFile: good, atomically: true, encoding: .utf8)
            let plain = try await runTool([
                "loadtest", "--port", "\(try #require(server.plainTextPort))", "--tls", "--ca-file", caFile,
                "--user", "alice", "--password-file", good, "--duration", "1",
            ])
            #expect(plain.status == 1)
            #expect(plain.stderr.contains("TLS"), "\(plain.stderr)")

            let usage = try await runTool(["loadtest", "--password-file", good, "--read-ratio", "2"])
            #expect(usage.status == 2)
        }
    }
}
