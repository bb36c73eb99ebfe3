#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
public import RedisRotation
import Synchronization

/// The operator's side of a password rotation, in the order that never locks a client out:
///
/// 1. ``prepare()`` changes nothing: it takes the password file's lock (one rotation per file); every
///    node reachable (as many as ``Options/expectedNodeCount``), the user exists on each
///    (`ACL GETUSER`; a mistyped name is never created) and is neither `nopass` nor the user a replica
///    authenticates with, the file names no other user, each node can persist its ACL (no
///    `CONFIG REWRITE` over `include` lines), the administrator may run every command needed
///    (`ACL DRYRUN`), the version is usable and not in use. It also
///    recognises an interrupted rotation (the user holds more than one password and the password
///    file holds one of them, with a version) and, unless another version is asked for, finishes
///    that one instead of starting anew, unless the lock file's journal says the earlier run never
///    published. (A new rotation also ends with only its own password.)
/// 2. ``addPassword()``: `ACL SETUSER user >new` and persist, on every node; then the new password must
///    log in on a fresh connection to every node, or it is removed again and nothing is published.
/// 3. ``publish()``: the password file is replaced (`RedisCredentialFile.write(to:)`, never readable
///    by others); once renamed it is never taken back.
/// 4. ``waitForClients()``: until no connection of the user on any node is on another version
///    (unnamed and renamed connections included), or the wait ends.
/// 5. ``removeOldPasswords()``: `resetpass >new` and persist on every node; stragglers are killed
///    when asked (after the old password is gone, so they cannot come back with it); the connections
///    are checked again, and each node must hold exactly the new password.
///
/// ``run()`` performs them all. Each step is reported as it happens; ``state`` says where things
/// stand when one fails. Interrupted at any point, the user can log in with the password in the file.
public final class RedisPasswordRotation: Sendable {
    /// What to rotate and how.
    public struct Options: Sendable {
        /// The ACL user whose password rotates.
        public var user: String
        /// The password file the clients watch.
        public var passwordFile: String
        /// The new version label; `nil` makes a unique one (`r<seconds>-<random>`).
        public var version: String?
        /// How long to wait for every connection to move to the new version. Default: 5 minutes.
        public var clientWait: Duration
        /// How often connections are listed while waiting. Default: 200 ms.
        public var pollInterval: Duration
        /// Whether connections still on another version after the wait are killed. Default: no.
        public var killStragglers: Bool
        /// Whether a node that can persist neither with `ACL SAVE` nor `CONFIG REWRITE` is accepted
        /// (its change is lost on restart). Default: no, such a node is refused.
        public var allowUnpersisted: Bool
        /// How many nodes the topology must have; `nil` accepts what discovery found. A replica that
        /// is down is listed by nobody, so only this catches it. Default: `nil`.
        public var expectedNodeCount: Int?
        /// Whether a node that cannot check the administrator's permissions in advance (no
        /// `ACL DRYRUN`, or the administrator may not run it) is accepted with a warning. Default: no,
        /// it is refused: a missing permission would stop the run half way.
        public var skipPermissionCheck: Bool

        public init(
            user: String,
            passwordFile: String,
            version: String? = nil,
            clientWait: Duration = .seconds(300),
            pollInterval: Duration = .milliseconds(200),
            killStragglers: Bool = false,
            allowUnpersisted: Bool = false,
            expectedNodeCount: Int? = nil,
            skipPermissionCheck: Bool = false
        ) {
            self.user = user
            self.passwordFile = passwordFile
            self.version = version
            self.clientWait = clientWait
            self.pollInterval = pollInterval
            self.killStragglers = killStragglers
            self.allowUnpersisted = allowUnpersisted
            self.expectedNodeCount = expectedNodeCount
            self.skipPermissionCheck = skipPermissionCheck
        }
    }

    /// One thing that happened (or, from ``prepare()``, was found), as it happened.
    public typealias Step = RedisAdminStep

