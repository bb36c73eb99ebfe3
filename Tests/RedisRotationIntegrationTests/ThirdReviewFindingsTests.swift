import Foundation
import RedisRotation
import RedisRotationAdmin
import RedisRotationTesting
import Testing

/// Third review of `rotate password`: failing proofs. Each test asserts the behaviour that should
/// hold; each fails on the reviewed code.
extension RotatePasswordReplicaTests {
    @Test("review3: a removal that fails on the second node does not claim every server holds only the new password")
    func review3PartialRemovalState() async throws {
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
                let hashes = try await admin.passwordHashes(of: "alice") ?? []
                await admin.close()
                #expect(hashes.count == 2, "the replica still accepts the old password")
                // Fails: the state says "the servers hold only the password of version v2".
                #expect(!rotation.state.contains("the servers hold only the password"), "state: \(rotation.state)")
                for node in nodes { await node.close() }
            }
        }
    }
}

extension RotatePasswordSafetyTests {
    @Test("review3: a resumed rotation whose verification fails does not say it removed the published password")
    func review3ResumeVerificationMessage() async throws {
        try await self.withSetup { setup in
            // An interrupted rotation: the server accepts old and new, the file holds the new one (v2).
            let new = makePassword()
            try await setup.server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: new))"))
            try await setup.server.admin("ACL", "SAVE")
            try writeAtomically("password=\(text(of: new))\nversion=v2\n", to: setup.passwordFile)
            // Something makes the fresh login fail (here the user is switched off on the node).
            try await setup.server.admin("ACL", "SETUSER", "alice", "off")
            let result = try await runTool(setup.arguments(["--wait", "1"]))
            #expect(result.status == 1, "\(result.stdout)\(result.stderr)")
            #expect(try setup.file().version == "v2")
            #expect(try await setup.hashes()?.contains(new.sha256Hex) == true, "the published password was not removed")
            // Fails: the message says "the new password was removed again and the password file was not changed".
            #expect(!result.stderr.contains("the new password was removed again"), "\(result.stderr)")
        }
    }
}

extension RotatePasswordSafetyTests {
    /// A topology of the setup's server reached twice: directly, then through a fault proxy.
    func review3Topology(_ setup: Setup, proxy: RedisFaultProxy) async throws -> [RedisServerAdmin] {
        var proxied = setup.server.adminConnectionConfiguration()
        proxied.port = proxy.port
        return [
            try await RedisServerAdmin.connect(configuration: setup.server.adminConnectionConfiguration()),
            try await RedisServerAdmin.connect(configuration: proxied),
        ]
    }

    @Test("review3: Ctrl-C during the add step takes the new password back (OPERATOR.md: 'Interrupted before publishing?')")
    func review3CancelDuringAdd() async throws {
        try await self.withSetup { setup in
            let proxy = try await RedisFaultProxy.start(upstreamPort: setup.server.port)
            let nodes = try await self.review3Topology(setup, proxy: proxy)
            let rotation = RedisPasswordRotation(
                topology: RedisAdminTopology(nodes: nodes),
                options: .init(user: "alice", passwordFile: setup.passwordFile, version: "v2", clientWait: .seconds(1))
            )
            try await rotation.prepare()
            await proxy.setMode(.paused)  // the second node's ACL SETUSER is in flight
            let work = Task { try await rotation.addPassword() }
            try await Task.sleep(for: .milliseconds(500))
            work.cancel()  // what the tool's SIGINT handler does
            _ = await work.result
            #expect(try setup.file().version == "v1")
            // Fails: the first node keeps the unpublished password, and the state says so.
            #expect(try await setup.hashes() == [setup.old.sha256Hex], "the unpublished password was not taken back")
            #expect(rotation.state == "nothing was changed", "state: \(rotation.state)")
            await proxy.close()
            for node in nodes { await node.close() }
        }
    }

    @Test("review3: a removal cancelled in flight does not claim the old password is still accepted")
    func review3CancelDuringRemoval() async throws {
        try await self.withSetup { setup in
            let proxy = try await RedisFaultProxy.start(upstreamPort: setup.server.port)
            var proxied = setup.server.adminConnectionConfiguration()
            proxied.port = proxy.port
            let node = try await RedisServerAdmin.connect(configuration: proxied)
            let rotation = RedisPasswordRotation(
                topology: RedisAdminTopology(nodes: [node]),
                options: .init(user: "alice", passwordFile: setup.passwordFile, version: "v2", clientWait: .seconds(1))
            )
            try await rotation.prepare()
            try await rotation.addPassword()
            try await rotation.publish()
            try await rotation.waitForClients()
            await proxy.setMode(.paused)  // ACL SETUSER resetpass is sent, its reply held
            let work = Task { try await rotation.removeOldPasswords() }
            try await Task.sleep(for: .milliseconds(500))
            work.cancel()
            _ = await work.result
            await proxy.setMode(.forward)
            let new = try setup.file().password
            await eventually("the held command reached the server") { (try? await setup.hashes()) == [new.sha256Hex] }
            #expect(await !setup.canLogIn(setup.old), "the server no longer accepts the old password")
            // Fails if the state still says the servers accept the old password.
            #expect(!rotation.state.contains("accept the old and the new password"), "state: \(rotation.state)")
            await proxy.close()
            await node.close()
        }
    }
}
