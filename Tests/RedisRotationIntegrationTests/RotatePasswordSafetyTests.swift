import Foundation
import RedisRotation
import RedisRotationAdmin
import RedisRotationTesting
import Synchronization
import Testing

/// `rotate password` against real servers: every way it used to lock users out, or to claim success
/// too early, is refused or fixed.
@Suite("redis-rotation rotate password: safety", .timeLimit(.minutes(3)))
struct RotatePasswordSafetyTests {
    /// A server with `alice`, her password file (version v1) and the admin password file.
    struct Setup {
        let server: RedisServerProcess
        let old: RedisSecret
        let passwordFile: String
        let adminFile: String

        func arguments(port: Int? = nil, user: String = "alice", _ extra: [String] = []) -> [String] {
            [
                "rotate", "password", "--port", "\(port ?? self.server.port)", "--admin-user", self.server.adminUsername,
                "--admin-password-file", self.adminFile, "--user", user, "--password-file", self.passwordFile,
            ] + extra
        }

        /// The SHA-256 hashes of alice's passwords on `server`.
        func hashes(on server: RedisServerProcess? = nil, user: String = "alice") async throws -> [String]? {
            let node = try await RedisServerAdmin.connect(configuration: (server ?? self.server).adminConnectionConfiguration())
            defer { Task { await node.close() } }
            let hashes = try await node.passwordHashes(of: user)
            await node.close()
            return hashes
        }

        func canLogIn(_ password: RedisSecret, on server: RedisServerProcess? = nil) async -> Bool {
            do {
                let connection = try await RedisConnection.connect(configuration: (server ?? self.server).connectionConfiguration(username: "alice", password: password))
                await connection.close()
                return true
            } catch {
                return false
            }
        }

        func file() throws -> RedisCredentialFile { try RedisCredentialFile.read(from: self.passwordFile) }
    }

