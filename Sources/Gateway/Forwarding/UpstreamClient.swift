import DNSWire
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix

/// One exchange with one upstream, hardened as RFC 5452 asks: a random ID and a fresh socket (so a fresh,
/// kernel-chosen random source port) per query, and a reply is accepted only if its source address and port,
/// ID and question all match. Anything else is dropped and counted. A truncated UDP reply is retried over TCP.
struct UpstreamClient: Sendable {
    let group: any EventLoopGroup
    let timeout: TimeAmount
    let mismatches = Counter(label: "signpost_upstream_mismatched_replies_total")

    struct Timeout: Error {}
    struct Malformed: Error {}

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
        let local = upstream.protocol == .inet6 ? "::" : "0.0.0.0"
        let channel = try await DatagramBootstrap(group: group)
            .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(handler) } }
            .bind(host: local, port: 0).get()
        defer { channel.close(promise: nil) }
        let timer = channel.eventLoop.scheduleTask(in: timeout) { promise.fail(Timeout()) }
        defer { timer.cancel() }
        channel.writeAndFlush(AddressedEnvelope(remoteAddress: upstream, data: query), promise: nil)
        return try await promise.result()
    }

    private func tcp(_ query: ByteBuffer, id: UInt16, question: Question, upstream: SocketAddress) async throws -> Message {
        let promise = OncePromise(group.next().makePromise(of: Message.self))
        let handler = TCPReplyHandler(id: id, question: question, promise: promise, mismatches: mismatches)
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(ByteToMessageHandler(LengthFieldBasedFrameDecoder(lengthFieldBitLength: .twoBytes)))
                    try ch.pipeline.syncOperations.addHandler(LengthFieldPrepender(lengthFieldBitLength: .twoBytes))
                    try ch.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(to: upstream).get()
        defer { channel.close(promise: nil) }
        let timer = channel.eventLoop.scheduleTask(in: timeout) { promise.fail(Timeout()) }
        defer { timer.cancel() }
        channel.writeAndFlush(query, promise: nil)
        return try await promise.result()
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

private final class TCPReplyHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let id: UInt16
    let question: Question
    let promise: OncePromise
    let mismatches: Counter

    init(id: UInt16, question: Question, promise: OncePromise, mismatches: Counter) {
        self.id = id
        self.question = question
        self.promise = promise
        self.mismatches = mismatches
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let m = UpstreamClient.matches(unwrapInboundIn(data), id: id, question: question) else {
            mismatches.increment()
            return
        }
        promise.succeed(m)
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(UpstreamClient.Malformed())
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
