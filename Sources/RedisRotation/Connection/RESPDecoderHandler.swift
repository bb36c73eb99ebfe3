import NIOCore

/// Turns the bytes a connection reads into ``RESPValue``s with a ``RESPReader``. A malformed or
/// oversized reply is fired as the `RedisError` and closes the channel: the stream cannot be resynchronised.
final class RESPDecoderHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = RESPValue

    private let reader: RESPReader
    private var failed = false

    init(limits: RESPReaderLimits) {
        self.reader = RESPReader(limits: limits)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.failed else { return }
        let buffer = self.unwrapInboundIn(data)
        do {
            try self.reader.feed(buffer)
            while let value = try self.reader.next() {
                context.fireChannelRead(self.wrapInboundOut(value))
            }
        } catch {
            self.failed = true
            context.fireErrorCaught(error)
            context.close(promise: nil)
        }
    }
}
