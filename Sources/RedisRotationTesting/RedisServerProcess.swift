#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
public import Foundation
public import RedisRotation
import Synchronization

/// A real `redis-server` for tests and the demo: started in a temporary folder on a free loopback port
/// with the ACL users you ask for, and stopped by its PID.
///
/// The binary comes from the `REDIS_SERVER` environment variable, else from `PATH`. An administrator
/// user (``adminUsername``, with a random password) always exists, so the test can reconfigure the
/// server while it runs. The server's log survives ``stop()`` in ``log``.
///
/// Prefer ``withServer(_:_:)``: it stops the server when the body returns or throws.
public final class RedisServerProcess: Sendable {
    /// An ACL user the server starts with.
    public struct User: Sendable {
        /// The user's name.
        public var name: String
        /// The passwords the user accepts (any of them works, as with `ACL SETUSER u >pw`).
        public var passwords: [RedisSecret]
        /// ACL rules after the passwords. Default: everything (`~* &* +@all`).
        public var rules: String
        /// Whether the user can log in (`on` / `off`).
        public var isEnabled: Bool

        public init(name: String, passwords: [RedisSecret], rules: String = "~* &* +@all", isEnabled: Bool = true) {
            self.name = name
            self.passwords = passwords
            self.rules = rules
            self.isEnabled = isEnabled
        }
    }

    /// TLS for the server (`tls-port`).
    public struct TLS: Sendable {
        /// Whether the server asks for client certificates (`tls-auth-clients`).
        public struct ClientAuthentication: Sendable, Hashable {
            let value: String
            /// No client certificate is asked for (`no`).
            public static let none = ClientAuthentication(value: "no")
            /// A client certificate from a trusted CA is required (`yes`).
            public static let required = ClientAuthentication(value: "yes")
            /// A client certificate is checked when one is sent (`optional`).
            public static let optional = ClientAuthentication(value: "optional")
        }

        /// The server's certificate and key.
        public var certificate: TestCertificate
        /// The CAs whose client certificates the server accepts (`tls-ca-cert-file`); at least one.
        public var clientCertificateAuthorities: [TestCertificate]
        /// Whether client certificates are required. Default: `.none`.
        public var clientAuthentication: ClientAuthentication
        /// How the harness itself connects as the administrator (its trust anchors and, with client
        /// authentication, its identity); unused when ``plainTextPort`` is kept.
        public var adminTLS: RedisTLSConfiguration
        /// The name the harness verifies the server's certificate against; `nil` uses the address.
        public var adminServerName: String?
        /// Whether the plain-text port stays open next to the TLS port (else `port 0`). Default: closed.
        public var keepPlainTextPort: Bool
        /// `tls-protocols`, such as `"TLSv1.2"`; `nil` keeps the server's default (1.2 and 1.3).
        public var protocols: String?

        public init(
            certificate: TestCertificate,
            clientCertificateAuthorities: [TestCertificate],
            clientAuthentication: ClientAuthentication = .none,
            adminTLS: RedisTLSConfiguration,
            adminServerName: String? = nil,
            keepPlainTextPort: Bool = false,
            protocols: String? = nil
        ) {
            precondition(!clientCertificateAuthorities.isEmpty, "redis-server needs at least one CA in tls-ca-cert-file")
            self.certificate = certificate
            self.clientCertificateAuthorities = clientCertificateAuthorities
            self.clientAuthentication = clientAuthentication
            self.adminTLS = adminTLS
            self.adminServerName = adminServerName
            self.keepPlainTextPort = keepPlainTextPort
            self.protocols = protocols
        }
    }

