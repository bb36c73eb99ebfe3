// Publish and subscribe through a rotating client: a subscription on one channel and a publisher of
// numbered messages. Kill the subscriber's connection (`redis-cli CLIENT KILL USER <user>`), restart
// the server or rotate the password while it runs: every message arrives once and in order, and any
// time nothing was subscribed is reported as a gap instead of passing silently.
//
// Run: swift run PubSubExample <password-file> [port] [user] [count]
// (the user's ACL needs the channel `pubsub-example` and `PUBLISH` on `__redis-rotation:*`).
import Foundation
import Logging
import RedisRotation
import ServiceLifecycle

let arguments = CommandLine.arguments
guard arguments.count >= 2 else {
    print("usage: PubSubExample <password-file> [port] [user] [count]")
    exit(2)
}
let count = arguments.count > 4 ? max(1, Int(arguments[4]) ?? 600) : 600
let client = try RedisClient(
    configuration: RedisClientConfiguration(host: "127.0.0.1", port: arguments.count > 2 ? Int(arguments[2]) ?? 6379 : 6379, name: "pubsub-example"),
    credentials: .file(arguments[1], username: arguments.count > 3 ? arguments[3] : "default")
)
let services = ServiceGroup(
    configuration: .init(services: [.init(service: client)], gracefulShutdownSignals: [.sigterm, .sigint], logger: Logger(label: "example"))
)

let summary = try await withThrowingTaskGroup(of: String?.self) { group in
    // The client works only while run() runs.
    group.addTask {
        try await services.run()
        return nil
    }
    // Returns once the server confirmed: every message published from now on is in the sequence.
    let subscription = try await client.subscribe(to: ["pubsub-example"])
    group.addTask {
        var expected = 0
        var received = 0
        var gaps = 0
        for try await event in subscription {
            switch event {
            case .message(let message):
                guard let number = Int(message.string) else { continue }
                if number < expected { print("DUPLICATE or out of order: \(number) after \(expected - 1)") }
                if number > expected { print("received \(number) after \(expected - 1): \(number - expected) missing") }
                expected = number + 1
                received += 1
                if number % 50 == 0 { print("received \(number)") }
                if number == count - 1 { return "received \(received) of \(count), \(gaps) gaps" }
            case .gap(let from, let to):
                gaps += 1
                print("gap: messages published between \(from) and \(to) may be missing")
            }
        }
        return "the subscription ended: received \(received) of \(count), \(gaps) gaps"
    }
    group.addTask {
        // Bounded: `count` messages, ten a second.
        for number in 0..<count {
            do {
                let receivers = try await client.publish(.string(String(number)), to: "pubsub-example")
                if receivers == 0 { print("published \(number) to nobody") }
            } catch let error as RedisError where error.code == .clientShutdown {
                return nil
            } catch {
                print("publish \(number) failed: \(error)")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        // The last message may have fallen into a gap: give the subscriber a moment, then stop.
        try await Task.sleep(for: .seconds(2))
        return "published \(count); received fewer (the last ones fell into a gap)"
    }
    // The subscriber's result, or the publisher's when the subscriber is still waiting.
    var result: String?
    while result == nil, let next = try await group.next() { result = next }
    group.cancelAll()
    await services.triggerGracefulShutdown()
    return result ?? "stopped"
}
print("summary: \(summary)")
