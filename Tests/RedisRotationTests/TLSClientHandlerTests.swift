import COpenSSL
import NIOCore
import NIOEmbedded
import RedisRotationTesting
import Testing

@testable import RedisRotation

/// A TLS server made of an OpenSSL `SSL` over memory BIOs, for driving the client handler in an
/// `EmbeddedChannel` through cases a real server will not produce on demand.
final class MemoryTLSServer {
    let ssl: OpaquePointer
    private let context: OpaquePointer

    init(certificate: TestCertificate) throws {
        let context = SSL_CTX_new(TLS_server_method())!
        let pem = Array((certificate.certificatePEM + certificate.privateKeyPEM).utf8)
        pem.withUnsafeBytes { raw in
            let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count))
            let x509 = PEM_read_bio_X509(bio, nil, nil, nil)
            let key = PEM_read_bio_PrivateKey(bio, nil, nil, nil)
            SSL_CTX_use_certificate(context, x509)
            SSL_CTX_use_PrivateKey(context, key)
            X509_free(x509)
            EVP_PKEY_free(key)
            BIO_free(bio)
        }
        self.context = context
        self.ssl = SSL_new(context)!
        SSL_set_bio(self.ssl, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()))
        SSL_set_accept_state(self.ssl)
    }

    deinit {
        SSL_free(self.ssl)
        SSL_CTX_free(self.context)
    }

    func receive(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { _ = BIO_write(SSL_get_rbio(self.ssl), $0.baseAddress, Int32($0.count)) }
    }

    /// Advances the handshake; returns whether it is complete.
    @discardableResult
    func handshake() -> Bool {
        SSL_do_handshake(self.ssl) == 1
    }

    func write(_ text: String) {
        var written = 0
        let bytes = Array(text.utf8)
        _ = SSL_write_ex(self.ssl, bytes, bytes.count, &written)
    }

    /// Decrypted bytes from the client, and whether its close_notify arrived.
    func read() -> (text: String, closeNotify: Bool) {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            var count = 0
            if SSL_read_ex(self.ssl, &buffer, buffer.count, &count) == 1 {
                result += buffer[0..<count]
                continue
            }
            let closed = SSL_get_error(self.ssl, 0) == SSL_ERROR_ZERO_RETURN
            ERR_clear_error()
            return (String(decoding: result, as: UTF8.self), closed)
        }
    }

    func shutdown() {
        _ = SSL_shutdown(self.ssl)
    }

    /// The ciphertext the server wants to send.
    func output() -> ByteBuffer {
        let bio = SSL_get_wbio(self.ssl)!
        var bytes = [UInt8](repeating: 0, count: Int(BIO_ctrl_pending(bio)))
        let count = bytes.withUnsafeMutableBytes { BIO_read(bio, $0.baseAddress, Int32($0.count)) }
        return ByteBuffer(bytes: bytes.prefix(Int(max(0, count))))
    }
}

/// Collects the plain text the TLS handler passes on.
final class PlaintextCollector: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var received = ""
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.received += String(buffer: self.unwrapInboundIn(data))
    }
}

@Suite("TLS client handler (embedded channel)", .timeLimit(.minutes(1)))
final class TLSClientHandlerTests {
    let ca: TestCertificateAuthority
    let server: MemoryTLSServer
    let channel: EmbeddedChannel
    let collector = PlaintextCollector()

    init() throws {
        self.ca = try TestCertificateAuthority()
        self.server = try MemoryTLSServer(certificate: try self.ca.issueServer())
        let context = try RedisTLSContext(configuration: RedisTLSConfiguration(trustAnchors: [self.ca.certificate.certificateSource]))
        let handler = TLSClientHandler(context: context, serverName: "localhost", sessionKey: "test", handshakeTimeout: .seconds(5))
        self.channel = EmbeddedChannel(handlers: [handler, self.collector])
    }

    deinit {
        // An embedded channel and its pipeline hold each other until the channel closes.
        _ = try? self.channel.finish(acceptAlreadyClosed: true)
    }

    /// Moves the client's output to the server and the server's to the client, `split` bytes at a time,
    /// until neither has anything to say.
    func pump(split: Int = .max) throws {
        for _ in 0..<20 {
            var moved = false
            while let out = try self.channel.readOutbound(as: ByteBuffer.self) {
                self.server.receive(out)
                moved = true
            }
            self.server.handshake()
            var reply = self.server.output()
            if reply.readableBytes > 0 { moved = true }
            while reply.readableBytes > 0, let piece = reply.readSlice(length: min(split, reply.readableBytes)) {
                try self.channel.writeInbound(piece)
            }
            if !moved { return }
        }
    }

