import Catalog
import DNSWire
import NIOCore

/// The hot paths, for plain queries (`PlainQuery`):
/// - the positive service, node and addr plans (`Resolver.classify`, the same naming rules the general path
///   uses): A, AAAA or SRV for a service by any of its names (plain, tag, named port, datacenter, RFC 2782,
///   dotted, of any length) from its pre-encoded templates, and A or AAAA for a node or an addr name written in
///   place, all by copying bytes, without building a `Query`, an `Answer` or any other heap object;
/// - a fresh forwarding-cache hit, answered from the entry's encoded records, with the TTLs counted down in place.
/// Whatever they do not cover (negative answers, other types, hostname instances, truncation, staleness, stale or
/// expiring cache entries, clients the ACL refuses, malformed packets) returns nil and goes through the general
/// path, which gives byte-identical answers; differential tests hold the two together.
extension QueryHandler {
    public struct FastPlan {
        enum Source {
            case service(ServiceEntry, EncodedAnswers, AnswerTemplate)
            /// A node's addresses of the asked family.
            case addresses(Node, count: Int)
            /// An addr name's one address: the hex label at this span of the name.
            case addr(NameSpan)
            case cache(ForwardCache.Wire, age: UInt32)
        }
        let source: Source
        let query: PlainQuery
        /// The whole response, in bytes.
        public let size: Int
    }

    /// Decides whether a fast path answers `packet`, and how big the answer is. Reads, never writes (but for the
    /// cache's recency, and templates encoded on first use). `mayRecurse` is the recursion ACL for this client,
    /// asked only for forwarded names.
    /// `client`: where the client is, asked only for a service answer with `--locality` on.
    @inline(__always)
    public func fastPlan(_ packet: UnsafeRawBufferPointer, transport: Transport, mayRecurse: () -> Bool = { false },
                         client: () -> ClientLocality? = { nil }) -> FastPlan? {
        guard let query = PlainQuery.parse(packet) else { return nil }
        let name = UnsafeRawBufferPointer(rebasing: packet[DNSHeader.size..<query.nameEnd])
        let snapshot = store.snapshot
        let plan = resolver.classify(name, in: snapshot, zoneHolds: { _ in true })
        // Our own data: A, AAAA or SRV in class IN, not past --max-stale.
        var answerable: Bool {
            guard query.qclass == DNSClass.inet, query.type == RRType.a || query.type == RRType.aaaa || query.type == RRType.srv else { return false }
            if let maxStale, let age = store.staleness(), age > maxStale { return false }
            return true
        }
        let source: FastPlan.Source
        let bodySize: Int
        // One switch over the plan, which it consumes: each look at `plan.kind` copied the plan (and retained what
        // it holds).
        let (alt, datacenter) = (plan.alt, plan.datacenter)
        switch (consume plan).kind {
        case .outside:
            return cachePlan(packet, query, transport, mayRecurse)
        case .service(let entry, let selector):
            guard answerable else { return nil }
            // SRV targets name the domain: the templates are the primary domain's.
            if query.type == RRType.srv && alt { return nil }
            // Nearest-first answers: each client zone has its templates.
            let encoded = resolver.templates(entry, selector, datacenter: datacenter, name: name, in: snapshot, client: client())
            guard let template = encoded.template(query.type) else { return nil }
            (source, bodySize) = (.service(entry, encoded, template), template.bodySize)
        case .node(let node):
            guard answerable, query.type != RRType.srv, case let n = Self.nodeAddresses(node, query.type), n > 0 else { return nil }
            (source, bodySize) = (.addresses(node, count: n), n * (query.type == RRType.a ? 16 : 28))
        case .addr(let span):
            guard answerable else { return nil }
            let width = Resolver.hexAddress(UnsafeRawBufferPointer(rebasing: name[span.start..<span.end]))
            guard width == (query.type == RRType.a ? 4 : query.type == RRType.aaaa ? 16 : 0) else { return nil }
            (source, bodySize) = (.addr(span), 12 + width!)
        default:
            return nil
        }
        let size = query.questionEnd + bodySize + (query.edns == nil ? 0 : 11)
        guard size <= limit(udpSize: query.edns?.udpSize, transport) else { return nil }
        return FastPlan(source: source, query: query, size: size)
    }

