import DNSWire
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import NIOSSL
import NIOTLS
#if canImport(Glibc)
import Glibc
#endif

/// One exchange with one upstream, hardened as RFC 5452 asks: a random ID and a fresh socket (so a fresh,
/// kernel-chosen random source port) per query, and a reply is accepted only if its source address and port,
/// ID and question all match. Anything else is dropped and counted. A truncated UDP reply is retried over TCP.
/// The UDP socket is connected to the upstream: the kernel then delivers only that address's datagrams, and an
/// ICMP port-unreachable comes back as ECONNREFUSED at once, so a refusing upstream fails over in milliseconds
/// instead of after the whole timeout.
///
/// A `tls://` upstream (DNS over TLS, RFC 7858) is asked over a pooled TLS connection only, never over plain UDP or
/// TCP: its answers must not be readable or forgeable on the path, so it has no plain fallback.
struct UpstreamClient: Sendable {
    let group: any EventLoopGroup
    let timeout: TimeAmount
    let mismatches = Counter(label: "signpost_upstream_mismatched_replies_total")
    let pool: TCPPool

    init(group: any EventLoopGroup, timeout: TimeAmount, idleTimeout: TimeAmount = .seconds(10), tls: NIOSSLContext? = nil) {
        self.group = group
        self.timeout = timeout
        self.pool = TCPPool(idleTimeout: idleTimeout, tls: tls)
    }

    struct Timeout: Error {}
    struct Malformed: Error {}
    /// The TLS handshake with a `tls://` upstream failed: refused, a certificate that does not match its NAME or
    /// chain to a trusted CA, or no TLS at all.
    struct HandshakeFailed: Error, CustomStringConvertible {
        var reason: String
        var description: String { "TLS handshake failed: \(reason)" }
    }

    /// Whether an exchange failed because the upstream's port refused it (ICMP port unreachable).
    static func isRefusal(_ error: any Error) -> Bool {
        (error as? IOError)?.errnoCode == ECONNREFUSED
    }