    func connect() throws {
        try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6379)).wait()
    }

    @Test("writes issued before the handshake are held, then delivered; records split into single bytes decrypt")
    func splitRecords() throws {
        try self.connect()
        let written = self.channel.writeAndFlush(ByteBuffer(string: "*1\r\n$4\r\nPING\r\n"))
        try self.pump(split: 1)
        try written.wait()
        #expect(self.server.read().text == "*1\r\n$4\r\nPING\r\n")

        self.server.write("+PONG\r\n")
        self.server.write(String(repeating: "x", count: 40_000))
        try self.pump(split: 1)
        #expect(self.collector.received == "+PONG\r\n" + String(repeating: "x", count: 40_000))
        try self.channel.throwIfErrorCaught()
    }

    @Test("a close_notify from the server is answered with ours and closes the channel without an error")
    func closeNotify() throws {
        try self.connect()
        try self.pump()
        self.server.shutdown()
        try self.pump()
        #expect(!self.channel.isActive)
        try self.channel.throwIfErrorCaught()
        #expect(self.server.read().closeNotify)
    }

    @Test("closing the channel sends close_notify first")
    func clientClose() throws {
        try self.connect()
        try self.pump()
        try self.channel.close().wait()
        while let out = try self.channel.readOutbound(as: ByteBuffer.self) { self.server.receive(out) }
        #expect(self.server.read().closeNotify)
    }

    @Test("garbage from the peer is 'not a TLS endpoint' and closes the channel")
    func garbage() throws {
        try self.connect()
        _ = try self.channel.readOutbound(as: ByteBuffer.self)
        let error = #expect(throws: RedisError.self) {
            try self.channel.writeInbound(ByteBuffer(string: "-ERR Protocol error: invalid multibulk length\r\n"))
        }
        #expect(error?.code == .tlsNotATLSEndpoint)
        #expect(!self.channel.isActive)
    }

    @Test("garbage after the handshake fails the connection")
    func garbageAfterHandshake() throws {
        try self.connect()
        try self.pump()
        let error = #expect(throws: RedisError.self) {
            try self.channel.writeInbound(ByteBuffer(bytes: [0x17, 0x03, 0x03, 0x00, 0x20] + [UInt8](repeating: 0xAB, count: 32)))
        }
        #expect(error?.code == .protocolError)
        #expect(!self.channel.isActive)
    }

    @Test("no handshake within the deadline fails with tlsHandshakeTimeout")
    func handshakeTimeout() throws {
        try self.connect()
        self.channel.embeddedEventLoop.advanceTime(by: .seconds(6))
        let error = #expect(throws: RedisError.self) { try self.channel.throwIfErrorCaught() }
        #expect(error?.code == .tlsHandshakeTimeout)
        #expect(!self.channel.isActive)
    }

    @Test("an EOF in the middle of the handshake is a handshake failure")
    func eofDuringHandshake() throws {
        try self.connect()
        self.channel.pipeline.fireChannelInactive()
        let error = #expect(throws: RedisError.self) { try self.channel.throwIfErrorCaught() }
        #expect(error?.code == .tlsHandshakeFailed)
    }

    /// The TLS records in `ciphertext`: content type and length of each.
    static func records(in ciphertext: ByteBuffer) -> [(type: UInt8, length: Int)] {
        var buffer = ciphertext
        var records: [(type: UInt8, length: Int)] = []
        while buffer.readableBytes >= 5 {
            let type = buffer.readInteger(as: UInt8.self)!
            buffer.moveReaderIndex(forwardBy: 2)  // The legacy version.
            let length = Int(buffer.readInteger(as: UInt16.self)!)
            guard buffer.readSlice(length: length) != nil else { break }
            records.append((type, length))
        }
        return records
    }

    @Test("what one flush sends: small writes share a record, a large one is encrypted from its own buffer (not joined); every byte arrives in order and every promise succeeds")
    func heldWritesAreJoinedUpToARecord() throws {
        try self.connect()
        try self.pump()
        #expect(try self.flushedOutput() == nil)
        let small = (0..<300).map { "*2\r\n$3\r\nGET\r\n$8\r\nk:\(String(format: "%06d", $0))\r\n" }
        let large = String(repeating: "v", count: 40_000)
        var futures: [EventLoopFuture<Void>] = []
        for text in small { futures.append(self.channel.write(ByteBuffer(string: text))) }
        futures.append(self.channel.write(ByteBuffer(string: large)))
        for text in small.prefix(2) { futures.append(self.channel.write(ByteBuffer(string: text))) }
        // Nothing leaves before the flush.
        #expect(try self.flushedOutput() == nil)
        self.channel.flush()
        let ciphertext = try #require(try self.flushedOutput())
        let records = Self.records(in: ciphertext)
        #expect(records.reduce(0) { $0 + 5 + $1.length } == ciphertext.readableBytes)
        #expect(records.allSatisfy { $0.type == 23 })
        // 300 GETs (8.1 KB) in one record; 40,000 bytes in three; the two GETs after it in one.
        #expect(records.count == 5, "records: \(records.map(\.length))")
        self.server.receive(ciphertext)
        #expect(self.server.read().text == small.joined() + large + small.prefix(2).joined())
        for future in futures { try future.wait() }
        try self.channel.throwIfErrorCaught()
    }

    @Test("writes held for the next flush (after the handshake) fail when the server closes the connection without close_notify: none is left pending")
    func heldWritesFailAtTheClose() throws {
        try self.connect()
        try self.pump()
        // Written, not flushed: held as plaintext until a flush.
        let first = self.channel.write(ByteBuffer(string: "*1\r\n$4\r\nPING\r\n"))
        let second = self.channel.write(ByteBuffer(string: "*1\r\n$4\r\nINFO\r\n"))
        let outcomes = WriteOutcomes()
        first.whenComplete { outcomes.record($0) }
        second.whenComplete { outcomes.record($0) }
        // The server goes away without close_notify (EOF).
        self.channel.pipeline.fireChannelInactive()
        #expect(outcomes.failures == 2, "a held write's promise was never completed")
        #expect(outcomes.successes == 0)
        #expect(throws: RedisError.self) { try self.channel.throwIfErrorCaught() }
    }

    @Test("a 3 MiB write leaves in ciphertext pieces of at most one BIO chunk and arrives intact; so does a 3 MiB read")
    func largePayloads() throws {
        try self.connect()
        try self.pump()
        let chunk = TLSClientHandler.maximumBIOChunk
        let text = String((0..<(3 * chunk + 17)).map { Character(UnicodeScalar(UInt8(97 + $0 % 26))) })

        let written = self.channel.writeAndFlush(ByteBuffer(string: text))
        var pieces: [Int] = []
        while let out = try self.channel.readOutbound(as: ByteBuffer.self) {
            pieces.append(out.readableBytes)
            self.server.receive(out)
        }
        try written.wait()
        #expect(pieces.count > 3)
        #expect(pieces.allSatisfy { $0 <= chunk })
        #expect(self.server.read().text == text)

        // The server's 3 MiB as one inbound buffer: fed to OpenSSL in chunks, decrypted whole.
        self.server.write(text)
        try self.channel.writeInbound(self.server.output())
        #expect(self.collector.received == text)
        try self.channel.throwIfErrorCaught()
    }

    /// The client's output since the last call, flushed (an embedded channel hands out only flushed writes).
    func flushedOutput() throws -> ByteBuffer? {
        var all: ByteBuffer?
        while var out = try self.channel.readOutbound(as: ByteBuffer.self) {
            if all == nil { all = out } else { all!.writeBuffer(&out) }
        }
        return all
    }

    @Test("a KeyUpdate that asks for ours, read with a reply: ours precedes the client's next record; traffic goes on both ways")
    func keyUpdateIsAnswered() throws {
        try self.connect()
        try self.pump()
        #expect(try self.flushedOutput() == nil)
        #expect(SSL_key_update(self.server.ssl, SSL_KEY_UPDATE_REQUESTED) == 1)
        self.server.write("+OK\r\n")
        try self.channel.writeInbound(self.server.output())
        #expect(self.collector.received == "+OK\r\n")
        // OpenSSL answers with the client's next write (RFC 8446 4.6.3 allows it), not from the read.
        try self.channel.writeAndFlush(ByteBuffer(string: "*1\r\n$4\r\nPING\r\n")).wait()
        self.server.receive(try #require(try self.flushedOutput()))
        #expect(self.server.read().text == "*1\r\n$4\r\nPING\r\n")
        self.server.write("+PONG\r\n")
        try self.channel.writeInbound(self.server.output())
        #expect(self.collector.received == "+OK\r\n+PONG\r\n")
        // The server's next key update (not requested) is read as well.
        #expect(SSL_key_update(self.server.ssl, SSL_KEY_UPDATE_NOT_REQUESTED) == 1)
        self.server.write("+AGAIN\r\n")
        try self.channel.writeInbound(self.server.output())
        #expect(self.collector.received == "+OK\r\n+PONG\r\n+AGAIN\r\n")
        try self.channel.throwIfErrorCaught()
        #expect(self.channel.isActive)
    }

    @Test("a write held for the flush while a KeyUpdate that asks for ours is read: after the flush the server reads it, then the next write, in order")
    func heldWriteAcrossKeyUpdate() throws {
        try self.connect()
        try self.pump()
        #expect(try self.flushedOutput() == nil)
        let first = self.channel.write(ByteBuffer(string: "*1\r\n$4\r\nPING\r\n"))
        #expect(SSL_key_update(self.server.ssl, SSL_KEY_UPDATE_REQUESTED) == 1)
        self.server.write("+OK\r\n")
        try self.channel.writeInbound(self.server.output())
        #expect(self.collector.received == "+OK\r\n")
        self.channel.flush()
        let second = self.channel.writeAndFlush(ByteBuffer(string: "*1\r\n$4\r\nINFO\r\n"))
        self.server.receive(try #require(try self.flushedOutput()))
        #expect(self.server.read().text == "*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nINFO\r\n")
        try first.wait()
        try second.wait()
        self.server.write("+PONG\r\n")
        try self.channel.writeInbound(self.server.output())
        #expect(self.collector.received == "+OK\r\n+PONG\r\n")
        try self.channel.throwIfErrorCaught()
        #expect(self.channel.isActive)
    }

    @Test("TLS 1.2: a server's renegotiation request is refused with a warning alert that goes out at once; the connection carries on")
    func renegotiationRequestIsRefusedAtOnce() throws {
        #expect(SSL_ctrl(self.server.ssl, SSL_CTRL_SET_MAX_PROTO_VERSION, Int(TLS1_2_VERSION), nil) == 1)
        try self.connect()
        try self.pump()
        #expect(try self.flushedOutput() == nil)
        #expect(SSL_renegotiate(self.server.ssl) == 1)
        self.server.handshake()  // Sends the HelloRequest.
        self.server.write("+OK\r\n")
        try self.channel.writeInbound(self.server.output())
        #expect(self.collector.received == "+OK\r\n")
        let alert = try #require(try self.flushedOutput(), "the client's no_renegotiation alert was not flushed")
        // A TLS 1.2 alert record: content type 21.
        #expect(alert.getInteger(at: alert.readerIndex, as: UInt8.self) == 21)
        try self.channel.throwIfErrorCaught()
        #expect(self.channel.isActive)
    }

    @Test("replies of 16 KiB - 1, 16 KiB and 16 KiB + 1 bytes followed by close_notify in one read, and split: every byte arrives, then the close")
    func recordSizedRepliesThenCloseNotify() throws {
        for (size, split) in [(16_383, Int.max), (16_384, Int.max), (16_385, Int.max), (16_384, 16_384 + 22), (16_384, 7), (1, Int.max), (0, Int.max)] {
            let server = try MemoryTLSServer(certificate: try self.ca.issueServer())
            let collector = PlaintextCollector()
            let context = try RedisTLSContext(configuration: RedisTLSConfiguration(trustAnchors: [self.ca.certificate.certificateSource]))
            let handler = TLSClientHandler(context: context, serverName: "localhost", sessionKey: "test-\(size)-\(split)", handshakeTimeout: .seconds(5))
            let channel = EmbeddedChannel(handlers: [handler, collector])
            defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6379)).wait()
            for _ in 0..<20 {
                var moved = false
                while let out = try channel.readOutbound(as: ByteBuffer.self) {
                    server.receive(out)
                    moved = true
                }
                server.handshake()
                let reply = server.output()
                if reply.readableBytes > 0 {
                    moved = true
                    try channel.writeInbound(reply)
                }
                if !moved { break }
            }
            let text = String((0..<size).map { Character(UnicodeScalar(UInt8(97 + $0 % 26))) })
            if size > 0 { server.write(text) }
            server.shutdown()
            var output = server.output()
            while output.readableBytes > 0, let piece = output.readSlice(length: min(split, output.readableBytes)) {
                try channel.writeInbound(piece)
            }
            #expect(collector.received == text, "size \(size), split \(split): \(collector.received.count) bytes")
            #expect(!channel.isActive, "size \(size), split \(split)")
            try channel.throwIfErrorCaught()
            while let out = try channel.readOutbound(as: ByteBuffer.self) { server.receive(out) }
            #expect(server.read().closeNotify, "size \(size), split \(split)")
        }
    }
}

/// What became of writes' promises (the embedded channel runs everything on the test's thread).
final class WriteOutcomes: @unchecked Sendable {
    private(set) var successes = 0
    private(set) var failures = 0
    func record(_ result: Result<Void, any Error>) {
        switch result {
        case .success: self.successes += 1
        case .failure: self.failures += 1
        }
    }
}
