import Foundation
import Logging
import NIOCore
import NIOEmbedded
import RedisRotationTesting
import Testing

@testable import RedisRotation

/// Hostile review of the handler's outbound buffer (short commands copied into one buffer per turn of
/// the event loop): what a write the channel still holds costs, where the inline limit falls, the
/// buffer past 64 KiB, and passwords, which must never reach the reused buffer.
@Suite("Outbound buffer review", .timeLimit(.minutes(1)))
struct OutboundBufferReviewTests {
    static func encoded(_ commands: [RedisCommand]) throws -> [UInt8] {
        try commands.flatMap { Array(try $0.encoded.readableBytesView) }
    }

    /// Whether `needle` occurs anywhere in `buffer`'s whole storage (written or not, read or not).
    static func storage(of buffer: ByteBuffer, contains needle: [UInt8]) -> Bool {
        buffer.withVeryUnsafeBytes { storage in
            guard storage.count >= needle.count, !needle.isEmpty else { return false }
            for start in 0...(storage.count - needle.count) where storage[start] == needle[0] {
                if storage[start..<(start + needle.count)].elementsEqual(needle) { return true }
            }
            return false
        }
    }

    @Test("a burst grows the buffer to 64 KiB; then, while the channel holds every write (a slow reader), a turn's lone GET does not get a buffer of the burst's size")
    func heldWritesDoNotInheritTheBurstCapacity() throws {
        var harness = try OutboundHarness()
        // One turn of 2,000 GETs: ~60 KB, a 64 KiB buffer, kept (not over the limit).
        for index in 0..<2000 { try harness.send(RedisCommand("GET", .string("burst-\(index)"))) }
        do {
            let burst = try harness.writes()
            #expect(burst.count == 1)
            #expect(burst.first.map { $0.capacity > 32 * 1024 && $0.capacity <= OutboundBuffer.keptCapacity } == true)
        }
        // The channel let go of the burst's write; now it holds every write (a stalled socket).
        var held: [(ByteBuffer, [UInt8])] = []
        for round in 0..<100 {
            let command = RedisCommand("GET", .string("held-\(round)"))
            try harness.send(command)
            let writes = try harness.writes()
            #expect(writes.count == 1)
            if let write = writes.first { held.append((write, try Self.encoded([command]))) }
        }
        // Every held write kept its own bytes...
        for (write, expected) in held { #expect(Array(write.readableBytesView) == expected) }
        // ...in storage about its size, not 64 KiB each (100 held GETs would pin 6.4 MiB; a stalled
        // server with 10,000 of them, 640 MiB).
        let pinned = held.reduce(0) { $0 + $1.0.capacity }
        #expect(pinned <= 100 * 1024, "100 held writes of one GET each pin \(pinned) bytes")
        // Let go again: the buffer is reused from then on.
        held.removeAll()
        var addresses: Set<UInt> = []
        for round in 0..<10 {
            try harness.send(RedisCommand("GET", .string("after-\(round)")))
            let writes = try harness.writes()
            #expect(writes.count == 1)
            if let write = writes.first { addresses.insert(write.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }) }
        }
        #expect(addresses.count == 1)
    }

    @Test("within one turn, a short command after a long one's write (the short one before it held by the channel) gets a buffer of its own size, not a copy of the held one's capacity")
    func shortAfterLongInOneTurn() throws {
        var harness = try OutboundHarness()
        for index in 0..<2000 { try harness.send(RedisCommand("GET", .string("burst-\(index)"))) }
        _ = try harness.writes()
        var sent: [RedisCommand] = []
        for index in 0..<50 {
            // short, long (its own buffer: the short one before it is handed to the channel), short...
            let short = RedisCommand("GET", .string("s-\(index)"))
            let long = RedisCommand("SET", .string("l-\(index)"), .bytes(Array(repeating: UInt8(index), count: 400)))
            try harness.send(short)
            try harness.send(long)
            sent += [short, long]
        }
        let writes = try harness.writes()
        #expect(writes.count == 100)
        #expect(writes.flatMap { Array($0.readableBytesView) } == (try Self.encoded(sent)))
        // The first short one is in the buffer kept from the burst (64 KiB, the channel had let go of
        // it); the 49 after it, each after a long one's write the channel still holds, are not.
        let pinned = writes.enumerated().filter { $0.offset % 2 == 0 && $0.offset > 0 }.reduce(0) { $0 + $1.element.capacity }
        #expect(pinned <= 49 * 1024, "49 short writes held in one turn pin \(pinned) bytes")
    }

