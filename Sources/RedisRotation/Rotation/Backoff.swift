import NIOCore

/// Decorrelated jitter ("exponential backoff and jitter", AWS architecture blog): each delay is random
/// between `base` and three times the previous one, capped. Spreads a burst of failures (a whole pool
/// killed at once) instead of retrying in lock step. Pure: the caller supplies the random number.
struct Backoff: Hashable {
    let base: TimeAmount
    let cap: TimeAmount

    /// The delay after `previous` (nil on the first failure), for `random` in `0..<1`.
    func delay(after previous: TimeAmount?, random: Double) -> TimeAmount {
        let low = self.base.nanoseconds
        let high = max(low, min(self.cap.nanoseconds, (previous?.nanoseconds ?? low) * 3))
        let span = Double(high - low) * min(max(random, 0), 0.999_999)
        return .nanoseconds(min(self.cap.nanoseconds, low + Int64(span)))
    }
}
