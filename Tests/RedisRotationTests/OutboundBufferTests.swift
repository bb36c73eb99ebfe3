import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import RedisRotation

/// The handler's outbound buffer: short commands copied into one buffer per turn of the event loop,
/// in order with commands written from buffers of their own, and the buffer written again only once
/// the channel has let go of it.
@Suite("Outbound buffer of short commands", .timeLimit(.minutes(1)))
struct OutboundBufferTests {
    static func encoded(_ commands: [RedisCommand]) throws -> [UInt8] {
        try commands.flatMap { Array(try $0.encoded.readableBytesView) }
    }

    @Test("short and long commands, and a payload of several, leave in the order they were enqueued")
    func order() throws {
        var harness = try OutboundHarness()
        var generator = SystemRandomNumberGenerator()
        for round in 0..<50 {
            var sent: [RedisCommand] = []
            for index in 0..<Int.random(in: 1...12, using: &generator) {
                // Short (inline), long (a buffer of its own: over 256 bytes), or a pipeline's payload.
                let size = [3, 40, 300, 5000][Int.random(in: 0...3, using: &generator)]
                let command = RedisCommand("SET", .string("k\(round)-\(index)"), .bytes(Array(repeating: UInt8(index), count: size)))
                if Int.random(in: 0..<4, using: &generator) == 0 {
                    let other = RedisCommand("GET", .string("g\(round)-\(index)"))
                    var payload = ByteBuffer()
                    try command.write(to: &payload)
                    try other.write(to: &payload)
                    harness.handler.enqueue(.bytes(payload), entries: harness.entries(2))
                    sent += [command, other]
                } else {
                    try harness.send(command)
                    sent.append(command)
                }
            }
            #expect(try harness.writes().flatMap { Array($0.readableBytesView) } == Self.encoded(sent), "round \(round)")
        }
    }

    @Test("a write the channel still holds is never written over: the next turn's commands get a new buffer")
    func heldWriteKeepsItsBytes() throws {
        var harness = try OutboundHarness()
        var held: [(ByteBuffer, [UInt8])] = []
        for round in 0..<20 {
            let commands = (0..<3).map { RedisCommand("GET", .string("key-\(round)-\($0)")) }
            for command in commands { try harness.send(command) }
            harness.channel.embeddedEventLoop.run()
            // Kept, as a channel keeps a write it could not finish (or TLS a write held for its flush).
            let write = try #require(try harness.channel.readOutbound(as: ByteBuffer.self))
            held.append((write, try Self.encoded(commands)))
        }
        for (write, expected) in held { #expect(Array(write.readableBytesView) == expected) }
    }

    @Test("once the channel let go of a write, the next turn writes the same storage again")
    func storageReused() throws {
        var harness = try OutboundHarness()
        var addresses: Set<UInt> = []
        for round in 0..<20 {
            try harness.send(RedisCommand("GET", .string("key-\(round)")))
            harness.channel.embeddedEventLoop.run()
            let write = try #require(try harness.channel.readOutbound(as: ByteBuffer.self))
            #expect(Array(write.readableBytesView) == (try Self.encoded([RedisCommand("GET", .string("key-\(round)"))])))
            addresses.insert(write.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) })
        }
        #expect(addresses.count == 1, "each turn allocated a new outbound buffer")
    }
}

/// A command handler on an embedded channel, fed as a connection feeds it; shared by the outbound
/// buffer suites.
struct OutboundHarness {
    let channel: EmbeddedChannel
    let handler: RedisCommandHandler
    var nextID: UInt64 = 1

    init() throws {
        self.handler = RedisCommandHandler(logger: Logger(label: "outbound"))
        self.channel = EmbeddedChannel(handler: self.handler)
        try self.channel.connect(to: .init(ipAddress: "127.0.0.1", port: 6379)).wait()
    }

    mutating func entries(_ count: Int) -> [RedisCommandHandler.Entry] {
        defer { self.nextID += UInt64(count) }
        return (0..<count).map { RedisCommandHandler.Entry(id: self.nextID + UInt64($0), promise: .box(ReplyBox()), deadline: .now() + .seconds(600)) }
    }

    /// Enqueues `command` as the connection does: inline when short, its own buffer when long, an
    /// exact-size encoded buffer when sensitive (flushed at once).
    mutating func send(_ command: RedisCommand) throws {
        if let plain = RedisCommandHandler.Payload(plain: command) {
            self.handler.enqueue(plain, entries: self.entries(1))
        } else {
            self.handler.enqueue(
                .bytes(try RedisConnection.encodeOnce(CollectionOfOne(command))),
                entries: self.entries(1),
                flushesAtOnce: command.isSensitive
            )
        }
    }

    /// Runs the turn's flush; every write that left, in order.
    func writes() throws -> [ByteBuffer] {
        self.channel.embeddedEventLoop.run()
        var writes: [ByteBuffer] = []
        while let buffer = try self.channel.readOutbound(as: ByteBuffer.self) { writes.append(buffer) }
        return writes
    }
}
