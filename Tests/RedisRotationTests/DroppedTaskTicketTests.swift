import NIOCore
import NIOPosix
import Testing

@testable import RedisRotation

/// The ticket a task on an event loop carries for its waiter: released after the task ran it does
/// nothing; released unrun (a loop that has shut down drops the task) it answers the wait.
@Suite("Dropped-task ticket", .timeLimit(.minutes(1)))
struct DroppedTaskTicketTests {
    struct Dropped: Error {}

    @Test("a task that ran: its ticket's release fails nothing; the task's reply arrives")
    func ranTicket() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let box = ReplyBox()
        let loop = group.next()
        loop.execute { [ticket = DroppedTaskTicket(onDrop: { box.complete(.failure(Dropped())) })] in
            ticket.ran()
            loop.scheduleTask(in: .milliseconds(20)) { box.complete(.success(.simpleString(ByteBuffer(string: "work")))) }
        }
        #expect(try await box.value() == .simpleString(ByteBuffer(string: "work")))
        try await group.shutdownGracefully()
    }

    @Test("a task scheduled on a loop that has shut down: the loop drops it, and its ticket answers the wait")
    func droppedTicket() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        try await group.shutdownGracefully()
        let box = ReplyBox()
        loop.execute { [ticket = DroppedTaskTicket(onDrop: { box.complete(.failure(Dropped())) })] in
            ticket.ran()
            box.complete(.success(.simpleString(ByteBuffer(string: "ran on a shut-down loop"))))
        }
        await #expect(throws: Dropped.self) { try await box.value() }
    }
}