    /// Sends `question` (RD set, EDNS with `udpSize` and the client's DO bit) and returns the parsed reply.
    func exchange(_ question: Question, dnssecOK: Bool, upstream: Upstream) async throws -> Message {
        let id = UInt16.random(in: 0...UInt16.max)
        let query = Self.encodeQuery(question, id: id, dnssecOK: dnssecOK)
        if upstream.isTLS { return try await stream(query, question: question, upstream: upstream) }
        let reply = try await udp(query, id: id, question: question, upstream: upstream.address)
        if reply.header.tc {
            return try await stream(query, question: question, upstream: upstream)
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

    /// Over a pooled TCP or TLS connection to the upstream (RFC 7766, RFC 7858): one connection per upstream,
    /// reused while it stays open, with queries pipelined and replies matched by ID and question.
    private func stream(_ query: ByteBuffer, question: Question, upstream: Upstream) async throws -> Message {
        let connection: TCPConnection
        do { connection = try await pool.connection(to: upstream, group: group, timeout: timeout, mismatches: mismatches) } catch is TCPPool.Closed {
            // A query that reached a forwarder a reload has retired: a connection of its own, closed after it.
            let own = try await pool.open(upstream, group: group, timeout: timeout, mismatches: mismatches)
            defer { own.close() }
            return try await own.exchange(query, question: question, timeout: timeout)
        }
        return try await connection.exchange(query, question: question, timeout: timeout)
    }
}

/// One reusable TCP (or TLS) connection per upstream. Concurrent callers share one connection attempt, so two
/// queries that find no connection do not open two; a connection with no query for `idleTimeout` closes (CoreDNS's
/// `forward` expires its pooled connections after 10 s too); `shutdown()` closes every connection and opens none
/// after it.
final class TCPPool: Sendable {
    private struct State {
        var connections: [Upstream: Task<TCPConnection, any Error>] = [:]
        var closed = false
    }
    private let state = NIOLockedValueBox(State())
    let idleTimeout: TimeAmount
    let tls: NIOSSLContext?

    init(idleTimeout: TimeAmount = .seconds(10), tls: NIOSSLContext? = nil) {
        self.idleTimeout = idleTimeout
        self.tls = tls
    }

    struct Closed: Error {}

    func connection(to upstream: Upstream, group: any EventLoopGroup, timeout: TimeAmount, mismatches: Counter) async throws -> TCPConnection {
        while true {
            let attempt: Task<TCPConnection, any Error> = try state.withLockedValue { s in
                if s.closed { throw Closed() }
                if let existing = s.connections[upstream] { return existing }
                let task = Task { try await self.open(upstream, group: group, timeout: timeout, mismatches: mismatches) }
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

    /// `signpost_upstream_connections_total{upstream}`: connections opened, so reuse shows (one per upstream while
    /// it keeps answering).
    static func opened(_ upstream: Upstream) -> Counter {
        Counter(label: "signpost_upstream_connections_total", dimensions: [("upstream", upstream.description)])
    }

    /// A new connection; for a `tls://` upstream, returned once its handshake has completed, so a refused or failed
    /// handshake fails at once (`UpstreamClient.HandshakeFailed`), and the caller moves on to the next upstream.
    func open(_ upstream: Upstream, group: any EventLoopGroup, timeout: TimeAmount, mismatches: Counter) async throws -> TCPConnection {
        let connection = TCPConnection(mismatches: mismatches)
        let handshake: HandshakeWaiter?
        let context: NIOSSLContext?
        if let name = upstream.tlsName {
            guard let tls else { throw UpstreamClient.HandshakeFailed(reason: "no TLS context (see the error logged at start-up)") }
            (handshake, context) = (HandshakeWaiter(name: name), tls)
        } else {
            (handshake, context) = (nil, nil)
        }
        let idle = idleTimeout
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    let sync = ch.pipeline.syncOperations
                    if let context, let handshake, let name = upstream.tlsName {
                        try sync.addHandler(try NIOSSLClientHandler(context: context, serverHostname: name))
                        try sync.addHandler(handshake)
                    }
                    try sync.addHandler(IdleStateHandler(allTimeout: idle))
                    try sync.addHandler(ByteToMessageHandler(LengthFieldBasedFrameDecoder(lengthFieldBitLength: .twoBytes)))
                    try sync.addHandler(LengthFieldPrepender(lengthFieldBitLength: .twoBytes))
                    try sync.addHandler(connection)
                }
            }
            .connect(to: upstream.address).get()
        connection.attach(channel)
        Self.opened(upstream).increment()
        if let handshake {
            let timer = channel.eventLoop.scheduleTask(in: timeout) { handshake.fail(UpstreamClient.Timeout()) }
            defer { timer.cancel() }
            do { try await handshake.done.futureResult.get() } catch let error as UpstreamClient.Timeout {
                channel.close(promise: nil)
                throw error
            } catch {
                channel.close(promise: nil)
                throw UpstreamClient.HandshakeFailed(reason: "\(error)")
            }
        }
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

    /// Idle for the pool's `idleTimeout`: closed (queries still waiting have their own timers, and a new query
    /// opens another connection).
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent, state.withLockedValue({ $0.pending.isEmpty }) {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Completes `done` when the TLS handshake does and the upstream's certificate names `name`; fails it when the
/// handshake fails, the certificate names something else, or the connection closes first.
final class HandshakeWaiter: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let name: String
    private let promise = NIOLockedValueBox<EventLoopPromise<Void>?>(nil)
    private let settled = NIOLockedValueBox(false)

    init(name: String) { self.name = name }

    /// Whether `certificate`'s DNS names (its subjectAltName; RFC 6125 §6.4, as RFC 7858 §4.2 and RFC 8310 §8 ask)
    /// hold `name`: equal ignoring case, or a wildcard standing for exactly its first label. IP address entries and
    /// the common name do not count. Nil when it does; else the reason.
    static func mismatch(_ certificate: NIOSSLCertificate, name: String) -> String? {
        // NIOSSL's reading of the extension (BoringSSL's parser; the accessor is public but underscored, so a NIOSSL
        // update may rename it: `DoTEndToEndTests` would then fail to build, not pass wrongly).
        let names = certificate._subjectAlternativeNames().filter { $0.nameType == .dnsName }
            .map { String(decoding: $0.contents, as: UTF8.self) }
        let wanted = name.lowercased().split(separator: ".", omittingEmptySubsequences: false)
        for candidate in names {
            let labels = candidate.lowercased().split(separator: ".", omittingEmptySubsequences: false)
            guard labels.count == wanted.count else { continue }
            if labels == wanted || (labels.first == "*" && labels.dropFirst() == wanted.dropFirst()) { return nil }
        }
        return "the certificate does not name \(name) (its DNS names: \(names.isEmpty ? "none" : names.joined(separator: ", ")))"
    }

    /// Set when the handler joins a pipeline.
    var done: EventLoopPromise<Void> { promise.withLockedValue { $0! } }

    func handlerAdded(context: ChannelHandlerContext) {
        promise.withLockedValue { $0 = context.eventLoop.makePromise(of: Void.self) }
    }

    private func first() -> Bool { settled.withLockedValue { was in defer { was = true }; return !was } }

    func fail(_ error: any Error) { if first() { done.fail(error) } }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event {
            let certificate = try? context.pipeline.syncOperations.handler(type: NIOSSLClientHandler.self).peerCertificate
            if let reason = certificate.map({ Self.mismatch($0, name: name) }) ?? "no certificate" {
                fail(UpstreamClient.HandshakeFailed(reason: reason))
                context.close(promise: nil)
                return
            }
            if first() { done.succeed(()) }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(error)
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(UpstreamClient.HandshakeFailed(reason: "the upstream closed the connection"))
        context.fireChannelInactive()
    }

    /// A connection that never came up (refused) tears its pipeline down without going inactive.
    func handlerRemoved(context: ChannelHandlerContext) {
        fail(UpstreamClient.HandshakeFailed(reason: "the connection did not come up"))
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
