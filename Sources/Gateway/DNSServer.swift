import Catalog
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// Serves DNS over UDP and TCP on every listen address.
/// `start()` binds (so start-up errors surface before anything runs); `run()` serves until
/// graceful shutdown, then closes the listeners.
public final class DNSServer: Service, Sendable {
    public struct Configuration: Sendable, Equatable {
        public var listen: [ListenAddress]
        /// A TCP connection with no complete query for this long is closed (RFC 7766 §6.2.3).
        public var tcpIdleTimeout: TimeAmount
        /// `nio`: a NIO DatagramChannel per address. `mmsg`: recvmmsg/sendmmsg threads (UDPBatchServer).
        public var udpEngine: UDPEngine
        /// Sockets and threads per address for the mmsg engine.
        public var udpWorkers: Int
        /// TCP connections open at once; a new one beyond this closes the least recently active one.
        public var tcpMaxConnections: Int
        /// Forwarded queries one TCP connection may have waiting; beyond this its reads pause.
        public var tcpMaxInflight: Int

        public init(listen: [ListenAddress], tcpIdleTimeout: TimeAmount = .seconds(10), udpEngine: UDPEngine = .nio, udpWorkers: Int = 1,
                    tcpMaxConnections: Int = 512, tcpMaxInflight: Int = 32) {
            self.listen = listen
            self.tcpIdleTimeout = tcpIdleTimeout
            self.udpEngine = udpEngine
            self.udpWorkers = udpWorkers
            self.tcpMaxConnections = tcpMaxConnections
            self.tcpMaxInflight = tcpMaxInflight
        }
    }

    public enum UDPEngine: String, Sendable, CaseIterable, Codable {
        case nio, mmsg
    }

    public struct BindError: Error, CustomStringConvertible {
        public var description: String
    }

    private let configuration: Configuration
    private let handler: QueryHandlerSlot
    private let group: any EventLoopGroup
    private let logger: Logger
    private let channels = NIOLockedValueBox<[any Channel]>([])
    private let bound = NIOLockedValueBox<[ListenAddress]>([])
    private let batchServers = NIOLockedValueBox<[UDPBatchServer]>([])
    private let connections: TCPConnections

    public convenience init(configuration: Configuration, handler: QueryHandler, group: any EventLoopGroup, logger: Logger) {
        self.init(configuration: configuration, handler: QueryHandlerSlot(handler), group: group, logger: logger)
    }

    public init(configuration: Configuration, handler: QueryHandlerSlot, group: any EventLoopGroup, logger: Logger) {
        self.connections = TCPConnections(limit: configuration.tcpMaxConnections)
        self.configuration = configuration
        self.handler = handler
        self.group = group
        self.logger = logger
    }

    /// Binds UDP and then TCP on each address; returns the bound addresses (useful with port 0).
    @discardableResult
    public func start() async throws -> [ListenAddress] {
        var result: [ListenAddress] = []
        for address in configuration.listen {
            // Port 0: the kernel picks a free UDP port, which may be taken on TCP; then try another.
            var attempt = 0
            while true {
                attempt += 1
                if configuration.udpEngine == .mmsg {
                    let batch = UDPBatchServer(handler: handler, eventLoop: group, logger: logger)
                    let port: Int
                    do { port = try batch.bind(address, workers: configuration.udpWorkers) } catch {
                        throw BindError(description: "cannot listen on \(address) (udp): \(Self.reason(error))")
                    }
                    let actual = ListenAddress(host: address.host, port: port)
                    do {
                        let tcp = try await bindTCP(actual)
                        channels.withLockedValue { $0.append(tcp) }
                        batchServers.withLockedValue { $0.append(batch) }
                        result.append(actual)
                        break
                    } catch {
                        batch.closeSockets()
                        if address.port != 0 || attempt >= 20 { throw error }
                    }
                    continue
                }
                let udp = try await bindUDP(address)
                let actual = ListenAddress(host: address.host, port: udp.first?.localAddress?.port ?? address.port)
                do {
                    let tcp = try await bindTCP(actual)
                    channels.withLockedValue { $0.append(contentsOf: udp + [tcp]) }
                    result.append(actual)
                    break
                } catch {
                    for channel in udp { try? await channel.close() }
                    if address.port != 0 || attempt >= 20 { throw error }
                }
            }
        }
        bound.withLockedValue { $0 = result }
        return result
    }