    @Test("the encoding is kept inline up to exactly 256 bytes on the wire, in a buffer of its own from 257; empty and binary arguments byte for byte")
    func inlineLimit() throws {
        // `*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$<n>\r\n<n bytes>\r\n`: 28 bytes around a value of 100..999 bytes.
        for (valueSize, wire, inline) in [(227, 255, true), (228, 256, true), (229, 257, false)] {
            let value = (0..<valueSize).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            let command = RedisCommand("SET", .string("k"), .bytes(value))
            let expected = Array("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$\(valueSize)\r\n".utf8) + value + Array("\r\n".utf8)
            #expect(expected.count == wire)
            #expect(command.encodedCount == wire)
            switch command.plainEncoding {
            case .inline?: #expect(inline, "\(wire) bytes kept inline")
            case .buffer(let bytes)?:
                #expect(!inline, "\(wire) bytes in a buffer of their own")
                #expect(Array(bytes.readableBytesView) == expected)
            case nil: Issue.record("\(wire) bytes: no plain encoding")
            }
            var harness = try OutboundHarness()
            try harness.send(command)
            #expect(try harness.writes().flatMap { Array($0.readableBytesView) } == expected)
        }
        // Empty arguments and every byte value, inline.
        let binary = (0...255).map { UInt8($0) }
        let commands = [
            RedisCommand("SET", .bytes([]), .bytes([])),
            RedisCommand("ECHO", .bytes(Array(binary[0..<200]))),
            RedisCommand("ECHO", .bytes(Array(binary[200...]) + [13, 10, 36, 42, 0])),
            RedisCommand("ECHO", .bytes(binary)),
        ]
        var harness = try OutboundHarness()
        for command in commands { try harness.send(command) }
        #expect(try harness.writes().flatMap { Array($0.readableBytesView) } == (try Self.encoded(commands)))
    }

