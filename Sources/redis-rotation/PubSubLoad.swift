import Foundation
import RedisRotation
import Synchronization

/// What `--subscribers` saw (`pubsub` in the JSON report; field names are part of the tool's contract).
struct PubSubReport: Codable, Sendable {
    var subscribers: Int
    /// Publishes acknowledged by the server.
    var published: Int
    /// Publishes that failed; one whose connection died in flight may still have been delivered.
    var publish_failed: Int
    /// Messages received, over all subscribers.
    var received: Int
    /// Messages a subscriber received more than once.
    var duplicated: Int
    /// Messages that arrived after a later one.
    var out_of_order: Int
    /// Acknowledged messages a subscriber never received, outside every gap it was told of.
    var lost: Int
    /// Acknowledged messages a subscriber never received, published within a gap it was told of
    /// (from a second before the gap's start to its end: the loss is noticed a moment after it happens).
    var missed_in_gaps: Int
    /// Gaps signalled, over all subscribers.
    var gaps: Int

    var succeeded: Bool { self.duplicated == 0 && self.out_of_order == 0 && self.lost == 0 }
}

/// `subscribers` subscriptions to one channel and one publisher of sequence numbers (one at a time,
/// each acknowledged before the next, at most one a millisecond), for as long as the main traffic runs.
final class PubSubLoad: Sendable {
    private let client: RedisClient
    private let channel: String
    private let shared = Shared()
    private let publisher: Task<Void, Never>
    private let consumers: [Task<[RedisSubscriptionEvent], Never>]

    /// What the publisher shares with `finish()`.
    private final class Shared: Sendable {
        let stop = Atomic<Bool>(false)
        let acknowledged = Lock<[(number: Int, sentAt: Date)]>([])
        let failed = Atomic<Int>(0)
    }

    /// Subscribes (so that every message the publisher sends has subscribers), then starts publishing.
    init(client: RedisClient, subscribers: Int, channel: String) async throws {
        self.client = client
        self.channel = channel
        var consumers: [Task<[RedisSubscriptionEvent], Never>] = []
        for _ in 0..<subscribers {
            let subscription = try await client.subscribe(to: [channel])
            consumers.append(
                Task {
                    var events: [RedisSubscriptionEvent] = []
                    do {
                        for try await event in subscription {
                            if event.message?.string == "end" { break }
                            events.append(event)
                        }
                    } catch {}
                    return events
                }
            )
        }
        self.consumers = consumers
        let shared = self.shared
        self.publisher = Task {
            var next = 0
            while !shared.stop.load(ordering: .relaxed) && !Task.isCancelled && next < Int.max {
                let sentAt = Date()
                do {
                    try await client.publish(.string(String(next)), to: channel)
                    shared.acknowledged.withLock { $0.append((next, sentAt)) }
                } catch {
                    shared.failed.add(1, ordering: .relaxed)
                }
                next += 1
                try? await Task.sleep(for: .milliseconds(1))
            }
        }
    }

    /// Stops publishing, ends every subscription with a last message (waiting at most 10 s for them) and
    /// counts.
    func finish() async -> PubSubReport {
        self.shared.stop.store(true, ordering: .relaxed)
        await self.publisher.value
        for _ in 0..<5 {
            if (try? await self.client.publish("end", to: self.channel)) != nil { break }
            try? await Task.sleep(for: .milliseconds(200))
        }
        let consumers = self.consumers
        let deadline = Task {
            try? await Task.sleep(for: .seconds(10))
            for consumer in consumers { consumer.cancel() }
        }
        var report = PubSubReport(
            subscribers: consumers.count, published: 0, publish_failed: self.shared.failed.load(ordering: .relaxed), received: 0,
            duplicated: 0, out_of_order: 0, lost: 0, missed_in_gaps: 0, gaps: 0
        )
        let acknowledged = self.shared.acknowledged.withLock { $0 }
        report.published = acknowledged.count
        for consumer in consumers {
            let events = await consumer.value
            var seen = Set<Int>()
            var last: Int?
            var gaps: [(from: Date, to: Date)] = []
            for event in events {
                switch event {
                case .message(let message):
                    guard let number = Int(message.string) else { continue }
                    report.received += 1
                    if !seen.insert(number).inserted { report.duplicated += 1 }
                    if let last, number < last { report.out_of_order += 1 }
                    last = number
                case .gap(let from, let to):
                    report.gaps += 1
                    gaps.append((from.addingTimeInterval(-1), to))
                }
            }
            for message in acknowledged where !seen.contains(message.number) {
                if gaps.contains(where: { $0.from <= message.sentAt && message.sentAt <= $0.to }) {
                    report.missed_in_gaps += 1
                } else {
                    report.lost += 1
                }
            }
        }
        deadline.cancel()
        return report
    }
}
