import NIOCore
import Testing

@testable import RedisRotation

@Suite("Command queue state machine")
struct CommandQueueStateMachineTests {
    typealias Machine = CommandQueueStateMachine<String>

    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func entry(_ id: UInt64, _ promise: String, deadlineAfter seconds: Int64) -> Machine.Entry {
        Machine.Entry(id: id, promise: promise, deadline: self.start + .seconds(seconds))
    }

    func enqueue(_ machine: inout Machine, _ entries: [Machine.Entry]) -> NIODeadline?? {
        switch machine.commandsEnqueued(entries) {
        case .write(let deadline): return .some(deadline)
        case .fail: return nil
        }
    }

    @Test("replies go to waiters in the order the commands were written")
    func fifo() {
        var machine = Machine()
        _ = self.enqueue(&machine, [self.entry(1, "a", deadlineAfter: 5), self.entry(2, "b", deadlineAfter: 5)])
        _ = self.enqueue(&machine, [self.entry(3, "c", deadlineAfter: 5)])
        for expected in ["a", "b", "c"] {
            guard case .succeed(let promise) = machine.replyReceived() else {
                Issue.record("expected a waiter")
                return
            }
            #expect(promise == expected)
        }
        #expect(machine.outstandingCount == 0)
    }

    @Test("the first enqueue schedules the timer; a later deadline does not reschedule, an earlier one does")
    func timerScheduling() {
        var machine = Machine()
        #expect(self.enqueue(&machine, [self.entry(1, "a", deadlineAfter: 5)]) == .some(self.start + .seconds(5)))
        #expect(self.enqueue(&machine, [self.entry(2, "b", deadlineAfter: 9)]) == .some(nil))
        #expect(self.enqueue(&machine, [self.entry(3, "c", deadlineAfter: 2)]) == .some(self.start + .seconds(2)))
    }

    @Test("an empty enqueue writes and schedules nothing")
    func emptyEnqueue() {
        var machine = Machine()
        #expect(self.enqueue(&machine, []) == .some(nil))
    }

    @Test("a reply for no command closes the connection")
    func unexpectedReply() {
        var machine = Machine()
        guard case .close(let error) = machine.replyReceived() else {
            Issue.record("expected close")
            return
        }
        #expect(error.code == .protocolError)
    }

    @Test("a later command's deadline passing fails only that command; its reply is dropped")
    func nonHeadTimeout() {
        var machine = Machine()
        _ = self.enqueue(
            &machine,
            [self.entry(1, "blpop", deadlineAfter: 30), self.entry(2, "get", deadlineAfter: 5), self.entry(3, "set", deadlineAfter: 6)]
        )
        let action = machine.timerFired(now: self.start + .seconds(5))
        #expect(action.fail.map(\.0) == ["get"])
        #expect(action.fail.map(\.1.code) == [.commandTimeout])
        #expect(!action.close)
        #expect(action.scheduleTimer == self.start + .seconds(6))
        #expect(machine.isOpen)

        guard case .succeed("blpop") = machine.replyReceived() else {
            Issue.record("expected blpop's reply")
            return
        }
        guard case .drop = machine.replyReceived() else {
            Issue.record("expected get's reply to be dropped")
            return
        }
        guard case .succeed("set") = machine.replyReceived() else {
            Issue.record("expected set's reply")
            return
        }
    }

    @Test("the oldest command's deadline passing closes the connection and fails every waiter")
    func headTimeout() {
        var machine = Machine()
        _ = self.enqueue(&machine, [self.entry(1, "a", deadlineAfter: 5), self.entry(2, "b", deadlineAfter: 10)])
        let action = machine.timerFired(now: self.start + .seconds(5))
        #expect(action.close)
        #expect(action.fail.map(\.0) == ["a", "b"])
        #expect(action.fail.map(\.1.code) == [.commandTimeout, .connectionClosed])
        #expect(action.scheduleTimer == nil)
        #expect(!machine.isOpen)
        // Everything later fails at once with the reason.
        guard case .fail(let error) = machine.commandsEnqueued([self.entry(3, "c", deadlineAfter: 5)]) else {
            Issue.record("expected the enqueue to fail")
            return
        }
        #expect(error.code == .connectionClosed)
        #expect(machine.connectionClosed(RedisError(code: .connectionClosed, message: "x")).isEmpty)
    }

    @Test("a timer that fires before any deadline reschedules for the earliest live one")
    func earlyTimer() {
        var machine = Machine()
        _ = self.enqueue(&machine, [self.entry(1, "a", deadlineAfter: 5)])
        guard case .succeed = machine.replyReceived() else {
            Issue.record("expected a waiter")
            return
        }
        _ = self.enqueue(&machine, [self.entry(2, "b", deadlineAfter: 8)])
        let action = machine.timerFired(now: self.start + .seconds(5))
        #expect(action.fail.isEmpty)
        #expect(!action.close)
        #expect(action.scheduleTimer == self.start + .seconds(8))
    }

    @Test("a timer with nothing outstanding does nothing")
    func idleTimer() {
        var machine = Machine()
        let action = machine.timerFired(now: self.start)
        #expect(action.fail.isEmpty && !action.close && action.scheduleTimer == nil)
    }

