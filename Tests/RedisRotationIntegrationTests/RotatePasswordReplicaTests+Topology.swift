import Foundation
import RedisRotation
import RedisRotationAdmin
import RedisRotationTesting
import Testing

/// Replication trees and the replication link: every node that serves clients gets the change, and
/// replication itself is never broken.
extension RotatePasswordReplicaTests {
    /// The administrator password file and alice's password file (v1) in `primary`'s folder.
    func files(_ primary: RedisServerProcess, password: RedisSecret) throws -> (passwordFile: String, adminFile: String) {
        let passwordFile = primary.directory.appendingPathComponent("alice.password").path
        try writeAtomically("password=\(text(of: password))\nversion=v1\n", to: passwordFile)
        let adminFile = primary.directory.appendingPathComponent("admin.password").path
        try text(of: primary.adminPassword).write(toFile: adminFile, atomically: true, encoding: .utf8)
        return (passwordFile, adminFile)
    }

    func arguments(_ target: RedisServerProcess, admin: RedisServerProcess, _ files: (passwordFile: String, adminFile: String), _ extra: [String]) -> [String] {
        [
            "rotate", "password", "--port", "\(target.port)", "--admin-user", admin.adminUsername,
            "--admin-password-file", files.adminFile, "--user", "alice", "--password-file", files.passwordFile,
        ] + extra
    }

