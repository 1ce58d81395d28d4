import DNSWire
import NIOCore
import Testing

/// How each malformed input is classified (RFC 1035, 6891): drop, or reject with an rcode.
@Suite("Malformed queries")
struct MalformedTests {
    enum Expect: CustomStringConvertible {
        case drop, rcode(UInt16), query
        var description: String {
            switch self {
            case .drop: return "drop"
            case .rcode(let r): return "rcode \(r)"
            case .query: return "query"
            }
        }
    }

    static func header(id: UInt16 = 0x1234, flags: UInt16 = 0x0100, qd: UInt16 = 1, an: UInt16 = 0, ns: UInt16 = 0, ar: UInt16 = 0) -> [UInt8] {
        var b = ByteBuffer()
        DNSHeader(id: id, flags: flags, qdCount: qd, anCount: an, nsCount: ns, arCount: ar).write(to: &b)
        return Array(b.readableBytesView)
    }

    static let webQ: [UInt8] = [3] + Array("web".utf8) + [7] + Array("service".utf8) + [6] + Array("consul".utf8) + [0, 0, 1, 0, 1]
    static func opt(version: UInt8 = 0, size: UInt16 = 1232) -> [UInt8] {
        [0, 0, 41, UInt8(size >> 8), UInt8(size & 0xFF), 0, version, 0, 0, 0, 0]
    }

    static let cases: [(String, [UInt8], Expect)] = [
        ("empty datagram", [], .drop),
        ("11-byte header", Array(header().prefix(11)), .drop),
        ("response bit set", header(flags: 0x8100) + webQ, .drop),
        ("qdcount 0", header(qd: 0), .rcode(RCode.formErr)),
        ("qdcount 2", header(qd: 2) + webQ + webQ, .rcode(RCode.formErr)),
        ("question cut in the name", header() + Array(webQ.prefix(6)), .rcode(RCode.formErr)),
        ("question without type", header() + Array(webQ.prefix(webQ.count - 4)), .rcode(RCode.formErr)),
        ("question without class", header() + Array(webQ.prefix(webQ.count - 2)), .rcode(RCode.formErr)),
        ("label type 0x40", header() + [0x41, 0x61, 0, 0, 1, 0, 1], .rcode(RCode.formErr)),
        ("label of 64 bytes", header() + [64] + Array(repeating: UInt8(0x61), count: 64) + [0, 0, 1, 0, 1], .rcode(RCode.formErr)),
        ("label type 0x80", header() + [0x81, 0x61, 0, 0, 1, 0, 1], .rcode(RCode.formErr)),
        ("pointer to itself", header() + [0xC0, 12, 0, 1, 0, 1], .rcode(RCode.formErr)),
        ("forward pointer", header() + [0xC0, 14, 0, 1, 0, 1, 0], .rcode(RCode.formErr)),
        ("pointer loop through a label", header() + [1, 0x61, 0xC0, 12, 0, 1, 0, 1], .rcode(RCode.formErr)),
        ("name over 255 bytes", header() + Array(repeating: [63] + Array(repeating: UInt8(0x61), count: 63), count: 5).flatMap { $0 } + [0, 0, 1, 0, 1], .rcode(RCode.formErr)),
        ("opcode STATUS", header(flags: 0x1100) + webQ, .rcode(RCode.notImp)),
        ("opcode UPDATE", header(flags: 0x2800) + webQ, .rcode(RCode.notImp)),
        ("EDNS version 1", header(ar: 1) + webQ + opt(version: 1), .rcode(RCode.badVers)),
        ("two OPT records", header(ar: 2) + webQ + opt() + opt(), .rcode(RCode.formErr)),
        ("OPT with a non-root owner", header(ar: 1) + webQ + [1, 0x61] + Array(opt().dropFirst()), .rcode(RCode.formErr)),
        ("OPT cut short", header(ar: 1) + webQ + Array(opt().prefix(6)), .rcode(RCode.formErr)),
        ("arcount beyond the data", header(ar: 1) + webQ, .rcode(RCode.formErr)),
        ("OPT claiming 65535 bytes of options", header(ar: 1) + webQ + Array(opt().dropLast(2)) + [0xFF, 0xFF, 0, 10], .rcode(RCode.formErr)),
        ("OPT with 4 KB of options (ignored)", header(ar: 1) + webQ + Array(opt().dropLast(2)) + [0x10, 0x04]
            + [0xFD, 0xE9, 0x10, 0x00] + Array(repeating: UInt8(7), count: 4096), .query),
        ("plain query", header() + webQ, .query),
        ("query with EDNS", header(ar: 1) + webQ + opt(), .query),
        ("unknown type and class", header() + Array(webQ.dropLast(4)) + [0xFF, 0x00, 0x00, 0xFE], .query),
    ]

