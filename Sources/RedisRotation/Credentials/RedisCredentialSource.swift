#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Where a client's credentials come from. Each change a source notices becomes the client's pending
/// credential, which is probed before it is used (see ``RedisClient``).
public struct RedisCredentialSource: Sendable {
    enum Kind: Sendable {
        case fixed(RedisCredentials)
        case file(FileSettings)
        case environment(variable: String, username: String, version: String?)
        case provider(interval: Duration, fetch: @Sendable () async throws -> RedisCredentials)
        /// Another source, read and watched once for several clients (a cluster client's node pools).
        case shared(SharedCredentialFeed)
    }

    struct FileSettings: Sendable {
        var path: String
        var username: String
        var pollInterval: Duration
        var debounce: Duration
    }

    let kind: Kind

    /// Credentials that never change.
    public static func fixed(_ credentials: RedisCredentials) -> RedisCredentialSource {
        RedisCredentialSource(kind: .fixed(credentials))
    }

    /// A file holding the password, re-read when it changes.
    ///
    /// The file's directory is watched (inotify) and the file polled as a safety net, so a write in
    /// place, an atomic rename and a Kubernetes `..data` symlink swap are all noticed. A change is read
    /// after `debounce` of quiet, twice, and used only if both reads agree. An empty, oversized or
    /// incomplete file is never used, nor is a file the process can no longer read (its mode or owner
    /// changed): the last good credential stays and the client emits `credentialSourceRejected`.
    ///
    /// The file is either just the password, or lines `password=...` with optional `username=...`,
    /// `version=...` and `expires=...` (ISO 8601). Write a `version=` line when several processes share
    /// the file, so that their connection names agree; otherwise versions are `<file name>-1`, `-2`, ...
    /// in the order this process sees them.
    ///
    /// - Parameters:
    ///   - path: The password file.
    ///   - username: The user, unless the file names one.
    ///   - pollInterval: How often the file is read even without a change notification (a secret
    ///     manager may replace it in ways the directory watch misses).
    ///   - debounce: How long a change must stay still before it is read (writers that truncate, then write).
    public static func file(
        _ path: String,
        username: String,
        pollInterval: Duration = .seconds(10),
        debounce: Duration = .milliseconds(50)
    ) -> RedisCredentialSource {
        RedisCredentialSource(kind: .file(FileSettings(path: path, username: username, pollInterval: pollInterval, debounce: debounce)))
    }

    /// An environment variable holding the password, read at start and on ``RedisClient/reloadCredentials()``.
    public static func environment(_ variable: String, username: String, version: String? = nil) -> RedisCredentialSource {
        RedisCredentialSource(kind: .environment(variable: variable, username: username, version: version))
    }

    /// An async closure (a vault, a token service) called at start, every `interval`, and on
    /// ``RedisClient/reloadCredentials()``. A thrown error keeps the last credentials and emits an event.
    public static func provider(
        refreshEvery interval: Duration,
        _ fetch: @escaping @Sendable () async throws -> RedisCredentials
    ) -> RedisCredentialSource {
        RedisCredentialSource(kind: .provider(interval: interval, fetch: fetch))
    }

    /// Reads the credentials the source holds now, as a client would at creation (the provider source
    /// has none until it is called, so it gives `nil`). For tools such as `redis-rotation inspect`.
    ///
    /// - Throws: ``RedisError`` naming the file or variable when it is missing, empty or unusable.
    public func currentCredentials() throws(RedisError) -> RedisCredentials? {
        try CredentialSourceRunner(source: self).initialCredentials()
    }

    /// What the source is, for events and logs (never a secret).
    var label: String {
        switch self.kind {
        case .fixed: return "fixed"
        case .file(let settings): return "file \(settings.path)"
        case .environment(let variable, _, _): return "environment variable \(variable)"
        case .provider: return "provider"
        case .shared(let feed): return feed.runner.source.label
        }
    }
}

/// What a source tells the client.
enum CredentialSourceReport: Sendable {
    case credentials(RedisCredentials)
    /// The source changed, but its content cannot be used; the last good credentials stay.
    case rejected(reason: String)
}

/// Runs one source: reads it, watches it, and reports each new value once.
final class CredentialSourceRunner: Sendable {
    let source: RedisCredentialSource
    private let reloads: AsyncStream<Void>
    private let reloadContinuation: AsyncStream<Void>.Continuation
    private let versions = VersionCounter()
    /// The file content the initial credentials came from: what later reads are compared with. `run`
    /// takes it out, so that the runner holds a copy of the password file only until it watches.
    private let initialFileBytes = Lock<RedisSecret?>(nil)

    /// Whether the runner still holds the initial file content (for tests).
    var holdsInitialFileBytes: Bool { self.initialFileBytes.withLock { $0 != nil } }

