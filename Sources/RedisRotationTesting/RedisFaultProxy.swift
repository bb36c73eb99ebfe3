#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
public import NIOCore
import NIOPosix
import RedisRotation
import Synchronization

/// A TCP proxy on loopback between a client and a server that injects the faults networks produce:
/// pauses, resets, blackholes, latency, replies cut short, garbage in a reply stream, and a server that
/// sends only part of what it has (half a TLS handshake). Point the client at ``host``:``port``.
///
/// Faults apply to every connection through the proxy, existing and new, from the moment the call that
/// sets them returns. Whatever the faults, each connection's bytes stay in order in each direction, as
/// TCP's do: a fault delays, holds, drops or cuts a stream, it never reorders one.
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
        /// Bytes are held (both ways, including those a latency still delays) and delivered, in order,
        /// when the mode changes to one that passes bytes.
        public static let paused = Mode(base: .paused)
        /// Connections are accepted and never answered; bytes of existing ones are dropped (both ways),
        /// as with a peer that vanished without closing. Bytes held or delayed are dropped too. A
        /// connection open while the proxy blackholes stays that way after a later mode change: TCP
        /// never delivers a stream's later bytes once earlier ones are lost, and a stream resumed
        /// after a gap would pair replies with the wrong commands (no client could tell).
        public static let blackhole = Mode(base: .blackhole)
        /// Connections opened from now on are accepted and never answered; existing ones pass.
        public static let blackholeNewConnections = Mode(base: .blackholeNewConnections)
        /// Every chunk, both ways, is delivered `delay` after it arrived, and never before the chunks
        /// ahead of it: when a latency ends or shrinks, later chunks queue behind the delayed ones.
        public static func latency(_ delay: Duration) -> Mode { Mode(base: .latency(TimeAmount(delay))) }
        /// Each connection opened from now on gets at most `count` bytes from the server; the rest is
        /// dropped (half a TLS handshake, a reply that stops mid-way). Existing connections pass.
        public static func limitServerBytes(_ count: Int) -> Mode { Mode(base: .limitServerBytes(count)) }

        public var description: String { "\(self.base)" }

        /// What the mode does to connections that are already open.
        fileprivate var treatment: Treatment {
            switch self.base {
            case .forward, .blackholeNewConnections, .limitServerBytes: .forward
            case .paused: .paused
            case .blackhole: .blackhole
            case .latency(let delay): .latency(delay)
            }
        }

        /// Whether connections accepted in this mode get no upstream connection.
        fileprivate var isNeverAnswered: Bool { self.base == .blackhole || self.base == .blackholeNewConnections }
    }

    /// The address clients connect to.
    public let host = "127.0.0.1"
    public let port: Int
    private let upstreamHost: String
    private let upstreamPort: Int
    private let listener: any Channel
    private let state = Lock(State())

    private struct State {
        var mode = Mode.forward
        /// Counts mode changes, so a connection that is handed two changes applies only the later one.
        var modeGeneration = 0
        var pairs: [ObjectIdentifier: Pair] = [:]
        var accepted = 0
        var closing = false
    }

    /// Starts a proxy on a free loopback port in front of `upstreamHost`:`upstreamPort`.
    public static func start(
        upstreamHost: String = "127.0.0.1",
        upstreamPort: Int,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> RedisFaultProxy {
        let box = Lock<RedisFaultProxy?>(nil)
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
        let proxy = RedisFaultProxy(listener: listener, upstreamHost: upstreamHost, upstreamPort: upstreamPort)
        box.withLock { $0 = proxy }
        return proxy
    }

    private init(listener: any Channel, upstreamHost: String, upstreamPort: Int) {
        self.listener = listener
        self.port = listener.localAddress?.port ?? 0
        self.upstreamHost = upstreamHost
        self.upstreamPort = upstreamPort
    }

    /// Connections accepted since the proxy started.
    public var acceptedConnections: Int { self.state.withLock { $0.accepted } }

    /// Connections open through the proxy now (a client connection counts until its upstream connection
    /// is closed too).
    public var openConnections: Int { self.state.withLock { $0.pairs.count } }

    /// Changes how bytes are treated. Leaving ``Mode/paused`` delivers what was held, in order, ahead of
    /// anything that arrives later.
    ///
    /// Returns once every open connection applies the new mode; connections accepted from then on start
    /// with it.
    public func setMode(_ mode: Mode) async {
        let (generation, pairs) = self.state.withLock { state in
            state.mode = mode
            state.modeGeneration += 1
            return (state.modeGeneration, Array(state.pairs.values))
        }
        await Self.onEach(pairs) { $0.apply(mode.treatment, generation: generation) }
    }

    /// Resets every connection through the proxy (RST to both the client and the server), as a crashed
    /// middlebox would. Returns once those connections are closed.
    public func resetAll() async {
        let pairs = self.state.withLock { Array($0.pairs.values) }
        let closed = await Self.onEach(pairs) { $0.reset() }
        for future in closed { try? await future.get() }
    }

    /// Cuts the next chunk the server delivers to the client on each connection open now after `keeping`
    /// bytes, then resets that connection once the kept bytes went out: a reply that stops mid-way.
    ///
    /// The cut applies where the chunk is delivered: under a latency, after its delay; while paused, when
    /// the pause ends. A connection with no reply on its way stays armed until its next reply, however
    /// late, and that reply is cut; use ``disarmReplyFaults()`` to end the fault on connections it did
    /// not reach.
    public func truncateNextReply(keeping: Int) async {
        precondition(keeping >= 0, "a reply cannot be cut before its start")
        let pairs = self.state.withLock { Array($0.pairs.values) }
        await Self.onEach(pairs) { $0.truncateNextServerChunk(keeping: keeping) }
    }

    /// Puts `bytes` into every open connection's reply stream, just before the next chunk the server
    /// delivers, as if the server had sent them. Like ``truncateNextReply(keeping:)``, a connection stays
    /// armed until its next reply; ``disarmReplyFaults()`` ends the fault.
    public func injectIntoReplies(_ bytes: [UInt8]) async {
        let pairs = self.state.withLock { Array($0.pairs.values) }
        await Self.onEach(pairs) { $0.injectBeforeNextServerChunk(bytes) }
    }

    /// Cancels ``truncateNextReply(keeping:)`` and ``injectIntoReplies(_:)`` on every connection whose
    /// next reply has not come yet, so an idle connection does not cut or corrupt a later, unrelated
    /// reply.
    public func disarmReplyFaults() async {
        let pairs = self.state.withLock { Array($0.pairs.values) }
        await Self.onEach(pairs) { $0.disarmReplyFaults() }
    }

    /// Chunks the proxy holds or delays on their way to the server (`towardServer`) or to the client,
    /// over all connections: lets a test wait until what it sent has reached the proxy, instead of
    /// sleeping.
    public func chunksInTransit(towardServer: Bool) async -> Int {
        let pairs = self.state.withLock { Array($0.pairs.values) }
        return await Self.onEach(pairs) { $0.chunksInTransit(toServer: towardServer) }.reduce(0, +)
    }

    /// Stops listening and closes every connection. Returns once no connection through the proxy is
    /// open, upstream ones included.
    public func close() async {
        try? await self.listener.close()
        // Children the listener accepted before it closed may still be on their way to `accepted`.
        let pairs = self.state.withLock { state in
            state.closing = true
            return Array(state.pairs.values)
        }
        let closed = pairs.map { pair in pair.eventLoop.flatSubmit { pair.close() } }
        for future in closed { try? await future.get() }
    }

    /// Runs `body` for each pair on that pair's event loop, where its state lives; returns once all ran.
    @discardableResult
    private static func onEach<Value: Sendable>(
        _ pairs: [Pair],
        _ body: @escaping @Sendable (Pair) -> Value
    ) async -> [Value] {
        let futures = pairs.map { pair in pair.eventLoop.submit { body(pair) } }
        var results: [Value] = []
        for future in futures {
            if let result = try? await future.get() { results.append(result) }
        }
        return results
    }

    /// Runs on the accepted channel's event loop.
    private func accepted(_ client: any Channel) {
        let pair = self.state.withLock { state -> Pair? in
            guard !state.closing else { return nil }
            state.accepted += 1
            var limit: Int?
            if case .limitServerBytes(let count) = state.mode.base { limit = count }
            let pair = Pair(
                client: client,
                treatment: state.mode.treatment,
                generation: state.modeGeneration,
                neverAnswered: state.mode.isNeverAnswered,
                serverByteLimit: limit
            )
            state.pairs[ObjectIdentifier(pair)] = pair
            return pair
        }
        guard let pair else {
            client.close(promise: nil)
            return
        }
        // The pair stays listed until its upstream connection is closed too (a connect in flight
        // included), so close() waits for it.
        client.closeFuture.whenComplete { _ in
            pair.close().whenComplete { _ in
                _ = self.state.withLock { $0.pairs.removeValue(forKey: ObjectIdentifier(pair)) }
            }
        }
        pair.start(upstreamHost: self.upstreamHost, upstreamPort: self.upstreamPort)
    }
}