    @Test(arguments: cases.indices)
    func classify(_ index: Int) {
        let (label, bytes, expected) = Self.cases[index]
        let result = Query.parse(ByteBuffer(bytes: bytes))
        switch (result, expected) {
        case (.drop, .drop), (.query, .query):
            break
        case (.reject(let h, _, _, let rcode, _), .rcode(let want)):
            #expect(rcode == want, "\(label)")
            #expect(h.id == 0x1234, "\(label)")
        default:
            Issue.record("\(label): expected \(expected), got \(result)")
        }
    }

    @Test func badversKeepsEDNSForTheReply() {
        let result = Query.parse(ByteBuffer(bytes: Self.header(ar: 1) + Self.webQ + Self.opt(version: 1)))
        guard case .reject(_, let q, let edns, _, _) = result else { Issue.record("not rejected"); return }
        #expect(q != nil)
        #expect(edns?.version == 1)
    }
}

/// EDNS Client Subnet options (RFC 7871 §6, §7.2.1): read when well formed, a FORMERR when not; the fast path's
/// reader leaves queries that carry one to the general path, which echoes it.
@Suite("EDNS Client Subnet")
struct ClientSubnetTests {
    static func query(ecs data: [UInt8]) -> [UInt8] {
        let option: [UInt8] = [0, 8, UInt8(data.count >> 8), UInt8(data.count & 0xFF)] + data
        let rdlen = option.count
        return MalformedTests.header(ar: 1) + MalformedTests.webQ + [0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, UInt8(rdlen >> 8), UInt8(rdlen & 0xFF)] + option
    }

    static func parse(_ bytes: [UInt8]) -> QueryParse { Query.parse(ByteBuffer(bytes: bytes)) }

    @Test func aWellFormedOptionIsRead() throws {
        guard case .query(let q) = Self.parse(Self.query(ecs: [0, 1, 24, 0, 10, 231, 2])) else { Issue.record("not a query"); return }
        let ecs = try #require(q.edns?.clientSubnet)
        #expect(ecs.family == 1 && ecs.sourcePrefix == 24 && ecs.address == [10, 231, 2] && ecs.fullAddress == [10, 231, 2, 0])
        var echoed = ecs
        echoed.scopePrefix = 16
        #expect(echoed.wire == [0, 8, 0, 7, 0, 1, 24, 16, 10, 231, 2])
        // A query's scope is ignored: the reply's starts at 0.
        guard case .query(let q2) = Self.parse(Self.query(ecs: [0, 2, 48, 9, 0x20, 0x01, 0x0d, 0xb8, 0, 1])) else { Issue.record("not a query"); return }
        #expect(q2.edns?.clientSubnet?.scopePrefix == 0 && q2.edns?.clientSubnet?.fullAddress.count == 16)
        // Source 0: no address at all.
        guard case .query(let q3) = Self.parse(Self.query(ecs: [0, 1, 0, 0])) else { Issue.record("not a query"); return }
        #expect(q3.edns?.clientSubnet?.address == [])
        // The fast path's reader declines it.
        #expect(Self.query(ecs: [0, 1, 24, 0, 10, 231, 2]).withUnsafeBytes { PlainQuery.parse($0) } == nil)
    }

    @Test(arguments: [
        ("unknown family", [0, 3, 24, 0, 10, 231, 2]),
        ("source past the family", [0, 1, 33, 0, 10, 231, 2, 0, 0]),
        ("an address byte too many", [0, 1, 24, 0, 10, 231, 2, 0]),
        ("an address byte too few", [0, 1, 24, 0, 10, 231]),
        ("a bit set past the source", [0, 1, 23, 0, 10, 231, 3]),
        ("shorter than its header", [0, 1, 24]),
    ] as [(String, [UInt8])])
    func aMalformedOptionIsAFormErr(label: String, data: [UInt8]) {
        guard case .reject(_, _, let edns, let rcode, _) = Self.parse(Self.query(ecs: data)) else { Issue.record("\(label): not rejected"); return }
        #expect(rcode == RCode.formErr, "\(label)")
        // The OPT is echoed, without the option it could not read.
        #expect(edns != nil && edns?.clientSubnet == nil, "\(label)")
    }
}
