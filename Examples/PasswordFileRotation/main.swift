// A service whose Redis password lives in a file that a secret manager rotates: the client watches
// the file, probes a new password on a connection of its own, switches every pooled connection to it
// in place, and keeps serving throughout. Prints each rotation event as it happens.
//
// Run: swift run PasswordFileRotationExample <password-file> [port] [user]
// Then rotate as an operator would: `redis-cli ACL SETUSER <user> '>new'`, write
// `password=new` and `version=v2` lines to the file (atomically: write a temporary file, then rename),
// and `redis-cli ACL SETUSER <user> '<old'` once every connection reports v2.
import Foundation
import Logging
import RedisRotation
import ServiceLifecycle

let arguments = CommandLine.arguments
guard arguments.count >= 2 else {
    print("usage: PasswordFileRotationExample <password-file> [port] [user]")
    exit(2)
}
let client = try RedisClient(
    configuration: RedisClientConfiguration(host: "127.0.0.1", port: arguments.count > 2 ? Int(arguments[2]) ?? 6379 : 6379, name: "rotation-example"),
    credentials: .file(arguments[1], username: arguments.count > 3 ? arguments[3] : "default")
)
let services = ServiceGroup(
    configuration: .init(services: [.init(service: client)], gracefulShutdownSignals: [.sigterm, .sigint], logger: Logger(label: "example"))
)

try await withThrowingDiscardingTaskGroup { group in
    group.addTask { try await services.run() }
    group.addTask {
        // What an operator watches: promotions, re-authentications, rejected passwords.
        for await event in client.events {
            print("event: \(event)")
        }
    }
    group.addTask {
        // Traffic that must not notice the rotation. Bounded: 10 minutes at 10 commands a second.
        for tick in 0..<6000 {
            do {
                try await client.set("rotation-example:tick", to: .integer(Int64(tick)))
                if tick % 50 == 0 {
                    print("tick \(tick): connections by credential version \(client.connectionsByCredentialVersion)")
                }
            } catch let error as RedisError where error.code == .clientShutdown {
                return  // Ctrl-C or SIGTERM: the service group shut the client down.
            } catch {
                print("command failed: \(error)")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }
}
