private import COpenSSL
import Synchronization
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// What a TLS material watcher tells the client.
enum TLSMaterialReport: Sendable {
    /// New material that validated; the context is the new generation.
    case accepted(RedisTLSContext)
    /// The files changed but cannot be used; the last good generation stays.
    case rejected(RedisError)
}

/// The SHA-256 of each watched file's content, by path: enough to tell one read of the files from the
/// next without keeping the content (a private key among it) in memory between reads.
typealias TLSFileDigests = [String: [UInt8]]

/// Watches the files of a ``RedisTLSConfiguration`` (CA bundles, client certificate and key) and
/// builds a new, validated ``RedisTLSContext`` whenever they change.
///
/// A change is read consistently: every file is read, then read again after a short pause, and used
/// only if nothing changed in between. A key that does not match its certificate is probably a pair in
/// the middle of an update (one file written, the other not yet): it is retried a few times before it
/// is reported. Building happens in the watcher's task, never on an event loop.
final class TLSMaterialWatcher: Sendable {
    /// What contexts are built from; ``promotePendingTrustAnchors()`` changes it.
    private let configurationBox: Lock<RedisTLSConfiguration>
    var configuration: RedisTLSConfiguration { self.configurationBox.withLock { $0 } }
    private let pollInterval: Duration
    private let debounce: Duration
    private let mismatchRetries: Int
    private let reloads: AsyncStream<Void>
    private let reloadContinuation: AsyncStream<Void>.Continuation