    func withSetup(extraConfiguration: [String] = [], _ body: (Setup) async throws -> Void) async throws {
        let old = makePassword()
        try await withAliceServer(password: old, extraConfiguration: extraConfiguration) { server in
            let passwordFile = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: passwordFile)
            let adminFile = server.directory.appendingPathComponent("admin.password").path
            try text(of: server.adminPassword).write(toFile: adminFile, atomically: true, encoding: .utf8)
            try await body(Setup(server: server, old: old, passwordFile: passwordFile, adminFile: adminFile))
        }
    }

    @Test("after a rotation and a server restart the new password works and the old does not; the file keeps mode and owner")
    func persistsAcrossRestart() async throws {
        try await self.withSetup { setup in
            #expect(chmod(setup.passwordFile, 0o640) == 0)
            let isRoot = getuid() == 0
            if isRoot { #expect(chown(setup.passwordFile, 1000, 1001) == 0) }

            let result = try await runTool(setup.arguments(["--version", "v2", "--wait", "5"]))
            #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
            #expect(result.stdout.contains("[persist]") && result.stdout.contains("ACL SAVE"), "\(result.stdout)")
            let new = try setup.file().password
            #expect(try setup.file().version == "v2")
            #expect(!result.stdout.contains(text(of: new)) && !result.stderr.contains(text(of: new)), "the password is never printed")

            var info = stat()
            #expect(stat(setup.passwordFile, &info) == 0)
            #expect(info.st_mode & 0o7777 == 0o640)
            if isRoot { #expect(info.st_uid == 1000 && info.st_gid == 1001) }

            try await setup.server.restart()
            #expect(await setup.canLogIn(new), "the new password works after a restart")
            #expect(await !setup.canLogIn(setup.old), "the old password does not come back after a restart")
            #expect(try await setup.hashes() == [new.sha256Hex])
        }
    }

    @Test("users kept in the configuration file are persisted with CONFIG REWRITE and survive a restart")
    func persistsWithConfigRewrite() async throws {
        let old = makePassword()
        try await RedisServerProcess.withServer(.init(users: [.init(name: "alice", passwords: [old])], usersInConfigFile: true)) { server in
            #expect(try await server.admin("CONFIG", "GET", "aclfile").array?.last?.string == "")
            let passwordFile = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: passwordFile)
            let adminFile = server.directory.appendingPathComponent("admin.password").path
            try text(of: server.adminPassword).write(toFile: adminFile, atomically: true, encoding: .utf8)
            let setup = Setup(server: server, old: old, passwordFile: passwordFile, adminFile: adminFile)
            let result = try await runTool(setup.arguments(["--version", "v2", "--wait", "5"]))
            #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
            #expect(result.stdout.contains("saved with CONFIG REWRITE"), "\(result.stdout)")
            let new = try setup.file().password
            try await server.restart()
            #expect(await setup.canLogIn(new))
            #expect(await !setup.canLogIn(old))
        }
    }

    @Test("a server that can persist neither way is refused, saying why, unless --no-persist")
    func refusesWithoutPersistence() async throws {
        let old = makePassword()
        try await RedisServerProcess.withServer(.init(users: [.init(name: "alice", passwords: [old])], usersInConfigFile: true, startsWithoutConfigFile: true)) { server in
            let passwordFile = server.directory.appendingPathComponent("alice.password").path
            try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: passwordFile)
            let adminFile = server.directory.appendingPathComponent("admin.password").path
            try text(of: server.adminPassword).write(toFile: adminFile, atomically: true, encoding: .utf8)
            let setup = Setup(server: server, old: old, passwordFile: passwordFile, adminFile: adminFile)
            let refused = try await runTool(setup.arguments(["--version", "v2", "--wait", "2"]))
            #expect(refused.status == 2, "\(refused.stdout)\(refused.stderr)")
            #expect(refused.stderr.contains("would be lost on restart") && refused.stderr.contains("--no-persist"), "\(refused.stderr)")
            #expect(try setup.file().version == "v1")
            #expect(try await setup.hashes() == [old.sha256Hex])

            let accepted = try await runTool(setup.arguments(["--version", "v2", "--wait", "2", "--no-persist"]))
            #expect(accepted.status == 0, "\(accepted.stdout)\(accepted.stderr)")
            #expect(try await setup.hashes() == [try setup.file().password.sha256Hex])
        }
    }

    @Test("CLIENT LIST entries: versions only from <name>@<version> (a probe or a subscriber counts as its version), unnamed ones have none, replication links marked")
    func clientListParsing() {
        let text = """
            id=3 addr=127.0.0.1:5001 laddr=127.0.0.1:6379 fd=8 name=app@v2 age=12 idle=0 flags=N db=0 user=alice
            id=4 addr=127.0.0.1:5002 laddr=127.0.0.1:6379 fd=9 name= age=3 idle=0 flags=N db=0 user=alice
            id=5 addr=127.0.0.1:5003 laddr=127.0.0.1:6379 fd=10 name=app@v3-probe age=0 idle=0 flags=N db=0 user=alice
            id=6 addr=127.0.0.1:5004 laddr=127.0.0.1:6379 fd=11 name=renamed age=7 idle=0 flags=N db=0 user=bob
            id=7 addr=127.0.0.1:5005 laddr=127.0.0.1:6379 fd=12 name= age=9 idle=0 flags=S db=0 user=alice
            id=8 addr=127.0.0.1:5006 laddr=127.0.0.1:6379 fd=13 name=app@r1-ab12-sub age=1 idle=0 flags=P db=0 user=alice

            """
        let entries = RedisClientInfo.parseList(text)
        #expect(entries.map(\.id) == [3, 4, 5, 6, 7, 8])
        #expect(entries.map(\.credentialVersion) == ["v2", nil, "v3", nil, nil, "r1-ab12"])
        #expect(entries.map(\.user) == ["alice", "alice", "alice", "bob", "alice", "alice"])
        #expect(entries.map(\.isReplicationLink) == [false, false, false, false, true, false], "a replica's link (flags=S) is no client")
        #expect(entries[1].description == "id=4 addr=127.0.0.1:5002 name=(none) age=3s")
    }

    @Test("persistence: ACL SAVE with an ACL file, else CONFIG REWRITE with a configuration file, else none")
    func persistenceDecision() {
        #expect(RedisACLPersistence.decide(aclFile: "/etc/redis/users.acl", configFile: "/etc/redis/redis.conf") == .aclSave)
        #expect(RedisACLPersistence.decide(aclFile: "", configFile: "/etc/redis/redis.conf") == .configRewrite)
        #expect(RedisACLPersistence.decide(aclFile: "", configFile: "") == .none)
    }

    @Test("a mistyped user is refused and not created; nothing changes")
    func unknownUser() async throws {
        try await self.withSetup { setup in
            let result = try await runTool(setup.arguments(user: "alicee", ["--wait", "1"]))
            #expect(result.status == 2, "\(result.stdout)\(result.stderr)")
            #expect(result.stderr.contains("the user alicee does not exist"), "\(result.stderr)")
            #expect(try await setup.hashes(user: "alicee") == nil, "the mistyped user was not created")
            #expect(try setup.file().version == "v1")
            #expect(try await setup.hashes() == [setup.old.sha256Hex])

            let json = try await runTool(setup.arguments(user: "alicee", ["--wait", "1", "--json"]))
            #expect(json.status == 2)
            let last = try JSONSerialization.jsonObject(with: Data(try #require(json.stdout.split(separator: "\n").last).utf8)) as? [String: Any]
            #expect(last?["result"] as? String == "failed" && last?["code"] as? String == "userNotFound", "\(json.stdout)")
            #expect(last?["state"] as? String == "nothing was changed")
        }
    }

    @Test("a new password that does not log in is removed again and never published")
    func verifiesBeforePublishing() async throws {
        try await self.withSetup { setup in
            // A disabled user: ACL SETUSER accepts the password, but nobody can log in with it.
            try await setup.server.admin("ACL", "SETUSER", "alice", "off")
            let result = try await runTool(setup.arguments(["--version", "v2", "--wait", "1"]))
            #expect(result.status == 1, "\(result.stdout)\(result.stderr)")
            #expect(result.stderr.contains("cannot log in"), "\(result.stderr)")
            #expect(result.stderr.contains("the password file was not changed"), "\(result.stderr)")
            #expect(try setup.file().version == "v1")
            #expect(try await setup.hashes() == [setup.old.sha256Hex], "the unverified password was removed")
        }
    }

    @Test("a password file that cannot be replaced (a symbolic link) is refused before any change, with a clear message")
    func unwritableFile() async throws {
        try await self.withSetup { setup in
            let link = setup.server.directory.appendingPathComponent("linked.password").path
            #expect(symlink(setup.passwordFile, link) == 0)
            let result = try await runTool(setup.arguments(["--wait", "1"]).map { $0 == setup.passwordFile ? link : $0 })
            #expect(result.status == 2, "\(result.stdout)\(result.stderr)")
            #expect(result.stderr.contains("it is a symbolic link") && result.stderr.contains("nothing was changed"), "\(result.stderr)")
            #expect(!result.stderr.contains("NSCocoaErrorDomain"))
            #expect(try await setup.hashes() == [setup.old.sha256Hex])
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: setup.server.directory.path).filter { $0.contains(".tmp-") }
            #expect(leftovers.isEmpty, "\(leftovers)")

            // The file becomes unreplaceable after the checks: the added password is taken back.
            let node = try await RedisServerAdmin.connect(configuration: setup.server.adminConnectionConfiguration())
            let rotation = RedisPasswordRotation(topology: RedisAdminTopology(nodes: [node]), options: .init(user: "alice", passwordFile: setup.passwordFile))
            try await rotation.prepare()
            try await rotation.addPassword()
            #expect(try await setup.hashes()?.count == 2)
            try FileManager.default.removeItem(atPath: setup.passwordFile)
            try FileManager.default.createDirectory(atPath: setup.passwordFile, withIntermediateDirectories: false)
            let error = await #expect(throws: RedisAdminError.self) { try await rotation.publish() }
            #expect(error?.message.contains("the new password was removed again") == true, "\(String(describing: error))")
            #expect(rotation.state == "nothing was changed")
            #expect(try await setup.hashes() == [setup.old.sha256Hex])
            await node.close()
        }
    }

    @Test("an unnamed connection on the old password blocks success; --kill-stragglers kills it, and the run resumes")
    func unnamedStraggler() async throws {
        try await self.withSetup { setup in
            let unnamed = try await RedisConnection.connect(configuration: setup.server.connectionConfiguration(username: "alice", password: setup.old))
            let blocked = try await runTool(setup.arguments(["--version", "v2", "--wait", "1"]))
            #expect(blocked.status == 1, "\(blocked.stdout)\(blocked.stderr)")
            #expect(blocked.stderr.contains("name=(none)"), "\(blocked.stderr)")
            #expect(blocked.stderr.contains("id=\(try #require(unnamed.clientID))"), "\(blocked.stderr)")
            #expect(blocked.stderr.contains("to resume: redis-rotation rotate password"), "\(blocked.stderr)")
            #expect(await setup.canLogIn(setup.old), "the old password stays while a connection uses it")
            #expect(try setup.file().version == "v2")

            let killed = try await runTool(setup.arguments(["--version", "v2", "--wait", "1", "--kill-stragglers"]))
            #expect(killed.status == 0, "\(killed.stdout)\(killed.stderr)")
            #expect(killed.stdout.contains("[resume]"), "\(killed.stdout)")
            #expect(killed.stdout.contains("[kill]") && killed.stdout.contains("name=(none)"), "\(killed.stdout)")
            await unnamed.waitUntilClosed()
            #expect(!unnamed.isActive)
            let new = try setup.file().password
            #expect(try await setup.hashes() == [new.sha256Hex])
            #expect(await !setup.canLogIn(setup.old))
        }
    }

    @Test("a version in the file or in use is refused; two runs in one second get different versions and the second waits for the first's clients")
    func uniqueVersions() async throws {
        try await self.withSetup { setup in
            let reused = try await runTool(setup.arguments(["--version", "v1", "--wait", "1"]))
            #expect(reused.status == 2, "\(reused.stdout)\(reused.stderr)")
            #expect(reused.stderr.contains("already holds version v1"), "\(reused.stderr)")

            let named = try await RedisConnection.connect(
                configuration: setup.server.connectionConfiguration(username: "alice", password: setup.old, name: "other@v7")
            )
            let inUse = try await runTool(setup.arguments(["--version", "v7", "--wait", "1"]))
            #expect(inUse.status == 2, "\(inUse.stdout)\(inUse.stderr)")
            #expect(inUse.stderr.contains("version v7 is already in use"), "\(inUse.stderr)")
            await named.close()
            #expect(try await setup.hashes() == [setup.old.sha256Hex], "nothing changed")

            let first = try await runTool(setup.arguments(["--wait", "2"]))
            #expect(first.status == 0, "\(first.stdout)\(first.stderr)")
            let firstFile = try setup.file()
            let firstVersion = try #require(firstFile.version)
            // A client of the first rotation, still connected.
            let client = try await RedisConnection.connect(
                configuration: setup.server.connectionConfiguration(username: "alice", password: firstFile.password, name: "app@\(firstVersion)")
            )
            let second = try await runTool(setup.arguments(["--wait", "1"]))
            #expect(second.status == 1, "\(second.stdout)\(second.stderr)")
            #expect(try setup.file().version != firstVersion)
            #expect(second.stderr.contains("name=app@\(firstVersion)"), "\(second.stderr)")
            #expect(await setup.canLogIn(firstFile.password), "the first rotation's password stays while its client is connected")
            await client.close()
        }
    }

    @Test("an interrupted rotation (the tool killed while waiting) leaves both passwords working; running it again finishes with exactly the file's")
    func interruptedRotationResumes() async throws {
        try await self.withSetup { setup in
            let straggler = try await RedisConnection.connect(
                configuration: setup.server.connectionConfiguration(username: "alice", password: setup.old, name: "app@v1")
            )
            let arguments = setup.arguments(["--wait", "60"])
            let process = Process()
            process.executableURL = URL(fileURLWithPath: try redisRotationBinary())
            process.arguments = arguments
            let errorsPath = setup.server.directory.appendingPathComponent("interrupted.stderr").path
            #expect(FileManager.default.createFile(atPath: errorsPath, contents: nil))
            let errors = try FileHandle(forWritingTo: URL(fileURLWithPath: errorsPath))
            process.standardOutput = FileHandle.nullDevice
            process.standardError = errors
            try process.run()
            // Killed once it published and waits for the straggler.
            await eventually("the tool published a new version") { (try? setup.file().version) != "v1" }
            await eventually("the tool is waiting") { (try? await setup.server.clients(of: "alice").count) == 1 }
            process.interrupt()
            process.waitUntilExit()
            try errors.close()
            #expect(process.terminationStatus == 130)
            let said = try String(contentsOfFile: errorsPath, encoding: .utf8)
            #expect(said.contains("interrupted") && said.contains("state: the servers accept the old and the new password"), "\(said)")
            #expect(said.contains("to resume: redis-rotation rotate password"), "\(said)")

            let new = try setup.file().password
            #expect(await setup.canLogIn(new))
            #expect(await setup.canLogIn(setup.old), "interrupted, the old password still works")
            // Killed on the server: a close on our side could be outlived by a copy of the socket that a
            // process spawned meanwhile by another test inherited.
            try await setup.server.admin("CLIENT", "KILL", "ID", .integer(try #require(straggler.clientID)))
            await straggler.waitUntilClosed()

            let resumed = try await runTool(arguments.map { $0 == "60" ? "5" : $0 })
            #expect(resumed.status == 0, "\(resumed.stdout)\(resumed.stderr)")
            #expect(resumed.stdout.contains("finished the interrupted rotation"), "\(resumed.stdout)")
            #expect(try setup.file().password == new, "the file keeps the password it was interrupted with")
            #expect(try await setup.hashes() == [new.sha256Hex])
            #expect(await setup.canLogIn(new))
            #expect(await !setup.canLogIn(setup.old))
        }
    }

    @Test("a connection opened with the old password after the wait is caught by the check after the removal, and killed when asked")
    func recheckAfterRemoval() async throws {
        try await self.withSetup { setup in
            for kill in [false, true] {
                let node = try await RedisServerAdmin.connect(configuration: setup.server.adminConnectionConfiguration())
                let previous = try setup.file().password
                let steps = StepLog()
                let rotation = RedisPasswordRotation(
                    topology: RedisAdminTopology(nodes: [node]),
                    options: .init(user: "alice", passwordFile: setup.passwordFile, clientWait: .seconds(2), killStragglers: kill),
                    report: { steps.append($0) }
                )
                try await rotation.prepare()
                try await rotation.addPassword()
                try await rotation.publish()
                try await rotation.waitForClients()
                // The race the second check exists for: a client logs in with the old password between
                // the wait and the removal.
                let late = try await RedisConnection.connect(configuration: setup.server.connectionConfiguration(username: "alice", password: previous))
                if kill {
                    try await rotation.removeOldPasswords()
                    await late.waitUntilClosed()
                    #expect(steps.all.contains { $0.name == "kill" && $0.message.contains("id=\(late.clientID ?? -1)") }, "\(steps.all)")
                } else {
                    let error = await #expect(throws: RedisAdminError.self) { try await rotation.removeOldPasswords() }
                    #expect(error?.code == .stragglers)
                    #expect(error?.message.contains("id=\(late.clientID ?? -1)") == true, "\(String(describing: error))")
                    #expect(rotation.state.contains("only the password of version"), "\(rotation.state)")
                    try await setup.server.admin("CLIENT", "KILL", "ID", .integer(late.clientID ?? -1))
                }
                #expect(try await setup.hashes() == [try setup.file().password.sha256Hex])
                await node.close()
            }
        }
    }

    @Test("--dry-run checks and tells, and changes nothing")
    func dryRun() async throws {
        try await self.withSetup { setup in
            let result = try await runTool(setup.arguments(["--version", "v2", "--dry-run", "--json"]))
            #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
            let lines = result.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            #expect(lines.contains { $0["type"] as? String == "step" && $0["step"] as? String == "check" })
            let last = try #require(lines.last)
            #expect(last["result"] as? String == "dry-run")
            #expect(last["version"] as? String == "v2")
            #expect(try setup.file().version == "v1")
            #expect(try await setup.hashes() == [setup.old.sha256Hex])
        }
    }
}

/// Replicas: ACLs are not replicated, so the tool applies and persists on each.
@Suite("redis-rotation rotate password: replicas", .timeLimit(.minutes(3)))
struct RotatePasswordReplicaTests {
    /// A replica of `primary` with alice (`password`) and the primary's admin password.
    func withReplica(
        of primary: RedisServerProcess, password: RedisSecret, extra: [String] = [], replicaCount: Int = 1, _ body: (RedisServerProcess) async throws -> Void
    ) async throws {
        try await RedisServerProcess.withServer(
            .init(
                users: [.init(name: "alice", passwords: [password])],
                extraConfiguration: [
                    "replicaof 127.0.0.1 \(primary.port)", "masteruser \(primary.adminUsername)", "masterauth \(text(of: primary.adminPassword))",
                ] + extra
            )
        ) { replica in
            // One administrator password for every node, as an operator would have.
            try await replica.admin("ACL", "SETUSER", .string(replica.adminUsername), .string(">\(text(of: primary.adminPassword))"))
            try await replica.admin("ACL", "SAVE")
            let node = try await RedisServerAdmin.connect(configuration: primary.adminConnectionConfiguration())
            await eventually("the primary lists its replica") { (try? await node.replicas().count) == replicaCount }
            await node.close()
            try await body(replica)
        }
    }

    @Test("a replica gets the same ACL change, persisted, and its clients count as stragglers too")
    func replicaRotated() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { primary in
            try await self.withReplica(of: primary, password: old) { replica in
                let passwordFile = primary.directory.appendingPathComponent("alice.password").path
                try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: passwordFile)
                let adminFile = primary.directory.appendingPathComponent("admin.password").path
                try text(of: primary.adminPassword).write(toFile: adminFile, atomically: true, encoding: .utf8)
                let arguments = [
                    "rotate", "password", "--port", "\(primary.port)", "--admin-user", primary.adminUsername,
                    "--admin-password-file", adminFile, "--user", "alice", "--password-file", passwordFile, "--version", "v2",
                ]
                // A reader on the replica, on the old password.
                let reader = try await RedisConnection.connect(configuration: replica.connectionConfiguration(username: "alice", password: old, name: "reader@v1"))
                let blocked = try await runTool(arguments + ["--wait", "1"])
                #expect(blocked.status == 1, "\(blocked.stdout)\(blocked.stderr)")
                #expect(blocked.stderr.contains("127.0.0.1:\(replica.port) id=") && blocked.stderr.contains("name=reader@v1"), "\(blocked.stderr)")
                try await replica.admin("CLIENT", "KILL", "ID", .integer(try #require(reader.clientID)))
                await reader.waitUntilClosed()

                let result = try await runTool(arguments + ["--wait", "5"])
                #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
                #expect(result.stdout.contains("[add] 127.0.0.1:\(replica.port):"), "\(result.stdout)")
                let new = try RedisCredentialFile.read(from: passwordFile).password
                try await replica.restart()
                for server in [primary, replica] {
                    let connection = try await RedisConnection.connect(configuration: server.connectionConfiguration(username: "alice", password: new))
                    await connection.close()
                    await #expect(throws: RedisError.self) {
                        try await RedisConnection.connect(configuration: server.connectionConfiguration(username: "alice", password: old))
                    }
                }
            }
        }
    }

    @Test("a replica that cannot be reached stops the rotation before any change")
    func unreachableReplica() async throws {
        let old = makePassword()
        try await withAliceServer(password: old) { primary in
            // The replica announces a port nobody listens on.
            let deadPort = try RedisServerProcessPorts.closedLoopbackPort()
            try await self.withReplica(of: primary, password: old, extra: ["replica-announce-port \(deadPort)"]) { _ in
                let passwordFile = primary.directory.appendingPathComponent("alice.password").path
                try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: passwordFile)
                let adminFile = primary.directory.appendingPathComponent("admin.password").path
                try text(of: primary.adminPassword).write(toFile: adminFile, atomically: true, encoding: .utf8)
                let result = try await runTool([
                    "rotate", "password", "--port", "\(primary.port)", "--admin-user", primary.adminUsername,
                    "--admin-password-file", adminFile, "--user", "alice", "--password-file", passwordFile, "--wait", "1",
                ])
                #expect(result.status == 1, "\(result.stdout)\(result.stderr)")
                #expect(result.stderr.contains("127.0.0.1:\(deadPort)") && result.stderr.contains("nothing was changed"), "\(result.stderr)")
                #expect(try RedisCredentialFile.read(from: passwordFile).version == "v1")
                let node = try await RedisServerAdmin.connect(configuration: primary.adminConnectionConfiguration())
                #expect(try await node.passwordHashes(of: "alice") == [old.sha256Hex])
                await node.close()
            }
        }
    }
}

