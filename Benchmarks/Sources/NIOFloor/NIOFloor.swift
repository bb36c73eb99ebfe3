import NIOCore
import NIOPosix

/// The least a SwiftNIO client can do for a reconnect: a `ClientBootstrap` connect, `HELLO 2 AUTH` written
/// as the channel becomes active, its reply awaited, one `PING` and its reply, close. No TLS, no
/// handshake state machine, no timeouts; replies are only checked for completeness. What this
/// library's reconnect costs beyond this is its own.
private final class NIOFloorHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let hello: ByteBuffer
    var pending: EventLoopPromise<Void>?
    var received = ByteBuffer()

    init(hello: ByteBuffer, promise: EventLoopPromise<Void>) {
        self.hello = hello
        self.pending = promise
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(self.wrapOutboundOut(self.hello), promise: nil)
        context.fireChannelActive()
    }

    func send(_ bytes: ByteBuffer, promise: EventLoopPromise<Void>, context: ChannelHandlerContext) {
        self.pending = promise
        context.writeAndFlush(self.wrapOutboundOut(bytes), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        self.received.writeBuffer(&bytes)
        var view = self.received.readableBytesView[...]
        if Self.skipReply(&view), view.isEmpty {
            self.received.clear()
            let promise = self.pending
            self.pending = nil
            promise?.succeed()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.pending?.fail(error)
        self.pending = nil
        context.close(promise: nil)
    }

    /// Skips one whole RESP2 reply; false when `view` holds less than one.
    static func skipReply(_ view: inout ByteBufferView.SubSequence) -> Bool {
        guard let type = view.first, let end = view.firstIndex(of: UInt8(ascii: "\n")) else { return false }
        let line = view[view.index(after: view.startIndex)..<view.index(before: end)]
        view = view[view.index(after: end)...]
        let number = Int(String(decoding: line, as: UTF8.self)) ?? 0
        switch type {
        case UInt8(ascii: "$"):
            guard number >= 0 else { return true }
            guard view.count >= number + 2 else { return false }
            view = view.dropFirst(number + 2)
            return true
        case UInt8(ascii: "*"):
            for _ in 0..<max(number, 0) where !skipReply(&view) { return false }
            return true
        default:
            return true
        }
    }
}

private func resp(_ words: [String]) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.writeString("*\(words.count)\r\n")
    for word in words { buffer.writeString("$\(word.utf8.count)\r\n\(word)\r\n") }
    return buffer
}

/// A connection opened the bare-NIO way: `open` connects, sends `HELLO 2 AUTH`, waits for its reply,
/// then sends `PING` and waits for its reply, as a reconnect of this library does; `ping` makes one
/// more round trip; `close` closes.
public struct NIOFloorConnection: Sendable {
    let channel: any Channel

    public static func open(host: String, port: Int, user: String, password: String, on loop: any EventLoop) async throws -> NIOFloorConnection {
        let helloReply = loop.makePromise(of: Void.self)
        let handler = NIOFloorHandler(hello: resp(["HELLO", "2", "AUTH", user, password]), promise: helloReply)
        let channel = try await ClientBootstrap(group: loop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
            }
            .connect(to: try SocketAddress(ipAddress: host, port: port)).get()
        do {
            try await helloReply.futureResult.get()
            let pong = loop.makePromise(of: Void.self)
            let ping = resp(["PING"])
            loop.execute {
                do {
                    handler.send(ping, promise: pong, context: try channel.pipeline.syncOperations.context(handler: handler))
                } catch {
                    pong.fail(error)
                }
            }
            try await pong.futureResult.get()
        } catch {
            try? await channel.close()
            throw error
        }
        return NIOFloorConnection(channel: channel)
    }

    /// One `PING` and its reply, the bare-NIO way for a caller off the event loop: a task hands the write
    /// to the loop and waits on a promise the handler completes when the reply is whole.
    public func ping() async throws {
        let loop = self.channel.eventLoop
        let pong = loop.makePromise(of: Void.self)
        let channel = self.channel
        loop.execute {
            do {
                let handler = try channel.pipeline.syncOperations.handler(type: NIOFloorHandler.self)
                handler.send(pingCommand, promise: pong, context: try channel.pipeline.syncOperations.context(handler: handler))
            } catch {
                pong.fail(error)
            }
        }
        try await pong.futureResult.get()
    }

    public func close() async {
        try? await self.channel.close()
    }
}

private let pingCommand = resp(["PING"])

/// Runs a task's jobs on one event loop (`withTaskExecutorPreference`): what an application whose
/// handlers run on their connection's loop gets, no crossing between threads on a round trip. (NIO
/// 2.101 has no task executor for its loops.)
public final class LoopExecutor: TaskExecutor {
    public let loop: any EventLoop

    public init(loop: any EventLoop) { self.loop = loop }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = self.asUnownedTaskExecutor()
        self.loop.execute { job.runSynchronously(on: executor) }
    }
}