    @Test("a long command (a 4 MiB SET) is written from its own encoding's storage, after the turn's short ones: never copied into the outbound buffer")
    func longCommandNotCopied() throws {
        var harness = try OutboundHarness()
        let short = RedisCommand("GET", .string("before"))
        let long = RedisCommand("SET", .string("big"), .bytes([UInt8](repeating: 9, count: 4 << 20)))
        guard case .buffer(let encoding)? = long.plainEncoding else {
            Issue.record("a 4 MiB SET is kept inline")
            return
        }
        try harness.send(short)
        try harness.send(long)
        let writes = try harness.writes()
        #expect(writes.count == 2)
        #expect(writes.first.map { Array($0.readableBytesView) } == (try Self.encoded([short])))
        let address = { (buffer: ByteBuffer) in buffer.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) } }
        #expect(writes.last.map(address) == address(encoding), "the long command's bytes were copied")
        #expect(writes.first.map { $0.capacity < 4096 } == true)
    }

    @Test("10,000 short commands in one turn: one write of all of them in order; the buffer past 64 KiB goes with it and the next turn starts small")
    func burstPastTheKeptCapacity() throws {
        var harness = try OutboundHarness()
        let commands = (0..<10_000).map { RedisCommand("GET", .string("key-\($0)")) }
        for command in commands { try harness.send(command) }
        let writes = try harness.writes()
        #expect(writes.count == 1)
        #expect(writes.first.map { $0.readableBytes > OutboundBuffer.keptCapacity } == true)
        #expect(writes.flatMap { Array($0.readableBytesView) } == (try Self.encoded(commands)))
        let bigAddress = writes.first.map { $0.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) } }
        // Even while the channel still holds the big write, the next turn's command is written correctly,
        // into other, small storage.
        let next = RedisCommand("GET", .string("next"))
        try harness.send(next)
        let nextWrites = try harness.writes()
        #expect(nextWrites.count == 1)
        #expect(nextWrites.flatMap { Array($0.readableBytesView) } == (try Self.encoded([next])))
        #expect(nextWrites.first.map { $0.capacity <= 4096 } == true)
        #expect(nextWrites.first.map { $0.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) } } != bigAddress)
        #expect(Array(writes[0].readableBytesView) == (try Self.encoded(commands)), "the big write changed")
    }

    @Test("a password (AUTH, HELLO AUTH, CONFIG SET requirepass, a secret argument) never takes the inline path and never reaches the reused outbound buffer")
    func passwordsNeverInline() throws {
        let password = "pw-\(UInt64.random(in: 1...UInt64.max))-secret"
        let secret = RedisSecret(password)
        let sensitive = [
            RedisCommand("AUTH", .string(password)),
            RedisCommand("auth", "alice", .string(password)),
            RedisCommand("HELLO", "2", "AUTH", "alice", .string(password)),
            RedisCommand("CONFIG", "SET", "requirepass", .string(password)),
            RedisCommand("ACL", "SETUSER", "bob", .string(">" + password)),
            RedisCommand("SET", "k", .secret(secret)),
        ]
        for command in sensitive {
            #expect(command.isSensitive)
            #expect(!command.keepsPlainEncoding, "\(command) has a plain encoding")
        }
        var harness = try OutboundHarness()
        var outbound: [ByteBuffer] = []
        for round in 0..<20 {
            // Short commands before and after a re-authentication, in one turn.
            try harness.send(RedisCommand("GET", .string("before-\(round)")))
            try harness.send(sensitive[round % sensitive.count])
            try harness.send(RedisCommand("GET", .string("after-\(round)")))
            let writes = try harness.writes()
            #expect(writes.count == 3)
            guard writes.count == 3 else { continue }
            #expect(String(buffer: writes[1]).contains(password))
            outbound += [writes[0], writes[2]]
        }
        let needle = Array(password.utf8)
        for write in outbound { #expect(!Self.storage(of: write, contains: needle), "the password reached the outbound buffer") }
    }

    /// The whole storage of `handler`'s outbound buffer (read through reflection: it is private), on its
    /// event loop.
    static func outboundStorage(of handler: RedisCommandHandler) -> [UInt8]? {
        guard let outbound = Mirror(reflecting: handler).children.first(where: { $0.label == "outbound" })?.value as? OutboundBuffer,
            let bytes = Mirror(reflecting: outbound).children.first(where: { $0.label == "bytes" })?.value as? ByteBuffer
        else { return nil }
        return bytes.withVeryUnsafeBytes { Array($0) }
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard haystack.count >= needle.count, !needle.isEmpty else { return false }
        return (0...(haystack.count - needle.count)).contains { haystack[$0..<($0 + needle.count)].elementsEqual(needle) }
    }

    @Test("re-authentications (HELLO with the password, flushed at once) amid 19 callers' short commands on a real connection, 30 rounds: the password never enters the handler's outbound buffer, whose storage holds the short commands")
    func passwordNeverInTheConnectionsOutboundBuffer() async throws {
        let password = RedisSecret("pw-\(UUID().uuidString)")
        let passwordBytes = password.withUnsafeBytes { Array($0) }
        try await RedisServerProcess.withServer(.init(users: [.init(name: "alice", passwords: [password])])) { server in
            let connection = try await RedisConnection.connect(configuration: server.connectionConfiguration(username: "alice", password: password))
            let credentials = RedisCredentials(username: "alice", password: password, version: "v1")
            let handler = connection.handler
            var markersSeen = 0
            for round in 0..<30 {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for index in 0..<20 {
                        group.addTask {
                            if index == 10 {
                                try await connection.authenticate(as: credentials, name: "round-\(round)")
                            } else {
                                let marker = "marker-\(round)-\(index)"
                                let reply = try await connection.send(RedisCommand("ECHO", .string(marker)))
                                #expect(reply.string == marker)
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                let storage = try await connection.eventLoop.submit { Self.outboundStorage(of: handler.value) }.get()
                let bytes = try #require(storage, "the handler's outbound buffer was not found by reflection")
                #expect(!Self.contains(bytes, passwordBytes), "round \(round): the password is in the outbound buffer")
                if Self.contains(bytes, Array("marker-\(round)-".utf8)) { markersSeen += 1 }
            }
            // The search looks at the buffer the short commands went through.
            #expect(markersSeen > 0)
            await connection.close()
        }
    }
}