    @Test("an abandoned oldest command that stays unanswered closes the connection at the next deadline")
    func abandonedHeadStillUnanswered() {
        var machine = Machine()
        _ = self.enqueue(&machine, [self.entry(1, "a", deadlineAfter: 30), self.entry(2, "b", deadlineAfter: 5)])
        _ = machine.timerFired(now: self.start + .seconds(5))  // b fails, a continues
        #expect(machine.commandCancelled(id: 1).fail == "a")
        let action = machine.timerFired(now: self.start + .seconds(31))
        #expect(action.close)
        #expect(action.fail.isEmpty)
    }

    @Test("cancelling returns the waiter once and drops its reply")
    func cancel() {
        var machine = Machine()
        _ = self.enqueue(&machine, [self.entry(1, "a", deadlineAfter: 5), self.entry(2, "b", deadlineAfter: 5)])
        #expect(machine.commandCancelled(id: 1).fail == "a")
        #expect(machine.commandCancelled(id: 1).fail == nil)
        #expect(machine.commandCancelled(id: 99).fail == nil)
        guard case .drop = machine.replyReceived() else {
            Issue.record("expected a drop")
            return
        }
        guard case .succeed("b") = machine.replyReceived() else {
            Issue.record("expected b")
            return
        }
    }

    @Test("closing fails every live waiter once; later enqueues fail with the first reason")
    func close() {
        var machine = Machine()
        _ = self.enqueue(&machine, [self.entry(1, "a", deadlineAfter: 5), self.entry(2, "b", deadlineAfter: 5)])
        _ = machine.commandCancelled(id: 2)
        let reason = RedisError(code: .protocolError, message: "bad bytes")
        #expect(machine.connectionClosed(reason) == ["a"])
        #expect(machine.connectionClosed(RedisError(code: .connectionClosed, message: "later")).isEmpty)
        guard case .fail(let error) = machine.commandsEnqueued([self.entry(3, "c", deadlineAfter: 5)]) else {
            Issue.record("expected a failure")
            return
        }
        #expect(error.code == .protocolError)
        guard case .drop = machine.replyReceived() else {
            Issue.record("replies after close are dropped")
            return
        }
        #expect(machine.commandCancelled(id: 1).fail == nil)
        let action = machine.timerFired(now: self.start + .seconds(100))
        #expect(action.fail.isEmpty && !action.close)
    }

    @Test("cancelling a blocking command closes the connection; cancelling an ordinary one does not")
    func cancelBlocking() {
        var machine = Machine()
        _ = self.enqueue(
            &machine,
            [
                self.entry(1, "get", deadlineAfter: 5),
                Machine.Entry(id: 2, promise: "blpop", deadline: self.start + .seconds(30), closesIfAbandoned: true),
            ]
        )
        let ordinary = machine.commandCancelled(id: 1)
        #expect(ordinary.fail == "get" && !ordinary.close)
        let blocking = machine.commandCancelled(id: 2)
        #expect(blocking.fail == "blpop" && blocking.close)
        // Cancelled twice: nothing more to do.
        let again = machine.commandCancelled(id: 2)
        #expect(again.fail == nil && !again.close)
    }

    @Test("a blocking command past its deadline closes the connection even when it is not the oldest")
    func blockingDeadline() {
        var machine = Machine()
        _ = self.enqueue(
            &machine,
            [
                self.entry(1, "slow", deadlineAfter: 30),
                Machine.Entry(id: 2, promise: "blpop", deadline: self.start + .seconds(5), closesIfAbandoned: true),
                self.entry(3, "later", deadlineAfter: 30),
            ]
        )
        let action = machine.timerFired(now: self.start + .seconds(5))
        #expect(action.close)
        #expect(action.fail.map(\.0) == ["slow", "blpop", "later"])
        #expect(action.fail.map(\.1.code) == [.connectionClosed, .commandTimeout, .connectionClosed])
        #expect(!machine.isOpen)
    }

    @Test("a caller's short deadline fails only its wait; the connection closes only at the silence deadline")
    func shortCallerDeadline() {
        var machine = Machine()
        let entry = Machine.Entry(id: 1, promise: "short", deadline: self.start + .seconds(1), silenceDeadline: self.start + .seconds(5))
        _ = self.enqueue(&machine, [entry, self.entry(2, "later", deadlineAfter: 5)])
        let first = machine.timerFired(now: self.start + .seconds(1))
        #expect(first.fail.map(\.0) == ["short"] && first.fail.map(\.1.code) == [.commandTimeout])
        #expect(!first.close && first.scheduleTimer == self.start + .seconds(5))
        // The late reply arrives: dropped; the next one goes to its waiter; nothing closed.
        guard case .drop = machine.replyReceived(), case .succeed("later") = machine.replyReceived() else {
            Issue.record("replies out of step")
            return
        }
        #expect(machine.isOpen)
        // Had the server stayed silent, the silence deadline would have closed it.
        var silent = Machine()
        _ = self.enqueue(&silent, [entry])
        _ = silent.timerFired(now: self.start + .seconds(1))
        let closing = silent.timerFired(now: self.start + .seconds(5))
        #expect(closing.close && closing.fail.isEmpty)
    }
}
