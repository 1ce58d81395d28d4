import DNSWire
import NIOCore

/// Encodes an answer into a response no larger than `limit` bytes.
///
/// The rule, in one place:
/// - Answer records are kept in order, each together with its glue (an SRV record and its
///   target's A/AAAA records form one unit); a unit is never split.
/// - Authority records go next, then other additional records, then the OPT record,
///   whose space is always reserved.
/// - The longest prefix of [units…, authority, additional] that fits is sent.
/// - TC is set exactly when anything at all was left out, so nothing is truncated silently.
///   The result always parses, and every SRV answer in it has its glue.
public enum ResponseEncoder {
    public struct Reply {
        public var header: DNSHeader
        public var question: Question?
        public var edns: EDNS?
        /// The rcode, including EDNS extended bits (BADVERS = 16).
        public var rcode: UInt16
        /// Our advertised EDNS buffer size.
        public var udpSize: UInt16

        public init(header: DNSHeader, question: Question?, edns: EDNS?, rcode: UInt16, udpSize: UInt16) {
            self.header = header
            self.question = question
            self.edns = edns
            self.rcode = rcode
            self.udpSize = udpSize
        }
    }

    public static func encode(_ answer: Answer, reply: Reply, limit: Int, allocator: ByteBufferAllocator) -> ByteBuffer {
        let units = answer.answers.count
        let levels = units + 2  // + authority, + additional
        func build(_ level: Int) -> ByteBuffer {
            var w = MessageWriter(buffer: allocator.buffer(capacity: 512))
            if let q = reply.question { w.writeQuestion(q) }
            let kept = min(level, units)
            for i in 0..<kept { w.writeRecord(answer.answers[i], section: .answer) }
            if level > units { for rr in answer.authority { w.writeRecord(rr, section: .authority) } }
            // Glue is deduplicated (two SRV records may share a target); the lists are short, so a linear scan.
            var written: [ResourceRecord] = []
            for i in 0..<kept {
                for rr in answer.glue[i] where !written.contains(rr) {
                    w.writeRecord(rr, section: .additional)
                    written.append(rr)
                }
            }
            if level > units + 1 {
                for rr in answer.additional where !written.contains(rr) {
                    w.writeRecord(rr, section: .additional)
                    written.append(rr)
                }
            }
            if let edns = reply.edns {
                // RFC 3225: the DO bit of the query is copied into the response.
                w.writeOPT(udpSize: reply.udpSize, extendedRcode: UInt8(reply.rcode >> 4), dnssecOK: edns.dnssecOK,
                           options: edns.clientSubnet?.wire ?? [])
            }
            var h = reply.header
            h.tc = level < levels && droppedSomething(answer, level: level)
            h.rcode = UInt8(reply.rcode & 0xF)
            return w.finish(header: h)
        }
        let full = build(levels)
        if full.readableBytes <= limit { return full }
        // Sizes grow with the level, so search for the largest level that fits.
        var lo = 0, hi = levels - 1
        var best = build(0)
        while lo <= hi {
            let mid = (lo + hi) / 2
            let candidate = build(mid)
            if candidate.readableBytes <= limit {
                best = candidate
                lo = mid + 1
            } else {
                hi = mid - 1
            }
        }
        return best
    }

    private static func droppedSomething(_ answer: Answer, level: Int) -> Bool {
        let units = answer.answers.count
        if level < units { return true }
        if level == units { return !answer.authority.isEmpty || !answer.additional.isEmpty }
        return !answer.additional.isEmpty
    }
}