enum RedisServerProcessPorts {
    /// A loopback port that was free a moment ago and has nothing listening.
    static func closedLoopbackPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw POSIXError(.EADDRNOTAVAIL) }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// The steps a procedure reported, in order.
final class StepLog: Sendable {
    private let steps = Mutex<[RedisAdminStep]>([])
    func append(_ step: RedisAdminStep) { self.steps.withLock { $0.append(step) } }
    var all: [RedisAdminStep] { self.steps.withLock { $0 } }
}

/// Redis Cluster: ACLs are per node there too; every node `CLUSTER NODES` lists gets the change.
/// (The whole procedure on a real 3 + 3 cluster under traffic: ClusterRotationToolTests.)
@Suite("redis-rotation rotate password: cluster", .timeLimit(.minutes(3)))
struct RotatePasswordClusterTests {
    /// A cluster node with alice (`password`); its bus on a port of its own.
    func clusterNode(password: RedisSecret) async throws -> RedisServerProcess {
        let busPort = try RedisServerProcessPorts.closedLoopbackPort()
        return try await RedisServerProcess.start(
            .init(
                users: [.init(name: "alice", passwords: [password])],
                extraConfiguration: ["cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-port \(busPort)"]
            )
        )
    }

    @Test("every node of a cluster gets the new password, and a straggler on any node blocks the removal")
    func clusterRotated() async throws {
        let old = makePassword()
        var nodes: [RedisServerProcess] = []
        defer { for node in nodes { Task { await node.stop() } } }
        for _ in 0..<3 { nodes.append(try await self.clusterNode(password: old)) }
        let first = nodes[0]
        for node in nodes.dropFirst() {
            // One administrator password on every node, as an operator would have.
            try await node.admin("ACL", "SETUSER", .string(node.adminUsername), .string(">\(text(of: first.adminPassword))"))
            let bus = try await node.admin("CONFIG", "GET", "cluster-port").array?.last?.string ?? "0"
            try await first.admin("CLUSTER", "MEET", "127.0.0.1", .integer(node.port), .string(bus))
        }
        // Every node, not only the first: --cluster refuses nodes that disagree on the cluster.
        for node in nodes {
            await eventually("\(node.port) knows three nodes") {
                let text = (try? await node.admin("CLUSTER", "NODES").string) ?? ""
                let lines = text.split(whereSeparator: \.isNewline)
                return lines.count == 3 && !lines.contains { $0.contains("handshake") || $0.contains("noaddr") || $0.contains("fail") }
            }
        }

        let passwordFile = first.directory.appendingPathComponent("alice.password").path
        try writeAtomically("password=\(text(of: old))\nversion=v1\n", to: passwordFile)
        let adminFile = first.directory.appendingPathComponent("admin.password").path
        try text(of: first.adminPassword).write(toFile: adminFile, atomically: true, encoding: .utf8)
        var arguments = [
            "rotate", "password", "--port", "\(first.port)", "--admin-user", first.adminUsername,
            "--admin-password-file", adminFile, "--user", "alice", "--password-file", passwordFile, "--version", "v2",
        ]
        // Without --cluster a cluster node is refused, with the hint (docs/DECISIONS.md).
        let withoutFlag = try await runTool(arguments + ["--wait", "1"])
        #expect(withoutFlag.status == 2 && withoutFlag.stderr.contains("pass --cluster"), "\(withoutFlag.stdout)\(withoutFlag.stderr)")
        arguments.append("--cluster")
        let last = nodes[2]
        let straggler = try await RedisConnection.connect(configuration: last.connectionConfiguration(username: "alice", password: old, name: "app@v1"))
        let blocked = try await runTool(arguments + ["--wait", "1"])
        #expect(blocked.status == 1, "\(blocked.stdout)\(blocked.stderr)")
        #expect(blocked.stderr.contains("127.0.0.1:\(last.port) id=\(straggler.clientID ?? -1)"), "\(blocked.stderr)")
        try await last.admin("CLIENT", "KILL", "ID", .integer(straggler.clientID ?? -1))
        await straggler.waitUntilClosed()

        let rotated = try await runTool(arguments + ["--wait", "5"])
        #expect(rotated.status == 0, "\(rotated.stdout)\(rotated.stderr)")
        let new = try RedisCredentialFile.read(from: passwordFile).password
        for node in nodes {
            #expect(rotated.stdout.contains("[add] 127.0.0.1:\(node.port):"), "\(rotated.stdout)")
            let admin = try await RedisServerAdmin.connect(configuration: node.adminConnectionConfiguration())
            #expect(try await admin.passwordHashes(of: "alice") == [new.sha256Hex])
            await admin.close()
        }
        for node in nodes { await node.stop() }
    }
}
