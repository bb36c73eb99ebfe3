import Foundation
import RedisRotation
import RedisRotationAdmin
import RedisRotationTesting
import Testing

/// The second review of `rotate password`: each way it could still end with a client holding a
/// password the server rejects, or say "done" while the file and the server disagree.
extension RotatePasswordSafetyTests {
    @Test("a directory that cannot be flushed after the rename keeps the new password published, with a warning")
    func publishAfterRenameNeverTakesBack() async throws {
        try await self.withSetup { setup in
            let directory = setup.server.directory.path
            fileReplacementFailingDirectoryFlushes.withLock { _ = $0.insert(directory) }
            defer { fileReplacementFailingDirectoryFlushes.withLock { _ = $0.remove(directory) } }
            let node = try await RedisServerAdmin.connect(configuration: setup.server.adminConnectionConfiguration())
            let steps = StepLog()
            let rotation = RedisPasswordRotation(
                topology: RedisAdminTopology(nodes: [node]),
                options: .init(user: "alice", passwordFile: setup.passwordFile, version: "v2", clientWait: .seconds(2)),
                report: { steps.append($0) }
            )
            try await rotation.prepare()
            try await rotation.addPassword()
            try await rotation.publish()
            let new = try setup.file().password
            #expect(try setup.file().version == "v2")
            #expect(await setup.canLogIn(new), "the password the file holds logs in")
            #expect(try await setup.hashes()?.count == 2)
            #expect(steps.all.contains { $0.name == "warn" && $0.message.contains("durability is unconfirmed") && $0.message.contains("Input/output error") }, "\(steps.all)")
            #expect(rotation.state.contains("the password file holds version v2"), "\(rotation.state)")
            try await rotation.waitForClients()
            try await rotation.removeOldPasswords()
            #expect(try await setup.hashes() == [new.sha256Hex])
            await node.close()
        }
    }

    @Test("a password file naming another user than --user is refused before any change")
    func fileOfAnotherUserRefused() async throws {
        try await self.withSetup { setup in
            try writeAtomically("username=alice\npassword=\(text(of: setup.old))\nversion=v1\n", to: setup.passwordFile)
            try await setup.server.admin("ACL", "SETUSER", "bob", "on", ">bob-password-1", "~*", "+@all")
            let result = try await runTool(setup.arguments(user: "bob", ["--version", "v2", "--wait", "1"]))
            #expect(result.status == 2, "\(result.stdout)\(result.stderr)")
            #expect(result.stderr.contains("is the password file of alice, not of bob"), "\(result.stderr)")
            #expect(try setup.file().password == setup.old)
            #expect(await setup.canLogIn(setup.old))
            #expect(try await setup.hashes(user: "bob") == [RedisSecret("bob-password-1").sha256Hex])
        }
    }

    @Test("a second rotation of the same password file is refused while the first runs; the first re-reads the file before removing")
    func concurrentRotationsRefused() async throws {
        try await self.withSetup { setup in
            let nodeA = try await RedisServerAdmin.connect(configuration: setup.server.adminConnectionConfiguration())
            let nodeB = try await RedisServerAdmin.connect(configuration: setup.server.adminConnectionConfiguration())
            let a = RedisPasswordRotation(topology: RedisAdminTopology(nodes: [nodeA]), options: .init(user: "alice", passwordFile: setup.passwordFile, clientWait: .seconds(1)))
            let b = RedisPasswordRotation(topology: RedisAdminTopology(nodes: [nodeB]), options: .init(user: "alice", passwordFile: setup.passwordFile, clientWait: .seconds(1)))
            try await a.prepare()
            let refused = await #expect(throws: RedisAdminError.self) { try await b.prepare() }
            #expect(refused?.code == .concurrentRotation, "\(String(describing: refused))")
            #expect(b.state == "nothing was changed")
            // Another process (a second operator) is refused the same way.
            let tool = try await runTool(setup.arguments(["--wait", "1"]))
            #expect(tool.status == 2 && tool.stderr.contains("another rotation of"), "\(tool.stdout)\(tool.stderr)")

            try await a.addPassword()
            try await a.publish()
            try await a.waitForClients()
            // Something outside the lock rewrites the file: nothing is removed.
            let foreign = makePassword()
            try await setup.server.admin("ACL", "SETUSER", "alice", .string(">\(text(of: foreign))"))
            try writeAtomically("password=\(text(of: foreign))\nversion=v9\n", to: setup.passwordFile)
            let changed = await #expect(throws: RedisAdminError.self) { try await a.removeOldPasswords() }
            #expect(changed?.message.contains("no longer holds version") == true, "\(String(describing: changed))")
            #expect(await setup.canLogIn(foreign), "the file's password still logs in")
            #expect(try await setup.hashes()?.count == 3)
            await nodeA.close()
            await nodeB.close()
        }
    }

