import Foundation
import RedisRotation
import Synchronization

/// What the load generator does: GETs and SETs (SETs are marked idempotent: writing the same value to
/// the same key twice changes nothing, so they may be resent when a connection dies under them).
struct Workload: Sendable {
    var duration: Duration
    var concurrency: Int
    /// Operations per second in total; 0 runs unthrottled.
    var rate: Int
    var readRatio: Double
    var keys: Int
    var valueSize: Int
    var keyPrefix: String
    /// Every write goes to a new key, so that the keys can be counted on the server afterwards.
    var verifyWrites: Bool
    /// With `verifyWrites`, a tag in the written keys (`<prefix>:<tag>:w:...`) that sets this run's
    /// keys apart from earlier runs', so that they can be counted on the servers by pattern (cluster).
    var runTag: String? = nil

    /// The prefix of the keys `verifyWrites` writes.
    var writePrefix: String { self.runTag.map { "\(self.keyPrefix):\($0)" } ?? self.keyPrefix }
}

/// Ends the traffic before its duration (Ctrl-C). Each task finishes the command it has in flight, so
/// every write is either acknowledged or never sent, and the run is verified and reported as usual.
final class TrafficStop: Sendable {
    private let requested = Atomic<Bool>(false)

    func request() { self.requested.store(true, ordering: .relaxed) }

    var isRequested: Bool { self.requested.load(ordering: .relaxed) }
}

/// What the writes of a run left on the server.
struct WriteVerification: Codable, Sendable {
    var acknowledged: Int
    var found: Int
    var lost: Int
    /// The run's keys counted on every primary (`SCAN` per primary), for a cluster: must equal
    /// `acknowledged` (a key on two primaries, or on none, shows here).
    var on_primaries: Int? = nil
}

/// The writes the server acknowledged with `--verify-writes`, as one count per worker: worker `w`'s
/// acknowledged writes are exactly the keys `<prefix>:w:<w>:0` to `<prefix>:w:<w>:<count - 1>`, because
/// a worker moves on to its next key only once a write to the current one was acknowledged (a failed
/// write is retried on the same key with the same value). Memory stays flat however long the run.
struct AcknowledgedWrites: Sendable {
    var keyPrefix: String
    /// Acknowledged writes per worker.
    var counts: [Int]

    var total: Int { self.counts.reduce(0, +) }

    static func key(prefix: String, worker: Int, sequence: Int) -> String {
        "\(prefix):w:\(worker):\(sequence)"
    }

    /// Calls `body` with the acknowledged keys, `size` at a time, never holding more than one batch.
    func forEachBatch(of size: Int, _ body: ([String]) async throws -> Void) async rethrows {
        for (worker, count) in self.counts.enumerated() {
            var next = 0
            while next < count {
                let end = min(count, next + size)
                try await body((next..<end).map { Self.key(prefix: self.keyPrefix, worker: worker, sequence: $0) })
                next = end
            }
        }
    }
}

enum LoadGenerator {
    /// Runs `workload` against `client` until its duration is over or `stop` is requested, recording into
    /// `recorder`; returns the acknowledged writes (none unless writes are verified).
    static func run(_ workload: Workload, client: some RedisCommandExecutor, recorder: LoadRecorder, stop: TrafficStop) async -> AcknowledgedWrites {
        let clock = ContinuousClock()
        let end = clock.now + workload.duration
        let interval: Duration? = workload.rate > 0
            ? .nanoseconds(Int64(1e9 * Double(workload.concurrency) / Double(workload.rate)))
            : nil
        let counts = await withTaskGroup(of: (worker: Int, acknowledged: Int).self) { group in
            for worker in 0..<workload.concurrency {
                group.addTask {
                    var generator = SystemRandomNumberGenerator()
                    let value = (0..<workload.valueSize).map { _ in UInt8.random(in: 97...122, using: &generator) }
                    var acknowledged = 0
                    var intended = clock.now
                    var index = 0
                    // Bounded by time and by count.
                    while clock.now < end && index < 100_000_000 && !Task.isCancelled && !stop.isRequested {
                        index += 1
                        var started = clock.now
                        if let interval {
                            // Latency counts from the intended start, so a stall is not hidden
                            // (coordinated omission).
                            intended = intended + interval
                            if intended > clock.now { try? await Task.sleep(until: intended, clock: clock) }
                            started = intended
                            if clock.now >= end || stop.isRequested { break }
                        }
                        let isRead = Double.random(in: 0..<1, using: &generator) < workload.readRatio
                        do {
                            if isRead {
                                let key = "\(workload.keyPrefix):k:\(Int.random(in: 0..<workload.keys, using: &generator))"
                                _ = try await client.send(RedisCommand("GET", .string(key)))
                            } else if workload.verifyWrites {
                                let key = AcknowledgedWrites.key(prefix: workload.writePrefix, worker: worker, sequence: acknowledged)
                                _ = try await client.send(RedisCommand("SET", .string(key), .bytes(value)).idempotent())
                                acknowledged += 1
                            } else {
                                let key = "\(workload.keyPrefix):k:\(Int.random(in: 0..<workload.keys, using: &generator))"
                                _ = try await client.send(RedisCommand("SET", .string(key), .bytes(value)).idempotent())
                            }
                            recorder.record(latency: clock.now - started, ok: true)
                        } catch {
                            recorder.record(latency: clock.now - started, ok: false, failure: "\(error)")
                        }
                    }
                    return (worker, acknowledged)
                }
            }
            var counts = [Int](repeating: 0, count: workload.concurrency)
            for await (worker, acknowledged) in group { counts[worker] = acknowledged }
            return counts
        }
        return AcknowledgedWrites(keyPrefix: workload.writePrefix, counts: counts)
    }
}