    /// How many distinct addresses of the asked family a node answers (its own, then its tagged LAN ones, as
    /// `nodeAnswer` lists them); 0 when any is a hostname, which the general path follows as a CNAME.
    /// The closure is non-escaping (not optional): an escaping one would put the writer's captured state in a heap
    /// box on every query (2 mallocs for a node answer).
    static func nodeAddresses(_ node: Node, _ type: UInt16, write: (Int, Address) -> Void = { _, _ in }) -> Int {
        if case .hostname = node.address { return 0 }
        var n = 0
        Resolver.eachDistinctAddress(count: 1 + node.lanAddresses.count, { $0 == 0 ? node.address : node.lanAddresses[$0 - 1] },
                                     type: type) { a in
            write(n, a)
            n += 1
        }
        return n
    }

    private func cachePlan(_ packet: UnsafeRawBufferPointer, _ query: PlainQuery, _ transport: Transport,
                           _ mayRecurse: () -> Bool) -> FastPlan? {
        guard let forwarder else { return nil }
        let name = UnsafeRawBufferPointer(rebasing: packet[DNSHeader.size..<query.nameEnd])
        // Not in a served domain (the caller's plan said so), nor otherwise ours (`outsideSource`): a zone's, or a
        // reverse name we hold a PTR for, even if an upstream's answer is still cached.
        guard mayRecurse(), let owned = DNSName(wire: name), case .forwarded = resolver.outsideSource(owned, query.type, in: store.snapshot) else {
            return nil
        }
        let key = ForwardCache.Key(name: owned, type: query.type, qclass: query.qclass, dnssecOK: query.edns?.dnssecOK ?? false)
        guard let (wire, age) = forwarder.cache.wire(key) else { return nil }
        let size = query.questionEnd + wire.body.count + (query.edns == nil ? 0 : 11)
        guard size <= limit(udpSize: query.edns?.udpSize, transport) else { return nil }
        return FastPlan(source: .cache(wire, age: age), query: query, size: size)
    }

    /// Plans and writes in one step, into `out` (room for any UDP answer): the answer's length, or nil for the
    /// general path. With both steps inlined here the plan never leaves this function, so nothing it holds is
    /// retained again on the way (the recvmmsg engine's path).
    public func answerFast(_ packet: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer, transport: Transport,
                           mayRecurse: () -> Bool, client: () -> ClientLocality?) -> Int? {
        guard let plan = fastPlan(packet, transport: transport, mayRecurse: mayRecurse, client: client), plan.size <= out.count else { return nil }
        return writeFast(plan, packet: packet, into: out)
    }

