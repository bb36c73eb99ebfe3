import NIOCore
import Testing

@testable import RedisRotation

@Suite("Reply progress")
struct ReplyProgressTests {
    @Test("held back only while replies are owed and none came for longer than the threshold")
    func stalled() {
        let progress = ReplyProgress()
        let later = NIODeadline.now() + .seconds(10)
        #expect(!progress.isStalled(longerThan: .milliseconds(5), now: later), "nothing owed")
        progress.commandsWritten()
        #expect(progress.isStalled(longerThan: .milliseconds(5), now: later))
        #expect(!progress.isStalled(longerThan: .seconds(60), now: later))
        progress.commandsWritten()  // more written: the wait still counts from the first
        #expect(progress.isStalled(longerThan: .milliseconds(5), now: later))
        progress.replyReceived(outstanding: 1)  // progress: the clock starts again
        #expect(!progress.isStalled(longerThan: .milliseconds(5), now: NIODeadline.now()))
        #expect(progress.isStalled(longerThan: .milliseconds(5), now: later))
        progress.replyReceived(outstanding: 0)
        #expect(!progress.isStalled(longerThan: .milliseconds(5), now: later), "all answered")
        progress.commandsWritten()
        #expect(progress.closeReason == nil)
        progress.closed(because: RedisError(code: .connectionClosed, message: "closed"))
        #expect(progress.closeReason?.code == .connectionClosed)
        #expect(!progress.isStalled(longerThan: .milliseconds(5), now: later), "closed")
    }
}