    /// How the server starts.
    public struct Configuration: Sendable {
        /// ACL users besides the administrator.
        public var users: [User]
        /// The password of the `default` user; `nil` disables `default`, so every connection must
        /// authenticate. Default: `nil`.
        public var defaultUserPassword: RedisSecret?
        /// Extra `redis.conf` lines, such as `"maxclients 100"`.
        public var extraConfiguration: [String]
        /// The `redis-server` binary; `nil` means `$REDIS_SERVER`, then `PATH`.
        public var executablePath: String?
        /// How long the server may take to answer after it was started. Default: 15 seconds.
        public var startTimeout: Duration
        /// TLS; `nil` serves plain TCP only.
        public var tls: TLS?
        /// Whether the ACL users are written into `redis.conf` (`user ...` lines, persisted by
        /// `CONFIG REWRITE`) instead of an ACL file (persisted by `ACL SAVE`). Default: an ACL file.
        public var usersInConfigFile: Bool
        /// Whether the server starts with its configuration as command-line arguments and no file, so
        /// that neither `ACL SAVE` nor `CONFIG REWRITE` can persist anything (with ``usersInConfigFile``).
        public var startsWithoutConfigFile: Bool

        public init(
            users: [User] = [],
            defaultUserPassword: RedisSecret? = nil,
            extraConfiguration: [String] = [],
            executablePath: String? = nil,
            startTimeout: Duration = .seconds(15),
            tls: TLS? = nil,
            usersInConfigFile: Bool = false,
            startsWithoutConfigFile: Bool = false
        ) {
            self.users = users
            self.defaultUserPassword = defaultUserPassword
            self.extraConfiguration = extraConfiguration
            self.executablePath = executablePath
            self.startTimeout = startTimeout
            self.tls = tls
            self.usersInConfigFile = usersInConfigFile
            self.startsWithoutConfigFile = startsWithoutConfigFile
        }
    }

    /// The name of the administrator user.
    public let adminUsername = "rr-admin"
    /// The administrator's password, random for each server.
    public let adminPassword: RedisSecret
    /// The loopback address the server listens on.
    public let host = "127.0.0.1"
    /// The port clients connect to: the TLS port when the server has TLS, else the plain-text port.
    public let port: Int
    /// The plain-text port, when the server has one (always without TLS; with TLS only if kept).
    public let plainTextPort: Int?
    /// The TLS context the harness's administrator connections use; `nil` when they use plain text.
    private let adminTLS: RedisConnectionConfiguration.TLS?
    /// The server's process id (a new one after ``restart(timeout:)``).
    public var pid: Int32 { self.process.withLock { $0.pid } }
    /// The temporary folder holding the server's configuration, ACL file and log.
    public let directory: URL

    /// The running process and its exit monitor; replaced by ``restart()``.
    private let process: Lock<(pid: Int32, exit: ExitMonitor)>
    private var exit: ExitMonitor { self.process.withLock { $0.exit } }
    private let executable: String
    /// What `redis-server` is started with: the configuration file, or its lines as arguments.
    private let launchArguments: [String]
    private let finalLog = Lock<String?>(nil)

    private init(
        port: Int,
        plainTextPort: Int?,
        adminTLS: RedisConnectionConfiguration.TLS?,
        directory: URL,
        pid: Int32,
        exit: ExitMonitor,
        executable: String,
        launchArguments: [String],
        adminPassword: RedisSecret
    ) {
        self.port = port
        self.plainTextPort = plainTextPort
        self.adminTLS = adminTLS
        self.directory = directory
        self.process = Lock((pid, exit))
        self.executable = executable
        self.launchArguments = launchArguments
        self.adminPassword = adminPassword
    }

    deinit {
        // Safety net for a test that never called stop(): never leave a server behind.
        self.exit.signal(SIGKILL)
        try? FileManager.default.removeItem(at: self.directory)
    }

    /// Starts a server and waits until it answers `PING` as the administrator.
    public static func start(_ configuration: Configuration = Configuration()) async throws -> RedisServerProcess {
        let executable = try Self.findExecutable(configuration.executablePath)
        var lastError: (any Error)?
        // A port found free can be taken before the server binds it: try a few.
        for _ in 0..<5 {
            do {
                return try await Self.startOnce(configuration, executable: executable)
            } catch let error as StartError where error.mayRetry {
                lastError = error
            }
        }
        throw lastError!
    }

