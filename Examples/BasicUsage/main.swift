// Connects to a Redis server, writes and reads a key, and pipelines a few commands.
// Run: swift run BasicUsageExample [port] (needs a server on 127.0.0.1; REDIS_USER and REDIS_PASSWORD
// are used when set).
import Foundation
import Logging
import RedisRotation
import ServiceLifecycle

/// The README's pooled-client example, verbatim.
func readmeClientExample() async throws {
    let client = try RedisClient(
        configuration: RedisClientConfiguration(host: "127.0.0.1", port: 6379, name: "orders-api"),
        credentials: .file("/run/secrets/redis-password", username: "app")
    )
    // The client works only while run() runs: here in a ServiceGroup next to the application's services.
    let services = ServiceGroup(services: [client], logger: Logger(label: "orders-api"))
    Task { try await services.run() }

    try await client.set("greeting", to: "hello", expiration: .seconds(60))
    let greeting = try await client.get("greeting", as: String.self)
    // Commands safe to repeat (reads, a plain SET, DEL, HSET) are resent when their connection dies
    // in flight; INCR fails with outcomeUnknown instead. Mark others you know are safe to repeat:
    try await client.send(RedisCommand("SET", "last-seen", "now", "EX", "60").idempotent())
    // Every command of the server has a typed method, generated from its own specification.
    try await client.hincrby("stats:orders", field: "created", increment: 1)
    try await client.zadd("leaders", scoreMembers: [.init(score: 42, member: "ada")])
    let top = try await client.zscore("leaders", member: "ada")  // Double?
    // A transaction: MULTI ... EXEC in one write on one connection; all of it runs, or none.
    var tx = RedisTransaction()
    let orderCount = tx.incr("orders")
    tx.expire("orders", seconds: 3600)
    let orders = try await client.transaction(tx)[orderCount]  // Int
    // Blocking commands wait as long as their own timeout says (here 5 s) plus the command timeout.
    let job = try await client.blpop(keys: ["jobs"], timeout: 5)
    for await event in client.events {
        print(event)  // credentialSourceChanged, probeSucceeded, promoted, connectionReauthenticated, ...
    }
    _ = (greeting, top, orders, job)
}

/// The README's publish/subscribe example, verbatim.
func readmePubSubExample(client: RedisClient) async throws {
    // All subscriptions share one dedicated connection, replaced make-before-break after every
    // rotation: each message arrives once, in order. After a kill or a restart the client subscribes
    // again and says that messages may have been missed.
    let orders = try await client.subscribe(to: ["orders"])
    try await client.publish("order 1", to: "orders")
    for try await event in orders {
        switch event {
        case .message(let message):
            print(message.channel, message.string)
        case .gap(let from, let to):
            print("messages published between \(from) and \(to) may be missing")
        }
    }
}

/// The README's usage example, verbatim (a unit test checks that the two stay the same).
func readmeExample() async throws {
    let connection = try await RedisConnection.connect(
        configuration: RedisConnectionConfiguration(
            host: "127.0.0.1",
            port: 6379,
            username: "app",
            password: RedisSecret("from-your-secret-store"),
            name: "orders-api"
        )
    )
    try await connection.set("greeting", to: "hello", expiration: .seconds(60))
    let greeting = try await connection.get("greeting", as: String.self)

    // Many commands, one write, results in order; an error reply fails only its own result.
    var pipeline = RedisPipeline()
    let visits = pipeline.incr("visits")
    let names = pipeline.hkeys("user:42")
    let results = try await connection.pipeline(pipeline)
    let (count, fields) = (try results[visits], try results[names])  // Int, [ByteBuffer]

    // Sequential work without a thread hop per round trip: the task runs on the connection's event
    // loop (it shares that thread with the loop's I/O, so keep it to code that mostly waits for Redis).
    let recent = try await withTaskExecutorPreference(connection.taskExecutor) {
        var values: [String?] = []
        for key in ["a", "b", "c"] { values.append(try await connection.get(RedisKey(key), as: String.self)) }
        return values
    }
    await connection.close()
    _ = (greeting, count, fields, recent)
}

/// The README's TLS example, verbatim.
func readmeTLSExample() async throws {
    // Built once, validated (complete PEM, matching key, client certificate valid with client-auth EKU),
    // and shared by every connection; its TLS sessions are reused only by its own connections.
    let tls = try RedisTLSContext(
        configuration: RedisTLSConfiguration(
            trustAnchors: [.file("/etc/redis/tls/ca.crt")],
            pendingTrustAnchors: [.file("/etc/redis/tls/next-ca.crt")],
            clientIdentity: RedisTLSClientIdentity(
                certificateChain: .file("/etc/redis/tls/client.crt"),
                privateKey: .file("/etc/redis/tls/client.key")
            )
        )
    )
    let secure = try await RedisConnection.connect(
        configuration: RedisConnectionConfiguration(
            host: "redis.internal",
            port: 6380,
            username: "app",
            password: RedisSecret("from-your-secret-store"),
            tls: .init(context: tls)
        )
    )
    if let server = secure.tlsInfo?.peerCertificate {
        print("server certificate \(server.subject) expires \(server.notAfter)")
    }
    await secure.close()
}

let port = CommandLine.arguments.dropFirst().first.flatMap(Int.init) ?? 6379
let environment = ProcessInfo.processInfo.environment

let connection = try await RedisConnection.connect(
    configuration: RedisConnectionConfiguration(
        host: "127.0.0.1",
        port: port,
        username: environment["REDIS_USER"],
        password: environment["REDIS_PASSWORD"].map { RedisSecret($0) },
        name: "basic-usage-example"
    )
)

try await connection.set("example:greeting", to: "hello", expiration: .seconds(60))
let greeting = try await connection.get("example:greeting", as: String.self)
print("greeting:", greeting ?? "(missing)")

// Three commands, one write, results in order.
let results = try await connection.pipeline([
    RedisCommand("INCR", "example:counter"),
    RedisCommand("INCR", "example:counter"),
    RedisCommand("GET", "example:counter"),
])
for result in results {
    print(try result.get())
}
await connection.close()
