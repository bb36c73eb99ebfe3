// Credentials from a vault-like service instead of a file: a provider closure the client calls at
// start, every `refreshEvery`, and on `reloadCredentials()`. A new password it returns is probed,
// then promoted; an error keeps the last good credentials and emits an event.
//
// Run: swift run CredentialProviderExample [port] (the "vault" here is an environment variable,
// REDIS_PASSWORD, read on each call, with REDIS_USER and REDIS_PASSWORD_VERSION).
import Foundation
import Logging
import RedisRotation
import ServiceLifecycle

/// Stands in for a secret store: what it returns now.
@Sendable func fetchFromVault() async throws -> RedisCredentials {
    let environment = ProcessInfo.processInfo.environment
    guard let password = environment["REDIS_PASSWORD"] else {
        throw RedisError(code: .invalidArgument, message: "REDIS_PASSWORD is not set")
    }
    return RedisCredentials(
        username: environment["REDIS_USER"] ?? "default",
        password: RedisSecret(password),
        version: environment["REDIS_PASSWORD_VERSION"] ?? "v1",
        // A lease from a vault would say when it ends; the client warns before it does.
        expiresAt: Date().addingTimeInterval(30 * 86400)
    )
}

let port = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 6379 : 6379
let client = try RedisClient(
    configuration: RedisClientConfiguration(host: "127.0.0.1", port: port, name: "provider-example"),
    credentials: .provider(refreshEvery: .seconds(60), fetchFromVault)
)
let services = ServiceGroup(
    configuration: .init(services: [.init(service: client)], gracefulShutdownSignals: [.sigterm, .sigint], logger: Logger(label: "example"))
)
let running = Task { try await services.run() }
// Commands issued before the first fetch completes wait for it.
print("PING: \(try await client.ping())")
print("credential version in use: \(client.currentCredentialVersion ?? "none")")
try await client.set("provider-example:last-run", to: .string(Date().description))
// Ask the provider again now, as a vault webhook would.
client.reloadCredentials()
try await Task.sleep(for: .seconds(1))
await services.triggerGracefulShutdown()
try await running.value
