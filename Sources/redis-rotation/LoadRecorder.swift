import Histogram
import RedisRotation
import Synchronization

/// Collects what a load run sees: latencies in HDR histograms (overall, per second, per phase),
/// failures, write acknowledgements, and the rotation events with their times.
///
/// Memory stays flat however long the run: a second keeps its histogram (172 KB) only while it is in
/// progress and is then summarised, and events beyond ``maximumEvents`` are counted, not kept.
final class LoadRecorder: Sendable {
    /// One second of the timeline.
    struct Second: Sendable {
        var ops = 0
        var failed = 0
        /// The 99th percentile latency in microseconds; 0 without successful operations.
        var p99: UInt64 = 0
    }

    struct Phase: Sendable {
        var name: String
        var startedAt: Double
        var ops = 0
        var failed = 0
        var histogram = LoadRecorder.makeHistogram()
        /// Connections replaced (killed, aged out, rolled over) during the phase.
        var reconnects = 0
        /// Connections re-authenticated in place during the phase.
        var reauthentications = 0
    }

    struct Event: Sendable {
        var time: Double
        var kind: String
        var detail: String
    }

    /// Rotation steps are always kept; other events up to this many.
    static let maximumEvents = 10_000

    private struct State: Sendable {
        /// The seconds that are over.
        var seconds: [Second] = []
        /// The second in progress (number `seconds.count`) and its latencies.
        var current = Second()
        var currentHistogram = LoadRecorder.makeHistogram()
        var total = LoadRecorder.makeHistogram()
        var ok = 0
        var failed = 0
        var failureSamples: [String] = []
        var phases: [Phase] = []
        var events: [Event] = []
        var eventsOmitted = 0
        var reconnects = 0
        var reauthentications = 0

        /// Closes the seconds before `second`. A record that raced past a closed second (its time was
        /// read before another thread's) counts in the current one.
        mutating func advance(to second: Int) {
            while self.seconds.count < second {
                self.seconds.append(self.summary())
                self.current = Second()
                self.currentHistogram.reset()
            }
        }

        /// The current second with its p99.
        func summary() -> Second {
            var second = self.current
            second.p99 = second.ops > 0 ? self.currentHistogram.valueAtPercentile(99) : 0
            return second
        }

        mutating func append(_ event: Event) {
            if event.kind == "step" || event.kind == "stepFailed" || self.events.count < LoadRecorder.maximumEvents {
                self.events.append(event)
            } else {
                self.eventsOmitted += 1
            }
        }
    }

    let start = ContinuousClock.now
    private let state = Lock(State())

    /// Latencies in microseconds, from 1 µs to 10 minutes, 3 significant digits.
    static func makeHistogram() -> Histogram<UInt64> {
        Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
    }

    /// Seconds since the run started.
    var elapsed: Double { Self.seconds(ContinuousClock.now - self.start) }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    func record(latency: Duration, ok: Bool, failure: @autoclosure () -> String = "") {
        let micros = UInt64(max(1, min(600_000_000, Self.seconds(latency) * 1e6)))
        let second = Int(self.elapsed)
        let sample = ok ? nil : failure()
        self.state.withLock { state in
            state.advance(to: second)
            if ok {
                state.ok += 1
                state.current.ops += 1
                _ = state.currentHistogram.record(micros)
                _ = state.total.record(micros)
            } else {
                state.failed += 1
                state.current.failed += 1
                if let sample, state.failureSamples.count < 10 { state.failureSamples.append(sample) }
            }
            if !state.phases.isEmpty {
                let last = state.phases.count - 1
                if ok {
                    state.phases[last].ops += 1
                    _ = state.phases[last].histogram.record(micros)
                } else {
                    state.phases[last].failed += 1
                }
            }
        }
    }

    /// Starts a phase (a rotation step).
    func beginPhase(_ name: String) {
        let now = self.elapsed
        self.state.withLock { state in
            state.phases.append(Phase(name: name, startedAt: now))
            state.append(Event(time: now, kind: "step", detail: name))
        }
    }

    /// Records a client event; replacements and re-authentications are also counted per phase.
    func event(_ kind: String, _ detail: String) {
        let now = self.elapsed
        self.state.withLock { state in
            state.append(Event(time: now, kind: kind, detail: detail))
            let last = state.phases.count - 1
            switch kind {
            case "connectionReplaced":
                state.reconnects += 1
                if last >= 0 { state.phases[last].reconnects += 1 }
            case "connectionReauthenticated":
                state.reauthentications += 1
                if last >= 0 { state.phases[last].reauthentications += 1 }
            default:
                break
            }
        }
    }

    struct Snapshot: Sendable {
        /// Every second so far, the one in progress last.
        var seconds: [Second]
        var total: Histogram<UInt64>
        var ok: Int
        var failed: Int
        var failureSamples: [String]
        var phases: [Phase]
        var events: [Event]
        var eventsOmitted: Int
        var reconnects: Int
        var reauthentications: Int
    }

    func snapshot() -> Snapshot {
        self.state.withLock {
            Snapshot(
                seconds: $0.seconds + [$0.summary()],
                total: $0.total,
                ok: $0.ok,
                failed: $0.failed,
                failureSamples: $0.failureSamples,
                phases: $0.phases,
                events: $0.events,
                eventsOmitted: $0.eventsOmitted,
                reconnects: $0.reconnects,
                reauthentications: $0.reauthentications
            )
        }
    }

    /// Commands failed so far.
    var failedCount: Int { self.state.withLock { $0.failed } }

    /// Operations and p99 (µs) of the last complete second, for the progress line.
    func lastSecond() -> (ops: Int, failed: Int, p99: UInt64) {
        let second = Int(self.elapsed) - 1
        return self.state.withLock { state in
            let summary: Second
            if second >= 0 && second < state.seconds.count {
                summary = state.seconds[second]
            } else if second >= 0 && second == state.seconds.count {
                // Over, but not closed yet: nothing was recorded since it ended.
                summary = state.summary()
            } else {
                summary = Second()
            }
            return (summary.ops, summary.failed, summary.p99)
        }
    }
}