    @Test("a nopass user is refused before any change: adding a password would clear nopass")
    func nopassUserRefused() async throws {
        try await self.withSetup { setup in
            try await setup.server.admin("ACL", "SETUSER", "alice", "nopass")
            let result = try await runTool(setup.arguments(["--version", "v2", "--wait", "1"]))
            #expect(result.status == 2, "\(result.stdout)\(result.stderr)")
            #expect(result.stderr.contains("is nopass"), "\(result.stderr)")
            #expect(try setup.file().version == "v1")
            #expect(await setup.canLogIn(setup.old), "still nopass: the file's password logs in")
        }
    }

    @Test("users in a configuration file with include lines are refused CONFIG REWRITE, which would stop the next start")
    func configIncludeRefused() async throws {
        let included = FileManager.default.temporaryDirectory.appendingPathComponent("included-\(UUID().uuidString).conf").path
        try "# more settings\n".write(toFile: included, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: included) }
        let old = makePassword()
        try await RedisServerProcess.withServer(.init(users: [.init(name: "alice", passwords: [old])], extraConfiguration: ["include \(included)"], usersInConfigFile: true)) { server in
            let passwordFile = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: passwordFile)
            let adminFile = server.directory.appendingPathComponent("admin.password").path
            try text(of: server.adminPassword).write(toFile: adminFile, atomically: true, encoding: .utf8)
            let setup = Setup(server: server, old: old, passwordFile: passwordFile, adminFile: adminFile)
            let result = try await runTool(setup.arguments(["--version", "v2", "--wait", "1"]))
            #expect(result.status == 2, "\(result.stdout)\(result.stderr)")
            #expect(result.stderr.contains("include lines") && result.stderr.contains("refuse to start"), "\(result.stderr)")
            #expect(try setup.file().version == "v1")
            #expect(try await setup.hashes() == [old.sha256Hex])
        }
    }

    @Test("versions a connection name cannot report back (with @, ending in -probe) are refused")
    func unrecognisableVersionsRefused() async throws {
        #expect(RedisPasswordRotation.isUsableVersion("r1700000000-0a1b"))
        #expect(RedisPasswordRotation.isUsableVersion("v2"))
        #expect(!RedisPasswordRotation.isUsableVersion("ops@2"))
        #expect(!RedisPasswordRotation.isUsableVersion("v3-probe"))
        #expect(!RedisPasswordRotation.isUsableVersion("v3-sub"))
        try await self.withSetup { setup in
            for version in ["ops@2", "v3-probe"] {
                let result = try await runTool(setup.arguments(["--version", version, "--wait", "1"]))
                #expect(result.status == 2, "\(result.stdout)\(result.stderr)")
                #expect(result.stderr.contains("without spaces or @, not ending in -probe"), "\(result.stderr)")
                let node = try await RedisServerAdmin.connect(configuration: setup.server.adminConnectionConfiguration())
                let rotation = RedisPasswordRotation(topology: RedisAdminTopology(nodes: [node]), options: .init(user: "alice", passwordFile: setup.passwordFile, version: version))
                let error = await #expect(throws: RedisAdminError.self) { try await rotation.prepare() }
                #expect(error?.code == .versionInUse)
                await node.close()
            }
            #expect(try await setup.hashes() == [setup.old.sha256Hex])
        }
    }

    @Test("cancelled during verification, the new password is taken back and the state says nothing changed")
    func cancelledDuringVerification() async throws {
        try await self.withSetup { setup in
            let node = try await RedisServerAdmin.connect(configuration: setup.server.adminConnectionConfiguration())
            let task = Task {
                let rotation = RedisPasswordRotation(
                    topology: RedisAdminTopology(nodes: [node]),
                    options: .init(user: "alice", passwordFile: setup.passwordFile),
                    // Ctrl-C right after the add step.
                    report: { step in if step.name == "persist" { withUnsafeCurrentTask { $0?.cancel() } } }
                )
                try await rotation.prepare()
                var error: (any Error)?
                do { try await rotation.addPassword() } catch let caught { error = caught }
                return (rotation.state, error)
            }
            let (state, error) = try await task.value
            #expect(error is CancellationError, "\(String(describing: error))")
            #expect(try await setup.hashes() == [setup.old.sha256Hex], "the unpublished password was removed")
            #expect(state == "nothing was changed")
            await node.close()
        }
    }

    @Test("a closed standard output does not stop a rotation between two steps")
    func closedStandardOutput() async throws {
        try await self.withSetup { setup in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: try redisRotationBinary())
            process.arguments = setup.arguments(["--version", "v2", "--wait", "2", "--json"])
            let output = Pipe()
            process.standardOutput = output
            process.standardError = FileHandle.nullDevice
            try output.fileHandleForReading.close()
            try process.run()
            try output.fileHandleForWriting.close()
            process.waitUntilExit()
            #expect(process.terminationReason == .exit && process.terminationStatus == 0, "\(process.terminationReason) \(process.terminationStatus)")
            let new = try setup.file().password
            #expect(try setup.file().version == "v2")
            #expect(try await setup.hashes() == [new.sha256Hex])
            try await setup.server.restart()
            #expect(await setup.canLogIn(new), "persisted")
        }
    }

    @Test("a re-run after an interruption before publishing starts a new rotation, not a return to the old password")
    func reRunAfterUnpublishedAdd() async throws {
        try await self.withSetup { setup in
            do {
                let node = try await RedisServerAdmin.connect(configuration: setup.server.adminConnectionConfiguration())
                let interrupted = RedisPasswordRotation(topology: RedisAdminTopology(nodes: [node]), options: .init(user: "alice", passwordFile: setup.passwordFile))
                try await interrupted.prepare()
                try await interrupted.addPassword()
                #expect(try await setup.hashes()?.count == 2)
                await node.close()
            }
            let result = try await runTool(setup.arguments(["--wait", "1", "--json"]))
            #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
            #expect(result.stdout.contains("interrupted before it published"), "\(result.stdout)")
            #expect(result.stdout.contains("\"result\":\"rotated\""), "\(result.stdout)")
            let file = try setup.file()
            #expect(file.password != setup.old)
            #expect(try await setup.hashes() == [file.password.sha256Hex])
            #expect(await !setup.canLogIn(setup.old))
        }
    }

    @Test("a password file readable by others is refused before any change: its client reading as others would be locked out")
    func othersReadableFileRefused() async throws {
        try await self.withSetup { setup in
            #expect(chmod(setup.passwordFile, 0o604) == 0)
            let result = try await runTool(setup.arguments(["--version", "v2", "--wait", "1", "--kill-stragglers"]))
            #expect(result.status == 2, "\(result.stdout)\(result.stderr)")
            #expect(result.stderr.contains("readable by others (mode 604)") && result.stderr.contains("chmod o-r"), "\(result.stderr)")
            #expect(try setup.file().version == "v1")
            #expect(try await setup.hashes() == [setup.old.sha256Hex])
            var info = stat()
            #expect(stat(setup.passwordFile, &info) == 0)
            #expect(info.st_mode & 0o7777 == 0o604, "the mode is left to the operator")
        }
    }

    @Test("an administrator who may add a password but not persist it is refused before any change")
    func missingPermissionRefused() async throws {
        try await self.withSetup { setup in
            let password = makePassword()
            try await setup.server.admin("ACL", "SETUSER", "rotadmin", "on", .string(">\(text(of: password))"), "~*", "&*", "+@all", "-acl|save")
            let adminFile = setup.server.directory.appendingPathComponent("rotadmin.password").path
            try text(of: password).write(toFile: adminFile, atomically: true, encoding: .utf8)
            let arguments = setup.arguments(["--version", "v2", "--wait", "1"]).map { $0 == setup.adminFile ? adminFile : $0 == setup.server.adminUsername ? "rotadmin" : $0 }
            let result = try await runTool(arguments)
            #expect(result.status == 2, "\(result.stdout)\(result.stderr)")
            #expect(result.stderr.contains("may not run ACL SAVE"), "\(result.stderr)")
            #expect(try setup.file().version == "v1")
            #expect(try await setup.hashes() == [setup.old.sha256Hex])
        }
    }
}