    @Test("with cascading replication every node gets the new password, whichever node the tool is pointed at")
    func cascadingReplication() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { primary in
            try await self.withReplica(of: primary, password: old) { replica in
                try await RedisServerProcess.withServer(
                    .init(
                        users: [.init(name: "alice", passwords: [old])],
                        extraConfiguration: [
                            "replicaof 127.0.0.1 \(replica.port)", "masteruser \(primary.adminUsername)", "masterauth \(text(of: primary.adminPassword))",
                        ]
                    )
                ) { subReplica in
                    try await subReplica.admin("ACL", "SETUSER", .string(subReplica.adminUsername), .string(">\(text(of: primary.adminPassword))"))
                    try await subReplica.admin("ACL", "SAVE")
                    await eventually("the replica lists its sub-replica") {
                        ((try? await replica.admin("INFO", "replication").string) ?? "").contains("connected_slaves:1")
                    }
                    let files = try self.files(primary, password: old)
                    for (target, version) in [(primary, "v2"), (subReplica, "v3")] {
                        let result = try await runTool(self.arguments(target, admin: primary, files, ["--version", version, "--wait", "2", "--expect-nodes", "3"]))
                        #expect(result.status == 0, "pointed at :\(target.port): \(result.stdout)\(result.stderr)")
                        let new = try RedisCredentialFile.read(from: files.passwordFile).password
                        for server in [primary, replica, subReplica] {
                            #expect(result.stdout.contains("[add] 127.0.0.1:\(server.port):"), "\(result.stdout)")
                            let admin = try await RedisServerAdmin.connect(configuration: server.adminConnectionConfiguration())
                            #expect(try await admin.passwordHashes(of: "alice") == [new.sha256Hex], "on :\(server.port), pointed at :\(target.port)")
                            await admin.close()
                        }
                    }
                }
            }
        }
    }

    @Test("a replica that is down is refused with --expect-nodes; without it the count is shown")
    func replicaDownRefused() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { primary in
            try await self.withReplica(of: primary, password: old) { replica in
                await replica.stop()
                let node = try await RedisServerAdmin.connect(configuration: primary.adminConnectionConfiguration())
                await eventually("the primary no longer lists the replica") { (try? await node.replicas().count) == 0 }
                await node.close()
                let files = try self.files(primary, password: old)
                let refused = try await runTool(self.arguments(primary, admin: primary, files, ["--version", "v2", "--wait", "1", "--expect-nodes", "2"]))
                #expect(refused.status == 2, "\(refused.stdout)\(refused.stderr)")
                #expect(refused.stderr.contains("found 1 node(s)") && refused.stderr.contains("expected 2"), "\(refused.stderr)")
                #expect(try RedisCredentialFile.read(from: files.passwordFile).version == "v1")

                let counted = try await runTool(self.arguments(primary, admin: primary, files, ["--version", "v2", "--wait", "1", "--dry-run"]))
                #expect(counted.status == 0, "\(counted.stdout)\(counted.stderr)")
                #expect(counted.stdout.contains("found 1 node(s)") && counted.stdout.contains("--expect-nodes"), "\(counted.stdout)")
            }
        }
    }

    @Test("a replica reached as localhost and listed as 127.0.0.1 counts once: --expect-nodes still sees the replica that is down")
    func sameServerUnderTwoNamesCountsOnce() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { primary in
            try await self.withReplica(of: primary, password: old) { up in
                try await self.withReplica(of: primary, password: old, replicaCount: 2) { down in
                    await down.stop()
                    let node = try await RedisServerAdmin.connect(configuration: primary.adminConnectionConfiguration())
                    await eventually("the primary no longer lists the stopped replica") { (try? await node.replicas().count) == 1 }
                    await node.close()
                    let files = try self.files(primary, password: old)
                    let result = try await runTool(self.arguments(up, admin: primary, files, ["--host", "localhost", "--version", "v2", "--wait", "1", "--expect-nodes", "3"]))
                    #expect(result.status == 2, "\(result.stdout)\(result.stderr)")
                    #expect(result.stderr.contains("found 2 node(s)") && result.stderr.contains("expected 3"), "\(result.stderr)")
                    #expect(try RedisCredentialFile.read(from: files.passwordFile).version == "v1")
                    let admin = try await RedisServerAdmin.connect(configuration: up.adminConnectionConfiguration())
                    #expect(try await admin.passwordHashes(of: "alice") == [old.sha256Hex])
                    await admin.close()
                }
            }
        }
    }

    @Test("a topology naming one server twice is refused before any change")
    func sameServerTwiceRefused() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { primary in
            let files = try self.files(primary, password: old)
            var renamed = primary.adminConnectionConfiguration()
            renamed.host = "localhost"
            let nodes = [
                try await RedisServerAdmin.connect(configuration: primary.adminConnectionConfiguration()),
                try await RedisServerAdmin.connect(configuration: renamed),
            ]
            let rotation = RedisPasswordRotation(
                topology: RedisAdminTopology(nodes: nodes),
                options: .init(user: "alice", passwordFile: files.passwordFile, version: "v2", expectedNodeCount: 2)
            )
            let error = await #expect(throws: RedisAdminError.self) { try await rotation.prepare() }
            #expect(error?.code == .unexpectedTopology && error?.message.contains("are the same server") == true, "\(String(describing: error))")
            #expect(rotation.state == "nothing was changed")
            for node in nodes { await node.close() }
        }
    }

    @Test("the user replicas authenticate with is refused, and replication keeps working; a replication link is never a straggler")
    func replicationUserRefused() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { primary in
            try await self.withReplica(of: primary, password: old, extra: ["masteruser alice", "masterauth \(text(of: old))"]) { replica in
                let linkUp: @Sendable () async -> Bool = {
                    ((try? await replica.admin("INFO", "replication").string) ?? "").contains("master_link_status:up")
                }
                #expect(await eventually("the replica replicates as alice") { await linkUp() })
                // On the primary, the link is a connection of alice, but no client of hers.
                let node = try await RedisServerAdmin.connect(configuration: primary.adminConnectionConfiguration())
                #expect(try await node.connections(of: "alice").isEmpty)
                await node.close()

                let files = try self.files(primary, password: old)
                let result = try await runTool(self.arguments(primary, admin: primary, files, ["--version", "v2", "--wait", "1", "--kill-stragglers"]))
                #expect(result.status == 2, "\(result.stdout)\(result.stderr)")
                #expect(result.stderr.contains("authenticates to its primary as alice"), "\(result.stderr)")
                #expect(try RedisCredentialFile.read(from: files.passwordFile).version == "v1")
                #expect(await linkUp())
            }
        }
    }

    @Test("killing a user's connections leaves a replica's link authenticated as that user alone")
    func killConnectionsSparesReplication() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { primary in
            try await self.withReplica(of: primary, password: old, extra: ["masteruser alice", "masterauth \(text(of: old))"]) { replica in
                let linkUp: @Sendable () async -> Bool = {
                    ((try? await replica.admin("INFO", "replication").string) ?? "").contains("master_link_status:up")
                }
                #expect(await eventually("the replica replicates as alice") { await linkUp() })
                let client = try await RedisConnection.connect(configuration: primary.connectionConfiguration(username: "alice", password: old, name: "app@v1"))
                let node = try await RedisServerAdmin.connect(configuration: primary.adminConnectionConfiguration())
                #expect(try await node.killConnections(of: "alice") == 1)
                await client.waitUntilClosed()
                await node.close()
                let info = try await primary.admin("INFO", "replication").string ?? ""
                #expect(info.contains("connected_slaves:1"), "\(info)")
                #expect(await linkUp())
            }
        }
    }

    @Test("rotate ca with --expect-nodes refuses a server whose replica is down, before any change")
    func caRolloverExpectNodes() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { primary in
            try await self.withReplica(of: primary, password: old) { replica in
                await replica.stop()
                let node = try await RedisServerAdmin.connect(configuration: primary.adminConnectionConfiguration())
                await eventually("the primary no longer lists the replica") { (try? await node.replicas().count) == 0 }
                await node.close()
                let files = try self.files(primary, password: old)
                let bundle = primary.directory.appendingPathComponent("trusted.pem").path
                try "unchanged\n".write(toFile: bundle, atomically: true, encoding: .utf8)
                let result = try await runTool([
                    "rotate", "ca", "--port", "\(primary.port)", "--admin-user", primary.adminUsername,
                    "--admin-password-file", files.adminFile, "--bundle-file", bundle, "--new-ca-file", bundle,
                    "--new-cert-file", bundle, "--new-key-file", bundle, "--user", "alice", "--expect-nodes", "2",
                ])
                #expect(result.status == 2, "\(result.stdout)\(result.stderr)")
                #expect(result.stderr.contains("found 1 node(s)") && result.stderr.contains("expected 2"), "\(result.stderr)")
                #expect(try String(contentsOfFile: bundle, encoding: .utf8) == "unchanged\n")
            }
        }
    }

    @Test("rotate ca refuses a server with replicas: it switches one node's certificate")
    func caRolloverRefusesReplicas() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { primary in
            try await self.withReplica(of: primary, password: old) { replica in
                let files = try self.files(primary, password: old)
                let bundle = primary.directory.appendingPathComponent("trusted.pem").path
                try "unchanged\n".write(toFile: bundle, atomically: true, encoding: .utf8)
                let result = try await runTool([
                    "rotate", "ca", "--port", "\(primary.port)", "--admin-user", primary.adminUsername,
                    "--admin-password-file", files.adminFile, "--bundle-file", bundle, "--new-ca-file", bundle,
                    "--new-cert-file", bundle, "--new-key-file", bundle, "--user", "alice", "--json",
                ])
                #expect(result.status == 2, "\(result.stdout)\(result.stderr)")
                #expect(result.stderr.contains("is one of 2 nodes") && result.stderr.contains("127.0.0.1:\(replica.port)"), "\(result.stderr)")
                #expect(result.stdout.contains("\"result\":\"refused\""), "\(result.stdout)")
                #expect(try String(contentsOfFile: bundle, encoding: .utf8) == "unchanged\n")
            }
        }
    }
}