    init(source: RedisCredentialSource) {
        self.source = source
        (self.reloads, self.reloadContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Asks the source to look again now.
    func reload() {
        self.reloadContinuation.yield()
    }

    /// The credentials available without waiting (all sources but the provider); throws when the source
    /// cannot give usable ones, so a client fails fast at creation with a precise error.
    func initialCredentials() throws(RedisError) -> RedisCredentials? {
        switch self.source.kind {
        case .fixed(let credentials):
            return credentials
        case .environment(let variable, let username, let version):
            guard let value = getenv(variable), value.pointee != 0 else {
                throw RedisError(code: .invalidArgument, message: "the environment variable \(variable) is unset or empty")
            }
            return RedisCredentials(
                username: username,
                password: RedisSecret(bytes: UnsafeBufferPointer(start: UnsafeRawPointer(value).assumingMemoryBound(to: UInt8.self), count: strlen(value))),
                version: version ?? self.versions.next(prefix: variable)
            )
        case .file(let settings):
            let bytes: RedisSecret
            do {
                bytes = try readFile(settings.path, limit: CredentialFile.maximumSize, truncating: true)
            } catch {
                throw RedisError(code: .invalidArgument, message: "cannot read the password file \(settings.path): \(error.message)")
            }
            switch CredentialFile.parse(bytes) {
            case .success(let file):
                self.initialFileBytes.withLock { $0 = bytes }
                return self.credentials(from: file, settings: settings)
            case .failure(let rejection):
                throw RedisError(code: .invalidArgument, message: "the password file \(settings.path) cannot be used: \(rejection)")
            }
        case .provider:
            return nil
        case .shared(let feed):
            return feed.latest
        }
    }

    /// Watches the source until the task is cancelled, reporting changes after `initial`.
    func run(initial: RedisCredentials?, report: @escaping @Sendable (CredentialSourceReport) -> Void) async {
        switch self.source.kind {
        case .shared(let feed):
            // What the feed reports from now on; and what it reported since `initial` was read.
            let (id, latest) = feed.subscribe(report)
            if let latest, initial.map({ !$0.authenticatesLike(latest) || $0.version != latest.version }) ?? true {
                report(.credentials(latest))
            }
            for await _ in self.reloads { feed.reload() }
            feed.unsubscribe(id)
        case .fixed:
            for await _ in self.reloads {}
        case .environment:
            var last = initial
            for await _ in self.reloads {
                do {
                    if let credentials = try self.initialCredentials(), last.map({ !$0.authenticatesLike(credentials) }) ?? true {
                        last = credentials
                        report(.credentials(credentials))
                    }
                } catch {
                    report(.rejected(reason: error.message))
                }
            }
        case .provider(let interval, let fetch):
            await self.runProvider(interval: interval, fetch: fetch, report: report)
        case .file(let settings):
            await self.runFile(settings, initial: initial, report: report)
        }
    }

    private func runProvider(
        interval: Duration,
        fetch: @escaping @Sendable () async throws -> RedisCredentials,
        report: @escaping @Sendable (CredentialSourceReport) -> Void
    ) async {
        await withTaskGroup(of: Void.self) { group in
            let (ticks, tick) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
            group.addTask {
                for await _ in self.reloads { tick.yield() }
            }
            group.addTask {
                tick.yield()  // The first fetch, at once.
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    tick.yield()
                }
            }
            var last: RedisCredentials?
            for await _ in ticks {
                if Task.isCancelled { break }
                do {
                    let credentials = try await fetch()
                    if last.map({ !$0.authenticatesLike(credentials) }) ?? true {
                        last = credentials
                        report(.credentials(credentials))
                    }
                } catch is CancellationError {
                    break
                } catch {
                    report(.rejected(reason: "the credential provider failed: \(error)"))
                }
            }
            tick.finish()
            group.cancelAll()
        }
    }

    private func runFile(
        _ settings: RedisCredentialSource.FileSettings,
        initial: RedisCredentials?,
        report: @escaping @Sendable (CredentialSourceReport) -> Void
    ) async {
        // Every copy of the file's content is a RedisSecret, wiped when it is replaced or dropped.
        var lastBytes = self.initialFileBytes.withLock { $0.take() } ?? RedisSecret("")
        var lastRejected: RedisSecret?
        var lastUnreadable: String?
        var last = initial

        await withChangeTriggers(
            directories: [parentDirectory(of: settings.path)],
            reloads: self.reloads,
            pollInterval: settings.pollInterval
        ) { triggers in
            for await _ in triggers {
                if Task.isCancelled { break }
                // Let a burst of writes settle, then read twice; use the content only if both agree.
                let bytes: RedisSecret
                switch await self.stableRead(settings) {
                case .stable(let read):
                    bytes = read
                    lastUnreadable = nil
                case .changing:
                    continue
                case .unreadable(let reason):
                    // Said once per reason: a file the client can no longer read (its mode or owner
                    // changed) must not silently pin the old password.
                    if lastUnreadable != reason {
                        lastUnreadable = reason
                        report(.rejected(reason: "the password file \(settings.path) cannot be read: \(reason); the last good credentials stay in use"))
                    }
                    continue
                }
                if bytes == lastBytes { continue }
                switch CredentialFile.parse(bytes) {
                case .success(let file):
                    lastBytes = bytes
                    lastRejected = nil
                    let credentials = self.credentials(from: file, settings: settings)
                    if last.map({ !$0.authenticatesLike(credentials) || $0.version != credentials.version }) ?? true {
                        last = credentials
                        report(.credentials(credentials))
                    }
                case .failure(let rejection):
                    if lastRejected != bytes {
                        lastRejected = bytes
                        report(.rejected(reason: "the password file \(settings.path) cannot be used: \(rejection)"))
                    }
                }
            }
        }
    }

    /// What a debounced read of the password file gave.
    private enum StableRead {
        /// Two reads agreed.
        case stable(RedisSecret)
        /// The reads disagreed (still being written): the next trigger reads again.
        case changing
        /// The file cannot be read (gone, permission denied), also after one more debounce.
        case unreadable(String)
    }

    /// Reads the file after `debounce` of quiet, twice, and uses the content only if both reads agree.
    private func stableRead(_ settings: RedisCredentialSource.FileSettings) async -> StableRead {
        func read() async -> Result<RedisSecret, FileReadError> {
            try? await Task.sleep(for: settings.debounce)
            do {
                return .success(try readFile(settings.path, limit: CredentialFile.maximumSize, truncating: true))
            } catch {
                // A file being replaced by a delete and a create is briefly missing: look once more.
                try? await Task.sleep(for: settings.debounce)
                return Result { () throws(FileReadError) in try readFile(settings.path, limit: CredentialFile.maximumSize, truncating: true) }
            }
        }
        for _ in 0..<5 {
            let first: RedisSecret
            switch await read() {
            case .success(let bytes): first = bytes
            case .failure(let error): return .unreadable(error.message)
            }
            switch await read() {
            case .success(let second) where first == second: return .stable(first)
            case .success: continue
            case .failure(let error): return .unreadable(error.message)
            }
        }
        return .changing
    }

    private func credentials(from file: CredentialFile, settings: RedisCredentialSource.FileSettings) -> RedisCredentials {
        let name = settings.path.split(separator: "/").last.map(String.init) ?? "file"
        let safeName = String(name.unicodeScalars.filter { (0x21...0x7E).contains($0.value) }.prefix(40))
        return RedisCredentials(
            username: file.username ?? settings.username,
            password: file.password,
            version: file.version ?? self.versions.next(prefix: safeName.isEmpty ? "file" : safeName),
            expiresAt: file.expiresAt
        )
    }
}

/// Numbers the versions of a source that does not name them.
private final class VersionCounter: Sendable {
    private let counter = Synchronization.Atomic<Int>(0)
    func next(prefix: String) -> String {
        "\(prefix)-\(self.counter.add(1, ordering: .relaxed).newValue)"
    }
}

/// One credential source read and watched once, its reports passed on to every client that subscribes
/// (the node pools of a ``RedisClusterClient``: one file watch or one provider call for the whole
/// cluster, and every pool sees a change at the same moment).
final class SharedCredentialFeed: Sendable {
    private struct State {
        /// The newest credentials the source gave: what a client created later starts from.
        var latest: RedisCredentials?
        var subscribers: [Int: @Sendable (CredentialSourceReport) -> Void] = [:]
        var nextID = 0
    }

