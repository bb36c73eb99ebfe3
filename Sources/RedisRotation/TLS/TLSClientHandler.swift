#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
internal import COpenSSL
private import COpenSSLShims
import NIOCore

/// A TLS client as a channel handler: OpenSSL runs over two memory BIOs, SwiftNIO moves the bytes.
///
/// Ciphertext read from the socket goes into the read BIO; whatever OpenSSL puts into the write BIO is
/// written to the socket. So `SSL_*` calls never block and never touch a socket (no SIGPIPE), and each
/// `SSL` stays on its channel's event loop. Each OpenSSL call clears the error queue before and reads
/// it right after, on the same thread.
///
/// Plain-text writes are held until a flush (before the handshake completes, until it does) and then
/// encrypted together. The handshake has a deadline: a TLS client talking to a plain-text port would
/// otherwise wait forever.
final class TLSClientHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State: Equatable {
        case idle
        case handshaking
        case active
        /// We sent close_notify, or the peer did; no more application data either way.
        case closing
        case closed
    }

    private let ssl: OpaquePointer
    private let tlsContext: RedisTLSContext
    private let sink: TLSSessionSink
    private let serverName: String
    private let handshakeTimeout: TimeAmount
    private var state = State.idle
    private var timer: Scheduled<Void>?
    /// Plaintext written and not encrypted yet: before the handshake completes, and since the last flush.
    private var heldWrites: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    private var receivedCloseNotify = false
    /// Set once the handshake has completed.
    private(set) var info: RedisTLSConnectionInfo?

    /// The most bytes one call moves into or out of a memory BIO, and the most plaintext encrypted at
    /// once. `BIO_read` and `BIO_write` count in `Int32`, so a larger call would trap; smaller pieces
    /// also keep the write BIO from holding a whole large command's ciphertext next to its plaintext.
    static let maximumBIOChunk = 1 << 20

    /// - Parameters:
    ///   - serverName: The DNS name or IP address the certificate must name (SNI for a DNS name).
    ///   - sessionKey: Which server the session cache files this connection's sessions under.
    init(context: RedisTLSContext, serverName: String, sessionKey: String, handshakeTimeout: TimeAmount) {
        guard let ssl = SSL_new(context.handle.pointer) else {
            fatalError("OpenSSL could not allocate an SSL object: out of memory")
        }
        self.ssl = ssl
        self.tlsContext = context
        self.serverName = serverName
        self.handshakeTimeout = handshakeTimeout
        self.sink = TLSSessionSink(cache: context.sessions, server: sessionKey)

        guard let readBIO = BIO_new(BIO_s_mem()), let writeBIO = BIO_new(BIO_s_mem()) else {
            fatalError("OpenSSL could not allocate memory BIOs: out of memory")
        }
        // An empty read BIO means "no data yet", not end of file.
        _ = rr_BIO_set_mem_eof_return(readBIO, -1)
        _ = rr_BIO_set_mem_eof_return(writeBIO, -1)
        SSL_set_bio(ssl, readBIO, writeBIO)
        SSL_set_connect_state(ssl)
        SSL_set_ex_data(ssl, 0, Unmanaged.passUnretained(self.sink).toOpaque())

        let isIPAddress = Self.isIPAddress(serverName)
        if context.configuration.verification.verifiesPeer {
            let parameters = SSL_get0_param(ssl)
            X509_VERIFY_PARAM_set_hostflags(parameters, UInt32(X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS))
            if isIPAddress {
                X509_VERIFY_PARAM_set1_ip_asc(parameters, serverName)
            } else {
                SSL_set1_host(ssl, serverName)
            }
        }
        // SNI carries DNS names only (RFC 6066 section 3); it verifies nothing by itself.
        if !isIPAddress { _ = rr_SSL_set_tlsext_host_name(ssl, serverName) }

        if context.configuration.sessionResumption, let session = context.sessions.take(for: sessionKey) {
            SSL_set_session(ssl, session.pointer)
        }
    }

    deinit {
        SSL_free(self.ssl)
    }

    static func isIPAddress(_ name: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, name, &v4) == 1 || inet_pton(AF_INET6, name, &v6) == 1
    }

    // MARK: Lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.startHandshake(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.startHandshake(context: context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        switch self.state {
        case .handshaking, .idle:
            self.state = .closed
            self.failHeldWrites(ChannelError.ioOnClosedChannel)
            context.fireErrorCaught(
                RedisError(
                    code: .tlsHandshakeFailed,
                    message: "the server closed the connection during the TLS handshake"
                )
            )
        case .active:
            self.state = .closed
            // Writes held for the next flush (see `write`) never leave.
            self.failHeldWrites(ChannelError.ioOnClosedChannel)
            if !self.receivedCloseNotify {
                context.fireErrorCaught(
                    RedisError(code: .connectionClosed, message: "the server closed the TLS connection without close_notify")
                )
            }
        case .closing, .closed:
            self.state = .closed
        }
        context.fireChannelInactive()
    }

    private func startHandshake(context: ChannelHandlerContext) {
        guard case .idle = self.state else { return }
        self.state = .handshaking
        let timeout = self.handshakeTimeout
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            guard case .handshaking = self.state else { return }
            self.fail(
                RedisError(
                    code: .tlsHandshakeTimeout,
                    message: "no TLS handshake with \(self.serverName) within \(timeout.nanoseconds / 1_000_000) ms: is this the server's TLS port (tls-port), and does it answer?"
                ),
                context: context
            )
        }
        self.driveHandshake(context: context)
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        switch self.state {
        case .closed:
            return
        case .idle, .handshaking, .active, .closing:
            break
        }
        var remaining = buffer
        while remaining.readableBytes > 0, self.state != .closed {
            let piece = remaining.readSlice(length: min(remaining.readableBytes, Self.maximumBIOChunk))!
            let written = piece.withUnsafeReadableBytes { bytes -> Bool in
                BIO_write(SSL_get_rbio(self.ssl), bytes.baseAddress, Int32(bytes.count)) == Int32(bytes.count)
            }
            guard written else {
                self.fail(RedisError(code: .tlsHandshakeFailed, message: "OpenSSL could not buffer received bytes"), context: context)
                return
            }
            // Each piece is decrypted before the next goes in, so the read BIO holds at most one.
            if case .handshaking = self.state { self.driveHandshake(context: context) }
            if case .active = self.state { self.readPlaintext(context: context) }
        }
        // What reading made OpenSSL write (an alert, a key update's answer) goes out; a reply alone
        // makes it write nothing, and then there is nothing to flush.
        if self.writeCiphertext(context: context, promise: nil) { context.flush() }
    }

    private func driveHandshake(context: ChannelHandlerContext) {
        OpenSSLErrors.clear()
        let result = SSL_do_handshake(self.ssl)
        if result == 1 {
            self.handshakeCompleted(context: context)
            return
        }
        let error = SSL_get_error(self.ssl, result)
        let entries = OpenSSLErrors.drain()
        switch error {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            self.flushCiphertext(context: context)
        default:
            self.fail(self.classify(entries), context: context)
        }
    }

    private func handshakeCompleted(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        self.state = .active
        let peer = SSL_get0_peer_certificate(self.ssl).map { self.tlsContext.peerCertificates.certificate(of: $0) }
        self.info = RedisTLSConnectionInfo(
            protocolVersion: String(cString: SSL_get_version(self.ssl)),
            cipher: SSL_get_current_cipher(self.ssl).flatMap { SSL_CIPHER_get_name($0) }.map { String(cString: $0) } ?? "",
            sessionReused: SSL_session_reused(self.ssl) == 1,
            peerCertificate: peer,
            contextGeneration: self.tlsContext.generation
        )
        self.encryptHeldWrites(context: context)
        self.flushCiphertext(context: context)
        // Application data may have arrived with the last handshake message.
        self.readPlaintext(context: context)
    }

    /// Decrypts everything OpenSSL can give now and passes it on, in as few buffers as it fits in.
    ///
    /// Plaintext is never longer than the ciphertext it comes from, so a buffer the size of what the
    /// read BIO and OpenSSL hold (at least 256 bytes, at most 16 KiB) takes it all: a small reply gets a
    /// small buffer (a reply's values are slices of it and keep it alive), and no second `SSL_read`
    /// runs only to learn that nothing is left.
    private func readPlaintext(context: ChannelHandlerContext) {
        let readBIO = SSL_get_rbio(self.ssl)
        while case .active = self.state {
            let available = Int(BIO_ctrl_pending(readBIO)) + Int(SSL_pending(self.ssl))
            var buffer = context.channel.allocator.buffer(capacity: min(max(available, 256), 16 * 1024))
            // 0 while decryption can go on: the buffer filled up.
            var status: Int32 = 0
            var entries: [OpenSSLErrorEntry] = []
            while buffer.writableBytes > 0 {
                var result: Int32 = 0
                OpenSSLErrors.clear()
                buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { raw -> Int in
                    var read = 0
                    result = SSL_read_ex(self.ssl, raw.baseAddress, raw.count, &read)
                    return result == 1 ? read : 0
                }
                if result != 1 {
                    status = SSL_get_error(self.ssl, result)
                    entries = OpenSSLErrors.drain()
                    break
                }
                // Nothing left to decrypt until more ciphertext comes: another SSL_read would say so.
                if BIO_ctrl_pending(readBIO) == 0 && SSL_has_pending(self.ssl) == 0 {
                    status = SSL_ERROR_WANT_READ
                    break
                }
            }
            if buffer.readableBytes > 0 { context.fireChannelRead(self.wrapInboundOut(buffer)) }
            switch status {
            case 0:
                continue
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                return
            case SSL_ERROR_ZERO_RETURN:
                // close_notify from the server: answer with ours and close.
                guard case .active = self.state else { return }
                self.receivedCloseNotify = true
                self.shutdown(context: context, promise: nil)
                return
            default:
                self.fail(self.classify(entries), context: context)
                return
            }
        }
    }

    // MARK: Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let buffer = self.unwrapOutboundIn(data)
        switch self.state {
        case .idle, .handshaking, .active:
            // Encrypted at the flush, together with the writes before it (see `encryptHeldWrites`).
            self.heldWrites.append((buffer, promise))
        case .closing, .closed:
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    func flush(context: ChannelHandlerContext) {
        guard case .active = self.state else { return }
        self.encryptHeldWrites(context: context)
        if case .active = self.state { self.flushCiphertext(context: context) }
    }

    /// The most plaintext `encryptHeldWrites` copies together: one TLS record's worth.
    static let maximumJoinedPlaintext = 16 * 1024

    /// Encrypts the writes held since the last flush, in order. Writes that together fit in one TLS
    /// record (16 KiB of plaintext) are encrypted as one piece: commands pipelined by several callers in
    /// one turn of the event loop become one record, not one record, one `SSL_write` and one write BIO
    /// round each. A larger write is encrypted from its own storage: joined, a 100 MiB value written in
    /// the same turn as a `GET` would be copied whole (twice its memory, a copy and a wipe of it) to
    /// save a record or two. A joined copy may hold a password (an `AUTH`): it is wiped once encrypted
    /// (the only reference is here, so the wipe reaches its storage).
    private func encryptHeldWrites(context: ChannelHandlerContext) {
        guard !self.heldWrites.isEmpty else { return }
        var held: [(ByteBuffer, EventLoopPromise<Void>?)] = []
        swap(&held, &self.heldWrites)
        var start = 0
        while start < held.count {
            guard case .active = self.state else {
                // An encryption failed and closed the connection: the rest never leave.
                for (_, promise) in held[start...] { promise?.fail(ChannelError.ioOnClosedChannel) }
                break
            }
            var end = start + 1
            var size = held[start].0.readableBytes
            while end < held.count, size + held[end].0.readableBytes <= Self.maximumJoinedPlaintext {
                size += held[end].0.readableBytes
                end += 1
            }
            if end - start == 1 {
                self.encrypt(held[start].0, promise: held[start].1, context: context)
            } else {
                self.encryptJoined(held[start..<end], size: size, context: context)
            }
            start = end
        }
        // The callers' buffers are let go here: a caller's wipe of a password reaches its storage.
        held.removeAll(keepingCapacity: true)
        // Writes issued meanwhile (by a promise's callback) stay for the next flush.
        if self.heldWrites.isEmpty { self.heldWrites = held }
    }

    /// Encrypts `writes` (`size` bytes in all) as one piece of plaintext, then wipes the joined copy.
    private func encryptJoined(_ writes: ArraySlice<(ByteBuffer, EventLoopPromise<Void>?)>, size: Int, context: ChannelHandlerContext) {
        var joined = context.channel.allocator.buffer(capacity: size)
        var promises: [EventLoopPromise<Void>] = []
        for (buffer, promise) in writes {
            joined.writeImmutableBuffer(buffer)
            if let promise { promises.append(promise) }
        }
        var promise: EventLoopPromise<Void>?
        if !promises.isEmpty {
            let combined = context.eventLoop.makePromise(of: Void.self)
            let waiting = promises
            combined.futureResult.whenComplete { result in
                for promise in waiting { promise.completeWith(result) }
            }
            promise = combined
        }
        self.encrypt(joined, promise: promise, context: context)
        joined.withUnsafeMutableReadableBytes { wipe($0) }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all else {
            context.close(mode: mode, promise: promise)
            return
        }
        self.shutdown(context: context, promise: promise)
    }

    /// Sends close_notify when the session is established (it keeps the session resumable), then closes.
    private func shutdown(context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        self.timer?.cancel()
        self.timer = nil
        if case .active = self.state {
            self.state = .closing
            OpenSSLErrors.clear()
            _ = SSL_shutdown(self.ssl)
            _ = OpenSSLErrors.drain()
            self.flushCiphertext(context: context)
        } else if case .closed = self.state {
        } else {
            self.state = .closing
        }
        self.failHeldWrites(ChannelError.ioOnClosedChannel)
        context.close(mode: .all, promise: promise)
    }

    private func encrypt(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?, context: ChannelHandlerContext) {
        guard buffer.readableBytes > 0 else {
            promise?.succeed()
            return
        }
        var remaining = buffer
        while let piece = remaining.readSlice(length: min(remaining.readableBytes, Self.maximumBIOChunk)),
            piece.readableBytes > 0
        {
            var failure: [OpenSSLErrorEntry]?
            piece.withUnsafeReadableBytes { bytes in
                var written = 0
                OpenSSLErrors.clear()
                // A memory BIO takes any amount: the write completes in one call or fails.
                if SSL_write_ex(self.ssl, bytes.baseAddress, bytes.count, &written) != 1 || written != bytes.count {
                    failure = OpenSSLErrors.drain()
                }
            }
            if let failure {
                promise?.fail(ChannelError.ioOnClosedChannel)
                self.fail(self.classify(failure), context: context)
                return
            }
            // The write's promise completes with its last piece.
            self.writeCiphertext(context: context, promise: remaining.readableBytes == 0 ? promise : nil)
        }
    }

    /// Moves what OpenSSL wrote into the write BIO to the channel, without flushing, in buffers of at
    /// most ``maximumBIOChunk`` bytes; `promise` completes with the last.
    /// Returns whether there was anything to write.
    @discardableResult
    private func writeCiphertext(context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) -> Bool {
        let writeBIO = SSL_get_wbio(self.ssl)!
        var pending = Int(BIO_ctrl_pending(writeBIO))
        guard pending > 0 else {
            promise?.succeed()
            return false
        }
        // Bounded: every round takes at least one byte out of the BIO, or is the last. Nothing else
        // writes to the BIO meanwhile (no OpenSSL call in between, one thread), so what is left is
        // counted down, not asked for again.
        while true {
            let size = min(pending, Self.maximumBIOChunk)
            var buffer = context.channel.allocator.buffer(capacity: size)
            let read = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { raw in
                Int(max(0, BIO_read(writeBIO, raw.baseAddress, Int32(size))))
            }
            pending -= read
            let last = pending <= 0 || read == 0
            context.write(self.wrapOutboundOut(buffer), promise: last ? promise : nil)
            if last { return true }
        }
    }

    private func flushCiphertext(context: ChannelHandlerContext) {
        self.writeCiphertext(context: context, promise: nil)
        context.flush()
    }

    // MARK: Failure

    private func fail(_ error: RedisError, context: ChannelHandlerContext) {
        guard self.state != .closed else { return }
        self.timer?.cancel()
        self.timer = nil
        self.state = .closed
        // An alert OpenSSL queued (a fatal one, say) still goes out before the close.
        self.flushCiphertext(context: context)
        self.failHeldWrites(error)
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    private func failHeldWrites(_ error: any Error) {
        let held = self.heldWrites
        self.heldWrites.removeAll()
        for (_, promise) in held { promise?.fail(error) }
    }

    /// Turns a failed handshake or read into an error that says what to do.
    private func classify(_ entries: [OpenSSLErrorEntry]) -> RedisError {
        let verification = TLSFailureClassifier(
            verifyResult: Int32(truncatingIfNeeded: SSL_get_verify_result(self.ssl)),
            verifiesPeer: self.tlsContext.configuration.verification.verifiesPeer,
            peerChain: self.peerChain(),
            serverName: self.serverName,
            hasClientCertificate: !self.tlsContext.clientCertificateChain.isEmpty,
            handshakeCompleted: self.info != nil,
            entries: entries
        )
        let error = verification.error()
        if error.code != .connectionClosed {
            // A session must never outlive a failed verification of its server.
            self.tlsContext.sessions.removeAll(for: self.sink.server)
        }
        return error
    }

    /// The certificates the server sent, leaf first (available even when verification failed).
    private func peerChain() -> [RedisCertificate] {
        guard let chain = SSL_get_peer_cert_chain(self.ssl) else { return [] }
        return (0..<rr_sk_X509_num(chain)).compactMap { index in
            rr_sk_X509_value(chain, index).map { X509Certificate(retaining: $0).info }
        }
    }
}

