import ArgumentParser
import Dispatch
import Foundation
import RedisRotation
import RedisRotationAdmin

/// `redis-rotation rotate`: the operator side of a rotation on open-source Redis or Valkey.
struct RotateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate",
        abstract: "Rotate a user's password or the server certificate, the way the library expects.",
        subcommands: [RotatePasswordCommand.self, RotateServerCertificateCommand.self, RotateCACommand.self]
    )
}

struct RotatePasswordCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "password",
        abstract: "Add a new password, publish it, wait until no connection uses another one, remove the old.",
        discussion: """
            Checks first, changing nothing: every node (the root primary, found by climbing ROLE, and every \
            replica below it, replicas of replicas included, as INFO replication lists them; or every node \
            of a Redis Cluster with --cluster: every node CLUSTER NODES lists, none failed, all agreeing) is \
            reachable, as many as --expect-nodes says (a replica that is down is listed by \
            nobody, so pass it), the user exists on each (a mistyped name is refused, never created), each node can \
            persist ACL changes (ACL SAVE with an aclfile, else CONFIG REWRITE; --no-persist waives it), and \
            the version is new. Then, on every node: ACL SETUSER <user> >new, persisted; the new password \
            must log in on a fresh connection before the password file is rewritten (mode and owner kept). \
            It waits until every connection of the user on every node is named <name>@<version> for the new \
            version (unnamed and other connections count as stragglers, named with id, address, name and \
            age), then leaves only the new password (resetpass >new), persisted, and checks again. \
            Stragglers after --wait are killed with --kill-stragglers; otherwise the old password stays and \
            the command exits 1. Interrupted, the user can log in with both passwords; running the same \
            command again finishes the rotation. Exit status: 0 done, 1 failed (with the state and the \
            command that resumes), 2 refused before any change (usage, unknown user, version in use, a \
            nopass or replication user, a file of another user, another run on the same file, a node \
            count other than --expect-nodes, a missing permission; with --cluster, a server not in cluster \
            mode, a node marked failed or unreachable, nodes that disagree on the cluster; without it, a \
            cluster node), 130 interrupted.
            """
    )

    @OptionGroup var target: AdminTarget
    @Option(help: "The user whose password rotates.") var user: String
    @Option(help: "The password file the clients watch (it holds the current password; rewritten).") var passwordFile: String
    @Option(help: "The version label of the new password (default: r<seconds>-<random>, unique).") var version: String?
    @Option(help: "Seconds to wait for clients to move to the new version.") var wait = 300
    @Flag(help: "After the wait, kill connections of the user still not on the new version (unnamed ones too).") var killStragglers = false
    @Flag(help: "Accept nodes that cannot persist ACL changes (they lose the new password on restart).") var noPersist = false
    @Option(help: "Refuse unless exactly this many nodes are found (a replica that is down is listed by nobody).") var expectNodes: Int?
    @Flag(help: "Go on with a warning where the administrator's permissions cannot be checked in advance (no ACL DRYRUN).") var skipPermissionCheck = false
    @Flag(help: "The node named is part of a Redis Cluster: rotate on every node CLUSTER NODES lists (primaries and replicas), refusing if one is failed or unreachable.") var cluster = false
    @Flag(help: "Check and show what would happen; change nothing.") var dryRun = false
    @Flag(help: "Print steps and the result as JSON objects, one per line.") var json = false

    func validate() throws {
        guard self.wait >= 0 else { throw ValidationError("--wait must not be negative") }
        if let version = self.version, !RedisPasswordRotation.isUsableVersion(version) {
            throw ValidationError("--version: \(RedisPasswordRotation.versionRule)")
        }
        if let count = self.expectNodes, count < 1 { throw ValidationError("--expect-nodes must be at least 1") }
    }

    func run() async throws {
        let printer = StepPrinter(json: self.json)
        let configuration = try self.target.connectionConfiguration()
        let topology: RedisAdminTopology
        do {
            if self.cluster {
                topology = try await RedisAdminTopology.discoverCluster(configuration: configuration)
            } else {
                try await refuseClusterWithoutFlag(configuration)
                topology = try await RedisAdminTopology.discover(configuration: configuration)
            }
        } catch let error as RedisAdminError {
            // With --cluster, every discovery failure (a node failed, unreachable, or the nodes
            // disagree) is a refusal before any change.
            throw self.failure(error, state: "nothing was changed", printer: printer, resumable: false, refused: self.cluster)
        }
        defer { Task { await topology.close() } }
        let rotation = RedisPasswordRotation(
            topology: topology,
            options: .init(
                user: self.user,
                passwordFile: self.passwordFile,
                version: self.version,
                clientWait: .seconds(self.wait),
                killStragglers: self.killStragglers,
                allowUnpersisted: self.noPersist,
                expectedNodeCount: self.expectNodes,
                skipPermissionCheck: self.skipPermissionCheck
            ),
            report: { printer.step($0) }
        )
        // Ctrl-C cancels the work; the user can still log in with what the file holds, and the same
        // command resumes. Said before exiting, like any other failure.
        let work = Task { try await self.perform(rotation, topology: topology, printer: printer) }
        signal(SIGINT, SIG_IGN)
        let interrupt = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        interrupt.setEventHandler { work.cancel() }
        interrupt.resume()
        defer { interrupt.cancel() }
        do {
            try await work.value
        } catch {
            await topology.close()
            let resumable = rotation.state != "nothing was changed"
            // Interrupted first: a step cancelled by Ctrl-C may still have failed with its own error.
            if work.isCancelled {
                let interrupted = RedisAdminError(code: .unexpectedState, message: "interrupted")
                let failure = self.failure(interrupted, state: rotation.state, printer: printer, resumable: resumable)
                throw RunFailure(description: failure.description, exitCode: 130)
            }
            guard let error = error as? RedisAdminError else { throw error }
            throw self.failure(error, state: rotation.state, printer: printer, resumable: resumable)
        }
    }

    private func perform(_ rotation: RedisPasswordRotation, topology: RedisAdminTopology, printer: StepPrinter) async throws {
        let plan = try await rotation.prepare()
        if self.dryRun {
            let steps = self.plannedSteps(plan)
            if self.json {
                printer.emit(["type": "result", "result": "dry-run", "version": plan.version, "resuming": plan.resuming, "nodes": plan.nodes, "would": steps])
            } else {
                printer.line("dry run, nothing changed; would:")
                for step in steps { printer.line("  - \(step)") }
            }
            await topology.close()
            return
        }
        try await rotation.addPassword()
        if !plan.resuming { try await rotation.publish() }
        try await rotation.waitForClients()
        try await rotation.removeOldPasswords()
        await topology.close()
        if self.json {
            printer.emit(["type": "result", "result": plan.resuming ? "resumed" : "rotated", "version": plan.version, "resumed": plan.resuming, "nodes": plan.nodes])
        } else if plan.resuming {
            printer.line("finished the interrupted rotation: \(self.user) has only version \(plan.version); run again for a new password")
        } else {
            printer.line("rotated: \(self.user) has only version \(plan.version)")
        }
    }

    private func plannedSteps(_ plan: RedisPasswordRotation.Plan) -> [String] {
        var steps: [String] = []
        if plan.resuming {
            steps.append("finish the interrupted rotation to version \(plan.version) (the file already holds it)")
        } else {
            steps.append("add a new password (version \(plan.version)) to \(plan.user) on \(plan.nodes.joined(separator: ", ")) and persist (\(plan.nodes.map { "\($0): \(plan.persistence[$0] ?? "?")" }.joined(separator: ", ")))")
            steps.append("verify it on a fresh connection to every node")
            steps.append("write version \(plan.version) to \(self.passwordFile) (mode and owner kept)")
        }
        steps.append("wait up to \(self.wait) s until every connection of \(plan.user) is on \(plan.version)\(self.killStragglers ? ", then kill the others" : "")")
        steps.append("leave only the new password on every node, persist, check connections again")
        return steps
    }

    private func failure(_ error: RedisAdminError, state: String, printer: StepPrinter, resumable: Bool, refused: Bool = false) -> RunFailure {
        let refusedBeforeChange = refused || [RedisAdminError.Code.userNotFound, .versionInUse, .cannotPersist, .unexpectedTopology, .unsafeSetup, .concurrentRotation]
            .contains(error.code)
        let resume = resumable ? resumeCommand() : nil
        if self.json {
            var object: [String: Any] = ["type": "result", "result": "failed", "code": "\(error.code)", "message": error.message, "state": state]
            if let resume { object["resume"] = resume }
            printer.emit(object)
        }
        var text = "\(error.message)\nstate: \(state)"
        if let resume { text += "\nto resume: \(resume)" }
        return RunFailure(description: text, exitCode: refusedBeforeChange || error.code == .passwordFile && !resumable ? 2 : 1)
    }
}

