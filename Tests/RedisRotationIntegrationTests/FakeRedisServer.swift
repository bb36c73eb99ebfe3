import NIOCore
import NIOPosix
import RedisRotation

/// A listener on 127.0.0.1 that speaks just enough RESP to let a ``RedisConnection`` connect: it
/// answers `HELLO` as Redis 7 does and every other command with `reply`, whatever bytes that is.
/// For cases a real server never produces: malformed or oversized replies.
struct FakeRedisServer {
    let port: Int

    /// Runs `body` with a fake server listening on a free loopback port, and stops it afterwards.
    static func withServer<Result>(
        reply: ByteBuffer,
        _ body: (FakeRedisServer) async throws -> Result
    ) async throws -> Result {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(FakeRedisHandler(reply: reply))
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
    private let reply: ByteBuffer

    init(reply: ByteBuffer) {
        self.reply = reply
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try self.reader.feed(self.unwrapInboundIn(data))
            while let request = try self.reader.next() {
                let isHello = request.array?.first?.string?.uppercased() == "HELLO"
                context.writeAndFlush(self.wrapOutboundOut(isHello ? Self.helloReply : self.reply), promise: nil)
            }
        } catch {
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
