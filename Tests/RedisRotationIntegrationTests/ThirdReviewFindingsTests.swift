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