    /// What ``prepare()`` decided.
    public struct Plan: Sendable, Hashable, Codable {
        public var user: String
        /// The version the rotation ends on.
        public var version: String
        /// Whether this finishes an interrupted rotation (the file's password and version are kept).
        /// A run interrupted before it published is not resumed: its unpublished password is not in the
        /// file, and finishing would keep the password the operator set out to replace. A new rotation
        /// starts instead, which removes both.
        public var resuming: Bool
        /// The version the password file held before.
        public var previousFileVersion: String?
        /// `host:port` of every node, primary first.
        public var nodes: [String]
        /// How each node persists its ACL (`ACL SAVE`, `CONFIG REWRITE`, `none`).
        public var persistence: [String: String]
    }

    private struct Progress: Sendable {
        var plan: Plan?
        var password: RedisSecret?
        /// The `username=` line of the file as prepare() read it, kept for the publish.
        var fileUsername: String?
        var persistence: [String: RedisACLPersistence] = [:]
        var added = false
        var published = false
        /// Nodes sent the removal (marked before the command: it may apply though its reply is lost)
        /// and nodes that confirmed it.
        var removalSent: [String] = []
        var removalDone: [String] = []
        var lock: PasswordFileLock?
    }

    public let topology: RedisAdminTopology
    public let options: Options
    private let report: @Sendable (Step) -> Void
    private let progress = Lock(Progress())

    /// - Parameters:
    ///   - topology: The nodes to change (every node of the replication tree or cluster).
    ///   - options: The user, the password file, the version and what to do about stragglers.
    ///   - report: Called with each step as it happens.
    public init(topology: RedisAdminTopology, options: Options, report: @escaping @Sendable (Step) -> Void = { _ in }) {
        self.topology = topology
        self.options = options
        self.report = report
    }

    /// The plan, once ``prepare()`` made it.
    public var plan: Plan? { self.progress.withLock { $0.plan } }

    private func say(_ name: String, _ node: RedisServerAdmin? = nil, _ message: String) {
        self.report(Step(name: name, node: node?.address, message: message))
    }

    /// Runs every step in order and returns the plan it carried out.
    @discardableResult
    public func run() async throws -> Plan {
        let plan = try await self.prepare()
        if !plan.resuming {
            try await self.addPassword()
            try await self.publish()
        } else {
            // The file already holds the password: make sure every node accepts it, then finish.
            try await self.addPassword()
        }
        try await self.waitForClients()
        try await self.removeOldPasswords()
        return plan
    }

    // MARK: 1. Checks, nothing changed

    /// Checks everything that can be checked before a change and decides between a new rotation and
    /// finishing an interrupted one. Changes nothing, except that it takes the lock
    /// `<password file>.lock`, held until ``removeOldPasswords()`` finishes or this object goes away:
    /// a second rotation of the same file is refused (`concurrentRotation`) meanwhile.
    @discardableResult
    public func prepare() async throws -> Plan {
        let journal = try self.lockPasswordFile()
        do {
            return try await self.check(journal: journal)
        } catch {
            self.progress.withLock { if $0.plan == nil { $0.lock = nil } }
            throw error
        }
    }

    /// Takes the lock (once) and returns the journal a previous run left in it.
    private func lockPasswordFile() throws(RedisAdminError) -> String {
        if let held = self.progress.withLock({ $0.lock }) { return held.journal() }
        let path = self.options.passwordFile + ".lock"
        do {
            try checkFileReplaceable(at: self.options.passwordFile, what: "the password file")
        } catch {
            throw RedisAdminError(code: .passwordFile, message: "\(error.message); nothing was changed", underlying: error)
        }
        guard let lock = try PasswordFileLock(path: path) else {
            throw RedisAdminError(
                code: .concurrentRotation,
                message: "another rotation of \(self.options.passwordFile) is running (it holds \(path)); two at once would each remove the password the other published. Nothing was changed"
            )
        }
        self.progress.withLock { $0.lock = lock }
        return lock.journal()
    }

