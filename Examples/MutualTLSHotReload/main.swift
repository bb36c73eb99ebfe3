// A service on mutual TLS whose certificate, key and trusted CAs live in files that a certificate
// manager renews: the client watches them, validates each change (complete PEM, matching key, client
// certificate valid and usable for client authentication), builds a new TLS generation, and moves
// every pooled connection to it over a jittered window. A bad write is rejected with an event and the
// last good generation stays. Prints each reload and the connections per TLS generation.
//
// Run: swift run MutualTLSHotReloadExample <ca.pem> <client.crt> <client.key> <password-file> [port] [user] [server-name]
// (a server with `tls-port`, `tls-ca-cert-file` and `tls-auth-clients yes`; the README shows how to
// start one). Then renew as a certificate manager would: write a new key and certificate (each
// atomically: a temporary file, then rename), or add the next CA to the CA file.
import Foundation
import Logging
import RedisRotation
import ServiceLifecycle

let arguments = CommandLine.arguments
guard arguments.count >= 5 else {
    print("usage: MutualTLSHotReloadExample <ca.pem> <client.crt> <client.key> <password-file> [port] [user] [server-name]")
    exit(2)
}
let tls = RedisClientConfiguration.TLS.reloading(
    RedisTLSConfiguration(
        trustAnchors: [.file(arguments[1])],
        clientIdentity: RedisTLSClientIdentity(certificateChain: .file(arguments[2]), privateKey: .file(arguments[3]))
    ),
    serverName: arguments.count > 7 ? arguments[7] : nil,
    pollInterval: .seconds(5),
    rolloverWindow: .seconds(10)
)
let client = try RedisClient(
    configuration: RedisClientConfiguration(
        host: "127.0.0.1",
        port: arguments.count > 5 ? Int(arguments[5]) ?? 6380 : 6380,
        name: "mtls-example",
        tls: tls
    ),
    credentials: .file(arguments[4], username: arguments.count > 6 ? arguments[6] : "default")
)
let services = ServiceGroup(
    configuration: .init(services: [.init(service: client)], gracefulShutdownSignals: [.sigterm, .sigint], logger: Logger(label: "example"))
)

try await withThrowingDiscardingTaskGroup { group in
    group.addTask { try await services.run() }
    group.addTask {
        // What an operator watches: tlsMaterialReloaded, tlsMaterialRejected (naming the file and why),
        // certificate expiry warnings, connections replaced.
        for await event in client.events {
            print("event: \(event)")
        }
    }
    group.addTask {
        // Traffic that must not notice the renewal. Bounded: 10 minutes at 10 commands a second.
        for tick in 0..<6000 {
            do {
                try await client.hincrby("mtls-example:stats", field: "ticks", increment: 1)
                if tick % 50 == 0 {
                    let expiry = client.currentTLSContext?.clientCertificateChain.first.map { "client certificate expires \($0.notAfter)" } ?? ""
                    print("tick \(tick): connections by TLS generation \(client.connectionsByTLSGeneration) \(expiry)")
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
