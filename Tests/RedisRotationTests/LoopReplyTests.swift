import NIOCore
import NIOPosix
import Testing

@testable import RedisRotation

/// The wait that work on an event loop answers once: by the work, by a cancellation, or by its ticket
/// released unrun when a shut-down loop drops the task.
@Suite("Loop reply", .timeLimit(.minutes(1)))
struct LoopReplyTests {
    struct Dropped: Error {}

    @Test("a result delivered before the wait, and one after it: each wait gets the first, later ones are ignored")
    func firstResultWins() async throws {
        let early = LoopReply<Int>()
        early.resume(with: .success(1))
        early.resume(with: .success(2))
        #expect(try await early.wait() == 1)

        let late = LoopReply<Int>()
        let waiter = Task { try await late.wait() }
        await Task.yield()
        late.resume(with: .success(3))
        late.resume(with: .failure(Dropped()))
        #expect(try await waiter.value == 3)
    }

    @Test("a task that ran: its ticket's release delivers nothing; the work's result does")
    func ranTicket() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let reply = LoopReply<String>()
        let loop = group.next()
        loop.execute { [ticket = reply.ticket(ifDropped: { .failure(Dropped()) })] in
            ticket.ran()
            loop.scheduleTask(in: .milliseconds(20)) { reply.resume(with: .success("work")) }
        }
        #expect(try await reply.wait() == "work")
        try await group.shutdownGracefully()
    }

    @Test("a task scheduled on a loop that has shut down: the loop drops it, and its ticket delivers ifDropped's result")
    func droppedTicket() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        try await group.shutdownGracefully()
        let reply = LoopReply<String>()
        // The ticket's one owner is the task: released unrun, it answers the wait.
        loop.execute { [ticket = reply.ticket(ifDropped: { .failure(Dropped()) })] in
            ticket.ran()
            reply.resume(with: .success("ran on a shut-down loop"))
        }
        await #expect(throws: Dropped.self) { try await reply.wait() }
    }
}