    private func check(journal: String) async throws -> Plan {
        let user = self.options.user
        let file: RedisCredentialFile?
        do {
            file = try RedisCredentialFile.read(from: self.options.passwordFile)
        } catch {
            throw RedisAdminError(code: .passwordFile, message: "\(error.message); nothing was changed", underlying: error)
        }
        // Publishing never leaves a password readable by others; a client that reads the file as
        // "others" would lose it at the publish and, with --kill-stragglers, be locked out.
        var status = stat()
        if lstat(self.options.passwordFile, &status) == 0, status.st_mode & 0o004 != 0 {
            throw RedisAdminError(
                code: .passwordFile,
                message: "\(self.options.passwordFile) is readable by others (mode \(String(status.st_mode & 0o7777, radix: 8))): the new password will not be, so a client reading it as others would be locked out; nothing was changed. chmod o-r and give the client's group access (or an ACL entry), then run again"
            )
        }
        if let fileUser = file?.username, fileUser != user {
            throw RedisAdminError(
                code: .passwordFile,
                message: "\(self.options.passwordFile) is the password file of \(fileUser), not of \(user): its clients would log in as \(fileUser) with \(user)'s new password. Nothing was changed"
            )
        }
        // One server reached under two addresses would count twice against --expect-nodes, hiding
        // a node that is down.
        var addressByRunID: [String: String] = [:]
        for node in self.topology.nodes {
            let runID = try await node.runID()
            if let other = addressByRunID[runID] {
                throw RedisAdminError(
                    code: .unexpectedTopology,
                    message: "\(other) and \(node.address) are the same server (run_id \(runID)); counted twice, it would hide a node that is down. Nothing was changed"
                )
            }
            addressByRunID[runID] = node.address
        }
        if let expected = self.options.expectedNodeCount, expected != self.topology.nodes.count {
            throw RedisAdminError(
                code: .unexpectedTopology,
                message: "found \(self.topology.nodes.count) node(s) (\(self.topology.addresses.joined(separator: ", "))), expected \(expected): a node that is down or not linked is listed by nobody and would keep the old password. Nothing was changed"
            )
        }
        var hashesByNode: [String: [String]] = [:]
        var persistence: [String: RedisACLPersistence] = [:]
        for node in self.topology.nodes {
            guard let account = try await node.aclUser(user) else {
                throw RedisAdminError(
                    code: .userNotFound,
                    message: "the user \(user) does not exist on \(node.address); nothing was changed (a mistyped name would otherwise be created as a new user)"
                )
            }
            if account.flags.contains("nopass") {
                throw RedisAdminError(
                    code: .unsafeSetup,
                    message: "\(user) on \(node.address) is nopass (any password logs in); adding a password clears nopass, so its clients would be refused before the new password reaches them. Give it a password first (ACL SETUSER \(user) resetpass >...), publish that, then rotate. Nothing was changed"
                )
            }
            if try await node.replicationUser() == user {
                throw RedisAdminError(
                    code: .unsafeSetup,
                    message: "\(node.address) authenticates to its primary as \(user) (masteruser/masterauth): removing the old password would break replication, and this tool does not rewrite masterauth. Give replication a user of its own, or rotate this one by hand (CONFIG SET masterauth and CONFIG REWRITE on every replica before removing the old password). Nothing was changed"
                )
            }
            hashesByNode[node.address] = account.passwordHashes
            var mode = try await node.aclPersistence()
            if mode == .configRewrite {
                switch try await node.configFileIncludes() {
                case true?:
                    guard self.options.allowUnpersisted else {
                        throw RedisAdminError(
                            code: .cannotPersist,
                            message: "\(node.address) keeps its users in a configuration file with include lines: CONFIG REWRITE would write every user into the main file while the included one still defines them, and the server would refuse to start. Configure an aclfile, or accept an unsaved change with --no-persist. Nothing was changed"
                        )
                    }
                    mode = .none
                case nil:
                    self.say("warn", node, "cannot read the configuration file here to check it for include lines; CONFIG REWRITE breaks the next start if users are also defined in an included file")
                case false?:
                    break
                }
            }
            if mode == .none && !self.options.allowUnpersisted {
                throw RedisAdminError(
                    code: .cannotPersist,
                    message: "\(node.address) has neither an ACL file nor a configuration file, so a changed password would be lost on restart while the clients keep only the new one; nothing was changed. Configure an aclfile, or accept the risk with --no-persist"
                )
            }
            try await self.checkPermissions(on: node, persistence: mode)
            persistence[node.address] = mode
            self.say("check", node, "\(user) has \(account.passwordHashes.count) password(s); ACL changes persist with \(mode)")
        }
        if self.topology.isCluster {
            let primaries = self.topology.clusterMembers.values.filter(\.isPrimary).count
            self.say("check", nil, "found \(self.topology.nodes.count) cluster node(s), every one CLUSTER NODES lists (\(primaries) primaries, \(self.topology.nodes.count - primaries) replicas), each reachable and agreeing on the cluster")
        } else if self.options.expectedNodeCount == nil {
            self.say("check", nil, "found \(self.topology.nodes.count) node(s); a replica that is down is listed by nobody: pass --expect-nodes with the count you run to make sure none is missing")
        }

        // An interrupted rotation: more than one password somewhere, and the file's (versioned) password
        // among them. Finishing it is always safe: the clients already have the file.
        // An interruption before publishing leaves the same picture with the *old* password in the
        // file; the lock file's journal tells them apart.
        let fileHash = file?.password.sha256Hex
        let unpublished = journal.hasPrefix("adding=") && journal.dropFirst("adding=".count) != file?.version ?? ""
        let resuming: Bool
        if let file, let fileHash, let fileVersion = file.version, self.options.version.map({ $0 == fileVersion }) ?? true,
            hashesByNode.values.contains(where: { $0.contains(fileHash) }),
            hashesByNode.values.contains(where: { $0.count > 1 }), !unpublished
        {
            resuming = true
        } else {
            resuming = false
        }
        if unpublished && hashesByNode.values.contains(where: { $0.count > 1 }) {
            self.say("check", nil, "an earlier run was interrupted before it published \(journal.dropFirst("adding=".count)); its password is not in the file, so a new rotation starts (it removes that one too)")
        }

        let version: String
        let password: RedisSecret
        if resuming, let file, let fileVersion = file.version {
            version = fileVersion
            password = file.password
            self.say("resume", nil, "an interrupted rotation: the file holds version \(fileVersion), which the server accepts next to another password; finishing it")
        } else {
            version = self.options.version ?? Self.uniqueVersion()
            guard Self.isUsableVersion(version) else {
                throw RedisAdminError(code: .versionInUse, message: Self.versionRule)
            }
            if version == file?.version {
                throw RedisAdminError(code: .versionInUse, message: "the password file already holds version \(version); choose a new one (or omit --version); nothing was changed")
            }
            for node in self.topology.nodes {
                let using = try await node.connections(of: user).filter { $0.credentialVersion == version }
                if !using.isEmpty {
                    throw RedisAdminError(
                        code: .versionInUse,
                        message: "version \(version) is already in use on \(node.address) (\(using.map(\.description).joined(separator: "; "))); a reused version would look rotated before anyone moved; nothing was changed"
                    )
                }
            }
            password = Self.randomPassword()
        }
        let plan = Plan(
            user: user,
            version: version,
            resuming: resuming,
            previousFileVersion: file?.version,
            nodes: self.topology.addresses,
            persistence: persistence.mapValues(\.description)
        )
        self.progress.withLock {
            $0.plan = plan
            $0.password = password
            $0.fileUsername = file?.username
            $0.persistence = persistence
            $0.published = resuming
        }
        return plan
    }