extension RotatePasswordSafetyTests {
    @Test("a lock file that is a hard link to the password file is refused; the password file is left as it was")
    func hardLinkedLockFileRefused() async throws {
        try await self.withSetup { setup in
            let before = try String(contentsOfFile: setup.passwordFile, encoding: .utf8)
            #expect(link(setup.passwordFile, setup.passwordFile + ".lock") == 0)
            let result = try await runTool(setup.arguments(["--version", "v2", "--wait", "1"]))
            #expect(result.status == 2, "\(result.stdout)\(result.stderr)")
            #expect(result.stderr.contains("refusing the lock file") && result.stderr.contains("Nothing was changed"), "\(result.stderr)")
            #expect(try String(contentsOfFile: setup.passwordFile, encoding: .utf8) == before, "the password file is unchanged")
            #expect(try await setup.hashes() == [setup.old.sha256Hex])
        }
    }
}

extension RotatePasswordSafetyTests {
    /// `system.posix_acl_access` as `setfacl -m u:<uid>:r` on a 0600 file stores it: user::rw-,
    /// user:<uid>:r--, group::---, mask::r--, other::---.
    static func readableByACL(uid: UInt32) -> [UInt8] {
        var bytes: [UInt8] = []
        func u16(_ value: UInt16) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
        func u32(_ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
        u32(2)
        for (tag, permissions, id) in [(UInt16(0x01), UInt16(6), UInt32.max), (0x02, 4, uid), (0x04, 0, .max), (0x10, 4, .max), (0x20, 0, .max)] {
            u16(tag)
            u16(permissions)
            u32(id)
        }
        return bytes
    }

    static func accessACL(_ path: String) -> [UInt8]? { ExtendedAttributes.value(ExtendedAttributes.posixAccessACL, of: path) }

    @Test("the password file keeps its POSIX ACL across a rotation: a client reading through it is not locked out")
    func posixACLKept() async throws {
        try await self.withSetup { setup in
            #expect(chmod(setup.passwordFile, 0o600) == 0)
            let acl = Self.readableByACL(uid: 65534)
            let set = ExtendedAttributes.set(ExtendedAttributes.posixAccessACL, to: acl, on: setup.passwordFile)
            try #require(set || errno == ENOTSUP || errno == EOPNOTSUPP, "setxattr: \(String(cString: strerror(errno)))")
            guard set else {
                try Test.cancel("the test directory's file system has no POSIX ACLs")
            }
            let result = try await runTool(setup.arguments(["--version", "v2", "--wait", "1"]))
            #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
            #expect(try setup.file().version == "v2")
            #expect(Self.accessACL(setup.passwordFile) == acl, "u:nobody:r is still on the file")
        }
    }
}

/// Interruptions and failures half way: what is taken back and what the state line says.
extension RotatePasswordSafetyTests {
    @Test("a resumed rotation whose verification fails keeps the published password and says so")
    func resumedVerificationFailureMessage() async throws {
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
            #expect(!result.stderr.contains("the new password was removed again"), "\(result.stderr)")
            #expect(result.stderr.contains("the password file already held version v2"), "\(result.stderr)")
        }
    }

