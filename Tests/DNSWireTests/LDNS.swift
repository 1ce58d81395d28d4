import CLDNS
import DNSWire
import NIOCore

/// Thin helpers over libldns, the reference implementation in differential tests.
enum LDNS {
    struct Parsed {
        var id: UInt16
        var flags: (qr: Bool, aa: Bool, tc: Bool, rd: Bool, ra: Bool, opcode: UInt32, rcode: UInt32)
        var counts: [Int]
        /// Each record of each section (question, answer, authority, additional), as ldns's
        /// uncompressed wire form; OPT is kept by ldns outside the sections.
        var sections: [[[UInt8]]]
    }

    /// Parses with `ldns_wire2pkt`; nil when ldns rejects the packet.
    static func parse(_ bytes: [UInt8]) -> Parsed? {
        var pkt: UnsafeMutablePointer<ldns_pkt>? = nil
        let status = bytes.withUnsafeBufferPointer { buf in ldns_wire2pkt(&pkt, buf.baseAddress, buf.count) }
        guard status == LDNS_STATUS_OK, let p = pkt else { return nil }
        defer { ldns_pkt_free(p) }
        func section(_ list: UnsafeMutablePointer<ldns_rr_list>?, question: Bool) -> [[UInt8]] {
            guard let list else { return [] }
            return (0..<ldns_rr_list_rr_count(list)).map { i in
                let rr = ldns_rr_list_rr(list, i)!
                var out: UnsafeMutablePointer<UInt8>? = nil
                var size = 0
                let s = question ? LDNS_SECTION_QUESTION : LDNS_SECTION_ANSWER
                precondition(ldns_rr2wire(&out, rr, Int32(s.rawValue), &size) == LDNS_STATUS_OK)
                defer { free(out) }
                return Array(UnsafeBufferPointer(start: out, count: size))
            }
        }
        return Parsed(
            id: ldns_pkt_id(p),
            flags: (ldns_pkt_qr(p) != 0, ldns_pkt_aa(p) != 0, ldns_pkt_tc(p) != 0, ldns_pkt_rd(p) != 0, ldns_pkt_ra(p) != 0,
                    ldns_pkt_get_opcode(p).rawValue, ldns_pkt_get_rcode(p).rawValue),
            counts: [Int(ldns_pkt_qdcount(p)), Int(ldns_pkt_ancount(p)), Int(ldns_pkt_nscount(p)), Int(ldns_pkt_arcount(p))],
            sections: [section(ldns_pkt_question(p), question: true), section(ldns_pkt_answer(p), question: false),
                       section(ldns_pkt_authority(p), question: false), section(ldns_pkt_additional(p), question: false)])
    }

    /// Builds a response from presentation-format records and returns ldns's wire form.
    static func build(id: UInt16, question: String, answers: [String], authority: [String] = [], additional: [String] = []) -> [UInt8] {
        let pkt = ldns_pkt_new()!
        defer { ldns_pkt_free(pkt) }
        ldns_pkt_set_id(pkt, id)
        ldns_pkt_set_qr(pkt, 1)
        ldns_pkt_set_aa(pkt, 1)
        func add(_ text: String, _ section: ldns_pkt_section, question: Bool = false) {
            var rr: UnsafeMutablePointer<ldns_rr>? = nil
            let status = question ? ldns_rr_new_question_frm_str(&rr, text, nil, nil) : ldns_rr_new_frm_str(&rr, text, 3600, nil, nil)
            precondition(status == LDNS_STATUS_OK, "ldns could not parse \(text)")
            precondition(ldns_pkt_push_rr(pkt, section, rr) != 0)
        }
        add(question, LDNS_SECTION_QUESTION, question: true)
        answers.forEach { add($0, LDNS_SECTION_ANSWER) }
        authority.forEach { add($0, LDNS_SECTION_AUTHORITY) }
        additional.forEach { add($0, LDNS_SECTION_ADDITIONAL) }
        var out: UnsafeMutablePointer<UInt8>? = nil
        var size = 0
        precondition(ldns_pkt2wire(&out, pkt, &size) == LDNS_STATUS_OK)
        defer { free(out) }
        return Array(UnsafeBufferPointer(start: out, count: size))
    }
}

extension ResourceRecord {
    /// Uncompressed wire form, for comparison with ldns_rr2wire.
    var uncompressedWire: [UInt8] {
        var b = ByteBuffer()
        b.writeBytes(name.wire)
        b.writeMultipleIntegers(type, rclass, ttl)
        var rd = ByteBuffer()
        switch rdata {
        case .ns(let n), .cname(let n), .ptr(let n): rd.writeBytes(n.wire)
        case .mx(let p, let n): rd.writeInteger(p); rd.writeBytes(n.wire)
        case .srv(let p, let w, let port, let t): rd.writeMultipleIntegers(p, w, port); rd.writeBytes(t.wire)
        case .soa(let s):
            rd.writeBytes(s.mname.wire); rd.writeBytes(s.rname.wire)
            rd.writeMultipleIntegers(s.serial, s.refresh, s.retry, s.expire, s.minimum)
        case .a(let v4): rd.writeBytes(v4.array)
        case .aaaa(let v6): rd.writeBytes(v6.bytes)
        case .txt(let strings): for s in strings { rd.writeInteger(UInt8(s.count)); rd.writeBytes(s) }
        case .unknown(let raw): rd.writeBytes(raw)
        }
        b.writeInteger(UInt16(rd.readableBytes))
        b.writeBuffer(&rd)
        return Array(b.readableBytesView)
    }
}