    /// Refuses, before any change, an administrator who could add the password but not persist,
    /// list or kill: that run would stop half way. A server without `ACL DRYRUN` (before Redis 7)
    /// gets a warning instead.
    private func checkPermissions(on node: RedisServerAdmin, persistence: RedisACLPersistence) async throws {
        var commands: [[String]] = [["ACL", "SETUSER", self.options.user], ["ACL", "GETUSER", self.options.user], ["CLIENT", "LIST"]]
        if persistence == .aclSave { commands.append(["ACL", "SAVE"]) }
        if persistence == .configRewrite { commands.append(["CONFIG", "REWRITE"]) }
        if self.options.killStragglers { commands.append(["CLIENT", "KILL", "ID", "1"]) }
        for command in commands {
            let denial: String?
            do {
                denial = try await node.permissionDenial(for: command)
            } catch let error as RedisAdminError where error.code == .serverRefused {
                guard self.options.skipPermissionCheck else {
                    throw RedisAdminError(
                        code: .unsafeSetup,
                        message: "cannot check the administrator's permissions on \(node.address) in advance (\(error.message)); a missing one would stop the run half way. Allow ACL DRYRUN (+acl|dryrun), or accept the risk with --skip-permission-check. Nothing was changed",
                        underlying: error
                    )
                }
                self.say("warn", node, "cannot check the administrator's permissions in advance (\(error.message)); a missing one stops the run half way (the new password is then taken back)")
                return
            }
            if let denial {
                throw RedisAdminError(
                    code: .unsafeSetup,
                    message: "the administrator \(node.configuration.username ?? "default") may not run \(command.prefix(2).joined(separator: " ")) on \(node.address) (\(denial)), which this rotation needs; nothing was changed"
                )
            }
        }
    }

