import Testing

@testable import RedisRotationTesting

@Suite("Exit monitor", .timeLimit(.minutes(1)))
struct ExitMonitorTests {
    /// The timeout used to be a sibling task that could run before the waiter registered; it then
    /// woke nobody, and the wait lasted until the process exited, which for a hung server is never.
    /// A cancelled wait ends its timeout at once, which makes that order likely enough to show within
    /// a few thousand rounds.
    @Test("a wait for a process that never exits ends when its timeout passes, even one cut short by cancellation")
    func timeoutNeverLost() async {
        for round in 1...10_000 {
            let monitor = ExitMonitor()
            let outcome = await withTaskGroup(of: Bool?.self) { group in
                group.addTask {
                    let waiting = Task { await monitor.wait(timeout: round.isMultiple(of: 2) ? .seconds(30) : .zero) }
                    if round.isMultiple(of: 2) { waiting.cancel() }
                    return await waiting.value
                }
                group.addTask {
                    // A lost wake-up waits for ever; 15 s only tells it apart from a starved scheduler
                    // (tests run in parallel on two cores).
                    try? await Task.sleep(for: .seconds(15))
                    return nil
                }
                let first = await group.next() ?? nil
                // Releases a wait that lost its timeout, so that the group can end.
                if first == nil { monitor.exited(status: 0) }
                group.cancelAll()
                return first
            }
            #expect(outcome == false, "round \(round): \(outcome.map { "returned \($0)" } ?? "still waiting after 15 s")")
            if outcome != false { break }
        }
    }

    @Test("a wait with a long timeout returns as soon as the process exits, and later waits return at once")
    func exitEndsWait() async {
        let monitor = ExitMonitor()
        let clock = ContinuousClock()
        let started = clock.now
        async let exited = monitor.wait(timeout: .seconds(30))
        try? await Task.sleep(for: .milliseconds(50))
        monitor.exited(status: 0)
        #expect(await exited)
        #expect(await monitor.wait(timeout: .seconds(30)))
        #expect(clock.now - started < .seconds(10))
    }
}