    init(configuration: RedisTLSConfiguration, pollInterval: Duration, debounce: Duration, mismatchRetries: Int = 4) {
        self.configurationBox = Lock(configuration)
        self.pollInterval = pollInterval
        self.debounce = debounce
        self.mismatchRetries = mismatchRetries
        (self.reloads, self.reloadContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Asks for a re-read now.
    func reload() {
        self.reloadContinuation.yield()
    }

    /// Ends a CA rollover explicitly: the pending trust anchors become the only ones, and a new
    /// generation without the old anchors is built at once.
    func promotePendingTrustAnchors() {
        let changed = self.configurationBox.withLock { configuration -> Bool in
            guard !configuration.pendingTrustAnchors.isEmpty else { return false }
            configuration.trustAnchors = configuration.pendingTrustAnchors
            configuration.pendingTrustAnchors = []
            return true
        }
        if changed {
            self.forceRebuild.store(true, ordering: .relaxed)
            self.reloadContinuation.yield()
        }
    }

    /// Set when the configuration changed, so that identical files still produce a new generation.
    private let forceRebuild = Atomic<Bool>(false)

    /// Every file path the configuration reads.
    var paths: [String] { Self.paths(in: self.configuration) }

    private static func paths(in configuration: RedisTLSConfiguration) -> [String] {
        var sources = configuration.trustAnchors + configuration.pendingTrustAnchors
        if let identity = configuration.clientIdentity {
            sources += [identity.certificateChain, identity.privateKey]
        }
        var seen = Set<String>()
        return sources.compactMap { source -> String? in
            guard case .file(let path) = source.storage, seen.insert(path).inserted else { return nil }
            return path
        }
    }

    /// Reads every file into memory, so that one context is built from one consistent snapshot. The
    /// contents are secrets (a key file, a combined identity): wiped when the snapshot is released.
    private func snapshot() -> [String: RedisSecret]? {
        var contents: [String: RedisSecret] = [:]
        for path in self.paths {
            guard let bytes = try? readFile(path, limit: 16 * 1024 * 1024) else { return nil }
            contents[path] = bytes
        }
        return contents
    }

    /// `configuration` with each file replaced by the snapshot's bytes (errors still name the file).
    private static func resolve(_ configuration: RedisTLSConfiguration, with snapshot: [String: RedisSecret]) -> RedisTLSConfiguration {
        func resolve(_ source: RedisPEMSource) -> RedisPEMSource {
            guard case .file(let path) = source.storage, let bytes = snapshot[path] else { return source }
            return .pem(contents: bytes, name: path)
        }
        var configuration = configuration
        configuration.trustAnchors = configuration.trustAnchors.map(resolve)
        configuration.pendingTrustAnchors = configuration.pendingTrustAnchors.map(resolve)
        if let identity = configuration.clientIdentity {
            configuration.clientIdentity = RedisTLSClientIdentity(
                certificateChain: resolve(identity.certificateChain),
                privateKey: resolve(identity.privateKey)
            )
        }
        return configuration
    }

    private static func digests(of snapshot: [String: RedisSecret]) -> TLSFileDigests {
        snapshot.mapValues { contents in
            contents.withUnsafeBytes { bytes in
                var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
                var length: UInt32 = 0
                guard EVP_Digest(bytes.baseAddress, bytes.count, &digest, &length, EVP_sha256(), nil) == 1 else {
                    // Never equal to a real digest: the files count as changed.
                    return []
                }
                return Array(digest.prefix(Int(length)))
            }
        }
    }

    /// Reads twice, `debounce` apart, until two reads agree (at most 5 tries).
    private func consistentSnapshot() async -> [String: RedisSecret]? {
        for _ in 0..<5 {
            try? await Task.sleep(for: self.debounce)
            guard let first = self.snapshot() else { continue }
            try? await Task.sleep(for: self.debounce)
            guard let second = self.snapshot() else { continue }
            if first == second { return first }
        }
        return nil
    }

    /// Builds the initial context from the files as they are now (fails fast with the reason), and
    /// the digests of what it was built from.
    func initialContext() throws(RedisError) -> (RedisTLSContext, TLSFileDigests) {
        let configuration = self.configuration
        guard let snapshot = self.snapshot() else {
            // Let the context builder name the file that cannot be read.
            return (try RedisTLSContext(configuration: configuration), [:])
        }
        let context = try RedisTLSContext(building: Self.resolve(configuration, with: snapshot), recording: configuration)
        return (context, Self.digests(of: snapshot))
    }

    private enum Attempt {
        /// The files could not be read consistently, or are what was seen last.
        case nothingNew
        case built(RedisTLSContext, TLSFileDigests)
        case failed(RedisError, TLSFileDigests)
    }

    /// Reads the files and builds a context from them unless they are what was seen last. The files'
    /// contents are released, and wiped, when this returns.
    private func attempt(last: TLSFileDigests, lastRejected: TLSFileDigests?) async -> Attempt {
        guard let snapshot = await self.consistentSnapshot() else { return .nothingNew }
        let digests = Self.digests(of: snapshot)
        let forced = self.forceRebuild.exchange(false, ordering: .relaxed)
        if !forced && (digests == last || digests == lastRejected) { return .nothingNew }
        let configuration = self.configuration
        do {
            return .built(try RedisTLSContext(building: Self.resolve(configuration, with: snapshot), recording: configuration), digests)
        } catch {
            return .failed(error, digests)
        }
    }

    /// Watches until cancelled, reporting each distinct change after `initial`.
    func run(initial: TLSFileDigests, report: @escaping @Sendable (TLSMaterialReport) -> Void) async {
        var last = initial
        var lastRejected: TLSFileDigests?
        await withChangeTriggers(
            directories: self.paths.map(parentDirectory(of:)),
            reloads: self.reloads,
            pollInterval: self.pollInterval
        ) { triggers in
            for await _ in triggers {
                if Task.isCancelled { break }
                var mismatches = 0
                retrying: while !Task.isCancelled {
                    switch await self.attempt(last: last, lastRejected: lastRejected) {
                    case .nothingNew:
                        break retrying
                    case .built(let context, let digests):
                        last = digests
                        lastRejected = nil
                        report(.accepted(context))
                        break retrying
                    case .failed(let error, _) where error.code == .tlsKeyMismatch && mismatches < self.mismatchRetries:
                        // Probably a key and certificate written one after the other: look again soon.
                        mismatches += 1
                        try? await Task.sleep(for: self.debounce * (1 << mismatches))
                    case .failed(let error, let digests):
                        lastRejected = digests
                        report(.rejected(error))
                        break retrying
                    }
                }
            }
        }
    }
}