    // MARK: 2. Add, persist, verify

    /// Adds the new password on every node and persists it, then verifies that it logs in on a fresh
    /// connection to every node. When verification fails the password is removed again: nothing is
    /// published that does not work.
    public func addPassword() async throws {
        let (plan, password, persistence) = try self.prepared()
        if !plan.resuming { self.progress.withLock { $0.lock }?.record("adding=\(plan.version)") }
        do {
            for node in self.topology.nodes {
                try Task.checkCancellation()
                // Marked before the command: sent, it may have been applied even if the reply is lost.
                self.progress.withLock { $0.added = true }
                try await node.addPassword(password, to: plan.user)
                self.say("add", node, "added the password of version \(plan.version) to \(plan.user) (the old one stays valid)")
                if let mode = persistence[node.address], mode != .none {
                    try await node.persist(mode)
                    self.say("persist", node, "saved with \(mode)")
                }
            }
        } catch {
            // A failure or Ctrl-C half way: unpublished, the new password only widens access.
            guard !plan.resuming, self.progress.withLock({ $0.added }) else { throw error }
            let removed = await self.takeBack(password, plan: plan, persistence: persistence)
            if error is CancellationError || Task.isCancelled { throw CancellationError() }
            let reason = (error as? RedisAdminError)?.message ?? "\(error)"
            throw RedisAdminError(
                code: (error as? RedisAdminError)?.code ?? .serverRefused,
                message: "\(reason); \(removed ? "the new password was removed again" : "the new password could not be removed from every node") and the password file was not changed",
                underlying: error
            )
        }
        for node in self.topology.nodes {
            // Ctrl-C before or during a verification that still logged in: unpublished, the password
            // is taken back all the same (a fast login can finish before the cancellation reaches it).
            var verification = await node.verifyLogin(user: plan.user, password: password, name: "redis-rotation-verify@\(plan.version)")
            if Task.isCancelled, case .success = verification {
                verification = .failure(RedisAdminError(code: .verificationFailed, message: "the rotation was interrupted before \(node.address) was verified"))
            }
            if case .failure(let error) = verification {
                // Ctrl-C fails the verification too: take the password back all the same, then say
                // it was an interruption, not a password that does not work.
                let cancelled = Task.isCancelled
                if plan.resuming {
                    // The file already holds this password and clients may use it: never take it back.
                    if cancelled { throw CancellationError() }
                    throw RedisAdminError(
                        code: .verificationFailed,
                        message: "\(error.message); the password file already held version \(plan.version) (published by the interrupted run), so it stays, and so does the old password. Fix the node, then run again",
                        underlying: error
                    )
                }
                let removed = await self.takeBack(password, plan: plan, persistence: persistence)
                if cancelled { throw CancellationError() }
                throw RedisAdminError(
                    code: .verificationFailed,
                    message: "\(error.message); \(removed ? "the new password was removed again" : "the new password could not be removed from every node") and the password file was not changed",
                    underlying: error
                )
            }
            self.say("verify", node, "the new password logs \(plan.user) in on a fresh connection")
        }
    }

    // MARK: 3. Publish

