#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
public import NIOCore
import NIOPosix
import Synchronization

/// A TCP proxy on loopback between a client and a server that injects the faults networks produce:
/// pauses, resets, blackholes, latency, replies cut short, garbage in a reply stream, and a server that
/// sends only part of what it has (half a TLS handshake). Point the client at ``host``:``port``.
///
/// Faults apply to every connection through the proxy, existing and new, from the moment they are set.
public final class RedisFaultProxy: Sendable {
    /// How the proxy treats bytes in both directions.
    public struct Mode: Sendable, Hashable, CustomStringConvertible {
        fileprivate enum Base: Hashable {
            case forward
            case paused
            case blackhole
            case blackholeNewConnections
            case latency(TimeAmount)
            case limitServerBytes(Int)
        }

        fileprivate let base: Base

        /// Bytes pass both ways.
        public static let forward = Mode(base: .forward)
        /// Bytes are held (both ways) and delivered, in order, when the mode changes back.
        public static let paused = Mode(base: .paused)
        /// Connections are accepted and never answered; bytes of existing ones are dropped (both ways),
        /// as with a peer that vanished without closing.
        public static let blackhole = Mode(base: .blackhole)
        /// Connections opened from now on are accepted and never answered; existing ones pass.
        public static let blackholeNewConnections = Mode(base: .blackholeNewConnections)
        /// Every chunk, both ways, is delivered after `delay`.
        public static func latency(_ delay: Duration) -> Mode { Mode(base: .latency(TimeAmount(delay))) }
        /// Each connection opened from now on gets at most `count` bytes from the server; the rest is
        /// dropped (half a TLS handshake, a reply that stops mid-way). Existing connections pass.
        public static func limitServerBytes(_ count: Int) -> Mode { Mode(base: .limitServerBytes(count)) }

        public var description: String { "\(self.base)" }
    }

    /// The address clients connect to.
    public let host = "127.0.0.1"
    public let port: Int
    private let upstreamHost: String
    private let upstreamPort: Int
    private let listener: any Channel
    private let group: any EventLoopGroup
    private let state = Mutex(State())

    private struct State {
        var mode = Mode.forward
        var pairs: [ObjectIdentifier: Pair] = [:]
        var accepted = 0
    }

