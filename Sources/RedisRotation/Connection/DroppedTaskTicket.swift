/// Carried by a task scheduled on an event loop that may shut down meanwhile: released without having
/// run, it calls `onDrop`.
///
/// An event loop that has shut down drops the tasks scheduled on it unrun (NIO prints an error), and
/// NIO's `EventLoopFuture.get()` registers its callback through such a task too, so a caller waiting on
/// a promise of that loop would wait for ever. A caller waits instead on something the task completes
/// (a ``ReplyBox``, a continuation), and `onDrop` completes it when the task never runs. Keep the
/// ticket in the task's capture list, so that the task is its only owner.
final class DroppedTaskTicket: @unchecked Sendable {
    // `didRun` is read and written only by whoever holds the last reference: the scheduling thread
    // until the loop takes the task (NIO's lock orders the hand-over), the loop after.
    private let onDrop: @Sendable () -> Void
    private var didRun = false

    init(onDrop: @escaping @Sendable () -> Void) {
        self.onDrop = onDrop
    }

    /// The task runs: from now on it answers the wait itself.
    func ran() { self.didRun = true }

    deinit {
        if !self.didRun { self.onDrop() }
    }
}