    /// Writes the planned response into `out` (at least `plan.size` bytes); advances the service's rotation.
    @inline(__always)
    public func writeFast(_ plan: FastPlan, packet: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Int {
        let q = plan.query
        // The header: the query's ID, QR, the query's RD and CD; AA for our own data; RA when forwarding.
        out[0] = packet[0]
        out[1] = packet[1]
        out[3] = (forwarder != nil ? 0x80 : 0) | (q.cd ? 0x10 : 0)
        out[4] = 0; out[5] = 1
        // The question exactly as asked.
        let questionLength = q.questionEnd - DNSHeader.size
        out.baseAddress!.advanced(by: DNSHeader.size)
            .copyMemory(from: packet.baseAddress!.advanced(by: DNSHeader.size), byteCount: questionLength)
        var p: Int
        let counts: (an: UInt16, ns: UInt16, ar: UInt16)
        switch plan.source {
        case .service(let entry, let encoded, let template):
            out[2] = 0x84 | (q.rd ? 0x01 : 0)
            p = encoded.write(template, turn: { entry.nextRotation(q.type) }, type: q.type, into: out, at: q.questionEnd)
            counts = (template.answerCount, 0, template.glueCount)
        case .addresses(let node, let count):
            out[2] = 0x84 | (q.rd ? 0x01 : 0)
            p = writeAddresses(.node(node), packet: packet, query: q, into: out)
            counts = (UInt16(count), 0, 0)
        case .addr(let span):
            out[2] = 0x84 | (q.rd ? 0x01 : 0)
            p = writeAddresses(.addr(span), packet: packet, query: q, into: out)
            counts = (1, 0, 0)
        case .cache(let wire, let age):
            out[2] = 0x80 | (q.rd ? 0x01 : 0)
            out[3] |= wire.rcode & 0x0F
            p = q.questionEnd
            wire.body.withUnsafeBytes { out.baseAddress!.advanced(by: p).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            for (k, offset) in wire.ttlOffsets.enumerated() {
                let ttl = wire.ttls[k] - age
                let at = p + offset
                out[at] = UInt8(ttl >> 24); out[at + 1] = UInt8((ttl >> 16) & 0xFF)
                out[at + 2] = UInt8((ttl >> 8) & 0xFF); out[at + 3] = UInt8(ttl & 0xFF)
            }
            p += wire.body.count
            counts = wire.counts
            forwarder?.countHit()
        }
        let ar = counts.ar + (q.edns == nil ? 0 : 1)
        out[6] = UInt8(counts.an >> 8); out[7] = UInt8(counts.an & 0xFF)
        out[8] = UInt8(counts.ns >> 8); out[9] = UInt8(counts.ns & 0xFF)
        out[10] = UInt8(ar >> 8); out[11] = UInt8(ar & 0xFF)
        if let edns = q.edns {
            // OPT: root owner, type 41, our UDP size, extended rcode 0, version 0, the query's DO bit (RFC 3225).
            let size = UInt16(resolver.configuration.maxUDPSize)
            let opt: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
                (0, 0, 41, UInt8(size >> 8), UInt8(size & 0xFF), 0, 0, edns.dnssecOK ? 0x80 : 0, 0, 0, 0)
            withUnsafeBytes(of: opt) { out.baseAddress!.advanced(by: p).copyMemory(from: $0.baseAddress!, byteCount: 11) }
            p += 11
        }
        return p
    }

    private enum AddressSource { case node(Node), addr(NameSpan) }

    /// A node's addresses, or an addr name's one address, as A or AAAA records whose owner points at the question,
    /// as `MessageWriter` writes them. Returns the end offset.
    private func writeAddresses(_ source: AddressSource, packet: UnsafeRawBufferPointer, query q: PlainQuery,
                                into out: UnsafeMutableRawBufferPointer) -> Int {
        var p = q.questionEnd
        let ttl = resolver.configuration.nodeTTL
        func record(_ rdata: UnsafeRawBufferPointer) {
            let header: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
                (0xC0, 0x0C, UInt8(q.type >> 8), UInt8(q.type & 0xFF), 0, 1, UInt8(ttl >> 24), UInt8((ttl >> 16) & 0xFF),
                 UInt8((ttl >> 8) & 0xFF), UInt8(ttl & 0xFF), 0, UInt8(rdata.count))
            withUnsafeBytes(of: header) { out.baseAddress!.advanced(by: p).copyMemory(from: $0.baseAddress!, byteCount: 12) }
            out.baseAddress!.advanced(by: p + 12).copyMemory(from: rdata.baseAddress!, byteCount: rdata.count)
            p += 12 + rdata.count
        }
        switch source {
        case .node(let node):
            _ = Self.nodeAddresses(node, q.type) { _, address in
                switch address {
                case .v4(let v4): withUnsafeBytes(of: v4.bytes) { record($0) }
                case .v6(let v6): v6.bytes.withUnsafeBytes { record($0) }
                case .hostname: break
                }
            }
        case .addr(let span):
            // The plan's span of the name (which `fastPlan` found to hold an address of the asked family).
            let name = UnsafeRawBufferPointer(rebasing: packet[DNSHeader.size..<q.nameEnd])
            withUnsafeTemporaryAllocation(byteCount: 16, alignment: 1) { bytes in
                if let n = Resolver.hexAddress(UnsafeRawBufferPointer(rebasing: name[span.start..<span.end]), into: bytes) {
                    record(UnsafeRawBufferPointer(rebasing: bytes[0..<n]))
                }
            }
        }
        return p
    }

    /// The fast path's answer in a buffer of its own, or nil for the general path.
    public func fastResponse(_ packet: ByteBuffer, transport: Transport, client: SocketAddress? = nil,
                             allocator: ByteBufferAllocator) -> ByteBuffer? {
        packet.withUnsafeReadableBytes { bytes -> ByteBuffer? in
            guard let plan = fastPlan(bytes, transport: transport, mayRecurse: { access.mayRecurse(client) },
                                      client: { clientLocality { withClientAddress(client, $0) }.0 }) else { return nil }
            var out = allocator.buffer(capacity: plan.size)
            out.writeWithUnsafeMutableBytes(minimumWritableBytes: plan.size) { writeFast(plan, packet: bytes, into: $0) }
            return out
        }
    }
}
