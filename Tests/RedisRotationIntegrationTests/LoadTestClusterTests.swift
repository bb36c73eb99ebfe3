import Foundation
import RedisRotation
import RedisRotationAdmin
import RedisRotationTesting
import Testing

/// `loadtest --cluster` and `demo --cluster` against real 3 + 3 clusters on loopback.
@Suite("redis-rotation loadtest --cluster", .timeLimit(.minutes(4)))
struct LoadTestClusterTests {
    @Test("loadtest --cluster with password@, kill@, failover@ and migrate@ under 32 tasks: exit 0, no failed command, every acknowledged key on the primaries, every node on the new password")
    func loadtestCluster() async throws {
        try await withOperatorCluster { cluster, password, opsPassword in
            let folder = cluster.nodes[0].directory
            let passwordFile = folder.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: password))\nversion=v1\n", to: passwordFile)
            let adminFile = folder.appendingPathComponent("ops.password").path
            try writeAtomically("\(text(of: opsPassword))\n", to: adminFile)
            let report = folder.appendingPathComponent("report.json").path
            let html = folder.appendingPathComponent("report.html").path
            let before = try await cluster.topology()

            let (status, stdout, stderr) = try await runTool(
                [
                    "loadtest", "--cluster", "--port", "\(cluster.nodes[0].port)", "--user", "alice", "--password-file", passwordFile,
                    "--duration", "14", "--concurrency", "32", "--verify-writes", "--key-prefix", "ltc", "--progress",
                    "--report-json", report, "--report-html", html,
                    "--rotate", "password@1", "--rotate", "kill@4", "--rotate", "failover@6", "--rotate", "migrate@8",
                    "--admin-user", "ops", "--admin-password-file", adminFile,
                ],
                timeout: .seconds(150)
            )
            #expect(status == 0, "stdout: \(stdout)\nstderr: \(stderr)")
            let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any] ?? [:]
            let commands = json["commands"] as? [String: Int] ?? [:]
            let writes = json["writes"] as? [String: Int] ?? [:]
            #expect(commands["failed"] == 0)
            #expect((writes["acknowledged"] ?? 0) > 0)
            #expect(writes["lost"] == 0)
            #expect(writes["on_primaries"] == writes["acknowledged"], "keys summed over the primaries: \(writes)")
            let events = json["events"] as? [[String: Any]] ?? []
            #expect(!events.contains { $0["kind"] as? String == "stepFailed" }, "\(events.filter { $0["kind"] as? String == "stepFailed" })")
            let steps = events.filter { $0["kind"] as? String == "step" }.compactMap { $0["detail"] as? String }
            for expected in ["rotate password", "kill connections", "fail over", "migrate 100 slots"] {
                #expect(steps.contains { $0.hasPrefix(expected) }, "no step \(expected) in \(steps)")
            }
            #expect((json["reconnects"] as? Int ?? 0) >= 3, "the kill replaces a connection on every primary")
            let byNode = json["connections_by_node"] as? [String: [String: Int]] ?? [:]
            #expect(byNode.count >= 3, "\(byNode)")
            #expect(FileManager.default.fileExists(atPath: html))
            // The progress line shows each node's connections by version, short host:port first.
            #expect(stderr.contains(":\(cluster.nodes[0].port) v"), "\(stderr.suffix(2000))")

            // Every node has exactly the password in the file.
            let file = try RedisCredentialFile.read(from: passwordFile)
            #expect(file.version != "v1")
            for node in cluster.nodes {
                let admin = try await RedisServerAdmin.connect(configuration: node.adminConnectionConfiguration())
                #expect(try await admin.passwordHashes(of: "alice") == [file.password.sha256Hex], "node :\(node.port)")
                await admin.close()
            }
            // A shard changed primary and 100 slots changed shard.
            let after = try await cluster.topology()
            let primaries = { (topology: RedisClusterTopology) in Set(topology.shards.compactMap(\.primary?.id)) }
            #expect(primaries(after) != primaries(before), "no replica was promoted")
            #expect(after.shard(forSlot: 16383)?.primary?.id != after.shard(forSlot: 16000)?.primary?.id, "the last 100 slots did not move")
        }
    }

    @Test("loadtest --cluster --tls on a TLS-only cluster: password@, kill@, failover@ and migrate@ with no failed command and no lost write")
    func loadtestTLSCluster() async throws {
        let authority = try TestCertificateAuthority(name: "Loadtest Cluster CA \(UUID().uuidString.prefix(6))")
        let password = makePassword()
        let opsPassword = makePassword()
        let users: [RedisServerProcess.User] = [.init(name: "alice", passwords: [password]), .init(name: "ops", passwords: [opsPassword])]
        try await RedisClusterProcess.withCluster(.init(users: users, tlsAuthority: authority)) { cluster in
            let folder = cluster.nodes[0].directory
            let passwordFile = folder.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: password))\nversion=v1\n", to: passwordFile)
            let adminFile = folder.appendingPathComponent("ops.password").path
            try writeAtomically("\(text(of: opsPassword))\n", to: adminFile)
            let caFile = folder.appendingPathComponent("ca.pem").path
            try authority.certificate.certificatePEM.write(toFile: caFile, atomically: true, encoding: .utf8)
            let report = folder.appendingPathComponent("report.json").path

            let (status, stdout, stderr) = try await runTool(
                [
                    "loadtest", "--cluster", "--port", "\(cluster.nodes[0].port)", "--tls", "--ca-file", caFile,
                    "--user", "alice", "--password-file", passwordFile,
                    "--duration", "12", "--concurrency", "32", "--verify-writes", "--key-prefix", "ltct", "--report-json", report,
                    "--rotate", "password@1", "--rotate", "kill@3", "--rotate", "failover@5", "--rotate", "migrate@7",
                    "--admin-user", "ops", "--admin-password-file", adminFile,
                ],
                timeout: .seconds(150)
            )
            #expect(status == 0, "stdout: \(stdout)\nstderr: \(stderr)")
            let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any] ?? [:]
            let writes = json["writes"] as? [String: Int] ?? [:]
            #expect((json["commands"] as? [String: Int])?["failed"] == 0)
            #expect((writes["acknowledged"] ?? 0) > 0 && writes["lost"] == 0 && writes["on_primaries"] == writes["acknowledged"], "\(writes)")
            let events = json["events"] as? [[String: Any]] ?? []
            #expect(!events.contains { $0["kind"] as? String == "stepFailed" }, "\(events.filter { $0["kind"] as? String == "stepFailed" })")
            let file = try RedisCredentialFile.read(from: passwordFile)
            for node in cluster.nodes {
                let admin = try await RedisServerAdmin.connect(configuration: node.adminConnectionConfiguration())
                #expect(try await admin.passwordHashes(of: "alice") == [file.password.sha256Hex], "node :\(node.port)")
                await admin.close()
            }
        }
    }

    @Test("failover@ and migrate@ need --cluster; --subscribers is refused with --cluster: exit 2 with the reason")
    func clusterValidation() async throws {
        let cases: [([String], String)] = [
            (["--rotate", "failover@1", "--admin-user", "a", "--admin-password-file", "/dev/null"], "--rotate failover@1 needs --cluster"),
            (["--rotate", "migrate@1", "--admin-user", "a", "--admin-password-file", "/dev/null"], "--rotate migrate@1 needs --cluster"),
            (["--cluster", "--subscribers", "2"], "--subscribers is not supported with --cluster"),
            (["--rotate", "reshard@1"], "failover@SECONDS or migrate@SECONDS"),
        ]
        for (arguments, reason) in cases {
            let (status, stdout, stderr) = try await runTool(["loadtest", "--port", "6399", "--password-file", "/dev/null", "--duration", "1"] + arguments)
            #expect(status == 64 || status == 2, "\(arguments): \(status)")
            #expect((stdout + stderr).contains(reason), "\(arguments): \(stdout)\(stderr)")
        }
    }

    @Test("demo --cluster runs its whole flow on its own cluster: exit 0, zero failed, zero lost")
    func demoCluster() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("demo-cluster-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let report = folder.appendingPathComponent("demo.json").path
        let (status, stdout, stderr) = try await runTool(
            ["demo", "--cluster", "--duration", "20", "--report-json", report, "--report-html", folder.appendingPathComponent("demo.html").path],
            timeout: .seconds(180)
        )
        #expect(status == 0, "stdout: \(stdout)\nstderr: \(stderr)")
        #expect(stdout.contains("OK: zero failed commands and zero lost writes"), "\(stdout)")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any] ?? [:]
        let writes = json["writes"] as? [String: Int] ?? [:]
        #expect((json["commands"] as? [String: Int])?["failed"] == 0)
        #expect(writes["lost"] == 0 && writes["on_primaries"] == writes["acknowledged"], "\(writes)")
        let steps = (json["events"] as? [[String: Any]] ?? []).filter { $0["kind"] as? String == "step" }.compactMap { $0["detail"] as? String }
        #expect(steps.contains { $0.hasPrefix("5 fail a shard over") } && steps.contains { $0.hasPrefix("6 migrate 100 slots") }, "\(steps)")
        // Every node the demo started is stopped.
        #expect(stderr.contains("cluster nodes on 127.0.0.1"))
    }
}
