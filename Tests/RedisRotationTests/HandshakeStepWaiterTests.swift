import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import RedisRotation

/// `connect`'s one wait for the channel and the first handshake step's replies: complete exactly once,
/// whatever the order of the replies, the failure and the task's wait.
@Suite("Handshake step waiter", .timeLimit(.minutes(1)))
struct HandshakeStepWaiterTests {
    @Test("replies in any order, before or after the task waits, come back in the commands' order", arguments: [1, 2, 3])
    func repliesInAnyOrder(count: Int) async throws {
        let channel = EmbeddedChannel()
        let deadline = NIODeadline.now() + .seconds(5)
        for waitFirst in [false, true] {
            for order in [Array(0..<count), Array((0..<count).reversed())] {
                let waiter = HandshakeStepWaiter(count: count)
                waiter.connected(channel, deadline: deadline, tls: nil)
                let finish = {
                    for index in order {
                        if index == 1 {
                            waiter.complete(index, with: .failure(RedisError(code: .serverError, message: "no")))
                        } else {
                            waiter.complete(index, with: .success(.integer(Int64(index))))
                        }
                    }
                }
                let outcome: HandshakeStepWaiter.Outcome
                if waitFirst {
                    async let waited = waiter.value()
                    // The task may or may not be waiting yet: either way the replies reach it.
                    await Task.yield()
                    finish()
                    outcome = try await waited
                } else {
                    finish()
                    outcome = try await waiter.value()
                }
                #expect(outcome.replies.count == count)
                #expect(outcome.deadline == deadline)
                #expect(outcome.tlsInfo == nil)
                #expect(outcome.channel === channel)
                for (index, reply) in outcome.replies.enumerated() {
                    switch reply {
                    case .success(let value): #expect(index != 1 && value == .integer(Int64(index)))
                    case .failure(let error): #expect(index == 1 && (error as? RedisError)?.code == .serverError)
                    }
                }
            }
        }
    }

    @Test("a connection that fails before the step goes out fails the wait with its error")
    func failureBeforeConnected() async throws {
        let waiter = HandshakeStepWaiter(count: 2)
        waiter.fail(ChannelError.connectTimeout(.seconds(1)))
        // Nothing after the failure changes the outcome.
        waiter.complete(0, with: .success(.simpleString(ByteBuffer(string: "OK"))))
        await #expect(throws: ChannelError.self) { try await waiter.value() }
    }

    @Test("a second completion of one reply, or a failure after the last reply, is ignored")
    func laterCompletionsIgnored() async throws {
        let channel = EmbeddedChannel()
        let waiter = HandshakeStepWaiter(count: 2)
        waiter.connected(channel, deadline: .now() + .seconds(5), tls: nil)
        waiter.complete(0, with: .success(.integer(1)))
        waiter.complete(0, with: .success(.integer(99)))
        waiter.complete(1, with: .success(.integer(2)))
        waiter.fail(CancellationError())
        waiter.complete(1, with: .success(.integer(98)))
        let outcome = try await waiter.value()
        #expect(outcome.replies.map { try? $0.get() } == [.integer(1), .integer(2)])
    }

    @Test("a reply racing with the task's wait reaches it, 1000 times")
    func races() async throws {
        let channel = EmbeddedChannel()
        for round in 0..<1000 {
            let waiter = HandshakeStepWaiter(count: 2)
            waiter.connected(channel, deadline: .now() + .seconds(5), tls: nil)
            waiter.complete(0, with: .success(.integer(Int64(round))))
            let completer = Task.detached {
                if round % 2 == 0 {
                    waiter.complete(1, with: .success(.integer(0)))
                } else {
                    waiter.fail(CancellationError())
                }
            }
            do {
                let outcome = try await waiter.value()
                #expect(round % 2 == 0)
                #expect(outcome.replies.count == 2)
            } catch {
                #expect(round % 2 == 1 && error is CancellationError)
            }
            await completer.value
        }
    }
}

@Suite("Handshake step waiter: the channel a connect settles on")
struct HandshakeStepWaiterSettleTests {
    static func handlers() -> RedisConnection.Handlers {
        let handler = RedisCommandHandler(logger: Logger(label: "settle"))
        let channel = EmbeddedChannel(handler: handler)
        return RedisConnection.Handlers(channel: channel, command: NIOLoopBound(handler, eventLoop: channel.eventLoop), tls: nil, progress: handler.progress)
    }

    @Test("a host name with two addresses makes two channels: the step goes to the handlers of the one that connected, not the last made")
    func settlesOnTheWinner() throws {
        let waiter = HandshakeStepWaiter(count: 1)
        let first = Self.handlers()
        let second = Self.handlers()
        waiter.install(first)
        waiter.install(second)
        // Before: the last installed were the handlers, whichever channel connected.
        #expect(waiter.settle(on: first.channel)?.channel === first.channel)
        #expect(waiter.handlers?.channel === first.channel)
        // Settled: the other channel's handlers are gone.
        #expect(waiter.settle(on: second.channel) == nil)
        for candidate in [first, second] { _ = try? (candidate.channel as? EmbeddedChannel)?.finish() }
    }

    @Test("one channel (an IP address): it is settled on")
    func oneChannel() throws {
        let waiter = HandshakeStepWaiter(count: 1)
        let only = Self.handlers()
        waiter.install(only)
        #expect(waiter.settle(on: only.channel)?.channel === only.channel)
        #expect(waiter.handlers?.channel === only.channel)
        _ = try? (only.channel as? EmbeddedChannel)?.finish()
    }
}
