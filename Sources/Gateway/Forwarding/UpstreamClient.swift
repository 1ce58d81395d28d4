import DNSWire
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// One exchange with one upstream, hardened as RFC 5452 asks: a random ID and a fresh socket (so a fresh,
/// kernel-chosen random source port) per query, and a reply is accepted only if its source address and port,
/// ID and question all match. Anything else is dropped and counted. A truncated UDP reply is retried over TCP.
/// The UDP socket is connected to the upstream: the kernel then delivers only that address's datagrams, and an
/// ICMP port-unreachable comes back as ECONNREFUSED at once, so a refusing upstream fails over in milliseconds
/// instead of after the whole timeout.
struct UpstreamClient: Sendable {
    let group: any EventLoopGroup
    let timeout: TimeAmount
    let mismatches = Counter(label: "signpost_upstream_mismatched_replies_total")
    let pool = TCPPool()

    struct Timeout: Error {}
    struct Malformed: Error {}

    /// Whether an exchange failed because the upstream's port refused it (ICMP port unreachable).
    static func isRefusal(_ error: any Error) -> Bool {
        (error as? IOError)?.errnoCode == ECONNREFUSED
    }

    /// Sends `question` (RD set, EDNS with `udpSize` and the client's DO bit) and returns the parsed reply.
    func exchange(_ question: Question, dnssecOK: Bool, upstream: SocketAddress) async throws -> Message {
        let id = UInt16.random(in: 0...UInt16.max)
        let query = Self.encodeQuery(question, id: id, dnssecOK: dnssecOK)
        let reply = try await udp(query, id: id, question: question, upstream: upstream)
        if reply.header.tc {
            return try await tcp(query, id: id, question: question, upstream: upstream)
        }
        return reply
    }

    static func encodeQuery(_ question: Question, id: UInt16, dnssecOK: Bool) -> ByteBuffer {
        var h = DNSHeader(id: id)
        h.rd = true
        var w = MessageWriter(buffer: ByteBuffer())
        w.writeQuestion(question)
        w.writeOPT(udpSize: 1232, dnssecOK: dnssecOK)
        return w.finish(header: h)
    }

    /// True when `reply` answers exactly our query.
    static func matches(_ reply: ByteBuffer, id: UInt16, question: Question) -> Message? {
        guard let m = try? Message(from: reply), m.header.qr, m.header.id == id, m.questions.count == 1,
              m.questions[0].type == question.type, m.questions[0].qclass == question.qclass,
              m.questions[0].name.wire == question.name.wire else { return nil }
        return m
    }

    private func udp(_ query: ByteBuffer, id: UInt16, question: Question, upstream: SocketAddress) async throws -> Message {
        let promise = OncePromise(group.next().makePromise(of: Message.self))
        let handler = ReplyHandler(upstream: upstream, id: id, question: question, promise: promise, mismatches: mismatches)
        let channel = try await DatagramBootstrap(group: group)
            .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(handler) } }
            .connect(to: upstream).get()
        defer { channel.close(promise: nil) }
        let timer = channel.eventLoop.scheduleTask(in: timeout) { promise.fail(Timeout()) }
        defer { timer.cancel() }
        channel.writeAndFlush(query, promise: nil)
        return try await promise.result()
    }

    /// Over a pooled TCP connection to the upstream (RFC 7766): one connection per upstream, reused while the
    /// upstream keeps it open, with queries pipelined and replies matched by ID and question.
    private func tcp(_ query: ByteBuffer, id: UInt16, question: Question, upstream: SocketAddress) async throws -> Message {
        let connection: TCPConnection
        do { connection = try await pool.connection(to: upstream, group: group, timeout: timeout, mismatches: mismatches) } catch is TCPPool.Closed {
            // A query that reached a forwarder a reload has retired: a connection of its own, closed after it.
            let own = try await TCPPool.open(upstream, group: group, timeout: timeout, mismatches: mismatches)
            defer { own.close() }
            return try await own.exchange(query, question: question, timeout: timeout)
        }
        return try await connection.exchange(query, question: question, timeout: timeout)
    }
}

/// One reusable TCP connection per upstream. Concurrent callers share one connection attempt, so two queries that
/// find no connection do not open two; `shutdown()` closes every connection and opens none after it.
final class TCPPool: Sendable {
    private struct State {
        var connections: [SocketAddress: Task<TCPConnection, any Error>] = [:]
        var closed = false
    }
    private let state = NIOLockedValueBox(State())

    struct Closed: Error {}