struct RotateServerCertificateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server-certificate",
        abstract: "Switch the server to a new certificate and key, checked before and verified after.",
        discussion: """
            Before any change the pair is refused when the key does not match the certificate, the \
            certificate is expired or not yet valid, lacks server authentication, or its names do not cover \
            --server-name (default: --host). Then CONFIG SET tls-cert-file/tls-key-file; a fresh TLS \
            handshake on the server's tls-port, trusting --ca-file, must see the new certificate, or the \
            previous pair is restored. Persisted with CONFIG REWRITE when the server has a configuration \
            file. Paths are as the server sees them and must be absolute (the server would resolve a \
            relative one against its own working directory); the tool reads them too, so run it where they \
            are the same files. Existing connections keep their sessions; --kill-user makes a user's clients \
            handshake again now.
            """
    )

    @OptionGroup var target: AdminTarget
    @Option(help: "The new certificate file, as a path on the server.") var newCertFile: String
    @Option(help: "The new key file, as a path on the server.") var newKeyFile: String
    @Option(help: "Afterwards, disconnect this user's connections so that they handshake again.") var killUser: String?
    @Flag(help: "Check the pair and show what would happen; change nothing.") var dryRun = false
    @Flag(help: "Print steps and the result as JSON objects, one per line.") var json = false

    func validate() throws {
        try requireAbsolute(["--new-cert-file": self.newCertFile, "--new-key-file": self.newKeyFile])
    }

    func run() async throws {
        let printer = StepPrinter(json: self.json)
        let serverName = self.target.serverName ?? self.target.host
        do {
            let certificate = try RedisServerCertificateRotation.check(certificateFile: self.newCertFile, keyFile: self.newKeyFile, serverName: serverName)
            printer.step(RedisAdminStep(name: "check", message: "\(certificate.subject): key matches, valid until \(certificate.notAfter), covers \(serverName)"))
            guard let caFile = self.target.caFile else {
                throw RunFailure(description: "--ca-file is needed to verify the new certificate with a fresh handshake; nothing was changed", exitCode: 2)
            }
            let verification: RedisConnectionConfiguration.TLS
            do {
                let identity = self.target.certFile.map { RedisTLSClientIdentity(certificateChain: .file($0), privateKey: .file(self.target.keyFile ?? $0)) }
                let context = try RedisTLSContext(configuration: .init(trustAnchors: [.file(caFile)], clientIdentity: identity))
                verification = .init(context: context, serverName: serverName)
            } catch {
                throw RunFailure(description: error.message, exitCode: 2)
            }
            if self.dryRun {
                if self.json {
                    printer.emit(["type": "result", "result": "dry-run", "subject": certificate.subject, "sha256": certificate.sha256Fingerprint])
                } else {
                    printer.line("dry run, nothing changed; would: CONFIG SET the pair, verify with a fresh handshake (restoring the old pair otherwise), CONFIG REWRITE\(self.killUser.map { ", kill the connections of \($0)" } ?? "")")
                }
                return
            }
            let node = try await self.target.connect()
            defer { Task { await node.close() } }
            do {
                try await RedisServerCertificateRotation.apply(
                    certificateFile: self.newCertFile,
                    keyFile: self.newKeyFile,
                    certificate: certificate,
                    on: node,
                    verifyWith: verification,
                    report: { printer.step($0) }
                )
                if let user = self.killUser {
                    let killed = try await node.killConnections(of: user)
                    printer.step(RedisAdminStep(name: "kill", node: node.address, message: "disconnected \(killed) connection(s) of \(user)"))
                }
            } catch let error as RedisAdminError {
                await node.close()
                if self.json { printer.emit(["type": "result", "result": "failed", "code": "\(error.code)", "message": error.message]) }
                throw RunFailure(description: error.message, exitCode: 1)
            }
            await node.close()
            if self.json {
                printer.emit(["type": "result", "result": "rotated", "subject": certificate.subject, "sha256": certificate.sha256Fingerprint])
            } else {
                printer.line("the server now presents \(certificate.subject)")
            }
        } catch let error as RedisAdminError {
            if self.json { printer.emit(["type": "result", "result": "refused", "code": "\(error.code)", "message": error.message]) }
            throw RunFailure(description: error.message, exitCode: 2)
        }
    }
}

