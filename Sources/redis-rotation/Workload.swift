import Foundation
import RedisRotation

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
}

/// What the writes of a run left on the server.
struct WriteVerification: Codable, Sendable {
    var acknowledged: Int
    var found: Int
    var lost: Int
}

enum LoadGenerator {
    /// Runs `workload` against `client`, recording into `recorder`; returns the keys of acknowledged
    /// writes when writes are verified.
    static func run(_ workload: Workload, client: RedisClient, recorder: LoadRecorder) async -> [String] {
        let clock = ContinuousClock()
        let end = clock.now + workload.duration
        let interval: Duration? = workload.rate > 0
            ? .nanoseconds(Int64(1e9 * Double(workload.concurrency) / Double(workload.rate)))
            : nil
        return await withTaskGroup(of: [String].self) { group in
            for worker in 0..<workload.concurrency {
                group.addTask {
                    var generator = SystemRandomNumberGenerator()
                    let value = (0..<workload.valueSize).map { _ in UInt8.random(in: 97...122, using: &generator) }
                    var written: [String] = []
                    var intended = clock.now
                    var index = 0
                    // Bounded by time and by count.
                    while clock.now < end && index < 100_000_000 && !Task.isCancelled {
                        index += 1
                        var started = clock.now
                        if let interval {
                            // Latency counts from the intended start, so a stall is not hidden
                            // (coordinated omission).
                            intended = intended + interval
                            if intended > clock.now { try? await Task.sleep(until: intended, clock: clock) }
                            started = intended
                            if clock.now >= end { break }
                        }
                        let isRead = Double.random(in: 0..<1, using: &generator) < workload.readRatio
                        do {
                            if isRead {
                                let key = "\(workload.keyPrefix):k:\(Int.random(in: 0..<workload.keys, using: &generator))"
                                _ = try await client.send(RedisCommand("GET", .string(key)))
                            } else if workload.verifyWrites {
                                let key = "\(workload.keyPrefix):w:\(worker):\(index)"
                                _ = try await client.send(RedisCommand("SET", .string(key), .bytes(value)).idempotent())
                                written.append(key)
                            } else {
                                let key = "\(workload.keyPrefix):k:\(Int.random(in: 0..<workload.keys, using: &generator))"
                                _ = try await client.send(RedisCommand("SET", .string(key), .bytes(value)).idempotent())
                            }
                            recorder.record(latency: clock.now - started, ok: true)
                        } catch {
                            recorder.record(latency: clock.now - started, ok: false, failure: "\(error)")
                        }
                    }
                    return written
                }
            }
            return await group.reduce(into: []) { $0 += $1 }
        }
    }

    /// Counts how many of `keys` exist on the server.
    static func verify(_ keys: [String], client: RedisClient) async throws -> WriteVerification {
        var found = 0
        var index = 0
        while index < keys.count {
            let batch = keys[index..<min(keys.count, index + 500)]
            found += try await client.send(RedisCommand("EXISTS", arguments: batch.map { .string($0) }), as: Int.self)
            index += batch.count
        }
        return WriteVerification(acknowledged: keys.count, found: found, lost: keys.count - found)
    }
}