    /// Starts a server, runs `body` with it, and stops the server whether `body` returns or throws.
    /// On failure the server's log is written to standard error.
    public static func withServer<Result>(
        _ configuration: Configuration = Configuration(),
        _ body: (RedisServerProcess) async throws -> Result
    ) async throws -> Result {
        let server = try await Self.start(configuration)
        do {
            let result = try await body(server)
            await server.stop()
            return result
        } catch {
            await server.stop()
            FileHandle.standardError.write(Data("redis-server log (port \(server.port)):\n\(server.log)\n".utf8))
            throw error
        }
    }

    /// A connection configuration for this server's ``port`` as `username` (the administrator when `nil`),
    /// with TLS when `tls` is given.
    public func connectionConfiguration(
        username: String? = nil,
        password: RedisSecret? = nil,
        name: String? = nil,
        tls: RedisConnectionConfiguration.TLS? = nil
    ) -> RedisConnectionConfiguration {
        RedisConnectionConfiguration(
            host: self.host,
            port: self.port,
            username: username ?? self.adminUsername,
            password: username == nil ? self.adminPassword : password,
            name: name,
            tls: tls
        )
    }

    /// How the harness connects as the administrator: the plain-text port when there is one, else TLS
    /// with the configured admin TLS settings.
    public func adminConnectionConfiguration() -> RedisConnectionConfiguration {
        var configuration = self.connectionConfiguration(name: "rr-admin")
        if let plainTextPort = self.plainTextPort {
            configuration.port = plainTextPort
        } else if let adminTLS = self.adminTLS {
            configuration.tls = adminTLS
        }
        return configuration
    }

    /// A new connection as the administrator. Close it when done.
    public func adminConnection() async throws -> RedisConnection {
        try await RedisConnection.connect(configuration: self.adminConnectionConfiguration())
    }

    /// Whether the server process is still running.
    public var isRunning: Bool { self.exit.exitStatus == nil }

    /// Sends `signal` to the server (`SIGKILL` to simulate a crash). ``stop()`` still cleans up.
    public func kill(signal: Int32 = SIGKILL) {
        self.exit.signal(signal)
    }

    /// Waits until the process has exited, at most `timeout`; returns whether it did.
    @discardableResult
    public func waitForExit(timeout: Duration) async -> Bool {
        await self.exit.wait(timeout: timeout)
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 seconds), keeps its log and removes its folder.
    public func stop() async {
        await self.terminate()
        let log = self.readLog()
        self.finalLog.withLock { $0 = $0 ?? log }
        try? FileManager.default.removeItem(at: self.directory)
    }

    /// Stops the server and starts it again with the same configuration, port and folder (data is not
    /// kept: persistence is off), then waits until it answers. Clients see their connections close and
    /// must reconnect.
    public func restart(timeout: Duration = .seconds(15)) async throws {
        await self.terminate()
        let launched = try Self.launch(self.executable, arguments: self.launchArguments, in: self.directory)
        self.process.withLock { $0 = launched }
        try await self.waitUntilReady(timeout: timeout)
    }

    /// SIGTERM, then SIGKILL when the server has not exited after 5 seconds.
    private func terminate() async {
        guard self.exit.signal(SIGTERM) else { return }
        if await !self.exit.wait(timeout: .seconds(5)) {
            self.exit.signal(SIGKILL)
            await self.exit.wait(timeout: .seconds(5))
        }
    }

    /// Starts `redis-server` with the configuration in `directory` and watches for its exit.
    private static func launch(_ executable: String, arguments: [String], in directory: URL) throws -> (pid: Int32, exit: ExitMonitor) {
        let exit = ExitMonitor()
        let pid = try Self.spawn(
            executable,
            arguments: arguments,
            output: directory.appendingPathComponent("redis.stdout").path
        )
        exit.monitor(pid: pid)
        return (pid, exit)
    }

    /// The server's log so far (after ``stop()``, as it was at the end).
    public var log: String {
        if let log = self.finalLog.withLock({ $0 }) { return log }
        return self.readLog()
    }

    private func readLog() -> String {
        Self.readLog(in: self.directory)
    }