    let runner: CredentialSourceRunner
    private let initial: RedisCredentials?
    private let state: Lock<State>

    /// - Throws: ``RedisError`` when the source cannot give usable credentials now (as a client would).
    init(source: RedisCredentialSource) throws(RedisError) {
        self.runner = CredentialSourceRunner(source: source)
        self.initial = try self.runner.initialCredentials()
        self.state = Lock(State(latest: self.initial))
    }

    /// The source as a client's credential source.
    var source: RedisCredentialSource { RedisCredentialSource(kind: .shared(self)) }

    /// The newest credentials the source gave, `nil` before a provider first answered.
    var latest: RedisCredentials? { self.state.withLock { $0.latest } }

    /// Watches the source until the task is cancelled, passing each report on.
    func run() async {
        await self.runner.run(initial: self.initial) { report in
            let subscribers = self.state.withLock { state in
                if case .credentials(let credentials) = report { state.latest = credentials }
                return Array(state.subscribers.values)
            }
            for subscriber in subscribers { subscriber(report) }
        }
    }

    /// Adds a subscriber; returns its id and, atomically with it, the newest credentials so far.
    func subscribe(_ report: @escaping @Sendable (CredentialSourceReport) -> Void) -> (id: Int, latest: RedisCredentials?) {
        self.state.withLock { state in
            state.nextID += 1
            state.subscribers[state.nextID] = report
            return (state.nextID, state.latest)
        }
    }

    func unsubscribe(_ id: Int) {
        self.state.withLock { _ = $0.subscribers.removeValue(forKey: id) }
    }

    /// Asks the source to look again now.
    func reload() {
        self.runner.reload()
    }
}