    /// Replaces the password file with the new password and version (mode and owner kept).
    ///
    /// A failure before the rename leaves the file as it was: the new password is taken back. Once
    /// renamed, the file holds the new password and clients may already use it, so nothing is taken
    /// back: a directory that cannot be flushed is a warning (a crash could still bring the old file
    /// back, which the old password, still valid, covers until the removal).
    /// The mode keeps the original's, without any permission for others (warned when one is dropped).
    public func publish() async throws {
        let (plan, password, persistence) = try self.prepared()
        var file = RedisCredentialFile(password: password, version: plan.version)
        // From prepare()'s read: a re-read that fails now (the file briefly replaced or unreadable)
        // would drop the line, and clients would log in as the default user.
        file.username = self.progress.withLock { $0.fileUsername }
        let replacement: FileReplacement
        do {
            replacement = try file.replace(at: self.options.passwordFile, restrictingOthers: true)
        } catch {
            // Unpublished, the new password only widens access: take it back.
            let removed = await self.takeBack(password, plan: plan, persistence: persistence)
            throw RedisAdminError(
                code: .passwordFile,
                message: "\(error.message); \(removed ? "the new password was removed again" : "the new password could not be removed from every node")",
                underlying: error
            )
        }
        self.progress.withLock { $0.published = true }
        self.progress.withLock { $0.lock }?.record("published=\(plan.version)")
        self.say("publish", nil, "wrote version \(plan.version) to \(self.options.passwordFile)")
        if let original = replacement.originalMode, original != replacement.mode {
            self.say("warn", nil, "\(self.options.passwordFile) was readable by others (mode \(String(original, radix: 8))); the new password is not: mode \(String(replacement.mode, radix: 8))")
        }
        if let warning = replacement.durabilityWarning {
            self.say("warn", nil, "\(warning.message); the file holds version \(plan.version) and clients may use it, so it stays published, but its durability is unconfirmed (a crash could bring back the previous file, whose password still works until the removal)")
        }
    }

    /// Removes an unpublished password from every node and persists, in a task of its own: a
    /// cancelled run (Ctrl-C) must still take it back. `added` clears only when every node answered.
    private func takeBack(_ password: RedisSecret, plan: Plan, persistence: [String: RedisACLPersistence]) async -> Bool {
        let nodes = self.topology.nodes
        let removed = await Task {
            var removed = true
            for node in nodes {
                do {
                    try await node.removePassword(password, from: plan.user)
                    if let mode = persistence[node.address] { try await node.persist(mode) }
                } catch {
                    removed = false
                }
            }
            return removed
        }.value
        if removed {
            self.progress.withLock { $0.added = false }
            self.progress.withLock { $0.lock }?.record("")
            self.say("rollback", nil, "removed the unpublished password of version \(plan.version) again")
        }
        return removed
    }

    // MARK: 4. Wait

    /// Every connection of the user, on every node, that is not on `version`: named for another version,
    /// renamed, or unnamed.
    public func stragglers(version: String) async throws -> [(node: RedisServerAdmin, connection: RedisClientInfo)] {
        var found: [(RedisServerAdmin, RedisClientInfo)] = []
        for node in self.topology.nodes {
            for connection in try await node.connections(of: self.options.user) where connection.credentialVersion != version {
                found.append((node, connection))
            }
        }
        return found
    }

    /// Waits until no connection of the user is on another version, at most ``Options/clientWait``.
    /// Then, with ``Options/killStragglers`` the stragglers are left to ``removeOldPasswords()``;
    /// otherwise this throws `stragglers`, naming them, and the old password stays.
    public func waitForClients() async throws {
        let (plan, _, _) = try self.prepared()
        let clock = ContinuousClock()
        let deadline = clock.now + self.options.clientWait
        var lastCount = -1
        while true {
            let stragglers = try await self.stragglers(version: plan.version)
            if stragglers.isEmpty {
                self.say("wait", nil, "every connection of \(plan.user) is on version \(plan.version)")
                return
            }
            if stragglers.count != lastCount {
                lastCount = stragglers.count
                self.say("wait", nil, "\(stragglers.count) connection(s) of \(plan.user) not yet on \(plan.version): \(Self.describe(stragglers))")
            }
            if clock.now >= deadline { break }
            try await Task.sleep(for: min(self.options.pollInterval, deadline - clock.now))
        }
        let stragglers = try await self.stragglers(version: plan.version)
        if stragglers.isEmpty { return }
        if self.options.killStragglers {
            self.say("wait", nil, "\(stragglers.count) connection(s) still not on \(plan.version) after the wait; they are killed once the old password is gone")
            return
        }
        throw RedisAdminError(
            code: .stragglers,
            message: "\(stragglers.count) connection(s) of \(plan.user) are not on version \(plan.version) after \(self.options.clientWait): \(Self.describe(stragglers)); the old password stays. Move or stop those clients, or kill them with --kill-stragglers"
        )
    }