    /// Starts a proxy on a free loopback port in front of `upstreamHost`:`upstreamPort`.
    public static func start(
        upstreamHost: String = "127.0.0.1",
        upstreamPort: Int,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> RedisFaultProxy {
        let box = Mutex<RedisFaultProxy?>(nil)
        let listener = try await ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { channel in
                guard let proxy = box.withLock({ $0 }) else { return channel.close() }
                proxy.accepted(channel)
                return channel.eventLoop.makeSucceededVoidFuture()
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        let proxy = RedisFaultProxy(listener: listener, group: eventLoopGroup, upstreamHost: upstreamHost, upstreamPort: upstreamPort)
        box.withLock { $0 = proxy }
        return proxy
    }

    private init(listener: any Channel, group: any EventLoopGroup, upstreamHost: String, upstreamPort: Int) {
        self.listener = listener
        self.group = group
        self.port = listener.localAddress?.port ?? 0
        self.upstreamHost = upstreamHost
        self.upstreamPort = upstreamPort
    }

    /// Connections accepted since the proxy started.
    public var acceptedConnections: Int { self.state.withLock { $0.accepted } }

    /// Connections open through the proxy now.
    public var openConnections: Int { self.state.withLock { $0.pairs.count } }

    /// Changes how bytes are treated. Leaving ``Mode/paused`` delivers what was held.
    public func setMode(_ mode: Mode) {
        let pairs = self.state.withLock { state -> [Pair] in
            state.mode = mode
            return Array(state.pairs.values)
        }
        if mode.base != .paused {
            for pair in pairs { pair.releaseHeld(dropping: mode.base == .blackhole) }
        }
    }

    /// Resets every connection through the proxy (RST to both sides), as a crashed middlebox would.
    public func resetAll() {
        for pair in self.state.withLock({ Array($0.pairs.values) }) { pair.reset() }
    }

    /// Cuts the next chunk the server sends on each open connection after `keeping` bytes, then resets
    /// that connection: a reply that stops mid-way.
    public func truncateNextReply(keeping: Int) {
        for pair in self.state.withLock({ Array($0.pairs.values) }) { pair.truncateNextServerChunk(keeping: keeping) }
    }

    /// Puts `bytes` into every open connection's reply stream, just before the next chunk the server
    /// sends, as if the server had sent them.
    public func injectIntoReplies(_ bytes: [UInt8]) {
        for pair in self.state.withLock({ Array($0.pairs.values) }) { pair.injectBeforeNextServerChunk(bytes) }
    }

    /// Stops listening and closes every connection.
    public func close() async {
        for pair in self.state.withLock({ Array($0.pairs.values) }) { pair.close() }
        try? await self.listener.close()
    }

    fileprivate var mode: Mode { self.state.withLock { $0.mode } }

    private func accepted(_ client: any Channel) {
        let mode = self.state.withLock { state -> Mode in
            state.accepted += 1
            return state.mode
        }
        let limit: Int?
        if case .limitServerBytes(let count) = mode.base { limit = count } else { limit = nil }
        let pair = Pair(proxy: self, client: client, serverByteLimit: limit)
        self.state.withLock { $0.pairs[ObjectIdentifier(pair)] = pair }
        client.closeFuture.whenComplete { _ in
            pair.close()
            _ = self.state.withLock { $0.pairs.removeValue(forKey: ObjectIdentifier(pair)) }
        }
        if mode.base == .blackhole || mode.base == .blackholeNewConnections {
            // Accepted and never answered: read and drop.
            _ = client.pipeline.addHandler(Relay(pair: pair, fromClient: true)).map { client.read() }
            return
        }
        ClientBootstrap(group: client.eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.autoRead, value: false)
            .connect(host: self.upstreamHost, port: self.upstreamPort)
            .whenComplete { result in
                switch result {
                case .failure:
                    client.close(promise: nil)
                case .success(let server):
                    pair.serverConnected(server)
                    server.closeFuture.whenComplete { _ in pair.close() }
                    _ = server.pipeline.addHandler(Relay(pair: pair, fromClient: false)).map { server.setOption(.autoRead, value: true) }
                    _ = client.pipeline.addHandler(Relay(pair: pair, fromClient: true)).map { client.setOption(.autoRead, value: true) }
                }
            }
    }
}

/// One client connection and its upstream connection.
private final class Pair: Sendable {
    private struct State {
        var server: (any Channel)?
        /// Bytes held while paused, in order, with the direction they travel.
        var held: [(toServer: Bool, bytes: ByteBuffer)] = []
        var serverBytesLeft: Int?
        var truncateAfter: Int?
        var inject: [UInt8]?
        var closed = false
    }

    private let proxy: RedisFaultProxy
    let client: any Channel
    private let state: Mutex<State>

    init(proxy: RedisFaultProxy, client: any Channel, serverByteLimit: Int?) {
        self.proxy = proxy
        self.client = client
        self.state = Mutex(State(serverBytesLeft: serverByteLimit))
    }

    func serverConnected(_ server: any Channel) {
        self.state.withLock { $0.server = server }
    }

    /// Bytes arrived from one side: pass them on, hold, delay or drop them according to the mode.
    func received(_ bytes: ByteBuffer, fromClient: Bool) {
        let mode = self.proxy.mode
        var bytes = bytes
        let (target, hold, resetAfter) = self.state.withLock { state -> ((any Channel)?, Bool, Bool) in
            if !fromClient, let left = state.serverBytesLeft {
                let pass = min(left, bytes.readableBytes)
                state.serverBytesLeft = left - pass
                bytes = bytes.getSlice(at: bytes.readerIndex, length: pass) ?? ByteBuffer()
            }
            var resetAfter = false
            if !fromClient, let garbage = state.inject {
                state.inject = nil
                var joined = ByteBuffer(bytes: garbage)
                joined.writeImmutableBuffer(bytes)
                bytes = joined
            }
            if !fromClient, let keep = state.truncateAfter {
                state.truncateAfter = nil
                bytes = bytes.getSlice(at: bytes.readerIndex, length: min(keep, bytes.readableBytes)) ?? ByteBuffer()
                resetAfter = true
            }
            if mode.base == .paused {
                state.held.append((fromClient, bytes))
                return (nil, true, false)
            }
            return (fromClient ? state.server : self.client, false, resetAfter)
        }
        guard !hold, bytes.readableBytes > 0 || resetAfter else { return }
        let chunk = bytes
        switch mode.base {
        case .blackhole:
            return
        case .latency(let delay):
            target?.eventLoop.scheduleTask(in: delay) { target?.writeAndFlush(chunk, promise: nil) }
        default:
            if chunk.readableBytes > 0 { target?.writeAndFlush(chunk, promise: nil) }
        }
        if resetAfter { self.reset() }
    }

    func releaseHeld(dropping: Bool) {
        let (held, server) = self.state.withLock { state -> ([(toServer: Bool, bytes: ByteBuffer)], (any Channel)?) in
            defer { state.held.removeAll() }
            return (state.held, state.server)
        }
        guard !dropping else { return }
        for (toServer, bytes) in held {
            (toServer ? server : self.client)?.writeAndFlush(bytes, promise: nil)
        }
    }

    func truncateNextServerChunk(keeping: Int) {
        self.state.withLock { $0.truncateAfter = keeping }
    }

    func injectBeforeNextServerChunk(_ bytes: [UInt8]) {
        self.state.withLock { $0.inject = bytes }
    }

    /// Closes both sides with RST (linger 0) rather than FIN.
    func reset() {
        for channel in [self.client, self.state.withLock { $0.server }].compactMap({ $0 }) {
            guard let options = channel as? any SocketOptionProvider else {
                channel.close(promise: nil)
                continue
            }
            options.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func close() {
        let server = self.state.withLock { state -> (any Channel)? in
            state.closed = true
            return state.server
        }
        self.client.close(promise: nil)
        server?.close(promise: nil)
    }
}

/// Hands what one side reads to the pair.
private final class Relay: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    private let pair: Pair
    private let fromClient: Bool

    init(pair: Pair, fromClient: Bool) {
        self.pair = pair
        self.fromClient = fromClient
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.pair.received(self.unwrapInboundIn(data), fromClient: self.fromClient)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.pair.close()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