struct RotateCACommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca",
        abstract: "Roll the trust anchor over: old+new CA bundle, clients reconnect, new server certificate, new CA only.",
        discussion: """
            Checks first, changing nothing: the server is a single node (with replicas or cluster nodes it \
            refuses: it switches one node's certificate, and the others would fail handshakes once the old \
            CA is dropped), the bundle and the new CA parse, the new server certificate and \
            key match, are valid, cover --server-name (default: --host) and are issued by the new CA. Then: \
            writes the bundle with the old and the new CA (mode and owner kept); waits until every connection \
            of each --user was opened after that plus --reload-grace (RedisRotation clients roll their \
            connections onto a new trust set by themselves; others must reconnect); switches the server \
            certificate as rotate server-certificate does (verified with a fresh handshake trusting only the \
            new CA, restored otherwise, persisted with CONFIG REWRITE); writes the bundle with the new CA only.
            """
    )

    @OptionGroup var target: AdminTarget
    @Option(help: "The CA bundle file the clients trust (rewritten).") var bundleFile: String
    @Option(help: "The new CA certificate (PEM).") var newCaFile: String
    @Option(help: "The server certificate issued by the new CA, as a path on the server.") var newCertFile: String
    @Option(help: "Its key, as a path on the server.") var newKeyFile: String
    @Option(help: "A user whose connections must reconnect before the switch (repeatable).") var user: [String] = []
    @Option(help: "Seconds to wait for those connections.") var wait = 300
    @Option(help: "Seconds the clients may take to notice the bundle change.") var reloadGrace = 2
    @Flag(help: "After the wait, kill connections opened before the new bundle.") var killStragglers = false
    @Option(help: "Refuse unless exactly this many nodes are found (a replica that is down is listed by nobody).") var expectNodes: Int?
    @Flag(help: "Check and show what would happen; change nothing.") var dryRun = false
    @Flag(help: "Print steps and the result as JSON objects, one per line.") var json = false

    func validate() throws {
        guard self.wait >= 0, self.reloadGrace >= 0 else { throw ValidationError("--wait and --reload-grace must not be negative") }
        guard !self.user.isEmpty else { throw ValidationError("name the users whose clients trust the bundle with --user") }
        if let count = self.expectNodes, count < 1 { throw ValidationError("--expect-nodes must be at least 1") }
        try requireAbsolute(["--new-cert-file": self.newCertFile, "--new-key-file": self.newKeyFile])
    }

    func run() async throws {
        let printer = StepPrinter(json: self.json)
        let serverName = self.target.serverName ?? self.target.host
        // The switch changes one node's certificate; with replicas or cluster nodes the others would
        // still present a certificate from the old CA when it is dropped from the bundle.
        let topology: RedisAdminTopology
        do {
            topology = try await RedisAdminTopology.discover(configuration: try self.target.connectionConfiguration())
        } catch let error as RedisAdminError {
            throw RunFailure(description: "\(error.message)", exitCode: 1)
        }
        // A replica that is down is listed by nobody: only the operator's count reveals it, and it
        // would come back presenting a certificate from the old CA.
        if let expected = self.expectNodes, expected != topology.nodes.count {
            await topology.close()
            let message = "found \(topology.nodes.count) node(s) (\(topology.addresses.joined(separator: ", "))), expected \(expected): a node that is down or not linked is listed by nobody and would miss the switch. Nothing was changed"
            if self.json { printer.emit(["type": "result", "result": "refused", "code": "\(RedisAdminError.Code.unexpectedTopology)", "message": message]) }
            throw RunFailure(description: message, exitCode: 2)
        }
        guard topology.nodes.count == 1 else {
            await topology.close()
            let message = "\(self.target.host):\(self.target.port) is one of \(topology.nodes.count) nodes (\(topology.addresses.joined(separator: ", "))), and rotate ca switches the certificate of one: the others would still present a certificate from the old CA once it is dropped from the bundle. Roll over by hand: write the bundle with both CAs, rotate server-certificate on every node, then write the new CA only. Nothing was changed"
            if self.json { printer.emit(["type": "result", "result": "refused", "code": "\(RedisAdminError.Code.unexpectedTopology)", "message": message]) }
            throw RunFailure(description: message, exitCode: 2)
        }
        let node = topology.nodes[0]
        defer { Task { await node.close() } }
        let rollover = RedisCARollover(
            node: node,
            options: .init(
                bundleFile: self.bundleFile,
                newCAFile: self.newCaFile,
                serverCertificateFile: self.newCertFile,
                serverKeyFile: self.newKeyFile,
                serverName: serverName,
                users: self.user,
                clientWait: .seconds(self.wait),
                reloadGrace: .seconds(self.reloadGrace),
                killStragglers: self.killStragglers
            ),
            report: { printer.step($0) }
        )
        let check: RedisCARollover.Check
        do {
            check = try rollover.check()
        } catch let error as RedisAdminError {
            await node.close()
            if self.json { printer.emit(["type": "result", "result": "refused", "code": "\(error.code)", "message": error.message]) }
            throw RunFailure(description: error.message, exitCode: 2)
        }
        printer.step(RedisAdminStep(name: "check", message: "new CA \(check.newCA.subject); server certificate \(check.serverCertificate.subject) covers \(serverName); the bundle holds \(check.currentAnchors.count) CA(s)"))
        if self.dryRun {
            let steps = [
                "write the old and the new CA to \(self.bundleFile)",
                "wait up to \(self.wait) s until every connection of \(self.user.joined(separator: ", ")) is newer than that\(self.killStragglers ? ", then kill the others" : "")",
                "switch the server to \(self.newCertFile), verify with a handshake trusting only the new CA, CONFIG REWRITE",
                "write the new CA only to \(self.bundleFile)",
            ]
            if self.json {
                printer.emit(["type": "result", "result": "dry-run", "would": steps])
            } else {
                printer.line("dry run, nothing changed; would:")
                for step in steps { printer.line("  - \(step)") }
            }
            await node.close()
            return
        }
        // The verifying handshake trusts only the new CA (and presents the admin's certificate for mutual TLS).
        let tls: RedisConnectionConfiguration.TLS
        do {
            let identity = self.target.certFile.map { RedisTLSClientIdentity(certificateChain: .file($0), privateKey: .file(self.target.keyFile ?? $0)) }
            tls = .init(context: try RedisTLSContext(configuration: .init(trustAnchors: [.file(self.newCaFile)], clientIdentity: identity)), serverName: serverName)
        } catch {
            await node.close()
            throw RunFailure(description: error.message, exitCode: 2)
        }
        do {
            try await rollover.run(check, verifyWith: tls)
        } catch let error as RedisAdminError {
            await node.close()
            if self.json { printer.emit(["type": "result", "result": "failed", "code": "\(error.code)", "message": error.message]) }
            throw RunFailure(description: error.message, exitCode: 1)
        }
        await node.close()
        if self.json {
            printer.emit(["type": "result", "result": "rotated", "ca": check.newCA.subject])
        } else {
            printer.line("rolled over to \(check.newCA.subject)")
        }
    }
}

/// Certificate and key paths are handed to the server, which resolves a relative one against its own
/// working directory, not the operator's: the tool would check one file and the server load another.
func requireAbsolute(_ paths: [String: String]) throws {
    for (option, path) in paths.sorted(by: { $0.key < $1.key }) where !path.hasPrefix("/") {
        throw ValidationError("\(option) must be an absolute path: the server resolves a relative one against its own working directory, not this one")
    }
}