/// What the rotation reports and takes back when a node fails half way.
extension RotatePasswordReplicaTests {
    @Test("a removal that fails on the second node reports each node's state, not that every server holds only the new password")
    func partialRemovalStatePerNode() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { primary in
            try await self.withReplica(of: primary, password: old) { replica in
                let files = try self.files(primary, password: old)
                let nodes = [
                    try await RedisServerAdmin.connect(configuration: primary.adminConnectionConfiguration()),
                    try await RedisServerAdmin.connect(configuration: replica.adminConnectionConfiguration()),
                ]
                let rotation = RedisPasswordRotation(
                    topology: RedisAdminTopology(nodes: nodes),
                    options: .init(user: "alice", passwordFile: files.passwordFile, version: "v2", clientWait: .seconds(1))
                )
                try await rotation.prepare()
                try await rotation.addPassword()
                try await rotation.publish()
                try await rotation.waitForClients()
                // The replica dies between the wait and the removal (it persisted old + new at the add).
                replica.kill()
                _ = await replica.waitForExit(timeout: .seconds(10))
                await #expect(throws: RedisAdminError.self) { try await rotation.removeOldPasswords() }
                try await replica.restart()
                let admin = try await RedisServerAdmin.connect(configuration: replica.adminConnectionConfiguration())
                #expect(try await admin.passwordHashes(of: "alice")?.count == 2, "the replica still accepts the old password")
                await admin.close()
                let state = rotation.state
                #expect(!state.contains("the servers hold only the password"), "state: \(state)")
                #expect(state.contains("127.0.0.1:\(primary.port) hold(s) only the password of version v2"), "state: \(state)")
                #expect(state.contains("127.0.0.1:\(replica.port) may no longer accept the old password"), "state: \(state)")
                for node in nodes { await node.close() }
            }
        }
    }

    @Test("a node that fails during the add step: the password already added elsewhere is taken back, nothing is published")
    func addFailureTakesBack() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { primary in
            try await self.withReplica(of: primary, password: old) { replica in
                let files = try self.files(primary, password: old)
                let nodes = [
                    try await RedisServerAdmin.connect(configuration: primary.adminConnectionConfiguration()),
                    try await RedisServerAdmin.connect(configuration: replica.adminConnectionConfiguration()),
                ]
                let replicaAddress = nodes[1].address
                let rotation = RedisPasswordRotation(
                    topology: RedisAdminTopology(nodes: nodes),
                    options: .init(user: "alice", passwordFile: files.passwordFile, version: "v2", clientWait: .seconds(1)),
                    // The replica dies right after the primary got the new password.
                    report: { step in if step.name == "persist" && step.node != replicaAddress { replica.kill() } }
                )
                try await rotation.prepare()
                let error = await #expect(throws: RedisAdminError.self) { try await rotation.addPassword() }
                #expect(error?.message.contains("the password file was not changed") == true, "\(String(describing: error))")
                #expect(try RedisCredentialFile.read(from: files.passwordFile).version == "v1")
                let admin = try await RedisServerAdmin.connect(configuration: primary.adminConnectionConfiguration())
                #expect(try await admin.passwordHashes(of: "alice") == [old.sha256Hex], "the unpublished password was taken back from the primary")
                await admin.close()
                _ = await replica.waitForExit(timeout: .seconds(10))
                try await replica.restart()
                for node in nodes { await node.close() }
            }
        }
    }
}
