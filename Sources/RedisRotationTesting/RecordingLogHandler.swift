public import Logging
import RedisRotation
import Synchronization

/// A swift-log handler that keeps every record in memory, for tests that assert on log output
/// (for instance, that no secret ever reaches a log line).
public struct RecordingLogHandler: LogHandler {
    /// One log record, rendered as text.
    public struct Record: Sendable, CustomStringConvertible {
        public var level: Logger.Level
        public var message: String
        /// The handler's and the call's metadata, merged and rendered as text.
        public var metadata: [String: String]

        public var description: String {
            let rendered = self.metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            return "\(self.level) \(self.message) \(rendered)"
        }
    }

    /// Where the records go; share one store between loggers.
    public final class Store: Sendable {
        private let records = Lock<[Record]>([])
        public init() {}
        /// Every record so far, oldest first.
        public var all: [Record] { self.records.withLock { $0 } }
        func append(_ record: Record) { self.records.withLock { $0.append(record) } }
    }

    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let store: Store

    public init(store: Store, level: Logger.Level = .trace) {
        self.store = store
        self.logLevel = level
    }

    /// A logger writing to `store` at `level`.
    public static func logger(label: String = "test", store: Store, level: Logger.Level = .trace) -> Logger {
        Logger(label: label) { _ in RecordingLogHandler(store: store, level: level) }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = self.metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        self.store.append(
            Record(
                level: event.level,
                message: "\(event.message)",
                metadata: merged.mapValues { "\($0)" }
            )
        )
    }
}