    private static func readLog(in directory: URL) -> String {
        let files = ["redis.log", "redis.stdout"]
        return files.compactMap { name in
            (try? String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8))
                .flatMap { $0.isEmpty ? nil : "== \(name)\n\($0)" }
        }.joined(separator: "\n")
    }

    // MARK: - Starting

    private struct StartError: Error, CustomStringConvertible {
        var description: String
        var mayRetry: Bool
    }

    private static func startOnce(_ configuration: Configuration, executable: String) async throws -> RedisServerProcess {
        let port = try Self.freeLoopbackPort()
        var plainTextPort: Int? = port
        var tlsPort: Int?
        var adminTLS: RedisConnectionConfiguration.TLS?
        if let tls = configuration.tls {
            tlsPort = try Self.freeLoopbackPort()
            plainTextPort = tls.keepPlainTextPort ? port : nil
            if !tls.keepPlainTextPort {
                adminTLS = .init(context: try RedisTLSContext(configuration: tls.adminTLS), serverName: tls.adminServerName)
            }
        }
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("redis-rotation-\(port)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let adminPassword = RedisSecret(Self.randomToken())

        do {
            try Self.writeFiles(
                configuration,
                plainTextPort: plainTextPort,
                tlsPort: tlsPort,
                adminPassword: adminPassword,
                in: directory
            )
            let configFile = directory.appendingPathComponent("redis.conf")
            var arguments = [configFile.path]
            if configuration.startsWithoutConfigFile {
                // Each line `name value...` becomes `--name value...`; quotes only ever wrap one value.
                let lines = try String(contentsOf: configFile, encoding: .utf8).split(separator: "\n")
                arguments = lines.flatMap { line -> [String] in
                    let words = line.split(separator: " ").map { $0.replacingOccurrences(of: "\"", with: "") }
                    return ["--" + words[0]] + (words.count == 1 ? [""] : Array(words.dropFirst()))
                }
            }
            let (pid, exit) = try Self.launch(executable, arguments: arguments, in: directory)

            let server = RedisServerProcess(
                port: tlsPort ?? port,
                plainTextPort: plainTextPort,
                adminTLS: adminTLS,
                directory: directory,
                pid: pid,
                exit: exit,
                executable: executable,
                launchArguments: arguments,
                adminPassword: adminPassword
            )
            do {
                try await server.waitUntilReady(timeout: configuration.startTimeout)
            } catch {
                let log = server.readLog()
                await server.stop()
                throw StartError(
                    description: "redis-server on port \(port) did not start: \(error)\n\(log)",
                    mayRetry: log.contains("Address already in use")
                )
            }
            return server
        } catch {
            try? FileManager.default.removeItem(at: directory)
            throw error
        }
    }

    private func waitUntilReady(timeout: Duration) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        var lastError: (any Error)?
        while clock.now < deadline {
            guard self.isRunning else {
                throw StartError(description: "redis-server exited with status \(self.exit.exitStatus ?? -1)", mayRetry: true)
            }
            do {
                var configuration = self.adminConnectionConfiguration()
                configuration.connectTimeout = .seconds(1)
                let connection = try await RedisConnection.connect(configuration: configuration)
                defer { Task { await connection.close() } }
                try await connection.ping()
                await connection.close()
                return
            } catch {
                lastError = error
            }
            // Not listening yet: the next attempt is a cheap refused connect.
            try await Task.sleep(for: .milliseconds(20))
        }
        throw StartError(description: "no answer within \(timeout): \(lastError.map { "\($0)" } ?? "")", mayRetry: false)
    }

    private static func writeFiles(
        _ configuration: Configuration,
        plainTextPort: Int?,
        tlsPort: Int?,
        adminPassword: RedisSecret,
        in directory: URL
    ) throws {
        var acl = ["user \(Self.aclName("rr-admin")) on #\(Self.sha256Hex(adminPassword)) ~* &* +@all"]
        if let password = configuration.defaultUserPassword {
            acl.append("user default on #\(Self.sha256Hex(password)) ~* &* +@all")
        } else {
            acl.append("user default off resetpass -@all")
        }
        for user in configuration.users {
            let passwords = user.passwords.map { "#\(Self.sha256Hex($0))" }.joined(separator: " ")
            let state = user.isEnabled ? "on" : "off"
            let secret = passwords.isEmpty ? "resetpass" : passwords
            acl.append("user \(Self.aclName(user.name)) \(state) \(secret) \(user.rules)")
        }
        if !configuration.usersInConfigFile {
            try acl.joined(separator: "\n").appending("\n")
                .write(to: directory.appendingPathComponent("users.acl"), atomically: true, encoding: .utf8)
        }

        var tlsLines: [String] = []
        if let tls = configuration.tls, let tlsPort {
            let server = try tls.certificate.write(to: directory, name: "server")
            let caFile = directory.appendingPathComponent("client-ca.crt").path
            try tls.clientCertificateAuthorities.map(\.certificatePEM).joined()
                .write(toFile: caFile, atomically: true, encoding: .utf8)
            tlsLines = [
                "tls-port \(tlsPort)",
                "tls-cert-file \(server.certificate)",
                "tls-key-file \(server.privateKey)",
                "tls-ca-cert-file \(caFile)",
                "tls-auth-clients \(tls.clientAuthentication.value)",
            ]
            if let protocols = tls.protocols { tlsLines.append("tls-protocols \"\(protocols)\"") }
        }
        let config = [
            "bind 127.0.0.1",
            "port \(plainTextPort ?? 0)",
            "daemonize no",
            "dir \(directory.path)",
            "logfile \(directory.appendingPathComponent("redis.log").path)",
            "loglevel notice",
            "save \"\"",
            "appendonly no",
        ] + (configuration.usersInConfigFile ? acl : ["aclfile \(directory.appendingPathComponent("users.acl").path)"])
            + tlsLines + configuration.extraConfiguration
        try config.joined(separator: "\n").appending("\n")
            .write(to: directory.appendingPathComponent("redis.conf"), atomically: true, encoding: .utf8)
    }

    /// ACL user names are single words in the ACL file.
    private static func aclName(_ name: String) -> String {
        precondition(!name.isEmpty && !name.contains(where: \.isWhitespace), "an ACL user name is one word")
        return name
    }

    /// Passwords go into the ACL file as SHA-256 hashes (`#<hex>`): no quoting problems and no
    /// plain-text password on disk.
    static func sha256Hex(_ secret: RedisSecret) -> String {
        secret.withUnsafeBytes { bytes in
            sha256(bytes).map { String(format: "%02x", $0) }.joined()
        }
    }

    /// Starts `executable` with `posix_spawn`, output to the file at `output`, stdin from /dev/null.
    ///
    /// Not Foundation's `Process`: the child must start with no blocked signals and default handlers.
    /// Threads of a test runner or an event loop may block SIGTERM, and a child inherits that mask, so
    /// `redis-server` would ignore the SIGTERM that asks it to stop.
    private static func spawn(_ executable: String, arguments: [String], output: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // No O_CLOEXEC on these: they are the child's standard descriptors, and must survive its exec.
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // SwiftNIO opens its sockets without close-on-exec: without this, a server started while a test
        // holds a connection inherits that socket and keeps it open after the test closes it.
        // (glibc 2.34+ has closefrom for spawn; Swift's Glibc module does not import it, so it is looked up.)
        #if os(Linux)
        typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        if let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") {
            _ = unsafeBitCast(symbol, to: CloseFrom.self)(&actions, 3)
        }
        #endif

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        #if canImport(Darwin)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_CLOEXEC_DEFAULT))
        #else
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        #endif

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for argument in argv { free(argument) } }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        guard status == 0 else {
            throw StartError(description: "could not start \(executable): \(String(cString: strerror(status)))", mayRetry: false)
        }
        return pid
    }

    private static func findExecutable(_ explicit: String?) throws -> String {
        if let explicit { return explicit }
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["REDIS_SERVER"], !path.isEmpty { return path }
        for directory in (environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":") {
            let candidate = "\(directory)/redis-server"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw StartError(
            description: "redis-server not found: install it (Debian/Ubuntu: apt-get install redis-server) or set REDIS_SERVER",
            mayRetry: false
        )
    }

    private static func randomToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }

    /// A loopback port that was free a moment ago.
    public static func freeLoopbackPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw StartError(description: "socket() failed: errno \(errno)", mayRetry: false) }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                bind(fd, socketAddress, length) == 0 && getsockname(fd, socketAddress, &length) == 0
            }
        }
        guard bound else { throw StartError(description: "could not bind a loopback port: errno \(errno)", mayRetry: true) }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// Records the exit of a child process and wakes those waiting for it.
