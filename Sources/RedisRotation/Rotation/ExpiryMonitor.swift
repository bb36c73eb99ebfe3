#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Watches expiry dates (the client certificate, each trust anchor, server certificates seen in
/// handshakes, credentials with an expiry) and says when one crosses a warning threshold. Pure: the
/// caller passes the time in, so tests use a manual clock.
///
/// Each threshold warns once per item; an item whose expiry changes (a renewed certificate under the
/// same name) is watched afresh. An item already past a threshold when it is first seen warns once,
/// for the nearest threshold it has crossed.
struct ExpiryMonitor {
    struct Item: Hashable {
        /// What it is: `client certificate CN=app`, `trust anchor CN=Root`, `credential v7`.
        var name: String
        var expiresAt: Date
    }

    struct Warning: Hashable {
        var item: Item
        /// The threshold crossed (seconds before expiry); 0 once expired.
        var threshold: TimeInterval
        /// Seconds left; negative once expired.
        var remaining: TimeInterval
    }

    /// Thresholds in seconds before expiry, largest first; 0 (expired) is always added.
    let thresholds: [TimeInterval]
    private var items: [String: Item] = [:]
    /// The smallest threshold already warned about, per item name.
    private var warned: [String: TimeInterval] = [:]

    init(thresholds: [TimeInterval] = [30 * 86400, 7 * 86400, 86400]) {
        self.thresholds = Array(Set(thresholds.filter { $0 > 0 } + [0])).sorted(by: >)
    }

    /// Replaces the watched items of one `group` (for instance "trust anchor") with `items`.
    mutating func setItems(_ items: [Item], group: String) {
        for name in self.items.keys where name.hasPrefix(group) && !items.contains(where: { $0.name == name }) {
            self.items.removeValue(forKey: name)
            self.warned.removeValue(forKey: name)
        }
        for item in items {
            if let old = self.items[item.name], old.expiresAt != item.expiresAt { self.warned.removeValue(forKey: item.name) }
            self.items[item.name] = item
        }
    }

    /// Every item with its time left, for gauges.
    func remaining(at now: Date) -> [(item: Item, seconds: TimeInterval)] {
        self.items.values.sorted { $0.name < $1.name }.map { ($0, $0.expiresAt.timeIntervalSince(now)) }
    }

    /// The warnings due at `now`, and when to look again.
    mutating func evaluate(at now: Date) -> (warnings: [Warning], next: Date?) {
        var warnings: [Warning] = []
        var next: Date?
        for item in self.items.values.sorted(by: { $0.name < $1.name }) {
            let remaining = item.expiresAt.timeIntervalSince(now)
            // The smallest threshold crossed so far.
            if let crossed = self.thresholds.last(where: { remaining <= $0 }) {
                let already = self.warned[item.name]
                if already == nil || crossed < already! {
                    self.warned[item.name] = crossed
                    warnings.append(Warning(item: item, threshold: crossed, remaining: remaining))
                }
            }
            // The next threshold this item will cross.
            if let upcoming = self.thresholds.first(where: { remaining > $0 }) {
                let at = item.expiresAt.addingTimeInterval(-upcoming)
                if next == nil || at < next! { next = at }
            }
        }
        return (warnings, next)
    }
}