    /// Serves until graceful shutdown. "listening on" is logged here, inside the ServiceGroup, so by the
    /// time anyone reads it the catalog has loaded and SIGTERM/SIGINT lead to a graceful shutdown.
    public func run() async throws {
        let batches = batchServers.withLockedValue { $0 }
        for batch in batches { batch.start() }
        for address in bound.withLockedValue({ $0 }) { logger.info("listening on \(address) (udp, tcp)") }
        let all = channels.withLockedValue { $0 }
        await withGracefulShutdownHandler {
            for channel in all { try? await channel.closeFuture.get() }
        } onGracefulShutdown: {
            for batch in batches { batch.requestStop() }
            for channel in all { channel.close(promise: nil) }
        }
    }

    /// One UDP socket per event loop, sharing the port through SO_REUSEPORT, so the kernel spreads datagrams
    /// over the loops (`ReusePort` says when: a fixed port and more than one loop).
    private func bindUDP(_ address: ListenAddress) async throws -> [any Channel] {
        let handler = self.handler
        let logger = self.logger
        let loops = Array(group.makeIterator())
        var port = address.port
        var bound: [any Channel] = []
        do {
            let count = try ReusePort.socketCount(try SocketAddress(ipAddress: address.host, port: port), workers: loops.count)
            for loop in loops.prefix(count) {
                var bootstrap = DatagramBootstrap(group: loop)
                    .channelOption(.datagramVectorReadMessageCount, value: 16)
                    .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 16 * 4096))
                    .channelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(UDPQueryHandler(handler: handler, logger: logger))
                        }
                    }
                if count > 1 { bootstrap = bootstrap.channelOption(ChannelOptions.Types.SocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_REUSEPORT)), value: 1) }
                let channel = try await bootstrap.bind(host: address.host, port: port).get()
                bound.append(channel)
                port = channel.localAddress?.port ?? port
            }
            return bound
        } catch {
            for channel in bound { try? await channel.close() }
            throw BindError(description: "cannot listen on \(address) (udp): \(Self.reason(error))")
        }
    }

    private func bindTCP(_ address: ListenAddress) async throws -> any Channel {
        let handler = self.handler
        let logger = self.logger
        let idle = configuration.tcpIdleTimeout
        let maxInflight = configuration.tcpMaxInflight
        let connections = self.connections
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 1024)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                connections.admit(channel)
                return channel.eventLoop.makeCompletedFuture {
                    let ops = channel.pipeline.syncOperations
                    try ops.addHandler(ByteToMessageHandler(LengthFieldBasedFrameDecoder(lengthFieldBitLength: .twoBytes)))
                    try ops.addHandler(LengthFieldPrepender(lengthFieldBitLength: .twoBytes))
                    try ops.addHandler(TCPQueryHandler(handler: handler, logger: logger, idleTimeout: idle, maxInflight: maxInflight,
                                                       connections: connections))
                }
            }
        do {
            return try await bootstrap.bind(host: address.host, port: address.port).get()
        } catch {
            throw BindError(description: "cannot listen on \(address) (tcp): \(Self.reason(error))")
        }
    }

    static func reason(_ error: any Error) -> String {
        if let io = error as? IOError { return String(cString: strerror(io.errnoCode)).lowercased() }
        return "\(error)"
    }
}

/// One datagram in, at most one out. Never closes the channel: a single bad datagram
/// (or an ICMP error surfacing as a write failure) must not stop the listener.
final class UDPQueryHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    let slot: QueryHandlerSlot
    let logger: Logger

    init(handler: QueryHandlerSlot, logger: Logger) {
        self.slot = handler
        self.logger = logger
    }

    convenience init(handler: QueryHandler, logger: Logger) {
        self.init(handler: QueryHandlerSlot(handler), logger: logger)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let started = Uptime.nanoseconds
        let envelope = unwrapInboundIn(data)
        let handler = slot.handler
        switch handler.handle(envelope.data, transport: .udp, client: envelope.remoteAddress, eventLoop: context.eventLoop) {
        case .now(let response):
            handler.observe(envelope.data, response, .udp, started, envelope.remoteAddress)
            guard let response = Self.rateLimited(handler, response, envelope.remoteAddress) else { return }
            context.write(wrapOutboundOut(AddressedEnvelope(remoteAddress: envelope.remoteAddress, data: response)), promise: nil)
        case .later(let future):
            let channel = context.channel
            future.whenSuccess { response in
                handler.observe(envelope.data, response, .udp, started, envelope.remoteAddress)
                guard let response = Self.rateLimited(handler, response, envelope.remoteAddress) else { return }
                channel.writeAndFlush(AddressedEnvelope(remoteAddress: envelope.remoteAddress, data: response), promise: nil)
            }
        }
    }

    /// The response after rate limiting: itself, its truncated stand-in, or nil (dropped).
    static func rateLimited(_ handler: QueryHandler, _ response: ByteBuffer?, _ client: SocketAddress) -> ByteBuffer? {
        guard let response, let rrl = handler.rrl else { return response }
        return ResponseRateLimiter.apply(rrl.decide(client), to: response)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("udp error", metadata: ["error": "\(error)"])
    }
}

