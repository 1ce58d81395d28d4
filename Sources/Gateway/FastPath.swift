import Catalog
import DNSWire
import NIOCore

/// The hot paths, for plain queries (`PlainQuery`):
/// - A, AAAA or SRV for `<service>.service.<domain>`, answered from the service's pre-encoded templates by
///   copying bytes, without building a `Query`, an `Answer` or any other heap object;
/// - a fresh forwarding-cache hit, answered from the entry's encoded records, with the TTLs counted down in place.
/// Whatever they do not cover (other names and types, tags, datacenters, truncation, staleness, stale or
/// expiring cache entries, clients the ACL refuses, malformed packets) returns nil and goes through the general
/// path, which gives byte-identical answers; differential tests hold the two together.
extension QueryHandler {
    public struct FastPlan {
        enum Source {
            case service(ServiceEntry, count: Int, AnswerTemplate)
            case cache(ForwardCache.Wire, age: UInt32)
        }
        let source: Source
        let query: PlainQuery
        /// The whole response, in bytes.
        public let size: Int
    }

    /// Decides whether a fast path answers `packet`, and how big the answer is. Reads, never writes (but for the
    /// cache's recency). `mayRecurse` is the recursion ACL for this client, asked only for forwarded names.
    public func fastPlan(_ packet: UnsafeRawBufferPointer, transport: Transport, mayRecurse: () -> Bool = { false }) -> FastPlan? {
        guard let query = PlainQuery.parse(packet) else { return nil }
        if let plan = servicePlan(packet, query, transport) { return plan }
        return cachePlan(packet, query, transport, mayRecurse)
    }

    private func servicePlan(_ packet: UnsafeRawBufferPointer, _ query: PlainQuery, _ transport: Transport) -> FastPlan? {
        guard query.qclass == DNSClass.inet else { return nil }
        let config = resolver.configuration
        // <service>.service.<domain>: the first label, then "service", then exactly the domain.
        let first = Int(packet[DNSHeader.size])
        let second = DNSHeader.size + 1 + first
        guard first > 0, second + 8 <= query.nameEnd, packet[second] == 7 else { return nil }
        let l = second + 1  // "service", any case
        guard packet[l] | 0x20 == 0x73, packet[l + 1] | 0x20 == 0x65, packet[l + 2] | 0x20 == 0x72, packet[l + 3] | 0x20 == 0x76,
              packet[l + 4] | 0x20 == 0x69, packet[l + 5] | 0x20 == 0x63, packet[l + 6] | 0x20 == 0x65 else { return nil }
        let domain = config.domain.wire
        guard query.nameEnd - (second + 8) == domain.count else { return nil }
        for k in 0..<domain.count where asciiLower(packet[second + 8 + k]) != asciiLower(domain[k]) { return nil }

        let snapshot = store.snapshot
        guard snapshot.isLoaded, !snapshot.zones.contains(where: { $0.origin == config.domain }) else { return nil }
        if let maxStale, let age = store.staleness(), age > maxStale { return nil }
        // Services are keyed by lower-cased name; names up to 15 bytes make a String without allocating.
        let key = String(unsafeUninitializedCapacity: first) { buffer in
            for k in 0..<first { buffer[k] = asciiLower(packet[DNSHeader.size + 1 + k]) }
            return first
        }
        guard let entry = snapshot.services[key], let encoded = resolver.encodedAnswers(for: entry, in: snapshot) else { return nil }
        let template: AnswerTemplate?
        switch query.type {
        case RRType.a: template = encoded.a
        case RRType.aaaa: template = encoded.aaaa
        case RRType.srv: template = encoded.srv
        default: template = nil
        }
        guard let template else { return nil }
        let size = query.questionEnd + template.bodySize + (query.edns == nil ? 0 : 11)
        guard size <= limit(query.edns, transport) else { return nil }
        return FastPlan(source: .service(entry, count: encoded.count, template), query: query, size: size)
    }

    private func cachePlan(_ packet: UnsafeRawBufferPointer, _ query: PlainQuery, _ transport: Transport,
                           _ mayRecurse: () -> Bool) -> FastPlan? {
        guard let forwarder else { return nil }
        let name = UnsafeRawBufferPointer(rebasing: packet[DNSHeader.size..<query.nameEnd])
        let snapshot = store.snapshot
        let config = resolver.configuration
        guard !DNSName.isSubdomain(wire: name, of: config.domain),
              config.altDomain.map({ DNSName.isSubdomain(wire: name, of: $0) }) != true,
              !snapshot.zones.contains(where: { DNSName.isSubdomain(wire: name, of: $0.origin) }),
              mayRecurse(), let owned = DNSName(wire: name) else { return nil }
        // A reverse name we hold a PTR for is ours, even if an upstream's answer is still cached.
        if query.type == RRType.ptr || query.type == RRType.any, resolver.pointer(owned, query.type, in: snapshot) != nil { return nil }
        let key = ForwardCache.Key(name: owned, type: query.type, qclass: query.qclass, dnssecOK: query.edns?.dnssecOK ?? false)
        guard let (wire, age) = forwarder.cache.wire(key) else { return nil }
        let size = query.questionEnd + wire.body.count + (query.edns == nil ? 0 : 11)
        guard size <= limit(query.edns, transport) else { return nil }
        return FastPlan(source: .cache(wire, age: age), query: query, size: size)
    }

    /// Writes the planned response into `out` (at least `plan.size` bytes); advances the service's rotation.
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
        case .service(let entry, let count, let template):
            out[2] = 0x84 | (q.rd ? 0x01 : 0)
            let rotation = count > 1 ? entry.nextRotation() % count : 0
            p = template.write(rotation: rotation, into: out, at: q.questionEnd)
            counts = (template.answerCount, 0, template.glueCount)
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

    /// The fast path's answer in a buffer of its own, or nil for the general path.
    public func fastResponse(_ packet: ByteBuffer, transport: Transport, client: SocketAddress? = nil,
                             allocator: ByteBufferAllocator) -> ByteBuffer? {
        packet.withUnsafeReadableBytes { bytes -> ByteBuffer? in
            guard let plan = fastPlan(bytes, transport: transport, mayRecurse: { access.mayRecurse(client) }) else { return nil }
            var out = allocator.buffer(capacity: plan.size)
            out.writeWithUnsafeMutableBytes(minimumWritableBytes: plan.size) { writeFast(plan, packet: bytes, into: $0) }
            return out
        }
    }
}
