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

/// Watches the files of a ``RedisTLSConfiguration`` (CA bundles, client certificate and key) and
/// builds a new, validated ``RedisTLSContext`` whenever they change.
///
/// A change is read consistently: every file is read, then read again after a short pause, and used
/// only if nothing changed in between. A key that does not match its certificate is probably a pair in
/// the middle of an update (one file written, the other not yet): it is retried a few times before it
/// is reported. Building happens in the watcher's task, never on an event loop.
final class TLSMaterialWatcher: Sendable {
    /// What contexts are built from; ``promotePendingTrustAnchors()`` changes it.
    private let configurationBox: Mutex<RedisTLSConfiguration>
    var configuration: RedisTLSConfiguration { self.configurationBox.withLock { $0 } }
    private let pollInterval: Duration
    private let debounce: Duration
    private let mismatchRetries: Int
    private let reloads: AsyncStream<Void>
    private let reloadContinuation: AsyncStream<Void>.Continuation

    init(configuration: RedisTLSConfiguration, pollInterval: Duration, debounce: Duration, mismatchRetries: Int = 4) {
        self.configurationBox = Mutex(configuration)
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
    var paths: [String] {
        var sources = self.configuration.trustAnchors + self.configuration.pendingTrustAnchors
        if let identity = self.configuration.clientIdentity {
            sources += [identity.certificateChain, identity.privateKey]
        }
        var seen = Set<String>()
        return sources.compactMap { source -> String? in
            guard case .file(let path) = source.storage, seen.insert(path).inserted else { return nil }
            return path
        }
    }

    /// Reads every file into memory, so that one context is built from one consistent snapshot.
    private func snapshot() -> [String: [UInt8]]? {
        var contents: [String: [UInt8]] = [:]
        for path in self.paths {
            guard let bytes = try? readFile(path, limit: 16 * 1024 * 1024) else { return nil }
            contents[path] = bytes
        }
        return contents
    }

    /// The configuration with each file replaced by the snapshot's bytes (errors still name the file).
    private func configuration(from snapshot: [String: [UInt8]]) -> RedisTLSConfiguration {
        func resolve(_ source: RedisPEMSource) -> RedisPEMSource {
            guard case .file(let path) = source.storage, let bytes = snapshot[path] else { return source }
            return .pem(bytes: bytes, name: path)
        }
        var configuration = self.configuration
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

    /// Reads twice, `debounce` apart, until two reads agree (at most 5 tries).
    private func consistentSnapshot() async -> [String: [UInt8]]? {
        for _ in 0..<5 {
            try? await Task.sleep(for: self.debounce)
            guard let first = self.snapshot() else { continue }
            try? await Task.sleep(for: self.debounce)
            guard let second = self.snapshot() else { continue }
            if first == second { return first }
        }
        return nil
    }

    /// Builds the initial context from the files as they are now (fails fast with the reason).
    func initialContext() throws(RedisError) -> (RedisTLSContext, [String: [UInt8]]) {
        guard let snapshot = self.snapshot() else {
            // Let the context builder name the file that cannot be read.
            return (try RedisTLSContext(configuration: self.configuration), [:])
        }
        return (try RedisTLSContext(configuration: self.configuration(from: snapshot)), snapshot)
    }

    /// Watches until cancelled, reporting each distinct change after `initial`.
    func run(initial: [String: [UInt8]], report: @escaping @Sendable (TLSMaterialReport) -> Void) async {
        var last = initial
        var lastRejected: [String: [UInt8]]?
        await withChangeTriggers(
            directories: self.paths.map(parentDirectory(of:)),
            reloads: self.reloads,
            pollInterval: self.pollInterval
        ) { triggers in
            for await _ in triggers {
                if Task.isCancelled { break }
                var attempt = 0
                while !Task.isCancelled {
                    guard let snapshot = await self.consistentSnapshot() else { break }
                    let forced = self.forceRebuild.exchange(false, ordering: .relaxed)
                    if !forced && (snapshot == last || snapshot == lastRejected) { break }
                    do {
                        let context = try RedisTLSContext(configuration: self.configuration(from: snapshot))
                        last = snapshot
                        lastRejected = nil
                        report(.accepted(context))
                        break
                    } catch let error as RedisError where error.code == .tlsKeyMismatch && attempt < self.mismatchRetries {
                        // Probably a key and certificate written one after the other: look again soon.
                        attempt += 1
                        try? await Task.sleep(for: self.debounce * (1 << attempt))
                    } catch {
                        lastRejected = snapshot
                        report(.rejected(error as? RedisError ?? RedisError(code: .tlsInvalidConfiguration, message: "\(error)")))
                        break
                    }
                }
            }
        }
    }
}