/// Answers each length-framed query as it arrives, so pipelined queries never wait on one another.
/// - A connection with no complete query for `idleTimeout` is closed (RFC 7766 §6.2.3); a client trickling
///   bytes of a frame does not keep it open.
/// - At most `maxInflight` forwarded queries wait per connection; beyond that, reading pauses until one is answered.
final class TCPQueryHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let slot: QueryHandlerSlot
    let logger: Logger
    let idleTimeout: TimeAmount
    let maxInflight: Int
    let connections: TCPConnections?
    private var idleTimer: Scheduled<Void>?
    private var inflight = 0

    init(handler: QueryHandlerSlot, logger: Logger, idleTimeout: TimeAmount = .seconds(10), maxInflight: Int = 32,
         connections: TCPConnections? = nil) {
        self.slot = handler
        self.logger = logger
        self.idleTimeout = idleTimeout
        self.maxInflight = maxInflight
        self.connections = connections
    }

    convenience init(handler: QueryHandler, logger: Logger) {
        self.init(handler: QueryHandlerSlot(handler), logger: logger)
    }

    func handlerAdded(context: ChannelHandlerContext) { armIdleTimer(context) }

    func handlerRemoved(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        connections?.remove(context.channel)
    }

    private func armIdleTimer(_ context: ChannelHandlerContext) {
        idleTimer?.cancel()
        let channel = context.channel
        idleTimer = context.eventLoop.scheduleTask(in: idleTimeout) { channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let started = Uptime.nanoseconds
        let frame = unwrapInboundIn(data)
        if frame.readableBytes >= 12 {  // a query, not an empty or header-less frame, keeps the connection open
            armIdleTimer(context)
            connections?.touch(context.channel)
        }
        let handler = slot.handler
        let client = context.channel.remoteAddress
        switch handler.handle(frame, transport: .tcp, client: client, eventLoop: context.eventLoop) {
        case .now(let response):
            handler.observe(frame, response, .tcp, started, client)
            guard let response else { return }
            context.write(wrapOutboundOut(response), promise: nil)
        case .later(let future):
            // Forwarded answers go out when they arrive; pipelined queries do not wait for them (RFC 7766).
            inflight += 1
            if inflight >= maxInflight { context.channel.setOption(.autoRead, value: false).whenFailure { _ in } }
            let channel = context.channel
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            future.hop(to: context.eventLoop).whenComplete { result in
                let this = loopBound.value
                this.inflight -= 1
                if this.inflight == this.maxInflight - 1 {
                    channel.setOption(.autoRead, value: true).whenSuccess { channel.read() }
                }
                guard case .success(let response) = result else { return }
                handler.observe(frame, response, .tcp, started, client)
                guard let response else { return }
                channel.writeAndFlush(response, promise: nil)
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("tcp connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }
}

/// The open TCP connections, so that a flood of idle or half-open ones cannot lock new clients out: beyond
/// `limit`, admitting one closes the connection that has been quiet longest.
final class TCPConnections: Sendable {
    private let limit: Int
    private let open = NIOLockedValueBox<[ObjectIdentifier: (channel: any Channel, active: UInt64)]>([:])

    init(limit: Int) { self.limit = max(1, limit) }

    func admit(_ channel: any Channel) {
        let evicted: (any Channel)? = open.withLockedValue { open in
            open[ObjectIdentifier(channel)] = (channel, Uptime.nanoseconds)
            guard open.count > limit, let oldest = open.min(by: { $0.value.active < $1.value.active }) else { return nil }
            open[oldest.key] = nil
            return oldest.value.channel
        }
        evicted?.close(promise: nil)
    }

    func touch(_ channel: any Channel) {
        open.withLockedValue { $0[ObjectIdentifier(channel)]?.active = Uptime.nanoseconds }
    }

    func remove(_ channel: any Channel) {
        _ = open.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    var count: Int { open.withLockedValue { $0.count } }
}
