import Foundation
import RedisRotation
import Synchronization

/// A step performed during a run (a password rotation, a kill, a certificate change).
struct RotationStep: Sendable {
    var name: String
    /// When, from the start of the traffic.
    var at: Duration
    var action: @Sendable () async throws -> Void
}

/// Failures that end a run before or outside the traffic, with the one line the user sees.
struct RunFailure: Error, CustomStringConvertible {
    var description: String
    /// 1: the run failed (could not connect, wrong password); 2: the configuration is wrong.
    var exitCode: Int32
}

enum LoadRun {
    /// Runs `client`, waits until it answers, drives `workload` (until its duration is over or `stop` is
    /// requested) while performing `steps`, verifies the writes, and returns the report. Prints a progress
    /// line every second when `progress` is set.
    static func execute(
        client: some LoadTarget,
        workload: Workload,
        steps: [RotationStep],
        progress: Bool,
        subscribers: Int = 0,
        stop: TrafficStop = TrafficStop(),
        status: @escaping @Sendable () -> String = { "" }
    ) async throws -> LoadReport {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.run() }
            defer { group.cancelAll() }

            // The first command proves the target is reachable and the credentials work.
            do {
                try await client.ping()
            } catch let error as RedisError {
                let cause = (error.underlying as? RedisError)?.message ?? error.message
                throw RunFailure(description: "cannot reach the server: \(cause)", exitCode: 1)
            }
            let recorder = LoadRecorder()
            let current = StepName("steady state")
            recorder.beginPhase("steady state")

            group.addTask { await client.forwardEvents(to: recorder) }
            // Every step runs, even one that slipped past the duration behind a slow step before it:
            // the traffic goes on until the duration is over and the last step has finished (Ctrl-C
            // skips the steps not begun; the one in progress is finished before the writes are counted,
            // since a slot migration half done would move keys under the count).
            let stepsDone = TrafficStop()
            let performer = Task {
                defer { stepsDone.request() }
                for step in steps.sorted(by: { $0.at < $1.at }) {
                    // In slices, so that Ctrl-C is noticed (bounded by the step's time).
                    while ContinuousClock.now < recorder.start + step.at && !stop.isRequested && !Task.isCancelled {
                        try? await Task.sleep(for: min(.milliseconds(100), recorder.start + step.at - ContinuousClock.now))
                    }
                    if Task.isCancelled || stop.isRequested { return }
                    recorder.beginPhase(step.name)
                    current.set(step.name)
                    do {
                        try await step.action()
                    } catch {
                        recorder.event("stepFailed", "\(step.name): \(error)")
                    }
                }
            }
            // Ends the traffic once the duration is over and every step has run, or at Ctrl-C; at most
            // 15 minutes after the duration (a step waits at most the rotation's client wait).
            let trafficEnd = TrafficStop()
            let ender = Task {
                let end = ContinuousClock.now + workload.duration
                while !Task.isCancelled && !stop.isRequested && ContinuousClock.now < end + .seconds(900) {
                    if ContinuousClock.now >= end && stepsDone.isRequested { break }
                    try? await Task.sleep(for: .milliseconds(50))
                }
                trafficEnd.request()
            }
            defer { ender.cancel() }
            defer { performer.cancel() }
            if progress {
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .seconds(1))
                        let second = recorder.lastSecond()
                        let line = String(
                            format: "t=%3ds  %6d ops/s  p99 %7.2f ms  failed %d  %@  step: %@%@",
                            Int(recorder.elapsed), second.ops, Double(second.p99) / 1000, recorder.failedCount,
                            client.progressConnections, current.get(), status()
                        )
                        FileHandle.standardError.write(Data((line + "\n").utf8))
                    }
                }
            }

            let pubsub: PubSubLoad?
            do {
                if subscribers > 0, let single = client.singleNode {
                    pubsub = try await PubSubLoad(client: single, subscribers: subscribers, channel: "\(workload.keyPrefix):pubsub")
                } else {
                    pubsub = nil
                }
            } catch let error as RedisError {
                throw RunFailure(description: "cannot subscribe: \(error.message)", exitCode: 1)
            }
            var open = workload
            open.duration = workload.duration + .seconds(900)
            let acknowledged = await LoadGenerator.run(open, client: client, recorder: recorder, stop: trafficEnd)
            let duration = recorder.elapsed
            await performer.value
            let pubsubReport = await pubsub?.finish()
            let verification = workload.verifyWrites ? try await client.verify(acknowledged) : nil
            return LoadReport(
                snapshot: recorder.snapshot(),
                duration: duration,
                retried: await client.retriedCommands(),
                connectionsByVersion: client.connectionsByVersion,
                connectionsByNode: client.connectionsByNode,
                writes: verification,
                pubsub: pubsubReport
            )
        }
    }
}

/// The name of the step in progress, for the progress line.
final class StepName: Sendable {
    private let value: Lock<String>
    init(_ name: String) { self.value = Lock(name) }
    func set(_ name: String) { self.value.withLock { $0 = name } }
    func get() -> String { self.value.withLock { $0 } }
}
