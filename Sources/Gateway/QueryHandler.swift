import Atomics
import Catalog
import DNSWire
import Logging
import NIOCore

/// The handler the front ends use, swapped whole when the configuration is reloaded (SIGHUP).
/// Each datagram, frame or batch loads it once, so a query is answered by one handler from start to end.
public final class QueryHandlerSlot: Sendable {
    final class Box: AtomicReference, Sendable {
        let handler: QueryHandler
        init(_ handler: QueryHandler) { self.handler = handler }
    }

    private let current: ManagedAtomic<Box>

    public init(_ handler: QueryHandler) { current = ManagedAtomic(Box(handler)) }

    public var handler: QueryHandler { current.load(ordering: .acquiring).handler }

    public func replace(with handler: QueryHandler) { current.store(Box(handler), ordering: .releasing) }
}

/// Bytes in, bytes out: parse, resolve against the current snapshot, encode, truncate.
/// Shared by the UDP and TCP front ends and by the tests. A class: the front ends take it once per batch or frame,
/// and a copy of a struct this size is a retain per field (about 1.5% of the CPU per query; DESIGN.md).
public final class QueryHandler: Sendable {
    public enum Transport: Sendable { case udp, tcp }

    public let resolver: Resolver
    public let store: SnapshotStore
    public let logger: Logger
    /// Past this much staleness (a registry out of contact), names in the domain get SERVFAIL.
    public let maxStale: Duration?

    /// Names outside the domain and the zones go here, for clients the ACL allows; nil: REFUSED.
    public let forwarder: Forwarder?
    public let access: AccessControl
    /// Metrics and the optional query log, recorded by the front ends.
    public let observer: QueryObserver?
    /// Response rate limiting for UDP (`--rrl-rate`), applied by the front ends; nil when off.
    public let rrl: ResponseRateLimiter?

    public init(resolver: Resolver, store: SnapshotStore, logger: Logger, maxStale: Duration? = nil,
                forwarder: Forwarder? = nil, access: AccessControl = AccessControl(), observer: QueryObserver? = nil,
                rrl: ResponseRateLimiter? = nil) {
        self.rrl = rrl
        self.resolver = resolver
        self.store = store
        self.logger = logger
        self.maxStale = maxStale
        self.forwarder = forwarder
        self.access = access
        self.observer = observer
    }

    /// A response now, or later (forwarded); nil means drop.
    public enum Handled: Sendable {
        case now(ByteBuffer?)
        case later(EventLoopFuture<ByteBuffer?>)
    }

    /// The full query path: our own data answered at once; other names forwarded when allowed.
    public func handle(_ packet: ByteBuffer, transport: Transport, client: SocketAddress?, eventLoop: any EventLoop) -> Handled {
        if let fast = fastResponse(packet, transport: transport, client: client, allocator: ByteBufferAllocator()) { return .now(fast) }
        return handleWithoutFastPath(packet, transport: transport, client: client, eventLoop: eventLoop)
    }

    /// The general path alone: what the fast paths must match byte for byte.
    func handleWithoutFastPath(_ packet: ByteBuffer, transport: Transport, client: SocketAddress?, eventLoop: any EventLoop) -> Handled {
        let parsed = Query.parse(packet)
        // Forwarded: to a `--forward-zone`'s upstreams, or else `--upstream`'s (none given: REFUSED, as with forwarding off).
        guard let forwarder, case .query(let query) = parsed, case .upstreams(let zone) = resolver.forwarding(query.question, in: store.snapshot),
              !forwarder.upstreams(for: zone).isEmpty else {
            return .now(respond(parsed, transport: transport, client: client, allocator: ByteBufferAllocator()))
        }
        let config = resolver.configuration
        var h = replyHeader(to: query.header)
        h.cd = query.header.cd
        let limit = self.limit(udpSize: query.edns?.udpSize, transport)
        let reply = ResponseEncoder.Reply(header: h, question: query.question, edns: query.edns, rcode: 0,
                                          udpSize: UInt16(config.maxUDPSize))
        guard access.mayRecurse(client) else {
            var r = reply
            r.rcode = RCode.refused
            return .now(ResponseEncoder.encode(Answer(rcode: RCode.refused, authoritative: false), reply: r, limit: limit,
                                               allocator: ByteBufferAllocator()))
        }
        let dnssecOK = query.edns?.dnssecOK ?? false
        if let hit = forwarder.cached(query.question, dnssecOK: dnssecOK) {
            var r = reply
            r.rcode = hit.rcode
            return .now(ResponseEncoder.encode(hit, reply: r, limit: limit, allocator: ByteBufferAllocator()))
        }
        return .later(eventLoop.makeFutureWithTask {
            var r = reply
            let answer: Answer
            switch await forwarder.resolve(query.question, dnssecOK: dnssecOK, zone: zone) {
            case .answer(let a): answer = a
            case .failure: answer = Answer(rcode: RCode.servFail, authoritative: false)
            }
            r.rcode = answer.rcode
            return ResponseEncoder.encode(answer, reply: r, limit: limit, allocator: ByteBufferAllocator())
        })
    }

