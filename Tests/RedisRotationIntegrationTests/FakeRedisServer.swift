import NIOCore
import NIOPosix
import RedisRotation
import Synchronization

/// A listener on 127.0.0.1 that speaks just enough RESP to let a ``RedisConnection`` connect: it
/// answers `HELLO` as Redis 7 does and every other command with `reply`, whatever bytes that is.
/// For cases a real server never produces: malformed or oversized replies.
struct FakeRedisServer {
    let port: Int

    /// What the server does with the next command (other than `HELLO`).
    enum Step: Sendable {
        /// Answer with these bytes.
        case reply(String)
        /// Close the connection without answering.
        case close
    }

    /// Runs `body` with a fake server listening on a free loopback port, and stops it afterwards.
    static func withServer<Result>(
        reply: ByteBuffer,
        _ body: (FakeRedisServer) async throws -> Result
    ) async throws -> Result {
        try await self.withServer(script: Script(steps: [], then: reply), body)
    }

    /// A fake server that answers commands, across all connections, with `steps` in order, then with
    /// `then` for ever.
    static func withServer<Result>(
        steps: [Step],
        then: String = "+OK\r\n",
        _ body: (FakeRedisServer) async throws -> Result
    ) async throws -> Result {
        try await self.withServer(script: Script(steps: steps, then: ByteBuffer(string: then)), body)
    }

    private static func withServer<Result>(
        script: Script,
        _ body: (FakeRedisServer) async throws -> Result
    ) async throws -> Result {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(FakeRedisHandler(script: script))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        do {
            let result = try await body(FakeRedisServer(port: channel.localAddress!.port!))
            try await channel.close()
            return result
        } catch {
            try? await channel.close()
            throw error
        }
    }
}

private final class FakeRedisHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// What Redis 7 answers to `HELLO 2`, abridged: a flat list of keys and values.
    static let helloReply = ByteBuffer(
        string: "*8\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.4\r\n$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:7\r\n"
    )

    private let reader = RESPReader()
    private let script: Script

    init(script: Script) {
        self.script = script
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try self.reader.feed(self.unwrapInboundIn(data))
            while let request = try self.reader.next() {
                if request.array?.first?.string?.uppercased() == "HELLO" {
                    context.writeAndFlush(self.wrapOutboundOut(Self.helloReply), promise: nil)
                    continue
                }
                switch self.script.next() {
                case .reply(let bytes):
                    context.writeAndFlush(self.wrapOutboundOut(bytes), promise: nil)
                case .close:
                    context.close(promise: nil)
                    return
                }
            }
        } catch {
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// The answers of a fake server, shared by its connections.
private final class Script: Sendable {
    enum Answer { case reply(ByteBuffer), close }

    private let steps: Lock<[FakeRedisServer.Step]>
    private let then: ByteBuffer

    init(steps: [FakeRedisServer.Step], then: ByteBuffer) {
        self.steps = Lock(steps)
        self.then = then
    }

    func next() -> Answer {
        let step = self.steps.withLock { $0.isEmpty ? nil : $0.removeFirst() }
        switch step {
        case .reply(let text): return .reply(ByteBuffer(string: text))
        case .close: return .close
        case nil: return .reply(self.then)
        }
    }
}