    @Test("a removal cancelled in flight does not claim the old password is still accepted")
    func cancelledDuringRemovalState() async throws {
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
            #expect(!rotation.state.contains("accept the old and the new password"), "state: \(rotation.state)")
            #expect(rotation.state.contains("may no longer accept the old password"), "state: \(rotation.state)")
            await proxy.close()
            await node.close()
        }
    }

    @Test("an administrator who cannot run ACL DRYRUN is refused unless --skip-permission-check; then a failed persist takes the password back")
    func permissionCheckUnavailable() async throws {
        try await self.withSetup { setup in
            try await setup.server.admin("ACL", "SETUSER", .string(setup.server.adminUsername), "-acl|dryrun", "-acl|save")
            let refused = try await runTool(setup.arguments(["--version", "v2", "--wait", "1"]))
            #expect(refused.status == 2, "\(refused.stdout)\(refused.stderr)")
            #expect(refused.stderr.contains("--skip-permission-check") && refused.stderr.contains("Nothing was changed"), "\(refused.stderr)")
            #expect(try await setup.hashes() == [setup.old.sha256Hex])

            let skipped = try await runTool(setup.arguments(["--version", "v2", "--wait", "1", "--skip-permission-check"]))
            #expect(skipped.status == 1, "\(skipped.stdout)\(skipped.stderr)")
            #expect(skipped.stdout.contains("[warn]"), "\(skipped.stdout)")
            // Removed live; saving that could not work either (no ACL SAVE), which the message admits.
            #expect(skipped.stderr.contains("ACL SAVE failed") && skipped.stderr.contains("the password file was not changed"), "\(skipped.stderr)")
            #expect(try setup.file().version == "v1")
            #expect(try await setup.hashes() == [setup.old.sha256Hex], "the unpublished password was taken back")
        }
    }
}