/// What the proxy does to the bytes of an open connection.
private enum Treatment: Equatable {
    case forward
    case paused
    case blackhole
    case latency(TimeAmount)
}

/// One client connection and its upstream connection. Everything about a pair happens on its event
/// loop, the client channel's, which the upstream channel shares: a mode change, a chunk read and a
/// delivery are ordered there, so none overtakes another.
private final class Pair: Sendable {
    /// A chunk on its way in one direction.
    private struct Chunk {
        var bytes: ByteBuffer
        /// When it may be delivered; `nil` while a pause holds it.
        var due: NIODeadline?
    }

    /// The chunks on their way in one direction, oldest first, and the timer set for the oldest.
    private struct Direction {
        var queue = CircularBuffer<Chunk>()
        var timer: (task: Scheduled<Void>, due: NIODeadline)?

        mutating func drop() {
            self.queue.removeAll()
            self.timer?.task.cancel()
            self.timer = nil
        }
    }

    private struct State {
        var treatment: Treatment
        var generation: Int
        /// The upstream connect, while it runs and after.
        var upstream: EventLoopFuture<any Channel>?
        var server: (any Channel)?
        var toServer = Direction()
        var toClient = Direction()
        var serverBytesLeft: Int?
        var truncateAfter: Int?
        var inject: [UInt8]?
        /// Closing or closed (or being reset): nothing more is read, held or delivered.
        var closed = false

