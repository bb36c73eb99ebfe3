import NIOCore
import Synchronization

/// Since when a connection has been waiting for a reply without getting one: written by its command
/// handler on the event loop, read by the pool when it picks a connection for a shared command. A
/// connection whose server holds a command back (`CLIENT PAUSE WRITE` during a failover, a slow
/// command) would otherwise go on taking commands that all queue behind it (head-of-line blocking).
final class ReplyProgress: Sendable {
    /// Uptime nanoseconds of the last reply (or of the write that found nothing outstanding); 0 when
    /// nothing is outstanding.
    private let waitingSince = Atomic<UInt64>(0)

    /// Commands were written; `now` is read only when nothing was outstanding before.
    func commandsWritten() {
        if self.waitingSince.load(ordering: .relaxed) == 0 {
            self.waitingSince.store(Self.stamp(.now()), ordering: .relaxed)
        }
    }

    /// A reply arrived; `outstanding` replies are still owed.
    func replyReceived(outstanding: Int) {
        self.waitingSince.store(outstanding == 0 ? 0 : Self.stamp(.now()), ordering: .relaxed)
    }

    /// Why the connection closed, once it has: what a command written to it now fails with.
    private let reason = Mutex<RedisError?>(nil)
    /// Set once `reason` is: every command reads this, only a closed connection's take the lock.
    private let isClosed = Atomic<Bool>(false)

    /// The connection closed: nothing is waited for any more.
    func closed(because reason: RedisError) {
        self.waitingSince.store(0, ordering: .relaxed)
        self.reason.withLock { $0 = $0 ?? reason }
        self.isClosed.store(true, ordering: .releasing)
    }

    /// Why the connection closed, `nil` while it is open. Read off the event loop: a command need not
    /// reach the loop to learn it (a loop that has shut down drops what is scheduled on it).
    var closeReason: RedisError? {
        guard self.isClosed.load(ordering: .acquiring) else { return nil }
        return self.reason.withLock { $0 }
    }

    /// Whether replies are owed and none has arrived for longer than `threshold` before `now`.
    func isStalled(longerThan threshold: TimeAmount, now: NIODeadline) -> Bool {
        let since = self.waitingSince.load(ordering: .relaxed)
        return since != 0 && now.uptimeNanoseconds > since && Int64(now.uptimeNanoseconds - since) > threshold.nanoseconds
    }

    private static func stamp(_ deadline: NIODeadline) -> UInt64 { max(deadline.uptimeNanoseconds, 1) }
}
