import NIOCore
import NIOPosix
import Testing

@testable import RedisRotation

/// The executor's two ways off a loop that can no longer run its work, without a server: a connection
/// known closed sends the work to the global executor at once, and a loop that shut down before the
/// executor learnt of it drops the work unrun, which the executor catches.
@Suite("A connection's task executor", .timeLimit(.minutes(1)))
struct RedisLoopExecutorTests {
    @Test("a task preferring the executor of an open connection runs on its event loop")
    func runsOnTheLoop() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let executor = RedisLoopExecutor(eventLoop: loop, progress: ReplyProgress())
        let onLoop = await Task(executorPreference: executor) { () async -> [Bool] in
            var seen = [loop.inEventLoop]
            for _ in 0..<5 {
                await Task.yield()
                seen.append(loop.inEventLoop)
            }
            return seen
        }.value
        #expect(onLoop == Array(repeating: true, count: 6))
        try await group.shutdownGracefully()
    }

    @Test("the connection has closed: the task runs off the loop, and finishes")
    func closedConnection() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let progress = ReplyProgress()
        progress.closed(because: RedisError(code: .connectionClosed, message: "closed"))
        let executor = RedisLoopExecutor(eventLoop: loop, progress: progress)
        let onLoop = await Task(executorPreference: executor) { () async -> Bool in
            await Task.yield()
            return loop.inEventLoop
        }.value
        #expect(!onLoop)
        try await group.shutdownGracefully()
    }

    @Test("the event loop shut down while the connection still counts as open: every job the loop drops unrun runs on the global executor, so the task finishes")
    func droppedByAShutDownLoop() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        try await group.shutdownGracefully()
        // The progress never learns of a close: only the dropped-job path can run the task.
        let executor = RedisLoopExecutor(eventLoop: loop, progress: ReplyProgress())
        let value = await Task(executorPreference: executor) { () async -> Int in
            var total = 0
            for step in 1...3 {
                await Task.yield()
                total += step
            }
            return total
        }.value
        #expect(value == 6)
    }
}