extension RotatePasswordSafetyTests {
    @Test("the published file keeps the username= line read before the change, even when the file cannot be read again at the publish")
    func publishKeepsUsername() async throws {
        try await self.withSetup { setup in
            try writeAtomically("username=alice\npassword=\(text(of: setup.old))\nversion=v1\n", to: setup.passwordFile)
            let node = try await RedisServerAdmin.connect(configuration: setup.server.adminConnectionConfiguration())
            let rotation = RedisPasswordRotation(
                topology: RedisAdminTopology(nodes: [node]),
                options: .init(user: "alice", passwordFile: setup.passwordFile, version: "v2", clientWait: .seconds(1))
            )
            try await rotation.prepare()
            try await rotation.addPassword()
            // Something leaves the file unreadable as a password file for a moment.
            try writeAtomically("half written\n", to: setup.passwordFile)
            try await rotation.publish()
            let published = try setup.file()
            #expect(published.username == "alice", "clients keep logging in as alice")
            #expect(published.version == "v2")
            await node.close()
        }
    }
}

extension RotatePasswordSafetyTests {
    @Test("a rename that reports ENOENT after it succeeded (NFS) keeps the new password published, not taken back")
    func renameReportedFailedAfterSuccess() async throws {
        try await self.withSetup { setup in
            fileReplacementRenamesFailingAfterSuccess.withLock { _ = $0.insert(setup.passwordFile) }
            defer { fileReplacementRenamesFailingAfterSuccess.withLock { _ = $0.remove(setup.passwordFile) } }
            let node = try await RedisServerAdmin.connect(configuration: setup.server.adminConnectionConfiguration())
            let rotation = RedisPasswordRotation(
                topology: RedisAdminTopology(nodes: [node]),
                options: .init(user: "alice", passwordFile: setup.passwordFile, version: "v2", clientWait: .seconds(1))
            )
            try await rotation.prepare()
            try await rotation.addPassword()
            try await rotation.publish()
            let published = try setup.file()
            #expect(published.version == "v2")
            #expect(await setup.canLogIn(published.password), "the file's password is not taken back")
            await node.close()
        }
    }
}

extension RotatePasswordSafetyTests {
    @Test("Ctrl-C while ACL SETUSER is in flight takes the new password back once it lands; the state says nothing changed")
    func cancelledDuringAdd() async throws {
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
            // Every byte takes a second: the add reaches the server after the Ctrl-C, the take-back after the add.
            await proxy.setMode(.latency(.seconds(1)))
            let work = Task { try await rotation.addPassword() }
            try await Task.sleep(for: .milliseconds(300))
            work.cancel()  // what the tool's SIGINT handler does
            let result = await work.result
            #expect(throws: CancellationError.self) { try result.get() }
            // Long enough for a command still on its way to land (the proxy's delay, twice).
            try await Task.sleep(for: .seconds(2))
            #expect(try setup.file().version == "v1")
            #expect(try await setup.hashes() == [setup.old.sha256Hex], "the unpublished password was taken back")
            #expect(rotation.state == "nothing was changed", "state: \(rotation.state)")
            await proxy.close()
            await node.close()
        }
    }
}