        subscript(toServer toServer: Bool) -> Direction {
            get { toServer ? self.toServer : self.toClient }
            // In place, so appending to a queue does not copy it.
            _modify {
                if toServer { yield &self.toServer } else { yield &self.toClient }
            }
        }
    }

    let client: any Channel
    private let neverAnswered: Bool
    private let state: NIOLoopBoundBox<State>

    var eventLoop: any EventLoop { self.client.eventLoop }

    /// Created on the client channel's event loop.
    init(client: any Channel, treatment: Treatment, generation: Int, neverAnswered: Bool, serverByteLimit: Int?) {
        self.client = client
        self.neverAnswered = neverAnswered
        self.state = NIOLoopBoundBox(
            State(treatment: treatment, generation: generation, serverBytesLeft: serverByteLimit),
            eventLoop: client.eventLoop
        )
    }

    /// Connects upstream, then relays; a pair accepted by a blackhole only reads and drops.
    func start(upstreamHost: String, upstreamPort: Int) {
        guard !self.neverAnswered else {
            try? self.client.pipeline.syncOperations.addHandler(Relay(pair: self, fromClient: true))
            try? self.client.syncOptions?.setOption(.autoRead, value: true)
            return
        }
        let upstream = ClientBootstrap(group: self.eventLoop)
            // A TCP-level option (`.socketOption` would set SO_DEBUG, refused to unprivileged users).
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.autoRead, value: false)
            .connect(host: upstreamHost, port: upstreamPort)
        self.state.value.upstream = upstream
        upstream.whenComplete { result in
            switch result {
            case .failure:
                self.client.close(promise: nil)
            case .success(let server):
                self.serverConnected(server)
            }
        }
    }

    private func serverConnected(_ server: any Channel) {
        let closed = self.state.withValue { state in
            if !state.closed { state.server = server }
            return state.closed
        }
        // The client left (or the proxy closed) while the connect was in flight.
        guard !closed else {
            server.close(promise: nil)
            return
        }
        server.closeFuture.whenComplete { _ in self.close() }
        try? server.pipeline.syncOperations.addHandler(Relay(pair: self, fromClient: false))
        try? self.client.pipeline.syncOperations.addHandler(Relay(pair: self, fromClient: true))
        try? server.syncOptions?.setOption(.autoRead, value: true)
        try? self.client.syncOptions?.setOption(.autoRead, value: true)
    }

    /// Bytes arrived from one side: queue them to be passed on, held or delayed, or drop them.
    func received(_ bytes: ByteBuffer, fromClient: Bool) {
        guard !self.neverAnswered else { return }
        let queued = self.state.withValue { state -> Bool in
            guard !state.closed else { return false }
            var bytes = bytes
            if !fromClient, let left = state.serverBytesLeft {
                let pass = min(left, bytes.readableBytes)
                state.serverBytesLeft = left - pass
                bytes = bytes.getSlice(at: bytes.readerIndex, length: pass) ?? ByteBuffer()
            }
            guard bytes.readableBytes > 0 else { return false }
            let due: NIODeadline?
            switch state.treatment {
            case .blackhole: return false
            case .paused: due = nil
            case .forward: due = .now()
            case .latency(let delay): due = .now() + delay
            }
            state[toServer: fromClient].queue.append(Chunk(bytes: bytes, due: due))
            return true
        }
        if queued { self.pump(toServer: fromClient) }
    }

    /// Applies a mode change; a pause that ends releases what it held, behind anything still delayed.
    func apply(_ treatment: Treatment, generation: Int) {
        let release = self.state.withValue { state -> Bool in
            guard generation > state.generation else { return false }
            state.generation = generation
            // A blackholed connection's peer has vanished for good (see `Mode.blackhole`).
            if case .blackhole = state.treatment { return false }
            state.treatment = treatment
            switch treatment {
            case .paused:
                return false
            case .blackhole:
                state.toServer.drop()
                state.toClient.drop()
                return false
            case .forward, .latency:
                let delay: TimeAmount
                if case .latency(let amount) = treatment { delay = amount } else { delay = .zero }
                let now = NIODeadline.now()
                for toServer in [true, false] {
                    for index in state[toServer: toServer].queue.indices where state[toServer: toServer].queue[index].due == nil {
                        state[toServer: toServer].queue[index].due = now + delay
                    }
                }
                return true
            }
        }
        if release {
            self.pump(toServer: true)
            self.pump(toServer: false)
        }
    }

    /// Delivers, in order, every chunk of one direction that is due, and sets a timer for the next one.
    /// A chunk waits for its due time and for every chunk ahead of it.
    private func pump(toServer: Bool) {
        var cut = false
        let (server, deliveries) = self.state.withValue { state -> ((any Channel)?, [ByteBuffer]) in
            guard !state.closed, state.treatment != .paused else { return (nil, []) }
            let now = NIODeadline.now()
            var deliveries: [ByteBuffer] = []
            while let head = state[toServer: toServer].queue.first, let due = head.due {
                guard due <= now else {
                    if state[toServer: toServer].timer?.due != due {
                        state[toServer: toServer].timer?.task.cancel()
                        let task = self.eventLoop.scheduleTask(deadline: due) {
                            self.state.value[toServer: toServer].timer = nil
                            self.pump(toServer: toServer)
                        }
                        state[toServer: toServer].timer = (task, due)
                    }
                    break
                }
                var bytes = state[toServer: toServer].queue.removeFirst().bytes
                if !toServer, let garbage = state.inject {
                    state.inject = nil
                    var joined = ByteBuffer(bytes: garbage)
                    joined.writeImmutableBuffer(bytes)
                    bytes = joined
                }
                if !toServer, let keep = state.truncateAfter {
                    state.truncateAfter = nil
                    deliveries.append(bytes.getSlice(at: bytes.readerIndex, length: min(keep, bytes.readableBytes)) ?? ByteBuffer())
                    // Nothing after the cut is delivered: the pair is reset once the kept bytes went out.
                    state.closed = true
                    cut = true
                    break
                }
                deliveries.append(bytes)
            }
            return (state.server, deliveries)
        }
        // Written outside the state: a write can close a channel, and closing touches the state.
        guard let target = toServer ? server : self.client else { return }
        var last: EventLoopFuture<Void>?
        for bytes in deliveries where bytes.readableBytes > 0 {
            last = target.writeAndFlush(bytes)
        }
        if cut {
            if let last {
                last.whenComplete { _ in _ = self.reset() }
            } else {
                _ = self.reset()
            }
        }
    }

    func chunksInTransit(toServer: Bool) -> Int {
        self.state.value[toServer: toServer].queue.count
    }

    func truncateNextServerChunk(keeping: Int) {
        self.state.value.truncateAfter = keeping
    }

    func injectBeforeNextServerChunk(_ bytes: [UInt8]) {
        self.state.value.inject = bytes
    }

    func disarmReplyFaults() {
        self.state.withValue { state in
            state.truncateAfter = nil
            state.inject = nil
        }
    }

    /// Closes both sides with RST (zero linger) rather than FIN. The linger is set on both channels
    /// before either closes: closing the client first would close the server side, from its close
    /// handler, with a FIN. Returns when both are closed.
    func reset() -> EventLoopFuture<Void> {
        let server = self.state.withValue { state in
            state.closed = true
            state.toServer.drop()
            state.toClient.drop()
            return state.server
        }
        let channels = [self.client, server].compactMap { $0 }
        let lingers = channels.map { channel in
            (channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0))
                ?? self.eventLoop.makeSucceededVoidFuture()
        }
        return EventLoopFuture.andAllComplete(lingers, on: self.eventLoop).flatMap {
            for channel in channels { channel.close(promise: nil) }
            return self.closed
        }
    }

    /// Closes both sides (FIN). Returns when both are closed, an upstream connect still in flight
    /// included.
    @discardableResult
    func close() -> EventLoopFuture<Void> {
        let server = self.state.withValue { state in
            state.closed = true
            state.toServer.drop()
            state.toClient.drop()
            return state.server
        }
        self.client.close(promise: nil)
        server?.close(promise: nil)
        return self.closed
    }

    /// Completes once neither side is open: the client channel closed, and the upstream connect failed
    /// or its channel closed.
    private var closed: EventLoopFuture<Void> {
        let upstream = self.state.value.upstream
        let serverClosed = upstream?.flatMap { $0.closeFuture }.recover { _ in } ?? self.eventLoop.makeSucceededVoidFuture()
        return self.client.closeFuture.recover { _ in }.and(serverClosed).map { _ in }
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

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
