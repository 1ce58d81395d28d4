import Catalog
import DNSWire
import NIOCore

/// The hot path: a plain A, AAAA or SRV query for `<service>.service.<domain>`, answered from the service's
/// pre-encoded templates by copying bytes, without building a `Query`, an `Answer` or any other heap object.
/// Whatever it does not cover (other names and types, tags, datacenters, truncation, staleness, malformed
/// packets) returns nil and goes through the general path, which gives byte-identical answers; a differential
/// test holds the two together.
extension QueryHandler {
    public struct FastPlan {
        let entry: ServiceEntry
        let count: Int
        let template: AnswerTemplate
        let query: PlainQuery
        /// The whole response, in bytes.
        public let size: Int
    }

    /// Decides whether the fast path answers `packet`, and how big the answer is. Reads, never writes.
    public func fastPlan(_ packet: UnsafeRawBufferPointer, transport: Transport) -> FastPlan? {
        guard let query = PlainQuery.parse(packet), query.qclass == DNSClass.inet else { return nil }
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
        for k in 0..<domain.count where asciiLowered(packet[second + 8 + k]) != asciiLowered(domain[k]) { return nil }

        let snapshot = store.snapshot
        guard snapshot.isLoaded, !snapshot.zones.contains(where: { $0.origin == config.domain }) else { return nil }
        if let maxStale, let age = store.staleness(), age > maxStale { return nil }
        // Services are keyed by lower-cased name; names up to 15 bytes make a String without allocating.
        let key = String(unsafeUninitializedCapacity: first) { buffer in
            for k in 0..<first { buffer[k] = asciiLowered(packet[DNSHeader.size + 1 + k]) }
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
        return FastPlan(entry: entry, count: encoded.count, template: template, query: query, size: size)
    }

    /// Writes the planned response into `out` (at least `plan.size` bytes) and advances the service's rotation.
    public func writeFast(_ plan: FastPlan, packet: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Int {
        let q = plan.query
        let template = plan.template
        let rotation = plan.count > 1 ? plan.entry.nextRotation() % plan.count : 0
        // Header: the query's ID; QR, AA and the query's RD; RA when forwarding; the query's CD; NOERROR.
        out[0] = packet[0]
        out[1] = packet[1]
        out[2] = 0x84 | (q.rd ? 0x01 : 0)
        out[3] = (forwarder != nil ? 0x80 : 0) | (q.cd ? 0x10 : 0)
        let ar = template.glueCount + (q.edns == nil ? 0 : 1)
        out[4] = 0; out[5] = 1
        out[6] = UInt8(template.answerCount >> 8); out[7] = UInt8(template.answerCount & 0xFF)
        out[8] = 0; out[9] = 0
        out[10] = UInt8(ar >> 8); out[11] = UInt8(ar & 0xFF)
        // The question exactly as asked.
        let questionLength = q.questionEnd - DNSHeader.size
        out.baseAddress!.advanced(by: DNSHeader.size)
            .copyMemory(from: packet.baseAddress!.advanced(by: DNSHeader.size), byteCount: questionLength)
        var p = template.write(rotation: rotation, into: out, at: q.questionEnd)
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
    public func fastResponse(_ packet: ByteBuffer, transport: Transport, allocator: ByteBufferAllocator) -> ByteBuffer? {
        packet.withUnsafeReadableBytes { bytes -> ByteBuffer? in
            guard let plan = fastPlan(bytes, transport: transport) else { return nil }
            var out = allocator.buffer(capacity: plan.size)
            out.writeWithUnsafeMutableBytes(minimumWritableBytes: plan.size) { writeFast(plan, packet: bytes, into: $0) }
            return out
        }
    }
}

@inline(__always)
private func asciiLowered(_ b: UInt8) -> UInt8 {
    (b >= 0x41 && b <= 0x5A) ? b | 0x20 : b
}