    func connection(to upstream: SocketAddress, group: any EventLoopGroup, timeout: TimeAmount, mismatches: Counter) async throws -> TCPConnection {
        while true {
            let attempt: Task<TCPConnection, any Error> = try state.withLockedValue { s in
                if s.closed { throw Closed() }
                if let existing = s.connections[upstream] { return existing }
                let task = Task { try await Self.open(upstream, group: group, timeout: timeout, mismatches: mismatches) }
                s.connections[upstream] = task
                return task
            }
            do {
                let connection = try await attempt.value
                if connection.isOpen { return connection }
            } catch {
                state.withLockedValue { s in if s.connections[upstream] == attempt { s.connections[upstream] = nil } }
                throw error
            }
            // Closed by the upstream since: forget it (unless someone already replaced it) and open another.
            state.withLockedValue { s in if s.connections[upstream] == attempt { s.connections[upstream] = nil } }
        }
    }

    static func open(_ upstream: SocketAddress, group: any EventLoopGroup, timeout: TimeAmount, mismatches: Counter) async throws -> TCPConnection {
        let connection = TCPConnection(mismatches: mismatches)
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(ByteToMessageHandler(LengthFieldBasedFrameDecoder(lengthFieldBitLength: .twoBytes)))
                    try ch.pipeline.syncOperations.addHandler(LengthFieldPrepender(lengthFieldBitLength: .twoBytes))
                    try ch.pipeline.syncOperations.addHandler(connection)
                }
            }
            .connect(to: upstream).get()
        connection.attach(channel)
        return connection
    }

    /// Closes every connection; the pool opens none after this.
    func shutdown() {
        let attempts = state.withLockedValue { s in
            defer { s.connections = [:]; s.closed = true }
            return Array(s.connections.values)
        }
        for attempt in attempts {
            Task { (try? await attempt.value)?.close() }
        }
    }
}

/// A TCP connection with queries in flight, keyed by ID.
final class TCPConnection: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    private let state = NIOLockedValueBox<(channel: (any Channel)?, open: Bool, pending: [UInt16: (Question, OncePromise)])>((nil, true, [:]))
    private let mismatches: Counter

    init(mismatches: Counter) { self.mismatches = mismatches }

    var isOpen: Bool { state.withLockedValue { $0.open } }

    func attach(_ channel: any Channel) { state.withLockedValue { $0.channel = channel } }

    func close() { state.withLockedValue { $0.channel }?.close(promise: nil) }

    func exchange(_ query: ByteBuffer, question: Question, timeout: TimeAmount) async throws -> Message {
        guard let channel = state.withLockedValue({ $0.channel }) else { throw UpstreamClient.Malformed() }
        let promise = OncePromise(channel.eventLoop.makePromise(of: Message.self))
        // A fresh random ID, unique on this connection.
        var query = query
        let id: UInt16 = state.withLockedValue { s in
            var id = UInt16.random(in: 0...UInt16.max)
            while s.pending[id] != nil { id = UInt16.random(in: 0...UInt16.max) }
            s.pending[id] = (question, promise)
            return id
        }
        query.setInteger(id, at: query.readerIndex)
        let timer = channel.eventLoop.scheduleTask(in: timeout) { promise.fail(UpstreamClient.Timeout()) }
        defer {
            timer.cancel()
            state.withLockedValue { _ = $0.pending.removeValue(forKey: id) }
        }
        channel.writeAndFlush(query, promise: nil)
        return try await promise.result()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard let id = frame.getInteger(at: frame.readerIndex, as: UInt16.self),
              let (question, promise) = state.withLockedValue({ $0.pending[id] }),
              let m = UpstreamClient.matches(frame, id: id, question: question) else {
            mismatches.increment()
            return
        }
        promise.succeed(m)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let pending = state.withLockedValue { s in defer { s.open = false; s.pending = [:] }; return s.pending }
        for (_, p) in pending.values { p.fail(UpstreamClient.Malformed()) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

private final class ReplyHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let upstream: SocketAddress
    let id: UInt16
    let question: Question
    let promise: OncePromise
    let mismatches: Counter

    init(upstream: SocketAddress, id: UInt16, question: Question, promise: OncePromise, mismatches: Counter) {
        self.upstream = upstream
        self.id = id
        self.question = question
        self.promise = promise
        self.mismatches = mismatches
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        guard envelope.remoteAddress == upstream, let m = UpstreamClient.matches(envelope.data, id: id, question: question) else {
            mismatches.increment()
            return
        }
        promise.succeed(m)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(error)
    }
}

/// A promise that only its first completion settles; later replies and timers are ignored.
final class OncePromise: Sendable {
    private let promise: EventLoopPromise<Message>
    private let done = NIOLockedValueBox(false)

    init(_ promise: EventLoopPromise<Message>) { self.promise = promise }

    private func first() -> Bool { done.withLockedValue { was in defer { was = true }; return !was } }

    func succeed(_ m: Message) { if first() { promise.succeed(m) } }
    func fail(_ e: any Error) { if first() { promise.fail(e) } }
    func result() async throws -> Message { try await promise.futureResult.get() }
}
