public import NIOCore

/// A task executor that runs a task on its connection's event loop while the connection is open.
///
/// A task that awaits a reply normally runs on Swift's shared thread pool: every command crosses to the
/// connection's event loop and its reply crosses back, two thread wake-ups per round trip. A task that
/// prefers this executor runs on the event loop itself, so a command is written where the task runs and
/// the reply resumes it there, with no crossing (``RedisConnection/taskExecutor``):
///
/// ```swift
/// try await withTaskExecutorPreference(connection.taskExecutor) {
///     for key in keys {
///         _ = try await connection.get(key)
///     }
/// }
/// ```
///
/// It pays off for sequential work — one command after another, each waiting for the last reply.
/// Concurrent callers on one connection are pipelined either way.
///
/// - Important: The task then shares a thread with the I/O of every connection on that event loop
///   (of a pool, too): while it computes or blocks, none of them reads or writes. Prefer the executor
///   only around code that mostly waits for Redis.
///
/// Once the connection has closed (or its event loop has shut down), the executor hands the task's work
/// to Swift's global concurrent executor, so a task that outlives its connection carries on there.
/// Child tasks inherit the preference, as with any task executor.
public final class RedisLoopExecutor: TaskExecutor {
    /// The event loop the executor runs tasks on while its connection is open.
    public let eventLoop: any EventLoop
    /// Why the connection closed, `nil` while it is open.
    private let progress: ReplyProgress

    init(eventLoop: any EventLoop, progress: ReplyProgress) {
        self.eventLoop = eventLoop
        self.progress = progress
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        guard self.progress.closeReason == nil else {
            globalConcurrentExecutor.enqueue(ExecutorJob(job))
            return
        }
        // The closure's one capture is the carrier: one allocation for both. A loop that has shut down
        // since the check above drops the closure unrun, and the carrier hands the job on (see its deinit).
        self.eventLoop.execute { [carrier = ScheduledJob(job: job, executor: self)] in carrier.run() }
    }

    /// A job on its way to the event loop. An event loop that has shut down releases the tasks scheduled
    /// on it unrun (NIO prints an error); the job then runs on the global concurrent executor instead of
    /// never, which would leave its task suspended for ever.
    private final class ScheduledJob: @unchecked Sendable {
        // Read and written only by whoever holds the last reference: the scheduling thread until the loop
        // takes the closure (NIO's lock orders the hand-over), the loop after.
        private let job: UnownedJob
        // Held strongly: the job runs on this executor, which its task's scope may let go of meanwhile.
        private let executor: RedisLoopExecutor
        private var ran = false

        init(job: UnownedJob, executor: RedisLoopExecutor) {
            self.job = job
            self.executor = executor
        }

        func run() {
            self.ran = true
            self.job.runSynchronously(on: self.executor.asUnownedTaskExecutor())
        }

        deinit {
            if !self.ran { globalConcurrentExecutor.enqueue(ExecutorJob(self.job)) }
        }
    }
}

extension RedisConnection {
    /// A task executor on this connection's event loop: a task that prefers it runs its awaits of this
    /// connection's replies without leaving the loop (see ``RedisLoopExecutor``).
    ///
    /// ```swift
    /// let total = try await withTaskExecutorPreference(connection.taskExecutor) {
    ///     var total = 0
    ///     for key in keys { total += try await connection.get(key, as: Int.self) ?? 0 }
    ///     return total
    /// }
    /// ```
    ///
    /// Each access makes a new executor; keep one for as long as you use it.
    public var taskExecutor: RedisLoopExecutor {
        RedisLoopExecutor(eventLoop: self.eventLoop, progress: self.progress)
    }
}