    // MARK: 5. Remove

    /// Leaves only the new password on every node (and persists), kills stragglers when asked, checks
    /// the connections again and verifies that each node holds exactly the new password.
    public func removeOldPasswords() async throws {
        let (plan, password, persistence) = try self.prepared()
        // The file is what clients log in with: if anything rewrote it, removing the other passwords
        // could take away the one it holds.
        let current = try? RedisCredentialFile.read(from: self.options.passwordFile)
        guard current?.password.sha256Hex == password.sha256Hex else {
            throw RedisAdminError(
                code: .unexpectedState,
                message: "\(self.options.passwordFile) no longer holds version \(plan.version) (it holds \(current?.version ?? "something unreadable")): something else rewrote it; no password was removed"
            )
        }
        // A node that joined the cluster since discovery would keep only the old password: nothing is
        // removed until the rotation covers it (a run again does).
        do {
            try await self.topology.checkClusterMembership()
        } catch let error as RedisAdminError {
            throw RedisAdminError(code: error.code, message: "\(error.message); no password was removed", underlying: error)
        }
        for node in self.topology.nodes {
            self.progress.withLock { $0.removalSent.append(node.address) }
            try await node.keepOnlyPassword(password, of: plan.user)
            self.progress.withLock { $0.removalDone.append(node.address) }
            self.say("remove", node, "\(plan.user) now has only the password of version \(plan.version)")
            if let mode = persistence[node.address], mode != .none {
                try await node.persist(mode)
                self.say("persist", node, "saved with \(mode)")
            }
        }
        // Connections opened with the old password between the last check and its removal stay
        // authenticated: look again.
        var stragglers = try await self.stragglers(version: plan.version)
        if !stragglers.isEmpty && self.options.killStragglers {
            for (node, connection) in stragglers {
                try await node.kill(clientID: connection.id)
                self.say("kill", node, "killed \(connection)")
            }
            stragglers = try await self.stragglers(version: plan.version)
        }
        if !stragglers.isEmpty {
            throw RedisAdminError(
                code: .stragglers,
                message: "the old password is removed, but \(stragglers.count) connection(s) of \(plan.user) authenticated with another one are still open: \(Self.describe(stragglers)); they work until they reconnect. Kill them (CLIENT KILL ID <id>) or run again with --kill-stragglers"
            )
        }
        let expected = password.sha256Hex
        for node in self.topology.nodes {
            let hashes = try await node.passwordHashes(of: plan.user) ?? []
            guard hashes == [expected] else {
                throw RedisAdminError(
                    code: .unexpectedState,
                    message: "\(node.address) holds \(hashes.count) password(s) for \(plan.user) instead of only the new one: something else changed the user meanwhile"
                )
            }
            if case .failure(let error) = await node.verifyLogin(user: plan.user, password: password, name: "redis-rotation-verify@\(plan.version)") {
                throw error
            }
        }
        // A node that joined while the removal ran was not covered: not done.
        do {
            try await self.topology.checkClusterMembership()
        } catch let error as RedisAdminError {
            throw RedisAdminError(
                code: error.code,
                message: "\(error.message); the \(self.topology.nodes.count) node(s) of the rotation hold only the new password, which the file holds",
                underlying: error
            )
        }
        self.progress.withLock { $0.lock }?.record("")
        self.progress.withLock { $0.lock = nil }
        self.say("done", nil, "\(plan.user) has exactly one password, version \(plan.version), the one in \(self.options.passwordFile), on \(self.topology.nodes.count) node(s)")
    }

