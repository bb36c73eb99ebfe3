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
    struct Harness {
        let channel: EmbeddedChannel
        let handler: RedisCommandHandler
        var nextID: UInt64 = 1

        init() throws {
            self.handler = RedisCommandHandler(logger: Logger(label: "outbound"))
            self.channel = EmbeddedChannel(handler: self.handler)
            try self.channel.connect(to: .init(ipAddress: "127.0.0.1", port: 6379)).wait()
        }

        mutating func entry() -> RedisCommandHandler.Entry {
            defer { self.nextID += 1 }
            return RedisCommandHandler.Entry(id: self.nextID, promise: .box(ReplyBox()), deadline: .now() + .seconds(600))
        }

        mutating func send(_ command: RedisCommand) {
            switch command.plainEncoding {
            case .inline?: self.handler.enqueue(.inline(command), entries: CollectionOfOne(self.entry()))
            case .buffer(let bytes)?: self.handler.enqueue(.bytes(bytes), entries: CollectionOfOne(self.entry()))
            case nil: Issue.record("\(command) has no plain encoding")
            }
        }

        /// Runs the turn's flush and returns every write that left, in order, joined.
        func written() throws -> [UInt8] {
            self.channel.embeddedEventLoop.run()
            var bytes: [UInt8] = []
            while let buffer = try self.channel.readOutbound(as: ByteBuffer.self) { bytes += buffer.readableBytesView }
            return bytes
        }
    }

    static func encoded(_ commands: [RedisCommand]) throws -> [UInt8] {
        try commands.flatMap { Array(try $0.encoded.readableBytesView) }
    }

    @Test("short and long commands, and a payload of several, leave in the order they were enqueued")
    func order() throws {
        var harness = try Harness()
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
                    harness.handler.enqueue(.bytes(payload), entries: [harness.entry(), harness.entry()])
                    sent += [command, other]
                } else {
                    harness.send(command)
                    sent.append(command)
                }
            }
            #expect(try harness.written() == Self.encoded(sent), "round \(round)")
        }
    }

    @Test("a write the channel still holds is never written over: the next turn's commands get a new buffer")
    func heldWriteKeepsItsBytes() throws {
        var harness = try Harness()
        var held: [(ByteBuffer, [UInt8])] = []
        for round in 0..<20 {
            let commands = (0..<3).map { RedisCommand("GET", .string("key-\(round)-\($0)")) }
            for command in commands { harness.send(command) }
            harness.channel.embeddedEventLoop.run()
            // Kept, as a channel keeps a write it could not finish (or TLS a write held for its flush).
            let write = try #require(try harness.channel.readOutbound(as: ByteBuffer.self))
            held.append((write, try Self.encoded(commands)))
        }
        for (write, expected) in held { #expect(Array(write.readableBytesView) == expected) }
    }

    @Test("once the channel let go of a write, the next turn writes the same storage again")
    func storageReused() throws {
        var harness = try Harness()
        var addresses: Set<UInt> = []
        for round in 0..<20 {
            harness.send(RedisCommand("GET", .string("key-\(round)")))
            harness.channel.embeddedEventLoop.run()
            let write = try #require(try harness.channel.readOutbound(as: ByteBuffer.self))
            #expect(Array(write.readableBytesView) == (try Self.encoded([RedisCommand("GET", .string("key-\(round)"))])))
            addresses.insert(write.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) })
        }
        #expect(addresses.count == 1, "each turn allocated a new outbound buffer")
    }
}
