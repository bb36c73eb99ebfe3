// A Hummingbird web application whose Redis client rotates its password from a watched file, as one
// service next to the HTTP server in the application's service group: the client starts before the
// first request and shuts down after the last one.
//
// Run: cd Examples/HummingbirdApp && swift run HummingbirdApp <password-file> [redis-port] [user] [http-port]
// Then: curl -X POST localhost:8080/visits/home; curl localhost:8080/visits/home; curl localhost:8080/health
import Foundation
import Hummingbird
import Logging
import RedisRotation
import ServiceLifecycle

let arguments = CommandLine.arguments
guard arguments.count >= 2 else {
    print("usage: HummingbirdApp <password-file> [redis-port] [user] [http-port]")
    exit(2)
}
let logger = Logger(label: "hummingbird-app")
let redis = try RedisClient(
    configuration: RedisClientConfiguration(
        host: "127.0.0.1",
        port: arguments.count > 2 ? Int(arguments[2]) ?? 6379 : 6379,
        name: "hummingbird-app"
    ),
    credentials: .file(arguments[1], username: arguments.count > 3 ? arguments[3] : "default"),
    logger: logger
)

let router = Router()
// Counts a visit: HINCRBY through the pooled client; a rotation under it is invisible here.
router.post("visits/:page") { _, context -> String in
    let page = try context.parameters.require("page")
    let count = try await redis.hincrby("hummingbird-app:visits", field: .string(page), increment: 1)
    return "\(count)\n"
}
router.get("visits/:page") { _, context -> String in
    let page = try context.parameters.require("page")
    let count = try await redis.hget("hummingbird-app:visits", field: page).map { String(buffer: $0) } ?? "0"
    return "\(count)\n"
}
// Which credential version the pool uses: what an operator checks during a rotation.
router.get("health") { _, _ -> String in
    let versions = redis.connectionsByCredentialVersion.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
    return "redis \(redis.currentCredentialVersion ?? "none") connections \(versions.joined(separator: ","))\n"
}

var app = Application(
    router: router,
    configuration: .init(address: .hostname("127.0.0.1", port: arguments.count > 4 ? Int(arguments[4]) ?? 8080 : 8080)),
    logger: logger
)
app.addServices(redis)
// SIGTERM and SIGINT shut down the HTTP server first, then the client.
try await app.runService(gracefulShutdownSignals: [.sigterm, .sigint])