final class ExitMonitor: Sendable {
    private enum Waiter {
        case waiting(CheckedContinuation<Bool, Never>)
        /// The timeout passed before the waiter was registered; registering resumes it at once.
        case timedOut
    }

    private struct State {
        var pid: pid_t?
        var status: Int32?
        /// Set just before the exited child is reaped; from then on its PID may belong to another process.
        var reaping = false
        var waiters: [UInt64: Waiter] = [:]
        var nextWaiter: UInt64 = 0
    }

    private let state = Lock(State())

    var exitStatus: Int32? { self.state.withLock { $0.status } }

    /// Waits for `pid` on a thread of its own (a blocking `waitid`) and records its exit.
    func monitor(pid: pid_t) {
        self.state.withLock { $0.pid = pid }
        let thread = Thread {
            // WNOWAIT leaves the child a zombie, so its PID stays ours until `reaping` is set and
            // signal(_:) can no longer reach it.
            var info = siginfo_t()
            while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) == -1 && errno == EINTR {}
            self.state.withLock { $0.reaping = true }
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
            self.exited(status: status)
        }
        thread.name = "redis-server \(pid) monitor"
        thread.start()
    }

    /// Sends `signal` to the process unless it has exited; `false` when it has.
    @discardableResult
    func signal(_ signal: Int32) -> Bool {
        // kill(2) under the lock: the monitor cannot reap the child (and free its PID) meanwhile.
        self.state.withLock { state in
            guard let pid = state.pid, !state.reaping, state.status == nil else { return false }
            return kill(pid, signal) == 0
        }
    }

    func exited(status: Int32) {
        let waiters = self.state.withLock { state in
            state.status = status
            defer { state.waiters.removeAll() }
            return state.waiters.values
        }
        for case .waiting(let continuation) in waiters { continuation.resume(returning: true) }
    }

    /// Waits for the exit, at most `timeout` (less when the calling task is cancelled); returns whether
    /// the process exited.
    @discardableResult
    func wait(timeout: Duration) async -> Bool {
        let id = self.state.withLock { state -> UInt64 in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        return await withTaskGroup(of: Void.self) { group in
            group.addTask {
                // Ends early when the waiting task is cancelled, which gives up the wait.
                try? await Task.sleep(for: timeout)
                self.timeOut(id)
            }
            let exited = await withCheckedContinuation { continuation in
                self.register(id, continuation)
            }
            group.cancelAll()
            return exited
        }
    }

    private func register(_ id: UInt64, _ continuation: CheckedContinuation<Bool, Never>) {
        let outcome = self.state.withLock { state -> Bool? in
            if state.status != nil { return true }
            if case .timedOut = state.waiters.removeValue(forKey: id) { return false }
            state.waiters[id] = .waiting(continuation)
            return nil
        }
        if let outcome { continuation.resume(returning: outcome) }
    }

    private func timeOut(_ id: UInt64) {
        let continuation = self.state.withLock { state -> CheckedContinuation<Bool, Never>? in
            switch state.waiters[id] {
            case .waiting(let continuation):
                state.waiters[id] = nil
                return continuation
            case nil where state.status == nil:
                // The waiter is not registered yet: leave word for it instead of waking nobody.
                state.waiters[id] = .timedOut
                return nil
            case nil, .timedOut:
                return nil
            }
        }
        continuation?.resume(returning: false)
    }
}