    // MARK: State

    /// Where things stand, in words: what the servers accept and what the file holds. For the message
    /// an operator sees when a step fails.
    public var state: String {
        let progress = self.progress.withLock { $0 }
        guard let plan = progress.plan else { return "nothing was changed" }
        if !progress.removalSent.isEmpty {
            let file = "the password file holds version \(plan.version), so every client can log in"
            let done = progress.removalDone
            let unknown = progress.removalSent.filter { !done.contains($0) }
            let untouched = plan.nodes.filter { !progress.removalSent.contains($0) }
            if unknown.isEmpty && untouched.isEmpty {
                return "the servers hold only the password of version \(plan.version); the password file holds version \(plan.version)"
            }
            var parts: [String] = []
            if !done.isEmpty { parts.append("\(done.joined(separator: ", ")) hold(s) only the password of version \(plan.version)") }
            if !unknown.isEmpty { parts.append("\(unknown.joined(separator: ", ")) may no longer accept the old password (the removal was sent, its answer not received)") }
            if !untouched.isEmpty { parts.append("\(untouched.joined(separator: ", ")) accept(s) the old and the new password (version \(plan.version))") }
            return parts.joined(separator: "; ") + "; " + file
        }
        if progress.published {
            return "the servers accept the old and the new password (version \(plan.version)); the password file holds version \(plan.version), so every client can log in"
        }
        if progress.added {
            return "the servers may accept an additional new password (version \(plan.version)), which was not published; the password file still holds version \(plan.previousFileVersion ?? "(none)"), so every client can log in"
        }
        return "nothing was changed"
    }

    private func prepared() throws -> (Plan, RedisSecret, [String: RedisACLPersistence]) {
        let progress = self.progress.withLock { $0 }
        guard let plan = progress.plan, let password = progress.password else {
            throw RedisAdminError(code: .unexpectedState, message: "prepare() must run first")
        }
        return (plan, password, progress.persistence)
    }

    private static func describe(_ stragglers: [(node: RedisServerAdmin, connection: RedisClientInfo)]) -> String {
        let shown = stragglers.prefix(20).map { "\($0.node.address) \($0.connection)" }.joined(separator: "; ")
        return stragglers.count > 20 ? shown + "; and \(stragglers.count - 20) more" : shown
    }

    /// Whether `version` can label a rotation: a valid credential version
    /// (`RedisCredentials.isValidVersion(_:)`) that a connection name reports back unchanged. A
    /// connection's version is read after the last `@` of its name and a trailing `-probe` or `-sub` is
    /// a probe's or subscriber's mark, so a version holding `@` or ending in either would never be seen
    /// as moved.
    public static func isUsableVersion(_ version: String) -> Bool {
        RedisCredentials.isValidVersion(version) && !version.contains("@") && !version.hasSuffix("-probe")
            && !version.hasSuffix("-sub")
    }

    /// Why a version was refused.
    public static let versionRule = "the version must be 1 to 64 printable characters without spaces or @, not ending in -probe or -sub"

    /// `r<seconds since 1970>-<4 random hex digits>`: ordered, and distinct for two runs in one second.
    public static func uniqueVersion() -> String {
        let suffix = String(UInt16.random(in: 0...UInt16.max), radix: 16)
        return "r\(Int(Date().timeIntervalSince1970))-\(String(repeating: "0", count: 4 - suffix.count))\(suffix)"
    }

    /// 32 random bytes as 64 hex characters.
    public static func randomPassword() -> RedisSecret {
        var generator = SystemRandomNumberGenerator()
        let hex = Array("0123456789abcdef".utf8)
        var bytes = [UInt8]()
        bytes.reserveCapacity(64)
        for _ in 0..<32 {
            let byte = UInt8.random(in: 0...255, using: &generator)
            bytes.append(hex[Int(byte >> 4)])
            bytes.append(hex[Int(byte & 0xF)])
        }
        defer { bytes.withUnsafeMutableBytes { for index in $0.indices { $0[index] = 0 } } }
        return RedisSecret(bytes: bytes)
    }
}