    /// What every reply starts from: the query's ID, opcode and RD, with QR set, and RA exactly when a forwarder
    /// is configured.
    func replyHeader(to query: DNSHeader) -> DNSHeader {
        var h = DNSHeader(id: query.id)
        h.qr = true
        h.opcode = query.opcode
        h.rd = query.rd
        h.ra = forwarder != nil
        return h
    }

    /// Where a client is, for nearest-first answers, and the scope of the reply's Client Subnet option: nil and 0
    /// when locality is off (without reading the address). `lend` lends the client's address bytes, from either
    /// form Signpost holds one in (`withClientAddress`: a `SocketAddress`, or the recvmmsg engine's raw `sockaddr`,
    /// whose queries carry no Client Subnet option: the fast path leaves those to the general path).
    typealias Located = (ClientLocality?, scope: UInt8)
    func clientLocality(subnet: ClientSubnet? = nil, _ lend: ((UnsafeRawBufferPointer) -> Located) -> Located?) -> Located {
        guard resolver.configuration.locality.mode != .off else { return (nil, 0) }
        return lend { resolver.clientLocality(address: $0, subnet: subnet) } ?? resolver.clientLocality(address: nil, subnet: subnet)
    }

    /// True when the data is older than `--max-stale` allows.
    func tooStale(_ question: Question) -> Bool {
        guard let maxStale, let age = store.staleness(), age > maxStale else { return false }
        return resolver.servedDomain(containing: question.name) != nil
    }

    /// The response for `packet`, or nil when it must be dropped.
    public func respond(to packet: ByteBuffer, transport: Transport, allocator: ByteBufferAllocator) -> ByteBuffer? {
        fastResponse(packet, transport: transport, allocator: allocator)
            ?? respond(Query.parse(packet), transport: transport, allocator: allocator)
    }

    /// The general path alone, without the fast path in front: what the fast path must match byte for byte.
    public func respondWithoutFastPath(to packet: ByteBuffer, transport: Transport, allocator: ByteBufferAllocator) -> ByteBuffer? {
        respond(Query.parse(packet), transport: transport, allocator: allocator)
    }

    func respond(_ parsed: QueryParse, transport: Transport, client: SocketAddress? = nil, allocator: ByteBufferAllocator) -> ByteBuffer? {
        let config = resolver.configuration
        switch parsed {
        case .drop(let reason):
            logger.debug("dropped packet", metadata: ["packet.reason": "\(reason)"])
            return nil
        case .reject(let header, let question, let edns, let rcode, let reason):
            if let reason { logger.debug("malformed query", metadata: ["packet.reason": "\(reason)"]) }
            // A rejected query's options get no answer: its OPT comes back bare (a BADVERS query's options are of a
            // version we do not speak; a FORMERR one's may be what was malformed). `QueryObserver.rcode` relies on it.
            var edns = edns
            edns?.clientSubnet = nil
            let reply = ResponseEncoder.Reply(header: replyHeader(to: header), question: question, edns: edns, rcode: rcode,
                                              udpSize: UInt16(config.maxUDPSize))
            return ResponseEncoder.encode(Answer(rcode: rcode, authoritative: false), reply: reply,
                                          limit: limit(udpSize: edns?.udpSize, transport), allocator: allocator)
        case .query(let query):
            let (located, scope) = clientLocality(subnet: query.edns?.clientSubnet) { withClientAddress(client, $0) }
            let answer = tooStale(query.question)
                ? Answer(rcode: RCode.servFail, authoritative: false)
                : resolver.resolve(query.question, in: store.snapshot, client: located)
            var h = replyHeader(to: query.header)
            h.aa = answer.authoritative
            h.cd = query.header.cd
            var edns = query.edns
            // The Client Subnet option comes back with the scope the answer covers: all addresses (0) unless nearest
            // first shaped it.
            edns?.clientSubnet?.scopePrefix = answer.dependsOnClient ? scope : 0
            let reply = ResponseEncoder.Reply(header: h, question: query.question, edns: edns, rcode: answer.rcode,
                                              udpSize: UInt16(config.maxUDPSize))
            return ResponseEncoder.encode(answer, reply: reply, limit: limit(udpSize: query.edns?.udpSize, transport), allocator: allocator)
        }
    }

    /// 512 bytes without EDNS (RFC 1035); with EDNS the client's size, at least 512 and at most
    /// our cap (RFC 6891 §6.2.5); 65535 over TCP.
    /// How big a reply may be: 64 KiB over TCP; over UDP 512 bytes without EDNS, else the client's size between 512
    /// and `--max-udp-size`.
    func limit(udpSize: UInt16?, _ transport: Transport) -> Int {
        if transport == .tcp { return 65535 }
        guard let udpSize else { return 512 }
        return min(max(Int(udpSize), 512), resolver.configuration.maxUDPSize)
    }
}
